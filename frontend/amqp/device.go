package amqp

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// device is one device's session on a connection: the hub.DeviceLink the
// domain pushes through, and the device's links. A connection may carry
// several devices (multiplexing clients); each is attached to hub.Links
// on its first link.
type device struct {
	c        *conn
	hub      string
	deviceID string
	moduleID string // "" for a device
	// twinID names the identity in the hub's twins, methods and live
	// sessions: the device ID, or {device}/{module} (hub.TwinID).
	twinID string
	sender hub.Sender

	detach       func()
	disconnected func()

	mu     sync.Mutex
	ended  bool
	c2d    *c2dLink
	twin   *twinState
	method *methodState
}

var _ hub.DeviceLink = (*device)(nil)

// deviceFor authorises a link to a device address and returns the
// device's session: a grant for that very device (CBS or PLAIN), else the
// connection's TLS client certificate checked against it. A device may
// touch only its own addresses.
func (c *conn) deviceFor(l *engine.Link, m match) (*device, *engine.Error) {
	h := c.hubCfg()
	if h == nil || h.Services == nil {
		return nil, linkError(engine.ErrCondInternalError, "The hub is not available.")
	}
	g := c.deviceGrant(m.deviceID, m.moduleID)
	if g == nil {
		var err *engine.Error
		if g, err = c.certGrant(l, m.deviceID, m.moduleID); err != nil {
			return nil, err
		}
	}
	dk := deviceKey(g.hub, hub.TwinID(g.deviceID, g.moduleID))
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, linkError(engine.ErrCondDetachForced, "The connection is closing.")
	}
	d := c.devices[dk]
	created := d == nil
	if created {
		d = &device{c: c, hub: g.hub, deviceID: g.deviceID, moduleID: g.moduleID,
			twinID: hub.TwinID(g.deviceID, g.moduleID), sender: hub.SenderOf(g.hub, g.identity)}
		c.devices[dk] = d
	}
	g.links[l] = struct{}{}
	c.mu.Unlock()
	if created {
		// One live session per device: Links closes the one this
		// replaces (another connection of the same device).
		_, d.detach = h.Links.Attach(d.hub, d.twinID, g.identity.Credential(), d)
		d.disconnected = h.Registry.Connected(d.hub, d.twinID)
		c.srv.log.Debug("amqp: IoT Hub device session", c.logAttrs("hub", d.hub, "deviceId", d.deviceID, "moduleId", d.moduleID)...)
	}
	return d, nil
}

// deviceGrant is the grant of a device, or of one of its modules
// (compared exactly: IDs are case-sensitive). A device's grant does not
// open its modules' addresses, nor a module's its device's.
func (c *conn) deviceGrant(deviceID, moduleID string) *grant {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, g := range c.grants {
		if g.deviceID == deviceID && g.moduleID == moduleID {
			return g
		}
	}
	return nil
}

// certGrant authenticates a device by the connection's TLS client
// certificate (X.509 devices send no token: docs/amqp-wire.md, "X.509").
func (c *conn) certGrant(l *engine.Link, deviceID, moduleID string) (*grant, *engine.Error) {
	ec := l.Conn()
	chain := ec.PeerCertificates()
	if len(chain) == 0 {
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "No token authorises device %q on this connection.", clip(deviceID))
	}
	h := c.hubCfg()
	hubName, settings := h.Name, h.Settings
	if o := ec.PeerOpen(); o != nil && o.Hostname != "" {
		if n, s, ok := c.srv.servedHub(o.Hostname); ok {
			hubName, settings = n, s
		}
	}
	ctx, cancel := context.WithTimeout(c.srv.ctx, authTimeout)
	defer cancel()
	var (
		id  *hub.Identity
		err error
	)
	if moduleID != "" {
		id, err = h.Registry.AuthenticateModuleCert(ctx, hubName, deviceID, moduleID, chain)
	} else {
		id, err = h.Registry.AuthenticateDeviceCert(ctx, hubName, deviceID, chain)
	}
	if err != nil {
		status, desc := c.refused("certificate", hubName+"/devices/"+hub.TwinID(deviceID, moduleID), err)
		if status == 429 {
			// berth serve --throttle: a connection over the rate.
			return nil, linkError(condThrottled, "%s", desc)
		}
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "%s", desc)
	}
	g := &grant{hub: hubName, settings: settings, deviceID: id.Device.DeviceID, moduleID: id.Device.ModuleID(),
		identity: id, expires: id.Expires}
	g.key = strings.ToLower(hubName) + "/devices/" + hub.TwinID(g.deviceID, g.moduleID)
	c.addGrant(g)
	return c.deviceGrant(g.deviceID, g.moduleID), nil
}

// linkEnded forgets a device link that ended.
func (d *device) linkEnded(l *engine.Link) { d.c.unbind(l) }

// end detaches the session from the hub (connection closed, token
// expired).
func (d *device) end() {
	d.mu.Lock()
	if d.ended {
		d.mu.Unlock()
		return
	}
	d.ended = true
	tw, me := d.twin, d.method
	d.mu.Unlock()
	if tw != nil {
		tw.close()
	}
	if me != nil {
		me.close()
	}
	if d.detach != nil {
		d.detach()
	}
	if d.disconnected != nil {
		d.disconnected()
	}
}

// Close is the hub closing the session: revoked or replaced. The whole
// connection closes, as for MQTT.
func (d *device) Close(reason hub.CloseReason) {
	d.c.srv.log.Info("amqp: device connection closed by the hub", d.c.logAttrs("hub", d.hub, "deviceId", d.deviceID, "reason", reason.String())...)
	cond := engine.ErrCondUnauthorizedAccess
	if reason == hub.CloseReplaced {
		cond = engine.ErrCondConnectionForced
	}
	d.c.closeConn(linkError(cond, "%s", reason.String()))
}

