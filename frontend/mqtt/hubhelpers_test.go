package mqtt

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

// secondaryKey is the hub test devices' secondary key.
const secondaryKey = "c2Vjb25kYXJ5a2V5c2Vjb25kYXJ5a2V5c2Vjb25kYXI="

// nodeClientType is what the Node SDK sends as DeviceClientType.
const nodeClientType = "azure-iot-device%2F1.18.2%20(node%20v20.11.0%3B%20Linux%3B%20x64)"

// hubUsername is the Node SDK's username (api-version 2021-04-12).
func hubUsername(deviceID string) string {
	return hubName + "/" + deviceID + "/?api-version=2021-04-12&DeviceClientType=" + nodeClientType
}

// recordingSink is a TelemetrySink that keeps what it is given. A test can
// make Append fail, or block until released.
type recordingSink struct {
	mu      sync.Mutex
	msgs    []*hub.Message
	err     error         // returned by Append when set
	gate    chan struct{} // when set, Append waits until it is closed
	entered chan struct{} // when set, signalled as each Append starts
	calls   atomic.Int64
}

func (s *recordingSink) Append(ctx context.Context, m *hub.Message) error {
	s.calls.Add(1)
	s.mu.Lock()
	gate, err, entered := s.gate, s.err, s.entered
	s.mu.Unlock()
	if entered != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	return nil
}

func (s *recordingSink) messages() []*hub.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*hub.Message(nil), s.msgs...)
}

func (s *recordingSink) failWith(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// block makes Append wait until the returned function is called, and
// returns the channel each Append signals on entry.
func (s *recordingSink) block() (entered <-chan struct{}, release func()) {
	gate := make(chan struct{})
	ch := make(chan struct{}, 64)
	s.mu.Lock()
	s.gate, s.entered = gate, ch
	s.mu.Unlock()
	var once sync.Once
	return ch, func() { once.Do(func() { close(gate) }) }
}

// failingStore fails every Get while fail is set: the registry cannot be
// reached.
type failingStore struct {
	store.Store
	fail atomic.Bool
}

func (s *failingStore) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	if s.fail.Load() {
		return store.Record{}, errors.New("store: connection to db-7 refused")
	}
	return s.Store.Get(ctx, kind, key)
}

// hubFixture is a Server with a hub on a real registry (memstore, clock
// testNow) and a recording sink.
type hubFixture struct {
	ts       *testServer
	st       *failingStore
	reg      *hub.Registry
	settings *hub.Settings
	sink     *recordingSink
	hubCfg   *HubConfig
	links    *hub.Links
	twins    *hub.Twins
	c2d      *hub.CloudToDevice
	methods  *hub.Methods
}

func newHubFixture(t testing.TB, edit func(*Config)) *hubFixture {
	t.Helper()
	f := &hubFixture{st: &failingStore{Store: memstore.New()}, sink: &recordingSink{}}
	clock := func() time.Time { return testNow }
	f.reg = hub.NewRegistry(f.st, clock)
	var err error
	if f.settings, err = hub.LoadOrCreateSettings(context.Background(), f.st, hubName); err != nil {
		t.Fatal(err)
	}
	// Registered before startServer's cleanup, so it runs after
	// Shutdown, when every log line is written.
	t.Cleanup(func() {
		logs := f.ts.logs.String()
		for _, p := range f.settings.Policies {
			for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
				if strings.Contains(logs, k) {
					t.Errorf("logs contain the key of policy %s", p.KeyName)
				}
			}
		}
		if strings.Contains(logs, secondaryKey) {
			t.Error("logs contain a device key")
		}
	})
	svc := hub.NewServices(f.st, f.reg, f.sink, clock, nil)
	f.links, f.twins, f.c2d, f.methods = svc.Links, svc.Twins, svc.CloudToDevice, svc.Methods
	f.hubCfg = &HubConfig{Name: hubName, Settings: f.settings, Now: clock, Services: svc}
	cfg := Config{Hub: f.hubCfg}
	if edit != nil {
		edit(&cfg)
	}
	f.ts = startServer(t, cfg, &fakeDPS{})
	return f
}

