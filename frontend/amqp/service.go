package amqp

import (
	"context"
	"strings"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// sendTimeout bounds one C2D enqueue.
const sendTimeout = 30 * time.Second

// attachServiceSend serves /messages/devicebound: a service (CBS token of
// a policy with ServiceConnect) sends C2D messages, each addressed by its
// "to" (/devices/{id}/messages/devicebound, the ID percent-encoded) and
// accepted once it is in the device's durable queue.
func (c *conn) attachServiceSend(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	if e := wantRole(l, engine.RoleReceiver); e != nil {
		return nil, e
	}
	g := c.serviceGrant(m.segs)
	if g == nil {
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "No service token with ServiceConnect authorises %s on this connection.", m.address)
	}
	c.bind(g, l)
	// The hub's 64 KB limit decides; room for properties.
	l.SetMaxMessageSize(hub.MaxC2DMessageSize + 64*1024)
	return &serviceSendLink{c: c, g: g}, nil
}

type serviceSendLink struct {
	c *conn
	g *grant
	q serial
}

func (s *serviceSendLink) Detached(l *engine.Link, _ *engine.Error) { s.c.unbind(l) }

func (s *serviceSendLink) Message(l *engine.Link, dl *engine.Delivery) {
	s.q.do(func() { s.send(dl) })
}

func (s *serviceSendLink) send(dl *engine.Delivery) {
	m := dl.Message
	var to string
	if m.Properties != nil {
		to = m.Properties.To
	}
	_, tm, ok := lookupRoute(to)
	if !ok || tm.moduleID != "" || !strings.HasSuffix(strings.ToLower(tm.address), "/messages/devicebound") || tm.deviceID == "" {
		_ = dl.Reject(linkError(condArgumentError, "ErrorCode:ArgumentInvalid;The message's to %q is not /devices/{deviceId}/messages/devicebound.", clip(to)))
		return
	}
	cm := cloudMessage(m)
	ctx, cancel := context.WithTimeout(s.c.srv.ctx, sendTimeout)
	defer cancel()
	if _, err := s.c.hubCfg().CloudToDevice.Send(ctx, s.g.hub, tm.deviceID, cm); err != nil {
		e := domainError(err)
		if ae := azerr.As(err, azerr.HubServerError); ae.Status() >= 500 {
			s.c.srv.log.Warn("amqp: C2D send failed", s.c.logAttrs("hub", s.g.hub, "deviceId", clip(tm.deviceID), "error", err.Error())...)
		}
		_ = dl.Reject(e)
		return
	}
	_ = dl.Accept()
}

// cloudMessage maps a service's AMQP message to a C2D message: the
// properties the device will see, iothub-ack as the feedback request, the
// other application properties as they are.
func cloudMessage(m *engine.Message) *hub.CloudMessage {
	cm := &hub.CloudMessage{Body: body(m)}
	if p := m.Properties; p != nil {
		cm.MessageID = idString(p.MessageID)
		cm.CorrelationID = idString(p.CorrelationID)
		cm.UserID = string(p.UserID)
		cm.ContentType = string(p.ContentType)
		cm.ContentEncoding = string(p.ContentEncoding)
		cm.Expiry = p.AbsoluteExpiryTime
	}
	for _, kv := range m.ApplicationProperties {
		k, ok := kv.Key.(string)
		if !ok {
			continue
		}
		if strings.EqualFold(k, propAck) {
			cm.Ack = valueString(kv.Value)
			continue
		}
		cm.App = append(cm.App, hub.Property{Name: k, Value: valueString(kv.Value)})
	}
	return cm
}
