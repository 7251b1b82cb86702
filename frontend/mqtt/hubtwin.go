package mqtt

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/berth-iot/berth/frontend/mqtt/topics"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/azerr"
)

// desiredNotifyTopic precedes the version in a desired-properties
// notification (docs/spec/iothub-protocol.md#twins-over-mqtt).
const desiredNotifyTopic = desiredPrefix + "?$version="

const (
	// twinTimeout bounds one twin GET or reported PATCH. A store that
	// hangs must not hold the device's reader forever; the device gets a
	// 503 it may retry.
	twinTimeout = 30 * time.Second
	// maxOutbound bounds the desired notifications waiting to be written
	// to one device. Past it the connection closes: on reconnect the
	// device GETs its twin and so catches up (hub.DeviceLink).
	maxOutbound = 16
)

// twinRequest handles a twin GET or reported PATCH. The work, the PUBACK
// of a QoS 1 request and the response run on a goroutine of their own,
// for the reason appendMessage gives, while the reader waits: requests
// are answered in order, and a reported update is durable before both its
// PUBACK and its 204. An unanswerable topic closes the connection.
func (s *hubSession) twinRequest(pk *packets.Packet) error {
	kind, rid, ok := topics.ParseTwin(pk.TopicName)
	attrs := append(s.logAttrs(), "remote", s.c.remote, "topic", clip(pk.TopicName))
	if !ok {
		s.c.srv.log.Info("mqtt: PUBLISH to a twin topic IoT Hub does not have; closing the connection", attrs...)
		return fmt.Errorf("mqtt: PUBLISH to %q: not a twin request topic", clip(pk.TopicName))
	}
	if s.c.srv.cfg.Hub.Twins == nil {
		s.c.srv.log.Warn("mqtt: twins are not enabled on this hub; closing the connection", attrs...)
		return errors.New("mqtt: twins are not enabled on this hub")
	}
	done := make(chan error, 1)
	go func() { done <- s.twinRecovering(kind, rid, pk) }()
	return <-done
}

func (s *hubSession) twinRecovering(kind, rid string, pk *packets.Packet) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.c.srv.panics.Add(1)
			s.c.srv.log.Error("mqtt: panic in a twin request", append(s.logAttrs(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))...)
			err = errors.New("mqtt: panic in a twin request")
		}
	}()
	h := s.c.srv.cfg.Hub
	// The server's context, not the connection's, as for telemetry: an
	// update the device sent completely is applied even if it goes away.
	ctx, cancel := context.WithTimeout(s.c.srv.ctx, twinTimeout)
	defer cancel()
	var (
		status  int
		body    []byte
		version int64
		opErr   error
	)
	switch kind {
	case topics.TwinGet:
		// The payload is ignored: Node sends " ", C nothing.
		body, opErr = h.Twins.DeviceDocument(ctx, s.hub, s.twinID)
		status = 200
	case topics.TwinPatchReported:
		version, opErr = h.Twins.PatchReported(ctx, s.hub, s.twinID, pk.Payload)
		status = 204
	default:
		opErr = azerr.Newf(azerr.HubArgumentInvalid, "The topic is not a twin request topic.")
	}
	if pk.FixedHeader.Qos == 1 {
		if err := s.c.puback(pk.PacketID); err != nil {
			return err
		}
	}
	if opErr != nil {
		s.twinFail(rid, kind, opErr)
		return nil
	}
	s.c.srv.log.Debug("mqtt: twin answer", append(s.logAttrs(), "kind", kind, "rid", clip(rid), "status", status, "version", version)...)
	s.twinRespond(topics.TwinResponse(status, rid, version), body)
	return nil
}

// twinFail answers with err as IoT Hub's MQTT error body: Node treats a body
// with errorCode as an error and shows its message
// (docs/spec/iothub-protocol.md#twins-over-mqtt, #http-error-body). Errors
// that are not *azerr.Error are internal: their cause is logged, never sent.
func (s *hubSession) twinFail(rid, kind string, err error) {
	var e *azerr.Error
	if !errors.As(err, &e) && errors.Is(err, context.DeadlineExceeded) {
		e = azerr.Newf(azerr.HubServiceUnavailable, "The twin request timed out; try again.")
		e.Err = err
		err = e
	}
	e, body := s.c.srv.errorAnswer("mqtt: twin error answer", append(s.logAttrs(), "kind", kind, "rid", clip(rid)), azerr.For(err, azerr.HubServerError))
	payload, encErr := encodeJSON(body)
	if encErr != nil {
		s.c.srv.log.Error("mqtt: encode twin error answer", append(s.logAttrs(), "error", encErr.Error())...)
		return
	}
	s.twinRespond(topics.TwinResponse(e.Status(), rid, 0), payload)
}

