package amqp

import (
	"fmt"
	"time"
)

// Message is an AMQP message: its sections in wire order. The body is either Data sections, or
// Sequence sections, or one Value (HasValue tells a null amqp-value from no body); a message may
// also have no body at all (CBS replies carry none).
type Message struct {
	Header                *Header
	DeliveryAnnotations   Map
	Annotations           Map // message-annotations
	Properties            *Properties
	ApplicationProperties Map // string keys
	Data                  [][]byte
	Sequence              []List
	Value                 any
	HasValue              bool
	Footer                Map

	// Format is the message-format of the transfer (0 for standard AMQP messages).
	Format uint32
}

// Header is the header section.
type Header struct {
	Durable       bool
	Priority      uint8 // default 4
	TTL           uint32
	FirstAcquirer bool
	DeliveryCount uint32
}

// Properties is the properties section. MessageID, CorrelationID keep their AMQP type (ulong, UUID,
// []byte or string).
type Properties struct {
	MessageID          any
	UserID             []byte
	To                 string
	Subject            string
	ReplyTo            string
	CorrelationID      any
	ContentType        Symbol
	ContentEncoding    Symbol
	AbsoluteExpiryTime time.Time
	CreationTime       time.Time
	GroupID            string
	GroupSequence      *uint32
	ReplyToGroupID     string
}

// NewMessage returns a message with one data section.
func NewMessage(data []byte) *Message { return &Message{Data: [][]byte{data}} }

// ApplicationProperty returns an application property by its string key.
func (m *Message) ApplicationProperty(key string) (any, bool) {
	return m.ApplicationProperties.Get(key)
}

// Annotation returns a message annotation by its symbol key.
func (m *Message) Annotation(key Symbol) (any, bool) { return m.Annotations.Get(key) }

// Marshal encodes the message sections.
func (m *Message) Marshal() ([]byte, error) {
	e := &encoder{}
	m.marshal(e)
	return e.b, e.err
}

func (m *Message) marshal(e *encoder) {
	if h := m.Header; h != nil {
		var prio any
		if h.Priority != 4 {
			prio = h.Priority
		}
		e.describedList(descHeader, optBool(h.Durable), prio, optUint32(h.TTL),
			optBool(h.FirstAcquirer), optUint32(h.DeliveryCount))
	}
	section := func(code uint64, v any) {
		e.u8(codeDescribed)
		e.ulong(code)
		e.value(v)
	}
	if m.DeliveryAnnotations != nil {
		section(descDeliveryAnn, m.DeliveryAnnotations)
	}
	if m.Annotations != nil {
		section(descMessageAnn, m.Annotations)
	}
	if p := m.Properties; p != nil {
		var gs any
		if p.GroupSequence != nil {
			gs = *p.GroupSequence
		}
		e.describedList(descProperties, p.MessageID, p.UserID, nonEmptyString(p.To),
			nonEmptyString(p.Subject), nonEmptyString(p.ReplyTo), p.CorrelationID,
			nonEmptySymbol(p.ContentType), nonEmptySymbol(p.ContentEncoding),
			optTime(p.AbsoluteExpiryTime), optTime(p.CreationTime), nonEmptyString(p.GroupID), gs,
			nonEmptyString(p.ReplyToGroupID))
	}
	if m.ApplicationProperties != nil {
		section(descAppProperties, m.ApplicationProperties)
	}
	for _, d := range m.Data {
		if d == nil {
			d = []byte{}
		}
		section(descData, d)
	}
	for _, s := range m.Sequence {
		if s == nil {
			s = List{}
		}
		section(descSequence, s)
	}
	if m.HasValue {
		section(descValue, m.Value)
	}
	if m.Footer != nil {
		section(descFooter, m.Footer)
	}
}

