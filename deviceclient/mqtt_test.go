package deviceclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/sas"
)

// This file checks the MQTT session against a minimal fake DPS listener
// (one connection, scripted answers) built on mochi's packet codec, which
// berth's own listener uses too. It is not a broker: it answers each
// register or poll publish with what the test's script returns.

const fakeHost = "dps.test"

// published is a PUBLISH the fake sends; an empty topic makes it drop the
// connection instead.
type published struct {
	topic   string
	payload string
}

// mqttFake is a one-connection DPS MQTT listener.
type mqttFake struct {
	t      *testing.T
	ln     net.Listener
	pool   *x509.CertPool
	script func(topic, payload string) []published
	rc     byte // CONNACK return code

	mu       sync.Mutex
	connect  packets.ConnectParams
	filters  []string
	received []string // topic + " " + payload of each PUBLISH from the client
	chain    string   // the client certificate chain, as subject CNs
	pubacks  int      // PUBACKs the client sent for our QoS 1 answers
	done     chan struct{}
}

func newMQTTFake(t *testing.T, rc byte, script func(topic, payload string) []published) *mqttFake {
	t.Helper()
	cert, pool := selfSigned(t, fakeHost)
	// Request, never require, a client certificate, as berth and Azure do.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert})
	if err != nil {
		t.Fatal(err)
	}
	f := &mqttFake{t: t, ln: ln, pool: pool, script: script, rc: rc, done: make(chan struct{})}
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			t.Error("fake MQTT server did not stop")
		}
	})
	return f
}

func (f *mqttFake) options() Options {
	return Options{
		GlobalEndpoint: fakeHost,
		Address:        f.ln.Addr().String(),
		IDScope:        testScope,
		RegistrationID: "dev-1",
		SymmetricKey:   testKey,
		RootCAs:        f.pool,
		SyncMQTT:       syncMQTT,
	}
}

// syncMQTT selects the client the fake's options make: bothClients runs a
// test with paho's session, then with the synchronous one (the tests of
// this file are not parallel).
var syncMQTT bool

func bothClients(t *testing.T, test func(t *testing.T)) {
	for _, sync := range []bool{false, true} {
		name := "paho"
		if sync {
			name = "sync"
		}
		t.Run(name, func(t *testing.T) {
			syncMQTT = sync
			defer func() { syncMQTT = false }()
			test(t)
		})
	}
}

