package amqp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/eventhubs"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/refusal"
	"github.com/berth-iot/berth/sas"
)

// authTimeout bounds one credential check (CBS put-token, certificate).
const authTimeout = 10 * time.Second

// grant is what one credential authorises on a connection: a device (CBS
// {hub}/devices/{d}, SASL PLAIN {d}@sas.{hub}, or the TLS client
// certificate) or a service policy (CBS {hub}[/path]). A CBS renewal for
// the same audience replaces its expiry; when it expires the links it
// authorised are detached.
type grant struct {
	key      string // lower-cased hub and audience path
	hub      string
	settings *hub.Settings
	deviceID string        // device and module grants
	moduleID string        // module grants
	identity *hub.Identity // device and module grants
	path     []string      // service grants: the audience below the hub
	token    string        // service grants: the token, checked again when the hub's policies change
	expires  time.Time     // zero: none
	timer    *time.Timer
	links    map[*engine.Link]struct{}
}

// conn is one AMQP connection: the engine's Handler and what it
// authenticated.
type conn struct {
	srv    *Server
	cbs    *engine.Node
	ehMgmt *engine.Node // the Event Hubs $management node

	mu      sync.Mutex
	ec      *engine.Conn
	closed  bool
	grants  map[string]*grant
	devices map[string]*device // live device sessions, by hub/deviceID
	dps     *dpsSession        // the DPS registration authenticated (dps.go)
}

func newConn(s *Server) *conn {
	c := &conn{srv: s, grants: map[string]*grant{}, devices: map[string]*device{}}
	c.cbs = &engine.Node{Serve: c.serveCBS}
	c.ehMgmt = &engine.Node{Serve: c.serveEHManagement}
	return c
}

func (c *conn) hubCfg() *HubConfig { return c.srv.cfg.Hub }

func (c *conn) logAttrs(more ...any) []any {
	c.mu.Lock()
	ec := c.ec
	c.mu.Unlock()
	attrs := []any{}
	if ec != nil {
		attrs = append(attrs, "remote", ec.RemoteAddr().String())
	}
	return append(attrs, more...)
}

// Authenticate decides SASL: PLAIN carries a device ({d}@sas.{hubName})
// or service ({policy}@sas.root.{hubName}) SAS token; EXTERNAL means the
// TLS client certificate, checked against the device each link names;
// ANONYMOUS and MSSBCBS mean a CBS token follows.
func (c *conn) Authenticate(ec *engine.Conn, cred *engine.SASLCredentials) engine.SASLCode {
	c.mu.Lock()
	c.ec = ec
	c.mu.Unlock()
	switch cred.Mechanism {
	case engine.MechANONYMOUS, engine.MechMSSBCBS, engine.MechEXTERNAL:
		return engine.SASLOK
	case engine.MechPLAIN:
		if code, ok := c.dpsPLAIN(cred); ok {
			return code
		}
		user, pass := cred.Username, cred.Password
		name, realm, ok := strings.Cut(user, "@sas.")
		if !ok || name == "" {
			c.srv.log.Info("amqp: SASL PLAIN refused: the user is not {device}@sas.{hub} or {policy}@sas.root.{hub}", c.logAttrs("user", clip(user))...)
			return engine.SASLAuth
		}
		tok, err := sas.Parse(pass)
		if err != nil {
			c.srv.log.Info("amqp: SASL PLAIN refused: the password is not a SAS token", c.logAttrs("user", clip(user))...)
			return engine.SASLAuth
		}
		// The token's sr names the hub host; the user's realm only its
		// first label.
		aud := tok.Resource
		if strings.HasPrefix(realm, "root.") {
			if status, _ := c.authorize(aud, pass); status != 200 {
				return engine.SASLAuth
			}
			return engine.SASLOK
		}
		host, _, _ := strings.Cut(aud, "/")
		if status, _ := c.authorize(host+"/devices/"+url.PathEscape(name), pass); status != 200 {
			return engine.SASLAuth
		}
		return engine.SASLOK
	}
	return engine.SASLAuth
}

// Open accepts every open: the hub a connection talks to is the one its
// credentials name (the CBS audience, the PLAIN token), so an unknown
// open hostname is not refused here.
func (c *conn) Open(ec *engine.Conn, o *engine.Open) *engine.Error {
	c.mu.Lock()
	c.ec = ec
	c.mu.Unlock()
	return nil
}

