package tlsidle

import (
	"crypto/tls"
	"errors"
	"syscall"
)

// CanWait reports whether WaitReadable works for tc: its transport is a
// socket this package can poll, and Buffered can see crypto/tls's buffers.
// A wrapper of the socket (a listener's counting wrapper) may implement
// syscall.Conn without a socket under it: SyscallConn then fails.
func CanWait(tc *tls.Conn) bool {
	sc, ok := tc.NetConn().(syscall.Conn)
	if !ok || !layout.ok {
		return false
	}
	_, err := sc.SyscallConn()
	return err == nil
}

// errNoSocket is WaitReadable's answer for a transport it cannot poll.
var errNoSocket = errors.New("tlsidle: the TLS connection's transport is not a socket")

// Readable reports, without blocking, whether tc's socket has bytes (or
// an end of stream, or an error) for the next Read.
func Readable(tc *tls.Conn) (bool, error) {
	return poll(tc, false)
}

// WaitReadable blocks until tc's socket has bytes (or an end of stream, or
// an error) for the next Read, without reading them: no buffer is held and
// the goroutine's frames are few. It honours tc's read deadline and
// returns the socket's error (net.ErrClosed, os.ErrDeadlineExceeded). It is
// only a wait: Buffered must be false (tc holds no input of its own) for
// the next Read to depend on the socket at all.
func WaitReadable(tc *tls.Conn) error {
	_, err := poll(tc, true)
	return err
}

func poll(tc *tls.Conn, wait bool) (readable bool, err error) {
	sc, ok := tc.NetConn().(syscall.Conn)
	if !ok {
		return false, errNoSocket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	err = rc.Read(func(fd uintptr) bool {
		readable = peek(fd)
		// false makes the runtime wait for the socket to become readable
		// and call again.
		return readable || !wait
	})
	return readable, err
}

// peek reports whether a read of fd would not block. A closed stream (0
// bytes) and an error other than EAGAIN are readable: the next Read
// reports them.
func peek(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
}
