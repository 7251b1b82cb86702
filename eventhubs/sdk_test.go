package eventhubs_test

// The Event Hubs-compatible endpoint with the Azure SDK for Go
// (azeventhubs v2): a real berth on 127.0.21.x, devices sending over MQTT
// (paho), HTTPS (net/http) and AMQP (go-amqp), a ConsumerClient reading
// what they sent.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azeventhubs/v2"
	goamqp "github.com/Azure/go-amqp"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/berth-iot/berth/eventhubs"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/wsconn"
)

const (
	ehHub  = "ehhub.berth.test"
	devKey = "aW5kaXZpZHVhbGtleWluZGl2aWR1YWxrZXlpbmRpdmk="
	wait   = 20 * time.Second
)

// addrSeq hands each berth of this file its own loopback address of the
// range this package's tests use (127.0.21.1–50, or in the /24 whose first
// three octets BERTH_TEST_EH_NET gives, e.g. "127.0.47.").
var addrSeq atomic.Int32

func ehAddr(n int32) string {
	prefix := os.Getenv("BERTH_TEST_EH_NET")
	if prefix == "" {
		prefix = "127.0.21."
	}
	return fmt.Sprintf("%s%d", prefix, n)
}

type berth struct {
	t    *testing.T
	dir  string
	ip   string
	srv  *server.Server
	pool *x509.CertPool
	// port is the AMQP port (stable across restarts of this berth).
	amqpPort int
	httpsAdr string
	mqttAdr  string
}

func startBerth(t *testing.T, dir, ip string, amqpPort int) *berth {
	t.Helper()
	amqpAddr := ip + ":0"
	if amqpPort != 0 {
		amqpAddr = fmt.Sprintf("%s:%d", ip, amqpPort)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("BERTH_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := server.New(context.Background(), server.Config{
		DataDir: dir, Hosts: []string{ip}, HubName: ehHub,
		MQTTAddr: ip + ":0", HTTPSAddr: ip + ":0", AMQPAddr: amqpAddr,
		StreamListen: "none", Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	info := srv.Info()
	pem, err := os.ReadFile(info.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &berth{t: t, dir: dir, ip: ip, srv: srv, pool: pool, amqpPort: srv.AMQPPort(),
		httpsAdr: info.HTTPSAddress, mqttAdr: info.MQTTAddress}
}

func (b *berth) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.srv.Shutdown(ctx); err != nil {
		b.t.Errorf("shutdown: %v", err)
	}
}

func newBerth(t *testing.T) *berth {
	t.Helper()
	n := addrSeq.Add(1)
	if n > 50 {
		t.Fatal("out of loopback addresses")
	}
	b := startBerth(t, t.TempDir(), ehAddr(n), 0)
	t.Cleanup(b.stop)
	return b
}

func (b *berth) device(id string) {
	b.t.Helper()
	_, err := b.srv.Hub().Registry.Create(context.Background(), ehHub, &hub.Device{DeviceID: id, Status: hub.StatusEnabled,
		Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: devKey, SecondaryKey: devKey}}})
	if err != nil {
		b.t.Fatal(err)
	}
}

func (b *berth) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: b.pool, ServerName: ehHub, MinVersion: tls.VersionTLS12}
}

func (b *berth) consumer(connStr string) *azeventhubs.ConsumerClient {
	b.t.Helper()
	c, err := azeventhubs.NewConsumerClientFromConnectionString(connStr, "", azeventhubs.DefaultConsumerGroup, &azeventhubs.ConsumerClientOptions{
		TLSConfig:      b.tlsConfig(),
		CustomEndpoint: fmt.Sprintf("%s:%d", b.ip, b.amqpPort),
		RetryOptions:   azeventhubs.RetryOptions{MaxRetries: 1, RetryDelay: 100 * time.Millisecond},
	})
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func deviceToken(id string) string {
	tok, err := sas.Sign(ehHub+"/devices/"+id, devKey, "", time.Now().Add(time.Hour))
	if err != nil {
		panic(err)
	}
	return tok
}

func (b *berth) sendMQTT(id, props, body string) {
	b.t.Helper()
	opts := paho.NewClientOptions().AddBroker("ssl://" + b.mqttAdr).SetClientID(id).
		SetUsername(ehHub + "/" + id + "/?api-version=2021-04-12").SetPassword(deviceToken(id)).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetTLSConfig(b.tlsConfig())
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		b.t.Fatalf("mqtt connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish("devices/"+id+"/messages/events/"+props, 1, false, body); !tok.WaitTimeout(wait) || tok.Error() != nil {
		b.t.Fatalf("mqtt publish: %v", tok.Error())
	}
}

func (b *berth) sendHTTPS(id string, header map[string]string, body string) {
	b.t.Helper()
	req, _ := http.NewRequest("POST", "https://"+b.httpsAdr+"/devices/"+id+"/messages/events?api-version=2021-04-12", strings.NewReader(body))
	req.Host = ehHub
	req.Header.Set("Authorization", deviceToken(id))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: b.tlsConfig()}, Timeout: wait}
	resp, err := cl.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 204 {
		data, _ := io.ReadAll(resp.Body)
		b.t.Fatalf("https telemetry: %d %s", resp.StatusCode, data)
	}
}

