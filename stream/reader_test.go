package stream

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// deleteReaders deletes every consumer of s's stream: what a reader sees
// when the NATS server holding its consumer is lost.
func deleteReaders(t *testing.T, s *Stream) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTry)
	defer cancel()
	st, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	names := st.ConsumerNames(ctx)
	for name := range names.Name() {
		if err := st.DeleteConsumer(ctx, name); err != nil {
			t.Fatalf("delete consumer %s: %v", name, err)
		}
		n++
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// A reader whose consumer vanishes goes on after the last message it
// handed over: nothing skipped, nothing twice, also when the consumer
// vanishes before the first message of a reader of new messages only
// (whose start must stay where it was when ReadPartition returned).
func TestReaderReplacesLostConsumer(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const h = "h.example"
	appendT(t, s, partitionMsg(h, "a", 0, "old"))

	all, err := s.ReadPartition(ctx, h, 0, Position{})
	if err != nil {
		t.Fatal(err)
	}
	latest, err := s.ReadPartition(ctx, h, 0, Position{Latest: true})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := s.Subscribe(ctx, SubscribeOptions{Hub: h})
	if err != nil {
		t.Fatal(err)
	}
	if got := recvEvents(t, all, 1); string(got[0].Msg.Body) != "old" {
		t.Fatalf("first event %q", got[0].Msg.Body)
	}
	// ReadPartition creates its consumer in the background.
	for start := time.Now(); consumers(t, s) < 3; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d consumers, want 3", consumers(t, s))
		}
	}
	// All go before "latest" and the subscription saw anything; a
	// replacement that started at "new messages" again would skip m0.
	if n := deleteReaders(t, s); n != 3 {
		t.Fatalf("deleted %d consumers, want 3", n)
	}
	var want []string
	for i := range 20 {
		body := fmt.Sprintf("m%d", i)
		appendT(t, s, partitionMsg(h, "a", 0, body))
		want = append(want, body)
		if i == 9 {
			deleteReaders(t, s)
		}
	}
	for name, ch := range map[string]<-chan Event{"from the start": all, "latest": latest} {
		evs := recvEvents(t, ch, len(want))
		for i, ev := range evs {
			if string(ev.Msg.Body) != want[i] || (i > 0 && ev.Seq <= evs[i-1].Seq) {
				t.Fatalf("%s: event %d is %q seq %d (previous seq %d), want %q", name, i, ev.Msg.Body, ev.Seq, evs[max(i-1, 0)].Seq, want[i])
			}
		}
		select {
		case ev := <-ch:
			t.Errorf("%s: an extra event %q seq %d", name, ev.Msg.Body, ev.Seq)
		default:
		}
	}
	for i, m := range recvN(t, sub, len(want)) {
		if string(m.Body) != want[i] {
			t.Fatalf("subscription: message %d is %q, want %q", i, m.Body, want[i])
		}
	}
	select {
	case m := <-sub:
		t.Errorf("subscription: an extra message %q", m.Body)
	default:
	}
}

// consumers counts the consumers of s's stream.
func consumers(t *testing.T, s *Stream) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTry)
	defer cancel()
	info, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	return info.CachedInfo().State.Consumers
}

// A try to create a reader's consumer that gets no answer is followed by
// another, with a name of its own: before Subscribe returns (new messages
// only), or in the background for a fixed position.
func TestReaderRetriesCreate(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	var tries atomic.Int32
	s.testHookReaderTry = func(try int) error {
		tries.Add(1)
		if try < 3 {
			return fmt.Errorf("stand-in for a lost answer: %w", nats.ErrTimeout)
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub, err := s.Subscribe(ctx, SubscribeOptions{Hub: "h.example"})
	if err != nil {
		t.Fatal(err)
	}
	if n := tries.Load(); n != 3 {
		t.Errorf("Subscribe returned after %d tries, want 3", n)
	}
	tries.Store(0)
	part, err := s.ReadPartition(ctx, "h.example", 1, Position{})
	if err != nil {
		t.Fatal(err)
	}
	appendT(t, s, partitionMsg("h.example", "a", 1, "x"))
	if ev := recvEvents(t, part, 1)[0]; string(ev.Msg.Body) != "x" {
		t.Errorf("ReadPartition: got %q", ev.Msg.Body)
	}
	if n := tries.Load(); n != 3 {
		t.Errorf("ReadPartition's consumer created after %d tries, want 3", n)
	}
	if m := recvN(t, sub, 1)[0]; string(m.Body) != "x" {
		t.Errorf("Subscribe: got %q", m.Body)
	}

	// A context that ends first ends the tries with the last one's error.
	s.testHookReaderTry = func(int) error { return nats.ErrTimeout }
	short, cancelShort := context.WithTimeout(context.Background(), 3*readPause)
	defer cancelShort()
	if _, err := s.Subscribe(short, SubscribeOptions{}); !errors.Is(err, nats.ErrTimeout) {
		t.Errorf("Subscribe with no answer = %v, want the last try's timeout", err)
	}
}
