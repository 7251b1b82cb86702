package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/internal/tlsidle"
)

// CONNACK return codes of MQTT 3.1.1 (§3.2.2.3).
const (
	connAccepted           byte = 0
	connBadProtocolVersion byte = 1
	connServerUnavailable  byte = 3
	connNotAuthorized      byte = 5
)

// connackFor is the CONNACK return code of a CONNECT the domain refused,
// rendered from the error's azerr entry as IoT Hub answers (docs/errors.md):
// 5, not authorized, for a 4xx (every authentication failure: unknown or
// disabled device, wrong key or certificate, expired token) and 3, server
// unavailable, for a 5xx or an error of no entry (the store failed). A
// throttled connection (429, berth serve --throttle) is 3 too: the SDKs
// retry "server unavailable" with back-off and give up on "not
// authorized" (docs/spec/iothub-protocol.md#mqtt-level-errors), and a
// throttle is over once the client waits.
func connackFor(err error) byte {
	var e *azerr.Error
	if errors.As(err, &e) && e.Code.Status() < 500 && e.Code.Status() != 429 {
		return connNotAuthorized
	}
	return connServerUnavailable
}

// subackFailure is the SUBACK return code for a refused filter.
const subackFailure byte = 0x80

// protocolLevel311 is MQTT 3.1.1, the only version Azure's device endpoints
// speak (docs/spec/dps-protocol.md#endpoints-and-transport,
// docs/spec/iothub-protocol.md#mqtt-connect).
const protocolLevel311 = 4

var (
	errPacketTooLarge = errors.New("mqtt: packet larger than MaxPacketSize")
	errDisconnect     = errors.New("mqtt: client sent DISCONNECT")
)

// session is what a connection speaks after CONNECT: DPS registration
// (dpsSession) or an IoT Hub device session (hubSession).
// The connection owns the packet I/O, keep-alive, PINGREQ and DISCONNECT;
// the session owns topics, acknowledgement timing and the domain calls.
// Every method but close is called from the connection's reader goroutine,
// one at a time.
type session interface {
	// subscribe returns the SUBACK return code for one filter: the granted
	// QoS, or subackFailure. An error closes the connection without a
	// SUBACK (IoT Hub's answer to a filter it does not allow).
	subscribe(filter string, qos byte) (byte, error)
	unsubscribe(filter string)
	// publish handles an inbound QoS 0 or 1 PUBLISH, including its PUBACK
	// (a hub acknowledges telemetry only once it is accepted, DPS before
	// answering). An error closes the connection.
	publish(pk *packets.Packet) error
	// puback receives the client's PUBACK for a QoS 1 delivery.
	puback(id uint16)
	// close runs once, after the network connection is closed: it cancels
	// the session's work and waits for it. clean is true when the client
	// ended the connection with DISCONNECT (no will message is due).
	close(clean bool)
	// logAttrs identify the session in log lines (never credentials).
	logAttrs() []any
}

// conn is one client connection. Only its reader goroutine (serve, then
// loop) reads; writes come from the reader and from session goroutines,
// serialized by wmu. An idle connection holds no I/O buffer: read buffers
// and write buffers are borrowed from the server per packet.
type conn struct {
	srv    *Server
	nc     net.Conn
	remote string

	r   *bufio.Reader // borrowed while it holds unread bytes; nil otherwise
	one [1]byte       // the first byte of a packet, read without a buffer

	keepalive time.Duration // 1.5 × the client's keep-alive; 0 = none
	sess      session
	// clean records that the client sent DISCONNECT; it is written and
	// read by the reader goroutine only.
	clean bool
	// parkable is nc when an idle connection can wait for its socket
	// without a read in progress (TLS over TCP, see loop); nil otherwise.
	// parking, when the server's poller runs, lets it wait without a
	// goroutine.
	parkable *tls.Conn
	parking  *tlsidle.Parking

	wmu       sync.Mutex
	packetID  atomic.Uint32
	closeOnce sync.Once
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{srv: s, nc: nc, remote: nc.RemoteAddr().String()}
	if tc, ok := nc.(*tls.Conn); ok && tlsidle.CanWait(tc) {
		c.parkable = tc
		if p := s.poller(); p != nil {
			// On failure the connection parks on a goroutine.
			c.parking, _ = p.Register(tc, c.wake)
		}
	}
	return c
}

