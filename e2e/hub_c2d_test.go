package e2e

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// c2dSent is the answer of berth's C2D send extension
// (POST /devices/{id}/messages/deviceBound).
type c2dSent struct {
	MessageID       string    `json:"messageId"`
	SequenceNumber  int64     `json:"sequenceNumber"`
	EnqueuedTimeUTC time.Time `json:"enqueuedTimeUtc"`
	ExpiryTimeUTC   time.Time `json:"expiryTimeUtc"`
}

// c2dPath is a device's cloud-to-device queue: the service POSTs to it
// (berth's extension), the HTTPS device GETs from it.
func c2dPath(id string) string {
	return "/devices/" + id + "/messages/deviceBound?api-version=2021-04-12"
}

// sendC2D enqueues a message through the REST extension: body raw with
// iothub-* headers, or one application/vnd.microsoft.iothub.json object.
func (b *berth) sendC2D(id, body string, header map[string]string) c2dSent {
	b.t.Helper()
	var s c2dSent
	resp, data := b.hubDo("POST", c2dPath(id), body, header, &s)
	if resp.StatusCode != 200 || s.MessageID == "" || s.SequenceNumber == 0 || s.EnqueuedTimeUTC.IsZero() || s.ExpiryTimeUTC.IsZero() {
		b.t.Fatalf("send C2D to %s: %d %s", id, resp.StatusCode, data)
	}
	return s
}

// bagPair is one key=value of a C2D topic's property bag, still
// percent-encoded.
type bagPair struct{ key, value string }

// connectC2D connects a device over MQTT and subscribes to its
// cloud-to-device messages at QoS 1, as the SDKs do.
func (b *berth) connectC2D(id, key string, manualAck bool) *hubDevice {
	b.t.Helper()
	d := b.hubConnect(id, key, manualAck)
	d.subscribe("devices/"+id+"/messages/devicebound/#", 1)
	return d
}

// expectC2D waits for the next cloud-to-device message and checks that it
// is the first delivery of message mid with body.
func (d *hubDevice) expectC2D(what, mid, body string) paho.Message {
	d.t.Helper()
	m := d.next(d.c2d, what)
	if got, _ := bagValue(d.t, c2dBag(d.t, d.id, m), "%24.mid"); got != mid || string(m.Payload()) != body || m.Duplicate() {
		d.t.Fatalf("%s: got %q dup %v %q, want message %s %q", what, m.Topic(), m.Duplicate(), m.Payload(), mid, body)
	}
	return m
}

// c2dBag splits the property bag of a C2D delivery. The bag must be one
// topic segment: the Node SDK reads only the segment after "devicebound".
func c2dBag(t *testing.T, deviceID string, m paho.Message) []bagPair {
	t.Helper()
	bag, ok := strings.CutPrefix(m.Topic(), "devices/"+deviceID+"/messages/devicebound/")
	if !ok || strings.Contains(bag, "/") {
		t.Fatalf("C2D topic %q: not devices/%s/messages/devicebound/{one-segment bag}", m.Topic(), deviceID)
	}
	var out []bagPair
	for _, p := range strings.Split(bag, "&") {
		k, v, _ := strings.Cut(p, "=")
		out = append(out, bagPair{k, v})
	}
	return out
}

// bagValue returns a decoded bag value.
func bagValue(t *testing.T, bag []bagPair, key string) (string, bool) {
	t.Helper()
	for _, p := range bag {
		if p.key == key {
			v, err := url.PathUnescape(p.value)
			if err != nil {
				t.Fatalf("bag value %s=%s: %v", p.key, p.value, err)
			}
			return v, true
		}
	}
	return "", false
}

