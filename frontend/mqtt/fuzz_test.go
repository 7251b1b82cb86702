package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store/memstore"
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
		checkRidAsSent(t, topic, rid)
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

func FuzzParseHubUsername(f *testing.F) {
	for _, s := range []string{
		"myiothub.azure-devices.net/my_device/?api-version=2020-09-30&DeviceClientType=azsdk-c%2F1.5.0",
		"myiothub.azure-devices.net/my_device/my_module_id/?api-version=2020-09-30&DeviceClientType=azrtos&model-id=dtmi%3AYOUR_COMPANY_NAME_HERE%3Asample_device%3B1",
		"hub.berth.test/dev-1/?api-version=2021-04-12&model-id=dtmi:com:example:Thermostat;1&DeviceClientType=azure-iot-device%2F1.18.2",
		"hub/dev-1/api-version=2016-11-14&DeviceClientType=x",
		"iotHub1/device1/module1/api-version=2010-01-01&DeviceClientType=customDeviceClient2",
		"hub/dev-1/mod-1/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1-preview-003",
		"hub/dev-1",
		"hub/dev-1/",
		"hub//?api-version=1",
		"hub/d/?a=%zz&a=2&&b",
		"0ne00000A0A/registrations/dev-1/api-version=2019-03-31",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, username string) {
		h, d, m, q, err := ParseHubUsername(username)
		if err != nil {
			if h != "" || d != "" || m != "" || q != nil {
				t.Fatalf("error %v with results %q %q %q %v", err, h, d, m, q)
			}
			return
		}
		if h == "" || d == "" || strings.Contains(h, "/") || strings.Contains(d, "/") || strings.Contains(m, "/") {
			t.Fatalf("hub %q device %q module %q", h, d, m)
		}
		prefix := h + "/" + d
		if m != "" {
			prefix += "/" + m
		}
		if !strings.HasPrefix(username, prefix) || (len(username) > len(prefix) && username[len(prefix)] != '/') {
			t.Fatalf("%q does not start with %q", username, prefix)
		}
		if q == nil {
			t.Fatal("nil query")
		}
		for k, vs := range q {
			if len(vs) != 1 {
				t.Fatalf("key %q has %d values", k, len(vs))
			}
			// A key comes from the username, except for the Azure ML
			// form, whose tail matches in any case (as IoT Edge's does)
			// and yields the canonical keys: compare without case.
			if !strings.Contains(strings.ToLower(username), strings.ToLower(k)) {
				t.Fatalf("key %q not in %q", k, username)
			}
		}
		h2, d2, m2, q2, err := ParseHubUsername(username)
		if err != nil || h2 != h || d2 != d || m2 != m || !reflect.DeepEqual(q, q2) {
			t.Fatal("not deterministic")
		}
	})
}

// discardSink keeps nothing; telemetry whose body is "fail" fails to
// append.
type discardSink struct{ n atomic.Int64 }

func (s *discardSink) Append(_ context.Context, m *hub.Message) error {
	s.n.Add(1)
	if string(m.Body) == "fail" {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// newFuzzHub is a hub with device dev-1 (key indivKey) and the selfSigned
// device x509-dev (certificate cert) on a registry whose clock is testNow,
// and a discardSink.
func newFuzzHub(t testing.TB, cert *testcerts.Cert) (*HubConfig, *discardSink) {
	st := memstore.New()
	clock := func() time.Time { return testNow }
	reg := hub.NewRegistry(st, clock)
	thumb, _ := dps.Thumbprints(cert.Cert)
	for _, d := range []*hub.Device{
		{DeviceID: "dev-1", Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}}},
		{DeviceID: "x509-dev", Authentication: &hub.Authentication{Type: hub.AuthSelfSigned, X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &thumb}}},
	} {
		if _, err := reg.Create(context.Background(), hubName, d); err != nil {
			t.Fatal(err)
		}
	}
	settings, err := hub.LoadOrCreateSettings(context.Background(), st, hubName)
	if err != nil {
		t.Fatal(err)
	}
	sink := &discardSink{}
	return &HubConfig{Name: hubName, Settings: settings, Now: clock, Services: hub.NewServices(st, reg, sink, clock, nil)}, sink
}