// serve runs a new connection: the TLS handshake and CONNECT on this
// goroutine, then the packet loop on a fresh one. The handshake grows a
// goroutine stack to 8 KiB or more, and a stack only shrinks when less than
// a quarter of it is in use, which a goroutine parked in a TLS read never
// is; starting the loop on a new goroutine leaves that stack behind. An
// idle connection then lets go of its goroutine too (loop).
func (c *conn) serve() {
	if err := c.openRecovering(); err != nil {
		c.logEnd(err)
		c.finish()
		return
	}
	go c.loop(true)
}

func (c *conn) openRecovering() (err error) {
	defer func() {
		if v := recover(); v != nil {
			c.notePanic(v)
			err = errors.New("mqtt: panic")
		}
	}()
	return c.open()
}

// loop reads and handles packets until the connection ends or goes idle;
// checkIdle is false when the socket is known to be readable. A TLS
// connection that has waited idleLinger for its next packet lets go of
// crypto/tls's read buffers and of its goroutine (maybePark): the server's
// poller waits for its socket and starts a new goroutine when the next
// packet comes (docs/benchmarks.md, "Round 3: idle MQTT connections").
// Connections that cannot wait that way (WebSocket, no TLS) wait in a
// one-byte read on this goroutine, as before.
func (c *conn) loop(checkIdle bool) {
	ended := true
	defer func() {
		// A panic ends this connection, not the server.
		if v := recover(); v != nil {
			c.notePanic(v)
			ended = true
		}
		if ended {
			c.finish()
		}
	}()
	for {
		if checkIdle {
			parked, err := c.maybePark()
			if err != nil {
				c.end(err)
				return
			}
			if parked {
				ended = false
				return
			}
		}
		checkIdle = true
		if err := c.handleNext(); err != nil {
			c.end(err)
			return
		}
	}
}

// idleLinger is how long a connection waits for its next packet on its own
// goroutine, through Go's network poller, before it goes to the server's
// idle poller: a device that is sending (telemetry, a twin exchange) keeps
// its goroutine and Go's wake-up latency, and only a device that has gone
// quiet pays the hand-over, once. Short, because every connection that
// lingers still holds its goroutine and crypto/tls's buffers: at 300
// connections a second, a 1 s linger raised the resident memory of 2000
// idle devices by ≈ 2 KiB each (docs/benchmarks.md, "Round 3: idle MQTT
// connections").
const idleLinger = 250 * time.Millisecond

// maybePark waits, when the connection has nothing buffered, for its
// socket to become readable; after idleLinger of silence it hands the
// connection to the server's poller (or, without one, to a fresh
// goroutine) and reports true: the caller's goroutine must end. It
// reports false when the next packet can be read, and an error when the
// keep-alive expired or the connection failed.
func (c *conn) maybePark() (bool, error) {
	tc := c.parkable
	if tc == nil || c.r != nil || tlsidle.Buffered(tc) {
		return false, nil
	}
	if c.parking == nil {
		if readable, err := tlsidle.Readable(tc); readable || err != nil {
			// More is there already (or an error for the next read to
			// report): go on reading here.
			return false, nil
		}
		tlsidle.Release(tc)
		go c.park()
		return true, nil
	}
	now := time.Now()
	var keepalive time.Time
	if c.keepalive > 0 {
		// MQTT 3.1.1 §3.1.2.10, as setKeepaliveDeadline.
		keepalive = now.Add(c.keepalive)
	}
	wait := now.Add(idleLinger)
	if !keepalive.IsZero() && keepalive.Before(wait) {
		wait = keepalive
	}
	if err := c.nc.SetReadDeadline(wait); err != nil {
		return false, fmt.Errorf("mqtt: set read deadline: %w", err)
	}
	err := tlsidle.WaitReadable(tc)
	if c.keepalive == 0 {
		// handleNext sets no deadline of its own then.
		if err := c.nc.SetReadDeadline(time.Time{}); err != nil {
			return false, fmt.Errorf("mqtt: clear read deadline: %w", err)
		}
	}
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, os.ErrDeadlineExceeded):
		return false, err
	case !keepalive.IsZero() && !time.Now().Before(keepalive):
		return false, readError(err)
	}
	tlsidle.Release(tc)
	if c.parking.Park(keepalive) != nil {
		// The poller is closed (Shutdown): wait on a goroutine.
		go c.park()
	}
	return true, nil
}

