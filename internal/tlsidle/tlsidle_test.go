package tlsidle

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/testcerts"
)

// TestSupported fails when a Go release renames or retypes crypto/tls's
// input buffers: idle connections would then keep them again, silently
// (the idle-memory budgets of frontend/mqtt would fail too).
func TestSupported(t *testing.T) {
	if !Supported() {
		t.Fatalf("crypto/tls.Conn of %s has no rawInput, input and hand of the expected types", runtime.Version())
	}
}

// pair is a TLS connection over loopback TCP: the server's end, and the
// client's.
func pair(t *testing.T) (srv, cli *tls.Conn) {
	t.Helper()
	cert := testcerts.Valid(t, "tlsidle", nil, false, time.Now())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *tls.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		tc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{cert.TLS()}})
		if err := tc.Handshake(); err != nil {
			nc.Close()
			accepted <- nil
			return
		}
		accepted <- tc
	}()
	// The client's default key shares include the post-quantum hybrid,
	// whose ClientHello grows the server's buffers as real devices do.
	cli, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	srv = <-accepted
	if srv == nil {
		t.Fatal("server handshake failed")
	}
	t.Cleanup(func() { srv.Close(); cli.Close() })
	return srv, cli
}

func write(t *testing.T, c *tls.Conn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

func readN(t *testing.T, c *tls.Conn, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReleaseIdle: between records, Release drops the buffers the
// handshake and the first record grew, and the connection reads on.
func TestReleaseIdle(t *testing.T) {
	srv, cli := pair(t)
	write(t, cli, "hello")
	if got := readN(t, srv, 5); got != "hello" {
		t.Fatalf("read %q", got)
	}
	raw, hand := capacities(srv)
	if raw == 0 || hand == 0 {
		t.Fatalf("buffers after the first record: rawInput %d, hand %d bytes; the test expects both grown", raw, hand)
	}
	if Buffered(srv) {
		t.Fatal("Buffered after every byte was read")
	}
	if !Release(srv) {
		t.Fatal("Release refused an idle connection")
	}
	if raw, hand := capacities(srv); raw != 0 || hand != 0 {
		t.Fatalf("after Release: rawInput %d, hand %d bytes", raw, hand)
	}
	write(t, cli, "again")
	if err := WaitReadable(srv); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, srv, 5); got != "again" {
		t.Fatalf("read %q after Release", got)
	}
	// Both ways still work: the server's writes do not use these buffers.
	write(t, srv, "answer")
	if got := readN(t, cli, 6); got != "answer" {
		t.Fatalf("client read %q", got)
	}
}

// TestBufferedKeepsInput: plaintext left of a record, or records crypto/tls
// already read from the socket, are Buffered, and Release leaves them
// alone: a wait on the socket would miss them.
func TestBufferedKeepsInput(t *testing.T) {
	t.Run("plaintext", func(t *testing.T) {
		srv, cli := pair(t)
		write(t, cli, "ab")
		if got := readN(t, srv, 1); got != "a" {
			t.Fatalf("read %q", got)
		}
		checkPending(t, srv, "b")
	})
	t.Run("records", func(t *testing.T) {
		srv, cli := pair(t)
		// Three records, all on the socket before the server reads:
		// crypto/tls reads what is there, so the second and third are
		// in its buffer once the first is read.
		write(t, cli, "ab")
		write(t, cli, "cd")
		write(t, cli, "ef")
		if got := readN(t, srv, 2); got != "ab" {
			t.Fatalf("read %q", got)
		}
		checkPending(t, srv, "cdef")
	})
}

// checkPending checks that srv holds want, unread, and Release keeps it.
func checkPending(t *testing.T, srv *tls.Conn, want string) {
	t.Helper()
	if !Buffered(srv) {
		t.Fatal("not Buffered with input pending")
	}
	if Release(srv) {
		t.Fatal("Release dropped pending input")
	}
	if got := readN(t, srv, len(want)); got != want {
		t.Fatalf("read %q after a refused Release; want %q", got, want)
	}
	if Buffered(srv) {
		t.Fatal("Buffered after every byte was read")
	}
}

// TestWaitReadable: the wait returns when bytes arrive, without taking
// them; it honours the read deadline and ends when the connection is
// closed.
func TestWaitReadable(t *testing.T) {
	srv, cli := pair(t)
	if !CanWait(srv) {
		t.Skip("no WaitReadable on " + runtime.GOOS)
	}
	if readable, err := Readable(srv); err != nil || readable {
		t.Fatalf("Readable with nothing sent: %v, %v", readable, err)
	}
	_ = srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := WaitReadable(srv); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("wait past the deadline: %v; want a deadline error", err)
	}
	_ = srv.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { done <- WaitReadable(srv) }()
	write(t, cli, "x")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if readable, err := Readable(srv); err != nil || !readable {
		t.Fatalf("Readable after the wait: %v, %v", readable, err)
	}
	if got := readN(t, srv, 1); got != "x" {
		t.Fatalf("read %q", got)
	}
	go func() { done <- WaitReadable(srv) }()
	srv.NetConn().Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("wait on a closed connection: %v; want net.ErrClosed", err)
	}
}