// Attach routes a link by its address (routes).
func (c *conn) Attach(l *engine.Link) (engine.LinkHandler, *engine.Error) {
	c.mu.Lock()
	c.ec = l.Conn()
	c.mu.Unlock()
	addr := l.Address()
	r, m, ok := lookupRoute(addr)
	if !ok {
		c.srv.log.Info("amqp: attach refused: no such address", c.logAttrs("address", clip(addr), "role", l.Role().String())...)
		return nil, linkError(engine.ErrCondNotFound, "The address %q is not served.", clip(addr))
	}
	h, e := r.attach(c, l, m)
	if e != nil {
		c.srv.log.Info("amqp: attach refused", c.logAttrs("address", clip(addr), "role", l.Role().String(), "condition", string(e.Condition), "description", e.Description)...)
	}
	return h, e
}

// Closed ends the device sessions and stops the grants' timers.
func (c *conn) Closed(ec *engine.Conn, err error) {
	c.mu.Lock()
	c.closed = true
	devs := make([]*device, 0, len(c.devices))
	for _, d := range c.devices {
		devs = append(devs, d)
	}
	c.devices = map[string]*device{}
	for _, g := range c.grants {
		if g.timer != nil {
			g.timer.Stop()
		}
	}
	c.grants = map[string]*grant{}
	c.mu.Unlock()
	for _, d := range devs {
		d.end()
	}
}

// closeConn closes the connection with an error.
func (c *conn) closeConn(e *engine.Error) {
	c.mu.Lock()
	ec := c.ec
	c.mu.Unlock()
	if ec != nil {
		ec.Close(e)
	}
}

func (c *conn) attachCBS(l *engine.Link, _ match) (engine.LinkHandler, *engine.Error) {
	return c.cbs.Attach(l)
}

func (c *conn) attachModule(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	return nil, linkError(engine.ErrCondNotImplemented, "The module address %q is not served: modules have telemetry, twin and direct methods over AMQP (module %q of device %q).", clip(m.address), clip(m.moduleID), clip(m.deviceID))
}

// CBS application properties and status codes (docs/amqp-wire.md, "CBS").
const (
	cbsOperation   = "operation"
	cbsPutToken    = "put-token"
	cbsName        = "name"
	cbsStatusCode  = "status-code"
	cbsStatusDescr = "status-description"
)

// serveCBS answers a $cbs request. The check runs off the reader: it reads
// the store.
func (c *conn) serveCBS(r *engine.Request) {
	go func() {
		status, desc := c.putToken(r.Message)
		reply := &engine.Message{ApplicationProperties: engine.Map{
			{Key: cbsStatusCode, Value: int32(status)},
			{Key: cbsStatusDescr, Value: desc},
		}}
		if err := r.Reply(reply); err != nil {
			c.srv.log.Debug("amqp: CBS reply not sent", c.logAttrs("error", err.Error())...)
		}
	}()
}

func (c *conn) putToken(m *engine.Message) (int, string) {
	if op := appString(m, cbsOperation); op != cbsPutToken {
		return 400, fmt.Sprintf("The operation %q is not supported; only put-token is.", clip(op))
	}
	name := appString(m, cbsName)
	token, ok := bodyString(m)
	if name == "" || !ok {
		return 400, "A put-token request needs a name and a token."
	}
	return c.authorize(name, token)
}

