package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	goamqp "github.com/Azure/go-amqp"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// Transports of the hub's telemetry and connect benches: the hub's three
// ways in for a device.
const (
	TransportMQTT   = "mqtt"    // MQTT over TLS (8883)
	TransportMQTTWS = "mqtt-ws" // MQTT over a WebSocket on the HTTPS listener
	TransportAMQP   = "amqp"    // AMQP 1.0 over TLS (5671)
)

// CheckTransport refuses an unknown transport name.
func CheckTransport(t string) error {
	switch t {
	case "", TransportMQTT, TransportMQTTWS, TransportAMQP:
		return nil
	}
	return fmt.Errorf("bench: transport %q: use %s, %s or %s", t, TransportMQTT, TransportMQTTWS, TransportAMQP)
}

// webSocketPath is where AMQP and MQTT over WebSockets are served (every
// Azure SDK fixes it: docs/spec/amqp-protocol.md#websockets).
const webSocketPath = "/$iothub/websocket"

// deviceConn is one device's connection during a telemetry or connect run.
type deviceConn interface {
	io.Closer
	// publish sends one telemetry message — MQTT QoS qos, AMQP unsettled
	// — and returns what waits for its acknowledgement. sent, when not 0,
	// is stamped on the message as the application property bench-sent
	// (telemetry --read eventhubs).
	publish(payload []byte, qos byte, sent int64) ackWait
}

// ackWait waits for one message's acknowledgement (PUBACK, or the AMQP
// accepted disposition), ctx or timeout.
type ackWait func(ctx context.Context, timeout time.Duration) error

// connect opens one device's connection over ep's transport.
func (ep Endpoint) connect(ctx context.Context, deviceID, key string) (deviceConn, error) {
	if ep.Transport == TransportAMQP {
		return ep.dialAMQP(ctx, deviceID, key)
	}
	c, err := ep.Dial(ctx, deviceID, key)
	if err != nil {
		return nil, err
	}
	return &mqttConn{c: c, topic: TelemetryTopic(deviceID)}, nil
}

// mqttConn is a paho connection (TLS or WebSocket).
type mqttConn struct {
	c     paho.Client
	topic string
}

func (m *mqttConn) publish(payload []byte, qos byte, sent int64) ackWait {
	topic := m.topic
	if sent != 0 {
		// The topic ends in '/': a property bag follows.
		topic += benchSentProp + "=" + strconv.FormatInt(sent, 10)
	}
	tok := m.c.Publish(topic, qos, false, payload)
	return func(ctx context.Context, timeout time.Duration) error { return waitToken(ctx, tok, timeout) }
}

func (m *mqttConn) Close() error {
	m.c.Disconnect(0)
	return nil
}

// amqpConn is a device's AMQP connection as the Node device SDK holds it
// after its first message: one session, the CBS links with the device's
// token put, and the telemetry sender
// (docs/spec/amqp-protocol.md#device-telemetry).
type amqpConn struct {
	c   *goamqp.Conn
	snd *goamqp.Sender
}

// dialAMQP connects a device over AMQP: TLS, no SASL, CBS put-token of the
// device's SAS token, then the telemetry sender.
func (ep Endpoint) dialAMQP(ctx context.Context, deviceID, key string) (deviceConn, error) {
	if ep.HubToken == nil {
		return nil, errors.New("bench: AMQP needs a hub endpoint")
	}
	ctx, cancel := context.WithTimeout(ctx, mqttTimeout)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqps://"+ep.Address, &goamqp.ConnOptions{
		HostName:  ep.ServerName,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, ServerName: ep.ServerName, RootCAs: ep.RootCAs},
	})
	if err != nil {
		return nil, fmt.Errorf("bench: amqp connect to %s as %s: %w", ep.Address, deviceID, err)
	}
	fail := func(what string, err error) (deviceConn, error) {
		_ = c.Close()
		return nil, fmt.Errorf("bench: amqp %s for %s: %w", what, deviceID, err)
	}
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		return fail("session", err)
	}
	aud, tok, err := ep.HubToken(deviceID, key)
	if err != nil {
		return fail("token", err)
	}
	if err := putToken(ctx, s, aud, tok); err != nil {
		return fail("put-token", err)
	}
	snd, err := s.NewSender(ctx, "/devices/"+deviceID+"/messages/events", nil)
	if err != nil {
		return fail("telemetry link", err)
	}
	return &amqpConn{c: c, snd: snd}, nil
}

