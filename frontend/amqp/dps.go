package amqp

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/refusal"
)

// DPS is the provisioning domain DPS over AMQP calls (the same calls as
// MQTT and HTTPS); *dps.Service satisfies it.
type DPS interface {
	// Authenticate checks a credential without registering: AMQP
	// refuses a wrong key at SASL.
	Authenticate(ctx context.Context, scope, regID, token string, certs []*x509.Certificate) error
	Register(ctx context.Context, req dps.RegisterRequest) (*dps.OperationStatus, error)
	OperationStatus(ctx context.Context, req dps.OperationRequest) (*dps.OperationStatus, error)
	// RetryAfter is the retry-after, in seconds, of answers still assigning.
	RetryAfter() int
}

// Application properties of DPS requests and answers
// (docs/spec/amqp-protocol.md#dps-over-amqp).
const (
	dpsOperationType = "iotdps-operation-type"
	dpsOperationID   = "iotdps-operation-id"
	dpsStatus        = "iotdps-status"
	dpsForce         = "iotdps-forceRegistration"
	dpsRetryAfter    = "retry-after"

	dpsOpRegister = "iotdps-register"
	dpsOpStatus   = "iotdps-get-operationstatus"
)

// dpsTimeout bounds one register or poll.
const dpsTimeout = 30 * time.Second

// maxDPSQueued bounds answers waiting for the device's credit. The SDKs
// wait for each answer before the next request, so only a client that
// asks without granting credit reaches it; its connection is closed.
const maxDPSQueued = 8

// dpsSession is the registration a connection authenticated — by SASL
// PLAIN ({scope}/registrations/{reg} and the SAS token) or by its TLS
// client certificate at the first attach — and the link berth answers on.
// A connection serves one registration, as the SDKs use it.
type dpsSession struct {
	c     *conn
	scope string
	regID string
	token string              // never logged
	certs []*x509.Certificate // X.509 attestation (token "")
	// refused, when set, is the answer to every request: the TLS client
	// certificate was refused (dpsSessionFor).
	refused *engine.Error

	mu    sync.Mutex
	out   *engine.Link
	queue []*engine.Message
}

// parseDPSUser splits a DPS SASL PLAIN user, {scope}/registrations/{reg}.
// Hub users ({device}@sas.{hub}) never hold a '/': device IDs cannot.
func parseDPSUser(user string) (scope, regID string, ok bool) {
	scope, rest, ok := strings.Cut(user, "/")
	if !ok || scope == "" {
		return "", "", false
	}
	seg, regID, ok := strings.Cut(rest, "/")
	if !ok || !strings.EqualFold(seg, "registrations") || regID == "" || strings.Contains(regID, "/") {
		return "", "", false
	}
	return scope, regID, true
}

// dpsPLAIN decides a SASL PLAIN exchange whose user is a DPS registration
// (handled false otherwise). The domain checks the token as it does for
// every request; a refusal is sasl-outcome auth, which the Node client
// reports at once (docs/amqp-wire.md, "DPS").
func (c *conn) dpsPLAIN(cred *engine.SASLCredentials) (code engine.SASLCode, handled bool) {
	scope, regID, ok := parseDPSUser(cred.Username)
	if !ok {
		return 0, false
	}
	d := c.srv.cfg.DPS
	if d == nil {
		c.srv.log.Info("amqp: SASL PLAIN refused: a DPS registration, but this listener serves no DPS", c.logAttrs("user", clip(cred.Username))...)
		return engine.SASLAuth, true
	}
	ctx, cancel := context.WithTimeout(c.srv.ctx, authTimeout)
	defer cancel()
	if err := d.Authenticate(ctx, scope, regID, cred.Password, nil); err != nil {
		if c.dpsRefused(scope, regID, err) {
			return engine.SASLAuth, true
		}
		return engine.SASLSysTemp, true
	}
	c.mu.Lock()
	c.dps = &dpsSession{c: c, scope: scope, regID: regID, token: cred.Password}
	c.mu.Unlock()
	return engine.SASLOK, true
}

// dpsRefused logs a refused DPS credential once, with the domain's reason,
// and reports whether it was a refusal (false: the check itself failed).
func (c *conn) dpsRefused(scope, regID string, err error) bool {
	attrs := c.logAttrs("idScope", clip(scope), "registrationId", clip(regID))
	ae := azerr.For(err, azerr.DPSInternal)
	if ae.Status() >= 500 {
		c.srv.log.Error("amqp: DPS credential could not be checked", append(attrs, "error", err.Error())...)
		return false
	}
	if r := refusal.Of(err); r != nil {
		attrs = append(attrs, r.LogAttrs()...)
	} else {
		attrs = append(attrs, "errorCode", ae.Code.Number(), "error", err.Error())
	}
	c.srv.log.Info("amqp: DPS credential refused", attrs...)
	return true
}

