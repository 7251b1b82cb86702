// Package devicesim plays an IoT hub device over MQTT, as `berth device
// simulate` runs it: it answers direct methods from a small spec (echo, a
// fixed answer, a delay), mirrors the desired properties into reported ones
// (at start and on every desired patch), completes cloud-to-device messages,
// and sends telemetry at an interval from a template. Each event is logged.
//
// It speaks the device side of the hub's MQTT protocol as the Azure device
// SDKs do (docs/spec/iothub-protocol.md: #mqtt-connect, #twins-over-mqtt,
// #direct-methods-over-mqtt, #cloud-to-device-over-mqtt); provisioning, when
// wanted, is deviceclient's, before Run.
package devicesim

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/berth-iot/berth/sas"
)

// APIVersion is the api-version of the MQTT username, the one IoT Hub's
// MQTT documentation shows (docs/spec/iothub-protocol.md#mqtt-connect).
const APIVersion = "2021-04-12"

// DefaultTemplate is the telemetry body when Config.Template is empty.
const DefaultTemplate = `{"deviceId":"{{.DeviceID}}","count":{{.Count}},"temperature":{{rand 20 30 | printf "%.1f"}},"time":"{{.Time}}"}`

// Config is one simulated device.
type Config struct {
	// HubHost is the hub's host name: TLS server name, MQTT username and
	// the token's resource.
	HubHost string
	// Address is the host:port to dial; default HubHost:8883, or
	// HubHost:443 with WebSocket.
	Address string
	// WebSocket carries MQTT over a WebSocket on the HTTPS port
	// (wss://…/$iothub/websocket, subprotocol mqtt), as the SDKs' MqttWs
	// transport does for devices behind firewalls.
	WebSocket bool
	DeviceID  string
	// SymmetricKey (base64) signs the SAS token; or ClientCertificate
	// authenticates the device by X.509 (no password).
	SymmetricKey      string
	ClientCertificate *tls.Certificate
	// RootCAs are the CAs to trust; nil: the system roots.
	RootCAs *x509.CertPool
	// Interval between telemetry messages; 0 sends none.
	Interval time.Duration
	// Messages stops the telemetry after this many; 0: no limit.
	Messages int
	// Template is the telemetry body, a text/template (DefaultTemplate
	// when empty); see Data and the functions in templateFuncs.
	Template string
	// Methods answer direct methods by name; "*" answers any other. With
	// no entry for a method and no "*", the answer is 404.
	Methods map[string]Method
	// TokenTTL is the lifetime of each SAS token; default one hour. A new
	// one is signed at every (re)connection.
	TokenTTL time.Duration
	// Logger receives one line per event; default slog.Default().
	Logger *slog.Logger
}

// Method is how a direct method is answered.
type Method struct {
	Echo    bool            // answer with the request's payload
	Status  int             // the answer's status; 0 means 200
	Payload json.RawMessage // the fixed answer, when not Echo
	Delay   time.Duration   // wait this long before answering
}

// ParseMethod reads a method spec, NAME[@DELAY]=ANSWER, where ANSWER is
// "echo", a JSON value (status 200), or STATUS:JSON. Method names cannot
// hold '@' or '=' (docs/spec/iothub-protocol.md#direct-methods-over-mqtt),
// so the first '=' ends the name.
func ParseMethod(spec string) (name string, m Method, err error) {
	name, answer, ok := strings.Cut(spec, "=")
	if !ok || name == "" {
		return "", m, fmt.Errorf("method %q: want NAME[@DELAY]=echo|JSON|STATUS:JSON", spec)
	}
	if n, d, ok := strings.Cut(name, "@"); ok {
		if m.Delay, err = time.ParseDuration(d); err != nil || m.Delay < 0 {
			return "", m, fmt.Errorf("method %q: delay %q is not a duration like 2s", spec, d)
		}
		name = n
	}
	if answer == "echo" {
		m.Echo = true
		return name, m, nil
	}
	if st, rest, ok := strings.Cut(answer, ":"); ok && len(st) == 3 {
		if code, err := strconv.Atoi(st); err == nil {
			m.Status, answer = code, rest
		}
	}
	if !json.Valid([]byte(answer)) {
		return "", m, fmt.Errorf("method %q: the answer %q is not echo, JSON or STATUS:JSON", spec, answer)
	}
	m.Payload = json.RawMessage(answer)
	return name, m, nil
}