// putToken runs one CBS put-token and checks its status (the device SDK's
// exchange, docs/spec/amqp-protocol.md#cbs-put-token).
func putToken(ctx context.Context, s *goamqp.Session, audience, token string) error {
	rcv, err := s.NewReceiver(ctx, "$cbs", nil)
	if err != nil {
		return err
	}
	defer rcv.Close(ctx)
	snd, err := s.NewSender(ctx, "$cbs", nil)
	if err != nil {
		return err
	}
	defer snd.Close(ctx)
	replyTo := "cbs"
	err = snd.Send(ctx, &goamqp.Message{
		Properties: &goamqp.MessageProperties{MessageID: "put-token", To: ptrTo("$cbs"), ReplyTo: &replyTo},
		ApplicationProperties: map[string]any{"operation": "put-token", "type": "servicebus.windows.net:sastoken",
			"name": audience},
		Value: token,
	}, nil)
	if err != nil {
		return err
	}
	reply, err := rcv.Receive(ctx, nil)
	if err != nil {
		return err
	}
	_ = rcv.AcceptMessage(ctx, reply)
	if code, _ := reply.ApplicationProperties["status-code"].(int32); code != 200 {
		desc, _ := reply.ApplicationProperties["status-description"].(string)
		return fmt.Errorf("status %v: %s", reply.ApplicationProperties["status-code"], desc)
	}
	return nil
}

func ptrTo(s string) *string { return &s }

// publish sends the message unsettled, the AMQP form of QoS 1: berth
// accepts it once it is durable. AMQP has no QoS 0 here (RunTelemetry
// refuses it).
func (a *amqpConn) publish(payload []byte, _ byte, sent int64) ackWait {
	msg := &goamqp.Message{Data: [][]byte{payload}}
	if sent != 0 {
		msg.ApplicationProperties = map[string]any{benchSentProp: strconv.FormatInt(sent, 10)}
	}
	// Sending waits for credit: bounded as a paho write is.
	sctx, cancel := context.WithTimeout(context.Background(), mqttTimeout)
	r, err := a.snd.SendWithReceipt(sctx, msg, nil)
	cancel()
	return func(ctx context.Context, timeout time.Duration) error {
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		st, err := r.Wait(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return errTimeout
			}
			return err
		}
		if _, ok := st.(*goamqp.StateAccepted); !ok {
			return fmt.Errorf("bench: amqp outcome %T", st)
		}
		return nil
	}
}

func (a *amqpConn) Close() error {
	return a.c.Close()
}

// hubTransportAddress is the hub address a device dials, per transport: the MQTT
// listener, the HTTPS listener (MQTT over WebSockets) or the AMQP listener.
func hubTransportAddress(t *Target, hub, transport string) (string, error) {
	switch transport {
	case "", TransportMQTT:
		return t.HubAddress(hub), nil
	case TransportMQTTWS:
		if hub != "" && !strings.EqualFold(hub, t.HubHostName) {
			return "", fmt.Errorf("bench: %s drives berth's own hub only, not %s", transport, hub)
		}
		return t.HTTPSAddress, nil
	case TransportAMQP:
		if hub != "" && !strings.EqualFold(hub, t.HubHostName) {
			return "", fmt.Errorf("bench: %s drives berth's own hub only, not %s", transport, hub)
		}
		if t.AMQPAddress == "" {
			return "", errors.New("bench: the berth has no AMQP listener (client.json has no amqpAddress)")
		}
		return t.AMQPAddress, nil
	}
	return "", CheckTransport(transport)
}
