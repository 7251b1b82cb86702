package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

const methodsFilter = "$iothub/methods/POST/#"

// invokePath is the direct-method route of a device.
func invokePath(id string) string { return "/twins/" + id + "/methods?api-version=2021-04-12" }

// checkMethodRequest checks the topic a method request arrives on: the
// method name, then the rid and nothing after it (C# takes the segment
// after "?$rid=" whole). It returns the rid.
func checkMethodRequest(t *testing.T, topic, method string) string {
	t.Helper()
	rid, ok := strings.CutPrefix(topic, "$iothub/methods/POST/"+method+"/?$rid=")
	if !ok || rid == "" || strings.ContainsAny(rid, "&/?") {
		t.Fatalf("method request topic %q, want $iothub/methods/POST/%s/?$rid={rid}", topic, method)
	}
	return rid
}

// A direct method invoked through the service API reaches the subscribed
// device with its payload; the device's status and JSON body come back in
// a 200, whatever the device's status.
func TestDirectMethodRoundTrip(t *testing.T) {
	b := start(t, t.TempDir())
	key := b.createHubDevice("method-dev")
	d := b.hubConnect("method-dev", key, false)
	d.subscribe(methodsFilter, 0)

	res := b.doAsync("POST", invokePath("method-dev"), `{"methodName":"reboot","payload":{"delay":3,"reason":"update"},"responseTimeoutInSeconds":10,"connectTimeoutInSeconds":0}`)
	req := d.next(d.methods, "the method request")
	checkMethodRequest(t, req.Topic(), "reboot")
	checkJSON(t, "method request payload", req.Payload(), `{"delay":3,"reason":"update"}`)
	d.answerMethod(req, 201, `{"rebooted":true,"in":3}`)
	r := awaitHTTP(t, "invoke reboot", res)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("invoke reboot: %d %v %s", r.status, r.header, r.body)
	}
	checkJSON(t, "invoke reboot result", r.body, `{"status":201,"payload":{"rebooted":true,"in":3}}`)

	// A device error status is still a 200 for the service.
	res = b.doAsync("POST", invokePath("method-dev"), `{"methodName":"selfTest","payload":"quick"}`)
	req = d.next(d.methods, "the second method request")
	checkMethodRequest(t, req.Topic(), "selfTest")
	checkJSON(t, "second method request payload", req.Payload(), `"quick"`)
	d.answerMethod(req, 500, `{"failed":"sensor 2"}`)
	r = awaitHTTP(t, "invoke selfTest", res)
	if r.status != 200 {
		t.Fatalf("invoke selfTest: %d %s", r.status, r.body)
	}
	checkJSON(t, "invoke selfTest result", r.body, `{"status":500,"payload":{"failed":"sensor 2"}}`)
}

// A device that is not online (never connected, connected without the
// methods subscription, gone) gets 404 DeviceNotOnline at once; an unknown
// device 404 DeviceNotFound.
func TestDirectMethodDeviceNotOnline(t *testing.T) {
	b := start(t, t.TempDir())
	key := b.createHubDevice("offline-dev")
	body := `{"methodName":"ping","payload":null,"responseTimeoutInSeconds":5}`
	resp, data := b.hubDo("POST", invokePath("offline-dev"), body, nil, nil)
	checkHubError(t, "never connected", resp.StatusCode, resp.Header, data, 404, "DeviceNotOnline")
	resp, data = b.hubDo("POST", invokePath("nobody"), body, nil, nil)
	checkHubError(t, "unknown device", resp.StatusCode, resp.Header, data, 404, "DeviceNotFound")

	d := b.hubConnect("offline-dev", key, false)
	d.subscribe("$iothub/twin/res/#", 0)
	resp, data = b.hubDo("POST", invokePath("offline-dev"), body, nil, nil)
	checkHubError(t, "connected without the methods subscription", resp.StatusCode, resp.Header, data, 404, "DeviceNotOnline")

	d.subscribe(methodsFilter, 0)
	d.c.Disconnect(250)
	resp, data = b.hubDo("POST", invokePath("offline-dev"), body, nil, nil)
	checkHubError(t, "after the device disconnected", resp.StatusCode, resp.Header, data, 404, "DeviceNotOnline")
}