// authorize checks a SAS token for an audience (a CBS name, URL-encoded or
// not, with or without a scheme) and, when it is good, records or renews
// the grant. It answers a CBS status code and description.
func (c *conn) authorize(audience, token string) (int, string) {
	aud := audience
	if dec, err := url.QueryUnescape(audience); err == nil {
		aud = dec
	}
	aud = normaliseAudience(aud)
	segs := strings.Split(aud, "/")
	hubName, settings, ok := c.srv.servedHub(segs[0])
	if !ok {
		c.srv.log.Info("amqp: CBS token refused: the audience names no hub berth serves", c.logAttrs("audience", clip(aud))...)
		return 404, fmt.Sprintf("The hub %s is not served here.", clip(segs[0]))
	}
	h := c.hubCfg()
	if h == nil || h.Services == nil {
		return 503, "The hub is not available."
	}
	rest := segs[1:]
	ctx, cancel := context.WithTimeout(c.srv.ctx, authTimeout)
	defer cancel()
	g := &grant{hub: hubName, settings: settings}
	if len(rest) >= 2 && strings.EqualFold(rest[0], "devices") {
		var (
			id  *hub.Identity
			err error
		)
		switch {
		case len(rest) == 4 && strings.EqualFold(rest[2], "modules"):
			// A module identity ({hub}/devices/{d}/modules/{m}): the same
			// check as a module's MQTT CONNECT.
			if id, err = h.Registry.AuthenticateModule(ctx, settings, hubName, rest[1], rest[3], token); err != nil {
				return c.refused("module", aud, err)
			}
		case len(rest) == 2:
			if id, err = h.Registry.AuthenticateDevice(ctx, settings, hubName, rest[1], token); err != nil {
				return c.refused("device", aud, err)
			}
		default:
			return 404, fmt.Sprintf("The audience %s is not a device or a module.", clip(aud))
		}
		g.deviceID, g.moduleID, g.identity, g.expires = id.Device.DeviceID, id.Device.ModuleID(), id, id.Expires
		g.key = strings.ToLower(hubName) + "/devices/" + hub.TwinID(g.deviceID, g.moduleID)
	} else {
		if _, err := h.Registry.AuthorizeService(settings, hubName, token, rest, hub.RightServiceConnect); err != nil {
			// The Event Hubs SDKs sign with the key text's bytes and name
			// the entity first (docs/amqp-wire.md, "Event Hubs").
			if len(rest) == 0 || h.EventHubs == nil || !strings.EqualFold(rest[0], eventhubs.EntityName(hubName)) {
				return c.refused("service", aud, err)
			}
			if _, err := h.Registry.AuthorizeEventHubs(settings, hubName, token, rest); err != nil {
				return c.refused("Event Hubs", aud, err)
			}
		}
		if tok, err := sas.Parse(token); err == nil {
			g.expires = tok.Expiry.Add(sas.MaxClockSkew)
		}
		g.path, g.token = rest, token
		g.key = strings.ToLower(hubName + "/" + strings.Join(rest, "/"))
	}
	if !g.expires.IsZero() && !g.expires.After(h.Now()) {
		return 401, "The token has expired."
	}
	c.addGrant(g)
	return 200, "OK"
}

// refused logs a refused token once, with the domain's reason, and
// answers its CBS status.
func (c *conn) refused(kind, aud string, err error) (int, string) {
	var ae *azerr.Error
	if errors.As(err, &ae) && ae.Status() == 429 {
		// berth serve --throttle: the connection rate is over its
		// limit. 429, not 401: the token is good and a retry will pass.
		c.srv.log.Info("amqp: CBS "+kind+" token refused: throttled", c.logAttrs("audience", clip(aud), "error", err.Error())...)
		return 429, ae.Message
	}
	if errors.As(err, &ae) && ae.Status() >= 400 && ae.Status() < 500 {
		attrs := c.logAttrs("audience", clip(aud))
		if r := refusal.Of(err); r != nil {
			attrs = append(attrs, r.LogAttrs()...)
		} else {
			attrs = append(attrs, "error", err.Error())
		}
		c.srv.log.Info("amqp: CBS "+kind+" token refused", attrs...)
		return 401, "Unauthorized: " + ae.Message
	}
	c.srv.log.Error("amqp: CBS "+kind+" token could not be checked", c.logAttrs("audience", clip(aud), "error", err.Error())...)
	return 500, "The token could not be checked."
}

// normaliseAudience strips a scheme and a trailing '/' from a decoded
// audience.
func normaliseAudience(a string) string {
	for _, scheme := range []string{"amqps://", "amqp://", "sb://"} {
		if len(a) >= len(scheme) && strings.EqualFold(a[:len(scheme)], scheme) {
			a = a[len(scheme):]
			break
		}
	}
	return strings.TrimSuffix(a, "/")
}

// addGrant records a grant, or renews the one of the same audience (its
// links stay), and arms its expiry.
func (c *conn) addGrant(g *grant) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if old, ok := c.grants[g.key]; ok {
		if old.timer != nil {
			old.timer.Stop()
		}
		old.identity, old.expires, old.settings, old.token = g.identity, g.expires, g.settings, g.token
		g = old
	} else {
		g.links = map[*engine.Link]struct{}{}
		c.grants[g.key] = g
	}
	if !g.expires.IsZero() {
		left := g.expires.Sub(c.hubCfg().Now())
		g.timer = time.AfterFunc(left, func() { c.expire(g) })
	}
	ec := c.ec
	c.mu.Unlock()
	if ec != nil {
		ec.Authenticated(nil)
	}
}

