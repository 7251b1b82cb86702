package mqtt

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
)

// TestIndividualEnrollmentFlow is the full SDK sequence over TLS with paho:
// register → 202 assigning with retry-after → poll → 200 assigned.
func TestIndividualEnrollmentFlow(t *testing.T) {
	d := newDomain(t)
	d.enroll(t, "dev-1", "device-one", dps.ProvisioningEnabled)
	ts := startServer(t, Config{}, d.svc)
	dev := ts.connectPaho(t, "dev-1", token(t, "dev-1", indivKey, testNow.Add(time.Hour)))

	r := dev.register("1", `{"registrationId":"dev-1","payload":{"modelId":"dtmi:x;1"}}`)
	if r.status != 202 || r.rid != "1" || r.retryAfter != "3" {
		t.Fatalf("register answer %s %s; want 202, $rid=1, retry-after=3", r.topic, r.body)
	}
	if r.qos != 1 {
		t.Errorf("answer delivered at QoS %d; want 1 (the granted QoS)", r.qos)
	}
	op := decodeStatus(t, r)
	if op.Status != dps.StatusAssigning || op.OperationID == "" {
		t.Fatalf("register body %s; want status assigning with an operationId", r.body)
	}

	r = dev.poll("2", op.OperationID)
	if r.status != 200 || r.rid != "2" || r.retryAfter != "" {
		t.Fatalf("poll answer %s %s; want 200, $rid=2, no retry-after", r.topic, r.body)
	}
	got := decodeStatus(t, r)
	st := got.RegistrationState
	if got.Status != dps.StatusAssigned || got.OperationID != op.OperationID || st == nil {
		t.Fatalf("poll body %s; want assigned", r.body)
	}
	if st.AssignedHub != hubName || st.DeviceID != "device-one" || st.RegistrationID != "dev-1" || st.Substatus != dps.SubstatusInitialAssignment {
		t.Errorf("registrationState %+v", st)
	}
	// Assignment created the device identity with the enrollment's key.
	dv, err := d.reg.Get(context.Background(), hubName, "device-one")
	if err != nil {
		t.Fatalf("assigned device not in the hub registry: %v", err)
	}
	if keys := dv.Keys(); len(keys) == 0 || keys[0] != indivKey {
		t.Errorf("device keys %v; want the enrollment key", keys)
	}
}

// TestGroupEnrollmentTokenEncodings registers a group member with a derived
// key once per SDK token encoding (docs/spec/dps-protocol.md#test-vectors,
// vector 20): raw sr (Node), %2F (Python, C#), %2f (C SDK, Embedded C).
func TestGroupEnrollmentTokenEncodings(t *testing.T) {
	d := newDomain(t)
	d.group(t, "grp-1", dps.ProvisioningEnabled)
	ts := startServer(t, Config{}, d.svc)
	for _, v := range vector20 {
		t.Run(v.name, func(t *testing.T) {
			dev := ts.connectPaho(t, "my-device", v.token)
			r := dev.register("1", `{"payload": null, "registrationId": "my-device"}`)
			if r.status != 202 {
				t.Fatalf("register: %d %s", r.status, r.body)
			}
			r = dev.poll("2", decodeStatus(t, r).OperationID)
			got := decodeStatus(t, r)
			if r.status != 200 || got.Status != dps.StatusAssigned {
				t.Fatalf("poll: %d %s", r.status, r.body)
			}
			st := got.RegistrationState
			if st.DeviceID != "my-device" || st.AssignedHub != hubName || st.SymmetricKey == nil || st.SymmetricKey.EnrollmentGroupID != "grp-1" {
				t.Errorf("registrationState %s", r.body)
			}
		})
	}
}

