// Package e2e starts real berth servers on loopback and drives them the way
// devices and operators do: paho over MQTT/TLS following the blog flow,
// net/http over HTTPS following Microsoft's curl doc, the service API with a
// service SAS. Nothing here reaches into the domain.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/stream"
)

// berth is one running server and what a client needs to reach it.
type berth struct {
	t       *testing.T
	srv     *server.Server
	dataDir string
	info    *localconf.Info
	roots   *x509.CertPool
	client  *http.Client
}

// start runs a berth on 127.0.0.1 with ephemeral ports, in dataDir.
func start(t *testing.T, dataDir string) *berth {
	t.Helper()
	return startWith(t, dataDir, server.Config{})
}

// startWith is start with cfg's store and NATS (StoreURL, NATSURL), logger
// token limit, operator listener and throttles; the addresses and names are start's.
func startWith(t *testing.T, dataDir string, cfg server.Config) *berth {
	t.Helper()
	ctx := context.Background()
	srv, err := server.New(ctx, server.Config{
		DataDir:    dataDir,
		Hosts:      []string{"127.0.0.1", "localhost"},
		HubName:    "hub.berth.test",
		MQTTAddr:   "127.0.0.1:0",
		HTTPSAddr:  "127.0.0.1:0",
		AMQPAddr:   "127.0.0.1:0",
		RetryAfter: 1,
		StoreURL:   cfg.StoreURL,
		NATSURL:    cfg.NATSURL,
		// A test that reads the logs or limits tokens sets these.
		Logger:           cfg.Logger,
		MaxTokenLifetime: cfg.MaxTokenLifetime,
		AdminAddr:        cfg.AdminAddr,
		Throttle:         cfg.Throttle,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	b := &berth{t: t, srv: srv, dataDir: dataDir}
	t.Cleanup(b.stop)
	b.load()
	return b
}

// load reads how to reach the berth in b.dataDir from its client.json, as
// the CLI does, and prepares b's HTTPS client.
func (b *berth) load() {
	t := b.t
	t.Helper()
	var err error
	b.info, err = localconf.Read(b.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(b.info.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	b.roots = x509.NewCertPool()
	if !b.roots.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	b.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, b.info.HTTPSAddress)
		},
	}}
}

func (b *berth) stop() {
	if b.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.srv.Shutdown(ctx); err != nil {
		b.t.Errorf("shutdown: %v", err)
	}
	b.srv = nil
}

// serviceToken signs a service SAS with the owner policy from client.json.
func (b *berth) serviceToken() string {
	parts := map[string]string{}
	for _, p := range strings.Split(b.info.ServiceConnectionString, ";") {
		k, v, _ := strings.Cut(p, "=")
		parts[k] = v
	}
	// The key is base64 and may end in '=': take everything after the first '='.
	key := b.info.ServiceConnectionString[strings.Index(b.info.ServiceConnectionString, "SharedAccessKey=")+len("SharedAccessKey="):]
	tok, err := sas.Sign(parts["HostName"], key, parts["SharedAccessKeyName"], time.Now().Add(time.Hour))
	if err != nil {
		b.t.Fatal(err)
	}
	return tok
}

// do sends an HTTPS request and decodes a JSON answer into out (if not nil).
func (b *berth) do(method, path, auth string, body any, header map[string]string, out any) (*http.Response, []byte) {
	b.t.Helper()
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(v)
	default:
		data, err := json.Marshal(v)
		if err != nil {
			b.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "https://127.0.0.1"+path, rd)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			b.t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp, data
}

func (b *berth) createGroup(id string) string {
	b.t.Helper()
	var g dps.EnrollmentGroup
	resp, data := b.do("PUT", "/enrollmentGroups/"+id+"?api-version=2021-10-01", b.serviceToken(),
		map[string]any{"enrollmentGroupId": id, "attestation": map[string]any{"type": "symmetricKey"}}, nil, &g)
	if resp.StatusCode != 200 || g.Attestation == nil || g.Attestation.SymmetricKey == nil || g.Attestation.SymmetricKey.PrimaryKey == "" {
		b.t.Fatalf("create group: %d %s", resp.StatusCode, data)
	}
	return g.Attestation.SymmetricKey.PrimaryKey
}