// wake continues a connection the poller held, on a new goroutine: err is
// nil when the socket is readable.
func (c *conn) wake(err error) {
	if err != nil {
		c.end(readError(err))
		c.finish()
		return
	}
	c.loop(false)
}

// endParked ends a connection that close took back from the poller.
func (c *conn) endParked() {
	c.end(net.ErrClosed)
	c.finish()
}

// park is the goroutine of an idle connection without the poller: it waits
// for the socket to become readable, under the keep-alive deadline, then
// reads on. Its frames are few, so the runtime's starting stack holds them.
func (c *conn) park() {
	if err := c.setKeepaliveDeadline(); err != nil {
		c.end(err)
		c.finish()
		return
	}
	if err := tlsidle.WaitReadable(c.parkable); err != nil {
		c.end(readError(err))
		c.finish()
		return
	}
	c.loop(false)
}

// end records why the connection ended and logs it.
func (c *conn) end(err error) {
	c.clean = errors.Is(err, errDisconnect)
	c.logEnd(err)
}

// finish releases everything the connection held.
func (c *conn) finish() {
	c.close(false)
	if c.sess != nil {
		c.sess.close(c.clean)
	}
	c.dropReader()
	c.srv.conns.Untrack(c)
}

func (c *conn) notePanic(v any) {
	c.srv.panics.Add(1)
	c.srv.log.Error("mqtt: panic in connection handler", "remote", c.remote, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
}

func (c *conn) logEnd(err error) {
	attrs := append([]any{"remote", c.remote}, c.sessAttrs()...)
	switch {
	case err == nil, errors.Is(err, errDisconnect):
		c.srv.log.Debug("mqtt: connection closed", attrs...)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.srv.log.Debug("mqtt: connection closed by peer", attrs...)
	default:
		c.srv.log.Debug("mqtt: connection closed", append(attrs, "reason", err.Error())...)
	}
}

func (c *conn) sessAttrs() []any {
	if c.sess == nil {
		return nil
	}
	return c.sess.logAttrs()
}

// open does the TLS handshake and CONNECT under one deadline.
func (c *conn) open() error {
	deadline := time.Now().Add(c.srv.cfg.ConnectTimeout)
	// The deadline covers the handshake too: a client that opens TCP and
	// never speaks must not keep a goroutine.
	if err := c.nc.SetDeadline(deadline); err != nil {
		return fmt.Errorf("mqtt: set deadline: %w", err)
	}
	if tc, ok := c.nc.(*tls.Conn); ok {
		ctx, cancel := context.WithDeadline(c.srv.ctx, deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("mqtt: TLS handshake: %w", err)
		}
	}
	fh, buf, err := c.readPacket()
	if err != nil {
		return fmt.Errorf("mqtt: read CONNECT: %w", err)
	}
	if fh.Type != packets.Connect {
		return fmt.Errorf("mqtt: first packet is %s, not CONNECT", packetName(fh.Type))
	}
	if err := c.connect(fh, buf); err != nil {
		return err
	}
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("mqtt: clear deadline: %w", err)
	}
	return nil
}