// TestErrorAnswers covers the error bodies a device receives on the
// response topic.
func TestErrorAnswers(t *testing.T) {
	d := newDomain(t)
	d.enroll(t, "dev-1", "", dps.ProvisioningEnabled)
	ts := startServer(t, Config{}, d.svc)
	valid := token(t, "dev-1", indivKey, testNow.Add(time.Hour))
	tests := []struct {
		name     string
		password string
		topic    string
		body     []byte
		status   int
		code     int
	}{
		{"wrong key", token(t, "dev-1", otherKey, testNow.Add(time.Hour)), registerTopic + "1", nil, 401, 401002},
		{"expired token", token(t, "dev-1", indivKey, testNow.Add(-time.Hour)), registerTopic + "1", nil, 401, 401002},
		{"token for another device", token(t, "dev-2", indivKey, testNow.Add(time.Hour)), registerTopic + "1", nil, 401, 401002},
		{"no password", "", registerTopic + "1", nil, 401, 401000},
		{"wrong key on poll", token(t, "dev-1", otherKey, testNow.Add(time.Hour)), pollTopic + "1&operationId=x", nil, 401, 401002},
		{"unknown operationId", valid, pollTopic + "1&operationId=5.0000000000000000.00000000-0000-4000-8000-000000000000", []byte(" "), 404, 404203},
		{"poll without operationId", valid, pollTopic + "1", nil, 404, 404203},
		{"body over 96 KB", valid, registerTopic + "1", bytes.Repeat([]byte(" "), dps.MaxMessageSize+1), 413, 413000},
		{"registrationId mismatch", valid, registerTopic + "1", []byte(`{"registrationId":"other"}`), 400, azerr.DPSRegistrationIDMatch.Number()},
		{"body not JSON", valid, registerTopic + "1", []byte(`not json`), 400, azerr.DPSInvalidBody.Number()},
		{"unknown $dps topic", valid, "$dps/registrations/POST/iotdps-foo/?$rid=1", nil, 400, 400000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := ts.connectPaho(t, "dev-1", tt.password)
			r := dev.request(tt.topic, tt.body)
			checkError(t, r, tt.status, tt.code)
			if r.rid != "1" {
				t.Errorf("rid %q; want 1", r.rid)
			}
		})
	}
	if _, err := d.svc.GetRegistration(context.Background(), "dev-1"); err == nil {
		t.Error("a registration exists after only failed requests")
	}
}

// TestDisabledEnrollment: register is accepted (202), the poll reports the
// terminal status disabled with 200.
func TestDisabledEnrollment(t *testing.T) {
	d := newDomain(t)
	d.enroll(t, "dev-off", "", dps.ProvisioningDisabled)
	ts := startServer(t, Config{}, d.svc)
	dev := ts.connectPaho(t, "dev-off", token(t, "dev-off", indivKey, testNow.Add(time.Hour)))
	r := dev.register("1", "")
	if r.status != 202 || r.retryAfter == "" {
		t.Fatalf("register: %s %s", r.topic, r.body)
	}
	r = dev.poll("2", decodeStatus(t, r).OperationID)
	got := decodeStatus(t, r)
	if r.status != 200 || got.Status != dps.StatusDisabled || got.RegistrationState == nil || got.RegistrationState.Status != dps.StatusDisabled {
		t.Fatalf("poll: %s %s; want 200 disabled", r.topic, r.body)
	}
}

// TestRidEcho: $rid comes back byte for byte, first in the query.
func TestRidEcho(t *testing.T) {
	ts := startServer(t, Config{}, &fakeDPS{})
	dev := ts.connectPaho(t, "dev-1", "SharedAccessSignature sr=x&sig=y&se=1")
	tests := []struct{ name, query, want string }{
		{"python-encoded", "$rid=invalid%24request%3Fid", "invalid%24request%3Fid"},
		{"uuid", "$rid=3226c2f7-3d30-425c-b83b-0c34335f8220", "3226c2f7-3d30-425c-b83b-0c34335f8220"},
		{"empty", "$rid=", ""},
		{"packet id", "$rid=42", "42"},
		{"percent-encoded plus", "$rid=request%2Bid", "request%2Bid"},
		{"rid without dollar echoes empty (vector 15)", "rid=1", ""},
		{"missing", "", ""},
		{"extra keys", "foo=bar&$rid=7&baz", "7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dev.request("$dps/registrations/PUT/iotdps-register/?"+tt.query, nil)
			want := "$dps/registrations/res/202/?$rid=" + tt.want + "&retry-after=3"
			if r.topic != want {
				t.Errorf("topic %q; want %q", r.topic, want)
			}
		})
	}
}