// Data is what a telemetry template sees.
type Data struct {
	DeviceID string
	Count    int    // 1 for the first message
	Time     string // now, RFC 3339 UTC
}

var templateFuncs = template.FuncMap{
	// rand a b: a uniform number in [a, b).
	"rand": func(a, b float64) float64 { return a + rand.Float64()*(b-a) },
	// randInt a b: a uniform integer in [a, b].
	"randInt": func(a, b int) int { return a + rand.IntN(b-a+1) },
}

// ParseTemplate checks a telemetry template (empty: DefaultTemplate).
func ParseTemplate(text string) (*template.Template, error) {
	if text == "" {
		text = DefaultTemplate
	}
	t, err := template.New("telemetry").Funcs(templateFuncs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("telemetry template: %w", err)
	}
	return t, nil
}

// sim is one running device.
type sim struct {
	cfg    Config
	log    *slog.Logger
	tmpl   *template.Template
	client paho.Client

	rid     atomic.Uint64
	mu      sync.Mutex
	pending map[string]chan twinAnswer // twin requests by rid
	// desiredVersion is the newest desired $version mirrored, so that a
	// notification older than the GET is dropped
	// (docs/spec/iothub-protocol.md#twin-documents).
	desiredVersion int64
	connected      chan struct{} // a connection's subscriptions are in place
}

type twinAnswer struct {
	status int
	body   []byte
}

// Run connects the device and plays it until ctx ends (nil then) or the
// first connection fails. A connection lost later is re-established, with
// a new token, as the SDKs do.
func Run(ctx context.Context, cfg Config) error {
	if cfg.HubHost == "" || cfg.DeviceID == "" {
		return errors.New("devicesim: a hub host and a device ID are needed")
	}
	if (cfg.SymmetricKey == "") == (cfg.ClientCertificate == nil) {
		return errors.New("devicesim: give a symmetric key or a client certificate")
	}
	if cfg.Address == "" {
		cfg.Address = cfg.HubHost + ":8883"
		if cfg.WebSocket {
			cfg.Address = cfg.HubHost + ":443"
		}
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = time.Hour
	}
	s := &sim{cfg: cfg, log: cfg.Logger, pending: map[string]chan twinAnswer{}, connected: make(chan struct{}, 1)}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("device", cfg.DeviceID)
	var err error
	if s.tmpl, err = ParseTemplate(cfg.Template); err != nil {
		return err
	}
	if err := s.connect(ctx); err != nil {
		return err
	}
	defer s.client.Disconnect(250)

	var tick <-chan time.Time
	if cfg.Interval > 0 {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	sent := 0
	for {
		select {
		case <-ctx.Done():
			s.log.Info("stopping")
			return nil
		case <-s.connected:
			// Every connection starts from the twin: desired changes made
			// while the device was away are not queued for it.
			go s.mirrorTwin(ctx)
		case <-tick:
			if cfg.Messages > 0 && sent >= cfg.Messages {
				tick = nil
				s.log.Info("telemetry done", "messages", sent)
				continue
			}
			sent++
			s.sendTelemetry(ctx, sent)
		}
	}
}

func (s *sim) connect(ctx context.Context) error {
	cfg := s.cfg
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.HubHost, RootCAs: cfg.RootCAs}
	if cfg.ClientCertificate != nil {
		tlsConf.Certificates = []tls.Certificate{*cfg.ClientCertificate}
	}
	user := cfg.HubHost + "/" + cfg.DeviceID + "/?api-version=" + APIVersion
	broker := "ssl://" + cfg.Address
	if cfg.WebSocket {
		// paho offers the subprotocol "mqtt", the one the SDKs send.
		broker = "wss://" + cfg.Address + "/$iothub/websocket"
	}
	opts := paho.NewClientOptions().
		AddBroker(broker).
		SetClientID(cfg.DeviceID).
		SetProtocolVersion(4).
		SetCleanSession(false). // as the SDKs: the hub keeps the C2D subscription
		SetKeepAlive(60 * time.Second).
		SetConnectTimeout(30 * time.Second).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(30 * time.Second).
		SetTLSConfig(tlsConf).
		SetCredentialsProvider(func() (string, string) {
			if cfg.SymmetricKey == "" {
				return user, ""
			}
			// A fresh token at each connection: the hub closes a
			// connection whose token expires.
			tok, err := sas.SignEncoded(cfg.HubHost+"/devices/"+cfg.DeviceID, cfg.SymmetricKey, "", time.Now().Add(cfg.TokenTTL))
			if err != nil {
				s.log.Error("cannot sign a token", "err", err)
			}
			return user, tok
		}).
		SetOnConnectHandler(func(c paho.Client) {
			// Subscriptions are made again on every connection; twin
			// answers first, so that no answer is missed.
			subs := map[string]byte{
				"$iothub/twin/res/#":                                  0,
				"$iothub/twin/PATCH/properties/desired/#":             0,
				"$iothub/methods/POST/#":                              0,
				"devices/" + cfg.DeviceID + "/messages/devicebound/#": 1,
			}
			if tok := c.SubscribeMultiple(subs, s.onMessage); tok.Wait() && tok.Error() != nil {
				s.log.Error("subscribe failed", "err", tok.Error())
				return
			}
			s.log.Info("connected", "hub", cfg.HubHost, "address", cfg.Address, "websocket", cfg.WebSocket)
			select {
			case s.connected <- struct{}{}:
			default:
			}
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			s.log.Warn("connection lost; reconnecting", "err", err)
		})
	s.client = paho.NewClient(opts)
	tok := s.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		s.client.Disconnect(0)
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("devicesim: connect %s to %s (%s): %w", cfg.DeviceID, cfg.HubHost, cfg.Address, err)
	}
	return nil
}

