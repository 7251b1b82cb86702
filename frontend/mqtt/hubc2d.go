package mqtt

import (
	"context"
	"time"

	"github.com/berth-iot/berth/frontend/mqtt/topics"

	"github.com/berth-iot/berth/hub"
)

const (
	// maxC2DInFlight bounds the C2D messages delivered to one connection and
	// not yet acknowledged
	// (docs/spec/iothub-protocol.md#cloud-to-device-over-mqtt, IoT Edge's
	// MaxPendingOutboundMessages).
	maxC2DInFlight = 10
	// c2dOpTimeout bounds one queue call of the pump.
	c2dOpTimeout = 10 * time.Second
	// c2dSettleTimeout bounds giving back the messages in flight when a
	// connection ends.
	c2dSettleTimeout = 5 * time.Second
	// maxTopicLength is MQTT's limit on a topic name (a 16-bit length).
	maxTopicLength = 65535
)

// CloudToDevicePending wakes C2D delivery (hub.DeviceLink).
func (s *hubSession) CloudToDevicePending() { s.wakePump() }

// wakePump starts the C2D pump, or asks the running one to look at the
// queue again. The pump is a goroutine only while it has work: an idle
// session has none.
func (s *hubSession) wakePump() {
	if s.c.srv.cfg.Hub.CloudToDevice == nil {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if s.pumping {
		s.pumpAgain = true
		s.mu.Unlock()
		return
	}
	s.pumping = true
	s.workers.Add(1)
	s.mu.Unlock()
	go s.pump()
}

// pump completes acknowledged messages and, while the device is
// subscribed and has room in flight, receives and delivers the next ones
// in queue order. Queue errors are logged; the next wake-up (a new
// message, a PUBACK, a new subscription) tries again.
func (s *hubSession) pump() {
	defer s.workers.Done()
	defer s.recoverWorker("C2D delivery", &s.pumping)
	h := s.c.srv.cfg.Hub
	for {
		s.mu.Lock()
		acked := s.acked
		s.acked = nil
		s.pumpAgain = false
		qos := s.subs[featureC2D].Load()
		free := maxC2DInFlight - len(s.inflight)
		receive := !s.closed && qos >= 0 && free > 0
		if len(acked) == 0 && !receive {
			s.pumping = false
			s.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(s.c.srv.ctx, c2dOpTimeout)
		s.cancelOp = cancel
		s.mu.Unlock()

		for i, token := range acked {
			if err := h.CloudToDevice.Complete(ctx, s.hub, s.deviceID, token); err != nil {
				if ctx.Err() != nil {
					// Cancelled: the session is ending or the server
					// shutting down. settleInFlight completes the rest,
					// so an acknowledged message is not delivered again
					// after a restart; this pump stops here (its next
					// context would be cancelled too).
					s.mu.Lock()
					s.acked = append(s.acked, acked[i:]...)
					s.cancelOp = nil
					s.pumping = false
					s.mu.Unlock()
					cancel()
					return
				}
				s.c.srv.log.Info("mqtt: C2D message acknowledged but not completed", append(s.logAttrs(), "error", err.Error())...)
			}
		}
		n, ok := 0, true
		if receive {
			n, ok = s.receive(ctx, byte(qos), free)
		}
		s.mu.Lock()
		s.cancelOp = nil
		cancel()
		// Fewer than asked for means the queue had no more; a wake-up
		// since then, or new acknowledgements, mean look again.
		if !ok || receive && n < free && !s.pumpAgain && len(s.acked) == 0 {
			s.pumping = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// receive locks up to free messages and delivers them. It returns how
// many it received, and false when the queue could not be read.
func (s *hubSession) receive(ctx context.Context, qos byte, free int) (int, bool) {
	h := s.c.srv.cfg.Hub
	msgs, err := h.CloudToDevice.Receive(ctx, s.hub, s.deviceID, free, hub.DefaultLockTimeout)
	if err != nil {
		if ctx.Err() == nil {
			s.c.srv.log.Warn("mqtt: C2D queue not readable", append(s.logAttrs(), "error", err.Error())...)
		}
		return 0, false
	}
	for _, m := range msgs {
		s.deliver(ctx, m, qos)
	}
	return len(msgs), true
}

// deliver publishes one locked message. It is recorded in flight before
// the write, so that a PUBACK racing the write finds it and a connection
// that ends gives it back; at QoS 0 it is completed once written, as the
// device will not acknowledge it.
func (s *hubSession) deliver(ctx context.Context, m *hub.CloudMessage, qos byte) {
	h := s.c.srv.cfg.Hub
	attrs := append(s.logAttrs(), "messageId", clip(m.MessageID), "deliveryCount", m.DeliveryCount)
	topic := topics.C2D(s.deviceID, m)
	if len(topic) > maxTopicLength {
		// Its properties cannot be written as an MQTT topic, now or on
		// any later delivery: dead-letter it rather than retry forever.
		s.c.srv.log.Warn("mqtt: C2D message properties too long for an MQTT topic; rejected", append(attrs, "topicLength", len(topic))...)
		if err := h.CloudToDevice.Reject(ctx, s.hub, s.deviceID, m.LockToken); err != nil {
			s.c.srv.log.Warn("mqtt: C2D message not rejected", append(attrs, "error", err.Error())...)
		}
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.giveBack(m.LockToken)
		return
	}
	id := s.packetIDLocked()
	if s.inflight == nil {
		s.inflight = make(map[uint16]string, maxC2DInFlight)
	}
	s.inflight[id] = m.LockToken
	s.mu.Unlock()
	if qos == 0 {
		id = 0
	}
	// DUP marks a redelivery ([PG]: delivery count above one).
	err := s.c.publishID(topic, qos, m.DeliveryCount > 1, id, m.Body)
	if err != nil {
		// The failed write closed the connection: close gives the
		// message back.
		s.c.srv.log.Debug("mqtt: C2D message not delivered", append(attrs, "error", err.Error())...)
		return
	}
	s.c.srv.log.Debug("mqtt: C2D message delivered", append(attrs, "qos", qos)...)
	if qos == 0 {
		s.mu.Lock()
		s.forgetInFlightLocked(id)
		s.mu.Unlock()
		if err := h.CloudToDevice.Complete(ctx, s.hub, s.deviceID, m.LockToken); err != nil {
			s.c.srv.log.Info("mqtt: C2D message delivered at QoS 0 but not completed", append(attrs, "error", err.Error())...)
		}
	}
}

func (s *hubSession) forgetInFlightLocked(id uint16) {
	delete(s.inflight, id)
	if len(s.inflight) == 0 {
		s.inflight = nil
	}
}

// puback completes the C2D message the device acknowledged (PUBACK =
// complete, docs/spec/iothub-protocol.md#cloud-to-device-over-mqtt); the pump
// does the store call, off the reader, and then delivers into the freed slot.
// PUBACKs of other deliveries (QoS 1 desired notifications, method requests,
// twin answers) match nothing.
func (s *hubSession) puback(id uint16) {
	s.mu.Lock()
	token, ok := s.inflight[id]
	if ok {
		s.forgetInFlightLocked(id)
		s.acked = append(s.acked, token)
	}
	s.mu.Unlock()
	if ok {
		// Completed even after the device unsubscribed: the pump runs
		// for acknowledgements alone too.
		s.wakePump()
	}
}

// giveBack abandons one message so that it is delivered again.
func (s *hubSession) giveBack(token string) {
	h := s.c.srv.cfg.Hub
	ctx, cancel := s.settleContext()
	defer cancel()
	if err := h.CloudToDevice.Abandon(ctx, s.hub, s.deviceID, token); err != nil {
		s.c.srv.log.Info("mqtt: C2D message not given back; it is redelivered when its lock expires", append(s.logAttrs(), "error", err.Error())...)
	}
}

// settleContext bounds a settle call by time only: Shutdown cancels the
// server's context before it closes the connections, and a settle is what
// keeps an acknowledged message from coming back (or an unacknowledged one
// locked) after a restart. Shutdown waits for the sessions, so the store is
// still open.
func (s *hubSession) settleContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(s.c.srv.ctx), c2dSettleTimeout)
}

// settleInFlight runs once the pump has stopped for good: acknowledged
// messages are completed and unacknowledged ones abandoned, so that the
// next connection gets them again (with DUP). The context is the server's
// without its cancellation (settleContext), not the closed connection's.
func (s *hubSession) settleInFlight() {
	h := s.c.srv.cfg.Hub
	s.mu.Lock()
	acked, inflight := s.acked, s.inflight
	s.acked, s.inflight = nil, nil
	s.mu.Unlock()
	if len(acked) == 0 && len(inflight) == 0 {
		return
	}
	ctx, cancel := s.settleContext()
	defer cancel()
	for _, token := range acked {
		if err := h.CloudToDevice.Complete(ctx, s.hub, s.deviceID, token); err != nil {
			s.c.srv.log.Info("mqtt: C2D message acknowledged but not completed", append(s.logAttrs(), "error", err.Error())...)
		}
	}
	for _, token := range inflight {
		if err := h.CloudToDevice.Abandon(ctx, s.hub, s.deviceID, token); err != nil {
			s.c.srv.log.Info("mqtt: C2D message not given back; it is redelivered when its lock expires", append(s.logAttrs(), "error", err.Error())...)
		}
	}
}
