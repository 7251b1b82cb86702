package amqp

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
)

const (
	dpsScope = "0ne00AMQP01"
	dpsKey   = "ZHBzaW5kaXZpZHVhbGtleWRwc2luZGl2aWR1YWxrZXk="
)

// throttleOnce is a dps.Faults that throttles the first registration.
type throttleOnce struct{ n atomic.Int32 }

func (f *throttleOnce) Register(context.Context, string) error {
	if f.n.Add(1) == 1 {
		e := azerr.New(azerr.DPSThrottled)
		e.RetryAfter = 4500 * time.Millisecond // the throttle's own wait: 5 s, rounded up
		return e
	}
	return nil
}

// newDPSFixture is a berth AMQP listener with the real DPS domain on the
// fixture's store, assigning to the fixture's hub, and an individual
// symmetric-key enrollment "amqp-dev".
func newDPSFixture(t *testing.T, faults dps.Faults) (*fixture, *dps.Service) {
	t.Helper()
	var svc *dps.Service
	f := newFixtureWith(t, func(f *fixture, cfg *Config) {
		var err error
		svc, err = dps.New(f.st, f.reg, dps.Config{IDScope: dpsScope, Hubs: []string{hubName}, RetryAfter: 1, Faults: faults})
		if err != nil {
			t.Fatal(err)
		}
		cfg.DPS = svc
	})
	e := &dps.IndividualEnrollment{RegistrationID: "amqp-dev"}
	e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: dpsKey}}
	if _, err := svc.PutEnrollment(context.Background(), "amqp-dev", e, ""); err != nil {
		t.Fatal(err)
	}
	return f, svc
}

