package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/sqlite"
)

// sendAck queues a message for dev-1 that asks for ack.
func (e *c2dEnv) sendAck(t *testing.T, id, ack string) *hub.CloudMessage {
	t.Helper()
	m, err := e.q.Send(context.Background(), hubName, "dev-1", &hub.CloudMessage{MessageID: id, Ack: ack, Body: []byte(id)})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// takeFeedback receives one feedback message and completes it; nil when
// there is none.
func takeFeedback(t *testing.T, f *hub.Feedback) []hub.FeedbackRecord {
	t.Helper()
	ctx := context.Background()
	m, err := f.Receive(ctx, hubName, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m == nil {
		return nil
	}
	var body []hub.FeedbackRecord
	if err := json.Unmarshal(m.Body, &body); err != nil || len(body) != len(m.Records) {
		t.Fatalf("body %s does not hold the records (%v)", m.Body, err)
	}
	if m.UserID != hubName || m.LockToken == "" || m.MessageID == "" {
		t.Errorf("feedback message %+v", m)
	}
	if err := f.Complete(ctx, hubName, m.LockToken); err != nil {
		t.Fatal(err)
	}
	return m.Records
}

func statuses(recs []hub.FeedbackRecord) string {
	s := ""
	for _, r := range recs {
		s += r.OriginalMessageID + "=" + r.StatusCode + " "
	}
	return s
}

// Every outcome, for every ack: only the outcomes the ack asks for leave a
// record, with the right status.
func TestFeedbackOutcomes(t *testing.T) {
	outcomes := []struct {
		name   string
		status string
		settle func(t *testing.T, e *c2dEnv, m *hub.CloudMessage)
	}{
		{"complete", hub.FeedbackSuccess, func(t *testing.T, e *c2dEnv, m *hub.CloudMessage) {
			ms := e.receive(t, 1)
			if err := e.q.Complete(context.Background(), hubName, "dev-1", ms[0].LockToken); err != nil {
				t.Fatal(err)
			}
		}},
		{"reject", hub.FeedbackRejected, func(t *testing.T, e *c2dEnv, m *hub.CloudMessage) {
			ms := e.receive(t, 1)
			if err := e.q.Reject(context.Background(), hubName, "dev-1", ms[0].LockToken); err != nil {
				t.Fatal(err)
			}
		}},
		{"expired on receive", hub.FeedbackExpired, func(t *testing.T, e *c2dEnv, m *hub.CloudMessage) {
			e.now = e.now.Add(2 * time.Hour)
			if ms := e.receive(t, 1); len(ms) != 0 {
				t.Fatalf("expired message delivered")
			}
		}},
		{"expired by sweep", hub.FeedbackExpired, func(t *testing.T, e *c2dEnv, m *hub.CloudMessage) {
			e.now = e.now.Add(2 * time.Hour)
			if err := e.q.Sweep(context.Background()); err != nil {
				t.Fatal(err)
			}
		}},
		{"delivery count", hub.FeedbackDeliveryCountExceeded, func(t *testing.T, e *c2dEnv, m *hub.CloudMessage) {
			for range hub.MaxDeliveryCount {
				ms := e.receive(t, 1)
				if err := e.q.Abandon(context.Background(), hubName, "dev-1", ms[0].LockToken); err != nil {
					t.Fatal(err)
				}
			}
			if ms := e.receive(t, 1); len(ms) != 0 {
				t.Fatalf("message delivered an 11th time")
			}
		}},
		{"purge", hub.FeedbackPurged, func(t *testing.T, e *c2dEnv, m *hub.CloudMessage) {
			if n, err := e.q.Purge(context.Background(), hubName, "dev-1"); err != nil || n != 1 {
				t.Fatalf("purge: %d, %v", n, err)
			}
		}},
	}
	for _, o := range outcomes {
		for _, ack := range []string{"", hub.AckNone, hub.AckPositive, hub.AckNegative, hub.AckFull} {
			t.Run(o.name+"/"+ack, func(t *testing.T) {
				e := newC2DEnv(t)
				m := e.sendAck(t, "m-1", ack)
				sentAt := e.now
				o.settle(t, e, m)
				if n := e.count(t); n != 0 {
					t.Fatalf("queue holds %d after the outcome", n)
				}
				want := ack == hub.AckFull || (ack == hub.AckPositive && o.status == hub.FeedbackSuccess) ||
					(ack == hub.AckNegative && o.status != hub.FeedbackSuccess)
				recs := takeFeedback(t, e.q.Feedback())
				if !want {
					if len(recs) != 0 {
						t.Fatalf("ack %q, outcome %s: unasked feedback %+v", ack, o.name, recs)
					}
					return
				}
				if len(recs) != 1 {
					t.Fatalf("ack %q, outcome %s: %d records", ack, o.name, len(recs))
				}
				d, err := e.reg.Get(context.Background(), hubName, "dev-1")
				if err != nil {
					t.Fatal(err)
				}
				r := recs[0]
				if r.OriginalMessageID != "m-1" || r.DeviceID != "dev-1" || r.StatusCode != o.status || r.Description != o.status ||
					r.DeviceGenerationID != d.GenerationID || d.GenerationID == "" {
					t.Errorf("record %+v, want status %s, generation %s", r, o.status, d.GenerationID)
				}
				at, err := time.Parse(time.RFC3339Nano, r.EnqueuedTimeUTC)
				if err != nil || at.Before(sentAt) || at.After(e.now) {
					t.Errorf("enqueuedTimeUtc %q (%v), want the outcome's time %s", r.EnqueuedTimeUTC, err, e.now)
				}
				if again := takeFeedback(t, e.q.Feedback()); len(again) != 0 {
					t.Errorf("completed feedback delivered again: %+v", again)
				}
			})
		}
	}
}

// A settlement whose lock was lost leaves no feedback behind.
func TestFeedbackLockLostWritesNothing(t *testing.T) {
	e := newC2DEnv(t)
	e.sendAck(t, "m-1", hub.AckFull)
	ms := e.receive(t, 1)
	e.now = e.now.Add(2 * time.Minute) // the lock ends; the message goes out again
	again := e.receive(t, 1)
	err := e.q.Complete(context.Background(), hubName, "dev-1", ms[0].LockToken)
	if code(err) != azerr.HubMessageLockLost {
		t.Fatalf("stale complete: %v", err)
	}
	if recs := takeFeedback(t, e.q.Feedback()); len(recs) != 0 {
		t.Fatalf("stale complete left feedback %+v", recs)
	}
	if err := e.q.Complete(context.Background(), hubName, "dev-1", again[0].LockToken); err != nil {
		t.Fatal(err)
	}
	if recs := takeFeedback(t, e.q.Feedback()); statuses(recs) != "m-1=Success " {
		t.Fatalf("feedback %s", statuses(recs))
	}
}

// 70 records come as a batch of 64 and one of 6; an abandoned batch comes
// back with its delivery counted; a completed one never.
func TestFeedbackBatchingAndSettlement(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	f := e.q.Feedback()
	for i := range 70 {
		e.sendAck(t, fmt.Sprintf("m-%02d", i), hub.AckPositive)
		ms := e.receive(t, 1)
		if err := e.q.Complete(ctx, hubName, "dev-1", ms[0].LockToken); err != nil {
			t.Fatal(err)
		}
	}
	first, err := f.Receive(ctx, hubName, time.Minute)
	if err != nil || first == nil || len(first.Records) != hub.MaxFeedbackBatch || first.DeliveryCount != 1 {
		t.Fatalf("first batch: %v, %v", first, err)
	}
	second, err := f.Receive(ctx, hubName, time.Minute)
	if err != nil || second == nil || len(second.Records) != 6 {
		t.Fatalf("second batch: %v, %v", second, err)
	}
	if third, err := f.Receive(ctx, hubName, time.Minute); err != nil || third != nil {
		t.Fatalf("everything is locked, yet: %v, %v", third, err)
	}
	if err := f.Abandon(ctx, hubName, second.LockToken); err != nil {
		t.Fatal(err)
	}
	again, err := f.Receive(ctx, hubName, time.Minute)
	if err != nil || again == nil || len(again.Records) != 6 || again.DeliveryCount != 2 || again.LockToken == second.LockToken {
		t.Fatalf("abandoned batch back: %+v, %v", again, err)
	}
	if err := f.Complete(ctx, hubName, second.LockToken); code(err) != azerr.HubMessageLockLost {
		t.Errorf("complete with the abandoned token: %v", err)
	}
	for _, tok := range []string{first.LockToken, again.LockToken} {
		if err := f.Complete(ctx, hubName, tok); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := f.Count(ctx, hubName); err != nil || n != 0 {
		t.Fatalf("%d records left (%v)", n, err)
	}
	for _, bad := range []string{"", "nope", "../../x", first.LockToken} {
		if err := f.Complete(ctx, hubName, bad); code(err) != azerr.HubMessageLockLost {
			t.Errorf("complete %q: %v", bad, err)
		}
	}
	// A batch whose lock ends is delivered again.
	e.sendAck(t, "late", hub.AckPositive)
	ms := e.receive(t, 1)
	if err := e.q.Complete(ctx, hubName, "dev-1", ms[0].LockToken); err != nil {
		t.Fatal(err)
	}
	b, _ := f.Receive(ctx, hubName, time.Minute)
	e.now = e.now.Add(2 * time.Minute)
	b2, err := f.Receive(ctx, hubName, time.Minute)
	if err != nil || b == nil || b2 == nil || statuses(b2.Records) != "late=Success " {
		t.Fatalf("timed-out batch: %v then %v, %v", b, b2, err)
	}
	// Feedback nobody takes expires.
	e.now = e.now.Add(hub.FeedbackTTL + time.Minute)
	if err := e.q.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Count(ctx, hubName); n != 0 {
		t.Errorf("%d expired records kept", n)
	}
}

// A live waiter is woken by new feedback.
func TestFeedbackWakesWaiter(t *testing.T) {
	e := newC2DEnv(t)
	w := e.q.Feedback().Wait(hubName)
	defer e.q.Feedback().Release(w)
	e.sendAck(t, "m-1", hub.AckFull)
	ms := e.receive(t, 1)
	if err := e.q.Complete(context.Background(), hubName, "dev-1", ms[0].LockToken); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.C:
	default:
		t.Fatal("waiter not woken")
	}
}

// Feedback outlives a restart: written, received and not completed before
// the store closes, it is delivered by the next process.
func TestFeedbackSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	ctx := context.Background()
	now := time.Now()
	open := func() (store.Store, *hub.CloudToDevice, *hub.Registry) {
		st, err := sqlite.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		reg := hub.NewRegistry(st, func() time.Time { return now })
		return st, hub.NewCloudToDevice(st, reg, nil, nil), reg
	}
	st, q, reg := open()
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := q.Send(ctx, hubName, "dev-1", &hub.CloudMessage{MessageID: id, Ack: hub.AckFull}); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := q.Receive(ctx, hubName, "dev-1", 2, time.Minute)
	if err != nil || len(ms) != 2 {
		t.Fatal(len(ms), err)
	}
	if err := q.Complete(ctx, hubName, "dev-1", ms[0].LockToken); err != nil {
		t.Fatal(err)
	}
	if err := q.Reject(ctx, hubName, "dev-1", ms[1].LockToken); err != nil {
		t.Fatal(err)
	}
	if m, err := q.Feedback().Receive(ctx, hubName, time.Minute); err != nil || len(m.Records) != 2 {
		t.Fatalf("before restart: %v, %v", m, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute) // the unsettled batch's lock has ended
	st, q, _ = open()
	defer st.Close()
	m, err := q.Feedback().Receive(ctx, hubName, time.Minute)
	if err != nil || m == nil || statuses(m.Records) != "a=Success b=Rejected " || m.DeliveryCount != 2 {
		t.Fatalf("after restart: %+v, %v", m, err)
	}
	if err := q.Feedback().Complete(ctx, hubName, m.LockToken); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Feedback().Count(ctx, hubName); err != nil || n != 0 {
		t.Fatalf("%d left, %v", n, err)
	}
}
