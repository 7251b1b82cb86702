package amqp

// Session is one AMQP session. berth never begins sessions, so its channel and the peer's are the
// same number; for the same reason a link's handle is the peer's handle.
type Session struct {
	c         *Conn
	ch        uint16
	handleMax uint32
	ending    bool // berth sent end and awaits the peer's

	// Incoming transfers (from the peer).
	nextIncomingID uint32
	incomingWindow uint32
	// Outgoing transfers (berth's).
	nextOutgoingID       uint32
	nextDeliveryID       uint32
	remoteIncomingWindow uint32

	links        map[uint32]*Link
	inUnsettled  map[uint32]*Delivery // deliveries berth received and has not settled
	outUnsettled map[uint32]*Sent     // deliveries berth sent that the peer has not settled
}

// Conn is the session's connection.
func (s *Session) Conn() *Conn { return s.c }

// End ends the session with an error condition (nil for a plain end).
func (s *Session) End(e *Error) {
	s.c.mu.Lock()
	s.endLocked(e)
	s.c.flushLocked()
	s.c.unlockAndRun()
}

func (s *Session) endLocked(e *Error) {
	if s.ending || s.c.sessions[s.ch] != s {
		return
	}
	s.ending = true
	_ = s.c.writeLocked(frameAMQP, s.ch, &End{Error: e}, nil)
	s.goneLocked(e)
}

// goneLocked ends every link of the session: their handlers hear Detached, berth's unsettled
// sends their lost outcome.
func (s *Session) goneLocked(e *Error) {
	for _, l := range s.links {
		l.goneLocked(e)
	}
	s.links = map[uint32]*Link{}
	s.inUnsettled = map[uint32]*Delivery{}
}

// frameLocked handles a session-level performative.
func (s *Session) frameLocked(p any) {
	if s.ending {
		if _, ok := p.(*End); ok {
			delete(s.c.sessions, s.ch)
		}
		return // the session is over for berth; only the peer's end matters
	}
	switch p := p.(type) {
	case *End:
		_ = s.c.writeLocked(frameAMQP, s.ch, &End{}, nil)
		delete(s.c.sessions, s.ch)
		s.ending = true
		s.goneLocked(p.Error)
	case *Attach:
		s.attachLocked(p)
	case *Flow:
		s.flowLocked(p)
	case *Transfer:
		s.transferLocked(p)
	case *Disposition:
		s.dispositionLocked(p)
	case *Detach:
		s.detachLocked(p)
	}
}

// window bookkeeping: a flow from berth always restores the full incoming window.
func (s *Session) flowFields(f *Flow) {
	s.incomingWindow = s.c.cfg.SessionWindow
	nid := s.nextIncomingID
	f.NextIncomingID = &nid
	f.IncomingWindow = s.incomingWindow
	f.NextOutgoingID = s.nextOutgoingID
	f.OutgoingWindow = s.c.cfg.SessionWindow
}

func (s *Session) sendFlowLocked(f *Flow) {
	s.flowFields(f)
	_ = s.c.writeLocked(frameAMQP, s.ch, f, nil)
}

func (s *Session) attachLocked(a *Attach) {
	c := s.c
	if a.Handle > s.handleMax {
		c.closeLocked(Errorf(ErrCondFramingError, "handle %d beyond handle-max %d", a.Handle, s.handleMax))
		return
	}
	if s.links[a.Handle] != nil {
		s.endLocked(Errorf(ErrCondHandleInUse, "handle %d is attached", a.Handle))
		return
	}
	l := &Link{
		s:              s,
		handle:         a.Handle,
		name:           a.Name,
		role:           !a.Role,
		peer:           a,
		source:         a.Source,
		target:         a.Target,
		sndMode:        a.SndSettleMode,
		rcvMode:        a.RcvSettleMode,
		maxMessageSize: c.cfg.MaxMessageSize,
		window:         uint32(c.cfg.MaxUnsettled),
		attaching:      true,
	}
	if l.window > 100 {
		l.window = 100
	}
	if a.InitialDeliveryCount != nil {
		l.deliveryCount = *a.InitialDeliveryCount
	}
	s.links[a.Handle] = l
	c.mu.Unlock()
	h, e := c.h.Attach(l)
	c.mu.Lock()
	l.attaching = false
	if c.closing || s.ending || s.links[a.Handle] != l {
		return
	}
	if e == nil {
		switch l.role {
		case RoleReceiver:
			if rh, ok := h.(ReceiverHandler); ok {
				l.rh = rh
			}
		case RoleSender:
			if sh, ok := h.(SenderHandler); ok {
				l.sh = sh
			}
		}
		if l.rh == nil && l.sh == nil {
			e = Errorf(ErrCondInternalError, "no %s for this link", l.role)
		}
	}
	reply := &Attach{
		Name:          a.Name,
		Handle:        a.Handle,
		Role:          l.role,
		SndSettleMode: a.SndSettleMode,
		RcvSettleMode: a.RcvSettleMode,
		Source:        l.source,
		Target:        l.target,
	}
	if l.role == RoleReceiver {
		reply.RcvSettleMode = RcvFirst // berth settles what it receives at once
	} else {
		idc := uint32(0)
		reply.InitialDeliveryCount = &idc
	}
	if e != nil {
		// Refusal: the terminus the peer expects is null, then the detach says why.
		if l.role == RoleReceiver {
			reply.Target = nil
		} else {
			reply.Source = nil
		}
		_ = c.writeLocked(frameAMQP, s.ch, reply, nil)
		l.detaching = true
		_ = c.writeLocked(frameAMQP, s.ch, &Detach{Handle: a.Handle, Closed: true, Error: e}, nil)
		return
	}
	reply.MaxMessageSize = l.maxMessageSize
	reply.OfferedCapabilities = l.offered
	l.attached = true
	if err := c.writeLocked(frameAMQP, s.ch, reply, nil); err != nil {
		return
	}
	if l.role == RoleReceiver && !l.manual {
		l.refillLocked()
	}
}

