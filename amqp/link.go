package amqp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
)

// LinkHandler is what a front end attaches to a link. Detached is called once when the link ends
// for any reason (the peer's detach, berth's, the session's or the connection's end); err is the
// peer's error or the reason berth gave.
type LinkHandler interface {
	Detached(l *Link, err *Error)
}

// ReceiverHandler handles a link on which berth receives messages.
type ReceiverHandler interface {
	LinkHandler
	// Message is called for each complete message. Unless the peer sent it settled, the
	// application settles it later, from any goroutine, with Accept, Reject, Release or Modify;
	// credit is given back only as deliveries are settled, so the unsettled ones are bounded.
	Message(l *Link, d *Delivery)
}

// SenderHandler handles a link on which berth sends messages.
type SenderHandler interface {
	LinkHandler
	// Credit is called when the peer grants credit (or a session window opens): the moment to
	// Send what is waiting.
	Credit(l *Link)
}

// OutcomeHandler may be implemented by a SenderHandler to hear the outcome of each unsettled
// message it sent. state is nil when the delivery was lost (link or connection gone unsettled).
type OutcomeHandler interface {
	Outcome(l *Link, s *Sent, state DeliveryState)
}

// Link is one link, seen from berth: Role is berth's role on it.
type Link struct {
	s              *Session
	handle         uint32
	name           string
	role           Role
	peer           *Attach
	source         *Source
	target         *Target
	sndMode        uint8
	rcvMode        uint8
	maxMessageSize uint64
	offered        []Symbol
	rh             ReceiverHandler
	sh             SenderHandler

	attaching bool // inside Handler.Attach: setters allowed
	attached  bool
	detaching bool // berth sent detach
	gone      bool

	deliveryCount uint32
	credit        uint32

	// receiver side
	window    uint32 // credit berth keeps open, less the unsettled deliveries
	manual    bool
	unsettled int // deliveries received and not yet settled by the application
	cur       *Delivery

	// sender side
	drain    bool
	outCount int // unsettled deliveries berth sent
	nextTag  uint64
}

// Name is the link name.
func (l *Link) Name() string { return l.name }

// Role is berth's role: RoleReceiver when the peer sends.
func (l *Link) Role() Role { return l.role }

// Conn is the link's connection.
func (l *Link) Conn() *Conn { return l.s.c }

// Session is the link's session.
func (l *Link) Session() *Session { return l.s }

// PeerAttach is the attach the peer sent (properties, capabilities, settle modes).
func (l *Link) PeerAttach() *Attach { return l.peer }

// Source and Target are the termini, as the peer asked (or as set during Attach).
func (l *Link) Source() *Source { return l.source }
func (l *Link) Target() *Target { return l.target }

// Address is the address of the node berth plays: the target when berth receives, the source
// when it sends.
func (l *Link) Address() string {
	if l.role == RoleReceiver {
		if l.target != nil {
			return l.target.Address
		}
		return ""
	}
	if l.source != nil {
		return l.source.Address
	}
	return ""
}

// SndSettleMode is the sender settle mode agreed on the link.
func (l *Link) SndSettleMode() uint8 { return l.sndMode }

// SetMaxMessageSize lowers the largest message berth accepts on this link. Only during Attach.
func (l *Link) SetMaxMessageSize(n uint64) {
	if l.attaching && n > 0 && n < l.maxMessageSize {
		l.maxMessageSize = n
	}
}

// SetCredit sets the credit window of a receiver link (default 100, at most Config.MaxUnsettled);
// manual means berth grants nothing by itself and the application calls AddCredit. Only during
// Attach.
func (l *Link) SetCredit(window uint32, manual bool) {
	if !l.attaching {
		return
	}
	if window > uint32(l.s.c.cfg.MaxUnsettled) {
		window = uint32(l.s.c.cfg.MaxUnsettled)
	}
	l.window, l.manual = window, manual
}

// SetSource and SetTarget replace the termini echoed in the attach reply. Only during Attach.
func (l *Link) SetSource(s *Source) {
	if l.attaching {
		l.source = s
	}
}
func (l *Link) SetTarget(t *Target) {
	if l.attaching {
		l.target = t
	}
}

// SetOfferedCapabilities sets the offered-capabilities of the attach reply
// (e.g. an extension of the peer's desired-capabilities that berth
// serves). Only during Attach.
func (l *Link) SetOfferedCapabilities(caps ...Symbol) {
	if l.attaching {
		l.offered = caps
	}
}