// connect answers CONNECT. It returns nil once a session is established,
// and an error (after any refusing CONNACK) otherwise.
func (c *conn) connect(fh packets.FixedHeader, buf []byte) error {
	pk := &packets.Packet{FixedHeader: fh}
	derr := pk.ConnectDecode(buf)
	name := string(pk.Connect.ProtocolName)
	if derr == nil || !errors.Is(derr, packets.ErrMalformedProtocolVersion) {
		// MQTT 3.1.1 §3.1.2.2: an unsupported level is answered with
		// return code 1 before anything else about the packet (a v5
		// CONNECT's properties may not even decode as 3.1.1).
		if (name == "MQTT" || name == "MQIsdp") && pk.ProtocolVersion != protocolLevel311 {
			c.srv.log.Debug("mqtt: CONNECT refused: unsupported protocol level", "remote", c.remote, "protocol", name, "level", pk.ProtocolVersion)
			if err := c.connack(connBadProtocolVersion); err != nil {
				return err
			}
			return fmt.Errorf("mqtt: protocol %s level %d is not supported", name, pk.ProtocolVersion)
		}
	}
	if derr != nil {
		// MQTT 3.1.1 §3.1.4: a malformed CONNECT closes the connection
		// without CONNACK.
		return fmt.Errorf("mqtt: malformed CONNECT: %w", derr)
	}
	if pk.Connect.PasswordFlag && len(pk.Connect.Password) == 0 {
		// MQTT 3.1.1 §3.1.3.5 allows a password of 0 bytes, which mochi's
		// validation refuses ([MQTT-3.1.2-19] read as "not empty"). To
		// berth it is no password: an X.509 device's CONNECT.
		pk.Connect.PasswordFlag = false
	}
	if code := pk.ConnectValidate(); code != packets.CodeSuccess {
		return fmt.Errorf("mqtt: invalid CONNECT: %w", code)
	}
	pk.ProtocolVersion = protocolLevel311
	c.keepalive = time.Duration(pk.Connect.Keepalive) * 1500 * time.Millisecond

	sess, rc := c.newSession(pk)
	if rc != connAccepted {
		if err := c.connack(rc); err != nil {
			return err
		}
		return fmt.Errorf("mqtt: CONNECT refused with return code %d", rc)
	}
	c.sess = sess
	if f := c.srv.cfg.OnSession; f != nil {
		kind := "dps"
		if _, ok := sess.(*hubSession); ok {
			kind = "hub"
		}
		f(kind)
	}
	// CONNACK's session present: a DPS session is always new (DPS keeps no
	// session state, and the C# provisioning client fails on 1). An IoT Hub
	// device with CleanSession 0 gets 1 when berth kept its earlier
	// session's subscriptions, as IoT Hub does: the Node SDK reconnects
	// with CleanSession 0 to renew its token and does not subscribe again,
	// relying on them (docs/hub-wire.md, "MQTT sessions").
	present := false
	if p, ok := sess.(interface{ sessionPresent() bool }); ok {
		present = p.sessionPresent()
	}
	if err := c.connackPresent(connAccepted, present); err != nil {
		return err
	}
	if st, ok := sess.(interface{ started() }); ok {
		st.started()
	}
	return nil
}

// newSession picks the session kind from the username. The copy of every
// string kept from the CONNECT lets its buffer be collected.
func (c *conn) newSession(pk *packets.Packet) (session, byte) {
	username := string(pk.Connect.Username)
	if !pk.Connect.UsernameFlag {
		c.srv.log.Info("mqtt: CONNECT refused: no username", "remote", c.remote, "clientId", clip(pk.Connect.ClientIdentifier))
		return nil, connNotAuthorized
	}
	if err := checkClientChain(c.peerCertificates()); err != nil {
		// crypto/tls keeps the chain for the connection's life, whether
		// or not a session uses it: refusing is what bounds it. A chain
		// this long cannot be validated at all, the one certificate
		// problem docs/spec/dps-protocol.md#mqtt-connect refuses at CONNECT.
		c.srv.log.Info("mqtt: CONNECT refused: TLS client certificate chain too large", "remote", c.remote, "username", clip(username), "error", err.Error())
		return nil, connNotAuthorized
	}
	scope, regID, query, err := ParseDPSUsername(username)
	if err == nil {
		if c.srv.dps == nil {
			c.srv.log.Info("mqtt: CONNECT refused: DPS is not served by this listener", "remote", c.remote, "username", clip(username))
			return nil, connNotAuthorized
		}
		return c.newDPSSession(pk, scope, regID, query), connAccepted
	}
	dpsLike := looksLikeDPSUsername(username)
	hubName, deviceID, moduleID, hq, herr := ParseHubUsername(username)
	// {idScope}/registrations/?… is both a malformed DPS username and the
	// hub username of a device called "registrations": it is the latter
	// only when it names this hub.
	if herr == nil && (!dpsLike || c.srv.isOurHub(hubName)) {
		return c.newHubSession(pk, hubName, deviceID, moduleID, hq)
	}
	if dpsLike {
		// docs/spec/dps-protocol.md#mqtt-connect: only transport-level
		// problems such as an unusable username refuse CONNECT; credentials
		// are checked per request.
		c.srv.log.Info("mqtt: CONNECT refused: malformed DPS username", "remote", c.remote, "username", clip(username), "error", err.Error())
		return nil, connNotAuthorized
	}
	// Refused the way IoT Hub refuses any CONNECT it will not serve
	// (docs/spec/iothub-protocol.md#mqtt-authentication-and-connack: always 5).
	c.srv.log.Info("mqtt: CONNECT refused: neither a DPS nor an IoT Hub username", "remote", c.remote, "username", clip(username), "clientId", clip(pk.Connect.ClientIdentifier), "error", herr.Error())
	return nil, connNotAuthorized
}

