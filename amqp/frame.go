package amqp

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Protocol headers: "AMQP" + protocol id + version 1.0.0.
var (
	headerAMQP = [8]byte{'A', 'M', 'Q', 'P', 0, 1, 0, 0}
	headerSASL = [8]byte{'A', 'M', 'Q', 'P', 3, 1, 0, 0}
)

// Frame types.
const (
	frameAMQP = 0
	frameSASL = 1
)

// minMaxFrameSize is the smallest max-frame-size a peer may announce, and the limit on frames
// before the open exchange.
const minMaxFrameSize = 512

// frameHeader is the fixed 8-byte frame header.
type frameHeader struct {
	size    uint32
	doff    uint8
	typ     uint8
	channel uint16
}

func parseFrameHeader(b []byte) frameHeader {
	return frameHeader{
		size:    binary.BigEndian.Uint32(b),
		doff:    b[4],
		typ:     b[5],
		channel: binary.BigEndian.Uint16(b[6:]),
	}
}

// readFrame reads one frame of at most max bytes and returns its header and body (the bytes after
// the extended header). Each body gets its own buffer: decoded binaries alias it and may outlive
// the next read. A frame error is an *Error with the condition to close the connection with.
func readFrame(r io.Reader, hdr []byte, max uint32) (frameHeader, []byte, error) {
	return readFrameRest(r, hdr, 0, max)
}

// readFrameRest is readFrame for a frame whose first have bytes are in
// hdr already.
func readFrameRest(r io.Reader, hdr []byte, have int, max uint32) (frameHeader, []byte, error) {
	if _, err := io.ReadFull(r, hdr[have:8]); err != nil {
		return frameHeader{}, nil, err
	}
	h := parseFrameHeader(hdr)
	switch {
	case h.size < 8:
		return h, nil, Errorf(ErrCondFramingError, "frame size %d below 8", h.size)
	case h.doff < 2:
		return h, nil, Errorf(ErrCondFramingError, "data offset %d below 2", h.doff)
	case uint32(h.doff)*4 > h.size:
		return h, nil, Errorf(ErrCondFramingError, "data offset %d beyond frame size %d", h.doff, h.size)
	case h.size > max:
		return h, nil, Errorf(ErrCondFramingError, "frame of %d bytes exceeds max-frame-size %d", h.size, max)
	}
	body := make([]byte, h.size-8)
	if _, err := io.ReadFull(r, body); err != nil {
		return h, nil, fmt.Errorf("amqp: reading frame body: %w", err)
	}
	return h, body[int(h.doff)*4-8:], nil
}

// appendFrame appends a whole frame (header, performative, payload) to dst.
func appendFrame(dst []byte, typ uint8, channel uint16, perf marshaler, payload []byte) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 2, typ, byte(channel>>8), byte(channel))
	if perf != nil {
		e := &encoder{b: dst}
		perf.marshal(e)
		if e.err != nil {
			return dst[:start], e.err
		}
		dst = e.b
	}
	dst = append(dst, payload...)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start))
	return dst, nil
}