func (b *berth) createEnrollment(id string) string {
	b.t.Helper()
	var e dps.IndividualEnrollment
	resp, data := b.do("PUT", "/enrollments/"+id+"?api-version=2021-10-01", b.serviceToken(),
		map[string]any{"registrationId": id, "attestation": map[string]any{"type": "symmetricKey"}}, nil, &e)
	if resp.StatusCode != 200 || e.Attestation == nil || e.Attestation.SymmetricKey == nil || e.Attestation.SymmetricKey.PrimaryKey == "" {
		b.t.Fatalf("create enrollment: %d %s", resp.StatusCode, data)
	}
	return e.Attestation.SymmetricKey.PrimaryKey
}

// deviceToken is the token of Microsoft's Python snippet: sr quote_plus'ed.
func (b *berth) deviceToken(regID, key string) string {
	tok, err := sas.SignEncoded(b.info.IDScope+"/registrations/"+regID, key, "registration", time.Now().Add(time.Hour))
	if err != nil {
		b.t.Fatal(err)
	}
	return tok
}

// mqttDevice is a paho client connected the way the blog shows.
type mqttDevice struct {
	t    *testing.T
	c    paho.Client
	mu   sync.Mutex
	resp chan paho.Message
}

func (b *berth) mqttConnect(regID, password string) *mqttDevice {
	b.t.Helper()
	d := &mqttDevice{t: b.t, resp: make(chan paho.Message, 16)}
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + b.info.MQTTAddress).
		SetClientID(regID).
		SetUsername(b.info.IDScope + "/registrations/" + regID + "/api-version=2019-03-31").
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"})
	d.c = paho.NewClient(opts)
	if tok := d.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		b.t.Fatalf("connect: %v", tok.Error())
	}
	b.t.Cleanup(func() { d.c.Disconnect(100) })
	if tok := d.c.Subscribe("$dps/registrations/res/#", 1, func(_ paho.Client, m paho.Message) { d.resp <- m }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		b.t.Fatalf("subscribe: %v", tok.Error())
	}
	return d
}

// request publishes on topic and waits for the response with that rid.
func (d *mqttDevice) request(topic, rid, body string) (status int, retryAfter string, payload []byte) {
	d.t.Helper()
	if tok := d.c.Publish(topic, 1, false, body); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		d.t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case m := <-d.resp:
		var st int
		var q string
		if _, err := fmt.Sscanf(m.Topic(), "$dps/registrations/res/%d/?%s", &st, &q); err != nil {
			d.t.Fatalf("response topic %q: %v", m.Topic(), err)
		}
		if !strings.HasPrefix(q, "$rid="+rid) {
			d.t.Fatalf("response topic %q does not echo $rid=%s first", m.Topic(), rid)
		}
		if _, after, ok := strings.Cut(q, "&retry-after="); ok {
			retryAfter = after
		}
		return st, retryAfter, m.Payload()
	case <-time.After(10 * time.Second):
		d.t.Fatalf("no response to %s", topic)
	}
	return 0, "", nil
}

// provisionMQTT runs the blog's flow: register, then poll until done.
func (b *berth) provisionMQTT(regID, key string) *dps.OperationStatus {
	b.t.Helper()
	d := b.mqttConnect(regID, b.deviceToken(regID, key))
	st, retry, body := d.request("$dps/registrations/PUT/iotdps-register/?$rid=1", "1", `{"registrationId":"`+regID+`"}`)
	var op dps.OperationStatus
	if err := json.Unmarshal(body, &op); err != nil || st != 202 || op.Status != "assigning" || op.OperationID == "" || retry == "" {
		b.t.Fatalf("register: %d retry=%q %s", st, retry, body)
	}
	for i := 2; i < 10; i++ {
		rid := fmt.Sprint(i)
		st, _, body = d.request("$dps/registrations/GET/iotdps-get-operationstatus/?$rid="+rid+"&operationId="+op.OperationID, rid, "")
		var poll dps.OperationStatus
		if err := json.Unmarshal(body, &poll); err != nil {
			b.t.Fatalf("poll body %s: %v", body, err)
		}
		if st == 200 {
			return &poll
		}
		if st != 202 {
			b.t.Fatalf("poll: %d %s", st, body)
		}
	}
	b.t.Fatal("never assigned")
	return nil
}

