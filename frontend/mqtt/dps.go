package mqtt

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/refusal"
)

// DPS is the provisioning domain the DPS session calls; *dps.Service
// satisfies it.
type DPS interface {
	Register(ctx context.Context, req dps.RegisterRequest) (*dps.OperationStatus, error)
	OperationStatus(ctx context.Context, req dps.OperationRequest) (*dps.OperationStatus, error)
	// RetryAfter is the retry-after, in seconds, put on 202 and 429 answers.
	RetryAfter() int
}

// Kinds of DPS publish topic returned by ParseDPSTopic.
const (
	// TopicRegister is $dps/registrations/PUT/iotdps-register/?$rid={rid}.
	TopicRegister = "iotdps-register"
	// TopicOperationStatus is
	// $dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}.
	TopicOperationStatus = "iotdps-get-operationstatus"
	// TopicUnknown is any other topic under $dps/ that carries a $rid: it
	// is answered res/400 (docs/spec/dps-protocol.md#mqtt-topics).
	TopicUnknown = "unknown"
)

const (
	dpsTopicPrefix     = "$dps/"
	dpsRegisterTopic   = "$dps/registrations/PUT/iotdps-register/"
	dpsOperationTopic  = "$dps/registrations/GET/iotdps-get-operationstatus/"
	dpsResponseFilter  = "$dps/registrations/res/#"
	dpsResponsePrefix  = "$dps/registrations/res/"
	dpsRegistrationSeg = "registrations"
)

// ParseDPSUsername parses a DPS MQTT username
// (docs/spec/dps-protocol.md#mqtt-connect):
//
//	{idScope}/registrations/{registrationId}/api-version={v}[&ClientVersion={ua}]
//
// The ID scope is everything before the first '/', the next segment must be
// "registrations", and the registration ID runs to the next '/'
// (registration IDs never contain one). Everything after that '/' is a
// query that may itself contain unescaped '/' (Embedded C sends its user
// agent raw): '&'-separated pairs, split at the first '=', values
// percent-decoded ('+' stays '+', as in Uri.UnescapeDataString). A value
// that is not valid percent-encoding is kept as sent, since only
// informational keys (ClientVersion) carry free text. Keys are
// case-sensitive; unknown keys are kept, for the caller to ignore. A bare
// {idScope}/registrations/{registrationId} has an empty query.
//
// The registration ID is not checked against Azure's ID rules here: the
// domain answers an invalid one with a 400 the device can read, which beats
// a bare CONNACK refusal.
func ParseDPSUsername(username string) (scope, regID string, query url.Values, err error) {
	scope, rest, ok := strings.Cut(username, "/")
	if !ok || scope == "" {
		return "", "", nil, errors.New("username has no ID scope")
	}
	seg, rest, ok := strings.Cut(rest, "/")
	if !ok || seg != dpsRegistrationSeg {
		return "", "", nil, fmt.Errorf("second username segment is not %q", dpsRegistrationSeg)
	}
	regID, rest, _ = strings.Cut(rest, "/")
	if regID == "" {
		return "", "", nil, errors.New("username has no registration ID")
	}
	// '?', '=' or '&' in the ID segment mean the '/' before the query is
	// missing, or this is the IoT Hub form of a device named
	// "registrations" ({hub}/registrations/?api-version=…).
	if strings.ContainsAny(regID, "?=&") {
		return "", "", nil, errors.New("registration ID segment contains query characters")
	}
	// DPS queries never start with '?'; the IoT Hub module form does
	// ({hub}/{deviceId}/{moduleId}/?api-version=…).
	if strings.HasPrefix(rest, "?") {
		return "", "", nil, errors.New("query starts with '?' (IoT Hub username form)")
	}
	return scope, regID, parseQuery(rest), nil
}

// looksLikeDPSUsername reports whether a username was meant for DPS, to
// tell "malformed DPS username" from "some other protocol" in the logs.
func looksLikeDPSUsername(username string) bool {
	_, rest, ok := strings.Cut(username, "/")
	seg, _, _ := strings.Cut(rest, "/")
	return ok && seg == dpsRegistrationSeg
}

func parseQuery(s string) url.Values {
	q := url.Values{}
	for pair := range strings.SplitSeq(s, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if dec, err := url.PathUnescape(v); err == nil {
			v = dec
		}
		q[k] = append(q[k], v)
	}
	return q
}

