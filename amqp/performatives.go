package amqp

import (
	"fmt"
)

// Role of a link endpoint: false is sender, true is receiver, as on the wire.
type Role bool

const (
	RoleSender   Role = false
	RoleReceiver Role = true
)

func (r Role) String() string {
	if r == RoleReceiver {
		return "receiver"
	}
	return "sender"
}

// Settlement modes.
const (
	SndUnsettled uint8 = 0
	SndSettled   uint8 = 1
	SndMixed     uint8 = 2
	RcvFirst     uint8 = 0
	RcvSecond    uint8 = 1
)

// Open is the open performative.
type Open struct {
	ContainerID         string
	Hostname            string
	MaxFrameSize        uint32 // default 4294967295
	ChannelMax          uint16 // default 65535
	IdleTimeout         uint32 // milliseconds; 0 = none
	OutgoingLocales     []Symbol
	IncomingLocales     []Symbol
	OfferedCapabilities []Symbol
	DesiredCapabilities []Symbol
	Properties          Map
}

func (p *Open) marshal(e *encoder) {
	var idle any
	if p.IdleTimeout != 0 {
		idle = p.IdleTimeout
	}
	e.describedList(descOpen, p.ContainerID, nonEmptyString(p.Hostname), p.MaxFrameSize,
		p.ChannelMax, idle, optSymbols(p.OutgoingLocales), optSymbols(p.IncomingLocales),
		optSymbols(p.OfferedCapabilities), optSymbols(p.DesiredCapabilities), optMap(p.Properties))
}

func decodeOpen(f *fields) (*Open, error) {
	p := &Open{
		ContainerID:         f.str(0),
		Hostname:            f.str(1),
		MaxFrameSize:        f.uint(2, 4294967295),
		ChannelMax:          f.ushort(3, 65535),
		IdleTimeout:         f.uint(4, 0),
		OutgoingLocales:     f.symbols(5),
		IncomingLocales:     f.symbols(6),
		OfferedCapabilities: f.symbols(7),
		DesiredCapabilities: f.symbols(8),
		Properties:          f.fieldsMap(9),
	}
	if f.err == nil && f.get(0) == nil {
		return nil, invalidField("open", "container-id")
	}
	return p, f.err
}

// Begin is the begin performative.
type Begin struct {
	RemoteChannel       *uint16
	NextOutgoingID      uint32
	IncomingWindow      uint32
	OutgoingWindow      uint32
	HandleMax           uint32 // default 4294967295
	OfferedCapabilities []Symbol
	DesiredCapabilities []Symbol
	Properties          Map
}

func (p *Begin) marshal(e *encoder) {
	var rc any
	if p.RemoteChannel != nil {
		rc = *p.RemoteChannel
	}
	e.describedList(descBegin, rc, p.NextOutgoingID, p.IncomingWindow, p.OutgoingWindow,
		p.HandleMax, optSymbols(p.OfferedCapabilities), optSymbols(p.DesiredCapabilities),
		optMap(p.Properties))
}

func decodeBegin(f *fields) (*Begin, error) {
	p := &Begin{
		RemoteChannel:       f.optUshort(0),
		NextOutgoingID:      f.uint(1, 0),
		IncomingWindow:      f.uint(2, 0),
		OutgoingWindow:      f.uint(3, 0),
		HandleMax:           f.uint(4, 4294967295),
		OfferedCapabilities: f.symbols(5),
		DesiredCapabilities: f.symbols(6),
		Properties:          f.fieldsMap(7),
	}
	if f.err == nil && (f.get(1) == nil || f.get(2) == nil || f.get(3) == nil) {
		return nil, invalidField("begin", "next-outgoing-id, incoming-window or outgoing-window")
	}
	return p, f.err
}

// Attach is the attach performative.
type Attach struct {
	Name                 string
	Handle               uint32
	Role                 Role
	SndSettleMode        uint8 // default mixed
	RcvSettleMode        uint8 // default first
	Source               *Source
	Target               *Target
	Unsettled            Map
	IncompleteUnsettled  bool
	InitialDeliveryCount *uint32
	MaxMessageSize       uint64 // 0 = no limit
	OfferedCapabilities  []Symbol
	DesiredCapabilities  []Symbol
	Properties           Map
}

