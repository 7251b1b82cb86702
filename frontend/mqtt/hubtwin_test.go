package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// twinResponseRE is the strictest device parser's view of a twin answer
// (docs/spec/iothub-protocol.md#twins-over-mqtt: $rid first, then $version on
// a reported PATCH).
var twinResponseRE = regexp.MustCompile(`^\$iothub/twin/res/(\d+)/\?\$rid=([^&]*)(?:&\$version=(\d+))?$`)

type twinAnswer struct {
	status  int
	rid     string
	version string
	body    []byte
	qos     byte
}

// readTwinAnswer reads the next packet as a twin answer.
func (c *rawClient) readTwinAnswer() twinAnswer {
	c.t.Helper()
	pk := c.read()
	if pk.FixedHeader.Type != packets.Publish {
		c.t.Fatalf("got %s; want a twin answer", packetName(pk.FixedHeader.Type))
	}
	m := twinResponseRE.FindStringSubmatch(pk.TopicName)
	if m == nil {
		c.t.Fatalf("twin answer topic %q does not have IoT Hub's shape", pk.TopicName)
	}
	status, _ := strconv.Atoi(m[1])
	return twinAnswer{status: status, rid: m[2], version: m[3], body: pk.Payload, qos: pk.FixedHeader.Qos}
}

// expectNothing checks that the server sent nothing before answering a
// PINGREQ: a PINGREQ is answered in order on the reader, after any
// answer to what was sent before it.
func (c *rawClient) expectNothing() {
	c.t.Helper()
	c.ping()
	if pk := c.read(); pk.FixedHeader.Type != packets.Pingresp {
		c.t.Fatalf("got %s %q; want nothing before PINGRESP", packetName(pk.FixedHeader.Type), pk.TopicName)
	}
}

// TestHubTwin: twin GET and reported PATCH over MQTT, answered on
// $iothub/twin/res/{status}/?$rid={rid}[&$version={n}].
func TestHubTwin(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	if got := c.subscribe(1, 0, twinResponseFilter); got[0] != 0 {
		t.Fatalf("SUBACK %v", got)
	}
	deep := strings.Repeat(`{"a":`, 12) + "1" + strings.Repeat("}", 12)
	tests := []struct {
		name    string
		qos     byte
		topic   string
		body    string
		status  int
		rid     string
		version string
		want    string // exact body; "" for none
		code    int    // errorCode of an error answer
	}{
		{name: "GET fresh device (Node's space)", topic: "$iothub/twin/GET/?$rid=8f2c-1", body: " ", status: 200, rid: "8f2c-1",
			want: `{"desired":{"$version":1},"reported":{"$version":1}}`},
		{name: "reported PATCH", topic: "$iothub/twin/PATCH/properties/reported/?$rid=2", body: `{"battery":55,"fw":{"v":"1.0"}}`, status: 204, rid: "2", version: "2"},
		{name: "GET shows it", topic: "$iothub/twin/GET/?$rid=3", status: 200, rid: "3",
			want: `{"desired":{"$version":1},"reported":{"battery":55,"fw":{"v":"1.0"},"$version":2}}`},
		{name: "PATCH with $version and more (T-26)", topic: "$iothub/twin/PATCH/properties/reported/?$rid=5de34&$version=1&x=y", body: `{"battery":54}`, status: 204, rid: "5de34", version: "3"},
		{name: "QoS 1 PATCH", qos: 1, topic: "$iothub/twin/PATCH/properties/reported/?$rid=q1", body: `{"fw":null}`, status: 204, rid: "q1", version: "4"},
		{name: "rid echoed as sent", topic: "$iothub/twin/GET/?$rid=%E9%94%99&$rid=second", status: 200, rid: "%E9%94%99"},
		{name: "non-ASCII rid", topic: "$iothub/twin/GET/?$rid=错误", status: 200, rid: "错误"},
		{name: "invalid JSON", topic: "$iothub/twin/PATCH/properties/reported/?$rid=e1", body: `{"a":`, status: 400, rid: "e1", code: 400004},
		{name: "too deep", topic: "$iothub/twin/PATCH/properties/reported/?$rid=e2", body: deep, status: 400, rid: "e2", code: 400004},
		{name: "array", topic: "$iothub/twin/PATCH/properties/reported/?$rid=e3", body: `[1,2]`, status: 400, rid: "e3", code: 400004},
		{name: "array value", topic: "$iothub/twin/PATCH/properties/reported/?$rid=e4", body: `{"a":[1]}`, status: 400, rid: "e4", code: 400004},
		{name: "unknown twin path", qos: 1, topic: "$iothub/twin/DELETE/?$rid=e5", status: 400, rid: "e5", code: 400004},
		{name: "lower-case method", topic: "$iothub/twin/get/?$rid=e6", status: 400, rid: "e6", code: 400004},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := uint16(10 + i)
			c.publish(tt.qos, id, tt.topic, []byte(tt.body))
			if tt.qos == 1 {
				// After the work: durable before PUBACK and answer.
				c.expectPuback(id)
			}
			a := c.readTwinAnswer()
			if a.status != tt.status || a.rid != tt.rid || a.version != tt.version {
				t.Fatalf("answer %d rid %q version %q (%s); want %d %q %q", a.status, a.rid, a.version, a.body, tt.status, tt.rid, tt.version)
			}
			if a.qos != 0 {
				t.Errorf("answered at QoS %d; the subscription was granted 0", a.qos)
			}
			switch {
			case tt.code != 0:
				checkError(t, response{status: a.status, body: a.body}, tt.status, tt.code)
			case tt.status == 204:
				if len(a.body) != 0 {
					t.Errorf("204 with body %q", a.body)
				}
			case tt.want != "" && string(a.body) != tt.want:
				t.Errorf("body %s; want %s", a.body, tt.want)
			}
		})
	}
	tw, err := f.twins.Get(context.Background(), hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]any
	if err := json.Unmarshal(tw.Properties.Reported, &rep); err != nil {
		t.Fatal(err)
	}
	if rep["battery"] != float64(54) || rep["fw"] != nil || rep["$version"] != float64(4) {
		t.Errorf("reported %s", tw.Properties.Reported)
	}
	c.expectPing()
}