// ParseDPSTopic classifies a device PUBLISH topic
// (docs/spec/dps-protocol.md#mqtt-topics). ok is false when the topic cannot
// be answered at all (not under $dps/, or an unknown $dps/ topic without
// $rid): the connection is then closed. Otherwise kind is TopicRegister,
// TopicOperationStatus or TopicUnknown.
//
// ridRaw is the first $rid value exactly as sent, for echoing byte for byte
// (Python percent-encodes it; the echo must not decode it). A missing $rid is
// tolerated on the two request topics and echoed empty: Azure answered
// "?rid=1" (no '$') with "?$rid=" (MicrochipTech trace,
// docs/spec/dps-protocol.md#test-vectors, vector 15), so "rid" is just an
// unknown key. operationID is the first operationId value, percent-decoded
// (Python encodes it); it is kept raw if it does not decode. Other keys are
// ignored.
func ParseDPSTopic(topic string) (kind, ridRaw, operationID string, ok bool) {
	if !strings.HasPrefix(topic, dpsTopicPrefix) {
		return "", "", "", false
	}
	path, query, _ := strings.Cut(topic, "?")
	var haveRid, haveOp bool
	for pair := range strings.SplitSeq(query, "&") {
		k, v, _ := strings.Cut(pair, "=")
		switch {
		case k == "$rid" && !haveRid:
			ridRaw, haveRid = v, true
		case k == "operationId" && !haveOp:
			operationID, haveOp = v, true
			if dec, err := url.PathUnescape(v); err == nil {
				operationID = dec
			}
		}
	}
	switch path {
	case dpsRegisterTopic:
		return TopicRegister, ridRaw, "", true
	case dpsOperationTopic:
		return TopicOperationStatus, ridRaw, operationID, true
	}
	if haveRid {
		return TopicUnknown, ridRaw, "", true
	}
	return "", "", "", false
}

// responseTopic is $dps/registrations/res/{status}/?$rid={rid}, then
// &retry-after={n} on 202, 429 and 503. $rid comes first and nothing precedes
// it: Python reads only the keys after the second '$', and C# requires
// "/?$rid=" right after the status (docs/spec/dps-protocol.md#mqtt-topics).
func responseTopic(status int, rid string, retryAfter int) string {
	var b strings.Builder
	b.Grow(len(dpsResponsePrefix) + len(rid) + 32)
	b.WriteString(dpsResponsePrefix)
	b.WriteString(strconv.Itoa(status))
	b.WriteString("/?$rid=")
	b.WriteString(rid)
	if status == 202 || status == 429 || status == 503 {
		// Every 202 and 429 carries retry-after
		// (docs/spec/dps-protocol.md#retry-after-and-polling: the Embedded-C
		// sample sleeps exactly that long, 0 if absent); the SDKs retry 503
		// the same way, as the REST front end answers it.
		b.WriteString("&retry-after=")
		b.WriteString(strconv.Itoa(retryAfter))
	}
	return b.String()
}

// errorBody is Azure's ProvisioningServiceErrorDetails
// (docs/spec/dps-protocol.md#errors).
type errorBody struct {
	ErrorCode    int               `json:"errorCode"`
	TrackingID   string            `json:"trackingId"`
	Message      string            `json:"message"`
	Info         map[string]string `json:"info,omitempty"`
	TimestampUTC dps.Time          `json:"timestampUtc"`
}

// dpsSession is a device's DPS registration connection. Its identity comes
// from the username; its credential, the SAS token (the MQTT password) or,
// without one, the TLS client certificate chain, is checked by the domain
// on every request, as Azure accepts CONNECT and answers a bad key with
// res/401 (docs/spec/dps-protocol.md#mqtt-connect).
type dpsSession struct {
	c     *conn
	d     DPS
	scope string
	regID string
	token string // the SAS token; never logged
	// certs is the TLS client chain, leaf first, when there is no token
	// (X.509 attestation, docs/spec/dps-protocol.md#x509-attestation); nil
	// otherwise. It is crypto/tls's slice, which the tls.Conn keeps anyway:
	// one slice header per session.
	certs []*x509.Certificate

	// subQoS is the granted QoS of $dps/registrations/res/#, -1 while not
	// subscribed. Written by the reader, read by request goroutines.
	subQoS atomic.Int32

	// extra are the narrower response filters (see subscribe), guarded by
	// mu: written by the reader, read by request goroutines.
	mu    sync.Mutex
	extra []extraFilter

	// inflight is the request being answered (at most one) and cancel
	// its context; both are touched only by the reader goroutine.
	inflight sync.WaitGroup
	cancel   context.CancelFunc

	// auth remembers the session's authentication for its polls
	// (dps.SessionAuth); allocated by the first request, so an idle
	// session does not carry it.
	auth atomic.Pointer[dps.SessionAuth]
}