// recheckService checks the service grants of hubName again after its
// policies changed: a grant whose token the policies no longer admit (its
// key renewed, its policy deleted or without ServiceConnect) is dropped
// and its links detached, as a revoked device's sessions are closed.
func (c *conn) recheckService(hubName string) {
	h := c.hubCfg()
	if h == nil || h.Services == nil {
		return
	}
	c.mu.Lock()
	var check []*grant
	for _, g := range c.grants {
		if g.token != "" && strings.EqualFold(g.hub, hubName) {
			check = append(check, g)
		}
	}
	c.mu.Unlock()
	for _, g := range check {
		c.mu.Lock()
		settings, token, path := g.settings, g.token, g.path
		c.mu.Unlock()
		_, err := h.Registry.AuthorizeService(settings, g.hub, token, path, hub.RightServiceConnect)
		var ae *azerr.Error
		if err != nil && errors.As(err, &ae) && ae.Status() == 401 {
			c.drop(g, func() bool { return true }, "amqp: service token revoked by a policy change; its links are detached",
				linkError(engine.ErrCondUnauthorizedAccess, "The policy key the token for %s was signed with is no longer valid.", g.key))
		}
	}
}

// expire drops a grant whose credential ran out: the links it authorised
// are detached with amqp:unauthorized-access (a renewal in time would have
// replaced the timer).
func (c *conn) expire(g *grant) {
	c.drop(g, func() bool { return !g.expires.After(c.hubCfg().Now()) }, "amqp: token expired; its links are detached",
		linkError(engine.ErrCondUnauthorizedAccess, "The token for %s has expired.", g.key))
}

// drop removes grant g, when it is still the connection's and still
// should go (checked under the lock), and detaches its links with e.
func (c *conn) drop(g *grant, still func() bool, logMsg string, e *engine.Error) {
	c.mu.Lock()
	if cur, ok := c.grants[g.key]; !ok || cur != g || !still() {
		c.mu.Unlock()
		return
	}
	delete(c.grants, g.key)
	links := make([]*engine.Link, 0, len(g.links))
	for l := range g.links {
		links = append(links, l)
	}
	var dev *device
	if g.deviceID != "" {
		dk := deviceKey(g.hub, hub.TwinID(g.deviceID, g.moduleID))
		if dev = c.devices[dk]; dev != nil {
			delete(c.devices, dk)
		}
	}
	c.mu.Unlock()
	c.srv.log.Info(logMsg, c.logAttrs("audience", g.key, "links", len(links))...)
	for _, l := range links {
		l.Close(e)
	}
	if dev != nil {
		dev.end()
	}
}

// serviceGrant returns the service grant that covers an address path
// (the audience path a prefix of it), if any.
func (c *conn) serviceGrant(segs []string) *grant {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, g := range c.grants {
		if g.deviceID != "" || len(g.path) > len(segs) {
			continue
		}
		covers := true
		for i, p := range g.path {
			if !strings.EqualFold(p, segs[i]) {
				covers = false
				break
			}
		}
		if covers {
			return g
		}
	}
	return nil
}

// bind records that g authorised l: its expiry detaches l.
func (c *conn) bind(g *grant, l *engine.Link) {
	c.mu.Lock()
	if g.links != nil {
		g.links[l] = struct{}{}
	}
	c.mu.Unlock()
}

// unbind forgets a link that ended.
func (c *conn) unbind(l *engine.Link) {
	c.mu.Lock()
	for _, g := range c.grants {
		delete(g.links, l)
	}
	c.mu.Unlock()
}

func deviceKey(hubName, deviceID string) string { return strings.ToLower(hubName) + "/" + deviceID }

// appString is a string application property ("" when absent or not a
// string).
func appString(m *engine.Message, key string) string {
	v, _ := m.ApplicationProperty(key)
	switch s := v.(type) {
	case string:
		return s
	case engine.Symbol:
		return string(s)
	}
	return ""
}

// bodyString is a message body as text: an amqp-value string (CBS tokens)
// or data sections.
func bodyString(m *engine.Message) (string, bool) {
	if m.HasValue {
		switch v := m.Value.(type) {
		case string:
			return v, true
		case []byte:
			return string(v), true
		}
		return "", false
	}
	if len(m.Data) > 0 {
		return string(body(m)), true
	}
	return "", false
}

// body is a message's data sections (or binary/string amqp-value) as one
// byte slice.
func body(m *engine.Message) []byte {
	switch len(m.Data) {
	case 0:
		switch v := m.Value.(type) {
		case []byte:
			return v
		case string:
			return []byte(v)
		}
		return nil
	case 1:
		return m.Data[0]
	}
	var b []byte
	for _, d := range m.Data {
		b = append(b, d...)
	}
	return b
}

// clip bounds a client-supplied string in logs and errors.
func clip(s string) string {
	const limit = 256
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "…"
}
