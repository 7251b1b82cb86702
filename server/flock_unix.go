//go:build unix

package server

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

var errLocked = errors.New("locked by another process")

// flockExclusive takes an exclusive flock on f without waiting. flock locks
// belong to the open file, so a second open in the same process is refused
// too (the in-process tests rely on that).
func flockExclusive(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EWOULDBLOCK):
			return errLocked
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return err
		}
	}
}
