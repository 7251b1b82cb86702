package mqtt

import (
	"context"
	"errors"
	"fmt"

	"github.com/berth-iot/berth/hub"
)

// maxTelemetryInflight bounds the telemetry messages of one connection that
// were read and are not yet durable. The reader goes on reading PUBLISHes
// while earlier ones are being stored, so that a device with several QoS 1
// messages in flight has them all in the same group commit; past this many
// it waits, which is the back-pressure a device sees (TCP stops).
const maxTelemetryInflight = 32

// errEarlierRefused marks a PUBLISH read after an earlier message of the
// connection was not accepted (and logged as such): the connection is
// closing.
var errEarlierRefused = errors.New("mqtt: an earlier message was not accepted")

// pipedMsg is one telemetry PUBLISH in flight, in the order read.
type pipedMsg struct {
	id   uint16 // packet ID to acknowledge; used when qos1
	qos1 bool
	done bool
	err  error
	// reported: the reader logged err already (a refusal before the sink).
	reported bool
}

// telemetryPipe keeps a connection's telemetry in flight: the reader adds
// messages in order; the sink's callbacks mark them done in any order; the
// PUBACKs go out in the order the PUBLISHes came (MQTT 3.1.1 §4.6), written
// by a goroutine that runs only while acknowledgements are ready, several at
// a time in one write. An idle connection holds none of it: the queue is
// nil and no goroutine runs.
type telemetryPipe struct {
	q       []pipedMsg
	head    uint64 // sequence number of q[0]
	writing bool
	// failed is the first message that was not accepted: nothing after it
	// is acknowledged, and the connection closes.
	failed error
	// room is closed when q shrinks while the reader waits for it.
	room chan struct{}
}

// pipeTelemetry hands m to hub.Telemetry without waiting for it to be
// durable; its PUBACK (QoS 1) goes out once it is, after those of the
// messages before it.
func (s *hubSession) pipeTelemetry(m *hub.Message, id uint16, qos1 bool) error {
	p := &s.tel
	s.tmu.Lock()
	for p.failed == nil && len(p.q) >= maxTelemetryInflight {
		if p.room == nil {
			p.room = make(chan struct{})
		}
		room := p.room
		s.tmu.Unlock()
		<-room // a callback always comes: the sink bounds every append by ctx
		s.tmu.Lock()
	}
	if err := p.failed; err != nil {
		s.tmu.Unlock()
		return fmt.Errorf("%w: %w", errEarlierRefused, err)
	}
	seq := p.head + uint64(len(p.q))
	p.q = append(p.q, pipedMsg{id: id, qos1: qos1})
	s.tmu.Unlock()

	// The server's context, not the connection's: a device that goes
	// away right after sending still gets a complete message stored.
	ctx, cancel := context.WithTimeout(s.c.srv.ctx, appendTimeout)
	err := s.c.srv.cfg.Hub.Telemetry.AcceptAsync(ctx, s.sender, m, func(err error) {
		cancel()
		s.telemetryDone(seq, err, false)
	})
	if err != nil {
		// Refused before reaching the sink (size, faults, disabled).
		cancel()
		err = fmt.Errorf("mqtt: telemetry: %w", err)
		s.telemetryDone(seq, err, true)
		return err
	}
	return nil
}

// telemetryDone records the outcome of message seq and starts the PUBACK
// writer when the head of the queue is ready. It runs on the sink's
// goroutine, so it only takes a lock.
func (s *hubSession) telemetryDone(seq uint64, err error, reported bool) {
	p := &s.tel
	s.tmu.Lock()
	defer s.tmu.Unlock()
	i := seq - p.head
	if i >= uint64(len(p.q)) {
		return // cannot happen: entries leave only once done
	}
	p.q[i].done, p.q[i].err, p.q[i].reported = true, err, reported
	if p.writing || !p.q[0].done {
		return
	}
	p.writing = true
	go s.writeAcks()
}

// writeAcks writes the PUBACKs of the done messages at the head of the
// queue, in order, until none is ready. A failed message stops it and
// closes the connection: the device resends what was not acknowledged.
func (s *hubSession) writeAcks() {
	var small [64]byte
	p := &s.tel
	for {
		b := small[:0]
		var failed error
		reported := false
		s.tmu.Lock()
		n := 0
		for n < len(p.q) && p.q[n].done {
			if err := p.q[n].err; err != nil {
				failed, reported = err, p.q[n].reported
				break
			}
			if p.q[n].qos1 {
				id := p.q[n].id
				b = append(b, 0x40, 0x02, byte(id>>8), byte(id))
			}
			n++
		}
		if failed != nil && p.failed == nil {
			p.failed = failed
		}
		clear(p.q[:n])
		p.q = p.q[n:]
		p.head += uint64(n)
		if len(p.q) == 0 {
			p.q = nil // an idle connection keeps no backing array
		}
		if p.room != nil && (n > 0 || failed != nil) {
			close(p.room)
			p.room = nil
		}
		stop := n == 0 || failed != nil
		if stop {
			p.writing = false
		}
		s.tmu.Unlock()
		if len(b) > 0 {
			if err := s.c.writeBytes(b); err != nil {
				s.tmu.Lock()
				if p.failed == nil {
					p.failed = err
				}
				p.writing = false
				s.tmu.Unlock()
				return
			}
		}
		if failed != nil {
			if !reported {
				s.logRefused("mqtt: telemetry not accepted; closing the connection", failed)
			}
			s.c.close(false)
			return
		}
		if stop {
			return
		}
	}
}