// attachTelemetry serves /devices/{d}/messages/events: berth receives the
// device's messages and accepts each once hub.Telemetry made it durable.
func (c *conn) attachTelemetry(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	if e := wantRole(l, engine.RoleReceiver); e != nil {
		return nil, e
	}
	d, e := c.deviceFor(l, m)
	if e != nil {
		return nil, e
	}
	// Room for the properties beside a 256 KB body; the hub's limit
	// decides.
	l.SetMaxMessageSize(hub.MaxMessageSize + 64*1024)
	return &telemetryLink{d: d}, nil
}

// telemetryLink accepts messages one at a time, in order, off the reader.
type telemetryLink struct {
	d *device
	q serial
}

func (t *telemetryLink) Message(l *engine.Link, dl *engine.Delivery) {
	t.q.do(func() { t.accept(dl) })
}

func (t *telemetryLink) Detached(l *engine.Link, _ *engine.Error) { t.d.linkEnded(l) }

// appendTimeout bounds one Telemetry.Accept.
const appendTimeout = 30 * time.Second

func (t *telemetryLink) accept(dl *engine.Delivery) {
	d := t.d
	ctx, cancel := context.WithTimeout(d.c.srv.ctx, appendTimeout)
	defer cancel()
	err := d.c.hubCfg().Telemetry.Accept(ctx, d.sender, telemetryMessage(dl.Message, dl.Link().Address()))
	if err != nil {
		e := domainError(err)
		d.c.srv.log.Info("amqp: telemetry refused", d.c.logAttrs("hub", d.hub, "deviceId", d.deviceID, "error", err.Error())...)
		_ = dl.Reject(e)
		return
	}
	_ = dl.Accept()
}

// Message annotations of device telemetry (docs/amqp-wire.md).
const (
	annInterfaceID = engine.Symbol("iothub-interface-id")
	annComponent   = engine.Symbol("dt-subject")
)

// telemetryMessage maps an AMQP message to the hub's: properties to the
// system properties MQTT's $.mid, $.cid… and HTTPS's headers also give,
// application properties as they are. The SDKs set "to" to the link's own
// address on every message; that is transport, not a property the device
// chose (MQTT and HTTPS messages do not carry it), so it is dropped.
func telemetryMessage(m *engine.Message, linkAddress string) *hub.Message {
	hm := &hub.Message{Body: body(m)}
	add := func(name, v string) {
		if v != "" {
			hm.System = append(hm.System, hub.Property{Name: name, Value: v})
		}
	}
	if p := m.Properties; p != nil {
		add(hub.PropMessageID, idString(p.MessageID))
		add(hub.PropCorrelationID, idString(p.CorrelationID))
		add(hub.PropUserID, string(p.UserID))
		if !strings.EqualFold(normaliseAddress(p.To), normaliseAddress(linkAddress)) {
			add(hub.PropTo, p.To)
		}
		add(hub.PropContentType, string(p.ContentType))
		add(hub.PropContentEncoding, string(p.ContentEncoding))
		if !p.AbsoluteExpiryTime.IsZero() {
			add(hub.PropExpiry, p.AbsoluteExpiryTime.UTC().Format(hub.EnqueuedTimeLayout))
		}
		if !p.CreationTime.IsZero() {
			add(hub.PropCreationTime, p.CreationTime.UTC().Format(hub.EnqueuedTimeLayout))
		}
	}
	if v, ok := m.Annotation(annInterfaceID); ok {
		add(hub.PropInterfaceID, valueString(v))
	}
	if v, ok := m.Annotation(annComponent); ok {
		add(hub.PropComponent, valueString(v))
	}
	for _, kv := range m.ApplicationProperties {
		k, ok := kv.Key.(string)
		if !ok {
			continue
		}
		if k == hub.PropComponent {
			add(hub.PropComponent, valueString(kv.Value))
			continue
		}
		hm.App = append(hm.App, hub.Property{Name: k, Value: valueString(kv.Value)})
	}
	return hm
}

// idString is a message-id or correlation-id as text (a uuid in its
// canonical form).
func idString(v any) string {
	if v == nil {
		return ""
	}
	return valueString(v)
}

// valueString formats a simple AMQP value as IoT Hub shows it in string
// properties.
func valueString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case engine.Symbol:
		return string(x)
	case []byte:
		return string(x)
	case engine.UUID:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case time.Time:
		return x.UTC().Format(hub.EnqueuedTimeLayout)
	}
	return fmt.Sprint(v)
}

// serial runs functions one after another on a goroutine that exists
// only while there is work, so that a link's messages are handled in
// order without blocking the connection's reader. The link's credit
// bounds the queue.
type serial struct {
	mu      sync.Mutex
	q       []func()
	running bool
}

func (s *serial) do(f func()) {
	s.mu.Lock()
	s.q = append(s.q, f)
	if s.running {
		s.mu.Unlock()
		return
	}
	s.running = true
	s.mu.Unlock()
	go s.run()
}

func (s *serial) run() {
	for {
		s.mu.Lock()
		if len(s.q) == 0 {
			s.running, s.q = false, nil
			s.mu.Unlock()
			return
		}
		f := s.q[0]
		s.q = s.q[1:]
		s.mu.Unlock()
		f()
	}
}

// errSessionClosed answers a push to a session that ended.
var errSessionClosed = azerr.Newf(azerr.HubDeviceNotOnline, "The device disconnected.")
