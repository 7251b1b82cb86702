package mqtt

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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

const (
	// scope and groupKey are docs/spec/dps-protocol.md#test-vectors,
	// vectors 19 and 20.
	scope    = "0ne00000A0A"
	groupKey = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
	indivKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	otherKey = "b3RoZXJrZXlvdGhlcmtleW90aGVya2V5b3RoZXJrZXk="
	hubName  = "hub.berth.test"

	registerTopic = "$dps/registrations/PUT/iotdps-register/?$rid="
	pollTopic     = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="
)

// testNow sits just before vector 20's expiry (se 1700000000) so that its
// literal tokens are valid.
var testNow = time.Unix(1699999000, 0)

// vector20 are the client encodings of one device token
// (docs/spec/dps-protocol.md#test-vectors, vector 20): group key groupKey,
// registration ID "my-device", scope scope.
var vector20 = []struct{ name, token string }{
	{"python %2F", "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000"},
	{"csharp %2F skn", "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000&skn=registration"},
	{"c sdk %2f", "SharedAccessSignature sr=0ne00000A0A%2fregistrations%2fmy-device&sig=mWu0BvUzRGQw3HB%2bZOVYhlCnaI87x%2b%2f3JBIaO7cdBak%3d&se=1700000000&skn=registration"},
	{"embedded c %2f", "SharedAccessSignature sr=0ne00000A0A%2fregistrations%2fmy-device&sig=mWu0BvUzRGQw3HB%2BZOVYhlCnaI87x%2B%2F3JBIaO7cdBak%3D&se=1700000000"},
	{"node raw sr", "SharedAccessSignature sr=0ne00000A0A/registrations/my-device&sig=vOD8j%2FkUndWgz4uUTp%2BhkguuYut3oirY0In6rDoxF8c%3D&skn=registration&se=1700000000"},
}

// dpsUsername is the username the SDKs send (Node's form,
// docs/spec/dps-protocol.md#test-vectors, vector 23).
func dpsUsername(regID string) string {
	return scope + "/registrations/" + regID + "/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.2"
}

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// domain is the real DPS domain on an in-memory store.
type domain struct {
	st  store.Store
	svc *dps.Service
	reg *hub.Registry
}

func newDomain(t testing.TB) *domain {
	t.Helper()
	st := memstore.New()
	clock := func() time.Time { return testNow }
	reg := hub.NewRegistry(st, clock)
	svc, err := dps.New(st, reg, dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	return &domain{st: st, svc: svc, reg: reg}
}

// enroll creates an individual symmetric-key enrollment with indivKey.
func (d *domain) enroll(t testing.TB, regID, deviceID, status string) {
	t.Helper()
	e := &dps.IndividualEnrollment{RegistrationID: regID, DeviceID: deviceID}
	e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: indivKey}}
	e.ProvisioningStatus = status
	if _, err := d.svc.PutEnrollment(context.Background(), regID, e, ""); err != nil {
		t.Fatal(err)
	}
}

// group creates a symmetric-key enrollment group with groupKey.
func (d *domain) group(t testing.TB, id, status string) {
	t.Helper()
	g := &dps.EnrollmentGroup{EnrollmentGroupID: id}
	g.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: groupKey}}
	g.ProvisioningStatus = status
	if _, err := d.svc.PutGroup(context.Background(), id, g, ""); err != nil {
		t.Fatal(err)
	}
}

// token signs a device token the way Node does (raw sr, skn=registration).
func token(t testing.TB, regID, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.Sign(scope+"/registrations/"+regID, key, "registration", expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeDPS lets a test decide the domain's answers.
type fakeDPS struct {
	register func(context.Context, dps.RegisterRequest) (*dps.OperationStatus, error)
	status   func(context.Context, dps.OperationRequest) (*dps.OperationStatus, error)
	retry    int
}

func (f *fakeDPS) Register(ctx context.Context, req dps.RegisterRequest) (*dps.OperationStatus, error) {
	if f.register == nil {
		return &dps.OperationStatus{OperationID: "op-1", Status: dps.StatusAssigning}, nil
	}
	return f.register(ctx, req)
}

func (f *fakeDPS) OperationStatus(ctx context.Context, req dps.OperationRequest) (*dps.OperationStatus, error) {
	if f.status == nil {
		return &dps.OperationStatus{OperationID: req.OperationID, Status: dps.StatusAssigned}, nil
	}
	return f.status(ctx, req)
}

func (f *fakeDPS) RetryAfter() int {
	if f.retry == 0 {
		return dps.DefaultRetryAfter
	}
	return f.retry
}

// testServer is a Server on a TLS loopback listener.
type testServer struct {
	srv       *Server
	addr      string
	clientTLS *tls.Config
	logs      *syncBuffer
}

// secrets must never reach the logs, whatever a test did. A token starts
// with "SharedAccessSignature " (the bare word may appear in the sas
// package's error for a token without that prefix); certificates are
// identified by CN and thumbprint, never dumped (PEM).
var secrets = []string{"SharedAccessSignature ", "sig=", indivKey, groupKey, otherKey, "-----BEGIN"}

func startServer(t testing.TB, cfg Config, d DPS) *testServer {
	t.Helper()
	cert, pool := testCert(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		addr:      ln.Addr().String(),
		clientTLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
		logs:      &syncBuffer{},
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ts.srv = New(cfg, d)
	tlsLn := tls.NewListener(ln, serverTLS(cert))
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(tlsLn) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v after Shutdown; want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
		if n := ts.srv.ConnCount(); n != 0 {
			t.Errorf("ConnCount after Shutdown = %d", n)
		}
		if n := ts.srv.panics.Load(); n != 0 {
			t.Errorf("%d panics recovered:\n%s", n, ts.logs.String())
		}
		logs := ts.logs.String()
		for _, s := range secrets {
			if strings.Contains(logs, s) {
				t.Errorf("logs contain %q:\n%s", s, logs)
			}
		}
	})
	return ts
}

// serverTLS is the listener configuration of the tests: like
// pki.ServerTLSConfig, it requests a client certificate without requiring
// or verifying one, so that X.509 devices reach the session.
func serverTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ClientAuth: tls.RequestClientCert}
}