// Bounds of a TLS client certificate chain a connection may keep. crypto/tls
// accepts a Certificate message of up to 256 KiB and keeps the parsed chain
// until the connection closes; real device chains are a leaf and a few CA
// certificates (IoT Edge's nested chains included) of 1 or 2 KiB each.
const (
	maxClientChainCerts = 10
	maxClientChainBytes = 32 * 1024
)

// peerCertificates is the TLS client certificate chain, leaf first, nil
// without TLS or without a certificate. The slice and the certificates are
// crypto/tls's own (ConnectionState does not copy them), held by the
// tls.Conn until it is closed: a session that keeps the slice costs one
// slice header. The chain is not verified here: the TLS configuration
// requests a certificate without verifying it (pki.ServerTLSConfig), and
// the domain decides what it proves (DPS enrollments, hub devices).
func (c *conn) peerCertificates() []*x509.Certificate {
	// An interface, not *tls.Conn, so that the fuzz tests can give a
	// net.Pipe connection a chain.
	if cs, ok := c.nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return cs.ConnectionState().PeerCertificates
	}
	return nil
}

// checkClientChain bounds what a connection's certificate chain may cost.
func checkClientChain(chain []*x509.Certificate) error {
	if len(chain) > maxClientChainCerts {
		return fmt.Errorf("%d certificates; at most %d are accepted", len(chain), maxClientChainCerts)
	}
	n := 0
	for _, cert := range chain {
		n += len(cert.Raw)
	}
	if n > maxClientChainBytes {
		return fmt.Errorf("%d bytes of certificates; at most %d are accepted", n, maxClientChainBytes)
	}
	return nil
}

// certAttrs identify a client certificate in log lines: its subject CN
// and SHA-1 thumbprint (as Azure shows them), nothing else.
func certAttrs(chain []*x509.Certificate) []any {
	if len(chain) == 0 {
		return nil
	}
	sha1Hex, _ := dps.Thumbprints(chain[0])
	return []any{"certCN", clip(chain[0].Subject.CommonName), "certThumbprint", sha1Hex, "chainLength", len(chain)}
}

// handleNext waits for, reads and handles one packet after CONNECT. The
// wait is the only place an idle connection sits, so the frames on the
// stack then are kept small: everything else is in functions called after
// the first byte arrives.
func (c *conn) handleNext() error {
	if err := c.setKeepaliveDeadline(); err != nil {
		return err
	}
	hb, err := c.readFirstByte()
	if err != nil {
		return readError(err)
	}
	return c.handlePacket(hb)
}

// setKeepaliveDeadline bounds the wait for the next packet: MQTT 3.1.1
// §3.1.2.10 closes the connection after 1.5 × keep-alive of silence.
func (c *conn) setKeepaliveDeadline() error {
	if c.keepalive > 0 {
		if err := c.nc.SetReadDeadline(time.Now().Add(c.keepalive)); err != nil {
			return fmt.Errorf("mqtt: set read deadline: %w", err)
		}
	}
	return nil
}