// checkBag compares a delivery's bag with want, pair by pair and in order.
// "%24.exp" is compared as a time, to exp (its precision is not
// specified); every other value byte for byte, so the encoding is checked
// too (RFC 3986 unreserved characters only, upper-case hex).
func checkBag(t *testing.T, m paho.Message, deviceID string, want []bagPair, exp time.Time) {
	t.Helper()
	got := c2dBag(t, deviceID, m)
	fail := func(why string) { t.Fatalf("C2D topic %q: %s; want the bag %v", m.Topic(), why, want) }
	if len(got) != len(want) {
		fail(fmt.Sprintf("%d properties", len(got)))
	}
	for i, w := range want {
		g := got[i]
		if g.key != w.key {
			fail(fmt.Sprintf("property %d is %q", i, g.key))
		}
		if w.key != "%24.exp" {
			if g.value != w.value {
				fail(fmt.Sprintf("%s=%s", g.key, g.value))
			}
			continue
		}
		if strings.Trim(g.value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%") != "" {
			fail("the expiry is not percent-encoded")
		}
		v, _ := url.PathUnescape(g.value)
		at, err := time.Parse(time.RFC3339Nano, v)
		if err != nil || !at.Equal(exp) {
			fail(fmt.Sprintf("expiry %q, want %s", v, exp.Format(time.RFC3339)))
		}
	}
}

// Two messages sent through the REST extension (raw with headers, and the
// JSON form) reach the MQTT device in order, each with exactly its
// properties in the topic. The device acknowledges only the first and
// disconnects; on reconnect the second comes again with DUP set, and the
// first never does.
func TestC2DOverMQTTRedeliversUntilAcknowledged(t *testing.T) {
	b := start(t, t.TempDir())
	const id = "c2d-dev"
	key := b.createHubDevice(id)
	exp := time.Now().Add(30 * time.Minute).UTC().Truncate(time.Second)
	s1 := b.sendC2D(id, `{"cmd":"on"}`, map[string]string{
		"iothub-messageid":     "c2d-1",
		"iothub-correlationid": "corr-1",
		"iothub-expiry":        exp.Format(time.RFC3339),
		"iothub-contenttype":   "application/json",
		"iothub-ack":           "full",
		"iothub-app-route":     "/lights/1?mode=on&x=y",
	})
	if s1.MessageID != "c2d-1" || !s1.ExpiryTimeUTC.Equal(exp) {
		t.Fatalf("first send: %+v", s1)
	}
	var s2 c2dSent
	resp, data := b.hubDo("POST", c2dPath(id), fmt.Sprintf(`{"body":%q,"base64Encoded":true,"properties":{"iothub-messageid":"c2d-2","iothub-app-n":"2"}}`,
		base64.StdEncoding.EncodeToString([]byte("second"))), map[string]string{"Content-Type": "application/vnd.microsoft.iothub.json"}, &s2)
	if resp.StatusCode != 200 || s2.MessageID != "c2d-2" || s2.SequenceNumber <= s1.SequenceNumber || s2.ExpiryTimeUTC.IsZero() {
		t.Fatalf("second send (JSON form): %d %s; first %+v", resp.StatusCode, data, s1)
	}

	to := "%2Fdevices%2F" + id + "%2Fmessages%2FdeviceBound"
	want1 := []bagPair{{"%24.mid", "c2d-1"}, {"%24.cid", "corr-1"}, {"%24.to", to}, {"%24.exp", ""},
		{"%24.ct", "application%2Fjson"}, {"iothub-ack", "full"}, {"route", "%2Flights%2F1%3Fmode%3Don%26x%3Dy"}}
	// The second message's expiry is the hub's default: whether IoT Hub
	// puts a defaulted expiry in the bag is not known, so both are fine.
	want2 := []bagPair{{"%24.mid", "c2d-2"}, {"%24.to", to}, {"n", "2"}}
	withExp2 := []bagPair{want2[0], want2[1], {"%24.exp", ""}, want2[2]}

	d := b.connectC2D(id, key, true)
	m1 := d.next(d.c2d, "the first C2D message")
	m2 := d.next(d.c2d, "the second C2D message")
	checkBag(t, m1, id, want1, exp)
	if string(m1.Payload()) != `{"cmd":"on"}` || m1.Qos() != 1 || m1.Duplicate() {
		t.Fatalf("first delivery: qos %d dup %v %q", m1.Qos(), m1.Duplicate(), m1.Payload())
	}
	second := want2
	if _, ok := bagValue(t, c2dBag(t, id, m2), "%24.exp"); ok {
		second = withExp2
	}
	checkBag(t, m2, id, second, s2.ExpiryTimeUTC)
	if string(m2.Payload()) != "second" || m2.Qos() != 1 || m2.Duplicate() {
		t.Fatalf("second delivery: qos %d dup %v %q", m2.Qos(), m2.Duplicate(), m2.Payload())
	}

	// paho writes the PUBACK before the DISCONNECT (one outbound queue).
	m1.Ack()
	d.c.Disconnect(250)

	d = b.connectC2D(id, key, true)
	again := d.next(d.c2d, "the unacknowledged message again")
	if again.Topic() != m2.Topic() || string(again.Payload()) != "second" || !again.Duplicate() || again.Qos() != 1 {
		t.Fatalf("redelivery: %q dup %v qos %d %q; first delivery %q", again.Topic(), again.Duplicate(), again.Qos(), again.Payload(), m2.Topic())
	}
	again.Ack()
	// The next message the device gets is a new one: the acknowledged
	// messages are gone.
	b.sendC2D(id, "third", map[string]string{"iothub-messageid": "c2d-3"})
	d.expectC2D("the third message (an acknowledged one came again?)", "c2d-3", "third").Ack()
}