func (f *mqttFake) serve() {
	defer close(f.done)
	nc, err := f.ln.Accept()
	if err != nil {
		return
	}
	defer nc.Close()
	r := bufio.NewReader(nc)
	var packetID uint16
	write := func(enc func(*bytes.Buffer) error) error {
		var buf bytes.Buffer
		if err := enc(&buf); err != nil {
			return err
		}
		_, err := nc.Write(buf.Bytes())
		return err
	}
	for {
		fh, body, err := readPacket(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				f.t.Logf("fake: read: %v", err)
			}
			return
		}
		pk := &packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
		switch fh.Type {
		case packets.Connect:
			if err := pk.ConnectDecode(body); err != nil {
				f.t.Errorf("fake: CONNECT: %v", err)
				return
			}
			f.mu.Lock()
			f.connect = pk.Connect
			// The handshake is done once CONNECT has been read.
			f.chain = chainCNs(nc.(*tls.Conn).ConnectionState().PeerCertificates)
			f.mu.Unlock()
			ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: f.rc, ProtocolVersion: 4}
			if write(ack.ConnackEncode) != nil || f.rc != 0 {
				return
			}
		case packets.Subscribe:
			if err := pk.SubscribeDecode(body); err != nil {
				f.t.Errorf("fake: SUBSCRIBE: %v", err)
				return
			}
			codes := make([]byte, len(pk.Filters))
			f.mu.Lock()
			for i, s := range pk.Filters {
				f.filters = append(f.filters, fmt.Sprintf("%s@%d", s.Filter, s.Qos))
				codes[i] = min(s.Qos, 1)
			}
			f.mu.Unlock()
			ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: pk.PacketID, ReasonCodes: codes, ProtocolVersion: 4}
			if write(ack.SubackEncode) != nil {
				return
			}
		case packets.Publish:
			if err := pk.PublishDecode(body); err != nil {
				f.t.Errorf("fake: PUBLISH: %v", err)
				return
			}
			f.mu.Lock()
			f.received = append(f.received, fmt.Sprintf("q%d %s %s", fh.Qos, pk.TopicName, pk.Payload))
			f.mu.Unlock()
			// PUBACK first, then the answer
			// (docs/spec/dps-protocol.md#mqtt-qos-and-ordering).
			if fh.Qos == 1 {
				ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ProtocolVersion: 4}
				if write(ack.PubackEncode) != nil {
					return
				}
			}
			for _, p := range f.script(pk.TopicName, string(pk.Payload)) {
				if p.topic == "" {
					return // drop the connection
				}
				packetID++
				out := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: packetID,
					TopicName: p.topic, Payload: []byte(p.payload), ProtocolVersion: 4}
				if write(out.PublishEncode) != nil {
					return
				}
			}
		case packets.Puback:
			f.mu.Lock()
			f.pubacks++
			f.mu.Unlock()
		case packets.Pingreq:
			resp := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
			if write(resp.PingrespEncode) != nil {
				return
			}
		case packets.Disconnect:
			return
		default:
			f.t.Errorf("fake: unexpected packet type %d", fh.Type)
			return
		}
	}
}

func readPacket(r *bufio.Reader) (packets.FixedHeader, []byte, error) {
	var fh packets.FixedHeader
	b, err := r.ReadByte()
	if err != nil {
		return fh, nil, err
	}
	if err := fh.Decode(b); err != nil {
		return fh, nil, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return fh, nil, err
	}
	fh.Remaining = n
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return fh, body, err
}

