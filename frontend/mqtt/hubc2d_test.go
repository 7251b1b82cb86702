package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/frontend/mqtt/topics"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
)

const c2dFilter = "devices/dev-1/messages/devicebound/#"

// sendC2D enqueues a message for dev-1.
func (f *hubFixture) sendC2D(t testing.TB, m *hub.CloudMessage) *hub.CloudMessage {
	t.Helper()
	sent, err := f.c2d.Send(context.Background(), hubName, "dev-1", m)
	if err != nil {
		t.Fatal(err)
	}
	return sent
}

func (f *hubFixture) c2dCount(t testing.TB) int {
	t.Helper()
	n, err := f.c2d.Count(context.Background(), hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// deliveryCounts reads the stored delivery count of each queued message.
func (f *hubFixture) deliveryCounts(t testing.TB) []int {
	t.Helper()
	recs, err := f.st.List(context.Background(), store.KindC2D, store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, r := range recs {
		var m hub.CloudMessage
		if err := json.Unmarshal(r.Data, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m.DeliveryCount)
	}
	return out
}

// readC2D reads the next packet as a C2D delivery.
func (c *rawClient) readC2D() *packets.Packet {
	c.t.Helper()
	return c.readPublish("devices/", "a C2D delivery")
}

// readPublish reads the next packet as a PUBLISH whose topic starts with
// prefix.
func (c *rawClient) readPublish(prefix, what string) *packets.Packet {
	c.t.Helper()
	pk := c.read()
	if pk.FixedHeader.Type != packets.Publish || !strings.HasPrefix(pk.TopicName, prefix) {
		c.t.Fatalf("got %s %q; want %s", packetName(pk.FixedHeader.Type), pk.TopicName, what)
	}
	return pk
}

// nodeC2D parses a delivery topic exactly as the Node SDK's
// _onC2DMessage does: the fifth '/'-segment, split on '&', each pair
// split on every '=' keeping the first two parts, both decoded with
// decodeURIComponent (which, unlike a query decoder, leaves '+' alone).
func nodeC2D(t testing.TB, topic string) map[string]string {
	t.Helper()
	parts := strings.Split(topic, "/")
	out := map[string]string{}
	if len(parts) < 5 || parts[4] == "" {
		return out
	}
	if len(parts) != 5 {
		t.Errorf("topic %q has %d segments; Node reads only the fifth", topic, len(parts))
	}
	for pair := range strings.SplitSeq(parts[4], "&") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 {
			t.Errorf("pair %q does not split into key and value on '='", pair)
			continue
		}
		k, err := url.PathUnescape(kv[0])
		if err != nil {
			t.Errorf("key %q: %v", kv[0], err)
		}
		v, err := url.PathUnescape(kv[1])
		if err != nil {
			t.Errorf("value %q: %v", kv[1], err)
		}
		out[k] = v
	}
	return out
}

// TestHubC2DDelivery: a message queued before the device connected is
// delivered when it subscribes, on the exact topic, and its PUBACK
// completes it.
func TestHubC2DDelivery(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.sendC2D(t, &hub.CloudMessage{MessageID: "m1", CorrelationID: "c/1", Ack: "full", Body: []byte("hello"),
		App: []hub.Property{{Name: "k", Value: "a/b"}, {Name: "empty", Value: ""}}})
	c := f.dialHub(t, "dev-1")
	c.expectNothing()
	if got := c.subscribe(1, 1, c2dFilter); got[0] != 1 {
		t.Fatalf("SUBACK %v", got)
	}
	pk := c.readC2D()
	const want = "devices/dev-1/messages/devicebound/%24.mid=m1&%24.cid=c%2F1&%24.to=%2Fdevices%2Fdev-1%2Fmessages%2FdeviceBound" +
		"&%24.exp=2023-11-14T22%3A56%3A40.000Z&iothub-ack=full&k=a%2Fb&empty="
	if pk.TopicName != want {
		t.Errorf("topic\n got %s\nwant %s", pk.TopicName, want)
	}
	if string(pk.Payload) != "hello" || pk.FixedHeader.Qos != 1 || pk.FixedHeader.Dup {
		t.Errorf("body %q QoS %d DUP %v", pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Dup)
	}
	if n := f.c2dCount(t); n != 1 {
		t.Errorf("%d queued before PUBACK; want 1", n)
	}
	c.puback(pk.PacketID)
	waitFor(t, "the PUBACK to complete the message", func() bool { return f.c2dCount(t) == 0 })

	// Sent while connected and subscribed: delivered at once.
	f.sendC2D(t, &hub.CloudMessage{MessageID: "m2", Body: []byte("2")})
	pk = c.readC2D()
	if !strings.Contains(pk.TopicName, "%24.mid=m2&") {
		t.Errorf("topic %q", pk.TopicName)
	}
	c.puback(pk.PacketID)
	waitFor(t, "the second message to complete", func() bool { return f.c2dCount(t) == 0 })
	c.expectNothing()
}

// TestHubC2DRedelivery: a message not acknowledged when the connection
// ends goes back to the queue and comes again with DUP on the next
// connection; an expired message is never delivered.
func TestHubC2DRedelivery(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.sendC2D(t, &hub.CloudMessage{MessageID: "old", Expiry: testNow.Add(-time.Second), Body: []byte("stale")})
	f.sendC2D(t, &hub.CloudMessage{MessageID: "m1", Body: []byte("1")})

	c := f.dialHub(t, "dev-1")
	c.subscribe(1, 1, c2dFilter)
	pk := c.readC2D()
	if !strings.Contains(pk.TopicName, "%24.mid=m1&") || pk.FixedHeader.Dup {
		t.Fatalf("first delivery %q DUP %v", pk.TopicName, pk.FixedHeader.Dup)
	}
	c.expectNothing() // the expired message is not delivered
	c.nc.Close()      // no PUBACK
	// A connection is counted until its session has closed, which
	// gives the message back.
	waitFor(t, "the connection to end", func() bool { return f.ts.srv.ConnCount() == 0 })
	if got := f.deliveryCounts(t); !reflect.DeepEqual(got, []int{1}) {
		t.Fatalf("delivery counts %v; want [1] (expired message dead-lettered)", got)
	}

	// The device reconnects with CleanSession 0, as the SDKs do: its
	// session, with the C2D subscription, is resumed and the message
	// redelivered without a new SUBSCRIBE.
	c = f.ts.dialRaw(t)
	if rc, present := c.connectPresent(hubConnect("dev-1", validToken(t, "dev-1"), false)); rc != 0 || !present {
		t.Fatalf("CONNACK %d, session present %v; want 0, true", rc, present)
	}
	pk = c.readC2D()
	if !strings.Contains(pk.TopicName, "%24.mid=m1&") || !pk.FixedHeader.Dup || string(pk.Payload) != "1" {
		t.Fatalf("redelivery %q DUP %v body %q", pk.TopicName, pk.FixedHeader.Dup, pk.Payload)
	}
	// The lock and delivery count of an MQTT delivery are held in
	// memory (no store write per delivery); the count is stored when the
	// delivery is given back.
	if got := f.deliveryCounts(t); !reflect.DeepEqual(got, []int{1}) {
		t.Errorf("stored delivery counts %v while delivered; want [1]", got)
	}
	c.nc.Close() // no PUBACK again
	waitFor(t, "the second connection to end", func() bool { return f.ts.srv.ConnCount() == 0 })
	if got := f.deliveryCounts(t); !reflect.DeepEqual(got, []int{2}) {
		t.Errorf("stored delivery counts %v after the second delivery was given back; want [2]", got)
	}
	c = f.ts.dialRaw(t)
	if rc, present := c.connectPresent(hubConnect("dev-1", validToken(t, "dev-1"), false)); rc != 0 || !present {
		t.Fatalf("CONNACK %d, session present %v; want 0, true", rc, present)
	}
	pk = c.readC2D()
	if !pk.FixedHeader.Dup || string(pk.Payload) != "1" {
		t.Fatalf("third delivery DUP %v body %q", pk.FixedHeader.Dup, pk.Payload)
	}
	c.puback(pk.PacketID)
	waitFor(t, "the redelivered message to complete", func() bool { return f.c2dCount(t) == 0 })
}

// TestHubC2DTakeover: a new connection that subscribes while the old one
// still holds the message gets it once the old one gives it back.
func TestHubC2DTakeover(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.sendC2D(t, &hub.CloudMessage{MessageID: "m1", Body: []byte("1")})
	old := f.dialHub(t, "dev-1")
	old.subscribe(1, 1, c2dFilter)
	old.readC2D()
	// A clean session (a persistent one would resume old's subscription
	// and so need no SUBSCRIBE); it closes old, which abandons m1.
	c := f.ts.dialRaw(t)
	if rc := c.connectWith(hubConnect("dev-1", validToken(t, "dev-1"), true)); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	old.expectClosed(5 * time.Second)
	c.subscribe(1, 1, c2dFilter)
	pk := c.readC2D()
	if !pk.FixedHeader.Dup {
		t.Error("redelivery without DUP")
	}
	c.puback(pk.PacketID)
	waitFor(t, "the message to complete", func() bool { return f.c2dCount(t) == 0 })
}

// TestHubC2DInFlightLimit: at most 10 messages are in flight, delivered
// in queue order; each PUBACK lets the next one go.
func TestHubC2DInFlightLimit(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	const n = maxC2DInFlight + 3
	for i := range n {
		f.sendC2D(t, &hub.CloudMessage{MessageID: fmt.Sprintf("m%02d", i), Body: []byte{byte(i)}})
	}
	c := f.dialHub(t, "dev-1")
	c.subscribe(1, 1, c2dFilter)
	var ids []uint16
	for i := range maxC2DInFlight {
		pk := c.readC2D()
		if pk.Payload[0] != byte(i) {
			t.Fatalf("delivery %d is message %d", i, pk.Payload[0])
		}
		ids = append(ids, pk.PacketID)
	}
	c.expectNothing()
	for i := maxC2DInFlight; i < n; i++ {
		c.puback(ids[i-maxC2DInFlight])
		pk := c.readC2D()
		if pk.Payload[0] != byte(i) {
			t.Fatalf("delivery %d is message %d", i, pk.Payload[0])
		}
		ids = append(ids, pk.PacketID)
	}
	for _, id := range ids[n-maxC2DInFlight:] {
		c.puback(id)
	}
	waitFor(t, "every message to complete", func() bool { return f.c2dCount(t) == 0 })
}

// TestHubC2DQoS0: a QoS 0 subscription gets QoS 0 deliveries, completed
// once written; an unsubscribed device gets nothing.
func TestHubC2DQoS0(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.sendC2D(t, &hub.CloudMessage{MessageID: "m1", Body: []byte("1")})
	c := f.dialHub(t, "dev-1")
	c.subscribe(1, 0, "devices/+/messages/devicebound/#") // Embedded C's form
	pk := c.readC2D()
	if pk.FixedHeader.Qos != 0 || pk.FixedHeader.Dup {
		t.Errorf("QoS %d DUP %v", pk.FixedHeader.Qos, pk.FixedHeader.Dup)
	}
	waitFor(t, "the QoS 0 delivery to complete", func() bool { return f.c2dCount(t) == 0 })

	unsub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 2, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "devices/+/messages/devicebound/#"}}}
	c.send(unsub.UnsubscribeEncode)
	if ack := c.read(); ack.FixedHeader.Type != packets.Unsuback {
		t.Fatalf("got %s", packetName(ack.FixedHeader.Type))
	}
	f.sendC2D(t, &hub.CloudMessage{MessageID: "m2", Body: []byte("2")})
	c.expectNothing()
	if n := f.c2dCount(t); n != 1 {
		t.Errorf("%d queued; want 1", n)
	}
}

