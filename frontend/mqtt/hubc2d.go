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
	// c2dCompleteBatch is how many acknowledged messages wait for one
	// completion transaction while the queue has more to deliver.
	c2dCompleteBatch = maxC2DInFlight
	// c2dCompleteLinger is how long acknowledged messages, once the queue
	// has nothing more to deliver, wait for the device's next Send to
	// commit their completion with it (one fsync for both) before the
	// pump commits them alone. It delays only when the queue's count
	// and feedback show the completion, never a delivery: any wake-up
	// ends the wait.
	c2dCompleteLinger = 5 * time.Millisecond
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
		if s.linger != nil {
			select {
			case s.linger <- struct{}{}:
			default:
			}
		}
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
		s.pumpAgain = false
		qos := s.subs[featureC2D].Load()
		free := maxC2DInFlight - len(s.inflight)
		receive := !s.closed && qos >= 0 && free > 0
		if len(s.acked) == 0 && !receive {
			s.pumping = false
			s.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(s.c.srv.ctx, c2dOpTimeout)
		s.cancelOp = cancel
		s.mu.Unlock()

		// Deliver first: a receive writes nothing (the locks are held in
		// memory), a completion is a store transaction (an fsync).
		n, ok := 0, true
		if receive {
			n, ok = s.receive(ctx, byte(qos), free)
		}
		drained := !receive || !ok || n < free
		// The PUBACKs that came in meanwhile complete in one
		// transaction: once c2dCompleteBatch of them wait (acknowledged
		// messages stay in the queue, and count against its depth, only
		// that long), or, when the queue has nothing more to deliver
		// now, with the device's next Send (parked), or alone after
		// c2dCompleteLinger.
		s.mu.Lock()
		var acked []string
		switch {
		case len(s.acked)+s.parked >= c2dCompleteBatch:
			acked = s.acked
			s.acked, s.parked = nil, 0
		case drained && len(s.acked) > 0:
			h.CloudToDevice.CompleteLater(s.hub, s.deviceID, s.acked)
			s.parked += len(s.acked)
			s.acked = nil
		}
		s.mu.Unlock()
		if len(acked) > 0 && !s.completeMany(ctx, cancel, acked) {
			return
		}
		s.mu.Lock()
		s.cancelOp = nil
		cancel()
		// Fewer than asked for means the queue had no more; a wake-up
		// since then, or new acknowledgements, mean look again.
		if !ok || drained && !s.pumpAgain && len(s.acked) == 0 {
			if s.parked > 0 && !s.closed {
				// Parked completions: wait for a Send to take them,
				// then commit what is left; a wake-up ends the wait.
				s.linger = make(chan struct{}, 1)
				lc := s.linger
				s.mu.Unlock()
				t := time.NewTimer(c2dCompleteLinger)
				select {
				case <-t.C:
				case <-lc:
				case <-s.c.srv.ctx.Done():
				}
				t.Stop()
				s.mu.Lock()
				s.linger = nil
				if s.pumpAgain || len(s.acked) > 0 {
					s.mu.Unlock()
					continue // more work; the completions stay parked
				}
				s.parked = 0
				s.mu.Unlock()
				fctx, fcancel := s.settleContext()
				if _, err := h.CloudToDevice.CompleteMany(fctx, s.hub, s.deviceID, nil); err != nil {
					s.c.srv.log.Info("mqtt: C2D messages acknowledged but not completed", append(s.logAttrs(), "error", err.Error())...)
				}
				fcancel()
				s.mu.Lock()
				if s.pumpAgain || len(s.acked) > 0 {
					s.mu.Unlock()
					continue
				}
			}
			s.pumping = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// completeMany completes acknowledged messages, and the completions
// parked for the device, in one transaction. It returns false when the
// pump must stop: its context was cancelled (the session ending or the
// server shutting down); settleInFlight completes them then, so an
// acknowledged message is not delivered again after a restart.
func (s *hubSession) completeMany(ctx context.Context, cancel context.CancelFunc, acked []string) bool {
	lost, err := s.c.srv.cfg.Hub.CloudToDevice.CompleteMany(ctx, s.hub, s.deviceID, acked)
	if err != nil && ctx.Err() != nil {
		s.mu.Lock()
		s.acked = append(s.acked, acked...)
		s.cancelOp = nil
		s.pumping = false
		s.mu.Unlock()
		cancel()
		return false
	}
	if err != nil {
		s.c.srv.log.Info("mqtt: C2D messages acknowledged but not completed", append(s.logAttrs(), "count", len(acked), "error", err.Error())...)
	} else if lost > 0 {
		s.c.srv.log.Info("mqtt: C2D messages acknowledged after their lock was lost", append(s.logAttrs(), "count", lost)...)
	}
	return true
}

// receive locks up to free messages and delivers them. It returns how
// many it received, and false when the queue could not be read.
func (s *hubSession) receive(ctx context.Context, qos byte, free int) (int, bool) {
	h := s.c.srv.cfg.Hub
	// The lock lives as long as the delivery, in memory: the connection
	// settles every message it got when it ends, and a crash makes them
	// deliverable again (at-least-once).
	msgs, err := h.CloudToDevice.ReceiveHeld(ctx, s.hub, s.deviceID, free, hub.DefaultLockTimeout)
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
	pid := id
	if qos == 0 {
		pid = 0 // no packet ID on the wire; the entry is still under id
	}
	// DUP marks a redelivery ([PG]: delivery count above one).
	err := s.c.publishID(topic, qos, m.DeliveryCount > 1, pid, m.Body)
	if err != nil {
		// The failed write closed the connection: close gives the
		// message back.
		s.c.srv.log.Debug("mqtt: C2D message not delivered", append(attrs, "error", err.Error())...)
		return
	}
	s.c.srv.log.Debug("mqtt: C2D message delivered", append(attrs, "qos", qos)...)
	if qos == 0 {
		// Completed with the next batch of acknowledgements: the pump
		// looks again while s.acked is not empty, and settleInFlight
		// completes what is left when the connection ends.
		s.mu.Lock()
		s.forgetInFlightLocked(id)
		s.acked = append(s.acked, m.LockToken)
		s.mu.Unlock()
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
	parked := s.parked
	s.parked = 0
	s.mu.Unlock()
	if len(acked) == 0 && len(inflight) == 0 && parked == 0 {
		return
	}
	ctx, cancel := s.settleContext()
	defer cancel()
	// CompleteMany also commits the completions parked for a Send.
	if lost, err := h.CloudToDevice.CompleteMany(ctx, s.hub, s.deviceID, acked); err != nil || lost > 0 {
		s.c.srv.log.Info("mqtt: C2D messages acknowledged but not completed", append(s.logAttrs(), "count", len(acked), "lost", lost, "error", errString(err))...)
	}
	tokens := make([]string, 0, len(inflight))
	for _, token := range inflight {
		tokens = append(tokens, token)
	}
	if lost, err := h.CloudToDevice.AbandonMany(ctx, s.hub, s.deviceID, tokens); err != nil || lost > 0 {
		s.c.srv.log.Info("mqtt: C2D messages not given back; they are redelivered when their lock expires", append(s.logAttrs(), "count", len(tokens), "lost", lost, "error", errString(err))...)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
