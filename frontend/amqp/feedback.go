package amqp

import (
	"context"
	"sync"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/hub"
)

// maxFeedbackInFlight bounds the feedback messages delivered on one link
// and not yet settled (besides the service's credit).
const maxFeedbackInFlight = 4

// attachFeedback serves /messages/serviceBound/feedback (the Node SDK's
// spelling; the CLI writes servicebound): berth sends the hub's feedback
// messages (hub.Feedback batches, docs/amqp-wire.md#feedback), unsettled,
// each locked until the service's disposition: accepted completes it,
// rejected drops it, released and modified give it back, and a link that
// ends first leaves it to its lock timeout.
func (c *conn) attachFeedback(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	if e := wantRole(l, engine.RoleSender); e != nil {
		return nil, e
	}
	g := c.serviceGrant(m.segs)
	if g == nil {
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "No service token with ServiceConnect authorises %s on this connection.", m.address)
	}
	f := c.hubCfg().Feedback
	if f == nil {
		return nil, linkError(engine.ErrCondNotImplemented, "C2D feedback is not enabled.")
	}
	c.bind(g, l)
	fl := &feedbackLink{c: c, l: l, hub: g.hub, f: f, w: f.Wait(g.hub), stop: make(chan struct{})}
	go fl.watch()
	return fl, nil
}

// attachFileNotifications serves /messages/serviceBound/filenotifications:
// the link attaches (the service SDK opens it and waits) and stays empty,
// since berth has no file upload.
func (c *conn) attachFileNotifications(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	if e := wantRole(l, engine.RoleSender); e != nil {
		return nil, e
	}
	g := c.serviceGrant(m.segs)
	if g == nil {
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "No service token with ServiceConnect authorises %s on this connection.", m.address)
	}
	c.bind(g, l)
	return emptySender{c: c}, nil
}

type emptySender struct{ c *conn }

func (emptySender) Credit(*engine.Link)                        {}
func (s emptySender) Detached(l *engine.Link, _ *engine.Error) { s.c.unbind(l) }

// feedbackLink pumps a hub's feedback queue into a service's link: on
// credit, and when the domain says new feedback was written.
type feedbackLink struct {
	c    *conn
	l    *engine.Link
	hub  string
	f    *hub.Feedback
	w    *hub.FeedbackWaiter
	stop chan struct{}

	mu       sync.Mutex
	gone     bool
	inflight int
	pumping  bool
	again    bool
}

func (fl *feedbackLink) watch() {
	for {
		select {
		case <-fl.stop:
			return
		case <-fl.w.C:
			fl.kick()
		}
	}
}

func (fl *feedbackLink) Credit(*engine.Link) { fl.kick() }

func (fl *feedbackLink) Detached(l *engine.Link, _ *engine.Error) {
	fl.mu.Lock()
	if !fl.gone {
		fl.gone = true
		close(fl.stop)
	}
	fl.mu.Unlock()
	fl.f.Release(fl.w)
	fl.c.unbind(l)
}

func (fl *feedbackLink) kick() {
	fl.mu.Lock()
	if fl.gone {
		fl.mu.Unlock()
		return
	}
	if fl.pumping {
		fl.again = true
		fl.mu.Unlock()
		return
	}
	fl.pumping, fl.again = true, false
	fl.mu.Unlock()
	go fl.pump()
}

func (fl *feedbackLink) pump() {
	for {
		fl.mu.Lock()
		if fl.gone || fl.l.Credit() == 0 || fl.inflight >= maxFeedbackInFlight {
			fl.pumping = false
			fl.mu.Unlock()
			return
		}
		fl.again = false
		fl.mu.Unlock()
		ctx, cancel := context.WithTimeout(fl.c.srv.ctx, settleTimeout)
		m, err := fl.f.Receive(ctx, fl.hub, hub.FeedbackLockTimeout)
		cancel()
		if err != nil {
			fl.c.srv.log.Warn("amqp: feedback queue not readable", fl.c.logAttrs("hub", fl.hub, "error", err.Error())...)
		}
		if err != nil || m == nil {
			fl.mu.Lock()
			again := fl.again && !fl.gone
			if !again {
				fl.pumping = false
			}
			fl.mu.Unlock()
			if again && err == nil {
				continue
			}
			return
		}
		fl.deliver(m)
	}
}

// deliver sends one feedback message and settles its batch when the
// service's outcome arrives.
func (fl *feedbackLink) deliver(m *hub.FeedbackMessage) {
	fl.mu.Lock()
	fl.inflight++
	fl.mu.Unlock()
	sent, err := fl.l.Send(feedbackMessage(m), false)
	if err != nil {
		fl.settle(m, nil)
		return
	}
	go func() {
		<-sent.Done()
		fl.settle(m, sent.State())
	}()
}

// settle applies the service's outcome: accepted completes the batch,
// rejected drops it (logged), released or modified abandon it; a delivery
// lost with the link is abandoned too, so that it comes back at once
// rather than after its lock.
func (fl *feedbackLink) settle(m *hub.FeedbackMessage, st engine.DeliveryState) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	var err error
	how := "abandon"
	switch st.(type) {
	case engine.Accepted:
		how = "complete"
		err = fl.f.Complete(ctx, fl.hub, m.LockToken)
	case engine.Rejected:
		how = "reject"
		err = fl.f.Reject(ctx, fl.hub, m.LockToken)
	default:
		err = fl.f.Abandon(ctx, fl.hub, m.LockToken)
	}
	if err != nil {
		fl.c.srv.log.Info("amqp: feedback settlement not applied", fl.c.logAttrs("hub", fl.hub, "outcome", how, "error", err.Error())...)
	}
	fl.mu.Lock()
	fl.inflight--
	fl.mu.Unlock()
	if st != nil {
		fl.kick()
	}
}

// feedbackMessage is a feedback batch as the service SDKs read it: the
// JSON array in one data section, content type
// application/vnd.microsoft.iothub.feedback.json, user-id the hub's name,
// the batch's enqueued time in iothub-enqueuedtime.
func feedbackMessage(m *hub.FeedbackMessage) *engine.Message {
	return &engine.Message{
		Header: &engine.Header{DeliveryCount: uint32(max(m.DeliveryCount-1, 0))},
		Properties: &engine.Properties{
			MessageID:   m.MessageID,
			UserID:      []byte(m.UserID),
			ContentType: engine.Symbol(hub.FeedbackContentType),
		},
		Annotations: engine.Map{{Key: annEnqueuedTime, Value: m.Enqueued}},
		Data:        [][]byte{m.Body},
	}
}