// encodePacket is one packet as a client sends it.
func encodePacket(t testing.TB, encode func(*bytes.Buffer) error) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := encode(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// fuzzSeeds are byte streams a client could send: a whole DPS session, and
// the edge cases the handler must survive.
func fuzzSeeds(t testing.TB) [][]byte {
	enc := func(encode func(*bytes.Buffer) error) []byte { return encodePacket(t, encode) }
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
	return append([][]byte{
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
	}, hubFuzzSeeds(t)...)
}

// hubFuzzSeeds are IoT Hub sessions: authenticated (with a will), then
// telemetry, subscriptions and the things that close the connection.
func hubFuzzSeeds(t testing.TB) [][]byte {
	enc := func(encode func(*bytes.Buffer) error) []byte { return encodePacket(t, encode) }
	tok, err := sas.SignEncoded(hubName+"/devices/dev-1", indivKey, "", testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	conn := connectPacket("dev-1", hubUsername("dev-1"), tok, 30)
	conn.Connect.Clean = false
	conn.Connect.WillFlag, conn.Connect.WillTopic, conn.Connect.WillPayload = true, "devices/dev-1/messages/events/%24.ct=text%2Fplain", []byte("bye")
	connect := enc(conn.ConnectEncode)
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "devices/dev-1/messages/devicebound/#", Qos: 1}, {Filter: "$iothub/twin/res/#"},
			{Filter: "$iothub/twin/PATCH/properties/desired/#"}, {Filter: "$iothub/methods/POST/#", Qos: 2}}}
	pub := func(qos byte, id uint16, retain bool, topic, body string) []byte {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain}, PacketID: id, ProtocolVersion: 4,
			TopicName: topic, Payload: []byte(body)}
		return enc(pk.PublishEncode)
	}
	unsub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 9, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$iothub/methods/POST/#"}}}
	badSub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 2, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$iothub/#"}}}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	disc := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
	session := bytes.Join([][]byte{connect, enc(sub.SubscribeEncode),
		pub(1, 2, false, "devices/dev-1/messages/events/%24.mid=1&%24.ct=application%2Fjson&a=b", `{"t":1}`),
		pub(0, 0, true, "devices/dev-1/messages/events", "x"),
		pub(1, 3, false, "devices/dev-1/messages/events/$.ct=application/json/", "y"),
		pub(0, 0, false, "$iothub/twin/GET/?$rid=1", " "),
		pub(1, 4, false, "$iothub/twin/PATCH/properties/reported/?$rid=2&$version=1", `{"battery":55}`),
		pub(0, 0, false, "$iothub/twin/PATCH/properties/reported/?$rid=3", `[1]`),
		pub(0, 0, false, "$iothub/twin/DELETE/?$rid=4", ""),
		pub(1, 5, false, "$iothub/methods/res/200/?$rid=1&x=", `{"ok":true}`),
		enc(unsub.UnsubscribeEncode), enc(ping.PingreqEncode), enc(disc.DisconnectEncode)}, nil)
	bad := connectPacket("dev-1", hubUsername("dev-1"), "SharedAccessSignature sr=a&sig=b&se=1", 0)
	module := connectPacket("dev-1/m", hubName+"/dev-1/m/?api-version=2021-04-12", tok, 0)
	return [][]byte{
		session,
		append(slices.Clone(connect), pub(1, 2, false, "devices/dev-2/messages/events/", "x")...),
		append(slices.Clone(connect), pub(1, 2, false, "devices/dev-1/messages/events/%zz", "x")...),
		append(slices.Clone(connect), pub(1, 2, false, "devices/dev-1/messages/events/", "fail")...),
		append(slices.Clone(connect), pub(0, 0, false, "$iothub/twin/GET/?$rid=1", "")...),
		append(slices.Clone(connect), pub(0, 0, false, "$iothub/methods/res/x/?$rid=1", "")...),
		append(slices.Clone(connect), pub(0, 0, false, "$iothub/twin/res/200", "")...),
		append(slices.Clone(connect), enc(badSub.SubscribeEncode)...),
		enc(bad.ConnectEncode),
		enc(module.ConnectEncode),
	}
}

// x509FuzzSeeds are sessions of devices that authenticate by their
// client certificate (CN x509-dev): an IoT Hub session with telemetry,
// a DPS registration, and a CONNECT whose password overrides the
// certificate.
func x509FuzzSeeds(t testing.TB) [][]byte {
	enc := func(encode func(*bytes.Buffer) error) []byte { return encodePacket(t, encode) }
	conn := connectPacket("x509-dev", hubUsername("x509-dev"), "", 30)
	conn.Connect.Clean, conn.Connect.PasswordFlag = false, true
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "devices/x509-dev/messages/devicebound/#", Qos: 1}}}
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 2, ProtocolVersion: 4,
		TopicName: "devices/x509-dev/messages/events/a=b", Payload: []byte("x")}
	disc := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
	hubSession := bytes.Join([][]byte{enc(conn.ConnectEncode), enc(sub.SubscribeEncode), enc(pub.PublishEncode), enc(disc.DisconnectEncode)}, nil)

	dpsConn := connectPacket("x509-dev", dpsUsername("x509-dev"), "", 30)
	dpsSub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$dps/registrations/res/#", Qos: 1}}}
	reg := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 2, ProtocolVersion: 4,
		TopicName: registerTopic + "1"}
	poll := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4,
		TopicName: pollTopic + "2&operationId=op-1", Payload: []byte(" ")}
	dpsSession := bytes.Join([][]byte{enc(dpsConn.ConnectEncode), enc(dpsSub.SubscribeEncode), enc(reg.PublishEncode), enc(poll.PublishEncode)}, nil)

	withPassword := connectPacket("x509-dev", hubUsername("x509-dev"), "SharedAccessSignature sr=a&sig=b&se=1", 0)
	return [][]byte{hubSession, dpsSession, enc(withPassword.ConnectEncode)}
}