func (p *Attach) marshal(e *encoder) {
	var mms any
	if p.MaxMessageSize != 0 {
		mms = p.MaxMessageSize
	}
	e.describedList(descAttach, p.Name, p.Handle, bool(p.Role), p.SndSettleMode, p.RcvSettleMode,
		p.Source, p.Target, optMap(p.Unsettled), optBool(p.IncompleteUnsettled),
		optUintField(p.InitialDeliveryCount), mms, optSymbols(p.OfferedCapabilities),
		optSymbols(p.DesiredCapabilities), optMap(p.Properties))
}

func decodeAttach(f *fields) (*Attach, error) {
	p := &Attach{
		Name:                 f.str(0),
		Handle:               f.uint(1, 0),
		Role:                 Role(f.boolean(2, false)),
		SndSettleMode:        f.ubyte(3, SndMixed),
		RcvSettleMode:        f.ubyte(4, RcvFirst),
		Unsettled:            f.fieldsMap(7),
		IncompleteUnsettled:  f.boolean(8, false),
		InitialDeliveryCount: f.optUint(9),
		MaxMessageSize:       f.ulong(10),
		OfferedCapabilities:  f.symbols(11),
		DesiredCapabilities:  f.symbols(12),
		Properties:           f.fieldsMap(13),
	}
	if f.err != nil {
		return nil, f.err
	}
	var err error
	if p.Source, err = decodeSource(f.get(5)); err != nil {
		return nil, err
	}
	if p.Target, err = decodeTarget(f.get(6)); err != nil {
		return nil, err
	}
	if f.get(0) == nil || f.get(1) == nil || f.get(2) == nil {
		return nil, invalidField("attach", "name, handle or role")
	}
	if p.SndSettleMode > SndMixed || p.RcvSettleMode > RcvSecond {
		return nil, invalidField("attach", "settle mode")
	}
	return p, nil
}

// Flow is the flow performative.
type Flow struct {
	NextIncomingID *uint32
	IncomingWindow uint32
	NextOutgoingID uint32
	OutgoingWindow uint32
	Handle         *uint32
	DeliveryCount  *uint32
	LinkCredit     *uint32
	Available      *uint32
	Drain          bool
	Echo           bool
	Properties     Map
}

func (p *Flow) marshal(e *encoder) {
	e.describedList(descFlow, optUintField(p.NextIncomingID), p.IncomingWindow,
		p.NextOutgoingID, p.OutgoingWindow, optUintField(p.Handle),
		optUintField(p.DeliveryCount), optUintField(p.LinkCredit), optUintField(p.Available),
		optBool(p.Drain), optBool(p.Echo), optMap(p.Properties))
}

func decodeFlow(f *fields) (*Flow, error) {
	p := &Flow{
		NextIncomingID: f.optUint(0),
		IncomingWindow: f.uint(1, 0),
		NextOutgoingID: f.uint(2, 0),
		OutgoingWindow: f.uint(3, 0),
		Handle:         f.optUint(4),
		DeliveryCount:  f.optUint(5),
		LinkCredit:     f.optUint(6),
		Available:      f.optUint(7),
		Drain:          f.boolean(8, false),
		Echo:           f.boolean(9, false),
		Properties:     f.fieldsMap(10),
	}
	if f.err == nil && (f.get(1) == nil || f.get(2) == nil || f.get(3) == nil) {
		return nil, invalidField("flow", "incoming-window, next-outgoing-id or outgoing-window")
	}
	return p, f.err
}

// Transfer is the transfer performative; Payload is the part of the message this frame carries.
type Transfer struct {
	Handle        uint32
	DeliveryID    *uint32
	DeliveryTag   []byte
	MessageFormat *uint32
	Settled       bool
	More          bool
	RcvSettleMode *uint8
	State         DeliveryState
	Resume        bool
	Aborted       bool
	Batchable     bool
	Payload       []byte
}

func (p *Transfer) marshal(e *encoder) {
	var rsm any
	if p.RcvSettleMode != nil {
		rsm = *p.RcvSettleMode
	}
	var st any
	if p.State != nil {
		st = p.State
	}
	e.describedList(descTransfer, p.Handle, optUintField(p.DeliveryID), p.DeliveryTag,
		optUintField(p.MessageFormat), optBool(p.Settled), optBool(p.More), rsm, st,
		optBool(p.Resume), optBool(p.Aborted), optBool(p.Batchable))
}

