//go:build linux

package tlsidle

import (
	"errors"
	"os"
	"testing"
	"time"
)

// woken records one wake call.
type woken chan error

func (w woken) wake(err error) { w <- err }

func (w woken) get(t *testing.T) error {
	t.Helper()
	select {
	case err := <-w:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("not woken")
		return nil
	}
}

func (w woken) none(t *testing.T, wait time.Duration) {
	t.Helper()
	select {
	case err := <-w:
		t.Fatalf("woken (%v); want no wake", err)
	case <-time.After(wait):
	}
}

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// TestPollerWakes: a parked connection is woken once per Park when bytes
// arrive, and reads them afterwards; it can park again.
func TestPollerWakes(t *testing.T) {
	p := newPoller(t)
	srv, cli := pair(t)
	w := make(woken, 2)
	k, err := p.Register(srv, w.wake)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"one", "two"} {
		if err := k.Park(time.Time{}); err != nil {
			t.Fatal(err)
		}
		w.none(t, 50*time.Millisecond)
		write(t, cli, msg)
		if err := w.get(t); err != nil {
			t.Fatalf("woken with %v", err)
		}
		if got := readN(t, srv, len(msg)); got != msg {
			t.Fatalf("read %q", got)
		}
		if k.Cancel() {
			t.Fatal("Cancel took back a connection that was woken")
		}
	}
	// Bytes that arrived before the Park wake it at once.
	write(t, cli, "early")
	if err := k.Park(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := w.get(t); err != nil {
		t.Fatalf("woken with %v", err)
	}
}

// TestPollerDeadline: a parked connection past its deadline is woken with
// os.ErrDeadlineExceeded.
func TestPollerDeadline(t *testing.T) {
	p := newPoller(t)
	srv, _ := pair(t)
	w := make(woken, 1)
	k, err := p.Register(srv, w.wake)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Park(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := w.get(t); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("woken with %v; want a deadline error", err)
	}
}

// TestPollerCancel: Cancel takes a parked connection back, once; no wake
// follows, even when bytes arrive; the connection can park again.
func TestPollerCancel(t *testing.T) {
	p := newPoller(t)
	srv, cli := pair(t)
	w := make(woken, 1)
	k, err := p.Register(srv, w.wake)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Park(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if !k.Cancel() {
		t.Fatal("Cancel of a parked connection reported false")
	}
	if k.Cancel() {
		t.Fatal("second Cancel reported true")
	}
	write(t, cli, "x")
	w.none(t, 2*sweepInterval+100*time.Millisecond)
	if err := k.Park(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := w.get(t); err != nil {
		t.Fatalf("woken with %v", err)
	}
}

// TestPollerClose: Close wakes what is parked with ErrPollerClosed and
// refuses later Parks.
func TestPollerClose(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := pair(t)
	w := make(woken, 1)
	k, err := p.Register(srv, w.wake)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Park(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.get(t); !errors.Is(err, ErrPollerClosed) {
		t.Fatalf("woken with %v; want ErrPollerClosed", err)
	}
	if err := k.Park(time.Time{}); !errors.Is(err, ErrPollerClosed) {
		t.Fatalf("Park after Close: %v", err)
	}
}
