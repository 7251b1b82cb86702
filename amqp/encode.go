package amqp

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"time"
)

// encoder appends AMQP encodings to a byte slice. It picks the smallest encoding of each value
// (smalluint, uint0, str8, list8…), which every conforming peer decodes.
type encoder struct {
	b   []byte
	err error
}

// marshaler is implemented by the composite types of this package (performatives, sections,
// delivery states, Error, Source, Target).
type marshaler interface {
	marshal(e *encoder)
}

// Marshal encodes one value in the AMQP type system.
func Marshal(v any) ([]byte, error) {
	e := &encoder{}
	e.value(v)
	return e.b, e.err
}

func (e *encoder) fail(format string, args ...any) {
	if e.err == nil {
		e.err = fmt.Errorf(format, args...)
	}
}

func (e *encoder) u8(c byte)       { e.b = append(e.b, c) }
func (e *encoder) u16(v uint16)    { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *encoder) u32(v uint32)    { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64)    { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) null()           { e.u8(codeNull) }
func (e *encoder) symbol(s Symbol) { e.variable(codeSym8, codeSym32, []byte(s)) }
func (e *encoder) str(s string)    { e.variable(codeStr8, codeStr32, []byte(s)) }

func (e *encoder) boolean(v bool) {
	if v {
		e.u8(codeTrue)
	} else {
		e.u8(codeFalse)
	}
}

func (e *encoder) uint(v uint32) {
	switch {
	case v == 0:
		e.u8(codeUint0)
	case v < 256:
		e.u8(codeSmallUint)
		e.u8(byte(v))
	default:
		e.u8(codeUint)
		e.u32(v)
	}
}

func (e *encoder) ulong(v uint64) {
	switch {
	case v == 0:
		e.u8(codeUlong0)
	case v < 256:
		e.u8(codeSmallUlong)
		e.u8(byte(v))
	default:
		e.u8(codeUlong)
		e.u64(v)
	}
}

func (e *encoder) int(v int32) {
	if v >= -128 && v <= 127 {
		e.u8(codeSmallInt)
		e.u8(byte(int8(v)))
		return
	}
	e.u8(codeInt)
	e.u32(uint32(v))
}

func (e *encoder) long(v int64) {
	if v >= -128 && v <= 127 {
		e.u8(codeSmallLong)
		e.u8(byte(int8(v)))
		return
	}
	e.u8(codeLong)
	e.u64(uint64(v))
}

func (e *encoder) timestamp(t time.Time) {
	e.u8(codeTimestamp)
	e.u64(uint64(t.UnixMilli()))
}

func (e *encoder) binary(b []byte) { e.variable(codeVbin8, codeVbin32, b) }

func (e *encoder) variable(small, large byte, b []byte) {
	if len(b) < 256 {
		e.u8(small)
		e.u8(byte(len(b)))
	} else {
		if uint64(len(b)) > math.MaxUint32 {
			e.fail("amqp: value of %d bytes is too large to encode", len(b))
			return
		}
		e.u8(large)
		e.u32(uint32(len(b)))
	}
	e.b = append(e.b, b...)
}

// compound writes a list or map: it reserves the 32-bit header, lets items write the elements,
// then shrinks the header to the 8-bit form when size and count allow.
func (e *encoder) compound(code8, code32 byte, count int, items func()) {
	start := len(e.b)
	e.b = append(e.b, code32, 0, 0, 0, 0, 0, 0, 0, 0)
	items()
	body := len(e.b) - start - 9
	if code8 != code32 && body+1 < 256 && count < 256 {
		e.b[start] = code8
		e.b[start+1] = byte(body + 1)
		e.b[start+2] = byte(count)
		copy(e.b[start+3:], e.b[start+9:])
		e.b = e.b[:len(e.b)-6]
		return
	}
	if uint64(body)+4 > math.MaxUint32 {
		e.fail("amqp: compound value too large to encode")
		return
	}
	binary.BigEndian.PutUint32(e.b[start+1:], uint32(body+4))
	binary.BigEndian.PutUint32(e.b[start+5:], uint32(count))
}

func (e *encoder) list(items []any) {
	if len(items) == 0 {
		e.u8(codeList0)
		return
	}
	e.compound(codeList8, codeList32, len(items), func() {
		for _, v := range items {
			e.value(v)
		}
	})
}