// UnmarshalMessage decodes the sections of a message payload. Sections must come in the order
// the specification fixes, each at most once (data and amqp-sequence may repeat), and one kind of
// body only.
func UnmarshalMessage(b []byte) (*Message, error) {
	m := &Message{}
	d := &decoder{b: b}
	last := uint64(0)
	for d.remaining() > 0 {
		v := d.value()
		if d.err != nil {
			return nil, d.err
		}
		dv, ok := v.(Described)
		if !ok {
			return nil, fmt.Errorf("%w: message section is %T, not described", ErrDecode, v)
		}
		code, ok := descriptorCode(dv.Descriptor)
		if !ok || code < descHeader || code > descFooter {
			return nil, fmt.Errorf("%w: unknown message section %v", ErrDecode, dv.Descriptor)
		}
		body := code >= descData && code <= descValue
		switch {
		case code < last:
			return nil, fmt.Errorf("%w: message section 0x%x out of order", ErrDecode, code)
		case code == last && !(code == descData || code == descSequence):
			return nil, fmt.Errorf("%w: message section 0x%x repeated", ErrDecode, code)
		case body && last >= descData && last <= descValue && code != last:
			return nil, fmt.Errorf("%w: message mixes body kinds", ErrDecode)
		}
		last = code
		var err error
		switch code {
		case descHeader:
			m.Header, err = decodeHeader(v)
		case descDeliveryAnn:
			m.DeliveryAnnotations, err = sectionMap(dv.Value, "delivery-annotations")
		case descMessageAnn:
			m.Annotations, err = sectionMap(dv.Value, "message-annotations")
		case descProperties:
			m.Properties, err = decodeProperties(v)
		case descAppProperties:
			m.ApplicationProperties, err = sectionMap(dv.Value, "application-properties")
			if err == nil {
				for _, kv := range m.ApplicationProperties {
					if _, ok := kv.Key.(string); !ok {
						return nil, fmt.Errorf("%w: application-properties key %T, not string",
							ErrDecode, kv.Key)
					}
				}
			}
		case descData:
			bin, ok := dv.Value.([]byte)
			if !ok {
				return nil, fmt.Errorf("%w: data section is %T, not binary", ErrDecode, dv.Value)
			}
			m.Data = append(m.Data, bin)
		case descSequence:
			l, ok := dv.Value.(List)
			if !ok {
				return nil, fmt.Errorf("%w: amqp-sequence section is %T, not list", ErrDecode, dv.Value)
			}
			m.Sequence = append(m.Sequence, l)
		case descValue:
			m.Value, m.HasValue = dv.Value, true
		case descFooter:
			m.Footer, err = sectionMap(dv.Value, "footer")
		}
		if err != nil {
			return nil, err
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

func sectionMap(v any, name string) (Map, error) {
	switch x := v.(type) {
	case nil:
		return Map{}, nil
	case Map:
		return x, nil
	}
	return nil, fmt.Errorf("%w: %s section is %T, not a map", ErrDecode, name, v)
}

func decodeHeader(v any) (*Header, error) {
	f, err := described(v, descHeader, "header")
	if err != nil {
		return nil, err
	}
	h := &Header{
		Durable:       f.boolean(0, false),
		Priority:      f.ubyte(1, 4),
		TTL:           f.uint(2, 0),
		FirstAcquirer: f.boolean(3, false),
		DeliveryCount: f.uint(4, 0),
	}
	return h, f.err
}

func decodeProperties(v any) (*Properties, error) {
	f, err := described(v, descProperties, "properties")
	if err != nil {
		return nil, err
	}
	p := &Properties{
		MessageID:          f.messageID(0),
		UserID:             f.binary(1),
		To:                 f.address(2),
		Subject:            f.str(3),
		ReplyTo:            f.address(4),
		CorrelationID:      f.messageID(5),
		ContentType:        f.symbol(6),
		ContentEncoding:    f.symbol(7),
		AbsoluteExpiryTime: f.timestamp(8),
		CreationTime:       f.timestamp(9),
		GroupID:            f.str(10),
		GroupSequence:      f.optUint(11),
		ReplyToGroupID:     f.str(12),
	}
	return p, f.err
}

// messageID reads a message-id or correlation-id: ulong, uuid, binary or string, kept as is.
func (f *fields) messageID(i int) any {
	switch v := f.get(i).(type) {
	case nil, uint64, UUID, []byte, string:
		return v
	default:
		f.bad(i, v, "message-id (ulong, uuid, binary or string)")
		return nil
	}
}
