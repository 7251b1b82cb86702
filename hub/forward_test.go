package hub_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

// fakeForwarder records what the hub forwards to other nodes.
type fakeForwarder struct {
	mu      sync.Mutex
	desired []string // "hub/device version:body"
	c2d     []string // "hub/device"
	calls   []string // "hub/device name connect response"
	revoked []string // "hub/device/keep"
	invoke  func(ctx context.Context) (int, []byte, error)
}

func (f *fakeForwarder) DesiredPatch(hubName, deviceID string, version int64, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.desired = append(f.desired, fmt.Sprintf("%s/%s %d:%s", hubName, deviceID, version, body))
}

func (f *fakeForwarder) InvokeMethod(ctx context.Context, hubName, deviceID, name string, _ []byte, connectTimeout, responseTimeout time.Duration) (int, []byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf("%s/%s %s %s %s", hubName, deviceID, name, connectTimeout, responseTimeout))
	f.mu.Unlock()
	return f.invoke(ctx)
}

func (f *fakeForwarder) Revoke(hubName, deviceID, keep string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, hubName+"/"+deviceID+"/"+keep)
}

func (f *fakeForwarder) CloudToDevicePending(hubName, deviceID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.c2d = append(f.c2d, hubName+"/"+deviceID)
}

func (f *fakeForwarder) snapshot() (desired, c2d, calls []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.desired...), append([]string(nil), f.c2d...), append([]string(nil), f.calls...)
}

var _ hub.Forwarder = (*fakeForwarder)(nil)

func TestDesiredPatchForwardedOnlyWithoutLocalLink(t *testing.T) {
	for _, local := range []bool{false, true} {
		t.Run(fmt.Sprintf("local=%v", local), func(t *testing.T) {
			e := newTwinEnv(t)
			f := &fakeForwarder{}
			e.links.SetForwarder(f)
			l := &fakeLink{}
			if local {
				defer attachLink(e.links, hubName, "dev-1", l)()
			}
			if _, err := e.twins.Patch(context.Background(), hubName, "dev-1", []byte(`{"properties":{"desired":{"rate":5}}}`), ""); err != nil {
				t.Fatal(err)
			}
			remote, _, _ := f.snapshot()
			l.mu.Lock()
			got := l.desired
			l.mu.Unlock()
			want := []string{`2:{"rate":5,"$version":2}`}
			var wantRemote []string
			if !local {
				wantRemote = []string{hubName + `/dev-1 2:{"rate":5,"$version":2}`}
				want = nil
			}
			if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(remote) != fmt.Sprint(wantRemote) {
				t.Errorf("local link got %q, forwarder got %q; want %q and %q", got, remote, want, wantRemote)
			}
		})
	}
}

func TestCloudToDeviceWakeForwardedOnlyWithoutLocalLink(t *testing.T) {
	for _, local := range []bool{false, true} {
		t.Run(fmt.Sprintf("local=%v", local), func(t *testing.T) {
			e := newC2DEnv(t)
			f := &fakeForwarder{}
			e.links.SetForwarder(f)
			l := &fakeLink{}
			if local {
				defer attachLink(e.links, hubName, "dev-1", l)()
			}
			e.send(t, "a")
			ms := e.receive(t, 1)
			if len(ms) != 1 {
				t.Fatalf("received %d messages, want 1", len(ms))
			}
			if err := e.q.Abandon(context.Background(), hubName, "dev-1", ms[0].LockToken); err != nil {
				t.Fatal(err)
			}
			_, remote, _ := f.snapshot()
			l.mu.Lock()
			pending := l.pending
			l.mu.Unlock()
			// Send and Abandon each wake the device once, here or elsewhere.
			wantLocal, wantRemote := 0, 2
			if local {
				wantLocal, wantRemote = 2, 0
			}
			if pending != wantLocal || len(remote) != wantRemote {
				t.Errorf("local wake-ups %d, forwarded %q; want %d local and %d forwarded", pending, remote, wantLocal, wantRemote)
			}
			for _, r := range remote {
				if r != hubName+"/dev-1" {
					t.Errorf("forwarded wake-up for %q", r)
				}
			}
		})
	}
}

