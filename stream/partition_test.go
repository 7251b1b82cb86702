package stream

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/berth-iot/berth/hub"
)

func TestTelemetrySubject(t *testing.T) {
	subj := TelemetrySubject("p", "hub.example", 3, "dev.1")
	if subj != "p.hub%2Eexample.3.dev%2E1" {
		t.Fatalf("TelemetrySubject = %q", subj)
	}
	h, part, d, err := ParseTelemetrySubject("p", subj)
	if err != nil || h != "hub.example" || part != 3 || d != "dev.1" {
		t.Errorf("ParseTelemetrySubject(%q) = %q %d %q %v", subj, h, part, d, err)
	}
	// Subjects stored before partitions still read, in no partition.
	h, part, d, err = ParseTelemetrySubject("p", "p.hub%2Eexample.dev")
	if err != nil || h != "hub.example" || part != -1 || d != "dev" {
		t.Errorf("legacy subject = %q %d %q %v", h, part, d, err)
	}
	for _, bad := range []string{"p.h.x.d", "p.h.-1.d", "p.h.01.d", "p.h..d", "p.h.1.d.e", "q.h.1.d"} {
		if _, _, _, err := ParseTelemetrySubject("p", bad); err == nil {
			t.Errorf("ParseTelemetrySubject(%q) accepted", bad)
		}
	}
}

func partitionMsg(hubName, dev string, part int, body string) *hub.Message {
	return &hub.Message{Hub: hubName, DeviceID: dev, Partition: part, Body: []byte(body)}
}

func recvEvents(t *testing.T, ch <-chan Event, n int) []Event {
	t.Helper()
	var out []Event
	for len(out) < n {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed after %d of %d events", len(out), n)
			}
			out = append(out, ev)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d of %d events", len(out), n)
		}
	}
	return out
}

// A partition is a subject filter over the one stream: its reads see only
// its own messages, with the stream's growing sequence numbers, from every
// kind of start position; and the numbers survive a restart.
func TestPartitions(t *testing.T) { testPartitions(t, embeddedConfig(t)) }

// The same on an external NATS server (the machine's, which may be an
// older nats-server than the embedded one).
func TestPartitionsExternal(t *testing.T) { testPartitions(t, externalConfig(t)) }

