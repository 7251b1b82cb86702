package mqtt

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-iot/berth/frontend/mqtt/topics"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/refusal"
)

// HubConfig configures the IoT Hub device sessions of a Server
// (docs/hub-wire.md, "MQTT").
type HubConfig struct {
	// Name is the hub host name as device connection strings give it
	// (HostName=…). The {hub} of a CONNECT username must name it
	// (case-insensitively, ignoring a :port) and it is the hub messages
	// are stamped with.
	Name string
	// Settings are the hub's shared access policies. When nil, only tokens
	// signed with a device's own key authenticate.
	Settings *hub.Settings
	// Hubs, when set, are the hubs this listener serves: a CONNECT's
	// {hub} must name one of them (Name is then only the default). When
	// nil, Name is the one hub, with Settings as its policies.
	Hubs *hub.Directory
	// Services are the hub domain the sessions translate into: the
	// registry authenticates, Links holds the live sessions (one per
	// device, closed when replaced or revoked) and their persistent state,
	// Telemetry accepts messages, Twins, Methods and CloudToDevice serve
	// the rest. Required: without it every hub CONNECT is answered
	// CONNACK 3 (server unavailable).
	*hub.Services
	// Now is the clock for the time left on a device's token. It must be
	// the Registry's clock, as hub.Identity.Expires is on that clock.
	// Default time.Now.
	Now func() time.Time
}

const (
	// maxHubKeepAlive is the longest silence IoT Hub allows: 1.5 × the
	// client's keep-alive, capped at 1767 s (29.45 min, the Azure load
	// balancer's idle limit), which is also what a keep-alive of 0 gets
	// (docs/spec/iothub-protocol.md#mqtt-keep-alive).
	maxHubKeepAlive = 1767 * time.Second
	// appendTimeout bounds one Telemetry.Accept. A sink that hangs
	// must not hold the connection forever: the connection is closed
	// without PUBACK and the device sends the message again.
	appendTimeout = 30 * time.Second
	// willTimeout bounds the Append of a will message.
	willTimeout = 10 * time.Second
)

// Application properties the hub adds
// (docs/spec/iothub-protocol.md#mqtt-connect, #mqtt-sessions-qos-and-retain).
const (
	propRetain       = "mqtt-retain"
	propMessageType  = "iothub-MessageType"
	messageTypeWill  = "Will"
	retainPropertyOn = "true"
)

// Hub username query keys (docs/spec/iothub-protocol.md#mqtt-connect).
const (
	hubQueryAPIVersion = "api-version"
	hubQueryClientType = "DeviceClientType"
	hubQueryModelID    = "model-id"
)

// azureMLUsernameTail is the one six-segment username IoT Edge accepts: an
// old Azure ML client separates DeviceClientType with '/' instead of '&'.
// It is matched ignoring case, as IoT Edge does, and always yields the
// canonical keys and values (docs/hub-wire.md).
const azureMLUsernameTail = "/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1-preview-003"