// With connectTimeoutInSeconds the hub waits for the device to connect and
// subscribe, then invokes the method.
func TestDirectMethodWaitsForTheDeviceToConnect(t *testing.T) {
	b := start(t, t.TempDir())
	key := b.createHubDevice("late-dev")
	res := b.doAsync("POST", invokePath("late-dev"), `{"methodName":"hello","payload":{"n":1},"connectTimeoutInSeconds":5,"responseTimeoutInSeconds":5}`)
	// The device shows up about a second later; an answer before that is
	// the hub not waiting.
	select {
	case r := <-res:
		t.Fatalf("answered before the device connected: %d %s %v", r.status, r.body, r.err)
	case <-time.After(time.Second):
	}
	d := b.hubConnect("late-dev", key, false)
	d.subscribe(methodsFilter, 0)
	req := d.next(d.methods, "the method request")
	checkMethodRequest(t, req.Topic(), "hello")
	checkJSON(t, "method request payload", req.Payload(), `{"n":1}`)
	d.answerMethod(req, 200, `"hello back"`)
	r := awaitHTTP(t, "invoke hello", res)
	if r.status != 200 {
		t.Fatalf("invoke hello: %d %s", r.status, r.body)
	}
	checkJSON(t, "invoke hello result", r.body, `{"status":200,"payload":"hello back"}`)
}

// A device that does not answer within responseTimeoutInSeconds makes the
// call fail with 504 GatewayTimeout, not before; its late answer is
// ignored and the connection keeps working.
func TestDirectMethodResponseTimeout(t *testing.T) {
	b := start(t, t.TempDir())
	key := b.createHubDevice("silent-dev")
	d := b.hubConnect("silent-dev", key, false)
	d.subscribe(methodsFilter, 0)

	began := time.Now()
	res := b.doAsync("POST", invokePath("silent-dev"), `{"methodName":"slow","payload":{},"responseTimeoutInSeconds":5}`)
	late := d.next(d.methods, "the method request")
	lateRID := checkMethodRequest(t, late.Topic(), "slow")
	r := awaitHTTP(t, "invoke slow", res)
	checkHubError(t, "silent device", r.status, r.header, r.body, 504, "GatewayTimeout")
	if took := time.Since(began); took < 5*time.Second {
		t.Fatalf("gave up after %v, before the 5 s response timeout", took)
	}

	d.answerMethod(late, 200, `{"late":true}`)
	res = b.doAsync("POST", invokePath("silent-dev"), `{"methodName":"fast","payload":{},"responseTimeoutInSeconds":5}`)
	req := d.next(d.methods, "the next method request")
	if rid := checkMethodRequest(t, req.Topic(), "fast"); rid == lateRID {
		t.Fatalf("the hub reused rid %q", rid)
	}
	d.answerMethod(req, 200, `{"fast":true}`)
	r = awaitHTTP(t, "invoke fast", res)
	if r.status != 200 {
		t.Fatalf("invoke fast after a late answer: %d %s", r.status, r.body)
	}
	checkJSON(t, "invoke fast result", r.body, `{"status":200,"payload":{"fast":true}}`)
}

// Concurrent invocations are told apart by rid: answered in the reverse
// order of their arrival, each call still gets its own device's answer.
func TestDirectMethodsConcurrentAnsweredOutOfOrder(t *testing.T) {
	b := start(t, t.TempDir())
	key := b.createHubDevice("busy-dev")
	d := b.hubConnect("busy-dev", key, false)
	d.subscribe(methodsFilter, 0)
	var calls []<-chan httpResult
	for i := range 5 {
		calls = append(calls, b.doAsync("POST", invokePath("busy-dev"), fmt.Sprintf(`{"methodName":"op%d","payload":{"n":%d}}`, i, i)))
	}
	var reqs []paho.Message
	rids := map[string]bool{}
	for range calls {
		req := d.next(d.methods, "a method request")
		name, _, _ := strings.Cut(strings.TrimPrefix(req.Topic(), "$iothub/methods/POST/"), "/")
		rid := checkMethodRequest(t, req.Topic(), name)
		if rids[rid] {
			t.Fatalf("two pending requests share rid %q", rid)
		}
		rids[rid] = true
		reqs = append(reqs, req)
	}
	for i := len(reqs) - 1; i >= 0; i-- {
		// The answer names the call it belongs to: the request's payload
		// echoed, and 200+n as the status.
		var p struct{ N int }
		if err := json.Unmarshal(reqs[i].Payload(), &p); err != nil {
			t.Fatalf("request payload %q: %v", reqs[i].Payload(), err)
		}
		d.answerMethod(reqs[i], 200+p.N, string(reqs[i].Payload()))
	}
	for i, call := range calls {
		r := awaitHTTP(t, fmt.Sprintf("invoke op%d", i), call)
		var res struct {
			Status  int `json:"status"`
			Payload struct {
				N int `json:"n"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(r.body, &res); err != nil || r.status != 200 || res.Payload.N != i || res.Status != 200+i {
			t.Fatalf("invoke op%d got another call's answer or none: %d %s", i, r.status, r.body)
		}
	}
}
