package stream

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/berth-iot/berth/hub"
)

func batchOf(dev string, n int) []*hub.Message {
	ms := make([]*hub.Message, n)
	for i := range ms {
		ms[i] = seqMessage(dev, i)
	}
	return ms
}

// TestAppendBatch: a batch is stored whole, in order, as one atomic batch
// (the hook sees one batch of all of them), on both backends.
func TestAppendBatch(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := openT(t, b.cfg(t))
			var seen []int
			s.testHookBatch = func(n int, err error) {
				if err != nil {
					t.Errorf("batch of %d: %v", n, err)
				}
				seen = append(seen, n)
			}
			sub := subscribeT(t, s, SubscribeOptions{})
			const n = 5 // fewer than minAtomicR1: a device's batch is atomic whatever its size
			if err := s.AppendBatch(context.Background(), batchOf("batcher", n)); err != nil {
				t.Fatal(err)
			}
			if s.commit == nil {
				t.Logf("%s: no atomic batches on this server (%s); appended one by one", b.name, s.nc.ConnectedServerVersion())
			} else if len(seen) != 1 || seen[0] != n {
				t.Fatalf("atomic batches published: %v, want one of %d", seen, n)
			}
			for i, m := range recvN(t, sub, n) {
				if string(m.Body) != strconv.Itoa(i) {
					t.Fatalf("message %d is %q: out of order", i, m.Body)
				}
			}
		})
	}
}

// TestAppendBatchAtomic: when the server refuses one message in the middle
// of a batch, none of the batch is stored and AppendBatch fails; the
// stream takes the next batch whole.
func TestAppendBatchAtomic(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	ctx := context.Background()
	info, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	sc := info.CachedInfo().Config
	sc.MaxMsgSize = 4096
	if _, err := s.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	const n, bad = 6, 3
	// The failure is injected on the wire: message bad grows past the
	// stream's limit after berth has encoded and checked the batch, so
	// only the server's atomicity can keep messages 0..bad-1 out.
	s.testHookBatchMsg = func(i int, msg *nats.Msg) {
		if i == bad {
			msg.Data = make([]byte, 8192)
		}
	}
	err = s.AppendBatch(ctx, batchOf("atomic", n))
	if err == nil {
		t.Fatal("AppendBatch with a refused message returned nil")
	}
	if !strings.Contains(err.Error(), "batch of 6") {
		t.Errorf("error %v does not name the batch", err)
	}
	t.Logf("refused: %v", err)
	if got := storedMsgs(t, s); got != 0 {
		t.Fatalf("stream holds %d messages after a refused batch, want 0", got)
	}
	s.testHookBatchMsg = nil
	if err := s.AppendBatch(ctx, batchOf("atomic", n)); err != nil {
		t.Fatal(err)
	}
	if got := storedMsgs(t, s); got != n {
		t.Fatalf("stream holds %d messages, want %d", got, n)
	}
}

// TestAppendBatchWithoutAtomic: on a server without atomic batches the
// messages are still all stored, in order.
func TestAppendBatchWithoutAtomic(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.noAtomic = true
	s := openT(t, cfg)
	sub := subscribeT(t, s, SubscribeOptions{})
	if err := s.AppendBatch(context.Background(), batchOf("plain", 3)); err != nil {
		t.Fatal(err)
	}
	for i, m := range recvN(t, sub, 3) {
		if string(m.Body) != strconv.Itoa(i) {
			t.Fatalf("message %d is %q", i, m.Body)
		}
	}
}
