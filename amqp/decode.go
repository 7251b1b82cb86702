package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// maxDepth bounds the nesting of compound and described values, so a hostile frame of nested
// lists cannot exhaust the stack.
const maxDepth = 32

// ErrDecode is wrapped by every decoding error; the connection answers it with amqp:decode-error.
var ErrDecode = errors.New("amqp: decode error")

// decoder reads AMQP encodings from a byte slice. Every length is checked against what the slice
// holds before anything is allocated, so a frame can never make the decoder allocate more than a
// small multiple of its own size. Binary values alias the input (the engine gives each frame its
// own buffer).
type decoder struct {
	b     []byte
	off   int
	depth int
	err   error
}

// Unmarshal decodes exactly one value; trailing bytes are an error.
func Unmarshal(b []byte) (any, error) {
	d := &decoder{b: b}
	v := d.value()
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d trailing bytes", len(d.b)-d.off)
	}
	return v, d.err
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrDecode, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > d.remaining() {
		d.fail("need %d bytes at offset %d, have %d", n, d.off, d.remaining())
		return nil
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u8() byte {
	p := d.take(1)
	if p == nil {
		return 0
	}
	return p[0]
}

func (d *decoder) u16() uint16 {
	p := d.take(2)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint16(p)
}

func (d *decoder) u32() uint32 {
	p := d.take(4)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint32(p)
}

func (d *decoder) u64() uint64 {
	p := d.take(8)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint64(p)
}

// peek returns the next constructor byte without consuming it.
func (d *decoder) peek() (byte, bool) {
	if d.err != nil || d.remaining() == 0 {
		return 0, false
	}
	return d.b[d.off], true
}

// value decodes one value, constructor included.
func (d *decoder) value() any {
	code := d.u8()
	if d.err != nil {
		return nil
	}
	if code == codeDescribed {
		return d.described()
	}
	return d.body(code)
}

func (d *decoder) described() any {
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > maxDepth {
		d.fail("nesting deeper than %d", maxDepth)
		return nil
	}
	desc := d.value()
	switch desc.(type) {
	case uint64, Symbol:
	default:
		if d.err == nil {
			d.fail("descriptor of type %T", desc)
		}
		return nil
	}
	v := d.value()
	if d.err != nil {
		return nil
	}
	return Described{Descriptor: desc, Value: v}
}

// body decodes the value that follows constructor code.
func (d *decoder) body(code byte) any {
	switch code {
	case codeNull:
		return nil
	case codeTrue:
		return true
	case codeFalse:
		return false
	case codeBool:
		switch d.u8() {
		case 0:
			return false
		case 1:
			return true
		default:
			d.fail("boolean byte not 0 or 1")
			return nil
		}
	case codeUbyte:
		return d.u8()
	case codeUshort:
		return d.u16()
	case codeUint:
		return d.u32()
	case codeSmallUint:
		return uint32(d.u8())
	case codeUint0:
		return uint32(0)
	case codeUlong:
		return d.u64()
	case codeSmallUlong:
		return uint64(d.u8())
	case codeUlong0:
		return uint64(0)
	case codeByte:
		return int8(d.u8())
	case codeShort:
		return int16(d.u16())
	case codeInt:
		return int32(d.u32())
	case codeSmallInt:
		return int32(int8(d.u8()))
	case codeLong:
		return int64(d.u64())
	case codeSmallLong:
		return int64(int8(d.u8()))
	case codeFloat:
		return math.Float32frombits(d.u32())
	case codeDouble:
		return math.Float64frombits(d.u64())
	case codeDecimal32:
		var x Decimal32
		copy(x[:], d.take(4))
		return x
	case codeDecimal64:
		var x Decimal64
		copy(x[:], d.take(8))
		return x
	case codeDecimal128:
		var x Decimal128
		copy(x[:], d.take(16))
		return x
	case codeChar:
		return Char(d.u32())
	case codeTimestamp:
		return fromMillis(int64(d.u64()))
	case codeUUID:
		var x UUID
		copy(x[:], d.take(16))
		return x
	case codeVbin8:
		return d.take(int(d.u8()))
	case codeVbin32:
		return d.take(d.len32())
	case codeStr8:
		return string(d.take(int(d.u8())))
	case codeStr32:
		return string(d.take(d.len32()))
	case codeSym8:
		return Symbol(d.take(int(d.u8())))
	case codeSym32:
		return Symbol(d.take(d.len32()))
	case codeList0:
		return List{}
	case codeList8, codeList32, codeMap8, codeMap32:
		return d.compound(code)
	case codeArray8, codeArray32:
		return d.array(code)
	}
	d.fail("unknown constructor 0x%02x", code)
	return nil
}

// len32 reads a 32-bit length and refuses one larger than what is left.
func (d *decoder) len32() int {
	n := d.u32()
	if d.err == nil && uint64(n) > uint64(d.remaining()) {
		d.fail("length %d exceeds the %d bytes left", n, d.remaining())
		return 0
	}
	return int(n)
}

// sizeCount reads the size and count of a compound or array and returns a sub-decoder limited to
// the compound's bytes.
func (d *decoder) sizeCount(wide bool) (*decoder, int) {
	var size, count int
	if wide {
		size = d.len32()
		if d.err != nil {
			return nil, 0
		}
		if size < 4 {
			d.fail("compound size %d too small", size)
			return nil, 0
		}
		p := d.take(size)
		sub := &decoder{b: p, depth: d.depth}
		count = int(sub.u32())
		return sub, count
	}
	size = int(d.u8())
	if size < 1 {
		d.fail("compound size 0")
		return nil, 0
	}
	p := d.take(size)
	if d.err != nil {
		return nil, 0
	}
	sub := &decoder{b: p, depth: d.depth}
	count = int(sub.u8())
	return sub, count
}

func (d *decoder) compound(code byte) any {
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > maxDepth {
		d.fail("nesting deeper than %d", maxDepth)
		return nil
	}
	sub, count := d.sizeCount(code == codeList32 || code == codeMap32)
	if d.err != nil {
		return nil
	}
	// Every element takes at least one byte: a count beyond the bytes present is a lie, refused
	// before allocating.
	if count > sub.remaining() {
		d.fail("count %d exceeds the %d bytes of the compound", count, sub.remaining())
		return nil
	}
	var out any
	if code == codeList8 || code == codeList32 {
		l := make(List, count)
		for i := range l {
			l[i] = sub.value()
		}
		out = l
	} else {
		if count%2 != 0 {
			d.fail("map with odd count %d", count)
			return nil
		}
		m := make(Map, count/2)
		for i := range m {
			m[i].Key = sub.value()
			m[i].Value = sub.value()
		}
		out = m
	}
	if sub.err != nil {
		d.err = sub.err
		return nil
	}
	if sub.remaining() != 0 {
		d.fail("%d bytes left inside a compound", sub.remaining())
		return nil
	}
	return out
}

func (d *decoder) array(code byte) any {
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > maxDepth {
		d.fail("nesting deeper than %d", maxDepth)
		return nil
	}
	sub, count := d.sizeCount(code == codeArray32)
	if d.err != nil {
		return nil
	}
	var desc any
	elem := sub.u8()
	if elem == codeDescribed {
		desc = sub.value()
		elem = sub.u8()
	}
	if sub.err != nil {
		d.err = sub.err
		return nil
	}
	// Zero-width element types (null, true, uint0…) would let a tiny array claim billions of
	// elements; count them as one byte each for the bound.
	if count > sub.remaining() {
		d.fail("array count %d exceeds the %d bytes of the array", count, sub.remaining())
		return nil
	}
	if elem == codeDescribed {
		d.fail("array of described descriptors")
		return nil
	}
	var out any
	switch elem {
	case codeSym8, codeSym32:
		s := make([]Symbol, count)
		for i := range s {
			v, _ := sub.body(elem).(Symbol)
			s[i] = v
		}
		out = s
	case codeStr8, codeStr32:
		s := make([]string, count)
		for i := range s {
			v, _ := sub.body(elem).(string)
			s[i] = v
		}
		out = s
	default:
		vals := make([]any, count)
		for i := range vals {
			vals[i] = sub.body(elem)
		}
		out = Array{Descriptor: desc, Code: elem, Values: vals}
	}
	if desc != nil {
		if _, ok := out.(Array); !ok {
			a := Array{Descriptor: desc, Code: elem}
			switch s := out.(type) {
			case []Symbol:
				for _, x := range s {
					a.Values = append(a.Values, x)
				}
			case []string:
				for _, x := range s {
					a.Values = append(a.Values, x)
				}
			}
			out = a
		}
	}
	if sub.err != nil {
		d.err = sub.err
		return nil
	}
	if sub.remaining() != 0 {
		d.fail("%d bytes left inside an array", sub.remaining())
		return nil
	}
	return out
}