// dialDPS connects as the provisioning SDKs do: SASL PLAIN with user
// {scope}/registrations/{reg} and a SAS token signed Node's way (raw sr,
// skn=registration).
func (f *fixture) dialDPS(t *testing.T, regID, key string) (*goamqp.Conn, error) {
	t.Helper()
	tok, err := sas.Sign(dpsScope+"/registrations/"+regID, key, "registration", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c, err := goamqp.Dial(ctxT(t), "amqps://"+f.addr, &goamqp.ConnOptions{
		TLSConfig: &tls.Config{InsecureSkipVerify: true},
		SASLType:  goamqp.SASLTypePlain(dpsScope+"/registrations/"+regID, tok),
	})
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

// dpsLinks attaches the receiver, then the sender, on the registration's
// address, as the Node client does.
func dpsLinks(t *testing.T, c *goamqp.Conn, regID string) (*goamqp.Sender, *goamqp.Receiver) {
	t.Helper()
	s := session(t, c)
	addr := dpsScope + "/registrations/" + regID
	rcv, err := s.NewReceiver(ctxT(t), addr, nil)
	if err != nil {
		t.Fatalf("receiver: %v", err)
	}
	snd, err := s.NewSender(ctxT(t), addr, nil)
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	return snd, rcv
}

// dpsCall sends one request and returns the answer's application
// properties and JSON body (nil answer when the request was rejected: the
// error is returned).
func dpsCall(t *testing.T, snd *goamqp.Sender, rcv *goamqp.Receiver, corr string, props map[string]any, msg *goamqp.Message) (map[string]any, map[string]any, error) {
	t.Helper()
	msg.Properties = &goamqp.MessageProperties{CorrelationID: corr}
	msg.ApplicationProperties = props
	if err := snd.Send(ctxT(t), msg, nil); err != nil {
		return nil, nil, err
	}
	reply, err := rcv.Receive(ctxT(t), nil)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	_ = rcv.AcceptMessage(ctxT(t), reply)
	if got := reply.Properties.CorrelationID; got != corr {
		t.Fatalf("correlation-id %v (%T), want %q as a string", got, got, corr)
	}
	var doc map[string]any
	if err := json.Unmarshal(reply.GetData(), &doc); err != nil {
		t.Fatalf("answer body %q: %v", reply.GetData(), err)
	}
	if _, ok := doc["status"]; !ok {
		t.Fatalf("answer %s has no status (the Node client needs one)", reply.GetData())
	}
	return reply.ApplicationProperties, doc, nil
}

func TestDPSRegisterAndPoll(t *testing.T) {
	f, _ := newDPSFixture(t, nil)
	c, err := f.dialDPS(t, "amqp-dev", dpsKey)
	if err != nil {
		t.Fatal(err)
	}
	snd, rcv := dpsLinks(t, c, "amqp-dev")
	props, doc, err := dpsCall(t, snd, rcv, "c-1", map[string]any{"iotdps-operation-type": "iotdps-register", "iotdps-forceRegistration": false},
		&goamqp.Message{Data: [][]byte{[]byte(`{"registrationId":"amqp-dev","payload":{"a":1}}`)}})
	if err != nil {
		t.Fatal(err)
	}
	opID, _ := doc["operationId"].(string)
	if doc["status"] != "assigning" || opID == "" || props["iotdps-status"] != "assigning" || props["iotdps-operation-id"] != opID ||
		props["retry-after"] != "1" || props["iotdps-operation-type"] != "iotdps-register" {
		t.Fatalf("register answer %v %v", props, doc)
	}
	// The poll's body is an empty string amqp-value, as Node sends it.
	props, doc, err = dpsCall(t, snd, rcv, "c-2", map[string]any{"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": opID},
		&goamqp.Message{Value: ""})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := doc["registrationState"].(map[string]any)
	if doc["status"] != "assigned" || st["assignedHub"] != hubName || st["deviceId"] != "amqp-dev" || props["iotdps-status"] != "assigned" {
		t.Fatalf("poll answer %v %v", props, doc)
	}
	if _, ok := props["retry-after"]; ok {
		t.Errorf("retry-after on a final answer: %v", props)
	}
	// The device exists in the hub, written by the same domain call as over MQTT.
	if _, err := f.reg.Get(context.Background(), hubName, "amqp-dev"); err != nil {
		t.Fatalf("device in the hub: %v", err)
	}
	// An unknown operation and an unknown request type: operations in
	// status failed carrying the DPS error.
	_, doc, _ = dpsCall(t, snd, rcv, "c-3", map[string]any{"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": "nope"},
		&goamqp.Message{Value: ""})
	st, _ = doc["registrationState"].(map[string]any)
	if doc["status"] != "failed" || st["errorCode"] != float64(404203) {
		t.Fatalf("unknown operation: %v", doc)
	}
	_, doc, _ = dpsCall(t, snd, rcv, "c-4", map[string]any{"iotdps-operation-type": "iotdps-delete"}, &goamqp.Message{Value: ""})
	st, _ = doc["registrationState"].(map[string]any)
	if doc["status"] != "failed" || st["errorCode"] != float64(400000) {
		t.Fatalf("unknown operation type: %v", doc)
	}
	// Another registration's address on this connection is refused.
	s := session(t, c)
	if _, err := s.NewReceiver(ctxT(t), dpsScope+"/registrations/other", nil); err == nil {
		t.Fatal("a link to another registration was attached")
	} else {
		wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	}
}

func TestDPSWrongKeyRefusedAtSASL(t *testing.T) {
	f, _ := newDPSFixture(t, nil)
	_, err := f.dialDPS(t, "amqp-dev", "d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3JvbmdrZXk=")
	if err == nil {
		t.Fatal("connected with a wrong key")
	}
	if !strings.Contains(err.Error(), "sasl") && !strings.Contains(err.Error(), "SASL") {
		t.Fatalf("error %v, want a SASL refusal", err)
	}
	if _, err := f.reg.Get(context.Background(), hubName, "amqp-dev"); err == nil {
		t.Fatal("a device was created")
	}
	if !strings.Contains(f.logs.String(), "amqp: DPS credential refused") {
		t.Errorf("the refusal is not logged:\n%s", f.logs.String())
	}
}

func TestDPSThrottledRequestRejectedWithRetryAfter(t *testing.T) {
	f, _ := newDPSFixture(t, &throttleOnce{})
	c, err := f.dialDPS(t, "amqp-dev", dpsKey)
	if err != nil {
		t.Fatal(err)
	}
	snd, rcv := dpsLinks(t, c, "amqp-dev")
	register := map[string]any{"iotdps-operation-type": "iotdps-register"}
	_, _, err = dpsCall(t, snd, rcv, "t-1", register, &goamqp.Message{Data: [][]byte{[]byte(`{}`)}})
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != "com.microsoft:device-container-throttled" || ae.Info["retry-after"] != "5" {
		t.Fatalf("throttled register: %v (%+v)", err, ae)
	}
	// The SDK retries on the same links: the next one goes through.
	if _, doc, err := dpsCall(t, snd, rcv, "t-2", register, &goamqp.Message{Data: [][]byte{[]byte(`{}`)}}); err != nil || doc["status"] != "assigning" {
		t.Fatalf("retry: %v %v", doc, err)
	}
}

func FuzzParseDPSUser(f *testing.F) {
	for _, s := range []string{"0ne00AMQP01/registrations/dev-1", "d1@sas.hub", "a/registrations/", "/registrations/x",
		"s/Registrations/r", "s/registrations/r/extra", "policy@sas.root.hub", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, user string) {
		scope, regID, ok := parseDPSUser(user)
		if !ok {
			return
		}
		if scope == "" || regID == "" || strings.Contains(scope, "/") || strings.Contains(regID, "/") {
			t.Fatalf("%q → scope %q, registration %q", user, scope, regID)
		}
		if !strings.HasPrefix(user, scope+"/") || !strings.HasSuffix(user, "/"+regID) || !strings.EqualFold(user[len(scope)+1:len(user)-len(regID)-1], "registrations") {
			t.Fatalf("%q → scope %q, registration %q: not its parts", user, scope, regID)
		}
	})
}