// attachDPS serves {scope}/registrations/{reg}: the device's sender brings
// register and poll requests, its receiver takes the answers. Without a
// PLAIN credential the TLS client certificate is the credential (X.509
// devices send no SASL), checked here.
func (c *conn) attachDPS(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	scope, regID := m.segs[0], m.deviceID
	s, e := c.dpsSessionFor(l, scope, regID)
	if e != nil {
		return nil, e
	}
	if l.Role() == engine.RoleSender {
		s.mu.Lock()
		s.out = l
		s.mu.Unlock()
		return &dpsOut{s: s}, nil
	}
	// Room for the properties beside the largest body DPS takes; the
	// domain's limit decides.
	l.SetMaxMessageSize(dps.MaxMessageSize + 16*1024)
	return &dpsIn{s: s}, nil
}

func (c *conn) dpsSessionFor(l *engine.Link, scope, regID string) (*dpsSession, *engine.Error) {
	d := c.srv.cfg.DPS
	if d == nil {
		return nil, linkError(engine.ErrCondNotFound, "The address %q is not served: no DPS here.", clip(l.Address()))
	}
	c.mu.Lock()
	s := c.dps
	c.mu.Unlock()
	if s != nil {
		if !strings.EqualFold(s.scope, scope) || !strings.EqualFold(s.regID, regID) {
			return nil, linkError(engine.ErrCondUnauthorizedAccess, "This connection authenticated registration %s/registrations/%s, not %s.", clip(s.scope), clip(s.regID), clip(l.Address()))
		}
		return s, nil
	}
	certs := l.Conn().PeerCertificates()
	if len(certs) == 0 {
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "No credential for registration %s: SASL PLAIN with a SAS token or a TLS client certificate is needed.", clip(regID))
	}
	ctx, cancel := context.WithTimeout(c.srv.ctx, authTimeout)
	defer cancel()
	if err := d.Authenticate(ctx, scope, regID, "", certs); err != nil {
		// The links attach and every request is rejected with the
		// refusal: the Node client takes a refused attach for an attached
		// link and then hangs in its own disconnect, while a rejected
		// request it reports at once. The connection stays
		// unauthenticated, so the engine's deadline still ends it.
		e := linkError(engine.ErrCondInternalError, "The certificate could not be checked.")
		if c.dpsRefused(scope, regID, err) {
			ae := azerr.For(err, azerr.DPSInvalidCredentials)
			e = linkError(engine.ErrCondUnauthorizedAccess, "%d:%s", ae.Code.Number(), ae.Message)
		}
		c.mu.Lock()
		if c.dps == nil {
			c.dps = &dpsSession{c: c, scope: scope, regID: regID, refused: e}
		}
		c.mu.Unlock()
		return c.dpsSessionFor(l, scope, regID)
	}
	c.mu.Lock()
	if c.dps == nil {
		c.dps = &dpsSession{c: c, scope: scope, regID: regID, certs: certs}
	}
	s = c.dps
	c.mu.Unlock()
	l.Conn().Authenticated(nil)
	return c.dpsSessionFor(l, scope, regID)
}

// dpsIn receives requests, one at a time and in order, off the reader.
type dpsIn struct {
	s *dpsSession
	q serial
}

func (in *dpsIn) Message(l *engine.Link, dl *engine.Delivery) {
	in.q.do(func() { in.s.request(dl) })
}

func (in *dpsIn) Detached(*engine.Link, *engine.Error) {}

// dpsOut is the link answers go out on.
type dpsOut struct{ s *dpsSession }

func (o *dpsOut) Credit(*engine.Link) { o.s.flush() }

func (o *dpsOut) Detached(l *engine.Link, _ *engine.Error) {
	o.s.mu.Lock()
	if o.s.out == l {
		o.s.out = nil
	}
	o.s.mu.Unlock()
}