func decodeTransfer(f *fields) (*Transfer, error) {
	p := &Transfer{
		Handle:        f.uint(0, 0),
		DeliveryID:    f.optUint(1),
		DeliveryTag:   f.binary(2),
		MessageFormat: f.optUint(3),
		Settled:       f.boolean(4, false),
		More:          f.boolean(5, false),
		State:         f.state(7),
		Resume:        f.boolean(8, false),
		Aborted:       f.boolean(9, false),
		Batchable:     f.boolean(10, false),
	}
	if v := f.get(6); v != nil {
		m := f.ubyte(6, 0)
		p.RcvSettleMode = &m
	}
	if f.err == nil && f.get(0) == nil {
		return nil, invalidField("transfer", "handle")
	}
	if len(p.DeliveryTag) > 32 {
		return nil, invalidField("transfer", "delivery-tag longer than 32 bytes")
	}
	return p, f.err
}

// Disposition is the disposition performative.
type Disposition struct {
	Role      Role
	First     uint32
	Last      *uint32
	Settled   bool
	State     DeliveryState
	Batchable bool
}

func (p *Disposition) marshal(e *encoder) {
	var st any
	if p.State != nil {
		st = p.State
	}
	e.describedList(descDisposition, bool(p.Role), p.First, optUintField(p.Last),
		optBool(p.Settled), st, optBool(p.Batchable))
}

func decodeDisposition(f *fields) (*Disposition, error) {
	p := &Disposition{
		Role:      Role(f.boolean(0, false)),
		First:     f.uint(1, 0),
		Last:      f.optUint(2),
		Settled:   f.boolean(3, false),
		State:     f.state(4),
		Batchable: f.boolean(5, false),
	}
	if f.err == nil && (f.get(0) == nil || f.get(1) == nil) {
		return nil, invalidField("disposition", "role or first")
	}
	return p, f.err
}

// Detach is the detach performative.
type Detach struct {
	Handle uint32
	Closed bool
	Error  *Error
}

func (p *Detach) marshal(e *encoder) {
	e.describedList(descDetach, p.Handle, optBool(p.Closed), p.Error)
}

func decodeDetach(f *fields) (*Detach, error) {
	p := &Detach{Handle: f.uint(0, 0), Closed: f.boolean(1, false), Error: f.errorField(2)}
	if f.err == nil && f.get(0) == nil {
		return nil, invalidField("detach", "handle")
	}
	return p, f.err
}

// End is the end performative.
type End struct{ Error *Error }

func (p *End) marshal(e *encoder) { e.describedList(descEnd, p.Error) }

// Close is the close performative.
type Close struct{ Error *Error }

func (p *Close) marshal(e *encoder) { e.describedList(descClose, p.Error) }

// SASL frames.
type (
	SASLMechanisms struct{ Mechanisms []Symbol }
	SASLInit       struct {
		Mechanism       Symbol
		InitialResponse []byte
		Hostname        string
	}
	SASLChallenge struct{ Challenge []byte }
	SASLResponse  struct{ Response []byte }
	SASLOutcome   struct {
		Code           SASLCode
		AdditionalData []byte
	}
)

// SASLCode is the outcome code of a SASL exchange.
type SASLCode uint8

const (
	SASLOK      SASLCode = 0 // authentication succeeded
	SASLAuth    SASLCode = 1 // bad credentials
	SASLSys     SASLCode = 2 // system error
	SASLSysPerm SASLCode = 3 // permanent system error
	SASLSysTemp SASLCode = 4 // transient system error
)

func (p *SASLMechanisms) marshal(e *encoder) {
	// Always an array, even of one: clients read the field as a symbol array.
	e.describedList(descSASLMechanisms, Array{Code: codeSym32, Values: symbolsAny(p.Mechanisms)})
}

func symbolsAny(s []Symbol) []any {
	out := make([]any, len(s))
	for i, x := range s {
		out[i] = x
	}
	return out
}

func (p *SASLInit) marshal(e *encoder) {
	e.describedList(descSASLInit, p.Mechanism, p.InitialResponse, nonEmptyString(p.Hostname))
}
func (p *SASLChallenge) marshal(e *encoder) { e.describedList(descSASLChallenge, p.Challenge) }
func (p *SASLResponse) marshal(e *encoder)  { e.describedList(descSASLResponse, p.Response) }
func (p *SASLOutcome) marshal(e *encoder) {
	e.describedList(descSASLOutcome, uint8(p.Code), p.AdditionalData)
}

