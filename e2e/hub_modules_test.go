package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/stream"
)

// A module of a device, created through the registry API, connects over
// MQTT as {device}/{module}: its telemetry reaches the stream with the
// module stamp, its twin is its own (GET and reported PATCH over MQTT, a
// desired change from the service heard on the connection), and a direct
// method invoked on the module reaches it.
func TestModuleOverMQTT(t *testing.T) {
	b := start(t, t.TempDir())
	b.createHubDevice("edge-1")
	var mod hub.Module
	if resp, body := b.hubDo(http.MethodPut, "/devices/edge-1/modules/filter?api-version=2021-04-12", map[string]string{"moduleId": "filter"}, nil, &mod); resp.StatusCode != http.StatusOK {
		t.Fatalf("create module: %d %s", resp.StatusCode, body)
	}
	hubName := b.info.HubHostName
	tok, err := sas.SignEncoded(hubName+"/devices/edge-1/modules/filter", mod.Authentication.SymmetricKey.PrimaryKey, "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := b.srv.Stream().Subscribe(ctx, stream.SubscribeOptions{DeviceID: "edge-1"})
	if err != nil {
		t.Fatal(err)
	}
	d := b.hubConnectAs("edge-1/filter", hubName+"/edge-1/filter/?api-version=2021-04-12", tok, false)
	d.publish("devices/edge-1/modules/filter/messages/events/k=v", 1, `{"t":1}`)
	select {
	case m := <-msgs:
		if v, _ := m.SystemValue(hub.PropConnModuleID); v != "filter" || m.ModuleID != "filter" || string(m.Body) != `{"t":1}` {
			t.Fatalf("stream message %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("module telemetry not in the stream")
	}

	d.subscribe("$iothub/twin/res/#", 0)
	d.subscribe("$iothub/twin/PATCH/properties/desired/#", 0)
	d.subscribe("$iothub/methods/POST/#", 0)
	if r := d.twinRequest("$iothub/twin/PATCH/properties/reported/?$rid=1", `{"fw":"3"}`); !strings.HasPrefix(r.Topic(), "$iothub/twin/res/204/") {
		t.Fatalf("reported PATCH: %s", r.Topic())
	}
	var tw serviceTwin
	if resp, body := b.hubDo(http.MethodPatch, "/twins/edge-1/modules/filter?api-version=2021-04-12",
		map[string]any{"properties": map[string]any{"desired": map[string]any{"rate": 9}}}, nil, &tw); resp.StatusCode != http.StatusOK {
		t.Fatalf("module twin PATCH: %d %s", resp.StatusCode, body)
	}
	if props, _, _ := section(t, tw.Properties.Reported); props["fw"] != "3" {
		t.Errorf("module reported %s", tw.Properties.Reported)
	}
	checkJSON(t, "desired notification", d.next(d.desired, "the desired patch").Payload(), `{"rate":9,"$version":2}`)
	if r := d.twinRequest("$iothub/twin/GET/?$rid=2", ""); !jsonEqual(t, r.Payload(), []byte(`{"desired":{"rate":9,"$version":2},"reported":{"fw":"3","$version":2}}`)) {
		t.Errorf("twin GET: %s", r.Payload())
	}

	call := b.doAsync(http.MethodPost, "/twins/edge-1/modules/filter/methods?api-version=2021-04-12", `{"methodName":"flush","payload":{"n":2},"responseTimeoutInSeconds":10}`)
	req := d.next(d.methods, "the method request")
	checkJSON(t, "method payload", req.Payload(), `{"n":2}`)
	d.answerMethod(req, 200, `{"flushed":2}`)
	res := awaitHTTP(t, "module method", call)
	if res.status != http.StatusOK {
		t.Fatalf("module method: %d %s", res.status, res.body)
	}
	checkJSON(t, "method result", res.body, `{"status":200,"payload":{"flushed":2}}`)
}