// provisionHTTPS runs the curl doc's flow.
func (b *berth) provisionHTTPS(regID, key string) *dps.OperationStatus {
	b.t.Helper()
	tok := b.deviceToken(regID, key)
	base := "/" + b.info.IDScope + "/registrations/" + regID
	var op dps.OperationStatus
	resp, data := b.do("PUT", base+"/register?api-version=2021-06-01", tok, `{"registrationId":"`+regID+`"}`, map[string]string{"Content-Encoding": "utf-8"}, &op)
	if resp.StatusCode != 202 || op.Status != "assigning" || op.OperationID == "" {
		b.t.Fatalf("register: %d %s", resp.StatusCode, data)
	}
	if resp.Header.Get("Retry-After") == "" || !strings.HasSuffix(resp.Header.Get("Location"), base+"/register") {
		b.t.Errorf("register headers: %v", resp.Header)
	}
	for range 10 {
		var poll dps.OperationStatus
		resp, data = b.do("GET", base+"/operations/"+op.OperationID+"?api-version=2021-06-01", tok, nil, nil, &poll)
		switch resp.StatusCode {
		case 200:
			return &poll
		case 202:
			time.Sleep(100 * time.Millisecond)
		default:
			b.t.Fatalf("poll: %d %s", resp.StatusCode, data)
		}
	}
	b.t.Fatal("never assigned")
	return nil
}

func checkAssigned(t *testing.T, op *dps.OperationStatus, regID, hub string) {
	t.Helper()
	rs := op.RegistrationState
	if op.Status != "assigned" || rs == nil || rs.AssignedHub != hub || rs.DeviceID != regID || rs.Status != "assigned" || rs.Substatus != "initialAssignment" {
		t.Fatalf("not assigned as expected: %+v %+v", op, rs)
	}
}

func TestProvisionBothTransportsBothKinds(t *testing.T) {
	b := start(t, t.TempDir())
	groupKey := b.createGroup("fleet")
	for _, transport := range []string{"mqtt", "https"} {
		for _, kind := range []string{"individual", "group"} {
			t.Run(transport+"/"+kind, func(t *testing.T) {
				regID := transport + "-" + kind + "-dev"
				var key string
				if kind == "individual" {
					key = b.createEnrollment(regID)
				} else {
					var err error
					if key, err = sas.DeriveKey(groupKey, regID); err != nil {
						t.Fatal(err)
					}
				}
				var op *dps.OperationStatus
				if transport == "mqtt" {
					op = b.provisionMQTT(regID, key)
				} else {
					op = b.provisionHTTPS(regID, key)
				}
				checkAssigned(t, op, regID, "hub.berth.test")
				// The service API shows the registration record.
				var reg dps.RegistrationState
				resp, data := b.do("GET", "/registrations/"+regID+"?api-version=2021-10-01", b.serviceToken(), nil, nil, &reg)
				if resp.StatusCode != 200 || reg.DeviceID != regID || reg.AssignedHub != "hub.berth.test" {
					t.Fatalf("registration record: %d %s", resp.StatusCode, data)
				}
			})
		}
	}
}