func invalidField(perf, field string) error {
	return &Error{Condition: ErrCondInvalidField, Description: perf + ": missing or invalid " + field}
}

// decodeFrameBody decodes the performative at the start of a frame body and returns it with the
// bytes that follow it (a transfer's payload). Anything after a performative other than transfer
// is an error.
func decodeFrameBody(b []byte) (any, error) {
	d := &decoder{b: b}
	v := d.value()
	if d.err != nil {
		return nil, d.err
	}
	dv, ok := v.(Described)
	if !ok {
		return nil, fmt.Errorf("%w: frame body is %T, not a performative", ErrDecode, v)
	}
	code, ok := descriptorCode(dv.Descriptor)
	if !ok {
		return nil, fmt.Errorf("%w: unknown performative %v", ErrDecode, dv.Descriptor)
	}
	f, err := described(v, code, "performative")
	if err != nil {
		return nil, err
	}
	payload := b[d.off:]
	if code != descTransfer && len(payload) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after performative 0x%x", ErrDecode, len(payload), code)
	}
	switch code {
	case descOpen:
		f.name = "open"
		return decodeOpen(f)
	case descBegin:
		f.name = "begin"
		return decodeBegin(f)
	case descAttach:
		f.name = "attach"
		return decodeAttach(f)
	case descFlow:
		f.name = "flow"
		return decodeFlow(f)
	case descTransfer:
		f.name = "transfer"
		t, err := decodeTransfer(f)
		if t != nil && len(payload) > 0 {
			t.Payload = payload
		}
		return t, err
	case descDisposition:
		f.name = "disposition"
		return decodeDisposition(f)
	case descDetach:
		f.name = "detach"
		return decodeDetach(f)
	case descEnd:
		f.name = "end"
		e := f.errorField(0)
		return &End{Error: e}, f.err
	case descClose:
		f.name = "close"
		e := f.errorField(0)
		return &Close{Error: e}, f.err
	case descSASLMechanisms:
		f.name = "sasl-mechanisms"
		return &SASLMechanisms{Mechanisms: f.symbols(0)}, f.err
	case descSASLInit:
		f.name = "sasl-init"
		p := &SASLInit{Mechanism: f.symbol(0), InitialResponse: f.binary(1), Hostname: f.str(2)}
		if f.err == nil && p.Mechanism == "" {
			return nil, invalidField("sasl-init", "mechanism")
		}
		return p, f.err
	case descSASLChallenge:
		f.name = "sasl-challenge"
		return &SASLChallenge{Challenge: f.binary(0)}, f.err
	case descSASLResponse:
		f.name = "sasl-response"
		return &SASLResponse{Response: f.binary(0)}, f.err
	case descSASLOutcome:
		f.name = "sasl-outcome"
		return &SASLOutcome{Code: SASLCode(f.ubyte(0, 0)), AdditionalData: f.binary(1)}, f.err
	}
	return nil, fmt.Errorf("%w: descriptor 0x%x is not a performative", ErrDecode, code)
}

// DeliveryState is the state of a delivery: one of the outcomes Accepted, Rejected, Released,
// Modified, or the non-terminal Received.
type DeliveryState interface {
	marshaler
	deliveryState()
}

type (
	// Accepted: the message was processed (for berth: stored durably).
	Accepted struct{}
	// Rejected: the message is invalid and will not be processed; Error says why.
	Rejected struct{ Error *Error }
	// Released: the message was not processed and may be redelivered.
	Released struct{}
	// Modified: like Released, with delivery-failed counting a delivery attempt.
	Modified struct {
		DeliveryFailed     bool
		UndeliverableHere  bool
		MessageAnnotations Map
	}
	// Received: how much of a delivery has arrived (resumption; carried, not acted upon).
	Received struct {
		SectionNumber uint32
		SectionOffset uint64
	}
)

func (Accepted) deliveryState() {}
func (Rejected) deliveryState() {}
func (Released) deliveryState() {}
func (Modified) deliveryState() {}
func (Received) deliveryState() {}

