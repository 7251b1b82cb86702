package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/stream"
)

// amqpDial connects to the berth's AMQP listener (the address of
// client.json) with berth's CA, as a device of host would.
func (b *berth) amqpDial(host string, sasl goamqp.SASLType) (*goamqp.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqps://"+b.info.AMQPAddress, &goamqp.ConnOptions{
		HostName:  host,
		SASLType:  sasl,
		TLSConfig: &tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"},
	})
	if err == nil {
		b.t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

// provisionAMQP registers regID over AMQP as the provisioning SDKs do
// (docs/amqp-wire.md, "DPS"): SASL PLAIN {scope}/registrations/{reg} with
// the registration token, receiver then sender on that address, register,
// then poll until the operation is final.
func (b *berth) provisionAMQP(regID, key string) *dps.OperationStatus {
	t := b.t
	t.Helper()
	c, err := b.amqpDial(b.info.GlobalEndpoint, goamqp.SASLTypePlain(b.info.IDScope+"/registrations/"+regID, b.deviceToken(regID, key)))
	if err != nil {
		t.Fatalf("DPS over AMQP: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := b.info.IDScope + "/registrations/" + regID
	rcv, err := s.NewReceiver(ctx, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := s.NewSender(ctx, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	call := func(corr string, props map[string]any, msg *goamqp.Message) *dps.OperationStatus {
		msg.Properties = &goamqp.MessageProperties{CorrelationID: corr}
		msg.ApplicationProperties = props
		if err := snd.Send(ctx, msg, nil); err != nil {
			t.Fatalf("%s: %v", corr, err)
		}
		reply, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("%s: %v", corr, err)
		}
		_ = rcv.AcceptMessage(ctx, reply)
		if reply.Properties.CorrelationID != corr {
			t.Fatalf("correlation-id %v, want %s", reply.Properties.CorrelationID, corr)
		}
		var op dps.OperationStatus
		if err := json.Unmarshal(reply.GetData(), &op); err != nil {
			t.Fatalf("%s: answer %s: %v", corr, reply.GetData(), err)
		}
		return &op
	}
	op := call("reg", map[string]any{"iotdps-operation-type": "iotdps-register", "iotdps-forceRegistration": false},
		&goamqp.Message{Data: [][]byte{[]byte(`{"registrationId":"` + regID + `"}`)}})
	for i := 0; !op.Terminal(); i++ {
		if i > 10 {
			t.Fatalf("still %s after %d polls", op.Status, i)
		}
		op = call("poll", map[string]any{"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": op.OperationID},
			&goamqp.Message{Value: ""})
	}
	return op
}

// A group member provisions over AMQP on the same listener the hub uses,
// then connects to its hub over AMQP with the key it derived (CBS
// put-token) and sends telemetry, which reaches the stream stamped as its
// own. A wrong key is refused in the SASL exchange and makes no device.
func TestProvisionOverAMQPThenTelemetryOverAMQP(t *testing.T) {
	b := start(t, t.TempDir())
	if b.info.AMQPAddress == "" {
		t.Fatal("client.json has no amqpAddress")
	}
	groupKey := b.createGroup("amqp-sensors")
	key, err := sas.DeriveKey(groupKey, "amqp-thermo-1")
	if err != nil {
		t.Fatal(err)
	}
	op := b.provisionAMQP("amqp-thermo-1", key)
	checkAssigned(t, op, "amqp-thermo-1", "hub.berth.test")
	hubName, deviceID := op.RegistrationState.AssignedHub, op.RegistrationState.DeviceID

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := b.srv.Stream().Subscribe(ctx, stream.SubscribeOptions{DeviceID: deviceID})
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.amqpDial(hubName, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cbsOut, err := s.NewSender(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	cbsIn, err := s.NewReceiver(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = cbsOut.Send(ctx, &goamqp.Message{
		Properties: &goamqp.MessageProperties{MessageID: "t-1"},
		ApplicationProperties: map[string]any{"operation": "put-token", "type": "servicebus.windows.net:sastoken",
			"name": hubName + "/devices/" + deviceID},
		Value: hubToken(t, hubName, deviceID, key),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := cbsIn.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code := reply.ApplicationProperties["status-code"]; code != int32(200) {
		t.Fatalf("put-token: %v %v", code, reply.ApplicationProperties["status-description"])
	}
	snd, err := s.NewSender(ctx, "/devices/"+deviceID+"/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx, &goamqp.Message{Properties: &goamqp.MessageProperties{MessageID: "amqp-m-1"},
		ApplicationProperties: map[string]any{"unit": "celsius"}, Data: [][]byte{[]byte(`{"t":20}`)}}, nil); err != nil {
		t.Fatalf("telemetry: %v", err)
	}
	select {
	case m := <-msgs:
		mid, _ := m.SystemValue(hub.PropMessageID)
		conn, _ := m.SystemValue(hub.PropConnDeviceID)
		if string(m.Body) != `{"t":20}` || mid != "amqp-m-1" || conn != deviceID {
			t.Fatalf("stream message: %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("telemetry not in the stream")
	}

	// A wrong key: SASL refused, nothing registered.
	_, err = b.amqpDial(b.info.GlobalEndpoint, goamqp.SASLTypePlain(b.info.IDScope+"/registrations/amqp-thermo-2", b.deviceToken("amqp-thermo-2", strings.Repeat("A", 43)+"=")))
	if err == nil {
		t.Fatal("a wrong key passed SASL")
	}
	var reg dps.RegistrationState
	if resp, _ := b.do("GET", "/registrations/amqp-thermo-2?api-version=2021-10-01", b.serviceToken(), nil, nil, &reg); resp.StatusCode != 404 {
		t.Fatalf("registration record after a refused key: %d", resp.StatusCode)
	}
}
