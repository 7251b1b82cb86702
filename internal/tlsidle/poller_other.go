//go:build !linux

package tlsidle

import (
	"crypto/tls"
	"errors"
	"time"
)

// ErrPollerClosed is Park's answer once the poller is closed.
var ErrPollerClosed = errors.New("tlsidle: poller closed")

// Poller is implemented on Linux only: NewPoller fails elsewhere, and
// connections wait on a goroutine of their own.
type Poller struct{}

// Parking is implemented on Linux only.
type Parking struct{}

// NewPoller is implemented on Linux only.
func NewPoller() (*Poller, error) { return nil, errNoWait }

// Register is implemented on Linux only.
func (*Poller) Register(*tls.Conn, func(error)) (*Parking, error) { return nil, errNoWait }

// Len is implemented on Linux only.
func (*Poller) Len() int { return 0 }

// Close is implemented on Linux only.
func (*Poller) Close() error { return nil }

// Park is implemented on Linux only.
func (*Parking) Park(time.Time) error { return errNoWait }

// Cancel is implemented on Linux only.
func (*Parking) Cancel() bool { return false }