// ParseHubUsername parses an IoT Hub MQTT username
// (docs/spec/iothub-protocol.md#mqtt-connect, the IoT Edge algorithm):
//
//	{hub}/{deviceId}/?{query}              device
//	{hub}/{deviceId}/{moduleId}/?{query}   module
//	{hub}/{deviceId}/{query}               legacy device, query has api-version=
//	{hub}/{deviceId}/{moduleId}/{query}    legacy module, query has api-version=
//	{hub}/{deviceId}/{moduleId}/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1-preview-003
//	{hub}/{deviceId}                       bare (the SAS doc; mosquitto_pub -u)
//
// The username is split on every '/', so the '?' form has exactly three or
// four segments: a query value with a raw '/' makes the username invalid,
// as it does for IoT Edge (the SDKs percent-encode their user agents).
// IDs are taken as sent, without trimming or decoding.
//
// The query is '&'-separated pairs split at the first '='; the first of
// duplicate keys counts; values are percent-decoded without turning '+' into
// a space, and kept as sent when they are not valid percent-encoding
// (Uri.UnescapeDataString semantics); keys are not decoded. Each key maps to
// exactly one value. A missing api-version is accepted in the '?' and bare
// forms (docs/spec/iothub-protocol.md#mqtt-connect: plain MQTT tools omit
// it), but the legacy forms are recognised by their api-version, so there it
// must be a key with a value. Unknown keys are kept, for the caller to
// ignore.
func ParseHubUsername(username string) (hubName, deviceID, moduleID string, query url.Values, err error) {
	segs := strings.Split(username, "/")
	n := len(segs)
	last := segs[n-1]
	var rawQuery string
	legacy := false
	switch {
	case n == 1:
		return "", "", "", nil, errors.New("username has no device ID")
	case strings.HasPrefix(last, "?"):
		switch n {
		case 3:
			deviceID = segs[1]
		case 4:
			deviceID, moduleID = segs[1], segs[2]
			if moduleID == "" {
				return "", "", "", nil, errors.New("username has an empty module ID")
			}
		default:
			return "", "", "", nil, fmt.Errorf("username has %d segments; the '?' form has 3 or 4", n)
		}
		rawQuery = last[1:]
	case n == 2:
		deviceID = segs[1]
	case n == 3 && last == "":
		// {hub}/{deviceId}/: the bare form with the '/' a query would
		// follow.
		deviceID = segs[1]
	case n == 3 && strings.Contains(last, hubQueryAPIVersion+"="):
		deviceID, rawQuery, legacy = segs[1], last, true
	case n == 4 && strings.Contains(last, hubQueryAPIVersion+"="):
		deviceID, moduleID, rawQuery, legacy = segs[1], segs[2], last, true
		if moduleID == "" {
			return "", "", "", nil, errors.New("username has an empty module ID")
		}
	case n == 6 && len(username) >= len(azureMLUsernameTail) &&
		strings.EqualFold(username[len(username)-len(azureMLUsernameTail):], azureMLUsernameTail):
		deviceID, moduleID = segs[1], segs[2]
		if moduleID == "" {
			return "", "", "", nil, errors.New("username has an empty module ID")
		}
		query = url.Values{
			hubQueryAPIVersion: {"2017-06-30"},
			hubQueryClientType: {"Microsoft.Azure.Devices.Client/1.5.1-preview-003"},
		}
	default:
		return "", "", "", nil, errors.New("username is not {hub}/{deviceId}[/{moduleId}]/?{query}")
	}
	hubName = segs[0]
	if hubName == "" {
		return "", "", "", nil, errors.New("username has no hub name")
	}
	if deviceID == "" {
		return "", "", "", nil, errors.New("username has no device ID")
	}
	if query == nil {
		query = parseHubQuery(rawQuery)
	}
	if legacy && query.Get(hubQueryAPIVersion) == "" {
		return "", "", "", nil, errors.New("legacy username without an api-version value")
	}
	return hubName, deviceID, moduleID, query, nil
}

// parseHubQuery parses a username query, keeping the first value of each
// key (IoT Edge's GroupBy(key).First()).
func parseHubQuery(s string) url.Values {
	q := url.Values{}
	for pair := range strings.SplitSeq(s, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if _, dup := q[k]; dup {
			continue
		}
		if dec, err := url.PathUnescape(v); err == nil {
			v = dec
		}
		q[k] = []string{v}
	}
	return q
}

// sameHost compares hub host names as hub.SameHost does.
func sameHost(a, b string) bool { return hub.SameHost(a, b) }

// isOurHub reports whether name is a hub this server serves.
func (s *Server) isOurHub(name string) bool {
	_, _, ok := s.servedHub(name)
	return ok
}

// servedHub resolves a username's {hub} to the hub's name as berth knows
// it (so that every session of a hub uses one spelling) and its policies.
func (s *Server) servedHub(name string) (string, *hub.Settings, bool) {
	h := s.cfg.Hub
	if h == nil {
		return "", nil, false
	}
	return hub.ServedHub(h.Hubs, h.Name, h.Settings, name)
}

// hubKeepAlive is the server-side silence limit for a hub session.
func hubKeepAlive(clientSeconds uint16) time.Duration {
	d := time.Duration(clientSeconds) * 1500 * time.Millisecond
	if d == 0 || d > maxHubKeepAlive {
		return maxHubKeepAlive
	}
	return d
}

// hubFeature indexes the subscription state of a hub session.
type hubFeature int

const (
	featureC2D hubFeature = iota
	featureTwinResponses
	featureDesired
	featureMethods
	numHubFeatures
)

// Subscription filters of the hub session
// (docs/spec/iothub-protocol.md#mqtt-subscriptions).
const (
	twinResponseFilter = "$iothub/twin/res/#"
	desiredPrefix      = "$iothub/twin/PATCH/properties/desired/"
	methodsPrefix      = "$iothub/methods/POST/"
	c2dFilterSuffix    = "/messages/devicebound/#"
	devicesPrefix      = "devices/"
)

