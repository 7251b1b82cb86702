package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

type c2dEnv struct {
	reg   *hub.Registry
	links *hub.Links
	q     *hub.CloudToDevice
	st    *memstore.Store
	now   time.Time
}

func newC2DEnv(t *testing.T) *c2dEnv {
	t.Helper()
	e := &c2dEnv{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	st := memstore.New()
	e.st = st
	e.reg = hub.NewRegistry(st, func() time.Time { return e.now })
	e.reg.CacheSendViews() // as a single-node server does
	e.links = hub.NewLinks()
	e.q = hub.NewCloudToDevice(st, e.reg, e.links, nil)
	if _, err := e.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *c2dEnv) send(t *testing.T, body string) *hub.CloudMessage {
	t.Helper()
	m, err := e.q.Send(context.Background(), hubName, "dev-1", &hub.CloudMessage{Body: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *c2dEnv) receive(t *testing.T, max int) []*hub.CloudMessage {
	t.Helper()
	ms, err := e.q.Receive(context.Background(), hubName, "dev-1", max, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// count is the length of dev-1's queue; an error fails the test, so that a
// broken Count cannot pass for an empty queue.
func (e *c2dEnv) count(t *testing.T) int {
	t.Helper()
	n, err := e.q.Count(context.Background(), hubName, "dev-1")
	if err != nil {
		t.Fatalf("Count: %v", err)
	}
	return n
}

func bodies(ms []*hub.CloudMessage) string {
	var b []string
	for _, m := range ms {
		b = append(b, string(m.Body))
	}
	return strings.Join(b, ",")
}

func TestC2DSendStampsAndWakes(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	l := &fakeLink{}
	defer attachLink(e.links, hubName, "dev-1", l)()
	m, err := e.q.Send(ctx, hubName, "dev-1", &hub.CloudMessage{Body: []byte("hi"), Ack: "FULL",
		App: []hub.Property{{Name: "Color", Value: "red / blue"}}})
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID == "" || m.To != "/devices/dev-1/messages/deviceBound" || m.Ack != hub.AckFull ||
		!m.Enqueued.Equal(e.now) || !m.Expiry.Equal(e.now.Add(time.Hour)) || m.SequenceNumber == 0 {
		t.Errorf("sent: %+v", m)
	}
	if l.pending != 1 {
		t.Errorf("link woken %d times", l.pending)
	}
	if d, err := e.reg.Get(ctx, hubName, "dev-1"); err != nil || d.CloudToDeviceMessageCount != 0 {
		t.Errorf("Get counted the queue (%+v, %v): it is on the hot path", d, err)
	}
	d, err := e.reg.Show(ctx, hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.CloudToDeviceMessageCount != 1 {
		t.Errorf("cloudToDeviceMessageCount = %d", d.CloudToDeviceMessageCount)
	}
	m2 := e.send(t, "second")
	if m2.SequenceNumber <= m.SequenceNumber {
		t.Errorf("sequence numbers %d then %d", m.SequenceNumber, m2.SequenceNumber)
	}
}

func TestC2DSendRefused(t *testing.T) {
	cases := []struct {
		name string
		dev  string
		m    hub.CloudMessage
		code azerr.Code
	}{
		{"unknown device", "nobody", hub.CloudMessage{}, azerr.HubDeviceNotFound},
		{"bad ack", "dev-1", hub.CloudMessage{Ack: "sometimes"}, azerr.HubArgumentInvalid},
		{"bad property name", "dev-1", hub.CloudMessage{App: []hub.Property{{Name: "a b", Value: "x"}}}, azerr.HubArgumentInvalid},
		{"empty property name", "dev-1", hub.CloudMessage{App: []hub.Property{{Name: "", Value: "x"}}}, azerr.HubArgumentInvalid},
		{"control in value", "dev-1", hub.CloudMessage{App: []hub.Property{{Name: "a", Value: "x\ny"}}}, azerr.HubArgumentInvalid},
		{"over 64 KB", "dev-1", hub.CloudMessage{Body: make([]byte, 64*1024+1)}, azerr.HubMessageTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newC2DEnv(t)
			if _, err := e.q.Send(context.Background(), hubName, c.dev, &c.m); code(err) != c.code {
				t.Fatalf("Send = %v, want %d", err, c.code)
			}
			if n := e.count(t); n != 0 {
				t.Errorf("refused message queued: %d", n)
			}
		})
	}
}

// IoT Hub keeps a C2D message for one hour unless the sender says otherwise,
// and for 48 hours at most: a later expiry is cut to 48 hours after the
// send. The figures are literals, so that a wrong or missing cap fails here.
func TestC2DExpiry(t *testing.T) {
	cases := []struct {
		name   string
		expiry time.Duration // after the send; 0: none given
		want   time.Duration
	}{
		{"none: one hour", 0, time.Hour},
		{"a minute", time.Minute, time.Minute},
		{"47 hours", 47 * time.Hour, 47 * time.Hour},
		{"exactly 48 hours", 48 * time.Hour, 48 * time.Hour},
		{"a second over 48 hours", 48*time.Hour + time.Second, 48 * time.Hour},
		{"a year", 365 * 24 * time.Hour, 48 * time.Hour},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newC2DEnv(t)
			m := &hub.CloudMessage{Body: []byte("x")}
			if c.expiry != 0 {
				m.Expiry = e.now.Add(c.expiry)
			}
			sent, err := e.q.Send(context.Background(), hubName, "dev-1", m)
			if err != nil {
				t.Fatal(err)
			}
			if want := e.now.Add(c.want); !sent.Expiry.Equal(want) {
				t.Fatalf("expiry %v after the send, want %v", sent.Expiry.Sub(e.now), c.want)
			}
			// The stored message has that expiry too: it is delivered a
			// second before it and not a second after.
			sentAt := e.now
			e.now = sentAt.Add(c.want - time.Second)
			got := e.receive(t, 1)
			if len(got) != 1 || !got[0].Expiry.Equal(sent.Expiry) {
				t.Fatalf("a second before expiry: %+v", got)
			}
			if err := e.q.Abandon(context.Background(), hubName, "dev-1", got[0].LockToken); err != nil {
				t.Fatal(err)
			}
			e.now = sentAt.Add(c.want + time.Second)
			if got := e.receive(t, 1); len(got) != 0 {
				t.Fatalf("a second after expiry: delivered %+v", got)
			}
		})
	}
}

// A C2D message may be 64 KB: exactly that is accepted (the byte more is
// refused in TestC2DSendRefused).
func TestC2DSizeLimit(t *testing.T) {
	e := newC2DEnv(t)
	if _, err := e.q.Send(context.Background(), hubName, "dev-1", &hub.CloudMessage{Body: make([]byte, 64*1024)}); err != nil {
		t.Fatalf("a 64 KB message: %v", err)
	}
}

// IoT Hub queues at most 50 messages per device: a literal, so that a wrong
// MaxC2DQueueDepth fails here.
func TestC2DQueueDepth(t *testing.T) {
	e := newC2DEnv(t)
	for range 50 {
		e.send(t, "m")
	}
	if _, err := e.q.Send(context.Background(), hubName, "dev-1", &hub.CloudMessage{Body: []byte("51st")}); code(err) != azerr.HubQueueDepthExceeded {
		t.Fatalf("51st message: %v", err)
	}
	// A completed message makes room.
	ms := e.receive(t, 1)
	if err := e.q.Complete(context.Background(), hubName, "dev-1", ms[0].LockToken); err != nil {
		t.Fatal(err)
	}
	e.send(t, "now it fits")
}

func TestC2DLifecycle(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	e.send(t, "a")
	e.send(t, "b")
	e.send(t, "c")

	ms := e.receive(t, 2)
	if bodies(ms) != "a,b" || ms[0].DeliveryCount != 1 || ms[0].LockToken == "" || ms[0].LockToken == ms[1].LockToken {
		t.Fatalf("first receive: %s %+v", bodies(ms), ms)
	}
	// Locked messages are invisible; c is next.
	if got := e.receive(t, 5); bodies(got) != "c" {
		t.Fatalf("while a, b are locked: %s", bodies(got))
	}
	if got := e.receive(t, 5); len(got) != 0 {
		t.Fatalf("everything is locked, got %s", bodies(got))
	}
	// Abandon a: visible again with its delivery counted; a new token.
	if err := e.q.Abandon(ctx, hubName, "dev-1", ms[0].LockToken); err != nil {
		t.Fatal(err)
	}
	again := e.receive(t, 5)
	if bodies(again) != "a" || again[0].DeliveryCount != 2 || again[0].LockToken == ms[0].LockToken {
		t.Fatalf("after abandon: %s %+v", bodies(again), again)
	}
	// The old token is stale now.
	for _, settle := range []func(context.Context, string, string, string) error{e.q.Complete, e.q.Reject, e.q.Abandon} {
		if err := settle(ctx, hubName, "dev-1", ms[0].LockToken); code(err) != azerr.HubMessageLockLost {
			t.Errorf("stale token: %v", err)
		}
	}
	for _, tok := range []string{"", "x", "not-a-token", strings.Repeat("0", 32), "../../etc"} {
		if err := e.q.Complete(ctx, hubName, "dev-1", tok); code(err) != azerr.HubMessageLockLost {
			t.Errorf("Complete(%q) = %v", tok, err)
		}
	}
	if err := e.q.Complete(ctx, hubName, "dev-1", again[0].LockToken); err != nil {
		t.Fatal(err)
	}
	if err := e.q.Reject(ctx, hubName, "dev-1", ms[1].LockToken); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t); n != 1 {
		t.Errorf("after complete and reject: %d queued, want 1 (c)", n)
	}
	// A lock that times out makes the message visible again.
	e.now = e.now.Add(2 * time.Minute)
	if got := e.receive(t, 5); bodies(got) != "c" || got[0].DeliveryCount != 2 {
		t.Fatalf("after c's lock expired: %s", bodies(got))
	}
}

func TestC2DDeadLetters(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	if _, err := e.q.Send(ctx, hubName, "dev-1", &hub.CloudMessage{Body: []byte("short"), Expiry: e.now.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	e.send(t, "bounce")
	e.now = e.now.Add(2 * time.Second)
	for i := 1; i <= 10; i++ { // IoT Hub's default maximum delivery count
		ms := e.receive(t, 5)
		if bodies(ms) != "bounce" || ms[0].DeliveryCount != i {
			t.Fatalf("delivery %d: %s", i, bodies(ms))
		}
		if err := e.q.Abandon(ctx, hubName, "dev-1", ms[0].LockToken); err != nil {
			t.Fatal(err)
		}
	}
	if ms := e.receive(t, 5); len(ms) != 0 {
		t.Fatalf("delivered an 11th time or expired message: %s", bodies(ms))
	}
	if n := e.count(t); n != 0 {
		t.Errorf("dead-lettered messages still queued: %d", n)
	}
}

func TestC2DPurgeAndDeviceDelete(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	e.send(t, "a")
	e.send(t, "b")
	if n, err := e.q.Purge(ctx, hubName, "dev-1"); n != 2 || err != nil {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	if _, err := e.q.Purge(ctx, hubName, "nobody"); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("purge of unknown device: %v", err)
	}
	e.send(t, "left behind")
	if err := e.reg.Delete(ctx, hubName, "dev-1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t); n != 0 {
		t.Errorf("a recreated device inherited %d queued messages", n)
	}
}

// TestC2DSendAfterDeviceDelete: Send keeps what it needs of a device in
// memory (sendview.go); a delete must make the next Send answer
// DeviceNotFound, and a new device of the same ID get messages stamped
// with its own generation ID, not the deleted one's.
func TestC2DSendAfterDeviceDelete(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	old, err := e.reg.Get(ctx, hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if m := e.send(t, "cached"); m.GenerationID != old.GenerationID {
		t.Fatalf("GenerationID = %q, want %q", m.GenerationID, old.GenerationID)
	}
	if err := e.reg.Delete(ctx, hubName, "dev-1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.q.Send(ctx, hubName, "dev-1", &hub.CloudMessage{Body: []byte("x")}); code(err) != azerr.HubDeviceNotFound {
		t.Fatalf("Send to a deleted device: %v, want DeviceNotFound", err)
	}
	e.now = e.now.Add(time.Second) // generation IDs come from the clock
	nd, err := e.reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if nd.GenerationID == old.GenerationID {
		t.Fatal("the new device has the old generation ID")
	}
	if m := e.send(t, "new"); m.GenerationID != nd.GenerationID {
		t.Errorf("GenerationID = %q, want the new device's %q", m.GenerationID, nd.GenerationID)
	}
}

func TestMethodsInvoke(t *testing.T) {
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	links := hub.NewLinks()
	m := hub.NewMethods(reg, links)
	ctx := context.Background()
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	secs := func(n int) *int { return &n }
	echo := &fakeLink{subscribed: true, invoke: func(ctx context.Context, name string, payload []byte) (int, []byte, error) {
		return 201, append([]byte(`{"name":"`+name+`","got":`), append(payload, '}')...), nil
	}}
	silent := &fakeLink{subscribed: true, invoke: func(ctx context.Context, name string, payload []byte) (int, []byte, error) {
		<-ctx.Done()
		return 0, nil, ctx.Err()
	}}
	text := &fakeLink{subscribed: true, invoke: func(context.Context, string, []byte) (int, []byte, error) { return 200, []byte("plain"), nil }}
	gone := &fakeLink{subscribed: true, invoke: func(context.Context, string, []byte) (int, []byte, error) {
		return 0, nil, errors.New("connection closed")
	}}
	unsubscribed := &fakeLink{}

	cases := []struct {
		name   string
		link   *fakeLink
		dev    string
		req    hub.MethodRequest
		code   azerr.Code
		result string
	}{
		{"round trip", echo, "dev-1", hub.MethodRequest{MethodName: "reboot", Payload: json.RawMessage(`{"delay":1}`)}, azerr.Code{}, `201 {"name":"reboot","got":{"delay":1}}`},
		{"no payload is null", echo, "dev-1", hub.MethodRequest{MethodName: "comp*cmd"}, azerr.Code{}, `201 {"name":"comp*cmd","got":null}`},
		{"non-JSON answer", text, "dev-1", hub.MethodRequest{MethodName: "m"}, azerr.Code{}, `200 "plain"`},
		{"unknown device", echo, "nobody", hub.MethodRequest{MethodName: "m"}, azerr.HubDeviceNotFound, ""},
		{"offline", nil, "dev-1", hub.MethodRequest{MethodName: "m"}, azerr.HubDeviceNotOnline, ""},
		{"not subscribed", unsubscribed, "dev-1", hub.MethodRequest{MethodName: "m"}, azerr.HubDeviceNotOnline, ""},
		{"silent", silent, "dev-1", hub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: secs(5)}, azerr.HubGatewayTimeout, ""},
		{"connection lost", gone, "dev-1", hub.MethodRequest{MethodName: "m"}, azerr.HubDeviceNotOnline, ""},
		{"bad name", echo, "dev-1", hub.MethodRequest{MethodName: "a/b"}, azerr.HubArgumentInvalid, ""},
		{"empty name", echo, "dev-1", hub.MethodRequest{}, azerr.HubArgumentInvalid, ""},
		{"timeout too short", echo, "dev-1", hub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: secs(4)}, azerr.HubArgumentInvalid, ""},
		{"timeout too long", echo, "dev-1", hub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: secs(301)}, azerr.HubArgumentInvalid, ""},
		{"connect timeout too long", echo, "dev-1", hub.MethodRequest{MethodName: "m", ConnectTimeoutInSeconds: secs(301)}, azerr.HubArgumentInvalid, ""},
		{"bad payload", echo, "dev-1", hub.MethodRequest{MethodName: "m", Payload: json.RawMessage(`{`)}, azerr.HubArgumentInvalid, ""},
		{"payload too large", echo, "dev-1", hub.MethodRequest{MethodName: "m", Payload: json.RawMessage(`"` + strings.Repeat("x", 128*1024) + `"`)}, azerr.HubMessageTooLarge, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.link != nil {
				defer attachLink(links, hubName, "dev-1", c.link)()
			}
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			res, err := m.Invoke(ictx, hubName, c.dev, &c.req)
			if code(err) != c.code || (c.code == (azerr.Code{}) && err != nil) {
				t.Fatalf("Invoke = %+v, %v; want code %d", res, err, c.code)
			}
			if c.code == (azerr.Code{}) {
				if got := strings.TrimSpace(strings.Join([]string{itoa(res.Status), string(res.Payload)}, " ")); got != c.result {
					t.Errorf("result %s, want %s", got, c.result)
				}
			}
		})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestMethodsWaitForConnect(t *testing.T) {
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	links := hub.NewLinks()
	m := hub.NewMethods(reg, links)
	ctx := context.Background()
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	l := &fakeLink{invoke: func(context.Context, string, []byte) (int, []byte, error) { return 200, nil, nil }}
	done := make(chan error, 1)
	secs := 60
	go func() {
		res, err := m.Invoke(ctx, hubName, "dev-1", &hub.MethodRequest{MethodName: "m", ConnectTimeoutInSeconds: &secs})
		if err == nil && (res.Status != 200 || string(res.Payload) != "null") {
			err = errors.New("unexpected result " + string(res.Payload))
		}
		done <- err
	}()
	// Connected but not subscribed: still waiting; subscribing wakes it.
	defer attachLink(links, hubName, "dev-1", l)()
	select {
	case err := <-done:
		t.Fatalf("returned before the device subscribed: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	l.mu.Lock()
	l.subscribed = true
	l.mu.Unlock()
	links.Changed()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Invoke did not wake when the device subscribed")
	}
}

func TestC2DSequenceNumbersFitJavaScript(t *testing.T) {
	e := newC2DEnv(t)
	prev := int64(0)
	for range 5 {
		m := e.send(t, "x")
		if m.SequenceNumber <= prev || m.SequenceNumber > 1<<53-1 {
			t.Fatalf("sequence number %d after %d", m.SequenceNumber, prev)
		}
		prev = m.SequenceNumber
	}
}

// TestC2DHeldLocks: a delivery that ends with its connection (MQTT) holds
// its lock in memory: the message is invisible to other receivers while
// held, completions in one batch delete the messages and write the
// feedback they ask for, a batch given back stores the delivery count,
// and a restart (a new queue service on the same store) forgets the held
// locks, so the message is deliverable again.
func TestC2DHeldLocks(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	if _, err := e.q.Send(ctx, hubName, "dev-1", &hub.CloudMessage{Body: []byte("a"), Ack: hub.AckPositive}); err != nil {
		t.Fatal(err)
	}
	e.send(t, "b")
	e.send(t, "c")
	e.send(t, "d")
	held, err := e.q.ReceiveHeld(ctx, hubName, "dev-1", 3, time.Minute)
	if err != nil || bodies(held) != "a,b,c" || held[0].DeliveryCount != 1 || held[0].LockToken == "" {
		t.Fatalf("ReceiveHeld = %s %v", bodies(held), err)
	}
	// Held messages are locked for every other receiver of this node.
	if got := e.receive(t, 5); bodies(got) != "d" {
		t.Fatalf("while a, b, c are held: %s", bodies(got))
	}
	lost, err := e.q.CompleteMany(ctx, hubName, "dev-1", []string{held[0].LockToken, held[1].LockToken, held[1].LockToken, "not-a-token"})
	if err != nil || lost != 2 {
		t.Fatalf("CompleteMany = %d lost, %v; want 2 lost (a repeated token and a bad one)", lost, err)
	}
	if n := e.count(t); n != 2 {
		t.Fatalf("%d queued after completing 2 of 4", n)
	}
	if n, err := e.q.Feedback().Count(ctx, hubName); err != nil || n != 1 {
		t.Fatalf("feedback records %d (%v); want 1 (a asked for positive feedback)", n, err)
	}
	// A completed token is stale.
	if err := e.q.Complete(ctx, hubName, "dev-1", held[0].LockToken); code(err) != azerr.HubMessageLockLost {
		t.Fatalf("completing a again: %v", err)
	}
	// c given back: its delivery counted and stored.
	if lost, err := e.q.AbandonMany(ctx, hubName, "dev-1", []string{held[2].LockToken}); err != nil || lost != 0 {
		t.Fatalf("AbandonMany = %d, %v", lost, err)
	}
	again, err := e.q.ReceiveHeld(ctx, hubName, "dev-1", 5, time.Minute)
	if err != nil || bodies(again) != "c" || again[0].DeliveryCount != 2 {
		t.Fatalf("after giving c back: %s %+v %v", bodies(again), again, err)
	}
	// A restart loses the held lock and this delivery's count: c is
	// deliverable at once, counting from the count stored before (1).
	restarted := hub.NewCloudToDevice(e.st, e.reg, e.links, nil)
	after, err := restarted.Receive(ctx, hubName, "dev-1", 5, time.Minute)
	if err != nil || bodies(after) != "c" || after[0].DeliveryCount != 2 {
		t.Fatalf("after a restart: %s %+v %v; want c, delivery count 2", bodies(after), after, err)
	}
	// The held token of before the restart is stale on the restarted
	// node; the new lock completes.
	if lost, err := restarted.CompleteMany(ctx, hubName, "dev-1", []string{again[0].LockToken}); err != nil || lost != 1 {
		t.Fatalf("CompleteMany with a token from before the restart = %d, %v; want 1 lost", lost, err)
	}
	if err := restarted.Complete(ctx, hubName, "dev-1", after[0].LockToken); err != nil {
		t.Fatal(err)
	}
}

// TestC2DCompleteLater: completions parked for the device's next Send
// commit with it, and the queue's depth is counted without them; those
// no Send takes are committed by CompleteMany.
func TestC2DCompleteLater(t *testing.T) {
	e := newC2DEnv(t)
	ctx := context.Background()
	if _, err := e.q.Send(ctx, hubName, "dev-1", &hub.CloudMessage{Body: []byte("first"), Ack: hub.AckFull}); err != nil {
		t.Fatal(err)
	}
	for range hub.MaxC2DQueueDepth - 1 {
		e.send(t, "x")
	}
	held, err := e.q.ReceiveHeld(ctx, hubName, "dev-1", 2, time.Minute)
	if err != nil || len(held) != 2 {
		t.Fatalf("ReceiveHeld = %d, %v", len(held), err)
	}
	e.q.CompleteLater(hubName, "dev-1", []string{held[0].LockToken, held[1].LockToken})
	if n := e.count(t); n != hub.MaxC2DQueueDepth {
		t.Fatalf("%d queued; parked completions are not committed before a store call", n)
	}
	// The queue is full but for the two parked completions: the Send
	// commits them and its message.
	e.send(t, "after")
	if n := e.count(t); n != hub.MaxC2DQueueDepth-1 {
		t.Fatalf("%d queued after a Send that took 2 completions; want %d", n, hub.MaxC2DQueueDepth-1)
	}
	if n, err := e.q.Feedback().Count(ctx, hubName); err != nil || n != 1 {
		t.Fatalf("feedback records %d (%v); want 1 (first asked for full feedback)", n, err)
	}
	if err := e.q.Complete(ctx, hubName, "dev-1", held[0].LockToken); code(err) != azerr.HubMessageLockLost {
		t.Fatalf("a completion the Send committed completes again: %v", err)
	}
	// Parked and not taken by a Send: CompleteMany commits them.
	more, err := e.q.ReceiveHeld(ctx, hubName, "dev-1", 1, time.Minute)
	if err != nil || len(more) != 1 {
		t.Fatalf("ReceiveHeld = %d, %v", len(more), err)
	}
	e.q.CompleteLater(hubName, "dev-1", []string{more[0].LockToken})
	if lost, err := e.q.CompleteMany(ctx, hubName, "dev-1", nil); err != nil || lost != 0 {
		t.Fatalf("CompleteMany of the parked = %d, %v", lost, err)
	}
	if n := e.count(t); n != hub.MaxC2DQueueDepth-2 {
		t.Fatalf("%d queued after CompleteMany of the parked one; want %d", n, hub.MaxC2DQueueDepth-2)
	}
}