// onMessage dispatches what the hub sends.
func (s *sim) onMessage(_ paho.Client, m paho.Message) {
	topic := m.Topic()
	switch {
	case strings.HasPrefix(topic, "$iothub/twin/res/"):
		s.onTwinAnswer(topic, m.Payload())
	case strings.HasPrefix(topic, "$iothub/twin/PATCH/properties/desired/"):
		go s.onDesired(m.Payload())
	case strings.HasPrefix(topic, "$iothub/methods/POST/"):
		go s.onMethod(topic, append([]byte(nil), m.Payload()...))
	case strings.HasPrefix(topic, "devices/"+s.cfg.DeviceID+"/messages/devicebound"):
		// Returning from the handler PUBACKs, which completes the message
		// (docs/spec/iothub-protocol.md#cloud-to-device-over-mqtt).
		props := ""
		if i := strings.Index(topic, "devicebound/"); i >= 0 {
			props = topic[i+len("devicebound/"):]
		}
		s.log.Info("c2d message completed", "properties", props, "body", string(m.Payload()))
	default:
		s.log.Warn("unexpected message", "topic", topic)
	}
}

// ---- direct methods ----

func (s *sim) onMethod(topic string, payload []byte) {
	// $iothub/methods/POST/{method}/?$rid={rid}
	rest := strings.TrimPrefix(topic, "$iothub/methods/POST/")
	name, query, _ := strings.Cut(rest, "/?")
	rid := strings.TrimPrefix(query, "$rid=")
	m, ok := s.cfg.Methods[name]
	if !ok {
		m, ok = s.cfg.Methods["*"]
	}
	status, body := 404, mustJSON(map[string]string{"error": "the simulated device has no method " + name})
	if ok {
		if m.Delay > 0 {
			time.Sleep(m.Delay)
		}
		status = m.Status
		if status == 0 {
			status = 200
		}
		body = m.Payload
		if m.Echo {
			body = payload
		}
	}
	tok := s.client.Publish("$iothub/methods/res/"+strconv.Itoa(status)+"/?$rid="+rid, 0, false, body)
	tok.Wait()
	if err := tok.Error(); err != nil {
		s.log.Error("method answer not sent", "method", name, "err", err)
		return
	}
	s.log.Info("method answered", "method", name, "request", string(payload), "status", status, "answer", string(body))
}

// ---- twin ----

func (s *sim) onTwinAnswer(topic string, body []byte) {
	// $iothub/twin/res/{status}/?$rid={rid}[&$version=…]
	rest := strings.TrimPrefix(topic, "$iothub/twin/res/")
	st, query, _ := strings.Cut(rest, "/?")
	status, _ := strconv.Atoi(st)
	q, _ := url.ParseQuery(query)
	rid := q.Get("$rid")
	s.mu.Lock()
	ch := s.pending[rid]
	delete(s.pending, rid)
	s.mu.Unlock()
	if ch != nil {
		ch <- twinAnswer{status: status, body: append([]byte(nil), body...)}
	}
}

