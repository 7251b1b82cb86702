// Package amqp is berth's AMQP 1.0 engine, server side: the type system, framing, performatives,
// SASL, sessions, links, flow control and settlement over any net.Conn byte stream (TCP, TLS,
// WebSocket). It knows nothing of DPS or the hub: a front end gives it a Handler that decides on
// authentication and link attaches and moves messages. Design, limits and what is supported are
// in docs/amqp-engine.md.
package amqp

import (
	"bytes"
	"fmt"
	"time"
)

// Go representations of the AMQP 1.0 primitive types. Decoding produces exactly these types, so a
// value keeps its AMQP type through a decode/encode round trip (a string message-id stays a
// string, a uuid stays a uuid):
//
//	null → nil, boolean → bool, ubyte/ushort/uint/ulong → uint8/uint16/uint32/uint64,
//	byte/short/int/long → int8/int16/int32/int64, float/double → float32/float64,
//	decimal32/64/128 → Decimal32/64/128 (opaque), char → Char, timestamp → time.Time (UTC, ms),
//	uuid → UUID, binary → []byte, string → string, symbol → Symbol, list → List, map → Map,
//	array → []Symbol or []string for those element types, else Array; described → Described.
//
// Encoding also accepts int (as long), uint (as ulong), []any (as list), map[string]any and
// map[Symbol]any (keys sorted, for deterministic output), and the performative, section, state,
// Error, Source and Target types of this package.

// Symbol is an AMQP symbol: ASCII text that names things (conditions, annotation keys).
type Symbol string

// UUID is an AMQP uuid, 16 bytes in network order.
type UUID [16]byte

// String formats the uuid in the canonical 8-4-4-4-12 form.
func (u UUID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Char is an AMQP char: one UTF-32BE code point.
type Char rune

// Decimal32, Decimal64 and Decimal128 are IEEE 754 decimals kept opaque: berth never computes
// with them, it only carries them through.
type (
	Decimal32  [4]byte
	Decimal64  [8]byte
	Decimal128 [16]byte
)

// List is an AMQP list (a sequence of polymorphic values).
type List []any

// KV is one entry of a Map.
type KV struct {
	Key   any
	Value any
}

// Map is an AMQP map. It is a slice, not a Go map, because AMQP keys may be of any type
// (including binary, which Go cannot use as a map key), and because the order on the wire is kept.
type Map []KV

// Get returns the value stored under key; keys of different AMQP types never match (the string
// "a" is not the symbol :a).
func (m Map) Get(key any) (any, bool) {
	for _, kv := range m {
		if keyEqual(kv.Key, key) {
			return kv.Value, true
		}
	}
	return nil, false
}

// Set replaces the value under key or appends a new entry.
func (m *Map) Set(key, value any) {
	for i, kv := range *m {
		if keyEqual(kv.Key, key) {
			(*m)[i].Value = value
			return
		}
	}
	*m = append(*m, KV{Key: key, Value: value})
}

func keyEqual(a, b any) bool {
	if ab, ok := a.([]byte); ok {
		bb, ok := b.([]byte)
		return ok && bytes.Equal(ab, bb)
	}
	if _, ok := b.([]byte); ok {
		return false
	}
	switch a.(type) {
	case List, Map, Array, []Symbol, []string, Described, []any:
		return false // not comparable; never used as keys by the clients berth serves
	}
	switch b.(type) {
	case List, Map, Array, []Symbol, []string, Described, []any:
		return false
	}
	return a == b
}

// Array is an AMQP array whose element type is not symbol or string: Code is the element
// constructor (the wide form is used when encoding), Descriptor is set for arrays of described
// values, and Values holds the elements as their Go types.
type Array struct {
	Descriptor any
	Code       byte
	Values     []any
}

// Described is a described type whose descriptor this package does not interpret: a filter value,
// an extension type. Descriptor is a uint64 code or a Symbol.
type Described struct {
	Descriptor any
	Value      any
}

// Type codes of the AMQP 1.0 type system.
const (
	codeDescribed  = 0x00
	codeNull       = 0x40
	codeBool       = 0x56
	codeTrue       = 0x41
	codeFalse      = 0x42
	codeUbyte      = 0x50
	codeUshort     = 0x60
	codeUint       = 0x70
	codeSmallUint  = 0x52
	codeUint0      = 0x43
	codeUlong      = 0x80
	codeSmallUlong = 0x53
	codeUlong0     = 0x44
	codeByte       = 0x51
	codeShort      = 0x61
	codeInt        = 0x71
	codeSmallInt   = 0x54
	codeLong       = 0x81
	codeSmallLong  = 0x55
	codeFloat      = 0x72
	codeDouble     = 0x82
	codeDecimal32  = 0x74
	codeDecimal64  = 0x84
	codeDecimal128 = 0x94
	codeChar       = 0x73
	codeTimestamp  = 0x83
	codeUUID       = 0x98
	codeVbin8      = 0xa0
	codeVbin32     = 0xb0
	codeStr8       = 0xa1
	codeStr32      = 0xb1
	codeSym8       = 0xa3
	codeSym32      = 0xb3
	codeList0      = 0x45
	codeList8      = 0xc0
	codeList32     = 0xd0
	codeMap8       = 0xc1
	codeMap32      = 0xd1
	codeArray8     = 0xe0
	codeArray32    = 0xf0
)

// fromMillis converts an AMQP timestamp to a UTC time.Time.
func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
