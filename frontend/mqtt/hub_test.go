package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

const (
	deviceAuthMethod = `{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`
	hubAuthMethod    = `{"scope":"hub","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`
	// testEnqueued is testNow as iothub-enqueuedtime.
	testEnqueued = "2023-11-14T21:56:40.000Z"
)

// stamps are the system properties the hub adds to a message of d.
func stamps(d *hub.Device, authMethod string) []string {
	return []string{
		"iothub-connection-device-id=" + d.DeviceID,
		"iothub-connection-auth-generation-id=" + d.GenerationID,
		"iothub-connection-auth-method=" + authMethod,
		"iothub-enqueuedtime=" + testEnqueued,
		"iothub-message-source=Telemetry",
	}
}

// TestHubTelemetryPaho is the SDK flow over TLS with paho: a Node-style
// token and username (with a raw model-id), the subscriptions the SDKs
// make on open, then telemetry at QoS 1 and 0.
func TestHubTelemetryPaho(t *testing.T) {
	f := newHubFixture(t, nil)
	d := f.device(t, "dev-1", "")
	username := hubName + "/dev-1/?api-version=2021-04-12&model-id=dtmi:com:example:Thermostat;1&DeviceClientType=" + nodeClientType
	dev, err := f.ts.connectHubPaho(t, "dev-1", username, validToken(t, "dev-1"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	filters := map[string]byte{
		"devices/dev-1/messages/devicebound/#":    1,
		"$iothub/twin/res/#":                      0,
		"$iothub/twin/PATCH/properties/desired/#": 0,
		"$iothub/methods/POST/#":                  2,
	}
	st := dev.c.SubscribeMultiple(filters, func(paho.Client, paho.Message) {})
	if !st.WaitTimeout(5*time.Second) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	for filter, code := range st.(*paho.SubscribeToken).Result() {
		if want := min(filters[filter], 1); code != want {
			t.Errorf("filter %q granted %#x; want %d", filter, code, want)
		}
	}

	// Node's sendEvent: QoS 1, system properties encoded as %24.
	topic := "devices/dev-1/messages/events/%24.mid=msg-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.sub=thermostat1&temp=21&unit=C"
	pt := dev.c.Publish(topic, 1, false, `{"temperature":21}`)
	if !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("publish: %v", pt.Error())
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages appended after PUBACK; want 1", len(msgs))
	}
	m := msgs[0]
	if m.Hub != hubName || m.DeviceID != "dev-1" || m.ModuleID != "" || !m.Enqueued.Equal(testNow) || m.Enqueued.Location() != time.UTC {
		t.Errorf("message hub %q device %q module %q enqueued %v", m.Hub, m.DeviceID, m.ModuleID, m.Enqueued)
	}
	if string(m.Body) != `{"temperature":21}` {
		t.Errorf("body %q", m.Body)
	}
	wantSys := append([]string{
		"message-id=msg-1", "correlation-id=corr-1", "content-type=application/json", "content-encoding=utf-8", "dt-subject=thermostat1",
	}, stamps(d, deviceAuthMethod)...)
	wantSys = append(wantSys, "dt-dataschema=dtmi:com:example:Thermostat;1")
	if got := propsOf(m.System); !reflect.DeepEqual(got, wantSys) {
		t.Errorf("system properties\n got %q\nwant %q", got, wantSys)
	}
	if got, want := propsOf(m.App), []string{"temp=21", "unit=C"}; !reflect.DeepEqual(got, want) {
		t.Errorf("application properties %q; want %q", got, want)
	}

	// QoS 0: no PUBACK, appended all the same.
	if pt := dev.c.Publish("devices/dev-1/messages/events/", 0, false, "q0"); !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("QoS 0 publish: %v", pt.Error())
	}
	waitFor(t, "the QoS 0 message", func() bool { return len(f.sink.messages()) == 2 })
	if m := f.sink.messages()[1]; string(m.Body) != "q0" || len(m.App) != 0 {
		t.Errorf("QoS 0 message %q app %v", m.Body, m.App)
	}

	// RETAIN=1 is not retained but marked.
	if pt := dev.c.Publish("devices/dev-1/messages/events/a=1", 1, true, "r"); !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("retained publish: %v", pt.Error())
	}
	if got, want := propsOf(f.sink.messages()[2].App), []string{"a=1", "mqtt-retain=true"}; !reflect.DeepEqual(got, want) {
		t.Errorf("retained message app properties %q; want %q", got, want)
	}
}

