package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/throttle"
)

// throttled starts a berth with --throttle off and the given
// --throttle-limit overrides. The rates are per hour so that nothing
// refills while a test runs: every answer is decided by the count alone,
// never by timing.
func throttled(t *testing.T, limits ...string) *berth {
	t.Helper()
	s, err := throttle.Parse(throttle.Off, nil, limits)
	if err != nil {
		t.Fatal(err)
	}
	return startWith(t, t.TempDir(), server.Config{AdminAddr: "127.0.0.1:0", Throttle: s})
}

// retryAfterWithin parses a retry-after and checks it is a whole number of
// seconds that asks for a real wait: more than the 202s' retry-after (1 in
// these tests) and no more than the rate's period for one token.
func retryAfterWithin(t *testing.T, what, v string, max int) {
	t.Helper()
	n, err := strconv.Atoi(v)
	if err != nil || n <= 1 || n > max {
		t.Fatalf("%s: retry-after %q, want whole seconds in (1, %d]", what, v, max)
	}
}

func derived(t *testing.T, groupKey, id string) string {
	t.Helper()
	k, err := sas.DeriveKey(groupKey, id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// metric returns the value of one line of /metrics ("name{labels}").
func (b *berth) metric(series string) string {
	b.t.Helper()
	code, text := b.admin("/metrics")
	if code != http.StatusOK {
		b.t.Fatalf("/metrics: %d", code)
	}
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// A DPS over its registrations rate answers 429 with errorCode 429001 and
// a retry-after of the throttle's wait, over HTTPS (header) and MQTT
// (topic), and the refusals are counted.
func TestThrottleDPSRegistrations(t *testing.T) {
	b := throttled(t, "dps-register=3/h")
	key := b.createGroup("throttle-group")
	for i := range 3 {
		id := fmt.Sprintf("thr-%d", i)
		checkAssigned(t, b.provisionHTTPS(id, derived(t, key, id)), id, "hub.berth.test")
	}

	id := "thr-https"
	var body struct {
		ErrorCode  int    `json:"errorCode"`
		TrackingID string `json:"trackingId"`
		Message    string `json:"message"`
	}
	resp, data := b.do("PUT", "/"+b.info.IDScope+"/registrations/"+id+"/register?api-version=2021-06-01",
		b.deviceToken(id, derived(t, key, id)), `{"registrationId":"`+id+`"}`, nil, &body)
	if resp.StatusCode != 429 || resp.Header.Get("x-ms-error-code") != "429001" || body.ErrorCode != 429001 || body.TrackingID == "" {
		t.Fatalf("HTTPS register over the rate: %d x-ms-error-code=%q %s", resp.StatusCode, resp.Header.Get("x-ms-error-code"), data)
	}
	// One token of 3/h comes back in 1200 s.
	retryAfterWithin(t, "HTTPS", resp.Header.Get("retry-after"), 1200)

	id = "thr-mqtt"
	d := b.mqttConnect(id, b.deviceToken(id, derived(t, key, id)))
	st, retry, payload := d.request("$dps/registrations/PUT/iotdps-register/?$rid=7", "7", `{"registrationId":"`+id+`"}`)
	if st != 429 || json.Unmarshal(payload, &body) != nil || body.ErrorCode != 429001 {
		t.Fatalf("MQTT register over the rate: res/%d %s", st, payload)
	}
	retryAfterWithin(t, "MQTT", retry, 1200)

	if got := b.metric(`berth_throttled_requests_total{hub="",operation="dps-register"}`); got != "2" {
		t.Errorf("throttled registrations counted %q, want 2", got)
	}
}

// A device's operation polls are limited per device (Azure: 5 per 10 s
// per device), after authentication, and another device is not affected.
func TestThrottleDPSPollsPerDevice(t *testing.T) {
	b := throttled(t, "dps-device-poll=2/h")
	key := b.createGroup("poll-group")
	poll := func(id string) (*http.Response, []byte) {
		tok := b.deviceToken(id, derived(t, key, id))
		base := "/" + b.info.IDScope + "/registrations/" + id
		var op dps.OperationStatus
		resp, data := b.do("PUT", base+"/register?api-version=2021-06-01", tok, `{"registrationId":"`+id+`"}`, nil, &op)
		if resp.StatusCode != 202 {
			t.Fatalf("register %s: %d %s", id, resp.StatusCode, data)
		}
		for range 2 {
			if resp, data := b.do("GET", base+"/operations/"+op.OperationID+"?api-version=2021-06-01", tok, nil, nil, nil); resp.StatusCode != 200 {
				t.Fatalf("poll %s within the rate: %d %s", id, resp.StatusCode, data)
			}
		}
		return b.do("GET", base+"/operations/"+op.OperationID+"?api-version=2021-06-01", tok, nil, nil, nil)
	}
	resp, data := poll("poller-1")
	if resp.StatusCode != 429 || !strings.Contains(string(data), `"errorCode":429001`) {
		t.Fatalf("third poll: %d %s", resp.StatusCode, data)
	}
	retryAfterWithin(t, "poll", resp.Header.Get("retry-after"), 1800)
	// Only poller-1's bucket is empty; poller-2 polls twice as well.
	if resp, data := poll("poller-2"); resp.StatusCode != 429 {
		t.Fatalf("poller-2's third poll: %d %s", resp.StatusCode, data)
	}
}

// The hub's service API over a rate answers 429 with IoT Hub's
// ThrottlingException (429001) in iothub-errorcode and the legacy body,
// which the service SDKs map to their throttling error.
func TestThrottleHubREST(t *testing.T) {
	b := throttled(t, "registry=3/h", "twin-read=1/h")
	b.createHubDevice("rest-1") // one registry operation
	for range 2 {
		if resp, data := b.hubDo("GET", "/devices/rest-1?api-version=2021-04-12", nil, nil, nil); resp.StatusCode != 200 {
			t.Fatalf("GET within the rate: %d %s", resp.StatusCode, data)
		}
	}
	resp, data := b.hubDo("GET", "/devices/rest-1?api-version=2021-04-12", nil, nil, nil)
	checkHubError(t, "registry GET over the rate", resp.StatusCode, resp.Header, data, 429, "ThrottlingException")
	// Twin reads have a bucket of their own.
	if resp, data := b.hubDo("GET", "/twins/rest-1?api-version=2021-04-12", nil, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("twin GET within its rate: %d %s", resp.StatusCode, data)
	}
	resp, data = b.hubDo("GET", "/twins/rest-1?api-version=2021-04-12", nil, nil, nil)
	checkHubError(t, "twin GET over the rate", resp.StatusCode, resp.Header, data, 429, "ThrottlingException")
	if got := b.metric(`berth_throttled_requests_total{hub="hub.berth.test",operation="registry"}`); got != "1" {
		t.Errorf("throttled registry operations counted %q, want 1", got)
	}
}

// Telemetry over MQTT beyond the D2C rate: the hub closes the connection
// without a PUBACK (IoT Hub's MQTT answer to a throttle,
// docs/spec/iothub-protocol.md#telemetry-size-and-errors), so the device
// keeps the message and sends it again after reconnecting; the messages
// within the rate were acknowledged.
func TestThrottleTelemetryOverMQTT(t *testing.T) {
	b := throttled(t, "d2c=2/h")
	key := b.createHubDevice("d2c-1")
	d := b.hubConnect("d2c-1", key, false)
	topic := "devices/d2c-1/messages/events/"
	d.publish(topic, 1, `{"n":1}`)
	d.publish(topic, 1, `{"n":2}`)
	tok := d.c.Publish(topic, 1, false, `{"n":3}`)
	select {
	case <-d.lost:
	case <-time.After(hubWait):
		t.Fatal("the hub kept the connection of a device over its D2C rate")
	}
	select {
	case <-tok.Done():
		if tok.Error() == nil {
			t.Fatal("the message over the rate was acknowledged")
		}
	default: // never acknowledged
	}
	// The device reconnects (connections are not throttled here) and is
	// still over the rate: closed again.
	d = b.hubConnect("d2c-1", key, false)
	d.c.Publish(topic, 1, false, `{"n":3}`)
	select {
	case <-d.lost:
	case <-time.After(hubWait):
		t.Fatal("the hub kept the reconnected device over its D2C rate")
	}
}

// New connections beyond the rate are refused with CONNACK 3 (server
// unavailable), which the SDKs retry, not 5 (not authorized), which they
// do not.
func TestThrottleConnections(t *testing.T) {
	b := throttled(t, "connect=1/h")
	key := b.createHubDevice("conn-1")
	b.hubConnect("conn-1", key, false)
	err := b.hubConnectErr("conn-1", hubToken(t, b.info.HubHostName, "conn-1", key))
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "unavailable") {
		t.Fatalf("second connection over the rate: %v, want CONNACK 3 server unavailable", err)
	}
}

// privateNATS starts a NATS server with JetStream for this test alone (the
// machine's NATS may carry other berths, whose nodes every node on it
// hears as peers) and returns its URL.
func privateNATS(t *testing.T) string {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

// The quota is the cluster's, not each node's: two nodes of one cluster
// with dps-register=4/h admit 2 registrations each (before, each admitted
// 4, so the cluster 8). berth_cluster_nodes says when a node has heard the
// other.
func TestThrottleIsTheClusters(t *testing.T) {
	s, err := throttle.Parse(throttle.Off, nil, []string{"dps-register=4/h"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{StoreURL: sharedStore(t), NATSURL: privateNATS(t), Throttle: s, AdminAddr: "127.0.0.1:0"}
	a := startWith(t, t.TempDir(), cfg)
	b := startWith(t, joinDir(t, a), cfg)
	for _, n := range []*berth{a, b} {
		deadline := time.Now().Add(30 * time.Second)
		for n.metric("berth_cluster_nodes") != "2" {
			if time.Now().After(deadline) {
				t.Fatalf("berth_cluster_nodes = %s after 30 s, want 2", n.metric("berth_cluster_nodes"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	key := a.createGroup("cluster-throttle")
	for name, n := range map[string]*berth{"A": a, "B": b} {
		admitted := 0
		for i := range 4 {
			id := fmt.Sprintf("cthr-%s-%d", name, i)
			resp, data := n.do("PUT", "/"+n.info.IDScope+"/registrations/"+id+"/register?api-version=2021-06-01",
				n.deviceToken(id, derived(t, key, id)), `{"registrationId":"`+id+`"}`, nil, nil)
			switch resp.StatusCode {
			case 202:
				admitted++
			case 429:
			default:
				t.Fatalf("node %s, register %s: %d %s", name, id, resp.StatusCode, data)
			}
		}
		if admitted != 2 {
			t.Errorf("node %s admitted %d of 4 registrations, want its half of the cluster's 4/h: 2", name, admitted)
		}
	}
}
