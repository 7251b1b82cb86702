package hubtest_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/hubtest"
	"github.com/berth-iot/berth/sas"
)

const wait = 10 * time.Second

// device is one device of the test server's hub, connecting over MQTT the
// way the Azure SDKs do.
type device struct {
	t    *testing.T
	srv  *hubtest.Server
	id   string
	key  string
	lost chan error
}

func newDevice(t *testing.T, srv *hubtest.Server, id string) *device {
	t.Helper()
	hc, err := hubclient.New(srv.HubConnectionString, hubclient.Options{CAFile: srv.CAFile, Address: srv.HTTPSAddr})
	if err != nil {
		t.Fatal(err)
	}
	d, err := hc.CreateDevice(context.Background(), &hub.Device{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	return &device{t: t, srv: srv, id: id, key: d.Authentication.SymmetricKey.PrimaryKey, lost: make(chan error, 1)}
}

// connect opens an MQTT connection and returns the client and CONNECT's
// error.
func (d *device) connect() (paho.Client, error) {
	d.t.Helper()
	tok, err := sas.Sign(d.srv.HubName+"/devices/"+d.id, d.key, "", time.Now().Add(time.Hour))
	if err != nil {
		d.t.Fatal(err)
	}
	tlsConf := d.srv.TLSConfig()
	tlsConf.ServerName = d.srv.HubName
	opts := paho.NewClientOptions().AddBroker("ssl://" + d.srv.MQTTAddr).SetClientID(d.id).
		SetUsername(d.srv.HubName + "/" + d.id + "/?api-version=2021-04-12").SetPassword(tok).
		SetTLSConfig(tlsConf).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(wait).SetConnectionLostHandler(func(_ paho.Client, err error) {
		select {
		case d.lost <- err:
		default:
		}
	})
	c := paho.NewClient(opts)
	ct := c.Connect()
	if !ct.WaitTimeout(wait) {
		d.t.Fatal("CONNECT: no answer")
	}
	if ct.Error() == nil {
		d.t.Cleanup(func() { c.Disconnect(0) })
	}
	return c, ct.Error()
}

func (d *device) mustConnect() paho.Client {
	d.t.Helper()
	c, err := d.connect()
	if err != nil {
		d.t.Fatalf("CONNECT: %v", err)
	}
	return c
}

// waitLost waits for the hub to close the connection.
func (d *device) waitLost() {
	d.t.Helper()
	select {
	case <-d.lost:
	case <-time.After(wait):
		d.t.Fatal("the hub did not close the connection")
	}
}

func TestRefuseConnections(t *testing.T) {
	srv := hubtest.NewServer(t, hubtest.RefuseConnections(1))
	d := newDevice(t, srv, "refused")
	_, err := d.connect()
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "unavailable") {
		t.Fatalf("first CONNECT: want CONNACK 3 (server unavailable), got %v", err)
	}
	d.mustConnect()
	// HTTPS device requests authenticate each time: refused alike.
	srv.RefuseConnections(1)
	if status := d.sendHTTPS(); status != http.StatusServiceUnavailable {
		t.Fatalf("HTTPS telemetry while refusing: %d, want 503", status)
	}
	if status := d.sendHTTPS(); status != http.StatusNoContent {
		t.Fatalf("HTTPS telemetry after: %d, want 204", status)
	}
	if n := srv.InjectedFaults(); n != 2 {
		t.Fatalf("InjectedFaults = %d, want 2", n)
	}
}

// sendHTTPS sends one telemetry message over HTTPS and returns the status.
func (d *device) sendHTTPS() int {
	d.t.Helper()
	tok, err := sas.Sign(d.srv.HubName+"/devices/"+d.id, d.key, "", time.Now().Add(time.Hour))
	if err != nil {
		d.t.Fatal(err)
	}
	tlsConf := d.srv.TLSConfig()
	tlsConf.ServerName = d.srv.HubName
	hc := &http.Client{Timeout: wait, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	req, err := http.NewRequest("POST", "https://"+d.srv.HTTPSAddr+"/devices/"+d.id+"/messages/events?api-version=2021-04-12", strings.NewReader("m"))
	if err != nil {
		d.t.Fatal(err)
	}
	req.Host = d.srv.HubName
	req.Header.Set("Authorization", tok)
	resp, err := hc.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestDelayConnections(t *testing.T) {
	srv := hubtest.NewServer(t, hubtest.DelayConnections(300*time.Millisecond))
	d := newDevice(t, srv, "slow")
	start := time.Now()
	d.mustConnect()
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("CONNECT took %s, want at least the 300ms delay", took)
	}
	srv.DelayConnections(0)
	start = time.Now()
	d.mustConnect()
	if took := time.Since(start); took >= 300*time.Millisecond {
		t.Fatalf("CONNECT without the delay took %s", took)
	}
}

func TestDropAfter(t *testing.T) {
	srv := hubtest.NewServer(t, hubtest.DropAfter(2))
	d := newDevice(t, srv, "dropped")
	c := d.mustConnect()
	topic := "devices/" + d.id + "/messages/events/"
	for i := range 2 {
		pt := c.Publish(topic, 1, false, "m")
		if !pt.WaitTimeout(wait) || pt.Error() != nil {
			t.Fatalf("message %d: no PUBACK (%v)", i+1, pt.Error())
		}
	}
	pt := c.Publish(topic, 1, false, "m")
	d.waitLost()
	if pt.WaitTimeout(100*time.Millisecond) && pt.Error() == nil {
		t.Fatal("message 3 was acknowledged; want the connection dropped without a PUBACK")
	}
	// A new connection gets its own count.
	c = d.mustConnect()
	if pt := c.Publish(topic, 1, false, "m"); !pt.WaitTimeout(wait) || pt.Error() != nil {
		t.Fatalf("after reconnecting: no PUBACK (%v)", pt.Error())
	}
}

func TestDelayTwin(t *testing.T) {
	srv := hubtest.NewServer(t, hubtest.DelayTwin(300*time.Millisecond))
	d := newDevice(t, srv, "twin")
	c := d.mustConnect()
	got := make(chan string, 1)
	if st := c.Subscribe("$iothub/twin/res/#", 0, func(_ paho.Client, m paho.Message) { got <- m.Topic() }); !st.WaitTimeout(wait) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	start := time.Now()
	c.Publish("$iothub/twin/GET/?$rid=1", 0, false, "")
	select {
	case topic := <-got:
		if !strings.HasPrefix(topic, "$iothub/twin/res/200/") {
			t.Fatalf("twin GET answered %s", topic)
		}
	case <-time.After(wait):
		t.Fatal("no twin answer")
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("twin GET answered in %s, want at least the 300ms delay", took)
	}
}

func TestDelayMethods(t *testing.T) {
	srv := hubtest.NewServer(t)
	d := newDevice(t, srv, "methods")
	c := d.mustConnect()
	// The device answers every method at once.
	if st := c.Subscribe("$iothub/methods/POST/#", 0, func(c paho.Client, m paho.Message) {
		_, rid, _ := strings.Cut(m.Topic(), "$rid=")
		c.Publish("$iothub/methods/res/200/?$rid="+rid, 0, false, `{"ok":true}`)
	}); !st.WaitTimeout(wait) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	hc, err := hubclient.New(srv.HubConnectionString, hubclient.Options{CAFile: srv.CAFile, Address: srv.HTTPSAddr})
	if err != nil {
		t.Fatal(err)
	}
	timeout := 5 // IoT Hub's least
	call := func() (time.Duration, error) {
		start := time.Now()
		_, err := hc.InvokeMethod(context.Background(), d.id, &hub.MethodRequest{MethodName: "reboot", ResponseTimeoutInSeconds: &timeout})
		return time.Since(start), err
	}
	srv.DelayMethods(300 * time.Millisecond)
	if took, err := call(); err != nil || took < 300*time.Millisecond {
		t.Fatalf("with a 300ms delay: answered in %s, %v", took, err)
	}
	if testing.Short() {
		return
	}
	// An answer later than the response timeout is the caller's 504.
	srv.DelayMethods(time.Duration(timeout)*time.Second + 500*time.Millisecond)
	var he *hubclient.Error
	if _, err := call(); !errors.As(err, &he) || he.Status != 504 {
		t.Fatalf("with a delay past the timeout: want 504, got %v", err)
	}
}

func TestExpireTokens(t *testing.T) {
	srv := hubtest.NewServer(t)
	d := newDevice(t, srv, "expiring")
	if srv.ExpireTokens(d.id) {
		t.Fatal("ExpireTokens of a device that is not connected reported a session")
	}
	d.mustConnect()
	if !srv.ExpireTokens(d.id) {
		t.Fatal("ExpireTokens found no session of the connected device")
	}
	d.waitLost()
	d.mustConnect() // the device comes back with a fresh token
}
