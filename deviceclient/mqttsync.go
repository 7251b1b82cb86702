package deviceclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// syncSession is a Session over MQTT 3.1.1/TLS without paho: one
// goroutine (the caller's), one buffered write per packet and reads only
// while a request waits, as firmware (Embedded C) does. Options.SyncMQTT
// selects it; the load generator uses it so that a device's cost on the
// generator is little more than its TLS handshake (paho runs three
// goroutines and a write per packet per connection). The wire is the same
// as mqttSession's: CONNECT (clean), SUBSCRIBE res/# at QoS 1, QoS 1
// requests with a fresh $rid each, every QoS 1 answer acknowledged, and an
// answer whose rid is not the request's dropped. Every packet is encoded
// and decoded by mochi's packets, the codec of berth's own listener.
type syncSession struct {
	opts   Options
	conn   net.Conn
	r      *bufio.Reader
	out    bytes.Buffer // the packet being sent, written in one call
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
	s := &syncSession{opts: opts, conn: c, r: bufio.NewReaderSize(c, 1024)}
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
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        60,
			ClientIdentifier: s.opts.RegistrationID,
			UsernameFlag:     true,
			Username:         []byte(Username(s.opts.IDScope, s.opts.RegistrationID, s.opts.ClientVersion)),
			PasswordFlag:     password != "",
			Password:         []byte(password),
		}}
	if err := s.send(connect.ConnectEncode); err != nil {
		return err
	}
	ack, body, err := s.readPacket()
	switch {
	case err != nil:
		return err
	case ack.FixedHeader.Type != packets.Connack:
		return fmt.Errorf("expected CONNACK, got packet type %d", ack.FixedHeader.Type)
	}
	if err := ack.ConnackDecode(body); err != nil {
		return fmt.Errorf("CONNACK: %w", err)
	}
	if ack.ReasonCode != 0 {
		return fmt.Errorf("CONNACK refused (return code %d)", ack.ReasonCode)
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4,
		PacketID: s.packetID(), Filters: packets.Subscriptions{{Filter: ResponseFilter, Qos: 1}}}
	if err := s.send(sub.SubscribeEncode); err != nil {
		return err
	}
	ack, body, err = s.readPacket()
	switch {
	case err != nil:
		return err
	case ack.FixedHeader.Type != packets.Suback:
		return fmt.Errorf("expected SUBACK, got packet type %d", ack.FixedHeader.Type)
	}
	if err := ack.SubackDecode(body); err != nil {
		return fmt.Errorf("SUBACK: %w", err)
	}
	switch {
	case ack.PacketID != sub.PacketID || len(ack.ReasonCodes) != 1:
		return fmt.Errorf("SUBACK for packet %d with %d codes, want %d with 1", ack.PacketID, len(ack.ReasonCodes), sub.PacketID)
	case ack.ReasonCodes[0] > 2:
		return fmt.Errorf("subscribe %s: refused (0x%02x)", ResponseFilter, ack.ReasonCodes[0])
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
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4,
		PacketID: s.packetID(), TopicName: t, Payload: body}
	if err := s.send(pub.PublishEncode); err != nil {
		return nil, s.fail(ctx, fmt.Errorf("publish %s: %w", t, err))
	}
	for {
		pk, b, err := s.readPacket()
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue // the PUBACK of our request, a PINGRESP
		}
		if err := pk.PublishDecode(b); err != nil {
			return nil, s.fail(ctx, fmt.Errorf("PUBLISH: %w", err))
		}
		if pk.FixedHeader.Qos > 0 {
			// Acknowledged before the answer is used, as mqttSession
			// does, so the PUBACK is out before the caller may close.
			ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: pk.PacketID}
			if err := s.send(ack.PubackEncode); err != nil {
				return nil, s.fail(ctx, err)
			}
		}
		resp, err := ParseResponseTopic(pk.TopicName)
		if err != nil || resp.RID != rid {
			continue // not an answer to this request
		}
		return decodeAnswer(resp.Status, resp.RetryAfter, resp.HasRetryAfter, pk.Payload, "")
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
		dis := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4}
		_ = s.send(dis.DisconnectEncode)
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

// send encodes one packet with mochi's codec and writes it in one call.
func (s *syncSession) send(encode func(*bytes.Buffer) error) error {
	s.out.Reset()
	if err := encode(&s.out); err != nil {
		return err
	}
	_, err := s.conn.Write(s.out.Bytes())
	return err
}

// maxPacket bounds an incoming packet (DPS answers are under 96 KB).
const maxPacket = 256 << 10

// readPacket reads one packet's fixed header, with mochi's decoders, and
// its body, for the Decode method of the packet's type.
func (s *syncSession) readPacket() (*packets.Packet, []byte, error) {
	pk := &packets.Packet{ProtocolVersion: 4}
	first, err := s.r.ReadByte()
	if err != nil {
		return nil, nil, err
	}
	if err := pk.FixedHeader.Decode(first); err != nil {
		return nil, nil, err
	}
	n, _, err := packets.DecodeLength(s.r)
	if err != nil {
		return nil, nil, err
	}
	if n > maxPacket {
		return nil, nil, fmt.Errorf("packet of %d bytes", n)
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(s.r, body); err != nil {
		return nil, nil, err
	}
	return pk, body, nil
}