func TestWrongKeyIsRefusedOnBothTransports(t *testing.T) {
	b := start(t, t.TempDir())
	b.createEnrollment("victim")
	wrong := dps.NewKey()
	d := b.mqttConnect("victim", b.deviceToken("victim", wrong))
	st, _, body := d.request("$dps/registrations/PUT/iotdps-register/?$rid=abc", "abc", "{}")
	var e struct {
		ErrorCode    int    `json:"errorCode"`
		TrackingID   string `json:"trackingId"`
		TimestampUTC string `json:"timestampUtc"`
	}
	if err := json.Unmarshal(body, &e); err != nil || st != 401 || e.ErrorCode != 401002 || e.TrackingID == "" || e.TimestampUTC == "" {
		t.Fatalf("mqtt wrong key: %d %s", st, body)
	}
	resp, data := b.do("PUT", "/"+b.info.IDScope+"/registrations/victim/register?api-version=2021-06-01", b.deviceToken("victim", wrong), "{}", nil, &e)
	if resp.StatusCode != 401 || e.ErrorCode != 401002 {
		t.Fatalf("https wrong key: %d %s", resp.StatusCode, data)
	}
	resp, data = b.do("GET", "/registrations/victim?api-version=2021-10-01", b.serviceToken(), nil, nil, nil)
	if resp.StatusCode != 404 {
		t.Fatalf("a refused device left a registration record: %d %s", resp.StatusCode, data)
	}
}

// Everything survives a restart: the ID scope and keys, the enrollments,
// the registration, and an operation id handed out before the restart.
func TestSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	b := start(t, dir)
	key := b.createEnrollment("durable")
	tok := b.deviceToken("durable", key)
	var op dps.OperationStatus
	base := "/" + b.info.IDScope + "/registrations/durable"
	resp, data := b.do("PUT", base+"/register?api-version=2021-06-01", tok, "{}", nil, &op)
	if resp.StatusCode != 202 {
		t.Fatalf("register: %d %s", resp.StatusCode, data)
	}
	scope, connStr := b.info.IDScope, b.info.ServiceConnectionString
	b.stop()

	b = start(t, dir)
	if b.info.IDScope != scope || b.info.ServiceConnectionString != connStr {
		t.Fatalf("identity changed across restart: %s/%s vs %s/%s", scope, connStr, b.info.IDScope, b.info.ServiceConnectionString)
	}
	var poll dps.OperationStatus
	resp, data = b.do("GET", base+"/operations/"+op.OperationID+"?api-version=2021-06-01", tok, nil, nil, &poll)
	if resp.StatusCode != 200 {
		t.Fatalf("poll after restart: %d %s", resp.StatusCode, data)
	}
	checkAssigned(t, &poll, "durable", "hub.berth.test")
	// And the device provisions again over MQTT, consistently.
	again := b.provisionMQTT("durable", key)
	if again.RegistrationState.DeviceID != "durable" || !again.RegistrationState.CreatedDateTimeUTC.Equal(poll.RegistrationState.CreatedDateTimeUTC.Time) {
		t.Fatalf("re-registration after restart: %+v", again.RegistrationState)
	}
}