// selfSigned makes a certificate for host that is its own CA.
func selfSigned(t *testing.T, host string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// ridOf returns the $rid of a request topic.
func ridOf(topic string) string {
	_, q, _ := strings.Cut(topic, "?")
	for _, kv := range strings.Split(q, "&") {
		if v, ok := strings.CutPrefix(kv, "$rid="); ok {
			return v
		}
	}
	return ""
}

func TestMQTTProvision(t *testing.T) { bothClients(t, testMQTTProvision) }

func testMQTTProvision(t *testing.T) {
	polls := 0
	f := newMQTTFake(t, 0, func(topic, payload string) []published {
		rid := ridOf(topic)
		switch {
		case strings.HasPrefix(topic, "$dps/registrations/PUT/iotdps-register/"):
			return []published{
				// An answer to somebody else's request comes first; it
				// must not be taken for ours.
				{"$dps/registrations/res/500/?$rid=unrelated", `{"errorCode":500000,"message":"not yours"}`},
				{"$dps/registrations/res/202/?$rid=" + rid + "&retry-after=0", `{"operationId":"4.abc.op-1","status":"assigning"}`},
			}
		case strings.HasPrefix(topic, "$dps/registrations/GET/iotdps-get-operationstatus/"):
			polls++
			if polls == 1 {
				return []published{{"$dps/registrations/res/429/?$rid=" + rid + "&retry-after=0", `{"errorCode":429001,"trackingId":"t","message":"Too many requests."}`}}
			}
			if polls == 2 {
				return []published{{"$dps/registrations/res/202/?$rid=" + rid + "&retry-after=0",
					`{"operationId":"4.abc.op-1","status":"assigning","registrationState":{"registrationId":"dev-1","status":"assigning"}}`}}
			}
			return []published{{"$dps/registrations/res/200/?$rid=" + rid,
				`{"operationId":"4.abc.op-1","status":"assigned","registrationState":{"registrationId":"dev-1","assignedHub":"hub.example","deviceId":"dev-1","status":"assigned","substatus":"initialAssignment"}}`}}
		}
		return nil
	})
	opts := f.options()
	opts.Payload = []byte(`{"modelId":"dtmi:x;1"}`)
	got, err := Provision(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != "assigned" || got.RegistrationState.AssignedHub != "hub.example" {
		t.Errorf("result %+v", got)
	}

	// Wait for the disconnect so that every packet has been seen.
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not disconnect")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.connect
	if c.ClientIdentifier != "dev-1" || !c.Clean || string(c.Username) != testScope+"/registrations/dev-1/api-version=2019-03-31&ClientVersion=berth%2F0.1" {
		t.Errorf("CONNECT client %q clean %v username %q", c.ClientIdentifier, c.Clean, c.Username)
	}
	tok, err := sas.Parse(string(c.Password))
	if err != nil || tok.RawResource != testScope+"%2Fregistrations%2Fdev-1" || tok.KeyName != "registration" || !tok.VerifyKey(testKey) {
		t.Errorf("password: sr %q skn %q err %v", tok.RawResource, tok.KeyName, err)
	}
	if strings.Join(f.filters, ",") != "$dps/registrations/res/#@1" {
		t.Errorf("subscriptions %v", f.filters)
	}
	want := []string{
		`q1 $dps/registrations/PUT/iotdps-register/?$rid=1 {"registrationId":"dev-1","payload":{"modelId":"dtmi:x;1"}}`,
		`q1 $dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.abc.op-1 `,
		`q1 $dps/registrations/GET/iotdps-get-operationstatus/?$rid=3&operationId=4.abc.op-1 `,
		`q1 $dps/registrations/GET/iotdps-get-operationstatus/?$rid=4&operationId=4.abc.op-1 `,
	}
	if strings.Join(f.received, "\n") != strings.Join(want, "\n") {
		t.Errorf("publishes\n got %s\nwant %s", strings.Join(f.received, "\n"), strings.Join(want, "\n"))
	}
	if f.pubacks != 5 {
		t.Errorf("client sent %d PUBACKs for 5 QoS 1 answers", f.pubacks)
	}
}

func TestMQTTUnauthorized(t *testing.T) { bothClients(t, testMQTTUnauthorized) }

func testMQTTUnauthorized(t *testing.T) {
	f := newMQTTFake(t, 0, func(topic, _ string) []published {
		return []published{{"$dps/registrations/res/401/?$rid=" + ridOf(topic),
			`{"errorCode":401000,"trackingId":"tr","message":"Unauthorized","timestampUtc":"2019-11-19T21:39:05.1573304Z"}`}}
	})
	_, err := Provision(context.Background(), f.options())
	var e *Error
	if !errors.As(err, &e) || e.Status != 401 || e.Code != 401000 || e.TrackingID != "tr" {
		t.Fatalf("err %#v", err)
	}
}

func TestMQTTConnackRefused(t *testing.T) { bothClients(t, testMQTTConnackRefused) }

func testMQTTConnackRefused(t *testing.T) {
	f := newMQTTFake(t, 5, nil)
	_, err := Provision(context.Background(), f.options())
	if err == nil || !strings.Contains(err.Error(), "mqtt connect") {
		t.Fatalf("err %v, want a connect error", err)
	}
}

func TestMQTTConnectionLost(t *testing.T) { bothClients(t, testMQTTConnectionLost) }

func testMQTTConnectionLost(t *testing.T) {
	// The fake drops the connection instead of answering.
	f := newMQTTFake(t, 0, func(string, string) []published { return []published{{topic: ""}} })
	done := make(chan error, 1)
	go func() {
		_, err := Provision(context.Background(), f.options())
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "connection lost") {
			t.Errorf("err %v, want connection lost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a request outlived its connection")
	}
}