// hubWill is a will message kept from CONNECT (copied: the CONNECT buffer
// also holds the password).
type hubWill struct {
	topic   string
	payload []byte
	retain  bool
}

// hubSession is an authenticated IoT Hub device connection. It keeps only
// what the stamps need, not the device document (keys included), so an
// idle session costs a few hundred bytes beside its connection.
//
// Telemetry is appended by the reader goroutine, one message at a time,
// so a connection's messages reach the sink in the order they were sent
// and each QoS 1 PUBACK follows its own Append. The price is throughput:
// Append is durable (the stream waits for its store), so one connection
// gets at most one message per store round-trip. A pipelined design with
// in-order PUBACKs is a later optimisation.
type hubSession struct {
	c        *conn
	hub      string // the hub's name as berth knows it (servedHub)
	deviceID string
	// moduleID is the module a module connection ({device}/{module}) is;
	// "" for a device. twinID names the session's identity in the domain
	// (hub.TwinID): Links, presence, twin and methods.
	moduleID string
	twinID   string
	// sender stamps the device's messages (hub, device and generation
	// IDs, auth method, model ID).
	sender hub.Sender
	expiry *time.Timer
	will   *hubWill
	// clean is the CONNECT's CleanSession: a session without it is
	// persistent, its subscriptions kept in Links for the device's next
	// connection. resume is the state such a connection found, applied
	// once the CONNACK is out; present says there was one (CONNACK
	// session present).
	clean   bool
	resume  *hub.SessionState
	present bool
	// disconnected records the end of this connection in the registry's
	// presence (connectionState, lastActivityTime).
	disconnected func()

	// revoked is set when the hub closed the connection because the
	// device's credential was revoked: its will is not published.
	revoked atomic.Bool

	// subs is the granted QoS per feature, -1 when not subscribed.
	// Written by the reader, read by the goroutines that deliver (twin
	// work, desired notifications, method invocations, the C2D pump).
	subs [numHubFeatures]atomic.Int32

	// mu guards the delivery state below. Everything here is nil or zero
	// while the session is idle: no goroutine and no buffer exists until
	// there is something to deliver.
	mu     sync.Mutex
	closed bool
	// workers counts the sender and C2D pump goroutines; close waits
	// for them.
	workers sync.WaitGroup
	// out holds desired notifications waiting for the sender goroutine,
	// which runs while sending is true.
	out     []outbound
	sending bool
	// methods are the direct-method invocations waiting for the device's
	// answer, by rid; ridSeq numbers them.
	methods map[string]chan methodAnswer
	ridSeq  uint64
	// inflight are the C2D messages delivered and not yet acknowledged,
	// lock token by packet ID; acked are lock tokens whose PUBACK came,
	// for the pump to complete. pumping is true while the pump goroutine
	// runs, pumpAgain asks it to look at the queue once more, and
	// cancelOp cancels its store call in flight.
	inflight  map[uint16]string
	acked     []string
	pumping   bool
	pumpAgain bool
	cancelOp  context.CancelFunc
	// parked counts completions handed to CompleteLater since the pump
	// last flushed; linger is non-nil while the pump waits before that
	// flush, and a wake-up ends the wait (hubc2d.go).
	parked int
	linger chan struct{}

	// tmu guards tel, the telemetry in flight (hubtelemetry.go); a lock
	// of its own, as the sink's callbacks take it for every message.
	tmu sync.Mutex
	tel telemetryPipe
}

// Interface guard: the domain pushes to a hub session through Links.
var _ hub.DeviceLink = (*hubSession)(nil)