func TestMethodsInvokeThroughForwarder(t *testing.T) {
	secs := func(n int) *int { return &n }
	answer := func(status int, body string, err error) func(context.Context) (int, []byte, error) {
		return func(context.Context) (int, []byte, error) { return status, []byte(body), err }
	}
	cases := []struct {
		name      string
		local     bool // a subscribed link on this node
		invoke    func(context.Context) (int, []byte, error)
		req       hub.MethodRequest
		code      azerr.Code
		result    string
		wantCalls []string
	}{
		{"remote answer", false, answer(201, `{"ok":true}`, nil),
			hub.MethodRequest{MethodName: "reboot", ConnectTimeoutInSeconds: secs(0)}, azerr.Code{}, `201 {"ok":true}`,
			[]string{hubName + "/dev-1 reboot 0s 30s"}},
		{"timeouts travel", false, answer(200, ``, nil),
			hub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: secs(7)}, azerr.Code{}, `200 null`,
			[]string{hubName + "/dev-1 m 0s 7s"}},
		{"local link first", true, answer(500, ``, nil),
			hub.MethodRequest{MethodName: "m"}, azerr.Code{}, `200 "local"`, nil},
		{"not online anywhere", false, answer(0, ``, fmt.Errorf("no answer: %w", hub.ErrDeviceNotReached)),
			hub.MethodRequest{MethodName: "m"}, azerr.HubDeviceNotOnline, "", []string{hubName + "/dev-1 m 0s 30s"}},
		{"remote response timeout", false, answer(0, ``, fmt.Errorf("late: %w", context.DeadlineExceeded)),
			hub.MethodRequest{MethodName: "m"}, azerr.HubGatewayTimeout, "", []string{hubName + "/dev-1 m 0s 30s"}},
		{"remote node busy", false, answer(0, ``, azerr.Newf(azerr.HubThrottled, "busy")),
			hub.MethodRequest{MethodName: "m"}, azerr.HubThrottled, "", []string{hubName + "/dev-1 m 0s 30s"}},
		{"invalid request never forwarded", false, answer(200, ``, nil),
			hub.MethodRequest{MethodName: "a/b"}, azerr.HubArgumentInvalid, "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reg := hub.NewRegistry(memstore.New(), nil)
			links := hub.NewLinks()
			f := &fakeForwarder{invoke: c.invoke}
			links.SetForwarder(f)
			m := hub.NewMethods(reg, links)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
				t.Fatal(err)
			}
			if c.local {
				defer attachLink(links, hubName, "dev-1", &fakeLink{subscribed: true, invoke: func(context.Context, string, []byte) (int, []byte, error) {
					return 200, []byte("local"), nil
				}})()
			}
			res, err := m.Invoke(ctx, hubName, "dev-1", &c.req)
			if code(err) != c.code || (c.code == (azerr.Code{}) && err != nil) {
				t.Fatalf("Invoke = %+v, %v; want code %d", res, err, c.code)
			}
			if c.code == (azerr.Code{}) {
				if got := itoa(res.Status) + " " + string(res.Payload); got != c.result {
					t.Errorf("result %s, want %s", got, c.result)
				}
			}
			if _, _, calls := f.snapshot(); fmt.Sprint(calls) != fmt.Sprint(c.wantCalls) {
				t.Errorf("forwarder calls %q, want %q", calls, c.wantCalls)
			}
		})
	}
}

// With a connect timeout the device may connect to this node while the
// other nodes are asked: the local link answers and the remote call ends.
func TestMethodsForwarderRacesLocalConnect(t *testing.T) {
	reg := hub.NewRegistry(memstore.New(), nil)
	links := hub.NewLinks()
	remoteEnded := make(chan error, 1)
	asked := make(chan struct{})
	f := &fakeForwarder{invoke: func(ctx context.Context) (int, []byte, error) {
		close(asked)
		<-ctx.Done() // nobody elsewhere holds the device
		remoteEnded <- ctx.Err()
		return 0, nil, ctx.Err()
	}}
	links.SetForwarder(f)
	m := hub.NewMethods(reg, links)
	ctx := context.Background()
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	secs := 60
	type result struct {
		res *hub.MethodResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := m.Invoke(ctx, hubName, "dev-1", &hub.MethodRequest{MethodName: "m", ConnectTimeoutInSeconds: &secs})
		done <- result{res, err}
	}()
	<-asked
	defer attachLink(links, hubName, "dev-1", &fakeLink{subscribed: true, invoke: func(context.Context, string, []byte) (int, []byte, error) {
		return 200, []byte(`"here"`), nil
	}})()
	select {
	case r := <-done:
		if r.err != nil || r.res.Status != 200 || string(r.res.Payload) != `"here"` {
			t.Fatalf("Invoke = %+v, %v; want the local link's answer", r.res, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Invoke did not use the link that connected here")
	}
	select {
	case err := <-remoteEnded:
		if err != context.Canceled {
			t.Errorf("remote call ended with %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the remote call was not cancelled")
	}
}
