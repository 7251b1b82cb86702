package amqp

import (
	"fmt"
	"time"
)

// Descriptor codes (domain 0x00000000) of the composite types the engine knows.
const (
	descOpen           = 0x10
	descBegin          = 0x11
	descAttach         = 0x12
	descFlow           = 0x13
	descTransfer       = 0x14
	descDisposition    = 0x15
	descDetach         = 0x16
	descEnd            = 0x17
	descClose          = 0x18
	descError          = 0x1d
	descReceived       = 0x23
	descAccepted       = 0x24
	descRejected       = 0x25
	descReleased       = 0x26
	descModified       = 0x27
	descSource         = 0x28
	descTarget         = 0x29
	descDeleteOnClose  = 0x2b
	descSASLMechanisms = 0x40
	descSASLInit       = 0x41
	descSASLChallenge  = 0x42
	descSASLResponse   = 0x43
	descSASLOutcome    = 0x44
	descHeader         = 0x70
	descDeliveryAnn    = 0x71
	descMessageAnn     = 0x72
	descProperties     = 0x73
	descAppProperties  = 0x74
	descData           = 0x75
	descSequence       = 0x76
	descValue          = 0x77
	descFooter         = 0x78

	// DescriptorSelectorFilter is the Apache selector filter (apache.org:selector-filter:string)
	// Event Hubs clients put in a source's filter map.
	DescriptorSelectorFilter uint64 = 0x0000468C00000004
)

// symbolicDescriptors lets a peer use the symbolic form of a descriptor, which the specification
// allows everywhere a numeric one is allowed.
var symbolicDescriptors = map[Symbol]uint64{
	"amqp:open:list": descOpen, "amqp:begin:list": descBegin, "amqp:attach:list": descAttach,
	"amqp:flow:list": descFlow, "amqp:transfer:list": descTransfer,
	"amqp:disposition:list": descDisposition, "amqp:detach:list": descDetach,
	"amqp:end:list": descEnd, "amqp:close:list": descClose, "amqp:error:list": descError,
	"amqp:received:list": descReceived, "amqp:accepted:list": descAccepted,
	"amqp:rejected:list": descRejected, "amqp:released:list": descReleased,
	"amqp:modified:list": descModified, "amqp:source:list": descSource,
	"amqp:target:list": descTarget, "amqp:sasl-mechanisms:list": descSASLMechanisms,
	"amqp:sasl-init:list": descSASLInit, "amqp:sasl-challenge:list": descSASLChallenge,
	"amqp:sasl-response:list": descSASLResponse, "amqp:sasl-outcome:list": descSASLOutcome,
	"amqp:header:list": descHeader, "amqp:delivery-annotations:map": descDeliveryAnn,
	"amqp:message-annotations:map": descMessageAnn, "amqp:properties:list": descProperties,
	"amqp:application-properties:map": descAppProperties, "amqp:data:binary": descData,
	"amqp:amqp-sequence:list": descSequence, "amqp:amqp-value:*": descValue,
	"amqp:footer:map":                   descFooter,
	"apache.org:selector-filter:string": DescriptorSelectorFilter,
}

// descriptorCode returns the numeric code of a descriptor given in either form.
func descriptorCode(d any) (uint64, bool) {
	switch x := d.(type) {
	case uint64:
		return x, true
	case Symbol:
		c, ok := symbolicDescriptors[x]
		return c, ok
	}
	return 0, false
}

// fields reads the positional fields of a described list with type checks: a field of the wrong
// type is a decode error, an absent or null field gives the default.
type fields struct {
	l    List
	name string
	err  error
}

// described unwraps a described list with the given descriptor. A nil value gives nil fields.
func described(v any, code uint64, name string) (*fields, error) {
	if v == nil {
		return nil, nil
	}
	dv, ok := v.(Described)
	if !ok {
		return nil, fmt.Errorf("%w: %s: not a described value (%T)", ErrDecode, name, v)
	}
	if c, ok := descriptorCode(dv.Descriptor); !ok || c != code {
		return nil, fmt.Errorf("%w: %s: unexpected descriptor %v", ErrDecode, name, dv.Descriptor)
	}
	l, ok := dv.Value.(List)
	if !ok {
		return nil, fmt.Errorf("%w: %s: described value is %T, not a list", ErrDecode, name, dv.Value)
	}
	return &fields{l: l, name: name}, nil
}

func (f *fields) get(i int) any {
	if f == nil || i >= len(f.l) {
		return nil
	}
	return f.l[i]
}