// newHubSession authenticates an IoT Hub device CONNECT
// (docs/spec/iothub-protocol.md#mqtt-authentication-and-connack). Every
// identity or credential failure is CONNACK 5, as IoT Hub answers; a failure
// to reach the registry is 3.
func (c *conn) newHubSession(pk *packets.Packet, hubName, deviceID, moduleID string, query url.Values) (session, byte) {
	h := c.srv.cfg.Hub
	attrs := []any{"remote", c.remote, "hub", clip(hubName), "deviceId", clip(deviceID)}
	refuse := func(msg string, more ...any) (session, byte) {
		c.srv.log.Info("mqtt: CONNECT refused: "+msg, append(attrs, more...)...)
		return nil, connNotAuthorized
	}
	switch {
	case h == nil:
		return refuse("IoT Hub device sessions are not served yet: this listener has no hub configured")
	case !c.srv.isOurHub(hubName):
		// The device believes it is talking to a hub berth does not
		// serve. Its token names that hub too (the registry would refuse
		// its audience), and accepting it would stamp its messages with a
		// hub it did not ask for. IoT Hub answers 5 to every CONNECT it
		// will not serve, so an unknown hub name is one more such refusal.
		return refuse("the username names a hub this berth does not serve", "defaultHub", h.Name)
	case pk.Connect.ClientIdentifier != hub.TwinID(deviceID, moduleID):
		// Ordinal, as Microsoft's protocol gateway compares them; a
		// module's ClientId is {device}/{module}.
		return refuse("ClientId differs from the username's device (and module) ID", "clientId", clip(pk.Connect.ClientIdentifier))
	}
	if moduleID != "" {
		attrs = append(attrs, "moduleId", clip(moduleID))
	}
	// A password is a SAS token, whatever certificate the TLS connection also
	// presented. Without one (or with an empty one) the device authenticates
	// by its TLS client certificate
	// (docs/spec/iothub-protocol.md#x509-device-authentication).
	var chain []*x509.Certificate
	if len(pk.Connect.Password) == 0 {
		if chain = c.peerCertificates(); len(chain) == 0 {
			return refuse("no password and no TLS client certificate")
		}
		attrs = append(attrs, certAttrs(chain)...)
	}
	if h.Services == nil {
		c.srv.log.Error("mqtt: CONNECT refused: the listener has no hub services configured", attrs...)
		return nil, connServerUnavailable
	}
	hubName, settings, _ := c.srv.servedHub(hubName)
	ctx, cancel := context.WithTimeout(c.srv.ctx, c.srv.cfg.ConnectTimeout)
	var (
		id  *hub.Identity
		err error
	)
	switch {
	case chain != nil && moduleID != "":
		id, err = h.Registry.AuthenticateModuleCert(ctx, hubName, deviceID, moduleID, chain)
	case chain != nil:
		// The chain is not kept: the identity is all the session needs,
		// and its Expires is the leaf's NotAfter.
		id, err = h.Registry.AuthenticateDeviceCert(ctx, hubName, deviceID, chain)
	case moduleID != "":
		id, err = h.Registry.AuthenticateModule(ctx, settings, hubName, deviceID, moduleID, string(pk.Connect.Password))
	default:
		id, err = h.Registry.AuthenticateDevice(ctx, settings, hubName, deviceID, string(pk.Connect.Password))
	}
	cancel()
	if err != nil {
		// The cause (wrong key or certificate, expired, disabled, unknown
		// device) is for the log only; it carries no key material.
		if connackFor(err) == connNotAuthorized {
			if r := refusal.Of(err); r != nil {
				// The domain's reason, once, at info (refuse).
				return refuse("device authentication failed", r.LogAttrs()...)
			}
			return refuse("device authentication failed", "error", err.Error())
		}
		if ae := (*azerr.Error)(nil); errors.As(err, &ae) && ae.Status() == 429 {
			// berth serve --throttle: the operator asked for it.
			c.srv.log.Info("mqtt: CONNECT refused: throttled", append(attrs, "error", err.Error())...)
			return nil, connServerUnavailable
		}
		c.srv.log.Error("mqtt: CONNECT refused: device authentication could not complete", append(attrs, "error", err.Error())...)
		return nil, connServerUnavailable
	}
	if id == nil || id.Device == nil {
		c.srv.log.Error("mqtt: CONNECT refused: the registry returned no identity", attrs...)
		return nil, connServerUnavailable
	}
	var lifetime time.Duration
	if !id.Expires.IsZero() {
		if lifetime = id.Expires.Sub(h.Now()); lifetime <= 0 {
			return refuse("device credential expired")
		}
	}

	s := &hubSession{
		c:   c,
		hub: hubName, // the directory's string, shared by its sessions
		// Clones, so that the session does not keep the CONNECT buffer
		// or the device document alive.
		deviceID: strings.Clone(deviceID),
		moduleID: strings.Clone(moduleID),
		clean:    pk.Connect.Clean,
	}
	s.twinID = hub.TwinID(s.deviceID, s.moduleID)
	s.sender = hub.Sender{Hub: s.hub, DeviceID: s.deviceID, ModuleID: s.moduleID,
		GenerationID: strings.Clone(id.Device.GenerationID), AuthMethod: id.AuthMethod,
		ModelID: strings.Clone(query.Get(hubQueryModelID))}
	for i := range s.subs {
		s.subs[i].Store(-1)
	}
	if pk.Connect.WillFlag {
		s.setWill(pk)
	}
	c.keepalive = hubKeepAlive(pk.Connect.Keepalive)
	if lifetime > 0 {
		// MQTT 3.1.1 cannot re-authenticate in-band: IoT Hub closes the
		// connection when the token expires and the SDKs reconnect with a
		// fresh one
		// (docs/spec/iothub-protocol.md#mqtt-authentication-and-connack). A
		// certificate's end is treated alike: the connection must not outlive
		// the credential that opened it. A timer costs nothing until it
		// fires.
		s.expiry = time.AfterFunc(lifetime, s.expire)
	}
	// One live session per device: Links closes the one this replaces.
	// Nothing is written to the device before its CONNACK: every push
	// needs a subscription, and subscriptions (new or resumed) start
	// after the CONNACK (see started).
	replaced, _ := h.Links.Attach(s.hub, s.twinID, id.Credential(), s)
	s.resumeSession(replaced)
	s.disconnected = h.Registry.Connected(s.hub, s.twinID)
	c.srv.log.Debug("mqtt: IoT Hub device session", append(attrs,
		"apiVersion", clip(query.Get(hubQueryAPIVersion)), "clientType", clip(query.Get(hubQueryClientType)),
		"modelId", clip(s.sender.ModelID), "keepalive", pk.Connect.Keepalive, "cleanSession", pk.Connect.Clean,
		"sessionPresent", s.present, "tokenLifetime", lifetime.Round(time.Second), "will", s.will != nil)...)
	return s, connAccepted
}

