package acceptloop

import (
	"context"
	"log/slog"
	"net"
	"sync"
)

// Tracker is a listener's bookkeeping of its listeners and live
// connections, shared by the MQTT and AMQP front ends: Shutdown closes the
// listeners and refuses new connections from then on, so that no
// connection goroutine starts after Wait began waiting for them. The zero
// value is ready to use.
type Tracker[C comparable] struct {
	mu        sync.Mutex
	shutdown  bool
	listeners map[net.Listener]struct{}
	conns     map[C]struct{}
	wg        sync.WaitGroup // one per tracked connection
}

// Serve runs Run on ln (name names it in log lines) until ln fails or
// Shutdown is called, and returns nil after Shutdown. A listener given
// after Shutdown is closed at once.
func (t *Tracker[C]) Serve(ctx context.Context, ln net.Listener, log *slog.Logger, name string, serve func(net.Conn) bool) error {
	t.mu.Lock()
	if t.shutdown {
		t.mu.Unlock()
		ln.Close()
		return nil
	}
	if t.listeners == nil {
		t.listeners = map[net.Listener]struct{}{}
	}
	t.listeners[ln] = struct{}{}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.listeners, ln)
		t.mu.Unlock()
	}()
	return Run(ctx, ln, log, name, t.ShuttingDown, serve)
}

// Track records a new connection for Wait to wait for; it reports false
// once Shutdown began (the caller then closes the connection). Every
// tracked connection is untracked exactly once.
func (t *Tracker[C]) Track(c C) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shutdown {
		return false
	}
	if t.conns == nil {
		t.conns = map[C]struct{}{}
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	return true
}

// Untrack forgets a connection that has ended.
func (t *Tracker[C]) Untrack(c C) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	t.wg.Done()
}

// ShuttingDown reports whether Shutdown was called.
func (t *Tracker[C]) ShuttingDown() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.shutdown
}

// Conns is a snapshot of the live connections.
func (t *Tracker[C]) Conns() []C {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]C, 0, len(t.conns))
	for c := range t.conns {
		out = append(out, c)
	}
	return out
}

// Len is the number of live connections.
func (t *Tracker[C]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// Shutdown closes the listeners, refuses connections from now on and
// returns those still live, for the caller to close.
func (t *Tracker[C]) Shutdown() []C {
	t.mu.Lock()
	t.shutdown = true
	for ln := range t.listeners {
		ln.Close()
	}
	t.mu.Unlock()
	return t.Conns()
}

// Wait waits until every tracked connection is untracked, or for ctx.
func (t *Tracker[C]) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		t.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
