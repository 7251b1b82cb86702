package amqp

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// A module identity over AMQP, as ModuleClient with the Amqp transport uses
// it: CBS put-token for {hub}/devices/{d}/modules/{m}, telemetry stamped
// with the module, its own twin; its token opens neither its device's
// addresses nor another module's.
func TestModuleTelemetryTwinAndIsolation(t *testing.T) {
	f := newFixture(t)
	f.device(t, "edge1")
	ctx := context.Background()
	for _, m := range []string{"m1", "m2"} {
		if _, err := f.svc.Registry.CreateModule(ctx, hubName, &hub.Module{DeviceID: "edge1", ModuleID: m,
			Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: devKey, SecondaryKey: devKey}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.svc.Twins.PatchReported(ctx, hubName, hub.TwinID("edge1", "m1"), []byte(`{"role":"module"}`)); err != nil {
		t.Fatal(err)
	}
	s := session(t, f.dial(t, nil))
	tok, err := sas.SignEncoded(hubName+"/devices/edge1/modules/m1", devKey, "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if code, desc := putToken(t, s, hubName+"%2Fdevices%2Fedge1%2Fmodules%2Fm1", tok); code != 200 {
		t.Fatalf("module put-token: %d %s", code, desc)
	}
	c := ctxT(t)
	snd, err := s.NewSender(c, "/devices/edge1/modules/m1/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(c, &goamqp.Message{Data: [][]byte{[]byte(`{"from":"m1"}`)}}, nil); err != nil {
		t.Fatal(err)
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	if d, _ := msgs[0].SystemValue(hub.PropConnDeviceID); d != "edge1" {
		t.Errorf("connection device id %q", d)
	}
	if m, _ := msgs[0].SystemValue(hub.PropConnModuleID); m != "m1" {
		t.Errorf("connection module id %q, want m1", m)
	}

	// Twin GET answers the module's twin, not the device's.
	twOut, err := s.NewSender(c, "/devices/edge1/modules/m1/twin", nil)
	if err != nil {
		t.Fatal(err)
	}
	twIn, err := s.NewReceiver(c, "/devices/edge1/modules/m1/twin", nil)
	if err != nil {
		t.Fatal(err)
	}
	req := &goamqp.Message{Properties: &goamqp.MessageProperties{CorrelationID: "tw-1"},
		Annotations: goamqp.Annotations{"operation": "GET"}, Data: [][]byte{[]byte(" ")}}
	if err := twOut.Send(c, req, nil); err != nil {
		t.Fatal(err)
	}
	reply, err := twIn.Receive(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Reported map[string]any `json:"reported"`
	}
	if err := json.Unmarshal(reply.GetData(), &doc); err != nil || doc.Reported["role"] != "module" {
		t.Fatalf("module twin %s (%v)", reply.GetData(), err)
	}
	if st := reply.Annotations["status"]; st != int32(200) {
		t.Fatalf("status %v", st)
	}

	// Methods: the module's receiver makes it reachable.
	if _, err := s.NewReceiver(c, "/devices/edge1/modules/m1/methods/devicebound", nil); err != nil {
		t.Fatal(err)
	}

	// The module's token opens neither its device nor its sibling, and
	// module input messages are not served.
	for _, addr := range []string{"/devices/edge1/messages/events", "/devices/edge1/modules/m2/messages/events"} {
		_, err := s.NewSender(c, addr, nil)
		wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	}
	_, err = s.NewReceiver(c, "/devices/edge1/modules/m1/messages/events", nil)
	wantAMQPError(t, err, goamqp.ErrCondNotImplemented)
}