// TestHubC2DPropertiesNode: property values with the characters that
// matter reach a Node device as they were sent.
func TestHubC2DPropertiesNode(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	c.subscribe(1, 1, c2dFilter)
	values := []string{"a/b", "x&y=z", "100%", "two words", "=", "&", "%2F", "a+b", "~._-", "", "/devices/x/?a=b&c=%20"}
	for i, v := range values {
		m := f.sendC2D(t, &hub.CloudMessage{MessageID: v, CorrelationID: v, UserID: v, ContentType: "application/json; charset=utf-8",
			ContentEncoding: v, App: []hub.Property{{Name: "p", Value: v}, {Name: "k%&$", Value: v}}, Body: []byte{byte(i)}})
		pk := c.readC2D()
		got := nodeC2D(t, pk.TopicName)
		want := map[string]string{"$.mid": m.MessageID, "$.to": "/devices/dev-1/messages/deviceBound", "$.exp": "2023-11-14T22:56:40.000Z",
			"$.ct": "application/json; charset=utf-8", "p": v, "k%&$": v}
		for k, val := range map[string]string{"$.cid": v, "$.uid": v, "$.ce": v} {
			if v != "" {
				want[k] = val
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("value %q: Node reads\n %q\nwant %q\n(topic %s)", v, got, want, pk.TopicName)
		}
		// The hub's own telemetry parser reads it the same way.
		if _, app, err := topics.ParsePropertyBag(pk.TopicName[len("devices/dev-1/messages/devicebound/"):]); err != nil || app[len(app)-2].Value != v {
			t.Errorf("value %q: ParsePropertyBag gives %v, %v", v, app, err)
		}
		c.puback(pk.PacketID)
	}
	waitFor(t, "every message to complete", func() bool { return f.c2dCount(t) == 0 })
}

// TestHubC2DHashFilter: Microsoft's mosquitto sample receives C2D with
// mosquitto_sub -t "#"; berth delivers on it as IoT Hub does.
func TestHubC2DHashFilter(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.sendC2D(t, &hub.CloudMessage{MessageID: "m1", Body: []byte("hello")})
	c := f.dialHub(t, "dev-1")
	if got := c.subscribe(1, 1, "#"); len(got) != 1 || got[0] != 1 {
		t.Fatalf("SUBACK %v", got)
	}
	pk := c.readC2D()
	if !strings.HasPrefix(pk.TopicName, "devices/dev-1/messages/devicebound/") || string(pk.Payload) != "hello" {
		t.Fatalf("got %s %q", pk.TopicName, pk.Payload)
	}
	c.puback(pk.PacketID)
	waitFor(t, "the acknowledged message to complete", func() bool { return f.c2dCount(t) == 0 })
}