// hubToken is a device token for the hub as the Node SDK builds it: sr
// URL-encoded, no skn.
func hubToken(t *testing.T, hubName, deviceID, key string) string {
	t.Helper()
	tok, err := sas.SignEncoded(hubName+"/devices/"+deviceID, key, "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A device provisioned through DPS sends telemetry to its hub over HTTPS
// with the key DPS gave it; the message is in the stream with its
// properties, and still there after a restart.
func TestProvisionedDeviceSendsTelemetryOverHTTPS(t *testing.T) {
	dir := t.TempDir()
	b := start(t, dir)
	groupKey := b.createGroup("sensors")
	key, err := sas.DeriveKey(groupKey, "thermo-1")
	if err != nil {
		t.Fatal(err)
	}
	op := b.provisionHTTPS("thermo-1", key)
	hubName, deviceID := op.RegistrationState.AssignedHub, op.RegistrationState.DeviceID

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := b.srv.Stream().Subscribe(ctx, stream.SubscribeOptions{DeviceID: deviceID})
	if err != nil {
		t.Fatal(err)
	}
	resp, data := b.do("POST", "/devices/"+deviceID+"/messages/events?api-version=2021-04-12", hubToken(t, hubName, deviceID, key),
		`{"temperature":21.5}`, map[string]string{"iothub-app-unit": "celsius", "iothub-messageid": "m-1", "iothub-contenttype": "application/json"}, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("send event: %d %s", resp.StatusCode, data)
	}
	// Another device's token cannot send as this device.
	other, _ := sas.DeriveKey(groupKey, "thermo-2")
	b.provisionHTTPS("thermo-2", other)
	resp, data = b.do("POST", "/devices/"+deviceID+"/messages/events", hubToken(t, hubName, "thermo-2", other), `{}`, nil, nil)
	if resp.StatusCode != 401 || resp.Header.Get("iothub-errorcode") != "IotHubUnauthorizedAccess" {
		t.Fatalf("foreign token: %d %s", resp.StatusCode, data)
	}
	var m *hub.Message
	select {
	case m = <-msgs:
	case <-ctx.Done():
		t.Fatal("message not in the stream")
	}
	mid, _ := m.SystemValue(hub.PropMessageID)
	conn, _ := m.SystemValue(hub.PropConnDeviceID)
	if string(m.Body) != `{"temperature":21.5}` || mid != "m-1" || conn != deviceID || len(m.App) != 1 || m.App[0] != (hub.Property{Name: "unit", Value: "celsius"}) {
		t.Fatalf("stream message: %+v", m)
	}
	select {
	case extra := <-msgs:
		t.Fatalf("a refused send reached the stream: %+v", extra)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	b.stop()

	b = start(t, dir)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	replay, err := b.srv.Stream().Subscribe(ctx2, stream.SubscribeOptions{DeviceID: deviceID, StartTime: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-replay:
		if string(m.Body) != `{"temperature":21.5}` {
			t.Fatalf("after restart: %+v", m)
		}
	case <-ctx2.Done():
		t.Fatal("telemetry lost across restart")
	}
}

// The same over MQTT: the device provisions over MQTT, connects to its hub
// with the Node SDK's username and token shape, publishes QoS 1 telemetry
// with a property bag, and shows as Connected in the registry meanwhile.
func TestProvisionedDeviceSendsTelemetryOverMQTT(t *testing.T) {
	b := start(t, t.TempDir())
	key := b.createEnrollment("mqtt-thermo")
	op := b.provisionMQTT("mqtt-thermo", key)
	hubName, deviceID := op.RegistrationState.AssignedHub, op.RegistrationState.DeviceID

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := b.srv.Stream().Subscribe(ctx, stream.SubscribeOptions{DeviceID: deviceID})
	if err != nil {
		t.Fatal(err)
	}
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + b.info.MQTTAddress).
		SetClientID(deviceID).
		SetUsername(hubName + "/" + deviceID + "/?api-version=2021-04-12&DeviceClientType=berth-e2e").
		SetPassword(hubToken(t, hubName, deviceID, key)).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"})
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("hub connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	topic := "devices/" + deviceID + "/messages/events/%24.mid=m-7&%24.ct=application%2Fjson&%24.ce=utf-8&unit=celsius"
	if tok := c.Publish(topic, 1, false, `{"t":19}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case m := <-msgs:
		mid, _ := m.SystemValue(hub.PropMessageID)
		ct, _ := m.SystemValue(hub.PropContentType)
		if string(m.Body) != `{"t":19}` || mid != "m-7" || ct != "application/json" || len(m.App) != 1 || m.App[0] != (hub.Property{Name: "unit", Value: "celsius"}) {
			t.Fatalf("stream message %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("MQTT telemetry not in the stream")
	}
	var dev struct {
		ConnectionState string `json:"connectionState"`
	}
	hubTok := b.info.HubConnectionString
	parts := map[string]string{}
	for _, p := range strings.Split(hubTok, ";") {
		k, v, _ := strings.Cut(p, "=")
		parts[k] = v
	}
	hubKey := hubTok[strings.Index(hubTok, "SharedAccessKey=")+len("SharedAccessKey="):]
	svc, err := sas.Sign(parts["HostName"], hubKey, parts["SharedAccessKeyName"], time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	resp, data := b.do("GET", "/devices/"+deviceID+"?api-version=2021-04-12", svc, nil, nil, &dev)
	if resp.StatusCode != 200 || dev.ConnectionState != "Connected" {
		t.Fatalf("registry while connected: %d %s", resp.StatusCode, data)
	}
}