func (e *encoder) amqpMap(m Map) {
	e.compound(codeMap8, codeMap32, 2*len(m), func() {
		for _, kv := range m {
			e.value(kv.Key)
			e.value(kv.Value)
		}
	})
}

// describedList writes a described list with a smallulong descriptor, dropping trailing nulls
// (absent fields at the end need not be sent).
func (e *encoder) describedList(code uint64, fields ...any) {
	e.u8(codeDescribed)
	e.ulong(code)
	n := len(fields)
	for n > 0 && isNull(fields[n-1]) {
		n--
	}
	e.list(fields[:n])
}

// isNull tells whether v encodes as AMQP null: nil itself, or a nil pointer, slice or map.
func isNull(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case Map:
		return x == nil
	case []byte:
		return x == nil
	case []Symbol:
		return x == nil
	case *Error:
		return x == nil
	case *Source:
		return x == nil
	case *Target:
		return x == nil
	case List:
		return x == nil
	}
	return false
}

// value encodes any supported Go value.
func (e *encoder) value(v any) {
	switch x := v.(type) {
	case nil:
		e.null()
	case marshaler:
		if isNull(v) {
			e.null()
			return
		}
		x.marshal(e)
	case bool:
		e.boolean(x)
	case uint8:
		e.u8(codeUbyte)
		e.u8(x)
	case uint16:
		e.u8(codeUshort)
		e.u16(x)
	case uint32:
		e.uint(x)
	case uint64:
		e.ulong(x)
	case uint:
		e.ulong(uint64(x))
	case int8:
		e.u8(codeByte)
		e.u8(byte(x))
	case int16:
		e.u8(codeShort)
		e.u16(uint16(x))
	case int32:
		e.int(x)
	case int64:
		e.long(x)
	case int:
		e.long(int64(x))
	case float32:
		e.u8(codeFloat)
		e.u32(math.Float32bits(x))
	case float64:
		e.u8(codeDouble)
		e.u64(math.Float64bits(x))
	case Decimal32:
		e.u8(codeDecimal32)
		e.b = append(e.b, x[:]...)
	case Decimal64:
		e.u8(codeDecimal64)
		e.b = append(e.b, x[:]...)
	case Decimal128:
		e.u8(codeDecimal128)
		e.b = append(e.b, x[:]...)
	case Char:
		e.u8(codeChar)
		e.u32(uint32(x))
	case time.Time:
		e.timestamp(x)
	case UUID:
		e.u8(codeUUID)
		e.b = append(e.b, x[:]...)
	case []byte:
		if x == nil {
			e.null()
			return
		}
		e.binary(x)
	case string:
		e.str(x)
	case Symbol:
		e.symbol(x)
	case List:
		if x == nil {
			e.null()
			return
		}
		e.list(x)
	case []any:
		e.list(x)
	case Map:
		if x == nil {
			e.null()
			return
		}
		e.amqpMap(x)
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		m := make(Map, len(keys))
		for i, k := range keys {
			m[i] = KV{k, x[k]}
		}
		e.amqpMap(m)
	case map[Symbol]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, string(k))
		}
		sort.Strings(keys)
		m := make(Map, len(keys))
		for i, k := range keys {
			m[i] = KV{Symbol(k), x[Symbol(k)]}
		}
		e.amqpMap(m)
	case []Symbol:
		if x == nil {
			e.null()
			return
		}
		vals := make([]any, len(x))
		for i, s := range x {
			vals[i] = s
		}
		e.array(Array{Code: codeSym32, Values: vals})
	case []string:
		vals := make([]any, len(x))
		for i, s := range x {
			vals[i] = s
		}
		e.array(Array{Code: codeStr32, Values: vals})
	case Array:
		e.array(x)
	case Described:
		e.u8(codeDescribed)
		e.value(x.Descriptor)
		e.value(x.Value)
	default:
		e.fail("amqp: cannot encode %T", v)
	}
}

