package linkbus_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/linkbus"
	"github.com/berth-iot/berth/stream"
)

const (
	hubName = "Hub.Berth.Test"
	wait    = 10 * time.Second
	// margin is short so that "nobody answers" cases end quickly.
	margin = 300 * time.Millisecond
)

// link is a device connection on one node.
type link struct {
	closed     chan hub.CloseReason
	desired    chan string
	pending    chan struct{}
	subscribed atomic.Bool
	invoke     func(ctx context.Context, name string, payload []byte) (int, []byte, error)
}

func newLink(subscribed bool, invoke func(ctx context.Context, name string, payload []byte) (int, []byte, error)) *link {
	l := &link{closed: make(chan hub.CloseReason, 4), desired: make(chan string, 16), pending: make(chan struct{}, 16), invoke: invoke}
	l.subscribed.Store(subscribed)
	return l
}

func (l *link) DesiredPatch(v int64, body []byte) { l.desired <- fmt.Sprintf("%d:%s", v, body) }
func (l *link) MethodsSubscribed() bool           { return l.subscribed.Load() }
func (l *link) CloudToDevicePending()             { l.pending <- struct{}{} }
func (l *link) Close(r hub.CloseReason)           { l.closed <- r }
func (l *link) InvokeMethod(ctx context.Context, name string, payload []byte) (int, []byte, error) {
	return l.invoke(ctx, name, payload)
}

func echo(_ context.Context, name string, payload []byte) (int, []byte, error) {
	return 200, []byte(fmt.Sprintf(`{"%s":%s}`, name, payload)), nil
}

// node is one berth node: its links and its bus.
type node struct {
	links *hub.Links
	bus   *linkbus.Bus
}

// twoNodes starts an embedded NATS and two nodes on separate connections,
// as two berth processes on one NATS would be.
func twoNodes(t *testing.T, maxHandlers int) (a, b *node) {
	t.Helper()
	first, other := twoConns(t)
	var err error
	mk := func(nc *nats.Conn, id string) *node {
		n := &node{links: hub.NewLinks()}
		n.bus, err = linkbus.Start(linkbus.Config{Conn: nc, Links: n.links, NodeID: id, Margin: margin, MaxMethodHandlers: maxHandlers})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := n.bus.Close(); err != nil {
				t.Error(err)
			}
		})
		n.links.SetForwarder(n.bus)
		return n
	}
	return mk(first, "node-a"), mk(other, "node-b")
}