// twinRespond publishes a twin answer at the QoS $iothub/twin/res/# was
// granted; without that subscription it has nowhere to go and is dropped.
func (s *hubSession) twinRespond(topic string, payload []byte) {
	qos := s.subs[featureTwinResponses].Load()
	if qos < 0 {
		s.c.srv.log.Debug("mqtt: twin answer dropped: the device is not subscribed to "+twinResponseFilter, append(s.logAttrs(), "topic", clip(topic))...)
		return
	}
	if err := s.send(topic, byte(qos), payload); err != nil {
		s.c.srv.log.Debug("mqtt: twin answer not delivered", append(s.logAttrs(), "topic", clip(topic), "error", err.Error())...)
	}
}

// send publishes at qos, taking a packet ID no C2D delivery holds.
func (s *hubSession) send(topic string, qos byte, payload []byte) error {
	var id uint16
	if qos > 0 {
		s.mu.Lock()
		id = s.packetIDLocked()
		s.mu.Unlock()
	}
	return s.c.publishID(topic, qos, false, id, payload)
}

// packetIDLocked returns the connection's next packet ID, skipping those
// of unacknowledged C2D deliveries: a PUBACK must complete only the
// message it acknowledges, even after the 16-bit IDs wrap.
func (s *hubSession) packetIDLocked() uint16 {
	for {
		id := s.c.nextPacketID()
		if _, busy := s.inflight[id]; !busy {
			return id
		}
	}
}

// outbound is a desired notification waiting to be written.
type outbound struct {
	topic   string
	qos     byte
	payload []byte
}

// DesiredPatch queues a desired-properties notification (hub.DeviceLink).
// It never blocks: the domain calls it under the twin's lock. A
// notification is dropped when the device is not subscribed; when the
// queue is full the connection closes, and the device catches up with a
// GET when it reconnects.
func (s *hubSession) DesiredPatch(version int64, body []byte) {
	qos := s.subs[featureDesired].Load()
	if qos < 0 {
		s.c.srv.log.Debug("mqtt: desired notification dropped: the device is not subscribed", append(s.logAttrs(), "version", version)...)
		return
	}
	m := outbound{topic: desiredNotifyTopic + strconv.FormatInt(version, 10), qos: byte(qos), payload: body}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if len(s.out) >= maxOutbound {
		s.mu.Unlock()
		s.c.srv.log.Warn("mqtt: the device does not keep up with desired notifications; closing the connection", append(s.logAttrs(), "remote", s.c.remote, "queued", maxOutbound)...)
		s.c.close(false)
		return
	}
	s.out = append(s.out, m)
	start := !s.sending
	if start {
		s.sending = true
		s.workers.Add(1)
	}
	s.mu.Unlock()
	if start {
		go s.sendQueued()
	}
}

// sendQueued writes queued notifications in order and ends when the
// queue is empty, so that an idle session has no goroutine.
func (s *hubSession) sendQueued() {
	defer s.workers.Done()
	defer s.recoverWorker("desired notifications", &s.sending)
	for {
		s.mu.Lock()
		if len(s.out) == 0 || s.closed {
			s.out, s.sending = nil, false
			s.mu.Unlock()
			return
		}
		m := s.out[0]
		s.out[0] = outbound{}
		s.out = s.out[1:]
		var id uint16
		if m.qos > 0 {
			id = s.packetIDLocked()
		}
		s.mu.Unlock()
		if err := s.c.publishID(m.topic, m.qos, false, id, m.payload); err != nil {
			// The failed write closed the connection; close drops the
			// rest.
			s.c.srv.log.Debug("mqtt: desired notification not delivered", append(s.logAttrs(), "topic", m.topic, "error", err.Error())...)
		}
	}
}

// recoverWorker turns a panic in a delivery goroutine into the end of
// this connection, not of the server, and clears the worker's running
// flag (guarded by mu). Deferred; it must run before workers.Done.
func (s *hubSession) recoverWorker(what string, running *bool) {
	if v := recover(); v != nil {
		s.c.srv.panics.Add(1)
		s.c.srv.log.Error("mqtt: panic in "+what, append(s.logAttrs(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))...)
		s.mu.Lock()
		*running = false
		s.mu.Unlock()
		s.c.close(false)
	}
}

// stopDeliveries ends every delivery when the connection has closed:
// pending method invocations fail at once, the sender and the pump stop
// (close waits for them) and the C2D messages in flight go back to the
// queue.
func (s *hubSession) stopDeliveries() {
	s.mu.Lock()
	s.closed = true
	for rid, ch := range s.methods {
		ch <- methodAnswer{closed: true}
		delete(s.methods, rid)
	}
	if s.cancelOp != nil {
		s.cancelOp()
	}
	s.out = nil
	s.mu.Unlock()
	s.workers.Wait()
	s.settleInFlight()
}