// request makes one register or poll call and answers it
// (docs/amqp-wire.md, "DPS"): an answer on the device's receiver and the
// request accepted; a throttled or failed call is the request rejected
// with retry-after, which the SDK retries; a credential that no longer
// holds is rejected as unauthorized.
func (s *dpsSession) request(dl *engine.Delivery) {
	if s.refused != nil {
		_ = dl.Reject(s.refused)
		return
	}
	d := s.c.srv.cfg.DPS
	m := dl.Message
	kind := appString(m, dpsOperationType)
	ctx, cancel := context.WithTimeout(dl.Link().Conn().Context(), dpsTimeout)
	defer cancel()
	var (
		op  *dps.OperationStatus
		err error
	)
	switch kind {
	case dpsOpRegister:
		force, _ := appValue(m, dpsForce).(bool)
		op, err = d.Register(ctx, dps.RegisterRequest{IDScope: s.scope, RegistrationID: s.regID,
			Token: s.token, ClientCerts: s.certs, Body: body(m), Force: force})
	case dpsOpStatus:
		op, err = d.OperationStatus(ctx, dps.OperationRequest{IDScope: s.scope, RegistrationID: s.regID,
			OperationID: appString(m, dpsOperationID), Token: s.token, ClientCerts: s.certs})
	default:
		err = azerr.Newf(azerr.DPSBadRequest, "The operation type %q is not a DPS request.", clip(kind))
	}
	if err == nil && op == nil {
		err = azerr.Wrap(azerr.DPSInternal, errors.New("domain returned neither status nor error"))
	}
	if err != nil {
		if ctx.Err() != nil && dl.Link().Conn().Context().Err() != nil {
			return // the connection is gone: nobody to answer
		}
		var e *engine.Error
		if op, e = s.failure(kind, appString(m, dpsOperationID), err); e != nil {
			_ = dl.Reject(e)
			return
		}
	}
	var corr any
	if m.Properties != nil {
		corr = m.Properties.CorrelationID
	}
	payload, jerr := encodeJSON(op)
	if jerr != nil {
		s.c.srv.log.Error("amqp: encode DPS answer", s.c.logAttrs("registrationId", s.regID, "error", jerr.Error())...)
		_ = dl.Reject(linkError(engine.ErrCondInternalError, "The answer could not be encoded."))
		return
	}
	props := engine.Map{
		{Key: dpsOperationType, Value: kind},
		{Key: dpsStatus, Value: op.Status},
		{Key: dpsOperationID, Value: op.OperationID},
	}
	if !op.Terminal() {
		props = append(props, engine.KV{Key: dpsRetryAfter, Value: strconv.Itoa(d.RetryAfter())})
	}
	s.c.srv.log.Debug("amqp: DPS answer", s.c.logAttrs("registrationId", s.regID, "kind", kind, "operationStatus", op.Status)...)
	// The correlation-id goes back as a string: Node looks answers up by
	// it as an object key, and a uuid would reach it as a Buffer.
	s.send(&engine.Message{Properties: &engine.Properties{CorrelationID: idString(corr)},
		ApplicationProperties: props, Data: [][]byte{payload}})
	_ = dl.Accept()
}

// failure turns a domain error into the answer DPS gives over AMQP
// (docs/amqp-wire.md, "DPS"): throttling and server errors reject the
// request with retry-after (the SDKs retry those), a credential refused
// rejects it as unauthorized, and anything else is an operation in status
// failed carrying the error: the Node client needs a status in every
// answer, or it waits until its own timeout.
func (s *dpsSession) failure(kind, opID string, err error) (*dps.OperationStatus, *engine.Error) {
	ae := azerr.For(err, azerr.DPSInternal)
	desc := fmt.Sprintf("%d:%s", ae.Code.Number(), ae.Message)
	st := ae.Status()
	switch {
	case st == 429 || st >= 500:
		cond := engine.ErrCondInternalError
		if st == 429 {
			cond = condThrottled
		} else {
			s.c.srv.log.Error("amqp: DPS request failed", s.c.logAttrs("registrationId", s.regID, "kind", kind, "error", err.Error())...)
			desc = fmt.Sprintf("%d:%s", ae.Code.Number(), "The request could not be completed.")
		}
		// The domain's own wait when it gave one (a throttle's), else the
		// DPS's retry-after, in whole seconds rounded up.
		after := s.c.srv.cfg.DPS.RetryAfter()
		if ae.RetryAfter > 0 {
			after = int((ae.RetryAfter + time.Second - 1) / time.Second)
		}
		return nil, &engine.Error{Condition: cond, Description: desc,
			Info: engine.Map{{Key: engine.Symbol(dpsRetryAfter), Value: strconv.Itoa(after)}}}
	case st == 401 || st == 403:
		s.c.dpsRefused(s.scope, s.regID, err)
		return nil, &engine.Error{Condition: engine.ErrCondUnauthorizedAccess, Description: desc}
	}
	s.c.srv.log.Debug("amqp: DPS request refused", s.c.logAttrs("registrationId", s.regID, "kind", kind, "errorCode", ae.Code.Number(), "message", ae.Message)...)
	return &dps.OperationStatus{OperationID: opID, Status: dps.StatusFailed,
		RegistrationState: &dps.RegistrationState{RegistrationID: s.regID, Status: dps.StatusFailed,
			ErrorCode: ae.Code.Number(), ErrorMessage: ae.Message}}, nil
}

// send queues an answer and sends what the device's credit allows.
func (s *dpsSession) send(m *engine.Message) {
	s.mu.Lock()
	if len(s.queue) >= maxDPSQueued {
		s.mu.Unlock()
		s.c.srv.log.Info("amqp: DPS answers not taken by the device; closing its connection", s.c.logAttrs("registrationId", s.regID)...)
		s.c.closeConn(linkError(engine.ErrCondResourceLimitExceeded, "DPS answers are not being received."))
		return
	}
	s.queue = append(s.queue, m)
	s.mu.Unlock()
	s.flush()
}

// flush sends queued answers, pre-settled, while there is credit.
func (s *dpsSession) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 && s.out != nil {
		if _, err := s.out.Send(s.queue[0], true); err != nil {
			return // no credit: Credit calls flush again
		}
		s.queue = s.queue[1:]
	}
}

// appValue is an application property of any type (nil when absent).
func appValue(m *engine.Message, key string) any {
	v, _ := m.ApplicationProperty(key)
	return v
}

// encodeJSON marshals without HTML escaping: DPS answers carry base64
// keys and etags, which Azure prints verbatim.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("amqp: encode %T: %w", v, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