func (Accepted) marshal(e *encoder)   { e.describedList(descAccepted) }
func (s Rejected) marshal(e *encoder) { e.describedList(descRejected, s.Error) }
func (Released) marshal(e *encoder)   { e.describedList(descReleased) }
func (s Modified) marshal(e *encoder) {
	e.describedList(descModified, optBool(s.DeliveryFailed), optBool(s.UndeliverableHere),
		optMap(s.MessageAnnotations))
}
func (s Received) marshal(e *encoder) {
	e.describedList(descReceived, s.SectionNumber, s.SectionOffset)
}

func decodeState(v any) (DeliveryState, error) {
	dv, ok := v.(Described)
	if !ok {
		return nil, fmt.Errorf("%w: delivery state is %T", ErrDecode, v)
	}
	code, _ := descriptorCode(dv.Descriptor)
	f, err := described(v, code, "delivery-state")
	if err != nil {
		return nil, err
	}
	var s DeliveryState
	switch code {
	case descAccepted:
		s = Accepted{}
	case descRejected:
		s = Rejected{Error: f.errorField(0)}
	case descReleased:
		s = Released{}
	case descModified:
		s = Modified{DeliveryFailed: f.boolean(0, false), UndeliverableHere: f.boolean(1, false),
			MessageAnnotations: f.fieldsMap(2)}
	case descReceived:
		s = Received{SectionNumber: f.uint(0, 0), SectionOffset: f.ulong(1)}
	default:
		return nil, fmt.Errorf("%w: unknown delivery state %v", ErrDecode, dv.Descriptor)
	}
	return s, f.err
}

// Source is a link source terminus.
type Source struct {
	Address               string
	Durable               uint32
	ExpiryPolicy          Symbol
	Timeout               uint32
	Dynamic               bool
	DynamicNodeProperties Map
	DistributionMode      Symbol
	Filter                Map // filter-set: symbol → described filter value
	DefaultOutcome        any
	Outcomes              []Symbol
	Capabilities          []Symbol
}

func (s *Source) marshal(e *encoder) {
	e.describedList(descSource, nonEmptyString(s.Address), optUint32(s.Durable),
		nonEmptySymbol(s.ExpiryPolicy), optUint32(s.Timeout), optBool(s.Dynamic),
		optMap(s.DynamicNodeProperties), nonEmptySymbol(s.DistributionMode), optMap(s.Filter),
		s.DefaultOutcome, optSymbols(s.Outcomes), optSymbols(s.Capabilities))
}

func decodeSource(v any) (*Source, error) {
	f, err := described(v, descSource, "source")
	if err != nil || f == nil {
		return nil, err
	}
	s := &Source{
		Address:               f.address(0),
		Durable:               f.uint(1, 0),
		ExpiryPolicy:          f.symbol(2),
		Timeout:               f.uint(3, 0),
		Dynamic:               f.boolean(4, false),
		DynamicNodeProperties: f.fieldsMap(5),
		DistributionMode:      f.symbol(6),
		Filter:                f.fieldsMap(7),
		DefaultOutcome:        f.get(8),
		Outcomes:              f.symbols(9),
		Capabilities:          f.symbols(10),
	}
	return s, f.err
}

// Target is a link target terminus.
type Target struct {
	Address               string
	Durable               uint32
	ExpiryPolicy          Symbol
	Timeout               uint32
	Dynamic               bool
	DynamicNodeProperties Map
	Capabilities          []Symbol
}

func (t *Target) marshal(e *encoder) {
	e.describedList(descTarget, nonEmptyString(t.Address), optUint32(t.Durable),
		nonEmptySymbol(t.ExpiryPolicy), optUint32(t.Timeout), optBool(t.Dynamic),
		optMap(t.DynamicNodeProperties), optSymbols(t.Capabilities))
}

func decodeTarget(v any) (*Target, error) {
	f, err := described(v, descTarget, "target")
	if err != nil || f == nil {
		return nil, err
	}
	t := &Target{
		Address:               f.address(0),
		Durable:               f.uint(1, 0),
		ExpiryPolicy:          f.symbol(2),
		Timeout:               f.uint(3, 0),
		Dynamic:               f.boolean(4, false),
		DynamicNodeProperties: f.fieldsMap(5),
		Capabilities:          f.symbols(6),
	}
	return t, f.err
}

func optUint32(v uint32) any {
	if v == 0 {
		return nil
	}
	return v
}

func nonEmptySymbol(s Symbol) any {
	if s == "" {
		return nil
	}
	return s
}