// sessionAuth returns the session's dps.SessionAuth, allocating it once.
func (s *dpsSession) sessionAuth() *dps.SessionAuth {
	if a := s.auth.Load(); a != nil {
		return a
	}
	s.auth.CompareAndSwap(nil, &dps.SessionAuth{})
	return s.auth.Load()
}

// maxExtraFilters bounds the narrower response filters one connection may
// hold, so per-connection memory stays bounded.
const maxExtraFilters = 8

type extraFilter struct {
	filter string
	qos    byte
}

// newDPSSession starts a DPS session from a CONNECT.
//
// ClientId is not required to equal the registration ID (what Azure enforces
// is not documented, docs/spec/dps-protocol.md#mqtt-connect). Every SDK sends
// the registration ID, but raw MQTT tools pick their own client IDs, and the
// identity that matters, the username's registration ID, is what the SAS
// token is verified against on each request: refusing a mismatch would
// protect nothing and would break those clients. A mismatch is logged.
//
// CleanSession 0 is accepted like 1: DPS keeps no session state, and an
// empty ClientId with CleanSession 0 is accepted for the same reason.
//
// A CONNECT without a password (or with an empty one) on a connection that
// presented a TLS client certificate registers by certificate. The
// certificate is not judged here, not even its CN against the registration
// ID: like a wrong key, a certificate that enrolls nothing is answered
// res/401 (401002) on the response topic, which every SDK reports, rather
// than a bare CONNACK refusal (docs/spec/dps-protocol.md#mqtt-connect,
// "Authentication timing"). Without password and certificate, the session
// still opens and each request is answered 401000, as before.
func (c *conn) newDPSSession(pk *packets.Packet, scope, regID string, query url.Values) *dpsSession {
	s := &dpsSession{
		c:     c,
		d:     c.srv.dps,
		scope: scope,
		regID: regID,
		token: string(pk.Connect.Password),
	}
	if s.token == "" {
		s.certs = c.peerCertificates()
	}
	s.subQoS.Store(-1)
	attrs := append(s.logAttrs(), "remote", c.remote,
		"apiVersion", query.Get("api-version"), "clientVersion", clip(query.Get("ClientVersion")),
		"keepalive", pk.Connect.Keepalive, "cleanSession", pk.Connect.Clean, "auth", s.authKind())
	attrs = append(attrs, certAttrs(s.certs)...)
	if !strings.EqualFold(pk.Connect.ClientIdentifier, regID) {
		attrs = append(attrs, "clientId", clip(pk.Connect.ClientIdentifier), "note", "ClientId differs from the registration ID")
	}
	c.srv.log.Debug("mqtt: DPS session", attrs...)
	return s
}

// authKind names the session's credential for log lines.
func (s *dpsSession) authKind() string {
	switch {
	case s.token != "":
		return "sas"
	case len(s.certs) > 0:
		return "x509"
	}
	return "none"
}

func (s *dpsSession) logAttrs() []any {
	return []any{"idScope", s.scope, "registrationId", s.regID}
}