// withClientCert is ts as seen by a client that presents cert: every
// client helper (paho or raw) of the copy sends it in the TLS handshake.
func (ts *testServer) withClientCert(cert tls.Certificate) *testServer {
	cp := *ts
	cp.clientTLS = ts.clientTLS.Clone()
	cp.clientTLS.Certificates = []tls.Certificate{cert}
	return &cp
}

// testCert makes a self-signed ECDSA certificate for 127.0.0.1.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "berth mqtt test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
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

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---- paho device ----

// device is a paho client subscribed to the DPS response topic.
type device struct {
	t    testing.TB
	c    paho.Client
	msgs chan paho.Message
}

// connectPaho connects with paho and subscribes to $dps/registrations/res/#
// at QoS 1, as the SDKs do.
func (ts *testServer) connectPaho(t testing.TB, regID, password string) *device {
	t.Helper()
	d := &device{t: t, msgs: make(chan paho.Message, 16)}
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + ts.addr).
		SetTLSConfig(ts.clientTLS).
		SetClientID(regID).
		SetUsername(dpsUsername(regID)).
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetKeepAlive(60 * time.Second).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetOrderMatters(true)
	d.c = paho.NewClient(opts)
	if tok := d.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho connect: %v", tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(100) })
	tok := d.c.Subscribe("$dps/registrations/res/#", 1, func(_ paho.Client, m paho.Message) { d.msgs <- m })
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho subscribe: %v", tok.Error())
	}
	if got := tok.(*paho.SubscribeToken).Result()["$dps/registrations/res/#"]; got != 1 {
		t.Fatalf("granted QoS %d; want 1", got)
	}
	return d
}

// response is a DPS answer as a device sees it.
type response struct {
	topic      string
	status     int
	rid        string
	retryAfter string // "" when absent
	body       []byte
	qos        byte
}

// responseRE is the strictest client parser's view (C# requires "/?$rid="
// right after the status; Python needs $rid first).
var responseRE = regexp.MustCompile(`^\$dps/registrations/res/(\d{3})/\?\$rid=([^&]*)(?:&retry-after=(\d+))?$`)

func parseResponse(t testing.TB, topic string, body []byte, qos byte) response {
	t.Helper()
	m := responseRE.FindStringSubmatch(topic)
	if m == nil {
		t.Fatalf("response topic %q does not have the DPS shape", topic)
	}
	status, _ := strconv.Atoi(m[1])
	if !json.Valid(body) {
		t.Fatalf("response body is not JSON: %q", body)
	}
	return response{topic: topic, status: status, rid: m[2], retryAfter: m[3], body: body, qos: qos}
}

// request publishes at QoS 1 and waits for the answer.
func (d *device) request(topic string, body []byte) response {
	d.t.Helper()
	tok := d.c.Publish(topic, 1, false, body)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		d.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
	select {
	case m := <-d.msgs:
		return parseResponse(d.t, m.Topic(), m.Payload(), m.Qos())
	case <-time.After(5 * time.Second):
		d.t.Fatalf("no answer to %s", topic)
		return response{}
	}
}

func (d *device) register(rid string, body string) response {
	d.t.Helper()
	return d.request(registerTopic+rid, []byte(body))
}

func (d *device) poll(rid, operationID string) response {
	d.t.Helper()
	return d.request(pollTopic+rid+"&operationId="+operationID, []byte(" "))
}

func decodeStatus(t testing.TB, r response) dps.OperationStatus {
	t.Helper()
	var op dps.OperationStatus
	if err := json.Unmarshal(r.body, &op); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	return op
}

var timestampRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$`)
var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// checkError asserts an error answer: the status, the code, and the body
// shape every SDK parses (errorCode/1000 == status).
func checkError(t testing.TB, r response, status, code int) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d (%s); want %d", r.status, r.body, status)
	}
	if r.retryAfter != "" && status != 429 && status != 503 {
		t.Errorf("retry-after on a %d: %s", status, r.topic)
	}
	var body map[string]any
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("error body %s: %v", r.body, err)
	}
	if got, _ := body["errorCode"].(float64); int(got) != code || int(got)/1000 != status {
		t.Errorf("errorCode %v; want %d", body["errorCode"], code)
	}
	if id, _ := body["trackingId"].(string); !uuidRE.MatchString(id) {
		t.Errorf("trackingId %q is not a UUID", body["trackingId"])
	}
	if m, _ := body["message"].(string); m == "" {
		t.Errorf("empty message: %s", r.body)
	}
	if ts, _ := body["timestampUtc"].(string); !timestampRE.MatchString(ts) {
		t.Errorf("timestampUtc %q is not in Azure's format", body["timestampUtc"])
	}
	return body
}

// ---- raw client: packet-level checks, with mochi's codec ----

type rawClient struct {
	t  testing.TB
	nc net.Conn
	r  *bufio.Reader
}

func (ts *testServer) dialRaw(t testing.TB) *rawClient {
	t.Helper()
	nc, err := tls.Dial("tcp", ts.addr, ts.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawClient{t: t, nc: nc, r: bufio.NewReader(nc)}
}

func (c *rawClient) send(encode func(*bytes.Buffer) error) {
	c.t.Helper()
	var buf bytes.Buffer
	if err := encode(&buf); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.nc.Write(buf.Bytes()); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func connectPacket(clientID, username, password string, keepalive uint16) *packets.Packet {
	pk := &packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: clientID,
			Clean:            true,
			Keepalive:        keepalive,
		},
	}
	if username != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(username)
	}
	if password != "" {
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(password)
	}
	return pk
}

// connect sends CONNECT and returns the CONNACK return code.
func (c *rawClient) connect(clientID, username, password string, keepalive uint16) byte {
	c.t.Helper()
	c.send(connectPacket(clientID, username, password, keepalive).ConnectEncode)
	pk := c.read()
	if pk.FixedHeader.Type != packets.Connack {
		c.t.Fatalf("got %s; want CONNACK", packetName(pk.FixedHeader.Type))
	}
	if pk.SessionPresent {
		c.t.Error("SessionPresent = 1")
	}
	return pk.ReasonCode
}

// subscribe subscribes and returns the SUBACK return codes.
func (c *rawClient) subscribe(id uint16, qos byte, filters ...string) []byte {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id, ProtocolVersion: 4}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: qos})
	}
	c.send(pk.SubscribeEncode)
	ack := c.read()
	if ack.FixedHeader.Type != packets.Suback || ack.PacketID != id {
		c.t.Fatalf("got %s id %d; want SUBACK %d", packetName(ack.FixedHeader.Type), ack.PacketID, id)
	}
	return ack.ReasonCodes
}

func (c *rawClient) publish(qos byte, id uint16, topic string, body []byte) {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, Payload: body, ProtocolVersion: 4}
	if qos > 0 {
		pk.PacketID = id
	}
	c.send(pk.PublishEncode)
}

func (c *rawClient) puback(id uint16) {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id, ProtocolVersion: 4}
	c.send(pk.PubackEncode)
}

func (c *rawClient) ping() {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	c.send(pk.PingreqEncode)
}

// next reads one packet; err is the read error (io.EOF when the server
// closed the connection).
func (c *rawClient) next(timeout time.Duration) (*packets.Packet, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	hb, err := c.r.ReadByte()
	if err != nil {
		return nil, err
	}
	pk := &packets.Packet{ProtocolVersion: 4}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return nil, fmt.Errorf("fixed header: %w", err)
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return nil, err
	}
	pk.FixedHeader.Remaining = n
	buf := make([]byte, n)
	if _, err := io.ReadFull(c.r, buf); err != nil {
		return nil, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Suback:
		err = pk.SubackDecode(buf)
	case packets.Unsuback:
		err = pk.UnsubackDecode(buf)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected %s from server", packetName(pk.FixedHeader.Type))
	}
	return pk, err
}

func (c *rawClient) read() *packets.Packet {
	c.t.Helper()
	pk, err := c.next(5 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return pk
}

// readResponse reads a PUBLISH and parses it as a DPS answer.
func (c *rawClient) readResponse() response {
	c.t.Helper()
	pk := c.read()
	if pk.FixedHeader.Type != packets.Publish {
		c.t.Fatalf("got %s; want PUBLISH", packetName(pk.FixedHeader.Type))
	}
	return parseResponse(c.t, pk.TopicName, pk.Payload, pk.FixedHeader.Qos)
}

// expectClosed asserts that the server closes the connection (without
// sending anything more) within timeout.
func (c *rawClient) expectClosed(timeout time.Duration) {
	c.t.Helper()
	pk, err := c.next(timeout)
	if err == nil {
		c.t.Fatalf("got %s; want the connection closed", packetName(pk.FixedHeader.Type))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after %v", timeout)
	}
}