// resumeSession finds the persistent session a CleanSession 0 CONNECT
// continues (docs/hub-wire.md, "MQTT sessions"): the state of the
// connection it just replaced when that one was persistent too (a
// reconnect often arrives before the old connection is noticed gone), else
// the state Links kept when the device's last connection ended. A
// CleanSession 1 CONNECT drops any kept state and starts without one.
func (s *hubSession) resumeSession(replaced hub.DeviceLink) {
	links := s.c.srv.cfg.Hub.Links
	if s.clean {
		links.Forget(s.hub, s.twinID)
		return
	}
	if old, ok := replaced.(*hubSession); ok && !old.clean {
		st := old.sessionState()
		s.resume, s.present = &st, true
		return
	}
	if st, ok := links.Resume(s.hub, s.twinID); ok {
		s.resume, s.present = &st, true
	}
}

// sessionState is what a persistent session keeps: the filter of each
// feature subscribed to and its granted QoS.
func (s *hubSession) sessionState() hub.SessionState {
	st := hub.SessionState{Subscriptions: map[string]byte{}}
	for f := range hubFeature(numHubFeatures) {
		if q := s.subs[f].Load(); q >= 0 {
			st.Subscriptions[featureFilter(f, s.deviceID)] = byte(q)
		}
	}
	return st
}

// featureFilter is the filter a kept subscription is remembered by: the
// one the SDKs send, which classifyHubFilter maps back to f.
func featureFilter(f hubFeature, deviceID string) string {
	switch f {
	case featureC2D:
		return devicesPrefix + deviceID + c2dFilterSuffix
	case featureTwinResponses:
		return twinResponseFilter
	case featureDesired:
		return desiredPrefix + "#"
	default:
		return methodsPrefix + "#"
	}
}

// sessionPresent is CONNACK's Session Present: a persistent session was
// resumed.
func (s *hubSession) sessionPresent() bool { return s.present }

// started runs on the reader once the CONNACK is written: a resumed
// session gets its subscriptions back and its deliveries start, as after a
// SUBACK.
func (s *hubSession) started() {
	if s.resume == nil {
		return
	}
	for filter, qos := range s.resume.Subscriptions {
		if f, ok := s.classifyFilter(filter); ok {
			s.subs[f].Store(int32(min(qos, 1)))
		}
	}
	s.resume = nil
	s.subscribed()
}