// subscribe grants $dps/registrations/res/#, the filter every SDK uses, at
// QoS 1 at most (a QoS 2 request is granted 1, as Azure does). It also
// grants exact response topics under $dps/registrations/res/ (no
// wildcards, which Azure does not support beyond res/#): stock mosquitto_rr
// refuses a wildcard response topic, so a shell user waits for the exact
// answer it expects, e.g. -e '$dps/registrations/res/202/?$rid=1&retry-after=3'.
// Such a subscription can only ever receive this connection's own answers.
// Anything else is refused with 0x80.
func (s *dpsSession) subscribe(filter string, qos byte) (byte, error) {
	g := min(qos, 1)
	if filter == dpsResponseFilter {
		s.subQoS.Store(int32(g))
		return g, nil
	}
	if !strings.HasPrefix(filter, dpsResponsePrefix) || strings.ContainsAny(filter, "+#") {
		s.c.srv.log.Debug("mqtt: DPS SUBSCRIBE refused", append(s.logAttrs(), "filter", clip(filter))...)
		return subackFailure, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.extra {
		if s.extra[i].filter == filter {
			s.extra[i].qos = g
			return g, nil
		}
	}
	if len(s.extra) >= maxExtraFilters {
		s.c.srv.log.Debug("mqtt: DPS SUBSCRIBE refused: too many filters", append(s.logAttrs(), "filter", clip(filter))...)
		return subackFailure, nil
	}
	s.extra = append(s.extra, extraFilter{filter: filter, qos: g})
	return g, nil
}

func (s *dpsSession) unsubscribe(filter string) {
	if filter == dpsResponseFilter {
		s.subQoS.Store(-1)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.extra {
		if s.extra[i].filter == filter {
			s.extra = append(s.extra[:i], s.extra[i+1:]...)
			return
		}
	}
}

// deliveryQoS is the QoS an answer on topic goes out at: the highest
// granted QoS of the subscriptions it matches, -1 when none does.
func (s *dpsSession) deliveryQoS(topic string) int32 {
	q := s.subQoS.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.extra {
		if int32(f.qos) > q && f.filter == topic {
			q = int32(f.qos)
		}
	}
	return q
}

// puback accepts the client's acknowledgement of a response. Nothing is
// kept for redelivery, so an unknown ID is as good as a known one.
func (s *dpsSession) puback(uint16) {}

// publish handles a register or poll request. The PUBACK of a QoS 1 request
// goes out before the response: the C# transport treats the packet after its
// PUBLISH as the PUBACK (docs/spec/dps-protocol.md#mqtt-qos-and-ordering).
func (s *dpsSession) publish(pk *packets.Packet) error {
	kind, rid, opID, ok := ParseDPSTopic(pk.TopicName)
	if !ok {
		return fmt.Errorf("mqtt: PUBLISH to %q is not a DPS request", clip(pk.TopicName))
	}
	// One request at a time: every SDK waits for an answer before its
	// next request, and this bounds what one connection can ask of the
	// domain. It also keeps PUBACK n+1 after response n.
	s.inflight.Wait()
	if pk.FixedHeader.Qos == 1 {
		if err := s.c.puback(pk.PacketID); err != nil {
			return err
		}
	}
	switch {
	case kind == TopicUnknown:
		s.fail(rid, azerr.Newf(azerr.DPSBadRequest, "The topic is not a DPS request topic."))
		return nil
	case len(pk.Payload) > dps.MaxMessageSize:
		// Refused here so that an oversized register reaches no domain
		// code and writes nothing.
		s.fail(rid, azerr.Wrap(azerr.DPSTooLarge, fmt.Errorf("PUBLISH body of %d bytes", len(pk.Payload))))
		return nil
	}
	// The domain call runs beside the reader so that a client that goes
	// away (or Shutdown) cancels it: the reader sees the close and
	// session.close cancels this context.
	ctx, cancel := context.WithCancel(s.c.srv.ctx)
	s.cancel = cancel
	s.inflight.Add(1)
	go func() {
		defer s.inflight.Done()
		defer cancel()
		s.handle(ctx, kind, rid, opID, pk.Payload)
	}()
	return nil
}

// handle makes the domain call and answers it. rid, opID and body alias
// the request packet's buffer, which is never reused.
func (s *dpsSession) handle(ctx context.Context, kind, rid, opID string, body []byte) {
	defer func() {
		if v := recover(); v != nil {
			s.c.srv.panics.Add(1)
			s.c.srv.log.Error("mqtt: panic in DPS request", append(s.logAttrs(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))...)
			s.fail(rid, azerr.Wrap(azerr.DPSInternal, fmt.Errorf("panic: %v", v)))
		}
	}()
	var (
		op     *dps.OperationStatus
		err    error
		status int
	)
	switch kind {
	case TopicRegister:
		op, err = s.d.Register(ctx, dps.RegisterRequest{
			IDScope:        s.scope,
			RegistrationID: s.regID,
			Token:          s.token,
			ClientCerts:    s.certs,
			Body:           body,
			Session:        s.sessionAuth(),
		})
		// An accepted registration is 202, as over HTTPS
		// (docs/spec/dps-protocol.md#device-api-over-https): the outcome is
		// reported by polling.
		status = 202
	case TopicOperationStatus:
		op, err = s.d.OperationStatus(ctx, dps.OperationRequest{
			IDScope:        s.scope,
			RegistrationID: s.regID,
			OperationID:    opID,
			Token:          s.token,
			ClientCerts:    s.certs,
			Session:        s.sessionAuth(),
		})
		status = 202
		if op != nil && op.Terminal() {
			status = 200
		}
	default:
		err = azerr.Wrap(azerr.DPSInternal, fmt.Errorf("no handler for topic kind %q", kind))
	}
	if err == nil && op == nil {
		err = azerr.Wrap(azerr.DPSInternal, errors.New("domain returned neither status nor error"))
	}
	if err != nil {
		if ctx.Err() != nil {
			// The connection is gone; nobody is left to answer.
			s.c.srv.log.Debug("mqtt: DPS request abandoned", append(s.logAttrs(), "kind", kind, "error", err.Error())...)
			return
		}
		s.fail(rid, err)
		return
	}
	s.c.srv.log.Debug("mqtt: DPS answer", append(s.logAttrs(), "kind", kind, "rid", clip(rid), "status", status, "operationStatus", op.Status)...)
	s.respond(status, rid, op)
}

// fail answers with err as a DPS error body: status errorCode/1000, which
// Embedded C relies on (docs/spec/dps-protocol.md#errors). Errors that are
// not *azerr.Error are internal: their cause is logged, never sent.
func (s *dpsSession) fail(rid string, err error) {
	e, body := s.c.srv.errorAnswer("mqtt: DPS error answer", append(s.logAttrs(), "remote", s.c.remote, "rid", clip(rid)), azerr.For(err, azerr.DPSInternal))
	s.respondAfter(e.Status(), rid, body, retryAfterSeconds(e, s.d.RetryAfter()))
}

// errorAnswer makes the error body DPS and the IoT Hub twin topics share
// (Azure's {"errorCode","trackingId","message","timestampUtc"}) from e's
// azerr entry and logs it: server errors at Error level, with their
// cause, the rest at Debug. The status on the topic is e.Status().
func (s *Server) errorAnswer(msg string, attrs []any, e *azerr.Error) (*azerr.Error, errorBody) {
	body := errorBody{
		ErrorCode:    e.Code.Number(),
		TrackingID:   dps.NewTrackingID(),
		Message:      e.Message,
		Info:         e.Info,
		TimestampUTC: dps.Time{Time: time.Now().UTC()},
	}
	attrs = append(attrs, "status", e.Status(), "errorCode", e.Code.Number(), "errorName", e.Code.Name(), "trackingId", body.TrackingID)
	if r := refusal.Of(e); r != nil {
		// A refused credential: once at info, with the domain's reason
		// (the device sees only 401, as from Azure).
		s.log.Info("mqtt: authentication refused", append(attrs, r.LogAttrs()...)...)
		return e, body
	}
	attrs = append(attrs, "message", e.Message)
	if e.Err != nil {
		attrs = append(attrs, "cause", e.Err.Error())
	}
	if e.Status() >= 500 {
		s.log.Error(msg, attrs...)
	} else {
		s.log.Debug(msg, attrs...)
	}
	return e, body
}

// respond publishes an answer to this connection only, at the QoS its
// subscription was granted. Without a subscription the answer has nowhere
// to go and is dropped.
func (s *dpsSession) respond(status int, rid string, v any) {
	s.respondAfter(status, rid, v, s.d.RetryAfter())
}

// retryAfterSeconds is the retry-after of an error answer: the domain's
// wait (a throttle's) in whole seconds, rounded up, or def.
func retryAfterSeconds(e *azerr.Error, def int) int {
	if e.RetryAfter <= 0 {
		return def
	}
	return int((e.RetryAfter + time.Second - 1) / time.Second)
}

// respondAfter is respond with the retry-after its topic carries on 202,
// 429 and 503.
func (s *dpsSession) respondAfter(status int, rid string, v any, retryAfter int) {
	payload, err := encodeJSON(v)
	if err != nil {
		// Only a broken Info map could get here; the fixed fields of
		// every answer always encode.
		s.c.srv.log.Error("mqtt: encode DPS answer", append(s.logAttrs(), "error", err.Error())...)
		status = 500
		payload = []byte(`{"errorCode":500000,"trackingId":"` + dps.NewTrackingID() + `","message":"Internal server error."}`)
	}
	topic := responseTopic(status, rid, retryAfter)
	qos := s.deliveryQoS(topic)
	if qos < 0 {
		s.c.srv.log.Debug("mqtt: DPS answer dropped: no subscription matches", append(s.logAttrs(), "rid", clip(rid), "status", status)...)
		return
	}
	if err := s.c.publish(topic, byte(qos), payload); err != nil {
		s.c.srv.log.Debug("mqtt: DPS answer not delivered", append(s.logAttrs(), "rid", clip(rid), "status", status, "error", err.Error())...)
	}
}

// close cancels the request in flight and waits for it. DPS has no will
// messages: a will in a DPS CONNECT is ignored.
func (s *dpsSession) close(bool) {
	if s.cancel != nil {
		s.cancel()
	}
	s.inflight.Wait()
}

// encodeJSON marshals without HTML escaping: bodies carry base64 keys and
// etags, which Azure prints verbatim.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("mqtt: encode %T: %w", v, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// clip bounds client-chosen text in log lines.
func clip(s string) string {
	const limit = 256
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "…"
}