func (f *fields) bad(i int, v any, want string) {
	if f.err == nil {
		f.err = fmt.Errorf("%w: %s field %d is %T, want %s", ErrDecode, f.name, i, v, want)
	}
}

func (f *fields) uint(i int, def uint32) uint32 {
	switch v := f.get(i).(type) {
	case nil:
		return def
	case uint32:
		return v
	default:
		f.bad(i, v, "uint")
		return def
	}
}

func (f *fields) optUint(i int) *uint32 {
	switch v := f.get(i).(type) {
	case nil:
		return nil
	case uint32:
		return &v
	default:
		f.bad(i, v, "uint")
		return nil
	}
}

func (f *fields) ushort(i int, def uint16) uint16 {
	switch v := f.get(i).(type) {
	case nil:
		return def
	case uint16:
		return v
	default:
		f.bad(i, v, "ushort")
		return def
	}
}

func (f *fields) optUshort(i int) *uint16 {
	switch v := f.get(i).(type) {
	case nil:
		return nil
	case uint16:
		return &v
	default:
		f.bad(i, v, "ushort")
		return nil
	}
}

func (f *fields) ubyte(i int, def uint8) uint8 {
	switch v := f.get(i).(type) {
	case nil:
		return def
	case uint8:
		return v
	default:
		f.bad(i, v, "ubyte")
		return def
	}
}

func (f *fields) ulong(i int) uint64 {
	switch v := f.get(i).(type) {
	case nil:
		return 0
	case uint64:
		return v
	default:
		f.bad(i, v, "ulong")
		return 0
	}
}

func (f *fields) boolean(i int, def bool) bool {
	switch v := f.get(i).(type) {
	case nil:
		return def
	case bool:
		return v
	default:
		f.bad(i, v, "boolean")
		return def
	}
}

func (f *fields) str(i int) string {
	switch v := f.get(i).(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		f.bad(i, v, "string")
		return ""
	}
}

func (f *fields) symbol(i int) Symbol {
	switch v := f.get(i).(type) {
	case nil:
		return ""
	case Symbol:
		return v
	default:
		f.bad(i, v, "symbol")
		return ""
	}
}

// symbols reads a "multiple" symbol field: one symbol or an array of them.
func (f *fields) symbols(i int) []Symbol {
	switch v := f.get(i).(type) {
	case nil:
		return nil
	case Symbol:
		return []Symbol{v}
	case []Symbol:
		return v
	default:
		f.bad(i, v, "symbol array")
		return nil
	}
}

func (f *fields) binary(i int) []byte {
	switch v := f.get(i).(type) {
	case nil:
		return nil
	case []byte:
		return v
	default:
		f.bad(i, v, "binary")
		return nil
	}
}

func (f *fields) timestamp(i int) time.Time {
	switch v := f.get(i).(type) {
	case nil:
		return time.Time{}
	case time.Time:
		return v
	default:
		f.bad(i, v, "timestamp")
		return time.Time{}
	}
}

// fieldsMap reads a map field ("fields", annotations, filter-set). Keys are not type-checked:
// peers differ (some send string keys where symbols are due) and the value is only carried.
func (f *fields) fieldsMap(i int) Map {
	switch v := f.get(i).(type) {
	case nil:
		return nil
	case Map:
		return v
	default:
		f.bad(i, v, "map")
		return nil
	}
}

// address reads a terminus address or message address field: a string on the wire from every
// client; a symbol is tolerated.
func (f *fields) address(i int) string {
	switch v := f.get(i).(type) {
	case nil:
		return ""
	case string:
		return v
	case Symbol:
		return string(v)
	default:
		f.bad(i, v, "address")
		return ""
	}
}

// state reads a delivery-state field.
func (f *fields) state(i int) DeliveryState {
	v := f.get(i)
	if v == nil || f.err != nil {
		return nil
	}
	s, err := decodeState(v)
	if err != nil && f.err == nil {
		f.err = err
	}
	return s
}

// errorField reads an error field.
func (f *fields) errorField(i int) *Error {
	if f.err != nil {
		return nil
	}
	e, err := decodeError(f.get(i))
	if err != nil {
		f.err = err
	}
	return e
}

// optSymbols encodes a symbol slice as null when empty.
func optSymbols(s []Symbol) any {
	if len(s) == 0 {
		return nil
	}
	return s
}

func optMap(m Map) any {
	if len(m) == 0 {
		return nil
	}
	return m
}

func optUintField(p *uint32) any {
	if p == nil {
		return nil
	}
	return *p
}

func optBool(b bool) any {
	if !b {
		return nil
	}
	return true
}

func optTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}