// Close ends the connection for the hub (hub.DeviceLink): a newer
// connection of the device replaced it, or its credential was revoked.
// The reader sees the closed socket and ends the session as usual.
func (s *hubSession) Close(reason hub.CloseReason) {
	s.c.srv.log.Info("mqtt: closing the device's connection: "+reason.String(),
		append(s.logAttrs(), "remote", s.c.remote)...)
	if reason == hub.CloseRevoked {
		s.revoked.Store(true)
	}
	s.c.close(false)
}

// setWill keeps the CONNECT's will if it would be accepted as telemetry from
// this device: IoT Hub only accepts a will on the device's own telemetry
// topic (docs/spec/iothub-protocol.md#mqtt-connect). Any other will is
// ignored (and logged) rather than refusing the connection, which would keep
// the device offline over an optional feature.
func (s *hubSession) setWill(pk *packets.Packet) {
	topic := pk.Connect.WillTopic
	dev, mod, bag, ok := topics.ParseTelemetry(topic)
	var reason string
	switch {
	case strings.ContainsAny(topic, "+#"):
		reason = "topic contains a wildcard"
	case !ok || mod != s.moduleID || dev != s.deviceID:
		reason = "topic is not the device's (or module's) telemetry topic"
	default:
		if _, _, err := topics.ParsePropertyBag(bag); err != nil {
			reason = "property bag: " + err.Error()
		}
	}
	if reason != "" {
		s.c.srv.log.Info("mqtt: will message ignored", append(s.logAttrs(), "remote", s.c.remote, "willTopic", clip(topic), "reason", reason)...)
		return
	}
	s.will = &hubWill{
		topic:   strings.Clone(topic),
		payload: append([]byte(nil), pk.Connect.WillPayload...),
		retain:  pk.Connect.WillRetain,
	}
}

func (s *hubSession) logAttrs() []any {
	if s.moduleID != "" {
		return []any{"deviceId", s.deviceID, "moduleId", s.moduleID}
	}
	return []any{"deviceId", s.deviceID}
}

// expire closes the connection when the device's token (or client
// certificate) runs out. The reader sees the closed socket and ends the
// session as usual.
func (s *hubSession) expire() {
	what := "device token"
	if s.x509() {
		what = "device certificate"
	}
	s.c.srv.log.Info("mqtt: "+what+" expired; closing the connection", append(s.logAttrs(), "remote", s.c.remote)...)
	s.c.close(false)
}

// x509 reports whether the device authenticated by certificate. The auth
// method stamp says so already; a field would cost every session.
func (s *hubSession) x509() bool {
	return strings.Contains(s.sender.AuthMethod, `"type":"x509`)
}

// classifyHubFilter tells which feature a SUBSCRIBE filter is for
// (docs/spec/iothub-protocol.md#mqtt-subscriptions, IoT Edge's
// SessionStateParser). Only the device's own cloud-to-device filter (or
// Embedded C's "+" form) is a C2D subscription: another device's is refused.
func classifyHubFilter(filter, deviceID string) (hubFeature, bool) {
	switch {
	case filter == twinResponseFilter || strings.HasPrefix(filter, topics.TwinResponsePrefix) && !strings.ContainsAny(filter, "+#"):
		// The exact response topic too ($iothub/twin/res/200/?$rid=1):
		// stock mosquitto_rr subscribes to the one answer it waits for,
		// as berth's DPS topics allow.
		return featureTwinResponses, true
	case strings.HasPrefix(filter, desiredPrefix):
		return featureDesired, true
	case strings.HasPrefix(filter, methodsPrefix):
		return featureMethods, true
	}
	if filter == "#" {
		// Microsoft's own mosquitto sample (Azure-Samples/IoTMQTTSample,
		// "Subscribe to events") receives cloud-to-device messages with
		// mosquitto_sub -t "#", and IoT Hub delivers them: "#" is the
		// device's C2D subscription, not a window on other topics.
		return featureC2D, true
	}
	rest, ok := strings.CutPrefix(filter, devicesPrefix)
	if !ok {
		return 0, false
	}
	dev, ok := strings.CutSuffix(rest, c2dFilterSuffix)
	if ok && (dev == deviceID || dev == "+") {
		return featureC2D, true
	}
	return 0, false
}

// classifyFilter is classifyHubFilter for this session. A module has twin
// and method topics but no cloud-to-device queue: IoT Hub delivers to
// modules through routes (module inputs), which berth does not have, so a
// module's C2D or input subscription is refused like any unknown filter.
func (s *hubSession) classifyFilter(filter string) (hubFeature, bool) {
	f, ok := classifyHubFilter(filter, s.deviceID)
	if ok && f == featureC2D && s.moduleID != "" {
		return 0, false
	}
	return f, ok
}