// Close detaches the link (closed=true) with an error condition, or nil.
func (l *Link) Close(e *Error) {
	c := l.s.c
	c.mu.Lock()
	l.closeLocked(e)
	c.flushLocked()
	c.unlockAndRun()
}

func (l *Link) closeLocked(e *Error) {
	if l.detaching || l.gone || !l.attached || l.s.links[l.handle] != l {
		return
	}
	l.detaching = true
	_ = l.s.c.writeLocked(frameAMQP, l.s.ch, &Detach{Handle: l.handle, Closed: true, Error: e}, nil)
	l.goneLocked(e)
}

// goneLocked ends the link for berth's side: lost sends, handler told (once).
func (l *Link) goneLocked(e *Error) {
	if l.gone {
		return
	}
	l.gone = true
	if l.cur != nil {
		l.cur.releaseLocked()
		l.cur = nil
	}
	for id, x := range l.s.outUnsettled {
		if x.l == l {
			delete(l.s.outUnsettled, id)
			x.finishLocked(nil)
		}
	}
	for id, d := range l.s.inUnsettled {
		if d.l == l {
			delete(l.s.inUnsettled, id)
			d.releaseLocked()
		}
	}
	var h LinkHandler
	if l.rh != nil {
		h = l.rh
	} else if l.sh != nil {
		h = l.sh
	}
	if h != nil {
		l.s.c.queue(func() { h.Detached(l, e) })
	}
}

// Receiving.

// Delivery is a message berth received on a link.
type Delivery struct {
	l       *Link
	id      uint32
	Tag     []byte
	Message *Message
	// Settled is true when the peer sent the message settled (at-most-once): there is nothing to
	// settle, and the settle methods do nothing.
	Settled bool
	done    bool
	buf     []byte
	format  uint32
	held    int // bytes counted in Conn.buffered until settled
}

// releaseLocked gives a delivery's bytes back to the connection's budget.
func (d *Delivery) releaseLocked() {
	d.l.s.c.buffered -= d.held
	d.held = 0
}

// Link is the link the message came on.
func (d *Delivery) Link() *Link { return d.l }

// Accept settles the delivery as accepted (for berth: the message is durable).
func (d *Delivery) Accept() error { return d.settle(Accepted{}) }

// Reject settles the delivery as rejected with an error.
func (d *Delivery) Reject(e *Error) error { return d.settle(Rejected{Error: e}) }

// Release settles the delivery as released (not processed; may be sent again).
func (d *Delivery) Release() error { return d.settle(Released{}) }

// Modify settles the delivery as modified.
func (d *Delivery) Modify(m Modified) error { return d.settle(m) }

// ErrSettled is returned when a delivery is settled twice.
var ErrSettled = errors.New("amqp: delivery already settled")

func (d *Delivery) settle(state DeliveryState) error {
	l := d.l
	c := l.s.c
	c.mu.Lock()
	if d.done {
		c.mu.Unlock()
		return ErrSettled
	}
	d.done = true
	if d.Settled {
		c.mu.Unlock()
		return nil
	}
	if l.gone || c.closed || l.s.inUnsettled[d.id] != d {
		c.mu.Unlock()
		return ErrClosed
	}
	delete(l.s.inUnsettled, d.id)
	d.releaseLocked()
	l.unsettled--
	_ = c.writeLocked(frameAMQP, l.s.ch, &Disposition{Role: RoleReceiver, First: d.id, Settled: true, State: state}, nil)
	if !l.manual {
		l.refillLocked()
	}
	c.flushLocked()
	c.unlockAndRun()
	return nil
}

// AddCredit grants the peer n more credit on a receiver link (manual credit), bounded by the
// link's unsettled limit.
func (l *Link) AddCredit(n uint32) error {
	c := l.s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if l.gone || l.detaching || l.role != RoleReceiver {
		return ErrClosed
	}
	max := uint32(c.cfg.MaxUnsettled - l.unsettled)
	if l.credit+n > max {
		n = max - min(l.credit, max)
	}
	l.credit += n
	l.sendLinkFlowLocked()
	c.flushLocked()
	return nil
}

// refillLocked tops the receiver's credit up to its window, less what is still unsettled, once it
// has fallen to half: one flow per half window, not one per message.
func (l *Link) refillLocked() {
	if l.gone || l.detaching {
		return
	}
	target := int(l.window) - l.unsettled
	if target <= int(l.credit) {
		return
	}
	if l.credit > 0 && int(l.credit) > int(l.window)/2 {
		return
	}
	l.credit = uint32(target)
	l.sendLinkFlowLocked()
}

