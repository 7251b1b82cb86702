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
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/throttle"
)

// throttleEnv is a hub whose registry carries --throttle-limit
// overrides, on a clock that never moves: every answer follows from the
// counts.
type throttleEnv struct {
	st    store.Store
	reg   *hub.Registry
	links *hub.Links
	twins *hub.Twins
}

func throttledEnv(t *testing.T, limits ...string) *throttleEnv {
	t.Helper()
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	e := &throttleEnv{st: memstore.New()}
	e.reg = hub.NewRegistry(e.st, clock)
	e.links = hub.NewLinks()
	e.twins = hub.NewTwins(e.st, e.reg, e.links)
	// dev-1 exists before the throttle is set: it costs nothing.
	if _, err := e.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	s, err := throttle.Parse(throttle.Off, nil, limits)
	if err != nil {
		t.Fatal(err)
	}
	e.reg.SetThrottle(throttle.New(throttle.Config{Settings: s, Now: clock}))
	return e
}

// wantThrottled checks err is IoT Hub's 429001 ThrottlingException with a
// wait.
func wantThrottled(t *testing.T, what string, err error) {
	t.Helper()
	var ae *azerr.Error
	if !errors.As(err, &ae) || ae.Code != azerr.HubThrottled || ae.RetryAfter <= 0 || !strings.Contains(ae.Message, "throttled") {
		t.Fatalf("%s: %v, want 429001 ThrottlingException with a retry-after", what, err)
	}
}

// The registry's service operations are throttled one each, a bulk
// operation as one whatever it names; the hub's other hubs and its other
// operation classes have buckets of their own.
func TestThrottleRegistry(t *testing.T) {
	e := throttledEnv(t, "registry=3/h")
	ctx := context.Background()
	ops := []hub.BulkOperation{{ImportMode: "create", Device: &hub.Device{DeviceID: "b-1"}},
		{ImportMode: "create", Device: &hub.Device{DeviceID: "b-2"}}, {ImportMode: "create", Device: &hub.Device{DeviceID: "b-3"}}}
	if res, err := e.reg.Bulk(ctx, hubName, ops); err != nil || !res.IsSuccessful {
		t.Fatalf("bulk of 3: %+v %v", res, err)
	}
	if _, err := e.reg.Show(ctx, hubName, "b-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.List(ctx, hubName, "", 10); err != nil {
		t.Fatal(err)
	}
	_, err := e.reg.Create(ctx, hubName, &hub.Device{DeviceID: "one-too-many"})
	wantThrottled(t, "4th registry operation", err)
	// Get is the domain's own read (authentication, DPS): never throttled.
	if _, err := e.reg.Get(ctx, hubName, "b-2"); err != nil {
		t.Fatalf("Get: %v", err)
	}
	if _, err := e.reg.Show(ctx, "other.hub.test", "x"); code(err) != azerr.HubDeviceNotFound {
		t.Fatalf("another hub: %v, want its own bucket (and 404)", err)
	}
	// Modules are registry operations too.
	_, err = e.reg.ListModules(ctx, hubName, "dev-1")
	wantThrottled(t, "module list", err)
}

// Twin reads and updates, device side and service side, share their
// class's bucket.
func TestThrottleTwins(t *testing.T) {
	e := throttledEnv(t, "twin-read=1/h", "twin-update=1/h")
	ctx := context.Background()
	if _, err := e.twins.DeviceDocument(ctx, hubName, "dev-1"); err != nil {
		t.Fatal(err)
	}
	_, err := e.twins.Get(ctx, hubName, "dev-1")
	wantThrottled(t, "service twin GET after a device GET", err)
	if _, err := e.twins.PatchReported(ctx, hubName, "dev-1", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	_, err = e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":{"x":1}}}`), "")
	wantThrottled(t, "desired patch after a reported patch", err)
	_, err = e.twins.Replace(ctx, hubName, "dev-1", []byte(`{}`), "")
	wantThrottled(t, "twin replace", err)
}

// Direct methods cost their request payload in 4 KB meters; queries and
// C2D sends have their own buckets.
func TestThrottleMethodsQueriesC2D(t *testing.T) {
	e := throttledEnv(t, "method=2/h", "query=1/h", "c2d-send=1/h")
	ctx := context.Background()
	methods := hub.NewMethods(e.reg, e.links)
	zero := 0
	big, _ := json.Marshal(strings.Repeat("x", 5000)) // 5 KB: two meters
	_, err := methods.Invoke(ctx, hubName, "dev-1", &hub.MethodRequest{MethodName: "m", Payload: big, ConnectTimeoutInSeconds: &zero})
	if code(err) != azerr.HubDeviceNotOnline {
		t.Fatalf("5 KB call within the rate: %v, want 404103 (nobody connected)", err)
	}
	_, err = methods.Invoke(ctx, hubName, "dev-1", &hub.MethodRequest{MethodName: "m", Payload: json.RawMessage(`1`), ConnectTimeoutInSeconds: &zero})
	wantThrottled(t, "a call after two meters", err)

	if _, err := e.twins.Query(ctx, hubName, "SELECT * FROM devices", 10, ""); err != nil {
		t.Fatal(err)
	}
	_, err = e.twins.Query(ctx, hubName, "SELECT * FROM devices", 10, "")
	wantThrottled(t, "second query", err)

	c2d := hub.NewCloudToDevice(e.st, e.reg, e.links, nil)
	if _, err := c2d.Send(ctx, hubName, "dev-1", &hub.CloudMessage{Body: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	_, err = c2d.Send(ctx, hubName, "dev-1", &hub.CloudMessage{Body: []byte("b")})
	wantThrottled(t, "second C2D send", err)
}
