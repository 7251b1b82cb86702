package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/svcconn"
	"github.com/berth-iot/berth/sas"
)

// hubWait bounds every wait for something the hub pushes. It is generous:
// a slow race-detector run must not fail a correct hub, and a hub that
// never answers fails the test all the same.
const hubWait = 15 * time.Second

// hubServiceToken signs a service SAS with the hub's iothubowner policy
// (client.json's hubConnectionString), as the service SDKs sign theirs:
// sr is the host name, skn the policy.
func (b *berth) hubServiceToken() string {
	b.t.Helper()
	cs, err := svcconn.Parse("e2e", b.info.HubConnectionString)
	if err != nil {
		b.t.Fatal(err)
	}
	tok, err := sas.Sign(cs.HostName, cs.SharedAccessKey, cs.SharedAccessKeyName, time.Now().Add(time.Hour))
	if err != nil {
		b.t.Fatal(err)
	}
	return tok
}

// hubDo is do on the hub's service API with an iothubowner token.
func (b *berth) hubDo(method, path string, body any, header map[string]string, out any) (*http.Response, []byte) {
	b.t.Helper()
	return b.do(method, path, b.hubServiceToken(), body, header, out)
}

// createHubDevice registers a device through the registry API, as an
// operator would, and returns the primary key the hub generated for it.
func (b *berth) createHubDevice(id string) string {
	b.t.Helper()
	var d hub.Device
	resp, data := b.hubDo("PUT", "/devices/"+id+"?api-version=2021-04-12", map[string]any{"deviceId": id}, nil, &d)
	if resp.StatusCode != 200 || d.Authentication == nil || d.Authentication.SymmetricKey == nil || d.Authentication.SymmetricKey.PrimaryKey == "" {
		b.t.Fatalf("create device %s: %d %s", id, resp.StatusCode, data)
	}
	return d.Authentication.SymmetricKey.PrimaryKey
}

// checkHubError checks an IoT Hub error answer: the status, the
// iothub-errorcode header and the same name in the legacy body that the
// Node and C# SDKs parse (docs/spec/iothub-protocol.md#http-error-body).
func checkHubError(t *testing.T, what string, status int, header http.Header, body []byte, wantStatus int, wantName string) {
	t.Helper()
	if status != wantStatus || header.Get("iothub-errorcode") != wantName || !strings.Contains(string(body), `"ErrorCode:`+wantName+`;`) {
		t.Fatalf("%s: want %d %s, got %d iothub-errorcode=%q %s", what, wantStatus, wantName, status, header.Get("iothub-errorcode"), body)
	}
}

// httpResult is the answer to a request sent by doAsync.
type httpResult struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// doAsync sends a hub service request on its own goroutine and delivers the
// answer on the returned channel, so that the test goroutine can play the
// device meanwhile (a direct method waits for the device's answer). It
// never touches t: failing a test is the test goroutine's job.
func (b *berth) doAsync(method, path, body string) <-chan httpResult {
	b.t.Helper()
	tok := b.hubServiceToken()
	// Concurrent requests make the transport dial spare connections that
	// then idle without a request; the server's graceful shutdown waits 5 s
	// for such connections (net/http's rule for StateNew), so close them
	// before the server stops (cleanups run last-registered first).
	b.t.Cleanup(b.client.CloseIdleConnections)
	out := make(chan httpResult, 1)
	go func() {
		req, err := http.NewRequest(method, "https://127.0.0.1"+path, strings.NewReader(body))
		if err != nil {
			out <- httpResult{err: err}
			return
		}
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		req.Header.Set("Authorization", tok)
		resp, err := b.client.Do(req)
		if err != nil {
			out <- httpResult{err: err}
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		out <- httpResult{status: resp.StatusCode, header: resp.Header, body: data, err: err}
	}()
	return out
}

// awaitHTTP waits for a doAsync answer.
func awaitHTTP(t *testing.T, what string, ch <-chan httpResult) httpResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r
	case <-time.After(hubWait + 10*time.Second):
		t.Fatalf("%s: no answer", what)
	}
	return httpResult{}
}

// hubDevice is a device connected to its hub over MQTT with paho, the way
// the SDKs connect (ClientId = device id, the Node SDK's username, a device
// SAS as password). What the hub publishes is sorted by feature onto
// channels; a topic of no feature goes to stray, which every wait checks.
type hubDevice struct {
	t       *testing.T
	id      string
	c       paho.Client
	twin    chan paho.Message // $iothub/twin/res/…
	desired chan paho.Message // $iothub/twin/PATCH/properties/desired/…
	methods chan paho.Message // $iothub/methods/POST/…
	c2d     chan paho.Message // devices/{id}/messages/devicebound/…
	stray   chan paho.Message
	lost    chan error // the hub closed the connection
}

