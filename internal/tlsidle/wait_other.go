//go:build !linux

package tlsidle

import (
	"crypto/tls"
	"errors"
)

// CanWait reports false: WaitReadable is implemented on Linux only.
func CanWait(*tls.Conn) bool { return false }

var errNoWait = errors.New("tlsidle: WaitReadable is implemented on Linux only")

// Readable is implemented on Linux only.
func Readable(*tls.Conn) (bool, error) { return false, errNoWait }

// WaitReadable is implemented on Linux only.
func WaitReadable(*tls.Conn) error { return errNoWait }
