package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/berth-iot/berth/sas"
)

// Endpoint is an MQTT server the telemetry and connect benches load with
// one connection per device: berth's hub, or the Mosquitto baseline. Both
// are driven by the same code, so that their figures differ only by the
// server.
type Endpoint struct {
	Name    string // "berth" or "mosquitto"
	Address string // host:port
	// Addresses, when set, are the same server's nodes: device i dials
	// Addresses[i % len] (a cluster target), Address being the first.
	Addresses  []string
	ServerName string // TLS server name
	RootCAs    *x509.CertPool
	// Credentials returns the CONNECT username and password of a device;
	// nil connects anonymously.
	Credentials func(deviceID, key string) (user, pass string, err error)
	// Transport is TransportMQTT (""), TransportMQTTWS or TransportAMQP.
	Transport string
	// HubToken returns a device's CBS audience and SAS token (AMQP).
	HubToken func(deviceID, key string) (audience, token string, err error)
}

// HubAPIVersion is the api-version of hub MQTT usernames: the Node SDK's,
// and the one IoT Hub's MQTT documentation shows.
const HubAPIVersion = "2021-04-12"

// hubTokenTTL is the lifetime of device tokens. A hub may close a connection
// when its token expires
// (docs/spec/iothub-protocol.md#mqtt-authentication-and-connack), so it
// covers the longest idle hold anyone will run.
const hubTokenTTL = 24 * time.Hour

// HubEndpoint is the IoT hub named hub, as t serves it, over MQTT,
// authenticating each device as the SDKs do: username
// {hub}/{deviceId}/?api-version=…, password a SAS token for
// sr={hub}/devices/{deviceId} (URL-encoded) signed with the device key, no
// skn (docs/spec/iothub-protocol.md#mqtt-connect, #how-the-sdks-make-tokens).
func HubEndpoint(t *Target, hub string) Endpoint {
	var addrs []string
	if t.NodeCount() > 1 {
		for i := range t.NodeCount() {
			addrs = append(addrs, t.ForDevice(i).HubAddress(hub))
		}
	}
	return Endpoint{
		Name:       "berth",
		Address:    t.HubAddress(hub),
		Addresses:  addrs,
		ServerName: hub,
		RootCAs:    t.RootCAs,
		Credentials: func(id, key string) (string, string, error) {
			tok, err := sas.SignEncoded(hub+"/devices/"+id, key, "", time.Now().Add(hubTokenTTL))
			if err != nil {
				return "", "", fmt.Errorf("bench: device token: %w", err)
			}
			return hub + "/" + id + "/?api-version=" + HubAPIVersion, tok, nil
		},
	}
}

// HubEndpointOver is HubEndpoint over another transport: MQTT over a
// WebSocket on the HTTPS listener, or AMQP with a CBS put-token of the
// same device token (docs/spec/amqp-protocol.md#cbs-put-token).
func HubEndpointOver(t *Target, hub, transport string) (Endpoint, error) {
	ep := HubEndpoint(t, hub)
	addr, err := hubTransportAddress(t, hub, transport)
	if err != nil {
		return Endpoint{}, err
	}
	ep.Address, ep.Transport = addr, transport
	if t.NodeCount() > 1 {
		ep.Addresses = nil
		for i := range t.NodeCount() {
			a, err := hubTransportAddress(t.ForDevice(i), hub, transport)
			if err != nil {
				return Endpoint{}, err
			}
			ep.Addresses = append(ep.Addresses, a)
		}
	}
	ep.HubToken = func(id, key string) (string, string, error) {
		tok, err := sas.SignEncoded(hub+"/devices/"+id, key, "", time.Now().Add(hubTokenTTL))
		if err != nil {
			return "", "", fmt.Errorf("bench: device token: %w", err)
		}
		return hub + "/devices/" + id, tok, nil
	}
	return ep, nil
}

// ForDevice is the endpoint device i dials: its node's, when ep has
// several.
func (ep Endpoint) ForDevice(i int) Endpoint {
	if len(ep.Addresses) > 0 {
		ep.Address = ep.Addresses[i%len(ep.Addresses)]
	}
	return ep
}

// TelemetryTopic is the device-to-cloud topic of a device.
func TelemetryTopic(deviceID string) string { return "devices/" + deviceID + "/messages/events/" }

// mqttTimeout bounds CONNECT when ctx has no earlier deadline.
const mqttTimeout = 30 * time.Second

// keepAlive is the devices' MQTT keep-alive: the Python SDK's 60 s, the
// shortest of the SDKs (docs/spec/iothub-protocol.md#mqtt-keep-alive), so an
// idle device costs the server the most pings it will see.
const keepAlive = 60 * time.Second

// Dial opens one device's MQTT connection (a new TLS connection, full
// handshake: the bench's devices share no TLS session cache).
func (ep Endpoint) Dial(ctx context.Context, deviceID, key string) (paho.Client, error) {
	broker := "ssl://" + ep.Address
	if ep.Transport == TransportMQTTWS {
		// paho asks for the "mqtt" subprotocol, as the SDKs' MqttWs does.
		broker = "wss://" + ep.Address + webSocketPath
	}
	opts := paho.NewClientOptions().
		AddBroker(broker).
		SetClientID(deviceID).
		SetProtocolVersion(4).
		// The SDKs connect with CleanSession 0, but neither berth nor the
		// baseline keeps anything for these devices, and a clean session
		// spares Mosquitto the state of 2000 stored sessions.
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(mqttTimeout).
		SetKeepAlive(keepAlive).
		SetWriteTimeout(mqttTimeout).
		SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12, ServerName: ep.ServerName, RootCAs: ep.RootCAs})
	if ep.Credentials != nil {
		user, pass, err := ep.Credentials(deviceID, key)
		if err != nil {
			return nil, err
		}
		opts.SetUsername(user).SetPassword(pass)
	}
	c := paho.NewClient(opts)
	if err := waitToken(ctx, c.Connect(), mqttTimeout); err != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("bench: %s connect to %s as %s: %w", broker[:strings.Index(broker, ":")], ep.Address, deviceID, err)
	}
	return c, nil
}

// waitToken waits for a paho token, ctx, or timeout.
func waitToken(ctx context.Context, tok paho.Token, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errTimeout
	}
}