func (b *berth) sendAMQP(id string, m *goamqp.Message) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s := b.amqpSession(ctx, goamqp.SASLTypePlain(id+"@sas."+strings.Split(ehHub, ".")[0], deviceToken(id)))
	snd, err := s.NewSender(ctx, "/devices/"+id+"/messages/events", nil)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := snd.Send(ctx, m, nil); err != nil {
		b.t.Fatal(err)
	}
}

// amqpSession dials the berth's AMQP listener with go-amqp and opens a
// session; the connection closes with the test.
func (b *berth) amqpSession(ctx context.Context, sasl goamqp.SASLType) *goamqp.Session {
	b.t.Helper()
	conn, err := goamqp.Dial(ctx, fmt.Sprintf("amqps://%s:%d", b.ip, b.amqpPort), &goamqp.ConnOptions{
		TLSConfig: b.tlsConfig(), HostName: ehHub, SASLType: sasl,
	})
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { conn.Close() })
	s, err := conn.NewSession(ctx, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

func (b *berth) ehConnStr() string {
	cs := b.srv.EventHubConnectionString()
	if !strings.HasPrefix(cs, "Endpoint=sb://"+ehHub+":") || !strings.HasSuffix(cs, ";EntityPath=ehhub") {
		b.t.Fatalf("connection string %q", cs)
	}
	return cs
}

func receive(t *testing.T, pc *azeventhubs.PartitionClient, n int) []*azeventhubs.ReceivedEventData {
	t.Helper()
	var out []*azeventhubs.ReceivedEventData
	deadline := time.Now().Add(wait)
	for len(out) < n && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		evs, err := pc.ReceiveEvents(ctx, n-len(out), nil)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("ReceiveEvents: %v", err)
		}
		out = append(out, evs...)
	}
	if len(out) < n {
		t.Fatalf("received %d of %d events", len(out), n)
	}
	return out
}

func partitionOf(id string) string {
	return fmt.Sprint(hub.PartitionOf(id, hub.DefaultPartitionCount))
}