// array writes an array with one constructor (the wide form of the element type) followed by the
// elements without constructors.
func (e *encoder) array(a Array) {
	code := wideCode(a.Code)
	start := len(e.b)
	e.b = append(e.b, codeArray32, 0, 0, 0, 0, 0, 0, 0, 0)
	if a.Descriptor != nil {
		e.u8(codeDescribed)
		e.value(a.Descriptor)
	}
	e.u8(code)
	for _, v := range a.Values {
		e.arrayElement(code, v)
	}
	body := len(e.b) - start - 9
	if body+1 < 256 && len(a.Values) < 256 {
		e.b[start] = codeArray8
		e.b[start+1] = byte(body + 1)
		e.b[start+2] = byte(len(a.Values))
		copy(e.b[start+3:], e.b[start+9:])
		e.b = e.b[:len(e.b)-6]
		return
	}
	binary.BigEndian.PutUint32(e.b[start+1:], uint32(body+4))
	binary.BigEndian.PutUint32(e.b[start+5:], uint32(len(a.Values)))
}

// wideCode maps a constructor to the fixed-width form an array element must use (an array cannot
// mix smalluint and uint0 elements, so it uses uint for all).
func wideCode(c byte) byte {
	switch c {
	case codeSmallUint, codeUint0:
		return codeUint
	case codeSmallUlong, codeUlong0:
		return codeUlong
	case codeSmallInt:
		return codeInt
	case codeSmallLong:
		return codeLong
	case codeTrue, codeFalse:
		return codeBool
	case codeVbin8:
		return codeVbin32
	case codeStr8:
		return codeStr32
	case codeSym8:
		return codeSym32
	case codeList0, codeList8:
		return codeList32
	case codeMap8:
		return codeMap32
	case codeArray8:
		return codeArray32
	}
	return c
}

func (e *encoder) arrayElement(code byte, v any) {
	bad := func() { e.fail("amqp: array element %T does not match constructor 0x%02x", v, code) }
	switch code {
	case codeNull:
		if v != nil {
			bad()
		}
	case codeBool:
		b, ok := v.(bool)
		if !ok {
			bad()
		}
		if b {
			e.u8(1)
		} else {
			e.u8(0)
		}
	case codeUbyte, codeByte:
		switch x := v.(type) {
		case uint8:
			e.u8(x)
		case int8:
			e.u8(byte(x))
		default:
			bad()
		}
	case codeUshort, codeShort:
		switch x := v.(type) {
		case uint16:
			e.u16(x)
		case int16:
			e.u16(uint16(x))
		default:
			bad()
		}
	case codeUint, codeInt, codeFloat, codeChar, codeDecimal32:
		switch x := v.(type) {
		case uint32:
			e.u32(x)
		case int32:
			e.u32(uint32(x))
		case float32:
			e.u32(math.Float32bits(x))
		case Char:
			e.u32(uint32(x))
		case Decimal32:
			e.b = append(e.b, x[:]...)
		default:
			bad()
		}
	case codeUlong, codeLong, codeDouble, codeTimestamp, codeDecimal64:
		switch x := v.(type) {
		case uint64:
			e.u64(x)
		case int64:
			e.u64(uint64(x))
		case float64:
			e.u64(math.Float64bits(x))
		case time.Time:
			e.u64(uint64(x.UnixMilli()))
		case Decimal64:
			e.b = append(e.b, x[:]...)
		default:
			bad()
		}
	case codeUUID, codeDecimal128:
		switch x := v.(type) {
		case UUID:
			e.b = append(e.b, x[:]...)
		case Decimal128:
			e.b = append(e.b, x[:]...)
		default:
			bad()
		}
	case codeVbin32, codeStr32, codeSym32:
		var b []byte
		switch x := v.(type) {
		case []byte:
			b = x
		case string:
			b = []byte(x)
		case Symbol:
			b = []byte(x)
		default:
			bad()
		}
		e.u32(uint32(len(b)))
		e.b = append(e.b, b...)
	case codeList32, codeMap32, codeArray32:
		// Encode the element with its own constructor, then drop the constructor and widen.
		sub := &encoder{}
		switch code {
		case codeList32:
			l, ok := v.(List)
			if !ok {
				bad()
				return
			}
			sub.compound(codeList32, codeList32, len(l), func() {
				for _, x := range l {
					sub.value(x)
				}
			})
		case codeMap32:
			m, ok := v.(Map)
			if !ok {
				bad()
				return
			}
			sub.compound(codeMap32, codeMap32, 2*len(m), func() {
				for _, kv := range m {
					sub.value(kv.Key)
					sub.value(kv.Value)
				}
			})
		default:
			bad()
			return
		}
		if sub.err != nil {
			e.fail("%v", sub.err)
		}
		e.b = append(e.b, sub.b[1:]...)
	default:
		bad()
	}
}
