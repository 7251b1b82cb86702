package stream

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// standalone starts a JetStream nats-server on loopback that a test can
// stop and start again on the same port and store.
type standalone struct {
	t    *testing.T
	opts server.Options
	ns   *server.Server
}

func startStandalone(t *testing.T) *standalone {
	t.Helper()
	sa := &standalone{t: t, opts: server.Options{
		Host: "127.0.34.2", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	}}
	sa.start()
	sa.opts.Port = sa.ns.Addr().(*net.TCPAddr).Port
	t.Cleanup(sa.stop)
	return sa
}

func (sa *standalone) start() {
	sa.t.Helper()
	opts := sa.opts
	ns, err := server.NewServer(&opts)
	if err != nil {
		sa.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		sa.t.Fatal("nats-server not ready")
	}
	sa.ns = ns
}

func (sa *standalone) stop() {
	if sa.ns != nil {
		sa.ns.Shutdown()
		sa.ns.WaitForShutdown()
		sa.ns = nil
	}
}

func (sa *standalone) url() string { return "nats://" + sa.ns.Addr().String() }

// TestAppendRetriesThroughOutage: an Append made while the NATS server is
// down (as during a leader election or a server restart) is retried and
// stored once the server is back, instead of failing at once (which would
// drop the device); one made while it stays down past the budget fails
// with an error that says Unavailable, which the front ends answer with
// 503 / no PUBACK.
func TestAppendRetriesThroughOutage(t *testing.T) {
	sa := startStandalone(t)
	s := openT(t, Config{URL: sa.url(), Logger: testLogger(t)})
	ctx := context.Background()
	for _, mode := range []string{"group", "batch"} {
		t.Run(mode, func(t *testing.T) {
			before := storedMsgs(t, s)
			sa.stop()
			errc := make(chan error, 1)
			go func() {
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if mode == "batch" {
					errc <- s.AppendBatch(actx, batchOf("outage", 3))
				} else {
					errc <- s.Append(actx, seqMessage("outage", 0))
				}
			}()
			// The append is in its retries while the server is down: it
			// has not answered (an answer now would be a failure, as the
			// server is gone).
			select {
			case err := <-errc:
				t.Fatalf("Append answered %v while the server was down", err)
			case <-time.After(time.Second):
			}
			sa.start()
			if err := <-errc; err != nil {
				t.Fatalf("Append across the outage: %v", err)
			}
			want := uint64(1)
			if mode == "batch" {
				want = 3
			}
			// At least once: a try whose ack was lost may have stored it too.
			if got := storedMsgs(t, s) - before; got < want {
				t.Fatalf("stored %d new messages, want at least %d", got, want)
			}
		})
	}
	// No responders: what a publish gets at once while a replicated
	// stream has no leader. Here the stream is gone for a moment (deleted
	// and made again), which answers the same way on one server.
	t.Run("no responders", func(t *testing.T) {
		if err := s.js.DeleteStream(ctx, s.cfg.StreamName); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			errc <- s.Append(actx, seqMessage("leaderless", 0))
		}()
		select {
		case err := <-errc:
			t.Fatalf("Append answered %v while no stream took the subject", err)
		case <-time.After(time.Second):
		}
		if _, err := s.ensureStream(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("Append across the gap: %v", err)
		}
		if got := storedMsgs(t, s); got < 1 {
			t.Fatalf("stored %d messages, want the retried one", got)
		}
	})
	t.Run("gives up", func(t *testing.T) {
		s.testRetryBudget = 1500 * time.Millisecond
		defer func() { s.testRetryBudget = 0 }()
		sa.stop()
		defer sa.start()
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err := s.Append(actx, seqMessage("outage", 1))
		var u interface{ Unavailable() bool }
		if err == nil || !errors.As(err, &u) || !u.Unavailable() {
			t.Fatalf("Append with the server down for good: %v, want an Unavailable error", err)
		}
		t.Logf("gave up: %v", err)
	})
}