//go:noinline
func (c *conn) handlePacket(hb byte) error {
	fh, buf, err := c.readRest(hb)
	if err != nil {
		return readError(err)
	}
	return c.dispatch(fh, buf)
}

func readError(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("mqtt: keep-alive expired: %w", err)
	}
	return err
}

// dispatch decodes and handles one packet. Each packet type has a
// function of its own, kept out of line, and packets are borrowed from the
// server rather than declared (a packets.Packet is 800 bytes), so that the
// reader's stack stays small: a TLS write on top of a deep stack would
// push it past 4 KiB for good (see serve).
//
//go:noinline
func (c *conn) dispatch(fh packets.FixedHeader, buf []byte) error {
	switch fh.Type {
	case packets.Publish:
		return c.onPublish(fh, buf)
	case packets.Puback:
		return c.onPuback(fh, buf)
	case packets.Subscribe:
		return c.onSubscribe(fh, buf)
	case packets.Unsubscribe:
		return c.onUnsubscribe(fh, buf)
	case packets.Pingreq:
		if fh.Remaining != 0 {
			return errors.New("mqtt: malformed PINGREQ")
		}
		return c.writeBytes(c.srv.pingresp)
	case packets.Disconnect:
		if fh.Remaining != 0 {
			return errors.New("mqtt: malformed DISCONNECT")
		}
		return errDisconnect
	default:
		// A second CONNECT, QoS 2 flow packets, server-to-client
		// packets and AUTH are protocol violations here.
		return fmt.Errorf("mqtt: unexpected %s packet", packetName(fh.Type))
	}
}

//go:noinline
func (c *conn) onPublish(fh packets.FixedHeader, buf []byte) error {
	if fh.Qos > 1 {
		// Azure closes the connection on a QoS 2 publish
		// (docs/spec/iothub-protocol.md#mqtt-sessions-qos-and-retain); berth
		// keeps no QoS 2 state.
		return errors.New("mqtt: QoS 2 PUBLISH is not supported")
	}
	pk := &packets.Packet{FixedHeader: fh, ProtocolVersion: protocolLevel311}
	if err := pk.PublishDecode(buf); err != nil {
		return fmt.Errorf("mqtt: malformed PUBLISH: %w", err)
	}
	if code := pk.PublishValidate(0); code != packets.CodeSuccess {
		return fmt.Errorf("mqtt: invalid PUBLISH: %w", code)
	}
	return c.sess.publish(pk)
}

//go:noinline
func (c *conn) onPuback(fh packets.FixedHeader, buf []byte) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader, pk.ProtocolVersion = fh, protocolLevel311
	if err := pk.PubackDecode(buf); err != nil {
		return fmt.Errorf("mqtt: malformed PUBACK: %w", err)
	}
	c.sess.puback(pk.PacketID)
	return nil
}

//go:noinline
func (c *conn) onSubscribe(fh packets.FixedHeader, buf []byte) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader, pk.ProtocolVersion = fh, protocolLevel311
	if err := pk.SubscribeDecode(buf); err != nil {
		return fmt.Errorf("mqtt: malformed SUBSCRIBE: %w", err)
	}
	if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
		return fmt.Errorf("mqtt: invalid SUBSCRIBE: %w", code)
	}
	codes := make([]byte, len(pk.Filters))
	for i, f := range pk.Filters {
		code, err := c.sess.subscribe(f.Filter, f.Qos)
		if err != nil {
			return err
		}
		codes[i] = code
	}
	if err := c.suback(pk.PacketID, codes); err != nil {
		return err
	}
	if n, ok := c.sess.(subscribedNotifier); ok {
		n.subscribed()
	}
	return nil
}

// subscribedNotifier is a session that starts deliveries on a new
// subscription. It is told after the SUBACK is written, so that a client
// reading packets in order sees the SUBACK before the first delivery
// (MQTT 3.1.1 §3.8.4 allows either order; simple clients expect this
// one).
type subscribedNotifier interface {
	subscribed()
}