// The queue holds 50 messages; the 51st is refused with 403
// DeviceMaximumQueueDepthExceeded. DELETE /devices/{id}/commands purges
// the queue: none of the purged messages is delivered.
func TestC2DQueueDepthAndPurge(t *testing.T) {
	b := start(t, t.TempDir())
	const id = "full-dev"
	key := b.createHubDevice(id)
	for i := range 50 {
		b.sendC2D(id, "m", map[string]string{"iothub-messageid": "q-" + strconv.Itoa(i)})
	}
	resp, data := b.hubDo("POST", c2dPath(id), "m", map[string]string{"iothub-messageid": "q-50"}, nil)
	checkHubError(t, "the 51st message", resp.StatusCode, resp.Header, data, 403, "DeviceMaximumQueueDepthExceeded")

	var purged struct {
		TotalMessagesPurged int    `json:"totalMessagesPurged"`
		DeviceID            string `json:"deviceId"`
	}
	resp, data = b.hubDo("DELETE", "/devices/"+id+"/commands?api-version=2021-04-12", nil, nil, &purged)
	if resp.StatusCode != 200 || purged.TotalMessagesPurged != 50 || purged.DeviceID != id {
		t.Fatalf("purge: %d %s", resp.StatusCode, data)
	}
	resp, data = b.hubDo("DELETE", "/devices/nobody/commands?api-version=2021-04-12", nil, nil, nil)
	checkHubError(t, "purge an unknown device", resp.StatusCode, resp.Header, data, 404, "DeviceNotFound")

	b.sendC2D(id, "after", map[string]string{"iothub-messageid": "after-purge"})
	b.connectC2D(id, key, false).expectC2D("the message sent after the purge (a purged one came?)", "after-purge", "after")
}