func testPartitions(t *testing.T, cfg Config) {
	s := openT(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if st, err := s.PartitionState(ctx, "h.example", 1); err != nil || !st.Empty {
		t.Fatalf("empty partition state = %+v, %v", st, err)
	}
	appendT(t, s, partitionMsg("h.example", "a", 1, "a1"))
	appendT(t, s, partitionMsg("h.example", "b", 0, "b1"))
	appendT(t, s, partitionMsg("other.example", "a", 1, "x1"))
	appendT(t, s, partitionMsg("h.example", "a", 1, "a2"))
	appendT(t, s, partitionMsg("h.example", "c", 1, "c1"))

	st, err := s.PartitionState(ctx, "h.example", 1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Empty || st.First != 1 || st.Last != 5 || st.LastStored.IsZero() {
		t.Fatalf("partition 1 state = %+v", st)
	}
	ch, err := s.ReadPartition(ctx, "h.example", 1, Position{})
	if err != nil {
		t.Fatal(err)
	}
	evs := recvEvents(t, ch, 3)
	var bodies []string
	var seqs []uint64
	for _, ev := range evs {
		bodies = append(bodies, string(ev.Msg.Body))
		seqs = append(seqs, ev.Seq)
		if ev.Msg.Partition != 1 || ev.Stored.IsZero() {
			t.Errorf("event %+v", ev)
		}
	}
	if want := []string{"a1", "a2", "c1"}; !equal(bodies, want) {
		t.Errorf("bodies %v, want %v", bodies, want)
	}
	if seqs[0] != 1 || seqs[1] != 4 || seqs[2] != 5 {
		t.Errorf("sequences %v, want [1 4 5]", seqs)
	}

	// From a sequence number (inclusive start).
	ch, err = s.ReadPartition(ctx, "h.example", 1, Position{Seq: 2})
	if err != nil {
		t.Fatal(err)
	}
	if ev := recvEvents(t, ch, 1)[0]; ev.Seq != 4 {
		t.Errorf("from seq 2: first event %d, want 4", ev.Seq)
	}
	// From a time: after the last event's, nothing old.
	ch, err = s.ReadPartition(ctx, "h.example", 1, Position{Time: evs[2].Stored.Add(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	// Latest: only what comes next.
	latest, err := s.ReadPartition(ctx, "h.example", 1, Position{Latest: true})
	if err != nil {
		t.Fatal(err)
	}
	appendT(t, s, partitionMsg("h.example", "a", 1, "a3"))
	if ev := recvEvents(t, ch, 1)[0]; string(ev.Msg.Body) != "a3" {
		t.Errorf("from time: got %q, want a3", ev.Msg.Body)
	}
	if ev := recvEvents(t, latest, 1)[0]; string(ev.Msg.Body) != "a3" || ev.Seq != 6 {
		t.Errorf("latest: got %q seq %d, want a3 seq 6", ev.Msg.Body, ev.Seq)
	}
	cancel()

	// A restart keeps every number.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, cfg)
	st2, err := s2.PartitionState(context.Background(), "h.example", 1)
	if err != nil {
		t.Fatal(err)
	}
	if st2.First != 1 || st2.Last != 6 {
		t.Errorf("after restart: %+v", st2)
	}
	appendT(t, s2, partitionMsg("h.example", "a", 1, "a4"))
	if st3, _ := s2.PartitionState(context.Background(), "h.example", 1); st3.Last != 7 {
		t.Errorf("after restart, the next sequence is %d, want 7", st3.Last)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TrimHub removes one hub's old messages and nothing else.
func TestTrimHub(t *testing.T)         { testTrimHub(t, embeddedConfig(t)) }
func TestTrimHubExternal(t *testing.T) { testTrimHub(t, externalConfig(t)) }

func testTrimHub(t *testing.T, cfg Config) {
	s := openT(t, cfg)
	appendT(t, s, partitionMsg("h.example", "a", 0, "old"))
	appendT(t, s, partitionMsg("o.example", "a", 0, "other"))
	ctx := context.Background()
	st, _ := s.PartitionState(ctx, "h.example", 0)
	cut := st.LastStored.Add(time.Millisecond)
	if err := s.TrimHub(ctx, "h.example", cut); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.PartitionState(ctx, "h.example", 0); !st.Empty {
		t.Errorf("after trim: %+v", st)
	}
	if st, _ := s.PartitionState(ctx, "o.example", 0); st.Empty {
		t.Errorf("the other hub lost its message")
	}
	appendT(t, s, partitionMsg("h.example", "a", 0, "new"))
	if err := s.TrimHub(ctx, "h.example", cut); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.PartitionState(ctx, "h.example", 0); st.Empty || st.First != 3 {
		t.Errorf("a message after the cutoff was trimmed: %+v", st)
	}
}

// A start never weakens the stream: limits an operator set stay unless
// this start was given its own, and replicas only grow.
func TestStartKeepsStreamSettings(t *testing.T) {
	cfg := embeddedConfig(t)
	s := openT(t, cfg)
	ctx := context.Background()
	st, err := s.js.Stream(ctx, DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	sc.MaxAge = 30 * 24 * time.Hour
	sc.MaxBytes = 1 << 30
	if _, err := s.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, cfg) // defaults: nothing explicit
	got := streamConfig(t, s2)
	if got.MaxAge != 30*24*time.Hour || got.MaxBytes != 1<<30 || !got.AllowAtomicPublish {
		t.Errorf("a start with defaults changed the stream: max age %s, max bytes %d, atomic %v", got.MaxAge, got.MaxBytes, got.AllowAtomicPublish)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.MaxAge = 2 * time.Hour
	s3 := openT(t, cfg)
	if got := streamConfig(t, s3); got.MaxAge != 2*time.Hour || got.MaxBytes != 1<<30 {
		t.Errorf("an explicit max age: got %s / %d", got.MaxAge, got.MaxBytes)
	}

	// Replicas: a node asking for fewer than the stream has keeps them.
	cur := jetstream.StreamConfig{Subjects: []string{"x.>"}, Replicas: 3, MaxAge: time.Hour, AllowAtomicPublish: true}
	want := jetstream.StreamConfig{Subjects: []string{"x.>"}, Replicas: 1, MaxAge: 7 * 24 * time.Hour}
	out := (&Stream{}).strengthen(cur, want)
	if out.Replicas != 3 || out.MaxAge != time.Hour || !out.AllowAtomicPublish {
		t.Errorf("strengthen = replicas %d, max age %s, atomic %v", out.Replicas, out.MaxAge, out.AllowAtomicPublish)
	}
	want.Replicas = 5
	if out := (&Stream{}).strengthen(cur, want); out.Replicas != 5 {
		t.Errorf("more replicas asked: got %d", out.Replicas)
	}
}

func streamConfig(t *testing.T, s *Stream) jetstream.StreamConfig {
	t.Helper()
	st, err := s.js.Stream(context.Background(), s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().Config
}