//go:noinline
func (c *conn) onUnsubscribe(fh packets.FixedHeader, buf []byte) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader, pk.ProtocolVersion = fh, protocolLevel311
	if err := pk.UnsubscribeDecode(buf); err != nil {
		return fmt.Errorf("mqtt: malformed UNSUBSCRIBE: %w", err)
	}
	if code := pk.UnsubscribeValidate(); code != packets.CodeSuccess {
		return fmt.Errorf("mqtt: invalid UNSUBSCRIBE: %w", code)
	}
	for _, f := range pk.Filters {
		c.sess.unsubscribe(f.Filter)
	}
	return c.unsuback(pk.PacketID)
}

// readPacket reads one control packet: its fixed header and a buffer
// holding exactly its Remaining Length. The buffer is allocated for this
// packet alone and never reused, because mochi's decoders return strings
// that alias it.
func (c *conn) readPacket() (packets.FixedHeader, []byte, error) {
	hb, err := c.readFirstByte()
	if err != nil {
		return packets.FixedHeader{}, nil, err
	}
	return c.readRest(hb)
}

// readRest reads the rest of a packet whose first byte was hb.
func (c *conn) readRest(hb byte) (packets.FixedHeader, []byte, error) {
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return fh, nil, fmt.Errorf("mqtt: fixed header %#02x: %w", hb, err)
	}
	r := c.reader()
	defer c.releaseReader()
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return fh, nil, fmt.Errorf("mqtt: remaining length: %w", err)
	}
	if n > c.srv.cfg.MaxPacketSize {
		return fh, nil, fmt.Errorf("%w: %s of %d bytes", errPacketTooLarge, packetName(fh.Type), n)
	}
	fh.Remaining = n
	buf, err := readN(r, n)
	if err != nil {
		return fh, nil, fmt.Errorf("mqtt: read %s body: %w", packetName(fh.Type), err)
	}
	return fh, buf, nil
}

// readFirstByte waits for the next packet. While the connection is idle it
// blocks on the network connection itself, so no read buffer is held.
func (c *conn) readFirstByte() (byte, error) {
	if c.r != nil {
		return c.r.ReadByte()
	}
	for {
		// Not io.ReadFull: two fewer frames under every idle wait.
		n, err := c.nc.Read(c.one[:])
		if n == 1 {
			return c.one[0], nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// reader borrows a read buffer for the rest of a packet.
func (c *conn) reader() *bufio.Reader {
	if c.r == nil {
		c.r = c.srv.readers.Get().(*bufio.Reader)
		c.r.Reset(c.nc)
	}
	return c.r
}

// releaseReader returns the read buffer unless it holds bytes of the next
// packet (a client may pipeline), which must be read from it first.
func (c *conn) releaseReader() {
	if c.r != nil && c.r.Buffered() == 0 {
		c.dropReader()
	}
}

func (c *conn) dropReader() {
	if c.r != nil {
		c.r.Reset(nil)
		c.srv.readers.Put(c.r)
		c.r = nil
	}
}

// readN reads exactly n bytes. Big bodies grow as data arrives, so a client
// that announces a large packet and sends little costs only what it sent.
func readN(r io.Reader, n int) ([]byte, error) {
	const step = 4096
	if n <= step {
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, unexpectedEOF(err)
		}
		return b, nil
	}
	b := make([]byte, 0, step)
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(cap(b), n-len(b)))
		}
		m, err := r.Read(b[len(b):min(cap(b), n)])
		b = b[:len(b)+m]
		if err != nil && len(b) < n {
			return nil, unexpectedEOF(err)
		}
	}
	return b, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// write encodes one packet into a borrowed buffer and writes it in one
// call (one TLS record for small packets).
func (c *conn) write(encode func(*bytes.Buffer) error) error {
	buf := c.srv.getWriteBuf()
	defer c.srv.putWriteBuf(buf)
	if err := encode(buf); err != nil {
		return fmt.Errorf("mqtt: encode: %w", err)
	}
	return c.writeBytes(buf.Bytes())
}