// An exact response topic, as stock mosquitto_rr subscribes it, receives
// that answer and no other.
func TestExactResponseTopicSubscription(t *testing.T) {
	ts := startServer(t, Config{}, &fakeDPS{})
	c := ts.dialRaw(t)
	if rc := c.connect("dev-1", dpsUsername("dev-1"), "", 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	exact := "$dps/registrations/res/202/?$rid=7&retry-after=3"
	if got := c.subscribe(1, 1, exact); !bytes.Equal(got, []byte{1}) {
		t.Fatalf("exact response topic granted %v", got)
	}
	// A request whose answer has another rid is dropped; the matching one
	// arrives.
	c.publish(0, 0, "$dps/registrations/PUT/iotdps-register/?$rid=6", nil)
	c.publish(0, 0, "$dps/registrations/PUT/iotdps-register/?$rid=7", nil)
	pk := c.read()
	if pk.FixedHeader.Type != packets.Publish || pk.TopicName != exact {
		t.Fatalf("got %v %q, want the publish on %q", pk.FixedHeader.Type, pk.TopicName, exact)
	}
}

// TestSubscribe: only the response filter (and exact response topics) are
// granted, at QoS ≤ 1.
func TestSubscribe(t *testing.T) {
	ts := startServer(t, Config{}, &fakeDPS{})
	dev := ts.connectPaho(t, "dev-1", "")
	tok := dev.c.SubscribeMultiple(map[string]byte{
		"$dps/registrations/res/+/#":           1,
		"$dps/registrations/res/202/+":         1,
		"$dps/registrations/GET/#":             1,
		"devices/dev-1/messages/devicebound/#": 1,
		"#":                                    0,
	}, func(paho.Client, paho.Message) {})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	for filter, code := range tok.(*paho.SubscribeToken).Result() {
		if code != 0x80 {
			t.Errorf("filter %q granted %#x; want 0x80", filter, code)
		}
	}

	c := ts.dialRaw(t)
	if rc := c.connect("dev-2", dpsUsername("dev-2"), "", 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	for _, tt := range []struct{ req, want byte }{{0, 0}, {1, 1}, {2, 1}} {
		if got := c.subscribe(uint16(10+tt.req), tt.req, "$dps/registrations/res/#"); !bytes.Equal(got, []byte{tt.want}) {
			t.Errorf("SUBSCRIBE at QoS %d granted %v; want %d", tt.req, got, tt.want)
		}
	}
	// Mixed filters in one SUBSCRIBE get one code each, in order.
	if got := c.subscribe(20, 1, "foo", "$dps/registrations/res/#"); !bytes.Equal(got, []byte{0x80, 1}) {
		t.Errorf("mixed SUBSCRIBE codes %v; want [0x80 1]", got)
	}
}

// TestPubackBeforeResponse checks packet order with a raw client: for a
// QoS 1 request PUBACK comes first, then the answer at the subscription's
// QoS with a fresh packet ID.
func TestPubackBeforeResponse(t *testing.T) {
	d := newDomain(t)
	d.enroll(t, "dev-1", "", dps.ProvisioningEnabled)
	ts := startServer(t, Config{}, d.svc)
	c := ts.dialRaw(t)
	if rc := c.connect("dev-1", dpsUsername("dev-1"), token(t, "dev-1", indivKey, testNow.Add(time.Hour)), 30); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	c.subscribe(1, 1, "$dps/registrations/res/#")

	ids := map[uint16]bool{}
	var opID string
	for i, req := range []struct {
		topic string
		id    uint16
	}{
		{registerTopic + "1", 7},
		{registerTopic + "2", 8},
	} {
		c.publish(1, req.id, req.topic, []byte(`{"registrationId":"dev-1"}`))
		ack := c.read()
		if ack.FixedHeader.Type != packets.Puback || ack.PacketID != req.id {
			t.Fatalf("request %d: first packet %s id %d; want PUBACK %d", i, packetName(ack.FixedHeader.Type), ack.PacketID, req.id)
		}
		pk := c.read()
		if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || pk.PacketID == 0 || ids[pk.PacketID] {
			t.Fatalf("request %d: second packet %s QoS %d id %d; want a QoS 1 PUBLISH with a new ID", i, packetName(pk.FixedHeader.Type), pk.FixedHeader.Qos, pk.PacketID)
		}
		ids[pk.PacketID] = true
		r := parseResponse(t, pk.TopicName, pk.Payload, pk.FixedHeader.Qos)
		if r.status != 202 {
			t.Fatalf("status %d %s", r.status, r.body)
		}
		opID = decodeStatus(t, r).OperationID
		c.puback(pk.PacketID)
	}
	// A PUBACK for an ID the server never used is harmless.
	c.puback(999)

	// QoS 0 subscription and QoS 0 poll (the C SDK, Embedded-C poll):
	// no PUBACK, answer at QoS 0.
	c.subscribe(2, 0, "$dps/registrations/res/#")
	c.publish(0, 0, pollTopic+"3&operationId="+opID, nil)
	r := c.readResponse()
	if r.status != 200 || r.qos != 0 || r.rid != "3" {
		t.Fatalf("QoS 0 poll: %s QoS %d", r.topic, r.qos)
	}
	c.ping()
	if pk := c.read(); pk.FixedHeader.Type != packets.Pingresp {
		t.Fatalf("got %s; want PINGRESP", packetName(pk.FixedHeader.Type))
	}
}

// TestUnsubscribedAnswersDropped: without a subscription (or after
// UNSUBSCRIBE) answers are dropped, not sent.
func TestUnsubscribedAnswersDropped(t *testing.T) {
	ts := startServer(t, Config{}, &fakeDPS{})
	c := ts.dialRaw(t)
	if rc := c.connect("dev-1", dpsUsername("dev-1"), "", 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	check := func(phase string) {
		t.Helper()
		// Requests run one at a time, so PUBACK n+1 is written only once
		// request n was answered: an answer would precede it. The last
		// publish, to an unknown $dps topic, is answered (res/400) by the
		// reader itself, so after its PUBACK nothing is in flight and the
		// next packet must be the ack of whatever the test sends next.
		c.publish(1, 1, registerTopic+"1", nil)
		c.publish(1, 2, registerTopic+"2", nil)
		c.publish(1, 3, "$dps/registrations/PUT/iotdps-unknown/?$rid=3", nil)
		for _, want := range []uint16{1, 2, 3} {
			pk := c.read()
			if pk.FixedHeader.Type != packets.Puback || pk.PacketID != want {
				t.Fatalf("%s: got %s id %d; want PUBACK %d (answers must be dropped)", phase, packetName(pk.FixedHeader.Type), pk.PacketID, want)
			}
		}
	}
	check("never subscribed")

	if got := c.subscribe(4, 1, "$dps/registrations/res/#"); !bytes.Equal(got, []byte{1}) {
		t.Fatalf("SUBACK %v", got)
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 5, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$dps/registrations/res/#"}}}
	c.send(pk.UnsubscribeEncode)
	if ack := c.read(); ack.FixedHeader.Type != packets.Unsuback || ack.PacketID != 5 {
		t.Fatalf("got %s id %d; want UNSUBACK 5", packetName(ack.FixedHeader.Type), ack.PacketID)
	}
	check("after UNSUBSCRIBE")

	// Subscribed again, the same requests are answered.
	c.subscribe(6, 1, "$dps/registrations/res/#")
	c.publish(1, 7, registerTopic+"7", nil)
	if ack := c.read(); ack.FixedHeader.Type != packets.Puback {
		t.Fatalf("got %s; want PUBACK", packetName(ack.FixedHeader.Type))
	}
	if r := c.readResponse(); r.rid != "7" || r.status != 202 {
		t.Fatalf("answer %s", r.topic)
	}
}

// TestConnectRefusals: protocol level and username shape are checked at
// CONNECT; everything about credentials is not.
func TestConnectRefusals(t *testing.T) {
	ts := startServer(t, Config{}, &fakeDPS{})
	tests := []struct {
		name     string
		clientID string
		username string
		password string
		want     byte
	}{
		{"hub username (not served yet)", "dev-1", "hub.azure-devices.net/dev-1/?api-version=2021-04-12", "", 5},
		{"malformed DPS username", "dev-1", scope + "/registrations/?api-version=1", "", 5},
		{"no username", "dev-1", "", "", 5},
		{"bad token is accepted at CONNECT", "dev-1", dpsUsername("dev-1"), "not a token", 0},
		{"ClientId differs from registration ID", "mosq-12345", dpsUsername("dev-1"), "", 0},
		{"empty ClientId", "", dpsUsername("dev-1"), "", 0},
		{"bare DPS username", "dev-1", scope + "/registrations/dev-1", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ts.dialRaw(t)
			if rc := c.connect(tt.clientID, tt.username, tt.password, 0); rc != tt.want {
				t.Fatalf("CONNACK %d; want %d", rc, tt.want)
			}
			if tt.want != 0 {
				c.expectClosed(5 * time.Second)
				return
			}
			// Accepted: the session works.
			c.ping()
			if pk := c.read(); pk.FixedHeader.Type != packets.Pingresp {
				t.Fatalf("got %s; want PINGRESP", packetName(pk.FixedHeader.Type))
			}
		})
	}
	if !strings.Contains(ts.logs.String(), "IoT Hub device sessions are not served yet") {
		t.Error("no log line explains the refused hub username")
	}
}

// TestUnsupportedProtocolLevel: MQTT 5 (and 3.1) get CONNACK 1 and a close.
func TestUnsupportedProtocolLevel(t *testing.T) {
	ts := startServer(t, Config{}, &fakeDPS{})
	for _, tt := range []struct {
		name  string
		proto string
		level byte
	}{{"MQTT 5", "MQTT", 5}, {"MQTT 3.1", "MQIsdp", 3}} {
		t.Run(tt.name, func(t *testing.T) {
			c := ts.dialRaw(t)
			pk := connectPacket("dev-1", dpsUsername("dev-1"), "", 60)
			pk.ProtocolVersion, pk.Connect.ProtocolName = tt.level, []byte(tt.proto)
			if tt.level == 5 {
				pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 30, true
			}
			c.send(pk.ConnectEncode)
			// The 3.1.1 CONNACK, byte for byte.
			want := []byte{0x20, 0x02, 0x00, 0x01}
			got := make([]byte, len(want))
			_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.r.Read(got[:1]); err != nil {
				t.Fatal(err)
			}
			if _, err := c.r.Read(got[1:]); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("CONNACK % x; want % x", got, want)
			}
			c.expectClosed(5 * time.Second)
		})
	}
}

// TestProtocolViolationsClose: the connection is closed, without any
// answer, for what cannot be answered.
func TestProtocolViolationsClose(t *testing.T) {
	ts := startServer(t, Config{MaxPacketSize: 4096}, &fakeDPS{})
	tests := []struct {
		name string
		do   func(c *rawClient)
	}{
		{"QoS 2 publish", func(c *rawClient) { c.publish(2, 1, registerTopic+"1", nil) }},
		{"unknown $dps topic without $rid", func(c *rawClient) { c.publish(1, 1, "$dps/registrations/PUT/iotdps-foo/", nil) }},
		{"non-DPS topic", func(c *rawClient) { c.publish(1, 1, "devices/dev-1/messages/events/", nil) }},
		{"packet over MaxPacketSize", func(c *rawClient) { c.publish(0, 0, registerTopic+"1", make([]byte, 5000)) }},
		{"second CONNECT", func(c *rawClient) { c.send(connectPacket("dev-1", dpsUsername("dev-1"), "", 0).ConnectEncode) }},
		// MQTT-3.3.2-2 forbids wildcards in topic names, and echoing such
		// a $rid would make berth's own PUBLISH invalid.
		{"# in publish topic", func(c *rawClient) { c.publish(0, 0, "$dps/registrations/PUT/iotdps-register/?$rid=#", nil) }},
		{"+ in publish topic", func(c *rawClient) { c.publish(0, 0, "$dps/registrations/PUT/iotdps-register/?$rid=request+id", nil) }},
		{"DISCONNECT", func(c *rawClient) {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
			c.send(pk.DisconnectEncode)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ts.dialRaw(t)
			if rc := c.connect("dev-1", dpsUsername("dev-1"), "", 0); rc != 0 {
				t.Fatalf("CONNACK %d", rc)
			}
			c.subscribe(1, 1, "$dps/registrations/res/#")
			tt.do(c)
			c.expectClosed(5 * time.Second)
		})
	}
	t.Run("first packet not CONNECT", func(t *testing.T) {
		c := ts.dialRaw(t)
		c.ping()
		c.expectClosed(5 * time.Second)
	})
}

// TestKeepAlive: 1.5 × keep-alive of silence closes the connection; any
// packet resets the timer.
func TestKeepAlive(t *testing.T) {
	ts := startServer(t, Config{}, &fakeDPS{})
	c := ts.dialRaw(t)
	if rc := c.connect("dev-1", dpsUsername("dev-1"), "", 1); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	// Pings every 0.5 s keep it open past 1.5 s.
	for range 5 {
		time.Sleep(500 * time.Millisecond)
		c.ping()
		if pk := c.read(); pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("got %s; want PINGRESP", packetName(pk.FixedHeader.Type))
		}
	}
	start := time.Now()
	c.expectClosed(5 * time.Second)
	if el := time.Since(start); el < 1400*time.Millisecond {
		t.Errorf("closed after %v of silence; want 1.5 s", el)
	}
}

// TestConnectTimeout: a client that never completes TLS, or never sends
// CONNECT, is closed after ConnectTimeout and leaves no goroutine.
func TestConnectTimeout(t *testing.T) {
	ts := startServer(t, Config{ConnectTimeout: 300 * time.Millisecond}, &fakeDPS{})

	t.Run("no TLS handshake", func(t *testing.T) {
		nc, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if _, err := nc.Read(make([]byte, 1)); err == nil {
			t.Fatal("server sent data to a silent client")
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("closed after %v; want about 300ms", el)
		}
	})
	t.Run("plaintext MQTT on the TLS port", func(t *testing.T) {
		nc, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		var b bytes.Buffer
		if err := connectPacket("dev-1", dpsUsername("dev-1"), "", 0).ConnectEncode(&b); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write(b.Bytes()); err != nil {
			t.Fatal(err)
		}
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		// The server answers with a TLS alert at most, then closes.
		if _, err := io.Copy(io.Discard, nc); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection still open")
			}
		}
	})
	t.Run("no CONNECT", func(t *testing.T) {
		c := ts.dialRaw(t)
		c.expectClosed(3 * time.Second)
	})
	waitFor(t, "connections to end", func() bool { return ts.srv.ConnCount() == 0 })
}

