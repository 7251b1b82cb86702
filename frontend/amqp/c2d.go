package amqp

import (
	"context"
	"sync"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/hub"
)

// maxC2DInFlight bounds the messages delivered to one device and not yet
// settled (besides the device's credit).
const maxC2DInFlight = 32

// settleTimeout bounds one queue call (complete, abandon, reject).
const settleTimeout = 30 * time.Second

// Message annotations berth puts on a C2D delivery.
const (
	annEnqueuedTime   = engine.Symbol("iothub-enqueuedtime")
	annSequenceNumber = engine.Symbol("x-opt-sequence-number")
	propAck           = "iothub-ack"
)

// attachC2D serves /devices/{d}/messages/devicebound: berth sends the
// device's queued messages, unsettled, each locked (in memory) until the
// device's disposition: accepted completes it, released (abandon) and modified make
// it visible again, rejected dead-letters it; a link or connection that
// ends first abandons it.
func (c *conn) attachC2D(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	if e := wantRole(l, engine.RoleSender); e != nil {
		return nil, e
	}
	d, e := c.deviceFor(l, m)
	if e != nil {
		return nil, e
	}
	cl := &c2dLink{d: d, l: l}
	d.mu.Lock()
	old := d.c2d
	d.c2d = cl
	d.mu.Unlock()
	if old != nil {
		old.l.Close(linkError(engine.ErrCondStolen, "A newer C2D link of the device attached."))
	}
	return cl, nil
}

// c2dLink pumps a device's C2D queue into its link. The pump goroutine
// runs only while there is credit and something may be waiting.
type c2dLink struct {
	d *device
	l *engine.Link

	mu       sync.Mutex
	gone     bool
	inflight int
	pumping  bool
	again    bool
}

func (cl *c2dLink) Credit(*engine.Link) { cl.kick() }

func (cl *c2dLink) Detached(l *engine.Link, _ *engine.Error) {
	cl.mu.Lock()
	cl.gone = true
	cl.mu.Unlock()
	d := cl.d
	d.mu.Lock()
	if d.c2d == cl {
		d.c2d = nil
	}
	d.mu.Unlock()
	d.linkEnded(l)
}

// CloudToDevicePending wakes the device's C2D link, if it has one.
func (d *device) CloudToDevicePending() {
	d.mu.Lock()
	cl := d.c2d
	d.mu.Unlock()
	if cl != nil {
		cl.kick()
	}
}

func (cl *c2dLink) kick() {
	cl.mu.Lock()
	if cl.gone {
		cl.mu.Unlock()
		return
	}
	if cl.pumping {
		cl.again = true
		cl.mu.Unlock()
		return
	}
	cl.pumping, cl.again = true, false
	cl.mu.Unlock()
	go cl.pump()
}

func (cl *c2dLink) pump() {
	d := cl.d
	q := d.c.hubCfg().CloudToDevice
	for {
		cl.mu.Lock()
		free := min(int(cl.l.Credit()), maxC2DInFlight-cl.inflight)
		if cl.gone || free <= 0 {
			cl.pumping = false
			cl.mu.Unlock()
			return
		}
		cl.again = false
		cl.mu.Unlock()
		ctx, cancel := context.WithTimeout(d.c.srv.ctx, settleTimeout)
		// Held in memory (ReceiveHeld): every delivery is settled by
		// settle, at the device's disposition or when the link or
		// connection ends (abandon), so the lock never outlives the
		// link; a delivery then writes nothing to the store
		// (docs/hub-wire.md#c2d-locks).
		msgs, err := q.ReceiveHeld(ctx, d.hub, d.deviceID, free, hub.DefaultLockTimeout)
		cancel()
		if err != nil {
			d.c.srv.log.Warn("amqp: C2D queue not readable", d.c.logAttrs("hub", d.hub, "deviceId", d.deviceID, "error", err.Error())...)
			cl.mu.Lock()
			cl.pumping = false
			cl.mu.Unlock()
			return
		}
		for _, m := range msgs {
			cl.deliver(m)
		}
		cl.mu.Lock()
		if len(msgs) < free && !cl.again {
			cl.pumping = false
			cl.mu.Unlock()
			return
		}
		cl.mu.Unlock()
	}
}

// deliver sends one locked message and settles it in the queue when the
// device's outcome arrives.
func (cl *c2dLink) deliver(m *hub.CloudMessage) {
	cl.mu.Lock()
	cl.inflight++
	cl.mu.Unlock()
	sent, err := cl.l.Send(c2dMessage(m), false)
	if err != nil {
		cl.settle(m, nil)
		return
	}
	go func() {
		<-sent.Done()
		cl.settle(m, sent.State())
	}()
}

// settle applies the device's outcome to the queue: accepted completes,
// rejected dead-letters, anything else (released, modified, or lost with
// the link) abandons.
func (cl *c2dLink) settle(m *hub.CloudMessage, st engine.DeliveryState) {
	d := cl.d
	q := d.c.hubCfg().CloudToDevice
	// Not the connection's context: a message the device completed just
	// before hanging up must still be completed.
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	var err error
	how := "abandon"
	switch st.(type) {
	case engine.Accepted:
		how = "complete"
		err = q.Complete(ctx, d.hub, d.deviceID, m.LockToken)
	case engine.Rejected:
		how = "reject"
		err = q.Reject(ctx, d.hub, d.deviceID, m.LockToken)
	default:
		err = q.Abandon(ctx, d.hub, d.deviceID, m.LockToken)
	}
	if err != nil {
		d.c.srv.log.Info("amqp: C2D settlement not applied", d.c.logAttrs("hub", d.hub, "deviceId", d.deviceID, "messageId", clip(m.MessageID), "outcome", how, "error", err.Error())...)
	}
	cl.mu.Lock()
	cl.inflight--
	cl.mu.Unlock()
	if how != "abandon" || st != nil {
		cl.kick()
	}
}

// c2dMessage is a queued message as the device SDKs read it
// (docs/amqp-wire.md, "C2D"): properties, application properties with
// iothub-ack, the enqueued time, and delivery-count = earlier deliveries.
func c2dMessage(m *hub.CloudMessage) *engine.Message {
	p := &engine.Properties{
		MessageID:          m.MessageID,
		To:                 m.To,
		ContentType:        engine.Symbol(m.ContentType),
		ContentEncoding:    engine.Symbol(m.ContentEncoding),
		AbsoluteExpiryTime: m.Expiry,
	}
	if m.CorrelationID != "" {
		p.CorrelationID = m.CorrelationID
	}
	if m.UserID != "" {
		p.UserID = []byte(m.UserID)
	}
	out := &engine.Message{
		Header:     &engine.Header{DeliveryCount: uint32(max(m.DeliveryCount-1, 0))},
		Properties: p,
		Annotations: engine.Map{
			{Key: annEnqueuedTime, Value: m.Enqueued},
			{Key: annSequenceNumber, Value: m.SequenceNumber},
		},
		Data: [][]byte{m.Body},
	}
	for _, a := range m.App {
		out.ApplicationProperties = append(out.ApplicationProperties, engine.KV{Key: a.Name, Value: a.Value})
	}
	if m.Ack != "" {
		out.ApplicationProperties.Set(propAck, m.Ack)
	}
	return out
}
