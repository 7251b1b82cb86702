package acceptloop

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// A connection tracked before Shutdown is returned by it and waited for;
// one offered after it is refused, and so is a listener.
func TestTracker(t *testing.T) {
	var tr Tracker[int]
	if !tr.Track(1) || !tr.Track(2) || tr.Len() != 2 {
		t.Fatalf("tracked %d", tr.Len())
	}
	tr.Untrack(2)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		served <- tr.Serve(context.Background(), ln, slog.New(slog.NewTextHandler(io.Discard, nil)), "test", func(c net.Conn) bool { c.Close(); return true })
	}()
	// Wait until Serve has registered ln, so that Shutdown closes it.
	for !func() bool { tr.mu.Lock(); defer tr.mu.Unlock(); return len(tr.listeners) == 1 }() {
		time.Sleep(time.Millisecond)
	}
	if live := tr.Shutdown(); len(live) != 1 || live[0] != 1 {
		t.Fatalf("Shutdown returned %v; want [1]", live)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if tr.Track(3) {
		t.Fatal("tracked a connection after Shutdown")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a live connection: %v", err)
	}
	tr.Untrack(1)
	if err := tr.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Serve(context.Background(), ln2, nil, "test", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ln2.Accept(); err == nil {
		t.Fatal("a listener given after Shutdown is still open")
	}
}