// hubConnect connects deviceID with a token signed by key and no
// subscription. With manualAck the device acknowledges a cloud-to-device
// message only when the test calls its Ack (paho otherwise PUBACKs each one
// as soon as it is handed over); everything else is acknowledged on
// arrival.
func (b *berth) hubConnect(deviceID, key string, manualAck bool) *hubDevice {
	b.t.Helper()
	hubName := b.info.HubHostName
	return b.hubConnectAs(deviceID, hubName+"/"+deviceID+"/?api-version=2021-04-12&DeviceClientType=berth-e2e",
		hubToken(b.t, hubName, deviceID, key), manualAck)
}

// hubConnectAs connects with ClientId deviceID (or {device}/{module}),
// username and password as given.
func (b *berth) hubConnectAs(deviceID, username, password string, manualAck bool) *hubDevice {
	b.t.Helper()
	d := &hubDevice{
		t: b.t, id: deviceID,
		twin: make(chan paho.Message, 16), desired: make(chan paho.Message, 16), methods: make(chan paho.Message, 16),
		c2d: make(chan paho.Message, hub.MaxC2DQueueDepth+8), stray: make(chan paho.Message, 16), lost: make(chan error, 1),
	}
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + b.info.MQTTAddress).
		SetClientID(deviceID).
		SetUsername(username).
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetAutoAckDisabled(manualAck).
		SetConnectTimeout(5 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"}).
		SetDefaultPublishHandler(d.route).
		SetConnectionLostHandler(func(_ paho.Client, err error) { d.lost <- err })
	d.c = paho.NewClient(opts)
	if tok := d.c.Connect(); !tok.WaitTimeout(hubWait) || tok.Error() != nil {
		b.t.Fatalf("hub connect %s: %v", deviceID, tok.Error())
	}
	b.t.Cleanup(func() { d.c.Disconnect(100) })
	return d
}

// route sorts a publication by topic. Only cloud-to-device messages wait
// for the test's Ack; Ack is idempotent, so acknowledging here as well as
// in paho's automatic path is harmless.
func (d *hubDevice) route(_ paho.Client, m paho.Message) {
	topic := m.Topic()
	ch := d.stray
	switch {
	case strings.HasPrefix(topic, "$iothub/twin/res/"):
		ch = d.twin
	case strings.HasPrefix(topic, "$iothub/twin/PATCH/properties/desired/"):
		ch = d.desired
	case strings.HasPrefix(topic, "$iothub/methods/POST/"):
		ch = d.methods
	case strings.HasPrefix(topic, "devices/"+d.id+"/messages/devicebound/"):
		d.c2d <- m
		return
	}
	m.Ack()
	ch <- m
}

// subscribe subscribes to one filter and waits for the SUBACK.
func (d *hubDevice) subscribe(filter string, qos byte) {
	d.t.Helper()
	tok := d.c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(hubWait) || tok.Error() != nil {
		d.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// publish publishes and, at QoS 1, waits for the PUBACK.
func (d *hubDevice) publish(topic string, qos byte, body string) {
	d.t.Helper()
	tok := d.c.Publish(topic, qos, false, body)
	if !tok.WaitTimeout(hubWait) || tok.Error() != nil {
		d.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// next waits for the next publication on ch.
func (d *hubDevice) next(ch chan paho.Message, what string) paho.Message {
	d.t.Helper()
	select {
	case m := <-ch:
		return m
	case m := <-d.stray:
		d.t.Fatalf("waiting for %s: the hub published on an unexpected topic %q: %s", what, m.Topic(), m.Payload())
	case err := <-d.lost:
		d.t.Fatalf("waiting for %s: the hub closed the connection: %v", what, err)
	case <-time.After(hubWait):
		d.t.Fatalf("waiting for %s: nothing within %v", what, hubWait)
	}
	return nil
}

// twinRequest publishes a twin request at QoS 0, as the Node and C SDKs
// do, and returns the hub's response.
func (d *hubDevice) twinRequest(topic, body string) paho.Message {
	d.t.Helper()
	d.publish(topic, 0, body)
	return d.next(d.twin, "the response to "+topic)
}

// answerMethod answers a direct-method request with status and body, at
// QoS 0 as the Node and C SDKs do.
func (d *hubDevice) answerMethod(req paho.Message, status int, body string) {
	d.t.Helper()
	_, rid, ok := strings.Cut(req.Topic(), "/?$rid=")
	if !ok || rid == "" {
		d.t.Fatalf("method request topic %q has no $rid", req.Topic())
	}
	d.publish(fmt.Sprintf("$iothub/methods/res/%d/?$rid=%s", status, rid), 0, body)
}