// device registers a device with keys indivKey / secondaryKey.
func (f *hubFixture) device(t testing.TB, id, status string) *hub.Device {
	t.Helper()
	d, err := f.reg.Create(context.Background(), hubName, &hub.Device{
		DeviceID: id,
		Status:   status,
		Authentication: &hub.Authentication{Type: "sas",
			SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// deviceToken signs a device token the way Node does: sr is
// encodeURIComponent({hub}/devices/{id}), no skn.
func deviceToken(t testing.TB, deviceID, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.SignEncoded(hubName+"/devices/"+deviceID, key, "", expiry)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tok, "sr="+hubName+"%2Fdevices%2F") {
		t.Fatalf("token sr is not URL-encoded: %s", tok)
	}
	return tok
}

// policyToken signs a device token with a hub policy (skn), sr raw.
func (f *hubFixture) policyToken(t testing.TB, deviceID, policy string, expiry time.Time) string {
	t.Helper()
	p, ok := f.settings.Policy(policy)
	if !ok {
		t.Fatalf("no policy %s", policy)
	}
	tok, err := sas.Sign(hubName+"/devices/"+deviceID, p.PrimaryKey, p.KeyName, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// validToken is a Node-style device token good for an hour.
func validToken(t testing.TB, deviceID string) string {
	return deviceToken(t, deviceID, indivKey, testNow.Add(time.Hour))
}

// connectHub connects a raw client the way the SDKs do (CleanSession 0)
// and returns the CONNACK return code.
func (c *rawClient) connectHub(clientID, username, password string, keepalive uint16) byte {
	c.t.Helper()
	pk := connectPacket(clientID, username, password, keepalive)
	pk.Connect.Clean = false
	return c.connectWith(pk)
}

// hubConnect is the CONNECT of deviceID with password and CleanSession
// clean.
func hubConnect(deviceID, password string, clean bool) *packets.Packet {
	pk := connectPacket(deviceID, hubUsername(deviceID), password, 0)
	pk.Connect.Clean = clean
	return pk
}

// connectWith sends pk and returns the CONNACK return code. A session is
// present only when pk is CleanSession 0 (connectHubPresent checks when).
func (c *rawClient) connectWith(pk *packets.Packet) byte {
	c.t.Helper()
	rc, present := c.connectPresent(pk)
	if present && pk.Connect.Clean {
		c.t.Error("SessionPresent = 1 for a clean session")
	}
	return rc
}

// connectPresent sends pk and returns the CONNACK's return code and
// Session Present.
func (c *rawClient) connectPresent(pk *packets.Packet) (byte, bool) {
	c.t.Helper()
	c.send(pk.ConnectEncode)
	ack := c.read()
	if ack.FixedHeader.Type != packets.Connack {
		c.t.Fatalf("got %s; want CONNACK", packetName(ack.FixedHeader.Type))
	}
	if ack.SessionPresent && ack.ReasonCode != 0 {
		c.t.Error("SessionPresent = 1 on a refused CONNECT")
	}
	return ack.ReasonCode, ack.SessionPresent
}

// dialHub connects a raw client as deviceID with a valid token.
func (f *hubFixture) dialHub(t testing.TB, deviceID string) *rawClient {
	t.Helper()
	c := f.ts.dialRaw(t)
	if rc := c.connectHub(deviceID, hubUsername(deviceID), validToken(t, deviceID), 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	return c
}

// expectOutcome checks a CONNACK return code against want and what
// follows it: a refused connection is closed, an accepted one answers a
// PINGREQ.
func (c *rawClient) expectOutcome(rc, want byte) {
	c.t.Helper()
	if rc != want {
		c.t.Fatalf("CONNACK %d; want %d", rc, want)
	}
	if want != 0 {
		c.expectClosed(5 * time.Second)
		return
	}
	c.expectPing()
}

// expectExpiry checks that c, connected with a credential that has 1 s
// left, is closed when the credential ends, not before, and that the log
// says why.
func (f *hubFixture) expectExpiry(c *rawClient, logLine string) {
	c.t.Helper()
	start := time.Now()
	c.expectPing()
	c.expectClosed(3 * time.Second)
	if el := time.Since(start); el < 700*time.Millisecond {
		c.t.Errorf("closed after %v; the credential had 1 s left", el)
	}
	if !strings.Contains(f.ts.logs.String(), logLine) {
		c.t.Errorf("no log line says %q", logLine)
	}
}

// expectPuback reads a PUBACK for id.
func (c *rawClient) expectPuback(id uint16) {
	c.t.Helper()
	pk := c.read()
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != id {
		c.t.Fatalf("got %s id %d; want PUBACK %d", packetName(pk.FixedHeader.Type), pk.PacketID, id)
	}
}

// expectPing checks that the connection is alive.
func (c *rawClient) expectPing() {
	c.t.Helper()
	c.ping()
	if pk := c.read(); pk.FixedHeader.Type != packets.Pingresp {
		c.t.Fatalf("got %s; want PINGRESP", packetName(pk.FixedHeader.Type))
	}
}

// hubDevice is a paho client connected as an IoT Hub device.
type hubDevice struct {
	c    paho.Client
	lost chan error
}

// connectHubPaho connects with paho the way the SDKs do: TLS, MQTT 3.1.1,
// ClientId = device ID, CleanSession 0.
func (ts *testServer) connectHubPaho(t testing.TB, deviceID, username, password string) (*hubDevice, error) {
	t.Helper()
	d := &hubDevice{lost: make(chan error, 1)}
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + ts.addr).
		SetTLSConfig(ts.clientTLS).
		SetClientID(deviceID).
		SetUsername(username).
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(false).
		SetKeepAlive(180 * time.Second).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetOrderMatters(true).
		SetConnectionLostHandler(func(_ paho.Client, err error) { d.lost <- err })
	d.c = paho.NewClient(opts)
	tok := d.c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatal("paho connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { d.c.Disconnect(100) })
	return d, nil
}

// propsOf returns a property list as name=value strings, for messages.
func propsOf(list []hub.Property) []string {
	out := make([]string, len(list))
	for i, p := range list {
		out[i] = p.Name + "=" + p.Value
	}
	return out
}
