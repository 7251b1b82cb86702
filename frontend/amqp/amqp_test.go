package amqp

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/store"
)

func wantAMQPError(t *testing.T, err error, cond goamqp.ErrCond) {
	t.Helper()
	var ae *goamqp.Error
	var le *goamqp.LinkError
	var ce *goamqp.ConnError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &le) && le.RemoteErr != nil:
		ae = le.RemoteErr
	case errors.As(err, &ce) && ce.RemoteErr != nil:
		ae = ce.RemoteErr
	default:
		t.Fatalf("error %v (%T), want condition %s", err, err, cond)
	}
	if ae.Condition != cond {
		t.Fatalf("condition %s (%s), want %s", ae.Condition, ae.Description, cond)
	}
}

func TestCBSAndTelemetry(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	s := f.deviceConn(t, "d1")
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "/devices/d1/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	msg := &goamqp.Message{
		Properties: &goamqp.MessageProperties{MessageID: "m-1", CorrelationID: "c-1",
			ContentType: ptr("application/json"), ContentEncoding: ptr("utf-8")},
		ApplicationProperties: map[string]any{"run": "d2c"},
		Data:                  [][]byte{[]byte(`{"t":21.5}`)},
	}
	if err := snd.Send(ctx, msg, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages in the stream, want 1 (accepted only once durable)", len(msgs))
	}
	m := msgs[0]
	for name, want := range map[string]string{hub.PropMessageID: "m-1", hub.PropCorrelationID: "c-1",
		hub.PropContentType: "application/json", hub.PropContentEncoding: "utf-8", hub.PropConnDeviceID: "d1",
		hub.PropMessageSource: "Telemetry"} {
		if got, _ := m.SystemValue(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if len(m.App) != 1 || m.App[0] != (hub.Property{Name: "run", Value: "d2c"}) || string(m.Body) != `{"t":21.5}` {
		t.Errorf("app %v body %q", m.App, m.Body)
	}
	// A large message crosses several frames.
	big := bytes.Repeat([]byte("x"), 200*1024)
	if err := snd.Send(ctx, &goamqp.Message{Data: [][]byte{big}}, nil); err != nil {
		t.Fatalf("send 200 KB: %v", err)
	}
	if msgs := f.sink.messages(); len(msgs) != 2 || !bytes.Equal(msgs[1].Body, big) {
		t.Fatalf("large message not stored whole")
	}
	// Over the hub's 256 KB: rejected with message-size-exceeded.
	err = snd.Send(ctx, &goamqp.Message{Data: [][]byte{bytes.Repeat([]byte("x"), 300*1024)}}, nil)
	wantAMQPError(t, err, goamqp.ErrCondMessageSizeExceeded)
}

func TestCBSRefusals(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	f.device(t, "d2")
	s := session(t, f.dial(t, nil))
	aud := hubName + "%2Fdevices%2Fd1"
	bad := strings.Replace(deviceToken(t, "d1", time.Now().Add(time.Hour)), "sig=", "sig=A", 1)
	if code, _ := putToken(t, s, aud, bad); code != 401 {
		t.Errorf("bad signature: %d, want 401", code)
	}
	if code, _ := putToken(t, s, aud, deviceToken(t, "d1", time.Now().Add(-time.Hour))); code != 401 {
		t.Errorf("expired token: %d, want 401", code)
	}
	if code, _ := putToken(t, s, "other.example.net%2Fdevices%2Fd1", deviceToken(t, "d1", time.Now().Add(time.Hour))); code != 404 {
		t.Errorf("unknown hub: %d, want 404", code)
	}
	// No module m1, and a device's token is not a module's.
	if code, _ := putToken(t, s, hubName+"%2Fdevices%2Fd1%2Fmodules%2Fm1", deviceToken(t, "d1", time.Now().Add(time.Hour))); code != 401 {
		t.Errorf("module: %d, want 401", code)
	}
	if !strings.Contains(f.logs.String(), "reason=") {
		t.Error("refusals not logged with their reason")
	}
	// No token yet: a link is refused.
	ctx := ctxT(t)
	_, err := s.NewSender(ctx, "/devices/d1/messages/events", nil)
	wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	// With d1's token, d2's addresses stay closed.
	if code, desc := putToken(t, s, aud, deviceToken(t, "d1", time.Now().Add(time.Hour))); code != 200 {
		t.Fatalf("good token: %d %s", code, desc)
	}
	_, err = s.NewSender(ctx, "/devices/d2/messages/events", nil)
	wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	_, err = s.NewReceiver(ctx, "/devices/d2/messages/devicebound", nil)
	wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	// A device token does not open the service side.
	_, err = s.NewSender(ctx, "/messages/devicebound", nil)
	wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	if _, err := s.NewSender(ctx, "/devices/d1/messages/events", nil); err != nil {
		t.Fatalf("own address: %v", err)
	}
}

func TestTokenExpiryDetachesAndRenewalExtends(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	s := session(t, f.dial(t, nil))
	aud := hubName + "%2Fdevices%2Fd1"
	// Accepted until se plus the 5 minutes of clock skew.
	// se has whole seconds: the grant lasts 3 to 4 s.
	if code, desc := putToken(t, s, aud, deviceToken(t, "d1", time.Now().Add(-5*time.Minute+4*time.Second))); code != 200 {
		t.Fatalf("put-token: %d %s", code, desc)
	}
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "/devices/d1/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Renewed before it runs out: the link lives on past the first expiry.
	time.Sleep(time.Second)
	renewed := time.Now()
	if code, desc := putToken(t, s, aud, deviceToken(t, "d1", renewed.Add(-5*time.Minute+8*time.Second))); code != 200 {
		t.Fatalf("renewal: %d %s", code, desc)
	}
	// Past the first token's end (at most 4 s after it was given).
	time.Sleep(time.Until(renewed.Add(3500 * time.Millisecond)))
	if err := snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte("a")}}, nil); err != nil {
		t.Fatalf("send after renewal: %v", err)
	}
	time.Sleep(time.Until(renewed.Add(8500 * time.Millisecond)))
	err = snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte("b")}}, nil)
	wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
}