func (l *Link) sendLinkFlowLocked() {
	h, dc, cr := l.handle, l.deliveryCount, l.credit
	l.s.sendFlowLocked(&Flow{Handle: &h, DeliveryCount: &dc, LinkCredit: &cr})
}

func (l *Link) transferLocked(t *Transfer) {
	c := l.s.c
	d := l.cur
	if d == nil {
		if t.DeliveryID == nil {
			c.closeLocked(Errorf(ErrCondInvalidField, "first transfer of a delivery without delivery-id"))
			return
		}
		if l.credit == 0 {
			l.closeLocked(Errorf(ErrCondTransferLimitExceeded, "transfer without link credit"))
			return
		}
		l.credit--
		l.deliveryCount++
		d = &Delivery{l: l, id: *t.DeliveryID, Tag: append([]byte(nil), t.DeliveryTag...)}
		if t.MessageFormat != nil {
			d.format = *t.MessageFormat
		}
		l.cur = d
	} else if t.DeliveryID != nil && *t.DeliveryID != d.id {
		c.closeLocked(Errorf(ErrCondNotAllowed, "delivery %d interleaved with unfinished delivery %d", *t.DeliveryID, d.id))
		return
	}
	if l.sndMode == SndSettled {
		t.Settled = true
	}
	d.Settled = d.Settled || t.Settled
	if t.Aborted {
		d.releaseLocked()
		l.cur = nil
		if !l.manual {
			l.refillLocked()
		}
		return
	}
	if c.buffered+len(t.Payload) > c.cfg.MaxConnBuffered {
		c.closeLocked(Errorf(ErrCondResourceLimitExceeded, "the connection holds more than %d bytes of unsettled messages", c.cfg.MaxConnBuffered))
		return
	}
	c.buffered += len(t.Payload)
	d.held += len(t.Payload)
	if uint64(len(d.buf))+uint64(len(t.Payload)) > l.maxMessageSize {
		d.releaseLocked()
		l.cur = nil
		l.closeLocked(Errorf(ErrCondMessageSizeExceeded, "message larger than %d bytes", l.maxMessageSize))
		return
	}
	if t.More {
		if d.buf == nil {
			d.buf = make([]byte, 0, min(len(t.Payload)*4, int(l.maxMessageSize)))
		}
		d.buf = append(d.buf, t.Payload...)
		return
	}
	l.cur = nil
	payload := t.Payload
	if d.buf != nil {
		payload = append(d.buf, t.Payload...)
		d.buf = nil
	}
	msg, err := UnmarshalMessage(payload)
	if err != nil || d.Settled {
		d.releaseLocked() // settled messages are the handler's from here on
	}
	if err != nil {
		if !d.Settled {
			_ = c.writeLocked(frameAMQP, l.s.ch, &Disposition{Role: RoleReceiver, First: d.id, Settled: true,
				State: Rejected{Error: Errorf(ErrCondDecodeError, "%v", err)}}, nil)
		}
		if !l.manual {
			l.refillLocked()
		}
		return
	}
	msg.Format = d.format
	d.Message = msg
	if !d.Settled {
		if old := l.s.inUnsettled[d.id]; old != nil {
			c.closeLocked(Errorf(ErrCondNotAllowed, "delivery-id %d reused while unsettled", d.id))
			return
		}
		l.s.inUnsettled[d.id] = d
		l.unsettled++
	}
	rh := l.rh
	c.queue(func() { rh.Message(l, d) })
	if d.Settled && !l.manual {
		l.refillLocked()
	}
}

// Sending.

// Sent is a message berth sent on a link.
type Sent struct {
	l     *Link
	ID    uint32
	Tag   []byte
	done  chan struct{}
	state DeliveryState
}

// Done is closed when the peer has settled the delivery (at once for settled sends) or it was lost.
func (s *Sent) Done() <-chan struct{} { return s.done }

// State is the outcome once Done is closed: nil when the delivery was lost or sent settled.
func (s *Sent) State() DeliveryState { return s.state }