// twoConns starts an embedded NATS and returns two connections to it, one
// per node.
func twoConns(t *testing.T) (*nats.Conn, *nats.Conn) {
	t.Helper()
	st, err := stream.Open(t.Context(), stream.Config{StoreDir: t.TempDir(), ListenAddr: "127.0.0.1:0", Token: "test-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	other, err := nats.Connect(st.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	return st.Conn(), other
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("nothing for %s within %s", what, wait)
	}
	var zero T
	return zero
}

func TestPushesReachTheNodeHoldingTheDevice(t *testing.T) {
	a, b := twoNodes(t, 0)
	// The device is connected to both nodes here, which the one-session
	// rule would end: the nodes forward pushes but not attaches.
	a.links.SetForwarder(struct{ hub.Forwarder }{a.bus})
	b.links.SetForwarder(struct{ hub.Forwarder }{b.bus})
	onA, onB := newLink(true, echo), newLink(true, echo)
	defer attachLink(a.links, hubName, "dev.1", onA)()
	defer attachLink(b.links, hubName, "dev.1", onB)()

	a.bus.DesiredPatch(hubName, "dev.1", 7, []byte(`{"x":1,"$version":7}`))
	if got := recv(t, onB.desired, "the desired patch on B"); got != `7:{"x":1,"$version":7}` {
		t.Errorf("B got %q", got)
	}
	a.bus.CloudToDevicePending(hubName, "dev.1")
	recv(t, onB.pending, "the C2D wake-up on B")

	// A ignores its own pushes: what A's link hears next is B's push, sent
	// after A's reached B and so delivered after it.
	b.bus.DesiredPatch(hubName, "dev.1", 8, []byte(`{}`))
	if got := recv(t, onA.desired, "B's desired patch on A"); got != `8:{}` {
		t.Errorf("A's link got %q first; its own push must be ignored", got)
	}
	b.bus.CloudToDevicePending(hubName, "dev.1")
	recv(t, onA.pending, "B's wake-up on A")
	select {
	case <-onA.pending:
		t.Error("A's link was woken by A's own push")
	default:
	}
}

func TestRemoteMethod(t *testing.T) {
	silent := func(ctx context.Context, _ string, _ []byte) (int, []byte, error) {
		<-ctx.Done()
		return 0, nil, ctx.Err()
	}
	gone := func(context.Context, string, []byte) (int, []byte, error) {
		return 0, nil, errors.New("connection closed")
	}
	refused := func(context.Context, string, []byte) (int, []byte, error) {
		return 0, nil, azerr.Newf(azerr.HubMessageTooLarge, "too large")
	}
	cases := []struct {
		name        string
		onB         *link // attached on B before the call; nil: none
		onA         *link // attached on A (the caller) only
		connect     time.Duration
		response    time.Duration
		wantErr     error
		wantCode    azerr.Code
		wantAnswer  string
		wantElapsed time.Duration // at least
	}{
		{name: "answered by B", onB: newLink(true, echo), response: 5 * time.Second, wantAnswer: `200 {"m":{"p":1}}`},
		{name: "nowhere", response: 5 * time.Second, wantErr: hub.ErrDeviceNotReached, wantElapsed: margin},
		{name: "not subscribed on B", onB: newLink(false, echo), response: 5 * time.Second, wantErr: hub.ErrDeviceNotReached},
		{name: "nowhere with connect timeout", connect: 400 * time.Millisecond, response: 5 * time.Second, wantErr: hub.ErrDeviceNotReached, wantElapsed: 400*time.Millisecond + margin},
		{name: "only on the caller's node", onA: newLink(true, echo), response: 5 * time.Second, wantErr: hub.ErrDeviceNotReached},
		{name: "device silent", onB: newLink(true, silent), response: 500 * time.Millisecond, wantErr: context.DeadlineExceeded, wantElapsed: 500 * time.Millisecond},
		{name: "device gone", onB: newLink(true, gone), response: 5 * time.Second, wantErr: hub.ErrDeviceNotReached},
		{name: "link error code", onB: newLink(true, refused), response: 5 * time.Second, wantCode: azerr.HubMessageTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := twoNodes(t, 0)
			if c.onB != nil {
				defer attachLink(b.links, hubName, "dev-1", c.onB)()
			}
			if c.onA != nil {
				defer attachLink(a.links, hubName, "dev-1", c.onA)()
			}
			start := time.Now()
			status, resp, err := a.bus.InvokeMethod(t.Context(), hubName, "dev-1", "m", []byte(`{"p":1}`), c.connect, c.response)
			elapsed := time.Since(start)
			switch {
			case c.wantErr != nil:
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
			case c.wantCode != (azerr.Code{}):
				var ae *azerr.Error
				if !errors.As(err, &ae) || ae.Code != c.wantCode {
					t.Fatalf("err = %v, want code %d", err, c.wantCode)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if got := fmt.Sprintf("%d %s", status, resp); got != c.wantAnswer {
					t.Errorf("answer %q, want %q", got, c.wantAnswer)
				}
			}
			if elapsed < c.wantElapsed {
				t.Errorf("gave up after %s, before %s", elapsed, c.wantElapsed)
			}
		})
	}
}

// A device that connects to B while A's call waits (connect timeout) is
// reached there.
func TestRemoteMethodWaitsForTheDeviceToConnect(t *testing.T) {
	a, b := twoNodes(t, 0)
	type answer struct {
		status int
		resp   []byte
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		s, r, err := a.bus.InvokeMethod(t.Context(), hubName, "dev-1", "m", []byte(`1`), time.Minute, 5*time.Second)
		done <- answer{s, r, err}
	}()
	l := newLink(false, echo)
	defer attachLink(b.links, hubName, "dev-1", l)()
	// Connected, then subscribed: B's waiter wakes on Changed.
	l.subscribed.Store(true)
	b.links.Changed()
	got := recv(t, done, "the answer")
	if got.err != nil || got.status != 200 || string(got.resp) != `{"m":1}` {
		t.Fatalf("answer %d %s %v", got.status, got.resp, got.err)
	}
}

// Beyond MaxMethodHandlers the node holding the device answers 429.
func TestRemoteMethodHandlersAreBounded(t *testing.T) {
	a, b := twoNodes(t, 1)
	started, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	defer attachLink(b.links, hubName, "dev-1", newLink(true, func(context.Context, string, []byte) (int, []byte, error) {
		started <- struct{}{}
		<-release
		return 200, nil, nil
	}))()
	go func() {
		_, _, _ = a.bus.InvokeMethod(context.Background(), hubName, "dev-1", "slow", nil, 0, 5*time.Second)
	}()
	recv(t, started, "the first call on B")
	_, _, err := a.bus.InvokeMethod(t.Context(), hubName, "dev-1", "m", nil, 0, 5*time.Second)
	var ae *azerr.Error
	if !errors.As(err, &ae) || ae.Code != azerr.HubThrottled {
		t.Fatalf("second call: %v, want 429001", err)
	}
}

// attachLink attaches l as the device's link (with no credential: nothing
// revokes it unless its device is disabled or deleted) and returns its
// detach.
func attachLink(ls *hub.Links, hubName, deviceID string, l hub.DeviceLink) func() {
	_, detach := ls.Attach(hubName, deviceID, "", l)
	return detach
}

// A device that connects to node B while connected to node A keeps only
// the newer session: A closes its own, as IoT Hub keeps one connection per
// identity; B's stays.
func TestANewerSessionOnAnotherNodeReplacesTheOlder(t *testing.T) {
	a, b := twoNodes(t, 0)
	onA, onB := newLink(true, echo), newLink(true, echo)
	defer attachLink(a.links, hubName, "dev.1", onA)()
	// B attaches later on the wall clock than A: wait until it is so.
	time.Sleep(time.Millisecond)
	defer attachLink(b.links, hubName, "dev.1", onB)()
	if r := recv(t, onA.closed, "A's older session closed"); r != hub.CloseReplaced {
		t.Errorf("A's session closed with %v, want CloseReplaced", r)
	}
	if a.links.Lookup(hubName, "dev.1") != nil {
		t.Error("A still pushes to the replaced session")
	}
	// A push through A now reaches the device on B.
	a.bus.DesiredPatch(hubName, "dev.1", 3, []byte(`{}`))
	recv(t, onB.desired, "the desired patch on B")
	select {
	case r := <-onB.closed:
		t.Fatalf("B's newer session was closed too (%v)", r)
	default:
	}
}

// presenceReg is a registry whose device dev.1 is connected on its node.
func presenceReg(t *testing.T) *hub.Registry {
	t.Helper()
	reg := hub.NewRegistry(nil, nil)
	t.Cleanup(reg.Connected(hubName, "dev.1"))
	return reg
}

// A node asks the others for their presence of devices and hears back the
// views of the node that holds the connection.
func TestPresenceAnswersFromTheNodeHoldingTheDevice(t *testing.T) {
	first, other := twoConns(t)
	asker, err := linkbus.Start(linkbus.Config{Conn: first, Links: hub.NewLinks(), NodeID: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = asker.Close() })
	holder, err := linkbus.Start(linkbus.Config{Conn: other, Links: hub.NewLinks(), NodeID: "node-b", Registry: presenceReg(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Close() })
	// The asker waits for the nodes it has heard from: wait for B's hello.
	deadline := time.Now().Add(wait)
	for {
		views := asker.Presence(t.Context(), hubName, []string{"dev.1", "dev.2"})
		if v, ok := views["dev.1"]; ok {
			if !v.Connected || v.StateUpdated.IsZero() {
				t.Fatalf("dev.1 on B: %+v, want connected", v)
			}
			if _, ok := views["dev.2"]; ok {
				t.Fatalf("B answered for dev.2, which it never saw: %+v", views)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no presence of dev.1 from B within %s", wait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// LiveNodes counts this node and those heard within three hello
// intervals: the other node once it says hello, and no longer once it has
// been silent that long (the throttle divides the cluster's quotas by it).
func TestLiveNodesCountsThePeersHeard(t *testing.T) {
	a, b := twoNodes(t, 0)
	waitFor := func(want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for a.bus.LiveNodes() != want {
			if time.Now().After(deadline) {
				t.Fatalf("LiveNodes = %d, want %d", a.bus.LiveNodes(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor(2)
	if err := b.bus.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(1)
}