func TestRevocationClosesConnection(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	s := f.deviceConn(t, "d1")
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "/devices/d1/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.svc.Registry.Get(ctx, hubName, "d1")
	if err != nil {
		t.Fatal(err)
	}
	d.Status = hub.StatusDisabled
	if _, err := f.svc.Registry.Update(ctx, hubName, d, "*"); err != nil {
		t.Fatal(err)
	}
	err = snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte("a")}}, nil)
	if err == nil {
		t.Fatal("send on a revoked connection succeeded")
	}
	// A new token for the disabled device is refused at once.
	s2 := session(t, f.dial(t, nil))
	if code, _ := putToken(t, s2, hubName+"%2Fdevices%2Fd1", deviceToken(t, "d1", time.Now().Add(time.Hour))); code != 401 {
		t.Errorf("disabled device: %d, want 401", code)
	}
}

func TestC2DSettlement(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	ctx := ctxT(t)
	for _, id := range []string{"complete", "abandon", "reject"} {
		if _, err := f.svc.CloudToDevice.Send(ctx, hubName, "d1", &hub.CloudMessage{MessageID: id, Ack: "full",
			App: []hub.Property{{Name: "k", Value: id}}, Body: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	s := f.deviceConn(t, "d1")
	rcv, err := s.NewReceiver(ctx, "/devices/d1/messages/devicebound", &goamqp.ReceiverOptions{Credit: 1})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rcv.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Properties.MessageID != "complete" || m.ApplicationProperties["iothub-ack"] != "full" || m.ApplicationProperties["k"] != "complete" {
		t.Fatalf("first message %+v %v", m.Properties, m.ApplicationProperties)
	}
	if err := rcv.AcceptMessage(ctx, m); err != nil {
		t.Fatal(err)
	}
	m, err = rcv.Receive(ctx, nil)
	if err != nil || m.Properties.MessageID != "abandon" || m.Header.DeliveryCount != 0 {
		t.Fatalf("second message %v %+v", err, m)
	}
	if err := rcv.ReleaseMessage(ctx, m); err != nil {
		t.Fatal(err)
	}
	// The abandoned message comes again (delivery-count 1), in any order
	// with the next one.
	for seen := map[string]bool{}; !seen["abandon"] || !seen["reject"]; {
		m, err = rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		id := m.Properties.MessageID.(string)
		seen[id] = true
		switch id {
		case "abandon":
			if m.Header.DeliveryCount != 1 {
				t.Fatalf("redelivered with delivery-count %d, want 1", m.Header.DeliveryCount)
			}
			err = rcv.AcceptMessage(ctx, m)
		case "reject":
			err = rcv.RejectMessage(ctx, m, nil)
		default:
			t.Fatalf("unexpected message %s", id)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the queue to empty", func() bool {
		n, err := f.svc.CloudToDevice.Count(ctx, hubName, "d1")
		return err == nil && n == 0
	})
}

func TestC2DUnsettledAtDisconnectIsAbandoned(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	ctx := ctxT(t)
	if _, err := f.svc.CloudToDevice.Send(ctx, hubName, "d1", &hub.CloudMessage{MessageID: "x", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	c := f.dial(t, nil)
	s := session(t, c)
	if code, _ := putToken(t, s, hubName+"%2Fdevices%2Fd1", deviceToken(t, "d1", time.Now().Add(time.Hour))); code != 200 {
		t.Fatal("put-token")
	}
	rcv, err := s.NewReceiver(ctx, "/devices/d1/messages/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rcv.Receive(ctx, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s2 := f.deviceConn(t, "d1")
	rcv2, err := s2.NewReceiver(ctx, "/devices/d1/messages/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rcv2.Receive(ctx, nil)
	if err != nil || m.Properties.MessageID != "x" || m.Header.DeliveryCount != 1 {
		t.Fatalf("message not redelivered after the connection dropped: %v %+v", err, m)
	}
}

func TestServiceSend(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d:1")
	s := session(t, f.dial(t, nil))
	if code, desc := putToken(t, s, hubName, f.serviceToken(t, "device", time.Now().Add(time.Hour))); code != 401 {
		t.Errorf("policy without ServiceConnect: %d %s, want 401", code, desc)
	}
	if code, desc := putToken(t, s, hubName, f.serviceToken(t, "service", time.Now().Add(time.Hour))); code != 200 {
		t.Fatalf("put-token: %d %s", code, desc)
	}
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "/messages/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	send := func(to string, n int) error {
		return snd.Send(ctx, &goamqp.Message{
			Properties:            &goamqp.MessageProperties{MessageID: "m", To: &to, CorrelationID: "c"},
			ApplicationProperties: map[string]any{"iothub-ack": "full", "p": "v"},
			Data:                  [][]byte{[]byte("hello")},
		}, nil)
	}
	if err := send("/devices/d%3A1/messages/devicebound", 0); err != nil {
		t.Fatalf("send: %v", err)
	}
	msgs, err := f.svc.CloudToDevice.Receive(ctx, hubName, "d:1", 10, time.Minute)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("queue: %v %d", err, len(msgs))
	}
	if m := msgs[0]; m.Ack != "full" || m.CorrelationID != "c" || len(m.App) != 1 || m.App[0].Name != "p" || string(m.Body) != "hello" {
		t.Errorf("queued %+v", m)
	}
	wantAMQPError(t, send("/devices/nobody/messages/devicebound", 0), goamqp.ErrCondNotFound)
	// The Node SDK re-attaches after a rejection.
	snd, err = s.NewSender(ctx, "/messages/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < hub.MaxC2DQueueDepth; i++ {
		if err := send("/devices/d%3A1/messages/devicebound", i); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	wantAMQPError(t, send("/devices/d%3A1/messages/devicebound", 0), goamqp.ErrCondResourceLimitExceeded)
}

func TestTwinAndMethods(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	s := f.deviceConn(t, "d1")
	ctx := ctxT(t)
	twinOut, err := s.NewSender(ctx, "/devices/d1/twin", &goamqp.SenderOptions{SettlementMode: goamqp.SenderSettleModeSettled.Ptr()})
	if err != nil {
		t.Fatal(err)
	}
	twinIn, err := s.NewReceiver(ctx, "/devices/d1/twin", nil)
	if err != nil {
		t.Fatal(err)
	}
	req := func(op, res, corr string, body string) *goamqp.Message {
		ann := goamqp.Annotations{"operation": op}
		if res != "" {
			ann["resource"] = res
		}
		if err := twinOut.Send(ctx, &goamqp.Message{Annotations: ann,
			Properties: &goamqp.MessageProperties{CorrelationID: corr}, Data: [][]byte{[]byte(body)}}, nil); err != nil {
			t.Fatal(err)
		}
		m, err := twinIn.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = twinIn.AcceptMessage(ctx, m)
		if m.Properties.CorrelationID != corr {
			t.Fatalf("correlation-id %v, want %s", m.Properties.CorrelationID, corr)
		}
		return m
	}
	m := req("GET", "", "g1", " ")
	if st, ok := m.Annotations["status"].(int32); !ok || st != 200 || !strings.Contains(string(m.GetData()), `"reported"`) {
		t.Fatalf("GET: %v %s", m.Annotations, m.GetData())
	}
	m = req("PATCH", "/properties/reported", "p1", `{"temp":1}`)
	if st, _ := m.Annotations["status"].(int32); st != 204 {
		t.Fatalf("PATCH: %v", m.Annotations)
	}
	if v, ok := m.Annotations["version"].(int64); !ok || v < 2 {
		t.Fatalf("PATCH version %v (%T), want a long", m.Annotations["version"], m.Annotations["version"])
	}
	req("PUT", "/notifications/twin/properties/desired", "s1", " ")
	if _, err := f.svc.Twins.Patch(ctx, hubName, "d1", []byte(`{"properties":{"desired":{"x":1}}}`), "*"); err != nil {
		t.Fatal(err)
	}
	m, err = twinIn.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Annotations["version"].(int64); !ok || v < 2 || !strings.Contains(string(m.GetData()), `"x":1`) {
		t.Fatalf("desired push %v %s", m.Annotations, m.GetData())
	}

	// Methods.
	mIn, err := s.NewReceiver(ctx, "/devices/d1/methods/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	mOut, err := s.NewSender(ctx, "/devices/d1/methods/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		m, err := mIn.Receive(ctx, nil)
		if err != nil {
			return
		}
		_ = mIn.AcceptMessage(ctx, m)
		_ = mOut.Send(ctx, &goamqp.Message{
			Properties:            &goamqp.MessageProperties{CorrelationID: m.Properties.CorrelationID},
			ApplicationProperties: map[string]any{"IoThub-status": int32(201)},
			Data:                  [][]byte{[]byte(`{"echo":` + string(m.GetData()) + `,"name":"` + m.ApplicationProperties["IoThub-methodname"].(string) + `"}`)},
		}, nil)
	}()
	res, err := f.svc.Methods.Invoke(ctx, hubName, "d1", &hub.MethodRequest{MethodName: "reboot", Payload: []byte(`{"a":1}`),
		ResponseTimeoutInSeconds: ptr(5), ConnectTimeoutInSeconds: ptr(5)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 201 || !strings.Contains(string(res.Payload), `"name":"reboot"`) || !strings.Contains(string(res.Payload), `"a":1`) {
		t.Fatalf("method result %d %s", res.Status, res.Payload)
	}
}

func TestUnknownAddressAndWrongRole(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	s := f.deviceConn(t, "d1")
	ctx := ctxT(t)
	_, err := s.NewSender(ctx, "/nowhere", nil)
	wantAMQPError(t, err, goamqp.ErrCondNotFound)
	_, err = s.NewReceiver(ctx, "/devices/d1/messages/events", nil)
	wantAMQPError(t, err, goamqp.ErrCondNotAllowed)
}

func TestX509DeviceWithoutCBS(t *testing.T) {
	f := newFixture(t)
	cert := testcerts.Valid(t, "x509-dev", nil, false, time.Now())
	sum := sha256.Sum256(cert.Cert.Raw)
	thumb := hex.EncodeToString(sum[:])
	ctx := ctxT(t)
	for _, id := range []string{"x509-dev"} {
		if _, err := f.svc.Registry.Create(ctx, hubName, &hub.Device{DeviceID: id, Status: hub.StatusEnabled,
			Authentication: &hub.Authentication{Type: hub.AuthSelfSigned, X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &thumb}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.svc.Registry.Create(ctx, hubName, &hub.Device{DeviceID: "wrong-thumb", Status: hub.StatusEnabled,
		Authentication: &hub.Authentication{Type: hub.AuthSelfSigned, X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: ptr(strings.Repeat("ab", 32))}}}); err != nil {
		t.Fatal(err)
	}
	// As the Node SDK: TLS with the client certificate, no SASL, no CBS.
	c := f.dial(t, &goamqp.ConnOptions{TLSConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert.TLS()}}})
	s := session(t, c)
	snd, err := s.NewSender(ctx, "/devices/x509-dev/messages/events", nil)
	if err != nil {
		t.Fatalf("attach with the certificate: %v", err)
	}
	if err := snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte("x")}}, nil); err != nil {
		t.Fatal(err)
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	if am, _ := msgs[0].SystemValue(hub.PropConnAuthMethod); !strings.Contains(am, `"x509"`) {
		t.Errorf("auth method %s", am)
	}
	// The certificate does not open a device whose thumbprint differs.
	_, err = s.NewSender(ctx, "/devices/wrong-thumb/messages/events", nil)
	wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	// Without a certificate or token nothing opens.
	s2 := session(t, f.dial(t, nil))
	_, err = s2.NewSender(ctx, "/devices/x509-dev/messages/events", nil)
	wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
}

func TestSASLPlainDeviceAndService(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	ctx := ctxT(t)
	tok := deviceToken(t, "d1", time.Now().Add(time.Hour))
	s := session(t, f.dial(t, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("d1@sas.testhub", tok)}))
	snd, err := s.NewSender(ctx, "/devices/d1/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte("plain")}}, nil); err != nil {
		t.Fatal(err)
	}
	// A wrong password fails the SASL exchange: the dial itself fails.
	bad := strings.Replace(tok, "sig=", "sig=A", 1)
	if _, err := goamqp.Dial(ctx, "amqps://"+f.addr, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("d1@sas.testhub", bad),
		TLSConfig: &tls.Config{InsecureSkipVerify: true}}); err == nil {
		t.Fatal("a bad PLAIN password was accepted")
	}
	svc := session(t, f.dial(t, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("service@sas.root.testhub", f.serviceToken(t, "service", time.Now().Add(time.Hour)))}))
	if _, err := svc.NewSender(ctx, "/messages/devicebound", nil); err != nil {
		t.Fatalf("service link after PLAIN: %v", err)
	}
}

func TestMalformedFrameClosesWithFramingError(t *testing.T) {
	f := newFixture(t)
	nc, err := tls.Dial("tcp", f.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	// The AMQP header (no SASL, as the Node SDKs), then a frame whose
	// data offset (1 word) is shorter than the frame header.
	if _, err := nc.Write([]byte{'A', 'M', 'Q', 'P', 0, 1, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := nc.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if !bytes.HasPrefix(got, []byte{'A', 'M', 'Q', 'P', 0, 1, 0, 0}) {
		t.Fatalf("no AMQP header back: %q", got)
	}
	if !bytes.Contains(got, []byte("amqp:connection:framing-error")) {
		t.Fatalf("the connection ended without a framing-error close: %q", got)
	}
}

// A service grant whose policy key is renewed loses its links when the
// hub's policies are checked again (the server does on every change, on
// every node); a grant of another, untouched policy keeps them.
func TestServiceGrantEndsWithItsPolicyKey(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	ctx := ctxT(t)
	sender := func(policy string) *goamqp.Sender {
		s := session(t, f.dial(t, nil))
		if code, desc := putToken(t, s, hubName, f.serviceToken(t, policy, time.Now().Add(time.Hour))); code != 200 {
			t.Fatalf("put-token %s: %d %s", policy, code, desc)
		}
		snd, err := s.NewSender(ctx, "/messages/devicebound", nil)
		if err != nil {
			t.Fatal(err)
		}
		return snd
	}
	send := func(snd *goamqp.Sender) error {
		to := "/devices/d1/messages/devicebound"
		return snd.Send(ctx, &goamqp.Message{Properties: &goamqp.MessageProperties{MessageID: "m", To: &to}, Data: [][]byte{[]byte("x")}}, nil)
	}
	renewed, kept := sender("service"), sender("iothubowner")
	if _, err := f.settings.PolicySet().RenewKey(ctx, "service", "primary"); err != nil {
		t.Fatal(err)
	}
	f.srv.RecheckServiceGrants(hubName)
	wantAMQPError(t, send(renewed), goamqp.ErrCondUnauthorizedAccess)
	if err := send(kept); err != nil {
		t.Fatalf("the untouched policy's link: %v", err)
	}
}

// An AMQP C2D delivery's lock lives no longer than its link (an unsettled
// delivery is abandoned when the link or connection ends), so it is held
// in memory, as MQTT's: delivering writes nothing to the store
// (docs/hub-wire.md#c2d-locks). The lock still holds on this node — a
// receive over HTTPS meanwhile gets nothing — and the settlement is
// stored: accepted removes the message.
func TestC2DDeliveryLockHeldInMemory(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	ctx := ctxT(t)
	if _, err := f.svc.CloudToDevice.Send(ctx, hubName, "d1", &hub.CloudMessage{MessageID: "m1", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	stored := func() store.Record {
		t.Helper()
		recs, err := f.st.List(ctx, store.KindC2D, store.ListOptions{})
		if err != nil || len(recs) != 1 {
			t.Fatalf("stored C2D messages: %d, %v", len(recs), err)
		}
		return recs[0]
	}
	before := stored()
	s := f.deviceConn(t, "d1")
	rcv, err := s.NewReceiver(ctx, "/devices/d1/messages/devicebound", &goamqp.ReceiverOptions{Credit: 1})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rcv.Receive(ctx, nil)
	if err != nil || m.Properties.MessageID != "m1" {
		t.Fatalf("receive: %v %+v", err, m)
	}
	if after := stored(); after.ETag != before.ETag || strings.Contains(string(after.Data), `"lockToken"`) {
		t.Errorf("the delivery wrote its lock to the store: %s", after.Data)
	}
	if got, err := f.svc.CloudToDevice.Receive(ctx, hubName, "d1", 1, time.Minute); err != nil || len(got) != 0 {
		t.Errorf("an HTTPS receive during the AMQP delivery got %d messages, %v; want none", len(got), err)
	}
	if err := rcv.AcceptMessage(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the queue to empty", func() bool {
		n, err := f.svc.CloudToDevice.Count(ctx, hubName, "d1")
		return err == nil && n == 0
	})
}
