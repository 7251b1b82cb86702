package deviceclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// syncSession is a Session over MQTT 3.1.1/TLS without paho: one
// goroutine (the caller's), one buffered write per packet and reads only
// while a request waits, as firmware (Embedded C) does. Options.SyncMQTT
// selects it; the load generator uses it so that a device's cost on the
// generator is little more than its TLS handshake (paho runs three
// goroutines and a write per packet per connection). The wire is the same
// as mqttSession's: CONNECT (clean), SUBSCRIBE res/# at QoS 1, QoS 1
// requests with a fresh $rid each, every QoS 1 answer acknowledged, and an
// answer whose rid is not the request's dropped.
type syncSession struct {
	opts   Options
	conn   net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
	nextID uint16
	rid    uint64
	lost   error // set once the connection failed; later requests fail at once
}

func dialSync(ctx context.Context, opts Options, tlsConf *tls.Config) (*syncSession, error) {
	password, err := opts.token()
	if err != nil {
		return nil, err
	}
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tlsConf}
	c, err := d.DialContext(ctx, "tcp", opts.Address)
	if err != nil {
		return nil, fmt.Errorf("deviceclient: mqtt connect to %s: %w", opts.Address, err)
	}
	s := &syncSession{opts: opts, conn: c, r: bufio.NewReaderSize(c, 1024), w: bufio.NewWriterSize(c, 1024)}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if err := s.handshake(password); err != nil {
		c.Close()
		return nil, fmt.Errorf("deviceclient: mqtt connect to %s: %w", opts.Address, err)
	}
	return s, nil
}

// handshake sends CONNECT and SUBSCRIBE and waits for their answers.
func (s *syncSession) handshake(password string) error {
	_ = s.conn.SetDeadline(time.Now().Add(mqttTimeout))
	user := Username(s.opts.IDScope, s.opts.RegistrationID, s.opts.ClientVersion)
	flags := byte(0x80 | 0x02) // username, clean session
	if password != "" {
		flags |= 0x40
	}
	var vh []byte
	vh = appendString(vh, "MQTT")
	vh = append(vh, 4, flags, 0, 60) // level 4, keep-alive 60 s
	vh = appendString(vh, s.opts.RegistrationID)
	vh = appendString(vh, user)
	if password != "" {
		vh = appendString(vh, password)
	}
	s.writePacket(0x10, vh)
	if err := s.w.Flush(); err != nil {
		return err
	}
	typ, body, err := s.readPacket()
	switch {
	case err != nil:
		return err
	case typ != 0x20 || len(body) != 2:
		return fmt.Errorf("expected CONNACK, got packet type %d", typ>>4)
	case body[1] != 0:
		return fmt.Errorf("CONNACK refused (return code %d)", body[1])
	}
	id := s.packetID()
	sub := binary.BigEndian.AppendUint16(nil, id)
	sub = appendString(sub, ResponseFilter)
	sub = append(sub, 1)
	s.writePacket(0x82, sub)
	if err := s.w.Flush(); err != nil {
		return err
	}
	typ, body, err = s.readPacket()
	switch {
	case err != nil:
		return err
	case typ != 0x90 || len(body) != 3 || binary.BigEndian.Uint16(body) != id:
		return fmt.Errorf("expected SUBACK, got packet type %d", typ>>4)
	case body[2] > 2:
		return fmt.Errorf("subscribe %s: refused (0x%02x)", ResponseFilter, body[2])
	}
	return nil
}

// Register publishes the register request.
func (s *syncSession) Register(ctx context.Context) (*Result, error) {
	body, err := RegisterBody(s.opts.RegistrationID, s.opts.Payload)
	if err != nil {
		return nil, err
	}
	return s.request(ctx, RegisterTopic, body)
}

// Poll publishes an operation status request.
func (s *syncSession) Poll(ctx context.Context, operationID string) (*Result, error) {
	return s.request(ctx, func(rid string) string { return PollTopic(rid, operationID) }, nil)
}

func (s *syncSession) request(ctx context.Context, topic func(rid string) string, body []byte) (*Result, error) {
	if s.lost != nil {
		return nil, s.lost
	}
	s.rid++
	rid := strconv.FormatUint(s.rid, 10)
	t := topic(rid)
	stop := context.AfterFunc(ctx, func() { _ = s.conn.SetDeadline(time.Now()) })
	defer stop()
	_ = s.conn.SetDeadline(time.Now().Add(mqttTimeout))
	pub := appendString(nil, t)
	pub = binary.BigEndian.AppendUint16(pub, s.packetID())
	pub = append(pub, body...)
	s.writePacket(0x32, pub) // PUBLISH, QoS 1
	if err := s.w.Flush(); err != nil {
		return nil, s.fail(ctx, fmt.Errorf("publish %s: %w", t, err))
	}
	for {
		typ, b, err := s.readPacket()
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		if typ>>4 != 3 {
			continue // the PUBACK of our request, a PINGRESP
		}
		qos := (typ >> 1) & 3
		if len(b) < 2 {
			return nil, s.fail(ctx, errors.New("malformed PUBLISH"))
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return nil, s.fail(ctx, errors.New("malformed PUBLISH"))
		}
		rtopic, rest := string(b[2:2+n]), b[2+n:]
		if qos > 0 {
			if len(rest) < 2 {
				return nil, s.fail(ctx, errors.New("malformed PUBLISH"))
			}
			// Acknowledged before the answer is used, as mqttSession
			// does, so the PUBACK is out before the caller may close.
			s.writePacket(0x40, rest[:2])
			rest = rest[2:]
			if err := s.w.Flush(); err != nil {
				return nil, s.fail(ctx, err)
			}
		}
		resp, err := ParseResponseTopic(rtopic)
		if err != nil || resp.RID != rid {
			continue // not an answer to this request
		}
		return decodeAnswer(resp.Status, resp.RetryAfter, resp.HasRetryAfter, rest, "")
	}
}

// fail remembers that the connection is gone; the caller's context, if
// that is what ended the wait, is the error.
func (s *syncSession) fail(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		err = ctx.Err()
	} else {
		err = fmt.Errorf("connection lost: %w", err)
	}
	s.lost = err
	_ = s.conn.Close()
	return err
}

// Close sends DISCONNECT and closes the connection.
func (s *syncSession) Close() error {
	if s.lost == nil {
		_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
		s.writePacket(0xe0, nil)
		_ = s.w.Flush()
	}
	return s.conn.Close()
}

func (s *syncSession) packetID() uint16 {
	s.nextID++
	if s.nextID == 0 {
		s.nextID = 1
	}
	return s.nextID
}

// writePacket buffers one packet: the first byte, the remaining length
// and body.
func (s *syncSession) writePacket(first byte, body []byte) {
	_ = s.w.WriteByte(first)
	n := len(body)
	for {
		b := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			b |= 0x80
		}
		_ = s.w.WriteByte(b)
		if n == 0 {
			break
		}
	}
	_, _ = s.w.Write(body)
}

// maxPacket bounds an incoming packet (DPS answers are under 96 KB).
const maxPacket = 256 << 10

// readPacket reads one packet: its first byte and its body.
func (s *syncSession) readPacket() (byte, []byte, error) {
	first, err := s.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for {
		b, err := s.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		if shift += 7; shift > 21 {
			return 0, nil, errors.New("malformed remaining length")
		}
	}
	if n > maxPacket {
		return 0, nil, fmt.Errorf("packet of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(s.r, body); err != nil {
		return 0, nil, err
	}
	return first, body, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}