// Wait waits for the outcome.
func (s *Sent) Wait(ctx context.Context) (DeliveryState, error) {
	select {
	case <-s.done:
		if s.state == nil {
			return nil, ErrClosed
		}
		return s.state, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Sent) finishLocked(state DeliveryState) {
	select {
	case <-s.done:
		return
	default:
	}
	s.state = state
	close(s.done)
	l := s.l
	l.outCount--
	if oh, ok := l.sh.(OutcomeHandler); ok {
		l.s.c.queue(func() { oh.Outcome(l, s, state) })
	}
}

// Errors of Send.
var (
	// ErrNoCredit: the peer has granted no credit (or its session window is full); wait for
	// SenderHandler.Credit.
	ErrNoCredit = errors.New("amqp: no link credit")
	// ErrTooLarge: the message exceeds the max-message-size the peer announced.
	ErrTooLarge = errors.New("amqp: message exceeds the peer's max-message-size")
)

// Credit is the credit the peer has granted and berth has not used.
func (l *Link) Credit() uint32 {
	l.s.c.mu.Lock()
	defer l.s.c.mu.Unlock()
	return l.credit
}

// Send sends a message on a sender link without waiting: settled sends are done once written;
// unsettled ones end when the peer settles them (Sent.Done, OutcomeHandler). The link's settle
// mode overrides settled when it fixes one. Large messages are split into frames.
func (l *Link) Send(msg *Message, settled bool) (*Sent, error) {
	payload, err := msg.Marshal()
	if err != nil {
		return nil, fmt.Errorf("amqp: encoding message: %w", err)
	}
	c := l.s.c
	c.mu.Lock()
	x, err := l.sendLocked(payload, msg.Format, settled)
	c.flushLocked()
	c.unlockAndRun()
	return x, err
}

func (l *Link) sendLocked(payload []byte, format uint32, settled bool) (*Sent, error) {
	c := l.s.c
	if l.role != RoleSender {
		return nil, errors.New("amqp: Send on a link where berth receives")
	}
	if l.gone || l.detaching || !l.attached || c.closing || c.closed {
		return nil, ErrClosed
	}
	switch l.sndMode {
	case SndSettled:
		settled = true
	case SndUnsettled:
		settled = false
	}
	if mms := l.peer.MaxMessageSize; mms > 0 && uint64(len(payload)) > mms {
		return nil, ErrTooLarge
	}
	if l.credit == 0 {
		return nil, ErrNoCredit
	}
	if !settled && l.outCount >= c.cfg.MaxUnsettled {
		return nil, ErrNoCredit
	}
	// Frame budget: header 8 bytes + transfer performative (< 64 bytes with an 8-byte tag).
	chunk := int(c.peerMax) - 8 - 64
	frames := (len(payload) + chunk - 1) / chunk
	if frames == 0 {
		frames = 1
	}
	if uint64(frames) > uint64(l.s.remoteIncomingWindow) {
		return nil, ErrNoCredit
	}
	l.nextTag++
	tag := binary.BigEndian.AppendUint64(nil, l.nextTag)
	id := l.s.nextDeliveryID
	l.s.nextDeliveryID++
	x := &Sent{l: l, ID: id, Tag: tag, done: make(chan struct{})}
	for i := 0; i < frames; i++ {
		end := min(len(payload), (i+1)*chunk)
		t := &Transfer{Handle: l.handle, More: i < frames-1}
		if i == 0 {
			t.DeliveryID = &id
			t.DeliveryTag = tag
			t.MessageFormat = &format
			t.Settled = settled
		}
		if err := c.writeLocked(frameAMQP, l.s.ch, t, payload[i*chunk:end]); err != nil {
			return nil, err
		}
		l.s.nextOutgoingID++
		l.s.remoteIncomingWindow--
	}
	l.credit--
	l.deliveryCount++
	if settled {
		close(x.done)
	} else {
		l.outCount++
		l.s.outUnsettled[id] = x
	}
	return x, nil
}

// notifyCreditLocked queues the sender handler's Credit callback.
func (l *Link) notifyCreditLocked() {
	if l.sh == nil {
		return
	}
	sh := l.sh
	l.s.c.queue(func() { sh.Credit(l) })
}

// drainLocked answers a drain request once the handler had its chance to send: unused credit is
// consumed by advancing the delivery count.
func (l *Link) drainLocked(echo bool) {
	if l.gone || l.detaching {
		return
	}
	if l.drain && l.credit > 0 {
		l.deliveryCount += l.credit
		l.credit = 0
	} else if !echo && !l.drain {
		return
	}
	h, dc, cr := l.handle, l.deliveryCount, l.credit
	l.s.sendFlowLocked(&Flow{Handle: &h, DeliveryCount: &dc, LinkCredit: &cr, Drain: l.drain})
}