func TestConsumerClient(t *testing.T) {
	b := newBerth(t)
	b.device("mqtt-dev")
	b.device("https-dev")
	b.device("amqp-dev")
	c := b.consumer(b.ehConnStr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	props, err := c.GetEventHubProperties(ctx, nil)
	if err != nil {
		t.Fatalf("GetEventHubProperties: %v", err)
	}
	if props.Name != "ehhub" || strings.Join(props.PartitionIDs, ",") != "0,1,2,3" {
		t.Errorf("properties %+v", props)
	}
	pp, err := c.GetPartitionProperties(ctx, "0", nil)
	if err != nil {
		t.Fatalf("GetPartitionProperties: %v", err)
	}
	if !pp.IsEmpty || pp.PartitionID != "0" {
		t.Errorf("empty partition properties %+v", pp)
	}

	b.sendMQTT("mqtt-dev", "%24.mid=mid-1&%24.ct=application%2Fjson&%24.ce=utf-8&run=mqtt&unit=%C2%B0C", `{"t":1}`)
	b.sendHTTPS("https-dev", map[string]string{"iothub-messageid": "mid-2", "iothub-app-run": "https", "iothub-contenttype": "text/plain"}, "hello")
	b.sendAMQP("amqp-dev", &goamqp.Message{
		Properties:            &goamqp.MessageProperties{MessageID: "mid-3", CorrelationID: "cid-3"},
		ApplicationProperties: map[string]any{"run": "amqp"},
		Data:                  [][]byte{[]byte("amqp-body")},
	})

	for _, tc := range []struct {
		dev, mid, run, body string
		check               func(e *azeventhubs.ReceivedEventData)
	}{
		{"mqtt-dev", "mid-1", "mqtt", `{"t":1}`, func(e *azeventhubs.ReceivedEventData) {
			if e.ContentType == nil || *e.ContentType != "application/json" || e.Properties["unit"] != "°C" {
				t.Errorf("mqtt: content type %v, unit %v", e.ContentType, e.Properties["unit"])
			}
		}},
		{"https-dev", "mid-2", "https", "hello", func(e *azeventhubs.ReceivedEventData) {
			if e.ContentType == nil || *e.ContentType != "text/plain" {
				t.Errorf("https: content type %v", e.ContentType)
			}
		}},
		{"amqp-dev", "mid-3", "amqp", "amqp-body", func(e *azeventhubs.ReceivedEventData) {
			if e.CorrelationID != "cid-3" {
				t.Errorf("amqp: correlation id %v", e.CorrelationID)
			}
		}},
	} {
		pc, err := c.NewPartitionClient(partitionOf(tc.dev), &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{Earliest: to(true)}})
		if err != nil {
			t.Fatal(err)
		}
		// Every device of the test that hashes to this partition.
		inPart := 0
		for _, d := range []string{"mqtt-dev", "https-dev", "amqp-dev"} {
			if partitionOf(d) == partitionOf(tc.dev) {
				inPart++
			}
		}
		evs := receive(t, pc, inPart)
		_ = pc.Close(ctx)
		var e *azeventhubs.ReceivedEventData
		for _, ev := range evs {
			if ev.SystemProperties["iothub-connection-device-id"] == tc.dev {
				e = ev
			}
		}
		if e == nil {
			t.Fatalf("%s: no event from the device in its partition", tc.dev)
		}
		if string(e.Body) != tc.body || e.MessageID == nil || *e.MessageID != tc.mid || e.Properties["run"] != tc.run {
			t.Errorf("%s: body %q, message id %v, properties %v", tc.dev, e.Body, e.MessageID, e.Properties)
		}
		sp := e.SystemProperties
		for _, k := range []string{"iothub-connection-auth-method", "iothub-connection-auth-generation-id", "iothub-message-source", "iothub-enqueuedtime"} {
			if sp[k] == nil {
				t.Errorf("%s: no %s in %v", tc.dev, k, sp)
			}
		}
		if sp["iothub-message-source"] != "Telemetry" {
			t.Errorf("%s: iothub-message-source %v", tc.dev, sp["iothub-message-source"])
		}
		if e.SequenceNumber <= 0 || e.Offset == "" || e.EnqueuedTime == nil || time.Since(*e.EnqueuedTime) > time.Minute {
			t.Errorf("%s: sequence %d, offset %q, enqueued %v", tc.dev, e.SequenceNumber, e.Offset, e.EnqueuedTime)
		}
		tc.check(e)
	}
}

func to[T any](v T) *T { return &v }

