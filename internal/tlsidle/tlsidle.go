// Package tlsidle lets a server's idle TLS connections give back the read
// buffers crypto/tls keeps between records, and wait for the next record
// without reading it (docs/benchmarks.md, "Round 3: idle MQTT
// connections").
//
// A crypto/tls Conn keeps three input buffers for its whole life: rawInput
// (records as they come off the socket), input (the plaintext of the
// current record, a window on rawInput) and hand (handshake messages). Each
// keeps the capacity it ever grew to: 2 KiB for rawInput and 1.5 KiB for
// hand after a handshake whose ClientHello carries a post-quantum key
// share, held by every connection that then sits idle. crypto/tls has no
// API to drop them, so Release resets them through their offsets in the
// Conn struct, found by name and type with reflect once; if a Go release
// renames or retypes one of them, Supported reports false and Release does
// nothing (TestSupported fails, so the upgrade is noticed).
//
// What makes the reset safe: only Conn.Read (and the handshake, which is
// over) touches these three fields, under the Conn's input lock, and the
// caller of Release is the connection's one reader, between two Reads. A
// Conn reads from the socket again as it did the first time: the buffers
// grow back on demand.
package tlsidle

import (
	"bytes"
	"crypto/tls"
	"reflect"
	"unsafe"
)

// offsets of crypto/tls.Conn's input buffers; ok is false when any of them
// was not found with the expected type.
type offsets struct {
	rawInput, input, hand uintptr
	ok                    bool
}

// layout is computed once from crypto/tls's own type; it never changes
// afterwards.
var layout = func() offsets {
	t := reflect.TypeFor[tls.Conn]()
	field := func(name string, want reflect.Type) (uintptr, bool) {
		f, ok := t.FieldByName(name)
		if !ok || f.Type != want || len(f.Index) != 1 {
			return 0, false
		}
		return f.Offset, true
	}
	buf, rdr := reflect.TypeFor[bytes.Buffer](), reflect.TypeFor[bytes.Reader]()
	var o offsets
	var ok1, ok2, ok3 bool
	o.rawInput, ok1 = field("rawInput", buf)
	o.input, ok2 = field("input", rdr)
	o.hand, ok3 = field("hand", buf)
	o.ok = ok1 && ok2 && ok3
	return o
}()

// Supported reports whether Release and Buffered can see crypto/tls's
// buffers in this build.
func Supported() bool { return layout.ok }

func fields(tc *tls.Conn) (rawInput *bytes.Buffer, input *bytes.Reader, hand *bytes.Buffer) {
	p := unsafe.Pointer(tc)
	return (*bytes.Buffer)(unsafe.Add(p, layout.rawInput)),
		(*bytes.Reader)(unsafe.Add(p, layout.input)),
		(*bytes.Buffer)(unsafe.Add(p, layout.hand))
}

// Buffered reports whether tc holds input that the next Read returns or
// processes without reading from the socket: plaintext, undecrypted
// records, or handshake bytes. Waiting for the socket to become readable
// is only right when it is false. Without Supported, it reports true.
// It must be called by tc's only reader, between Reads, after the
// handshake.
func Buffered(tc *tls.Conn) bool {
	if !layout.ok {
		return true
	}
	rawInput, input, hand := fields(tc)
	return rawInput.Len() != 0 || input.Len() != 0 || hand.Len() != 0
}

// Release drops tc's input buffers if they hold nothing (see Buffered) and
// reports whether it did. Same rules as Buffered.
func Release(tc *tls.Conn) bool {
	if Buffered(tc) {
		return false
	}
	rawInput, input, hand := fields(tc)
	// input is a window on rawInput's array: both must let go of it.
	*input = bytes.Reader{}
	*rawInput = bytes.Buffer{}
	*hand = bytes.Buffer{}
	return true
}

// capacities reports the buffers' capacities, for the tests.
func capacities(tc *tls.Conn) (rawInput, hand int) {
	r, _, h := fields(tc)
	return r.Cap(), h.Cap()
}