// subscribe grants the filters the SDKs subscribe on open, at QoS 1 at most;
// each feature is delivered at the QoS its filter was granted
// (docs/spec/iothub-protocol.md#mqtt-subscriptions). Any other filter
// (another device's topics, '#', module inputs) closes the connection, as IoT
// Hub does rather than answering 0x80
// (docs/spec/iothub-protocol.md#mqtt-sessions-qos-and-retain).
func (s *hubSession) subscribe(filter string, qos byte) (byte, error) {
	f, ok := s.classifyFilter(filter)
	if !ok {
		s.c.srv.log.Info("mqtt: SUBSCRIBE to a filter IoT Hub does not allow; closing the connection", append(s.logAttrs(), "remote", s.c.remote, "filter", clip(filter))...)
		return 0, fmt.Errorf("mqtt: SUBSCRIBE to %q is not allowed", clip(filter))
	}
	g := min(qos, 1)
	s.subs[f].Store(int32(g))
	return g, nil
}

// subscribed runs after the SUBACK: a method invocation waiting for the
// device to subscribe (connectTimeoutInSeconds) may go ahead, and the
// C2D queue is delivered from.
func (s *hubSession) subscribed() {
	if s.subs[featureMethods].Load() >= 0 {
		s.linksChanged()
	}
	if s.subs[featureC2D].Load() >= 0 {
		s.wakePump()
	}
}

func (s *hubSession) unsubscribe(filter string) {
	f, ok := s.classifyFilter(filter)
	if !ok {
		return
	}
	s.subs[f].Store(-1)
	if f == featureMethods {
		s.linksChanged()
	}
}

func (s *hubSession) linksChanged() {
	s.c.srv.cfg.Hub.Links.Changed()
}

// publish handles a device PUBLISH: twin requests and method responses
// (docs/hub-wire.md), else telemetry, which hub.Telemetry accepts, a QoS 1
// PUBLISH being acknowledged only once it is durable. Anything that is not
// acceptable closes the connection without PUBACK and without writing
// anything (MQTT has no per-message error; IoT Hub closes).
func (s *hubSession) publish(pk *packets.Packet) error {
	switch {
	case strings.HasPrefix(pk.TopicName, topics.TwinPrefix):
		return s.twinRequest(pk)
	case strings.HasPrefix(pk.TopicName, topics.MethodResponsePrefix):
		return s.methodResponse(pk)
	}
	m, err := s.telemetry(pk.TopicName, pk.Payload, pk.FixedHeader.Retain)
	if err != nil {
		return err
	}
	// Several messages of the connection may be in flight
	// (hubtelemetry.go); a message that is not accepted gets no PUBACK and
	// closes the connection: the device sends it again on its next
	// connection (unless it was refused, say as too large).
	if err := s.pipeTelemetry(m, pk.PacketID, pk.FixedHeader.Qos == 1); err != nil {
		if !errors.Is(err, errEarlierRefused) {
			s.logRefused("mqtt: telemetry not accepted; closing the connection", err)
		}
		return err
	}
	return nil
}

// logRefused logs a telemetry failure: the device's doing (an Azure 4xx
// such as 413) at INFO, berth's (the sink) at WARN.
func (s *hubSession) logRefused(msg string, err error) {
	attrs := append(s.logAttrs(), "remote", s.c.remote, "error", err.Error())
	var ae *azerr.Error
	if errors.As(err, &ae) && ae.Status() >= 400 && ae.Status() < 500 {
		s.c.srv.log.Info(msg, attrs...)
		return
	}
	s.c.srv.log.Warn(msg, attrs...)
}

