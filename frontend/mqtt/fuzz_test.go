package mqtt

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

func FuzzParseDPSUsername(f *testing.F) {
	for _, s := range []string{
		"0neFEEDC0DE/registrations/myRegistrationId/api-version=2019-03-31",
		"0neFEEDC0DE/registrations/myRegistrationId/api-version=2019-03-31&ClientVersion=c/1.2.3",
		"0ne00000A0A/registrations/my-device/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11.4%3BLinux%20%231%20SMP%3Bx86_64%29",
		"0ne00000A0A/registrations/my-device",
		"hub.azure-devices.net/dev/?api-version=2021-04-12",
		"s/registrations//x",
		"s/registrations/d/a=%zz&&=&b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, username string) {
		scope, regID, query, err := ParseDPSUsername(username)
		if err != nil {
			return
		}
		if scope == "" || strings.Contains(scope, "/") {
			t.Fatalf("scope %q", scope)
		}
		if regID == "" || strings.ContainsAny(regID, "/?=&") {
			t.Fatalf("registration ID %q", regID)
		}
		prefix := scope + "/registrations/" + regID
		if !strings.HasPrefix(username, prefix) || (len(username) > len(prefix) && username[len(prefix)] != '/') {
			t.Fatalf("%q does not start with %q/", username, prefix)
		}
		if query == nil {
			t.Fatal("nil query")
		}
		rest := strings.TrimPrefix(strings.TrimPrefix(username, prefix), "/")
		for k := range query {
			if !strings.Contains("&"+rest, "&"+k) {
				t.Fatalf("key %q not in query %q", k, rest)
			}
		}
	})
}

func FuzzParseDPSTopic(f *testing.F) {
	for _, s := range []string{
		"$dps/registrations/PUT/iotdps-register/?$rid=1",
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=4.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d",
		"$dps/registrations/PUT/iotdps-register/?$rid=invalid%24request%3Fid",
		"$dps/registrations/PUT/iotdps-register/?rid=1",
		"$dps/registrations/GET/iotdps-get-operationstatus/?operationId=a%2Fb&$rid=&$rid=2",
		"$dps/x?$rid=1",
		"devices/d/messages/events/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		kind, rid, opID, ok := ParseDPSTopic(topic)
		if !ok {
			if kind != "" || rid != "" || opID != "" {
				t.Fatalf("not ok but %q, %q, %q", kind, rid, opID)
			}
			return
		}
		if !strings.HasPrefix(topic, "$dps/") {
			t.Fatalf("accepted %q", topic)
		}
		switch kind {
		case TopicRegister, TopicUnknown:
			if opID != "" {
				t.Fatalf("operationId %q on %s", opID, kind)
			}
		case TopicOperationStatus:
		default:
			t.Fatalf("kind %q", kind)
		}
		if strings.Contains(rid, "&") {
			t.Fatalf("rid %q spans pairs", rid)
		}
		if rid != "" && !strings.Contains(topic, "$rid="+rid) {
			t.Fatalf("rid %q is not in %q as sent", rid, topic)
		}
		if kind == TopicUnknown && !strings.Contains(topic, "?$rid") && !strings.Contains(topic, "&$rid") {
			t.Fatalf("unknown topic %q answered without a $rid key", topic)
		}
		// Whatever the rid, the answer topic parses back to it.
		m := responseRE.FindStringSubmatch(responseTopic(202, rid, 3))
		if m == nil || m[2] != rid || m[3] != "3" {
			t.Fatalf("answer topic for rid %q parses as %q", rid, m)
		}
	})
}

// fuzzSeeds are byte streams a client could send: a whole DPS session, and
// the edge cases the handler must survive.
func fuzzSeeds(t testing.TB) [][]byte {
	enc := func(encode func(*bytes.Buffer) error) []byte {
		var b bytes.Buffer
		if err := encode(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	connect := enc(connectPacket("dev-1", dpsUsername("dev-1"), "SharedAccessSignature sr=a&sig=b&se=1", 30).ConnectEncode)
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$dps/registrations/res/#", Qos: 1}, {Filter: "x/#", Qos: 2}}}
	reg := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 2, ProtocolVersion: 4,
		TopicName: registerTopic + "1", Payload: []byte(`{"registrationId":"dev-1"}`)}
	poll := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4,
		TopicName: pollTopic + "2&operationId=op-1", Payload: []byte(" ")}
	unknown := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 3, ProtocolVersion: 4,
		TopicName: "$dps/registrations/PUT/x/?$rid=3"}
	puback := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 1, ProtocolVersion: 4}
	unsub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 4, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$dps/registrations/res/#"}}}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	disc := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
	qos2 := reg
	qos2.FixedHeader.Qos = 2
	v5 := connectPacket("dev-1", dpsUsername("dev-1"), "", 30)
	v5.ProtocolVersion = 5
	hub := connectPacket("dev-1", "hub.azure-devices.net/dev-1/?api-version=2021-04-12", "", 0)
	will := connectPacket("dev-1", dpsUsername("dev-1"), "", 0)
	will.Connect.WillFlag, will.Connect.WillTopic, will.Connect.WillPayload = true, "w", []byte("x")

	session := bytes.Join([][]byte{connect, enc(sub.SubscribeEncode), enc(reg.PublishEncode), enc(poll.PublishEncode),
		enc(unknown.PublishEncode), enc(puback.PubackEncode), enc(unsub.UnsubscribeEncode), enc(ping.PingreqEncode), enc(disc.DisconnectEncode)}, nil)
	return [][]byte{
		session,
		append(slices.Clone(connect), enc(qos2.PublishEncode)...),
		enc(v5.ConnectEncode),
		enc(hub.ConnectEncode),
		append(enc(will.ConnectEncode), enc(ping.PingreqEncode)...),
		enc(ping.PingreqEncode),
		{0x10, 0xff, 0xff, 0xff, 0x7f},
		{0x10, 0xff, 0xff, 0xff, 0xff, 0x01},
		append(slices.Clone(connect), 0x30, 0x00),
		append(slices.Clone(connect), 0x82, 0x05, 0x00, 0x01, 0x00, 0x05, 'a'),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		{},
	}
}

// FuzzConnection feeds arbitrary bytes to a connection handler over
// net.Pipe. The handler must neither panic (recovered panics are counted)
// nor outlive the client by more than a few seconds.
func FuzzConnection(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		srv := New(Config{MaxPacketSize: 64 * 1024, ConnectTimeout: time.Second, Logger: logger}, &fakeDPS{})
		server, client := net.Pipe()
		if !srv.serveConn(server) {
			t.Fatal("serveConn refused")
		}
		drained := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, client)
			close(drained)
		}()
		// Pipe writes return once the handler has read the bytes (or
		// closed); the deadline catches a handler that stops reading.
		_ = client.SetWriteDeadline(time.Now().Add(3 * time.Second))
		_, _ = client.Write(data)
		client.Close()
		<-drained
		ended := make(chan struct{})
		go func() {
			srv.wg.Wait()
			close(ended)
		}()
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection handler still running 5s after the client closed (input %q)", data)
		}
		if n := srv.panics.Load(); n != 0 {
			t.Fatalf("%d panics on input %q", n, data)
		}
	})
}