// writeBytes writes one encoded packet. A failed write closes the
// connection, which ends the reader too.
func (c *conn) writeBytes(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.nc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		c.close(false)
		return fmt.Errorf("mqtt: set write deadline: %w", err)
	}
	if _, err := c.nc.Write(b); err != nil {
		c.close(false)
		return fmt.Errorf("mqtt: write: %w", err)
	}
	return nil
}

func (c *conn) connack(rc byte) error { return c.connackPresent(rc, false) }

// connackPresent writes a CONNACK; present sets Session Present (only
// with rc 0, MQTT 3.1.1 §3.2.2.2).
func (c *conn) connackPresent(rc byte, present bool) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader.Type, pk.ReasonCode, pk.ProtocolVersion = packets.Connack, rc, protocolLevel311
	pk.SessionPresent = present && rc == connAccepted
	return c.write(pk.ConnackEncode)
}

// The acknowledgements are built in functions of their own, on borrowed
// packets, to keep the reader's frames small (see dispatch).

//go:noinline
func (c *conn) suback(id uint16, codes []byte) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader.Type, pk.PacketID, pk.ReasonCodes, pk.ProtocolVersion = packets.Suback, id, codes, protocolLevel311
	return c.write(pk.SubackEncode)
}

//go:noinline
func (c *conn) unsuback(id uint16) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader.Type, pk.PacketID, pk.ProtocolVersion = packets.Unsuback, id, protocolLevel311
	return c.write(pk.UnsubackEncode)
}

//go:noinline
func (c *conn) puback(id uint16) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader.Type, pk.PacketID, pk.ProtocolVersion = packets.Puback, id, protocolLevel311
	return c.write(pk.PubackEncode)
}

// publish sends a PUBLISH at qos 0 or 1. QoS 1 deliveries take the next
// packet ID of this connection; nothing is kept for redelivery (sessions
// are clean, and the client's PUBACK only needs to be tolerated).
func (c *conn) publish(topic string, qos byte, payload []byte) error {
	var id uint16
	if qos > 0 {
		id = c.nextPacketID()
	}
	return c.publishID(topic, qos, false, id, payload)
}

// publishID sends a PUBLISH with a packet ID the caller chose (0 at QoS
// 0), for deliveries whose PUBACK the session tracks. dup marks a
// redelivery; MQTT 3.1.1 §3.3.1.1 allows it only at QoS 1.
func (c *conn) publishID(topic string, qos byte, dup bool, id uint16, payload []byte) error {
	pk := c.srv.getPacket()
	defer c.srv.putPacket(pk)
	pk.FixedHeader.Type, pk.FixedHeader.Qos, pk.FixedHeader.Dup = packets.Publish, qos, dup && qos > 0
	pk.TopicName, pk.Payload, pk.ProtocolVersion = topic, payload, protocolLevel311
	if qos > 0 {
		pk.PacketID = id
	}
	return c.write(pk.PublishEncode)
}

// nextPacketID returns 1…65535, wrapping (0 is not a valid packet ID).
func (c *conn) nextPacketID() uint16 {
	for {
		if id := uint16(c.packetID.Add(1)); id != 0 {
			return id
		}
	}
}

// close closes the network connection once. A forced close (Shutdown)
// closes the socket under TLS directly, so that it never waits for a
// close_notify stuck behind a client that does not read.
func (c *conn) close(force bool) {
	c.closeOnce.Do(func() {
		// A connection the poller holds has no goroutine to see the
		// close: take it back before the descriptor is closed, and end
		// it on one.
		if c.parking != nil && c.parking.Cancel() {
			defer func() { go c.endParked() }()
		}
		// Unblock a write stuck on a client that stopped reading: the
		// TLS close_notify would otherwise queue behind it.
		_ = c.nc.SetWriteDeadline(time.Now())
		if tc, ok := c.nc.(*tls.Conn); ok && force {
			_ = tc.NetConn().Close()
			return
		}
		_ = c.nc.Close()
	})
}

func packetName(t byte) string {
	if n, ok := packets.PacketNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type %d", t)
}