// TestHubTwinUnsubscribed: without $iothub/twin/res/# the update is still
// applied (and acknowledged) but the answer is dropped.
func TestHubTwinUnsubscribed(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	c.publish(1, 1, "$iothub/twin/PATCH/properties/reported/?$rid=1", []byte(`{"a":1}`))
	c.expectPuback(1)
	c.publish(0, 0, "$iothub/twin/GET/?$rid=2", []byte(" "))
	c.expectNothing()
	tw, err := f.twins.Get(context.Background(), hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(tw.Properties.Reported), `"a":1`) {
		t.Errorf("reported %s", tw.Properties.Reported)
	}
	if !strings.Contains(f.ts.logs.String(), "twin answer dropped") {
		t.Error("the dropped answer is not logged")
	}
}

// TestHubTwinsDisabled: without HubConfig.Twins a twin request closes the
// connection.
func TestHubTwinsDisabled(t *testing.T) {
	f := newHubFixture(t, func(cfg *Config) {
		svc := *cfg.Hub.Services
		svc.Twins = nil
		cfg.Hub.Services = &svc
	})
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	c.publish(0, 0, "$iothub/twin/GET/?$rid=1", nil)
	c.expectClosed(5 * time.Second)
}

// TestHubDesiredNotifications: desired patches from the service reach a
// subscribed device in version order, on
// $iothub/twin/PATCH/properties/desired/?$version={n}.
func TestHubDesiredNotifications(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")

	// Not subscribed: nothing arrives.
	if _, err := f.twins.Patch(context.Background(), hubName, "dev-1", []byte(`{"properties":{"desired":{"early":1}}}`), ""); err != nil {
		t.Fatal(err)
	}
	c.expectNothing()

	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("QoS %d", qos), func(t *testing.T) {
			if got := c.subscribe(1, qos, "$iothub/twin/PATCH/properties/desired/#"); got[0] != qos {
				t.Fatalf("SUBACK %v", got)
			}
			tw, err := f.twins.Get(context.Background(), hubName, "dev-1")
			if err != nil {
				t.Fatal(err)
			}
			var d struct {
				Version int64 `json:"$version"`
			}
			if err := json.Unmarshal(tw.Properties.Desired, &d); err != nil {
				t.Fatal(err)
			}
			const n = 5
			for i := range n {
				body := fmt.Sprintf(`{"properties":{"desired":{"rate":%d,"early":null}}}`, i)
				if _, err := f.twins.Patch(context.Background(), hubName, "dev-1", []byte(body), ""); err != nil {
					t.Fatal(err)
				}
			}
			for i := range n {
				pk := c.read()
				v := d.Version + int64(i) + 1
				wantTopic := "$iothub/twin/PATCH/properties/desired/?$version=" + strconv.FormatInt(v, 10)
				if pk.FixedHeader.Type != packets.Publish || pk.TopicName != wantTopic || pk.FixedHeader.Qos != qos {
					t.Fatalf("got %s %q QoS %d; want %q QoS %d", packetName(pk.FixedHeader.Type), pk.TopicName, pk.FixedHeader.Qos, wantTopic, qos)
				}
				var got map[string]any
				if err := json.Unmarshal(pk.Payload, &got); err != nil {
					t.Fatal(err)
				}
				want := map[string]any{"rate": float64(i), "early": nil, "$version": float64(v)}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("notification %s; want %v", pk.Payload, want)
				}
				if qos == 1 {
					c.puback(pk.PacketID)
				}
			}
			c.expectNothing()
		})
	}
}

// TestHubDesiredQueueFull: a device that does not keep up with desired
// notifications is disconnected rather than blocking the twin update.
func TestHubDesiredQueueFull(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	c.subscribe(1, 0, "$iothub/twin/PATCH/properties/desired/#")
	s := f.links.Lookup(hubName, "dev-1").(*hubSession)
	// Pretend the sender is busy writing, so that the queue fills up.
	s.mu.Lock()
	s.sending = true
	s.mu.Unlock()
	for v := range maxOutbound + 1 {
		s.DesiredPatch(int64(v+2), []byte(`{"$version":1}`))
	}
	c.expectClosed(5 * time.Second)
	if !strings.Contains(f.ts.logs.String(), "does not keep up with desired notifications") {
		t.Error("not logged")
	}
}
