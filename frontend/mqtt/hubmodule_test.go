package mqtt

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/mochi-mqtt/server/v2/packets"
)

const moduleKey = "bW9kdWxlLWtleS1tb2R1bGUta2V5LW1vZHVsZS1rZXk="

// module registers module m of device d with key moduleKey.
func (f *hubFixture) module(t testing.TB, d, m string) *hub.Module {
	t.Helper()
	mod, err := f.reg.CreateModule(context.Background(), hubName, &hub.Module{DeviceID: d, ModuleID: m,
		Authentication: &hub.Authentication{Type: hub.AuthSAS, SymmetricKey: &hub.SymmetricKey{PrimaryKey: moduleKey, SecondaryKey: secondaryKey}}})
	if err != nil {
		t.Fatal(err)
	}
	return mod
}

// moduleToken signs a module token as Node's ModuleClient does.
func moduleToken(t testing.TB, d, m, key string) string {
	t.Helper()
	tok, err := sas.SignEncoded(hubName+"/devices/"+d+"/modules/"+m, key, "", testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func moduleUsername(d, m string) string {
	return hubName + "/" + d + "/" + m + "/?api-version=2021-04-12"
}

// TestHubModuleConnect: a module connects with ClientId {device}/{module}
// and a module token; every other combination is CONNACK 5.
func TestHubModuleConnect(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.module(t, "dev-1", "m1")
	f.module(t, "dev-1", "m2")
	f.device(t, "dev-off", hub.StatusDisabled)
	f.module(t, "dev-off", "m1")
	tests := []struct {
		name, clientID, username, password string
		want                               byte
	}{
		{"module token", "dev-1/m1", moduleUsername("dev-1", "m1"), moduleToken(t, "dev-1", "m1", moduleKey), 0},
		{"secondary key", "dev-1/m1", moduleUsername("dev-1", "m1"), moduleToken(t, "dev-1", "m1", secondaryKey), 0},
		{"policy token", "dev-1/m1", moduleUsername("dev-1", "m1"), f.policyToken(t, "dev-1/modules/m1", "device", testNow.Add(time.Hour)), 0},
		{"device's key", "dev-1/m1", moduleUsername("dev-1", "m1"), moduleToken(t, "dev-1", "m1", indivKey), 5},
		{"another module's token", "dev-1/m1", moduleUsername("dev-1", "m1"), moduleToken(t, "dev-1", "m2", moduleKey), 5},
		{"device token as a module", "dev-1/m1", moduleUsername("dev-1", "m1"), validToken(t, "dev-1"), 5},
		{"module token as the device", "dev-1", hubUsername("dev-1"), moduleToken(t, "dev-1", "m1", moduleKey), 5},
		{"ClientId of the device", "dev-1", moduleUsername("dev-1", "m1"), moduleToken(t, "dev-1", "m1", moduleKey), 5},
		{"unknown module", "dev-1/m9", moduleUsername("dev-1", "m9"), moduleToken(t, "dev-1", "m9", moduleKey), 5},
		{"disabled device", "dev-off/m1", moduleUsername("dev-off", "m1"), moduleToken(t, "dev-off", "m1", moduleKey), 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.ts.dialRaw(t)
			c.expectOutcome(c.connectHub(tt.clientID, tt.username, tt.password, 0), tt.want)
		})
	}
}

// dialModule connects a raw client as module m of device d.
func (f *hubFixture) dialModule(t testing.TB, d, m string) *rawClient {
	t.Helper()
	c := f.ts.dialRaw(t)
	if rc := c.connectHub(d+"/"+m, moduleUsername(d, m), moduleToken(t, d, m, moduleKey), 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	return c
}

// TestHubModuleTelemetry: a module's telemetry is stamped with its module
// ID and its generation; its device's, a sibling's and C2D topics close
// the connection.
func TestHubModuleTelemetry(t *testing.T) {
	f := newHubFixture(t, nil)
	d := f.device(t, "dev-1", "")
	mod := f.module(t, "dev-1", "m1")
	c := f.dialModule(t, "dev-1", "m1")
	c.publish(1, 1, "devices/dev-1/modules/m1/messages/events/%24.mid=x&k=v", []byte("hello"))
	c.expectPuback(1)
	msgs := f.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.DeviceID != "dev-1" || m.ModuleID != "m1" {
		t.Errorf("device %q module %q", m.DeviceID, m.ModuleID)
	}
	want := []string{"message-id=x",
		"iothub-connection-device-id=dev-1",
		"iothub-connection-module-id=m1",
		"iothub-connection-auth-generation-id=" + mod.GenerationID,
		`iothub-connection-auth-method={"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`,
		"iothub-enqueuedtime=" + testEnqueued,
		"iothub-message-source=Telemetry",
	}
	if got := propsOf(m.System); !reflect.DeepEqual(got, want) {
		t.Errorf("system properties\n got %q\nwant %q", got, want)
	}
	if mod.GenerationID == d.GenerationID && mod.GenerationID == "" {
		t.Error("no generation ID")
	}
	st, err := f.reg.GetModule(context.Background(), hubName, "dev-1", "m1")
	if err != nil || st.ConnectionState != "Connected" || st.LastActivityTime.IsZero() {
		t.Errorf("module presence %+v, %v", st, err)
	}
	if dd, _ := f.reg.Get(context.Background(), hubName, "dev-1"); dd.ConnectionState == "Connected" {
		t.Error("the module's connection shows as its device's")
	}

	for _, topic := range []string{"devices/dev-1/messages/events/", "devices/dev-1/modules/m2/messages/events/"} {
		c := f.dialModule(t, "dev-1", "m1")
		c.publish(1, 1, topic, []byte("x"))
		c.expectClosed(5 * time.Second)
	}
	for _, filter := range []string{"devices/dev-1/messages/devicebound/#", "#", "devices/dev-1/modules/m1/#"} {
		c := f.dialModule(t, "dev-1", "m1")
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
			Filters: packets.Subscriptions{{Filter: filter, Qos: 1}}}
		c.send(pk.SubscribeEncode)
		c.expectClosed(5 * time.Second)
	}
	if n := len(f.sink.messages()); n != 1 {
		t.Errorf("%d messages after the refused publishes", n)
	}
}

// TestHubModuleTwinAndMethod: a module's twin over MQTT is its own (not
// its device's), a desired change of it reaches the module, and a method
// invoked on the module reaches its connection.
func TestHubModuleTwinAndMethod(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.module(t, "dev-1", "m1")
	c := f.dialModule(t, "dev-1", "m1")
	c.subscribe(1, 1, "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#")

	c.publish(0, 0, "$iothub/twin/PATCH/properties/reported/?$rid=1", []byte(`{"fw":"2.0"}`))
	if a := c.readTwinAnswer(); a.status != 204 || a.version != "2" {
		t.Fatalf("reported PATCH: %+v", a)
	}
	ctx := context.Background()
	mt, err := f.twins.Get(ctx, hubName, hub.TwinID("dev-1", "m1"))
	if err != nil || mt.ModuleID != "m1" || mt.DeviceID != "dev-1" {
		t.Fatalf("module twin %+v, %v", mt, err)
	}
	var rep map[string]any
	if err := json.Unmarshal(mt.Properties.Reported, &rep); err != nil || rep["fw"] != "2.0" {
		t.Errorf("module reported %s", mt.Properties.Reported)
	}
	dt, err := f.twins.Get(ctx, hubName, "dev-1")
	if err != nil || dt.ModuleID != "" {
		t.Fatalf("device twin %+v, %v", dt, err)
	}
	var devRep map[string]any
	if err := json.Unmarshal(dt.Properties.Reported, &devRep); err != nil || devRep["fw"] != nil {
		t.Errorf("the module's report reached its device's twin: %s", dt.Properties.Reported)
	}

	if _, err := f.twins.Patch(ctx, hubName, hub.TwinID("dev-1", "m1"), []byte(`{"properties":{"desired":{"rate":5}}}`), ""); err != nil {
		t.Fatal(err)
	}
	pk := c.readPublish("$iothub/twin/PATCH/properties/desired/", "a desired patch")
	if string(pk.Payload) != `{"rate":5,"$version":2}` {
		t.Errorf("desired patch %s", pk.Payload)
	}
	c.publish(0, 0, "$iothub/twin/GET/?$rid=2", nil)
	if a := c.readTwinAnswer(); a.status != 200 || string(a.body) != `{"desired":{"rate":5,"$version":2},"reported":{"fw":"2.0","$version":2}}` {
		t.Errorf("GET: %d %s", a.status, a.body)
	}

	res := make(chan invokeResult, 1)
	go func() {
		r, err := f.methods.Invoke(ctx, hubName, hub.TwinID("dev-1", "m1"), &hub.MethodRequest{MethodName: "ping", Payload: json.RawMessage(`{"a":1}`)})
		res <- invokeResult{r, err}
	}()
	req := c.readMethodRequest()
	if string(req.Payload) != `{"a":1}` {
		t.Errorf("method payload %s", req.Payload)
	}
	rid := req.TopicName[len("$iothub/methods/POST/ping/?$rid="):]
	c.publish(0, 0, "$iothub/methods/res/200/?$rid="+rid, []byte(`"pong"`))
	if r := waitInvoke(t, res); r.err != nil || r.res.Status != 200 || string(r.res.Payload) != `"pong"` {
		t.Errorf("invoke %+v %v", r.res, r.err)
	}
	// The device itself is not the module: nothing answers for it.
	one := 0
	if _, err := f.methods.Invoke(ctx, hubName, "dev-1", &hub.MethodRequest{MethodName: "ping", ConnectTimeoutInSeconds: &one}); azCode(err) != azerr.HubDeviceNotOnline {
		t.Errorf("device invoke: %v", err)
	}
}

// TestHubModuleRevocation: deleting a module, changing its keys, or
// disabling or deleting its device closes its connection.
func TestHubModuleRevocation(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		revoke func(f *hubFixture) error
	}{
		{"module deleted", func(f *hubFixture) error { return f.reg.DeleteModule(ctx, hubName, "dev-1", "m1", "") }},
		{"module keys changed", func(f *hubFixture) error {
			_, err := f.reg.UpdateModule(ctx, hubName, &hub.Module{DeviceID: "dev-1", ModuleID: "m1",
				Authentication: &hub.Authentication{Type: hub.AuthSAS, SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: indivKey}}}, "*")
			return err
		}},
		{"device disabled", func(f *hubFixture) error {
			_, err := f.reg.Update(ctx, hubName, &hub.Device{DeviceID: "dev-1", Status: hub.StatusDisabled}, "*")
			return err
		}},
		{"device deleted", func(f *hubFixture) error { return f.reg.Delete(ctx, hubName, "dev-1", "") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newHubFixture(t, nil)
			f.device(t, "dev-1", "")
			f.module(t, "dev-1", "m1")
			c := f.dialModule(t, "dev-1", "m1")
			c.ping()
			c.read()
			if err := tt.revoke(f); err != nil {
				t.Fatal(err)
			}
			c.expectClosed(5 * time.Second)
		})
	}
	// managedBy changes nothing of the credential: the connection stays.
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.module(t, "dev-1", "m1")
	c := f.dialModule(t, "dev-1", "m1")
	if _, err := f.reg.UpdateModule(ctx, hubName, &hub.Module{DeviceID: "dev-1", ModuleID: "m1", ManagedBy: "x"}, "*"); err != nil {
		t.Fatal(err)
	}
	c.expectPing()
}