// twinRequest publishes a twin request and waits for its answer.
func (s *sim) twinRequest(ctx context.Context, topic string, body []byte) (twinAnswer, error) {
	rid := strconv.FormatUint(s.rid.Add(1), 10)
	ch := make(chan twinAnswer, 1)
	s.mu.Lock()
	s.pending[rid] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, rid)
		s.mu.Unlock()
	}()
	tok := s.client.Publish(topic+"?$rid="+rid, 0, false, body)
	tok.Wait()
	if err := tok.Error(); err != nil {
		return twinAnswer{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case a := <-ch:
		if a.status >= 300 {
			return a, fmt.Errorf("status %d: %s", a.status, a.body)
		}
		return a, nil
	case <-ctx.Done():
		return twinAnswer{}, fmt.Errorf("no answer: %w", ctx.Err())
	}
}

// mirrorTwin reads the twin and reports its desired properties.
func (s *sim) mirrorTwin(ctx context.Context) {
	a, err := s.twinRequest(ctx, "$iothub/twin/GET/", nil)
	if err != nil {
		s.log.Error("twin GET failed", "err", err)
		return
	}
	var tw struct {
		Desired map[string]json.RawMessage `json:"desired"`
	}
	if err := json.Unmarshal(a.body, &tw); err != nil {
		s.log.Error("twin GET: not a twin", "err", err)
		return
	}
	s.log.Info("twin read", "desired", string(mustJSON(tw.Desired)))
	s.report(ctx, tw.Desired, true)
}

func (s *sim) onDesired(body []byte) {
	var patch map[string]json.RawMessage
	if err := json.Unmarshal(body, &patch); err != nil {
		s.log.Error("desired patch: not a JSON object", "err", err)
		return
	}
	s.log.Info("desired patch received", "patch", string(body))
	s.report(context.Background(), patch, false)
}

// report mirrors desired properties (a whole desired document or a patch)
// into reported ones, unless their $version is older than one mirrored.
func (s *sim) report(ctx context.Context, desired map[string]json.RawMessage, whole bool) {
	var version int64
	if v, ok := desired["$version"]; ok {
		_ = json.Unmarshal(v, &version)
	}
	s.mu.Lock()
	stale := version != 0 && version <= s.desiredVersion && !whole
	if version > s.desiredVersion {
		s.desiredVersion = version
	}
	s.mu.Unlock()
	if stale {
		s.log.Info("desired patch older than the twin read; skipped", "version", version)
		return
	}
	reported := map[string]json.RawMessage{}
	for k, v := range desired {
		if !strings.HasPrefix(k, "$") {
			reported[k] = v
		}
	}
	if len(reported) == 0 {
		return
	}
	body := mustJSON(reported)
	if _, err := s.twinRequest(ctx, "$iothub/twin/PATCH/properties/reported/", body); err != nil {
		s.log.Error("reported patch failed", "err", err)
		return
	}
	s.log.Info("reported", "patch", string(body), "desiredVersion", version)
}

// ---- telemetry ----

func (s *sim) sendTelemetry(ctx context.Context, n int) {
	var body bytes.Buffer
	if err := s.tmpl.Execute(&body, Data{DeviceID: s.cfg.DeviceID, Count: n, Time: time.Now().UTC().Format(time.RFC3339Nano)}); err != nil {
		s.log.Error("telemetry template", "err", err)
		return
	}
	// Content type and encoding as system properties, so that the hub
	// and its readers take the body as JSON (docs/spec/iothub-protocol.md#system-properties-on-mqtt), encoded as
	// every SDK writes them (#property-bags).
	topic := "devices/" + s.cfg.DeviceID + "/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8"
	tok := s.client.Publish(topic, 1, false, body.Bytes())
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return
	}
	if err := tok.Error(); err != nil {
		s.log.Error("telemetry not sent", "count", n, "err", err)
		return
	}
	s.log.Info("telemetry sent", "count", n, "body", body.String())
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte("{}")
	}
	return b
}