// TestHubPubackAfterAppend: the PUBACK of a QoS 1 message is written only
// once Append returned nil; a failed Append closes the connection without
// one; PUBACKs of pipelined messages come in order, as the sink sees them.
func TestHubPubackAfterAppend(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")

	entered, release := f.sink.block()
	defer release()
	c.publish(1, 7, "devices/dev-1/messages/events/", []byte("one"))
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("Append not called")
	}
	pk, err := c.next(300 * time.Millisecond)
	if err == nil {
		t.Fatalf("got %s while Append was still running; want nothing", packetName(pk.FixedHeader.Type))
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("connection failed while Append was running: %v", err)
	}
	if n := len(f.sink.messages()); n != 0 {
		t.Fatalf("%d messages stored before Append returned", n)
	}
	release()
	c.expectPuback(7)
	if n := len(f.sink.messages()); n != 1 {
		t.Fatalf("%d messages stored after PUBACK; want 1", n)
	}

	// Pipelined: five publishes in one go, acknowledged in order.
	for i := range 5 {
		c.publish(1, uint16(10+i), "devices/dev-1/messages/events/n="+fmt.Sprint(i), []byte(fmt.Sprint(i)))
	}
	for i := range 5 {
		c.expectPuback(uint16(10 + i))
	}
	msgs := f.sink.messages()
	for i := range 5 {
		if got := string(msgs[1+i].Body); got != fmt.Sprint(i) {
			t.Errorf("message %d has body %q; want %d (order kept)", i, got, i)
		}
	}

	// A failed Append: no PUBACK, the connection closes, nothing stored.
	f.sink.failWith(errors.New("stream: JetStream unavailable"))
	c.publish(1, 20, "devices/dev-1/messages/events/", []byte("lost"))
	c.expectClosed(5 * time.Second)
	if n := len(f.sink.messages()); n != 6 {
		t.Errorf("%d messages stored; want 6", n)
	}
	if !strings.Contains(f.ts.logs.String(), "JetStream unavailable") {
		t.Error("the sink error is not logged")
	}
}

// TestHubConnect: CONNECT authentication. Every identity or credential
// failure is CONNACK 5 followed by a close.
func TestHubConnect(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.device(t, "dev-off", hub.StatusDisabled)
	hour := testNow.Add(time.Hour)
	rawSr, err := sas.Sign(hubName+"/devices/dev-1", indivKey, "", hour)
	if err != nil {
		t.Fatal(err)
	}
	lowerSr, err := sas.Sign(strings.ReplaceAll(hubName+"/devices/dev-1", "/", "%2f"), indivKey, "", hour)
	if err != nil {
		t.Fatal(err)
	}
	valid := validToken(t, "dev-1")
	user := hubUsername("dev-1")
	tests := []struct {
		name     string
		clientID string
		username string
		password string
		want     byte
	}{
		{"Node token (sr URL-encoded)", "dev-1", user, valid, 0},
		{"raw sr token", "dev-1", user, rawSr, 0},
		{"lower-case %2f sr token", "dev-1", user, lowerSr, 0},
		{"secondary key", "dev-1", user, deviceToken(t, "dev-1", secondaryKey, hour), 0},
		{"policy with DeviceConnect", "dev-1", user, f.policyToken(t, "dev-1", "device", hour), 0},
		{"iothubowner policy", "dev-1", user, f.policyToken(t, "dev-1", hub.OwnerPolicy, hour), 0},
		{"hub name in another case", "dev-1", strings.ToUpper(hubName) + "/dev-1/?api-version=2021-04-12", valid, 0},
		{"hub name with port", "dev-1", hubName + ":8883/dev-1/?api-version=2021-04-12", valid, 0},
		{"bare username", "dev-1", hubName + "/dev-1", valid, 0},
		{"legacy username", "dev-1", hubName + "/dev-1/api-version=2016-11-14&DeviceClientType=azure-iot-device%2F1.1.0", valid, 0},
		{"no api-version", "dev-1", hubName + "/dev-1/?DeviceClientType=mosquitto", valid, 0},

		{"wrong key", "dev-1", user, deviceToken(t, "dev-1", otherKey, hour), 5},
		{"expired token", "dev-1", user, deviceToken(t, "dev-1", indivKey, testNow.Add(-time.Hour)), 5},
		{"disabled device", "dev-off", hubUsername("dev-off"), validToken(t, "dev-off"), 5},
		{"unknown device", "ghost", hubUsername("ghost"), validToken(t, "ghost"), 5},
		{"token for another device", "dev-1", user, validToken(t, "dev-off"), 5},
		{"ClientId differs", "mosq-1234", user, valid, 5},
		{"ClientId differs in case", "DEV-1", user, valid, 5},
		{"empty ClientId", "", user, valid, 5},
		{"service policy", "dev-1", user, f.policyToken(t, "dev-1", "service", hour), 5},
		{"registryRead policy", "dev-1", user, f.policyToken(t, "dev-1", "registryRead", hour), 5},
		{"no password", "dev-1", user, "", 5},
		{"not a token", "dev-1", user, "hunter2", 5},
		{"unknown module", "dev-1/mod-1", hubName + "/dev-1/mod-1/?api-version=2021-04-12", valid, 5},
		{"another hub", "dev-1", "other.berth.test/dev-1/?api-version=2021-04-12", valid, 5},
		{"neither DPS nor hub", "dev-1", "just-a-name", valid, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.ts.dialRaw(t)
			c.expectOutcome(c.connectHub(tt.clientID, tt.username, tt.password, 0), tt.want)
		})
	}
	logs := f.ts.logs.String()
	for _, s := range []string{"the username names a hub this berth does not serve", "ClientId differs", "device authentication failed"} {
		if !strings.Contains(logs, s) {
			t.Errorf("no log line says %q", s)
		}
	}
}