func (s *Session) flowLocked(f *Flow) {
	// The peer's view of berth's outgoing transfers.
	next := uint32(0)
	if f.NextIncomingID != nil {
		next = *f.NextIncomingID
	}
	s.remoteIncomingWindow = next + f.IncomingWindow - s.nextOutgoingID
	if f.Handle == nil {
		if f.Echo {
			s.sendFlowLocked(&Flow{})
		}
		// The window may have opened for blocked senders.
		for _, l := range s.links {
			if l.sh != nil && l.attached && !l.detaching && l.credit > 0 {
				l.notifyCreditLocked()
			}
		}
		return
	}
	l := s.links[*f.Handle]
	if l == nil {
		s.endLocked(Errorf(ErrCondUnattachedHandle, "flow for handle %d", *f.Handle))
		return
	}
	if l.detaching || !l.attached {
		return
	}
	if l.role == RoleSender {
		dc := uint32(0)
		if f.DeliveryCount != nil {
			dc = *f.DeliveryCount
		}
		credit := uint32(0)
		if f.LinkCredit != nil {
			credit = *f.LinkCredit
		}
		l.credit = dc + credit - l.deliveryCount
		if int32(l.credit) < 0 {
			l.credit = 0
		}
		l.drain = f.Drain
		l.notifyCreditLocked()
		if f.Drain || f.Echo {
			s.c.queue(func() {
				s.c.mu.Lock()
				l.drainLocked(f.Echo)
				s.c.flushLocked()
				s.c.mu.Unlock()
			})
		}
		return
	}
	if f.Echo {
		l.sendLinkFlowLocked()
	}
}

func (s *Session) transferLocked(t *Transfer) {
	if s.incomingWindow == 0 {
		s.endLocked(Errorf(ErrCondWindowViolation, "transfer beyond the incoming window"))
		return
	}
	s.incomingWindow--
	s.nextIncomingID++
	if s.incomingWindow < s.c.cfg.SessionWindow/2 {
		s.sendFlowLocked(&Flow{})
	}
	l := s.links[t.Handle]
	if l == nil {
		s.endLocked(Errorf(ErrCondUnattachedHandle, "transfer on handle %d", t.Handle))
		return
	}
	if l.detaching || !l.attached {
		return
	}
	if l.role != RoleReceiver {
		s.c.closeLocked(Errorf(ErrCondNotAllowed, "transfer on link %q, where berth is the sender", l.name))
		return
	}
	l.transferLocked(t)
}

// inRange tells whether serial number id lies in [first, last].
func inRange(id, first, last uint32) bool { return id-first <= last-first }

func (s *Session) dispositionLocked(d *Disposition) {
	last := d.First
	if d.Last != nil {
		last = *d.Last
	}
	if d.Role == RoleSender {
		// The peer settles deliveries it sent: berth already settled them (rcv-settle-mode first)
		// or they stay with the application, which may still settle; nothing to do.
		return
	}
	// The peer (receiver) settles or decides deliveries berth sent. Walk whichever is smaller:
	// the range or the unsettled map, so a huge range costs nothing.
	var hits []*Sent
	if uint64(last-d.First) < uint64(len(s.outUnsettled)) {
		for id := d.First; ; id++ {
			if x := s.outUnsettled[id]; x != nil {
				hits = append(hits, x)
			}
			if id == last {
				break
			}
		}
	} else {
		for id, x := range s.outUnsettled {
			if inRange(id, d.First, last) {
				hits = append(hits, x)
			}
		}
	}
	if len(hits) == 0 {
		return // duplicates happen (auto-accept plus complete): tolerated
	}
	if !d.Settled {
		if _, terminal := d.State.(Received); terminal || d.State == nil {
			return
		}
		// rcv-settle-mode second: the peer decided; berth settles, which ends the delivery.
		_ = s.c.writeLocked(frameAMQP, s.ch, &Disposition{Role: RoleSender, First: d.First,
			Last: d.Last, Settled: true, State: d.State}, nil)
	}
	for _, x := range hits {
		x.finishLocked(d.State)
	}
}

func (s *Session) detachLocked(d *Detach) {
	l := s.links[d.Handle]
	if l == nil {
		s.endLocked(Errorf(ErrCondUnattachedHandle, "detach of handle %d", d.Handle))
		return
	}
	delete(s.links, d.Handle)
	if l.detaching {
		l.goneLocked(nil)
		return // the answer to berth's own detach
	}
	l.detaching = true
	_ = s.c.writeLocked(frameAMQP, s.ch, &Detach{Handle: d.Handle, Closed: d.Closed}, nil)
	l.goneLocked(d.Error)
}