// telemetry translates a PUBLISH (or the will) on topic into the message it
// carries, or says why the connection must close instead. The hub rules
// (size limit, stamps) are hub.Telemetry's.
func (s *hubSession) telemetry(topic string, payload []byte, retain bool) (*hub.Message, error) {
	dev, mod, bag, ok := topics.ParseTelemetry(topic)
	switch {
	case !ok:
		return nil, fmt.Errorf("mqtt: PUBLISH to %q: not a telemetry topic", clip(topic))
	case dev != s.deviceID || mod != s.moduleID:
		// A device may not send as its modules, nor a module as its
		// device or a sibling.
		s.c.srv.log.Info("mqtt: PUBLISH to another device's or module's topic; closing the connection", append(s.logAttrs(), "remote", s.c.remote, "topic", clip(topic))...)
		return nil, fmt.Errorf("mqtt: PUBLISH to %q: not this connection's topic", clip(topic))
	}
	sys, app, err := topics.ParsePropertyBag(bag)
	if err != nil {
		return nil, fmt.Errorf("mqtt: PUBLISH to %q: property bag: %w", clip(topic), err)
	}
	m := &hub.Message{System: sys, App: app, Body: payload}
	if retain {
		// Not retained (the hub is no broker), but marked
		// (docs/spec/iothub-protocol.md#mqtt-sessions-qos-and-retain). The
		// marker counts against the size limit like any property.
		topics.SetProperty(&m.App, propRetain, retainPropertyOn)
	}
	return m, nil
}

// accept hands m to hub.Telemetry and waits for the outcome. The call runs
// on a goroutine of its own so that however deep the sink's stack grows
// (NATS client, JSON, TLS), the reader's stays small: a reader stack grown
// once stays grown under every idle connection (see conn.serve).
func (s *hubSession) accept(m *hub.Message, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- s.acceptRecovering(m, timeout) }()
	return <-done
}

func (s *hubSession) acceptRecovering(m *hub.Message, timeout time.Duration) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.c.srv.panics.Add(1)
			s.c.srv.log.Error("mqtt: panic in the telemetry sink", append(s.logAttrs(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))...)
			err = errors.New("mqtt: panic in the telemetry sink")
		}
	}()
	// The server's context, not the connection's: a device that goes
	// away right after sending still gets a message that was complete
	// stored; only Shutdown (and the timeout) abandon an Accept.
	ctx, cancel := context.WithTimeout(s.c.srv.ctx, timeout)
	defer cancel()
	if err := s.c.srv.cfg.Hub.Telemetry.Accept(ctx, s.sender, m); err != nil {
		return fmt.Errorf("mqtt: telemetry: %w", err)
	}
	return nil
}

// close ends the session: stops the expiry timer, gives up the device's
// slot (unless a newer connection took it), keeping a persistent session's
// subscriptions for its next connection, and, when the connection ended
// without DISCONNECT, publishes the will.
//
// A will is published on every such end, as MQTT 3.1.1 §3.1.2.5 asks:
// network failure, keep-alive timeout, a protocol violation, a newer
// connection taking over and the token expiring (the will was
// authenticated with the connection). A revocation drops it, and so does
// Shutdown (the sink's context is gone).
func (s *hubSession) close(clean bool) {
	if s.expiry != nil {
		s.expiry.Stop()
	}
	var keep *hub.SessionState
	if !s.clean {
		st := s.sessionState()
		keep = &st
	}
	s.c.srv.cfg.Hub.Links.Detach(s.hub, s.twinID, s, keep)
	s.stopDeliveries()
	switch {
	case s.will == nil || clean:
	case s.revoked.Load():
		// The credential that authenticated the will is no longer the
		// device's: nothing more is accepted from that connection.
		s.c.srv.log.Info("mqtt: will message dropped: the device's credential was revoked", append(s.logAttrs(), "remote", s.c.remote)...)
	default:
		s.publishWill()
	}
	if s.disconnected != nil {
		s.disconnected()
	}
}

// publishWill appends the will as telemetry with iothub-MessageType=Will
// (docs/spec/iothub-protocol.md#mqtt-connect).
func (s *hubSession) publishWill() {
	attrs := append(s.logAttrs(), "remote", s.c.remote)
	if s.c.srv.ctx.Err() != nil {
		s.c.srv.log.Info("mqtt: will message dropped: the server is shutting down", attrs...)
		return
	}
	w := s.will
	m, err := s.telemetry(w.topic, w.payload, w.retain)
	if err != nil {
		s.c.srv.log.Info("mqtt: will message dropped", append(attrs, "error", err.Error())...)
		return
	}
	topics.SetProperty(&m.App, propMessageType, messageTypeWill)
	if err := s.accept(m, willTimeout); err != nil {
		s.c.srv.log.Warn("mqtt: will message not stored", append(attrs, "error", err.Error())...)
		return
	}
	s.c.srv.log.Debug("mqtt: will message published", attrs...)
}
