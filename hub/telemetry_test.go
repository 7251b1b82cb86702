package hub_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

// memSink records appends; batches go through AppendBatch when batch is
// set (a BatchSink), and fail is returned by the next call.
type memSink struct {
	mu      sync.Mutex
	msgs    []*hub.Message
	batches int
	fail    error
}

func (s *memSink) Append(_ context.Context, m *hub.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.msgs = append(s.msgs, m)
	return nil
}

type memBatchSink struct{ memSink }

func (s *memBatchSink) AppendBatch(_ context.Context, ms []*hub.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.batches++
	s.msgs = append(s.msgs, ms...)
	return nil
}

func checkCode(t *testing.T, err error, code azerr.Code) {
	t.Helper()
	var ae *azerr.Error
	if !errors.As(err, &ae) || ae.Code != code {
		t.Fatalf("error %v; want %d", err, code)
	}
}

func TestTelemetryAccept(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 5, 10, 0, 0, 123456789, time.UTC)
	reg := hub.NewRegistry(memstore.New(), func() time.Time { return now })
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	from := hub.Sender{Hub: hubName, DeviceID: "dev-1", GenerationID: "g1", AuthMethod: `{"scope":"device","type":"sas","issuer":"iothub"}`, ModelID: "dtmi:x;1"}

	t.Run("not enabled", func(t *testing.T) {
		checkCode(t, hub.NewTelemetry(nil, reg, nil).Accept(ctx, from, &hub.Message{Body: []byte("x")}), azerr.HubServiceUnavailable)
	})
	t.Run("stamped and active", func(t *testing.T) {
		sink := &memSink{}
		tel := hub.NewTelemetry(sink, reg, func() time.Time { return now })
		if err := tel.Accept(ctx, from, &hub.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		m := sink.msgs[0]
		for name, want := range map[string]string{hub.PropConnDeviceID: "dev-1", hub.PropConnGenerationID: "g1",
			hub.PropEnqueuedTime: "2026-12-05T10:00:00.123Z", hub.PropMessageSource: "Telemetry", hub.PropSchema: "dtmi:x;1"} {
			if got, _ := m.SystemValue(name); got != want {
				t.Errorf("%s = %q; want %q", name, got, want)
			}
		}
		d, err := reg.Show(ctx, hubName, "dev-1")
		if err != nil || !d.LastActivityTime.Equal(now) {
			t.Errorf("lastActivityTime %v, %v; want %v", d.LastActivityTime, err, now)
		}
	})
	t.Run("the limit counts the whole batch", func(t *testing.T) {
		sink := &memSink{}
		tel := hub.NewTelemetry(sink, reg, nil)
		half := &hub.Message{Body: make([]byte, hub.MaxMessageSize/2)}
		more := &hub.Message{Body: make([]byte, hub.MaxMessageSize/2), App: []hub.Property{{Name: "a", Value: "b"}}}
		checkCode(t, tel.AcceptBatch(ctx, from, []*hub.Message{half, more}), azerr.HubMessageTooLarge)
		if len(sink.msgs) != 0 {
			t.Fatal("part of an oversized batch was appended")
		}
		checkCode(t, tel.AcceptBatch(ctx, from, nil), azerr.HubArgumentInvalid)
	})
	t.Run("a batch sink stores a batch at once", func(t *testing.T) {
		sink := &memBatchSink{}
		tel := hub.NewTelemetry(sink, reg, nil)
		if err := tel.AcceptBatch(ctx, from, []*hub.Message{{Body: []byte("1")}, {Body: []byte("2")}}); err != nil {
			t.Fatal(err)
		}
		if sink.batches != 1 || len(sink.msgs) != 2 {
			t.Fatalf("%d batches, %d messages", sink.batches, len(sink.msgs))
		}
		e1, _ := sink.msgs[0].SystemValue(hub.PropEnqueuedTime)
		e2, _ := sink.msgs[1].SystemValue(hub.PropEnqueuedTime)
		if e1 != e2 {
			t.Errorf("enqueued times %s and %s differ within one batch", e1, e2)
		}
		sink.fail = errors.New("disk on fire")
		if err := tel.AcceptBatch(ctx, from, []*hub.Message{{Body: []byte("3")}, {Body: []byte("4")}}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("failed batch: %v", err)
		}
	})
}