// certConn gives a connection without TLS (net.Pipe in the fuzz tests) a
// client certificate chain, as a tls.Conn reports it.
type certConn struct {
	net.Conn
	chain []*x509.Certificate
}

func (c certConn) ConnectionState() tls.ConnectionState {
	return tls.ConnectionState{PeerCertificates: c.chain}
}

// servePipe starts srv's handler on one end of a net.Pipe whose TLS client
// certificate chain is chain (none when nil) and returns the other end.
func servePipe(t testing.TB, srv *Server, chain []*x509.Certificate) net.Conn {
	server, client := net.Pipe()
	var nc net.Conn = server
	if chain != nil {
		nc = certConn{Conn: server, chain: chain}
	}
	if !srv.serveConn(nc) {
		t.Fatal("serveConn refused")
	}
	return client
}

// FuzzConnection feeds arbitrary bytes to a connection handler over
// net.Pipe, DPS and IoT Hub sessions alike, with or without a client
// certificate (CN x509-dev, the hub's selfSigned device). The handler must
// neither panic (recovered panics are counted) nor outlive the client by
// more than a few seconds.
func FuzzConnection(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	for _, s := range x509FuzzSeeds(f) {
		f.Add(s, true)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cert := testcerts.Valid(f, "x509-dev", nil, false, testNow)
	hubCfg, _ := newFuzzHub(f, cert)
	f.Fuzz(func(t *testing.T, data []byte, withCert bool) {
		srv := New(Config{MaxPacketSize: 64 * 1024, ConnectTimeout: time.Second, Logger: logger, Hub: hubCfg}, &fakeDPS{})
		var chain []*x509.Certificate
		if withCert {
			chain = []*x509.Certificate{cert.Cert}
		}
		client := servePipe(t, srv, chain)
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
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := srv.conns.Wait(ctx)
		cancel()
		if err != nil {
			t.Fatalf("connection handler still running 5s after the client closed (input %q)", data)
		}
		if n := srv.panics.Load(); n != 0 {
			t.Fatalf("%d panics on input %q", n, data)
		}
	})
}

// TestHubFuzzSeedsReachTelemetry makes sure the hub fuzz seeds get past
// CONNECT: the session seed's three messages reach the sink, a will is
// published when a seed ends without DISCONNECT, and the certificate
// session's message is appended.
func TestHubFuzzSeedsReachTelemetry(t *testing.T) {
	seeds := hubFuzzSeeds(t)
	cert := testcerts.Valid(t, "x509-dev", nil, false, testNow)
	for _, tt := range []struct {
		name     string
		data     []byte
		withCert bool
		want     int64
	}{
		{"session", seeds[0], false, 3},
		{"foreign topic then will", seeds[1], false, 1},
		{"session with a certificate", x509FuzzSeeds(t)[0], true, 1},
		// A token in the password is the credential, certificate or not.
		{"token session with a certificate", seeds[0], true, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hubCfg, sink := newFuzzHub(t, cert)
			srv := New(Config{ConnectTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Hub: hubCfg}, nil)
			var chain []*x509.Certificate
			if tt.withCert {
				chain = []*x509.Certificate{cert.Cert}
			}
			client := servePipe(t, srv, chain)
			ended := make(chan struct{})
			go func() { _, _ = io.Copy(io.Discard, client); close(ended) }()
			_ = client.SetWriteDeadline(time.Now().Add(3 * time.Second))
			_, _ = client.Write(tt.data)
			waitFor(t, "the messages", func() bool { return sink.n.Load() >= tt.want })
			// Let the server end the connection itself (DISCONNECT, or the
			// close a bad packet earns): closing it first would race the
			// DISCONNECT and publish the will.
			select {
			case <-ended:
			case <-time.After(3 * time.Second):
			}
			client.Close()
			_ = srv.conns.Wait(context.Background())
			if n := sink.n.Load(); n != tt.want {
				t.Errorf("%d appends; want %d", n, tt.want)
			}
		})
	}
}

// checkRidAsSent: a parsed $rid is one '&'-separated value, exactly as it
// appears in the topic, so that the answer echoes it byte for byte.
func checkRidAsSent(t *testing.T, topic, rid string) {
	t.Helper()
	if strings.Contains(rid, "&") {
		t.Fatalf("rid %q spans pairs", rid)
	}
	if rid != "" && !strings.Contains(topic, "$rid="+rid) {
		t.Fatalf("rid %q is not in %q as sent", rid, topic)
	}
}
