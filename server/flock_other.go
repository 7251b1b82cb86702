//go:build !unix

package server

import (
	"errors"
	"os"
)

var errLocked = errors.New("locked by another process")

// flockExclusive does not lock where flock does not exist: berth is built
// and run on Unix systems; elsewhere the data directory is unguarded.
func flockExclusive(*os.File) error { return nil }