// TestHubPolicyTokenStamp: a policy-token connection is stamped with the
// hub-scoped auth method.
func TestHubPolicyTokenStamp(t *testing.T) {
	f := newHubFixture(t, nil)
	d := f.device(t, "dev-1", "")
	c := f.ts.dialRaw(t)
	if rc := c.connectHub("dev-1", hubUsername("dev-1"), f.policyToken(t, "dev-1", "device", testNow.Add(time.Hour)), 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	c.publish(1, 1, "devices/dev-1/messages/events/", []byte("x"))
	c.expectPuback(1)
	if got, want := propsOf(f.sink.messages()[0].System), stamps(d, hubAuthMethod); !reflect.DeepEqual(got, want) {
		t.Errorf("system properties %q; want %q", got, want)
	}
}

// TestHubConnectServerUnavailable: when the registry cannot answer, the
// CONNACK is 3, not 5 (the device's credentials were not refused).
func TestHubConnectServerUnavailable(t *testing.T) {
	t.Run("store down", func(t *testing.T) {
		f := newHubFixture(t, nil)
		f.device(t, "dev-1", "")
		f.st.fail.Store(true)
		c := f.ts.dialRaw(t)
		if rc := c.connectHub("dev-1", hubUsername("dev-1"), validToken(t, "dev-1"), 0); rc != 3 {
			t.Fatalf("CONNACK %d; want 3", rc)
		}
		c.expectClosed(5 * time.Second)
		if !strings.Contains(f.ts.logs.String(), "db-7") {
			t.Error("the store error is not logged")
		}
	})
	t.Run("no registry", func(t *testing.T) {
		ts := startServer(t, Config{Hub: &HubConfig{Name: hubName}}, nil)
		c := ts.dialRaw(t)
		if rc := c.connectHub("dev-1", hubUsername("dev-1"), validToken(t, "dev-1"), 0); rc != 3 {
			t.Fatalf("CONNACK %d; want 3", rc)
		}
		c.expectClosed(5 * time.Second)
	})
}

// TestHubRejectedPublishes: what cannot be accepted closes the connection
// without PUBACK, and nothing reaches the sink.
func TestHubRejectedPublishes(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.device(t, "dev-2", "")
	tests := []struct {
		name  string
		qos   byte
		topic string
		body  []byte
	}{
		{"another device's topic", 1, "devices/dev-2/messages/events/", []byte("x")},
		{"another device's topic at QoS 0", 0, "devices/dev-2/messages/events/", []byte("x")},
		{"device ID in another case", 1, "devices/DEV-1/messages/events/", []byte("x")},
		{"a module's topic", 1, "devices/dev-1/modules/m1/messages/events/", []byte("x")},
		{"body over 256 KB", 1, "devices/dev-1/messages/events/", make([]byte, hub.MaxMessageSize+1)},
		{"properties push it over 256 KB", 1, "devices/dev-1/messages/events/ab=c", make([]byte, hub.MaxMessageSize-2)},
		{"system property values count", 0, "devices/dev-1/messages/events/%24.mid=12", make([]byte, hub.MaxMessageSize-1)},
		{"bad escape in property bag", 1, "devices/dev-1/messages/events/%zz=1", []byte("x")},
		{"property without a name", 1, "devices/dev-1/messages/events/a=1&=2", []byte("x")},
		{"property not UTF-8", 1, "devices/dev-1/messages/events/%24.mid=%C3%28", []byte("x")},
		{"QoS 2", 2, "devices/dev-1/messages/events/", []byte("x")},
		{"wildcard in topic", 0, "devices/dev-1/messages/events/a=+", []byte("x")},
		{"unknown twin topic without rid", 0, "$iothub/twin/GET", nil},
		{"twin response topic", 0, "$iothub/twin/res/200/", nil},
		{"method response without status", 1, "$iothub/methods/res/?$rid=1", []byte(`{}`)},
		{"method response with a bad status", 0, "$iothub/methods/res/ok/?$rid=1", []byte(`{}`)},
		{"method request topic", 0, "$iothub/methods/POST/reboot/?$rid=1", []byte(`{}`)},
		{"desired topic", 0, "$iothub/twin/PATCH/properties/desired/?$version=1", []byte(`{}`)},
		{"DPS topic", 1, "$dps/registrations/PUT/iotdps-register/?$rid=1", nil},
		{"events with a suffix", 1, "devices/dev-1/messages/eventsX", []byte("x")},
		{"cloud-to-device topic", 1, "devices/dev-1/messages/devicebound/", []byte("x")},
		{"unknown topic", 1, "telemetry", []byte("x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.dialHub(t, "dev-1")
			c.publish(tt.qos, 1, tt.topic, tt.body)
			c.expectClosed(5 * time.Second)
		})
	}
	if n := f.sink.calls.Load(); n != 0 {
		t.Errorf("the sink was called %d times", n)
	}

	// At the limit exactly, the message is accepted.
	c := f.dialHub(t, "dev-1")
	c.publish(1, 1, "devices/dev-1/messages/events/", make([]byte, hub.MaxMessageSize))
	c.expectPuback(1)
	c.publish(1, 2, "devices/dev-1/messages/events/ab=c", make([]byte, hub.MaxMessageSize-3))
	c.expectPuback(2)
	if n := len(f.sink.messages()); n != 2 {
		t.Errorf("%d messages at the limit stored; want 2", n)
	}
}

// TestHubTopicForms: every topic form the SDKs send, and what the device
// set in it.
func TestHubTopicForms(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.device(t, "Device_6", "")
	tests := []struct {
		name   string
		device string
		topic  string
		system []string
		app    []string
	}{
		{"no slash", "dev-1", "devices/dev-1/messages/events", nil, nil},
		{"slash", "dev-1", "devices/dev-1/messages/events/", nil, nil},
		{"bag", "dev-1", "devices/dev-1/messages/events/a=1", nil, []string{"a=1"}},
		{"bag and slash (C#)", "dev-1", "devices/dev-1/messages/events/a=1/", nil, []string{"a=1"}},
		{"IoT Edge T-23", "Device_6", "devices/Device_6/messages/events/%24.cid=Corrid1&%24.mid=MessageId1&Foo=Bar&Prop2=Value2&Prop3=Value3/",
			[]string{"correlation-id=Corrid1", "message-id=MessageId1"}, []string{"Foo=Bar", "Prop2=Value2", "Prop3=Value3"}},
		{"C SDK unencoded value", "dev-1", "devices/dev-1/messages/events/%24.ct=application/json&%24.ce=utf-8",
			[]string{"content-type=application/json", "content-encoding=utf-8"}, nil},
		{"raw $ keys", "dev-1", "devices/dev-1/messages/events/$.ct=application%2Fjson&$.ce=utf-8",
			[]string{"content-type=application/json", "content-encoding=utf-8"}, nil},
		{"Node T-19", "dev-1", "devices/dev-1/messages/events/key1=value1&key2=value2&key%24=value%24&%24.sub=abcd%24",
			[]string{"dt-subject=abcd$"}, []string{"key1=value1", "key2=value2", "key$=value$"}},
		{"Node output event T-20", "dev-1", "devices/dev-1/messages/events/%24.on=fakeOutputName/", []string{"iothub-outputname=fakeOutputName"}, nil},
		{"null values", "dev-1", "devices/dev-1/messages/events/%24.cid&flag&&", []string{"correlation-id="}, []string{"flag="}},
		{"schema", "dev-1", "devices/dev-1/messages/events/%24.schema=v1", nil, []string{"iothub-message-schema=v1"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.dialHub(t, tt.device)
			c.publish(1, 1, tt.topic, []byte("b"))
			c.expectPuback(1)
			msgs := f.sink.messages()
			if len(msgs) != i+1 {
				t.Fatalf("%d messages; want %d", len(msgs), i+1)
			}
			m := msgs[i]
			// The device's system properties come before the stamps.
			sys := propsOf(m.System)
			sys = sys[:len(sys)-len(stamps(&hub.Device{}, ""))]
			app := propsOf(m.App)
			if fmt.Sprint(sys) != fmt.Sprint(tt.system) || fmt.Sprint(app) != fmt.Sprint(tt.app) {
				t.Errorf("device-set system %q app %q; want %q %q", sys, app, tt.system, tt.app)
			}
			if m.DeviceID != tt.device {
				t.Errorf("device %q", m.DeviceID)
			}
		})
	}
}

// TestHubDuplicateConnection: a new connection for the device closes the
// previous one, and the old one's end does not unregister the new one.
func TestHubDuplicateConnection(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.device(t, "dev-2", "")
	first := f.dialHub(t, "dev-1")
	other := f.dialHub(t, "dev-2")
	second := f.dialHub(t, "dev-1")
	first.expectClosed(5 * time.Second)
	waitFor(t, "the first connection to end", func() bool { return f.ts.srv.ConnCount() == 2 })
	second.expectPing()
	other.expectPing()
	second.publish(1, 1, "devices/dev-1/messages/events/", []byte("x"))
	second.expectPuback(1)
	// second is still the device's registered session: a third connection
	// closes it.
	third := f.dialHub(t, "dev-1")
	second.expectClosed(5 * time.Second)
	third.expectPing()
	other.expectPing()
	if !strings.Contains(f.ts.logs.String(), "closing the device's connection: a newer connection of the device authenticated") {
		t.Error("the takeover is not logged")
	}
}

// TestHubTokenExpiry: the server closes the connection when the token
// (plus the 5 minutes of clock skew the registry allows) expires.
func TestHubTokenExpiry(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	// Identity.Expires = se + MaxClockSkew = testNow + 1 s.
	tok := deviceToken(t, "dev-1", indivKey, testNow.Add(time.Second-sas.MaxClockSkew))
	c := f.ts.dialRaw(t)
	if rc := c.connectHub("dev-1", hubUsername("dev-1"), tok, 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	f.expectExpiry(c, "device token expired")

	// A token valid for an hour keeps the connection open past that.
	c2 := f.dialHub(t, "dev-1")
	time.Sleep(1200 * time.Millisecond)
	c2.expectPing()
}

// TestHubSubscribe: the SDK filters are granted at QoS ≤ 1; anything else
// closes the connection without a SUBACK.
func TestHubSubscribe(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	for i, tt := range []struct {
		filter string
		qos    byte
		want   byte
	}{
		{"devices/dev-1/messages/devicebound/#", 1, 1},
		{"devices/+/messages/devicebound/#", 2, 1},
		{"$iothub/twin/res/#", 0, 0},
		{"$iothub/twin/PATCH/properties/desired/#", 0, 0},
		{"$iothub/methods/POST/#", 1, 1},
	} {
		if got := c.subscribe(uint16(i+1), tt.qos, tt.filter); !bytes.Equal(got, []byte{tt.want}) {
			t.Errorf("SUBSCRIBE %q at QoS %d granted %v; want %d", tt.filter, tt.qos, got, tt.want)
		}
	}
	// All five in one SUBSCRIBE, as the C SDK does.
	if got := c.subscribe(9, 1, "devices/dev-1/messages/devicebound/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"); !bytes.Equal(got, []byte{1, 1, 1, 1}) {
		t.Errorf("SUBACK %v", got)
	}
	unsub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 10, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$iothub/methods/POST/#"}, {Filter: "not/subscribed"}}}
	c.send(unsub.UnsubscribeEncode)
	if ack := c.read(); ack.FixedHeader.Type != packets.Unsuback || ack.PacketID != 10 {
		t.Fatalf("got %s; want UNSUBACK", packetName(ack.FixedHeader.Type))
	}
	c.expectPing()

	for _, filters := range [][]string{
		{"devices/dev-2/messages/devicebound/#"},
		{"devices/dev-1/modules/m1/#"},
		{"$iothub/#"},
		{"devices/dev-1/messages/events/"},
		{"$iothub/twin/res/#", "$iothub/#"},
	} {
		t.Run(strings.Join(filters, ","), func(t *testing.T) {
			c := f.dialHub(t, "dev-1")
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4}
			for _, fl := range filters {
				pk.Filters = append(pk.Filters, packets.Subscription{Filter: fl, Qos: 1})
			}
			c.send(pk.SubscribeEncode)
			c.expectClosed(5 * time.Second)
		})
	}
}

// TestHubWill: a will on the device's telemetry topic is published as
// telemetry with iothub-MessageType=Will when the connection ends without
// DISCONNECT.
func TestHubWill(t *testing.T) {
	const willTopic = "devices/dev-1/messages/events/%24.ct=text%2Fplain&reason=gone"
	connectWill := func(t *testing.T, f *hubFixture, topic string, retain bool) *rawClient {
		t.Helper()
		c := f.ts.dialRaw(t)
		pk := connectPacket("dev-1", hubUsername("dev-1"), validToken(t, "dev-1"), 0)
		pk.Connect.Clean = false
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, topic, []byte("bye")
		pk.Connect.WillQos, pk.Connect.WillRetain = 1, retain
		if rc := c.connectWith(pk); rc != 0 {
			t.Fatalf("CONNACK %d", rc)
		}
		return c
	}
	checkWill := func(t *testing.T, f *hubFixture, d *hub.Device, retain bool) {
		t.Helper()
		waitFor(t, "the will", func() bool { return len(f.sink.messages()) == 1 })
		m := f.sink.messages()[0]
		wantApp := []string{"reason=gone"}
		if retain {
			wantApp = append(wantApp, "mqtt-retain=true")
		}
		wantApp = append(wantApp, "iothub-MessageType=Will")
		if got := propsOf(m.App); !reflect.DeepEqual(got, wantApp) {
			t.Errorf("will app properties %q; want %q", got, wantApp)
		}
		if got, want := propsOf(m.System), append([]string{"content-type=text/plain"}, stamps(d, deviceAuthMethod)...); !reflect.DeepEqual(got, want) {
			t.Errorf("will system properties %q; want %q", got, want)
		}
		if string(m.Body) != "bye" || m.DeviceID != "dev-1" {
			t.Errorf("will body %q device %q", m.Body, m.DeviceID)
		}
	}

	t.Run("network drop", func(t *testing.T) {
		f := newHubFixture(t, nil)
		d := f.device(t, "dev-1", "")
		c := connectWill(t, f, willTopic, true)
		c.expectPing()
		c.nc.Close()
		checkWill(t, f, d, true)
	})
	t.Run("closed for a violation", func(t *testing.T) {
		f := newHubFixture(t, nil)
		d := f.device(t, "dev-1", "")
		c := connectWill(t, f, willTopic+"/", false)
		c.publish(1, 1, "devices/dev-2/messages/events/", []byte("x"))
		c.expectClosed(5 * time.Second)
		checkWill(t, f, d, false)
	})
	t.Run("taken over", func(t *testing.T) {
		f := newHubFixture(t, nil)
		d := f.device(t, "dev-1", "")
		c := connectWill(t, f, willTopic, false)
		f.dialHub(t, "dev-1")
		c.expectClosed(5 * time.Second)
		checkWill(t, f, d, false)
	})
	t.Run("DISCONNECT", func(t *testing.T) {
		f := newHubFixture(t, nil)
		f.device(t, "dev-1", "")
		c := connectWill(t, f, willTopic, false)
		disc := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
		c.send(disc.DisconnectEncode)
		c.expectClosed(5 * time.Second)
		waitFor(t, "the connection to end", func() bool { return f.ts.srv.ConnCount() == 0 })
		if n := f.sink.calls.Load(); n != 0 {
			t.Errorf("%d appends after DISCONNECT; want none", n)
		}
	})
	for _, tt := range []struct{ name, topic string }{
		{"another device's topic", "devices/dev-2/messages/events/"},
		{"not telemetry", "$iothub/twin/GET/?$rid=1"},
		{"bad property bag", "devices/dev-1/messages/events/%zz"},
	} {
		t.Run("will ignored: "+tt.name, func(t *testing.T) {
			f := newHubFixture(t, nil)
			f.device(t, "dev-1", "")
			c := connectWill(t, f, tt.topic, false)
			c.nc.Close()
			waitFor(t, "the connection to end", func() bool { return f.ts.srv.ConnCount() == 0 })
			if n := f.sink.calls.Load(); n != 0 {
				t.Errorf("%d appends; want none", n)
			}
			if !strings.Contains(f.ts.logs.String(), "will message ignored") {
				t.Error("the ignored will is not logged")
			}
		})
	}
}

// TestHubKeepAlive: 1.5 × keep-alive of silence closes a hub session too.
func TestHubKeepAlive(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.ts.dialRaw(t)
	if rc := c.connectHub("dev-1", hubUsername("dev-1"), validToken(t, "dev-1"), 1); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	start := time.Now()
	c.expectClosed(5 * time.Second)
	if el := time.Since(start); el < 1400*time.Millisecond {
		t.Errorf("closed after %v of silence; want 1.5 s", el)
	}
}

// TestHubWithoutSink: telemetry closes the connection when the hub has no
// sink; the connection itself is accepted.
func TestHubWithoutSink(t *testing.T) {
	f := newHubFixture(t, func(cfg *Config) {
		svc := *cfg.Hub.Services
		svc.Telemetry = hub.NewTelemetry(nil, svc.Registry, nil)
		cfg.Hub.Services = &svc
	})
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	c.expectPing()
	c.publish(1, 1, "devices/dev-1/messages/events/", []byte("x"))
	c.expectClosed(5 * time.Second)
	// The reader logs the refusal as it returns, while the PUBACK writer
	// may already have closed the connection: the line can follow the
	// close by a moment.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(f.ts.logs.String(), "Telemetry is not enabled"); {
		if time.Now().After(deadline) {
			t.Fatal("not logged")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHubAndDPS: one listener serves both; DPS sessions are unchanged.
func TestHubAndDPS(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.device(t, "registrations", "")
	dps := f.ts.connectPaho(t, "dev-1", "")
	if r := dps.register("1", ""); r.status != 202 {
		t.Fatalf("DPS register: %s", r.topic)
	}
	c := f.dialHub(t, "dev-1")
	c.publish(1, 1, "devices/dev-1/messages/events/", []byte("x"))
	c.expectPuback(1)

	// A device called "registrations" on this hub is a hub session; the
	// same shape naming something else is a malformed DPS username.
	r := f.dialHub(t, "registrations")
	r.expectPing()
	m := f.ts.dialRaw(t)
	if rc := m.connectHub("registrations", scope+"/registrations/?api-version=1", validToken(t, "registrations"), 0); rc != 5 {
		t.Fatalf("CONNACK %d; want 5", rc)
	}
	if !strings.Contains(f.ts.logs.String(), "malformed DPS username") {
		t.Error("the malformed DPS username is not logged as such")
	}
}

// TestHubShutdownDuringAppend: Shutdown cancels an Append in flight; the
// message is not acknowledged.
func TestHubShutdownDuringAppend(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	entered, release := f.sink.block()
	defer release()
	c.publish(1, 1, "devices/dev-1/messages/events/", []byte("x"))
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	c.expectClosed(5 * time.Second)
	if n := len(f.sink.messages()); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}