// A message whose iothub-expiry has passed is never delivered, over MQTT
// or HTTPS.
func TestC2DExpiredMessageIsNotDelivered(t *testing.T) {
	b := start(t, t.TempDir())
	const id = "exp-dev"
	key := b.createHubDevice(id)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	b.sendC2D(id, "stale", map[string]string{"iothub-messageid": "stale-1", "iothub-expiry": past})
	b.sendC2D(id, "fresh", map[string]string{"iothub-messageid": "fresh-1"})
	d := b.connectC2D(id, key, true)
	d.expectC2D("the fresh message (the expired one came?)", "fresh-1", "fresh").Ack()
	// Disconnect only once the PUBACK completed it: a PUBACK still in
	// paho's queue at Disconnect leaves the message to come back (it was
	// not acknowledged), which is right but not what this test is about.
	for deadline := time.Now().Add(10 * time.Second); ; {
		var dev struct {
			Count int `json:"cloudToDeviceMessageCount"`
		}
		b.hubDo("GET", "/devices/"+id+"?api-version=2021-04-12", nil, nil, &dev)
		if dev.Count == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the acknowledged fresh message is still queued (%d)", dev.Count)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.c.Disconnect(250)

	b.sendC2D(id, "stale", map[string]string{"iothub-messageid": "stale-2", "iothub-expiry": past})
	resp, data := b.do("GET", c2dPath(id), hubToken(t, b.info.HubHostName, id, key), nil, nil, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("HTTPS receive with only an expired message queued: %d %v %q", resp.StatusCode, resp.Header, data)
	}
}

// The HTTPS device receives under a lock: 200 with the lock token as a
// quoted ETag and the message's iothub-* headers, then completes (DELETE),
// rejects (DELETE ?reject) or abandons (POST …/abandon); every delivery
// counts in iothub-deliverycount and gets a new lock.
func TestC2DOverHTTPSLifecycle(t *testing.T) {
	b := start(t, t.TempDir())
	const id = "poll-dev"
	key := b.createHubDevice(id)
	tok := hubToken(t, b.info.HubHostName, id, key)
	base := "/devices/" + id + "/messages/deviceBound"
	receive := func(path string) (int, http.Header, string) {
		t.Helper()
		resp, data := b.do("GET", path+"?api-version=2021-04-12", tok, nil, nil, nil)
		return resp.StatusCode, resp.Header, string(data)
	}
	settle := func(method, path string) (int, http.Header, []byte) {
		t.Helper()
		resp, data := b.do(method, path, tok, nil, nil, nil)
		return resp.StatusCode, resp.Header, data
	}
	lockOf := func(h http.Header) string {
		t.Helper()
		etag := strings.Join(h.Values("ETag"), ",")
		if len(etag) < 3 || etag[0] != '"' || etag[len(etag)-1] != '"' {
			t.Fatalf("ETag %q is not one quoted lock token", etag)
		}
		return etag[1 : len(etag)-1]
	}
	get := http.Header.Get

	if st, h, body := receive(base); st != 204 {
		t.Fatalf("receive from an empty queue: %d %v %q", st, h, body)
	}
	sent := b.sendC2D(id, "alpha", map[string]string{"iothub-messageid": "h-1", "iothub-correlationid": "c-1", "iothub-app-color": "red"})
	st, h, body := receive(base)
	lock1 := lockOf(h)
	if st != 200 || body != "alpha" || get(h, "iothub-messageid") != "h-1" || get(h, "iothub-correlationid") != "c-1" ||
		get(h, "iothub-app-color") != "red" || get(h, "iothub-deliverycount") != "1" ||
		get(h, "iothub-to") != "/devices/"+id+"/messages/deviceBound" || get(h, "iothub-sequencenumber") != strconv.FormatInt(sent.SequenceNumber, 10) {
		t.Fatalf("first receive: %d %v %q (sent %+v)", st, h, body, sent)
	}
	if st, h, body := receive(base); st != 204 {
		t.Fatalf("receive while the only message is locked: %d %v %q", st, h, body)
	}

	// Abandon: visible again, delivered a second time under a new lock.
	if st, h, data := settle("POST", base+"/"+lock1+"/abandon?api-version=2021-04-12"); st != 204 {
		t.Fatalf("abandon: %d %v %s", st, h, data)
	}
	st, h, body = receive(base)
	lock2 := lockOf(h)
	if st != 200 || body != "alpha" || get(h, "iothub-messageid") != "h-1" || get(h, "iothub-deliverycount") != "2" || lock2 == lock1 {
		t.Fatalf("receive after abandon: %d %v %q (first lock %s)", st, h, body, lock1)
	}
	st, h, data := settle("DELETE", base+"/"+lock1+"?api-version=2021-04-12")
	checkHubError(t, "complete with the previous delivery's lock", st, h, data, 412, "DeviceMessageLockLost")

	// Reject: gone for good.
	if st, h, data := settle("DELETE", base+"/"+lock2+"?api-version=2021-04-12&reject"); st != 204 {
		t.Fatalf("reject: %d %v %s", st, h, data)
	}
	if st, h, body := receive(base); st != 204 {
		t.Fatalf("receive after reject: %d %v %q", st, h, body)
	}

	// Complete, on the Node and C SDKs' lower-case path.
	lower := "/devices/" + id + "/messages/devicebound"
	b.sendC2D(id, "beta", map[string]string{"iothub-messageid": "h-2"})
	st, h, body = receive(lower)
	lock3 := lockOf(h)
	if st != 200 || body != "beta" || get(h, "iothub-messageid") != "h-2" || get(h, "iothub-deliverycount") != "1" {
		t.Fatalf("receive on the lower-case path: %d %v %q", st, h, body)
	}
	if st, h, data := settle("DELETE", lower+"/"+lock3+"?api-version=2021-04-12"); st != 204 {
		t.Fatalf("complete: %d %v %s", st, h, data)
	}
	if st, h, body := receive(base); st != 204 {
		t.Fatalf("receive after complete: %d %v %q", st, h, body)
	}
	st, h, data = settle("DELETE", base+"/"+lock3+"?api-version=2021-04-12")
	checkHubError(t, "complete twice", st, h, data, 412, "DeviceMessageLockLost")

	// Another device's token does not receive this device's messages.
	otherKey := b.createHubDevice("other-dev")
	resp, data := b.do("GET", c2dPath(id), hubToken(t, b.info.HubHostName, "other-dev", otherKey), nil, nil, nil)
	checkHubError(t, "receive with another device's token", resp.StatusCode, resp.Header, data, 401, "IotHubUnauthorizedAccess")
}

// A queued message survives a restart and is delivered after it.
func TestC2DSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	b := start(t, dir)
	const id = "durable-c2d"
	key := b.createHubDevice(id)
	b.sendC2D(id, "kept", map[string]string{"iothub-messageid": "kept-1", "iothub-app-k": "v"})
	b.stop()

	b = start(t, dir)
	m := b.connectC2D(id, key, false).expectC2D("the message queued before the restart", "kept-1", "kept")
	if k, _ := bagValue(t, c2dBag(t, id, m), "k"); k != "v" {
		t.Fatalf("after the restart: application property k=%q in %q", k, m.Topic())
	}
}

// A message for a deleted device is refused with DeviceNotFound, also
// after messages to it were sent: a single-node berth keeps what a send
// needs of the device in memory (hub/sendview.go), and the delete must
// drop it.
func TestC2DSendToDeletedDevice(t *testing.T) {
	b := start(t, t.TempDir())
	const id = "gone-dev"
	b.createHubDevice(id)
	b.sendC2D(id, "m", map[string]string{"iothub-messageid": "before-delete"})
	if resp, data := b.hubDo("DELETE", "/devices/"+id+"?api-version=2021-04-12", nil, map[string]string{"If-Match": "*"}, nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d %s", resp.StatusCode, data)
	}
	resp, data := b.hubDo("POST", c2dPath(id), "m", map[string]string{"iothub-messageid": "after-delete"}, nil)
	checkHubError(t, "a message for the deleted device", resp.StatusCode, resp.Header, data, 404, "DeviceNotFound")
}