// Start positions: sequence number (inclusive and not), enqueued time,
// latest; and the partition properties follow what is stored.
func TestPositions(t *testing.T) {
	b := newBerth(t)
	b.device("d1")
	p := partitionOf("d1")
	for i := range 3 {
		b.sendHTTPS("d1", map[string]string{"iothub-app-i": fmt.Sprint(i)}, fmt.Sprint("m", i))
	}
	c := b.consumer(b.ehConnStr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pp, err := c.GetPartitionProperties(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pp.IsEmpty || pp.BeginningSequenceNumber != 1 || pp.LastEnqueuedSequenceNumber != 3 || pp.LastEnqueuedOffset != "3" {
		t.Errorf("partition properties %+v", pp)
	}
	read := func(sp azeventhubs.StartPosition, n int) []*azeventhubs.ReceivedEventData {
		pc, err := c.NewPartitionClient(p, &azeventhubs.PartitionClientOptions{StartPosition: sp})
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		return receive(t, pc, n)
	}
	if evs := read(azeventhubs.StartPosition{SequenceNumber: to(int64(2)), Inclusive: true}, 2); string(evs[0].Body) != "m1" {
		t.Errorf("from seq 2 inclusive: %q", evs[0].Body)
	}
	if evs := read(azeventhubs.StartPosition{SequenceNumber: to(int64(2))}, 1); string(evs[0].Body) != "m2" {
		t.Errorf("from seq 2 exclusive: %q", evs[0].Body)
	}
	if evs := read(azeventhubs.StartPosition{Offset: to("1")}, 1); string(evs[0].Body) != "m1" {
		t.Errorf("after offset 1: %q", evs[0].Body)
	}
	all := read(azeventhubs.StartPosition{Earliest: to(true)}, 3)
	if evs := read(azeventhubs.StartPosition{EnqueuedTime: all[2].EnqueuedTime, Inclusive: true}, 1); string(evs[0].Body) != "m2" {
		t.Errorf("from the last enqueued time: %q", evs[0].Body)
	}
	// Latest: only what comes after the receiver opened.
	pc, err := c.NewPartitionClient(p, &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{Latest: to(true)}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	// The link attaches on the first receive; give it one empty round.
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	if evs, _ := pc.ReceiveEvents(short, 1, nil); len(evs) != 0 {
		t.Errorf("latest delivered an old event: %q", evs[0].Body)
	}
	cancelShort()
	b.sendHTTPS("d1", nil, "m3")
	if evs := receive(t, pc, 1); string(evs[0].Body) != "m3" || evs[0].SequenceNumber != 4 {
		t.Errorf("latest: %q seq %d", evs[0].Body, evs[0].SequenceNumber)
	}
}

// A receiver with a higher owner level takes the partition: the other's
// next receive fails with ownership lost; a lower one is refused.
func TestEpoch(t *testing.T) {
	b := newBerth(t)
	b.device("d1")
	c := b.consumer(b.ehConnStr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func(level int64) *azeventhubs.PartitionClient {
		pc, err := c.NewPartitionClient("0", &azeventhubs.PartitionClientOptions{OwnerLevel: &level, StartPosition: azeventhubs.StartPosition{Earliest: to(true)}})
		if err != nil {
			t.Fatal(err)
		}
		return pc
	}
	low := open(1)
	defer low.Close(ctx)
	short, c1 := context.WithTimeout(ctx, time.Second)
	_, _ = low.ReceiveEvents(short, 1, nil)
	c1()
	high := open(2)
	defer high.Close(ctx)
	short, c2 := context.WithTimeout(ctx, time.Second)
	_, _ = high.ReceiveEvents(short, 1, nil)
	c2()
	_, err := low.ReceiveEvents(ctx, 1, nil)
	var ehErr *azeventhubs.Error
	if !errors.As(err, &ehErr) || ehErr.Code != azeventhubs.ErrorCodeOwnershipLost {
		t.Fatalf("the lower epoch's receive: %v, want ErrorCodeOwnershipLost", err)
	}
}

// CBS refuses a token signed with the wrong key and one of a policy
// without ServiceConnect.
func TestCBSRefusals(t *testing.T) {
	b := newBerth(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good := b.ehConnStr()
	i := strings.Index(good, "SharedAccessKey=")
	j := strings.Index(good, ";EntityPath")
	wrong := good[:i] + "SharedAccessKey=" + "d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3JvbmdrZXk=" + good[j:]
	unauthorized := func(what string, err error) {
		t.Helper()
		// The SDK hands the CBS answer on as its RPC error (status 401);
		// only link errors become ErrorCodeUnauthorizedAccess.
		var ehErr *azeventhubs.Error
		if err == nil || !(errors.As(err, &ehErr) && ehErr.Code == azeventhubs.ErrorCodeUnauthorizedAccess) && !strings.Contains(err.Error(), "status code 401") {
			t.Errorf("%s: %v, want a 401 refusal", what, err)
		}
	}
	_, err := b.consumer(wrong).GetEventHubProperties(ctx, nil)
	unauthorized("a wrong key", err)
	settings := b.srvHubSettings()
	p, _, err := settings.PolicySet().Put(ctx, policy.Policy{KeyName: "readonly", PrimaryKey: devKey, SecondaryKey: devKey, Rights: []string{hub.RightRegistryRead}})
	if err != nil {
		t.Fatal(err)
	}
	noRight := eventhubs.ConnectionString(ehHub, b.amqpPort, p)
	_, err = b.consumer(noRight).GetEventHubProperties(ctx, nil)
	unauthorized("a policy without ServiceConnect", err)
}

func (b *berth) srvHubSettings() *hub.Settings {
	s, ok := b.srv.Hubs().Lookup(ehHub)
	if !ok {
		b.t.Fatal("no hub")
	}
	return s.Settings
}

// Sequence numbers and positions survive a restart.
func TestRestart(t *testing.T) {
	n := addrSeq.Add(1)
	ip := ehAddr(n)
	dir := t.TempDir()
	b := startBerth(t, dir, ip, 0)
	port := b.amqpPort
	b.device("d1")
	b.sendHTTPS("d1", nil, "before")
	b.stop()
	b = startBerth(t, dir, ip, port)
	defer b.stop()
	b.sendHTTPS("d1", nil, "after")
	c := b.consumer(b.ehConnStr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pc, err := c.NewPartitionClient(partitionOf("d1"), &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{SequenceNumber: to(int64(1))}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	evs := receive(t, pc, 1)
	if string(evs[0].Body) != "after" || evs[0].SequenceNumber != 2 {
		t.Errorf("after restart: %q seq %d", evs[0].Body, evs[0].SequenceNumber)
	}
}

// The hub connection string's messages/events is redirected to the Event
// Hubs endpoint, as the Azure samples expect.
func TestRedirect(t *testing.T) {
	b := newBerth(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	owner, _ := b.srvHubSettings().Policy(hub.OwnerPolicy)
	tok, err := sas.Sign(ehHub+"/messages/events", owner.PrimaryKey, owner.KeyName, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s := b.amqpSession(ctx, goamqp.SASLTypePlain(owner.KeyName+"@sas.root.ehhub", tok))
	_, err = s.NewReceiver(ctx, "amqps://"+ehHub+"/messages/events/$management", nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != "amqp:link:redirect" {
		t.Fatalf("receiver on messages/events: %v, want amqp:link:redirect", err)
	}
	want := fmt.Sprintf("amqps://%s:%d/ehhub/$management", ehHub, b.amqpPort)
	if ae.Info["hostname"] != ehHub || ae.Info["address"] != want {
		t.Errorf("redirect info %v, want address %s", ae.Info, want)
	}
	// What the sample does next: the Event Hubs connection string from
	// the redirect and the hub policy, and a read.
	u, _ := url.Parse(ae.Info["address"].(string))
	cs := fmt.Sprintf("Endpoint=sb://%s/;SharedAccessKeyName=%s;SharedAccessKey=%s;EntityPath=%s",
		u.Host, owner.KeyName, owner.PrimaryKey, strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/$management"))
	if _, err := b.consumer(cs).GetEventHubProperties(ctx, nil); err != nil {
		t.Errorf("the redirected connection string: %v", err)
	}
}

// The Event Hubs SDK over WebSockets (its /$servicebus/websocket path on
// the HTTPS listener).
func TestWebSocket(t *testing.T) {
	b := newBerth(t)
	b.device("d1")
	b.sendHTTPS("d1", nil, "over-ws")
	c, err := azeventhubs.NewConsumerClientFromConnectionString(b.ehConnStr(), "", azeventhubs.DefaultConsumerGroup, &azeventhubs.ConsumerClientOptions{
		TLSConfig:    b.tlsConfig(),
		RetryOptions: azeventhubs.RetryOptions{MaxRetries: 1, RetryDelay: 100 * time.Millisecond},
		NewWebSocketConn: func(ctx context.Context, args azeventhubs.WebSocketConnParams) (net.Conn, error) {
			if !strings.HasPrefix(args.Host, "wss://"+ehHub) {
				return nil, fmt.Errorf("unexpected WebSocket host %q", args.Host)
			}
			d := websocket.Dialer{Subprotocols: []string{"AMQPWSB10"}, TLSClientConfig: b.tlsConfig(),
				NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, b.httpsAdr)
				}}
			ws, _, err := d.DialContext(ctx, "wss://"+ehHub+"/$servicebus/websocket", nil)
			if err != nil {
				return nil, err
			}
			return wsconn.New(ws), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, err := c.NewPartitionClient(partitionOf("d1"), &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{Earliest: to(true)}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	if evs := receive(t, pc, 1); string(evs[0].Body) != "over-ws" {
		t.Errorf("over WebSocket: %q", evs[0].Body)
	}
}

// A consumer group must exist: $Default always, others once created.
func TestConsumerGroups(t *testing.T) {
	b := newBerth(t)
	b.device("d1")
	b.sendHTTPS("d1", nil, "cg")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func() error {
		c, err := azeventhubs.NewConsumerClientFromConnectionString(b.ehConnStr(), "", "analytics", &azeventhubs.ConsumerClientOptions{
			TLSConfig: b.tlsConfig(), CustomEndpoint: fmt.Sprintf("%s:%d", b.ip, b.amqpPort),
			RetryOptions: azeventhubs.RetryOptions{MaxRetries: 0},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		pc, err := c.NewPartitionClient(partitionOf("d1"), &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{Earliest: to(true)}})
		if err != nil {
			return err
		}
		defer pc.Close(ctx)
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		evs, err := pc.ReceiveEvents(rctx, 1, nil)
		if err == nil && len(evs) != 1 {
			err = fmt.Errorf("%d events", len(evs))
		}
		return err
	}
	if err := open(); err == nil {
		t.Fatal("a consumer group that does not exist was served")
	}
	if _, err := b.srv.Hubs().CreateConsumerGroup(ctx, ehHub, "analytics", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := open(); err != nil {
		t.Fatalf("the created consumer group: %v", err)
	}
}

// $management answers on the strength of the connection's CBS grant alone
// (a request without security_token), and refuses an entity the
// connection holds no token for.
func TestManagementByGrant(t *testing.T) {
	b := newBerth(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	owner, _ := b.srvHubSettings().Policy(hub.OwnerPolicy)
	s := b.amqpSession(ctx, goamqp.SASLTypeAnonymous())
	request := func(target, replyTo string, m *goamqp.Message) *goamqp.Message {
		t.Helper()
		snd, err := s.NewSender(ctx, target, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer snd.Close(ctx)
		rcv, err := s.NewReceiver(ctx, target, &goamqp.ReceiverOptions{TargetAddress: replyTo})
		if err != nil {
			t.Fatal(err)
		}
		defer rcv.Close(ctx)
		m.Properties = &goamqp.MessageProperties{MessageID: "req-1", ReplyTo: &replyTo}
		if err := snd.Send(ctx, m, nil); err != nil {
			t.Fatal(err)
		}
		resp, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = rcv.AcceptMessage(ctx, resp)
		return resp
	}
	read := func() any {
		resp := request("$management", "mgmt-reply", &goamqp.Message{ApplicationProperties: map[string]any{
			"operation": "READ", "name": "ehhub", "type": "com.microsoft:eventhub"}})
		return resp.ApplicationProperties["status-code"]
	}
	if got := read(); got != int32(401) {
		t.Errorf("without a token: status %v, want 401", got)
	}
	aud := "sb://" + ehHub + "/ehhub/$management"
	sig := sas.SignRaw(url.QueryEscape(aud), []byte(owner.PrimaryKey), owner.KeyName, time.Now().Add(time.Hour))
	resp := request("$cbs", "cbs-reply", &goamqp.Message{
		ApplicationProperties: map[string]any{"operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": aud},
		Value:                 sig,
	})
	if got := resp.ApplicationProperties["status-code"]; got != int32(200) {
		t.Fatalf("put-token: %v %v", got, resp.ApplicationProperties["status-description"])
	}
	if got := read(); got != int32(200) {
		t.Errorf("with the CBS grant: status %v, want 200", got)
	}
}

// Five receivers may read one partition of a group at once; a sixth is
// refused, and one leaving makes room.
func TestFiveReceivers(t *testing.T) {
	b := newBerth(t)
	c := b.consumer(b.ehConnStr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func() (*azeventhubs.PartitionClient, error) {
		pc, err := c.NewPartitionClient("1", &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{Earliest: to(true)}})
		if err != nil {
			t.Fatal(err)
		}
		// The link attaches on the first receive.
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		_, err = pc.ReceiveEvents(rctx, 1, nil)
		if errors.Is(err, context.DeadlineExceeded) {
			err = nil
		}
		return pc, err
	}
	var pcs []*azeventhubs.PartitionClient
	for i := range eventhubs.MaxReceivers {
		pc, err := open()
		if err != nil {
			t.Fatalf("receiver %d: %v", i+1, err)
		}
		pcs = append(pcs, pc)
	}
	sixth, err := open()
	if err == nil {
		t.Fatal("a sixth receiver on the partition was accepted")
	}
	_ = sixth.Close(ctx)
	_ = pcs[0].Close(ctx)
	again, err := open()
	if err != nil {
		t.Errorf("after one left: %v", err)
	}
	_ = again.Close(ctx)
	for _, pc := range pcs[1:] {
		_ = pc.Close(ctx)
	}
}