// TestDomainContext: the domain call's context ends when the client goes
// away, and when the server shuts down.
func TestDomainContext(t *testing.T) {
	started := make(chan struct{}, 1)
	cancelled := make(chan error, 1)
	f := &fakeDPS{register: func(ctx context.Context, _ dps.RegisterRequest) (*dps.OperationStatus, error) {
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- ctx.Err()
		return nil, ctx.Err()
	}}

	t.Run("client closes", func(t *testing.T) {
		ts := startServer(t, Config{}, f)
		c := ts.dialRaw(t)
		c.connect("dev-1", dpsUsername("dev-1"), "", 0)
		c.publish(0, 0, registerTopic+"1", nil)
		<-started
		c.nc.Close()
		select {
		case err := <-cancelled:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("context error %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("domain call not cancelled when the client closed")
		}
		waitFor(t, "the connection to end", func() bool { return ts.srv.ConnCount() == 0 })
	})

	t.Run("shutdown", func(t *testing.T) {
		ts := startServer(t, Config{}, f)
		c := ts.dialRaw(t)
		c.connect("dev-1", dpsUsername("dev-1"), "", 0)
		c.publish(0, 0, registerTopic+"1", nil)
		<-started
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		select {
		case <-cancelled:
		default:
			t.Fatal("Shutdown returned before the domain call ended")
		}
		if n := ts.srv.ConnCount(); n != 0 {
			t.Errorf("ConnCount %d after Shutdown", n)
		}
		c.expectClosed(5 * time.Second)
		// Serve on a new listener after Shutdown returns at once.
		ln := newLocalListener(t)
		if err := ts.srv.Serve(ln); err != nil {
			t.Errorf("Serve after Shutdown: %v", err)
		}
	})
}

// TestFakeDomainAnswers covers answers the real domain does not produce
// today: a poll still assigning, throttling, internal errors.
func TestFakeDomainAnswers(t *testing.T) {
	// The test sets the answers while request goroutines read them.
	var (
		registerCalls atomic.Int64
		mu            sync.Mutex
		pollStatus    string
		regErr        error
	)
	set := func(status string, err error) {
		mu.Lock()
		defer mu.Unlock()
		pollStatus, regErr = status, err
	}
	f := &fakeDPS{
		retry: 7,
		register: func(context.Context, dps.RegisterRequest) (*dps.OperationStatus, error) {
			registerCalls.Add(1)
			mu.Lock()
			defer mu.Unlock()
			if regErr != nil {
				return nil, regErr
			}
			return &dps.OperationStatus{OperationID: "op-1", Status: dps.StatusAssigning}, nil
		},
		status: func(_ context.Context, req dps.OperationRequest) (*dps.OperationStatus, error) {
			mu.Lock()
			defer mu.Unlock()
			return &dps.OperationStatus{OperationID: req.OperationID, Status: pollStatus,
				RegistrationState: &dps.RegistrationState{RegistrationID: req.RegistrationID, Status: pollStatus}}, nil
		},
	}
	ts := startServer(t, Config{}, f)
	dev := ts.connectPaho(t, "dev-1", "")

	set(dps.StatusAssigning, nil)
	r := dev.poll("1", "op-1")
	if r.status != 202 || r.retryAfter != "7" {
		t.Errorf("poll while assigning: %s; want 202 with retry-after=7", r.topic)
	}
	set(dps.StatusFailed, nil)
	if r = dev.poll("2", "op-1"); r.status != 200 || r.retryAfter != "" {
		t.Errorf("poll of a failed operation: %s; want 200", r.topic)
	}

	set("", azerr.New(azerr.DPSThrottled))
	r = dev.register("3", "")
	checkError(t, r, 429, 429001)
	if r.retryAfter != "7" {
		t.Errorf("429 without retry-after: %s", r.topic)
	}

	set("", errors.New("store: connection to db-7 refused"))
	r = dev.register("4", "")
	body := checkError(t, r, 500, 500000)
	if strings.Contains(string(r.body), "db-7") {
		t.Errorf("internal cause leaked to the device: %s", r.body)
	}
	if body["message"] != "Internal server error." {
		t.Errorf("message %v", body["message"])
	}
	if !strings.Contains(ts.logs.String(), "db-7") {
		t.Error("internal cause not logged")
	}

	// A domain error naming no entry of the table, or an IoT Hub entry,
	// is internal: the device gets no number DPS does not mean.
	set("", &azerr.Error{Message: "nonsense"})
	checkError(t, dev.register("5", ""), 500, 500000)
	set("", azerr.New(azerr.HubDeviceNotFound))
	checkError(t, dev.register("5", ""), 500, 500000)

	// A body over 96 KB is refused by the front end: the domain never
	// sees it.
	set("", nil)
	calls := registerCalls.Load()
	checkError(t, dev.request(registerTopic+"6", bytes.Repeat([]byte("x"), 96*1024+1)), 413, 413000)
	if n := registerCalls.Load() - calls; n != 0 {
		t.Errorf("oversized register reached the domain (%d calls)", n)
	}
	if r := dev.request(registerTopic+"7", bytes.Repeat([]byte(" "), 96*1024)); r.status != 202 {
		t.Errorf("a 96 KB body is within the limit; got %d", r.status)
	}
}

// newLocalListener is a loopback TCP listener closed at cleanup.
func newLocalListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
