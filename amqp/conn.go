package amqp

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
	"sync"
	"time"
)

// Config holds the engine's limits and the front end's Handler. Zero fields take the defaults
// documented on each; every limit is bounded so one connection's memory is bounded.
type Config struct {
	// Handler decides authentication, opens and attaches. Required.
	Handler Handler
	// ContainerID is berth's container-id in open (default "berth").
	ContainerID string
	// MaxFrameSize is berth's max-frame-size (default 65536, at least 512).
	MaxFrameSize uint32
	// MaxSessions bounds the sessions of a connection; channel-max is one less (default 256).
	MaxSessions int
	// MaxLinksPerSession bounds the links of a session; handle-max is one less (default 512).
	MaxLinksPerSession int
	// MaxMessageSize bounds a message berth receives, reassembled from its frames (default 1 MiB).
	// A link may lower it (Link.SetMaxMessageSize).
	MaxMessageSize uint64
	// MaxUnsettled bounds the unsettled deliveries of one link, both ways: the credit a receiver
	// link grants and the unsettled messages a sender link may have out (default 1024).
	MaxUnsettled int
	// MaxConnBuffered bounds the bytes of received messages one connection holds: deliveries
	// being reassembled plus those the application has not settled yet (default 64 MiB). A peer
	// that pushes past it is closed with amqp:resource-limit-exceeded.
	MaxConnBuffered int
	// SessionWindow is the incoming-window of every session, in transfer frames (default 5000).
	SessionWindow uint32
	// IdleTimeout is berth's idle-time-out: a peer silent that long is closed with
	// amqp:resource-limit-exceeded (default 4 minutes).
	IdleTimeout time.Duration
	// AuthTimeout is how long a connection may stay unauthenticated: SASL PLAIN or EXTERNAL
	// succeeded, or the front end called Conn.Authenticated (default 10 s).
	AuthTimeout time.Duration
	// WriteTimeout bounds each write to the peer (default 30 s).
	WriteTimeout time.Duration
	// RequireSASL refuses the no-SASL start (a bare AMQP header).
	RequireSASL bool
	// Mechanisms offered in sasl-mechanisms (default MSSBCBS, PLAIN, ANONYMOUS); EXTERNAL is added
	// when the peer presented a TLS client certificate.
	Mechanisms []Symbol

	prepared bool // by Prepared: shared as it is, not copied per connection
}

// Prepared is cfg with its defaults filled in, for Start: connections
// started with it share it instead of each holding a copy.
func (c *Config) Prepared() *Config {
	d := c.withDefaults()
	d.prepared = true
	return &d
}

// SASL mechanism names.
const (
	MechANONYMOUS Symbol = "ANONYMOUS"
	MechPLAIN     Symbol = "PLAIN"
	MechEXTERNAL  Symbol = "EXTERNAL"
	MechMSSBCBS   Symbol = "MSSBCBS"
)

func (c *Config) withDefaults() Config {
	d := *c
	if d.ContainerID == "" {
		d.ContainerID = "berth"
	}
	if d.MaxFrameSize == 0 {
		d.MaxFrameSize = 65536
	}
	if d.MaxFrameSize < minMaxFrameSize {
		d.MaxFrameSize = minMaxFrameSize
	}
	if d.MaxSessions <= 0 {
		d.MaxSessions = 256
	}
	if d.MaxSessions > 65536 {
		d.MaxSessions = 65536
	}
	if d.MaxLinksPerSession <= 0 {
		d.MaxLinksPerSession = 512
	}
	if d.MaxMessageSize == 0 {
		d.MaxMessageSize = 1 << 20
	}
	if d.MaxUnsettled <= 0 {
		d.MaxUnsettled = 1024
	}
	if d.MaxConnBuffered <= 0 {
		d.MaxConnBuffered = 64 << 20
	}
	if d.SessionWindow == 0 {
		d.SessionWindow = 5000
	}
	if d.IdleTimeout == 0 {
		d.IdleTimeout = 4 * time.Minute
	}
	if d.AuthTimeout == 0 {
		d.AuthTimeout = 10 * time.Second
	}
	if d.WriteTimeout == 0 {
		d.WriteTimeout = 30 * time.Second
	}
	if d.Mechanisms == nil {
		d.Mechanisms = []Symbol{MechMSSBCBS, MechPLAIN, MechANONYMOUS}
	}
	return d
}

// Handler is the front end's side of a connection. Its methods run on the connection's reader
// goroutine: they may call any method of Conn, Link and Delivery, but should not block for long,
// as no further frame of the connection is read meanwhile.
type Handler interface {
	// Authenticate decides a SASL exchange. For PLAIN and EXTERNAL a SASLOK marks the connection
	// authenticated; for ANONYMOUS and MSSBCBS the front end calls Conn.Authenticated itself once
	// a CBS token is accepted. Any other code fails the exchange and the connection.
	Authenticate(c *Conn, cred *SASLCredentials) SASLCode
	// Open is called with the peer's open; a non-nil error refuses the connection with it.
	Open(c *Conn, o *Open) *Error
	// Attach decides a link the peer attaches. It returns a ReceiverHandler for a link on which
	// berth receives (Link.Role is RoleReceiver), a SenderHandler for one on which berth sends,
	// or an error to refuse the link with.
	Attach(l *Link) (LinkHandler, *Error)
	// Closed is called once when the connection has ended; err says why (nil for an orderly close).
	Closed(c *Conn, err error)
}

// SASLCredentials is what the peer presented in sasl-init.
type SASLCredentials struct {
	Mechanism       Symbol
	Hostname        string
	InitialResponse []byte
	// PLAIN, parsed from the initial response.
	AuthzID, Username, Password string
	// PeerCertificates is the TLS client chain (EXTERNAL), leaf first.
	PeerCertificates []*x509.Certificate
}

// Conn is one AMQP connection, server side.
type Conn struct {
	cfg *Config // shared when Prepared
	h   Handler
	nc  net.Conn
	br  *bufio.Reader
	bw  *bufio.Writer

	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex // guards everything below; held while writing
	peerOpen  *Open
	peerMax   uint32 // the largest frame berth may send
	sessions  map[uint16]*Session
	closing   bool  // berth sent close
	closed    bool  // the connection is over
	closeErr  error // why it ended, for Closed
	lastWrite time.Time
	authed    bool
	amqpPhase bool // the AMQP protocol header was exchanged
	openSent  bool
	identity  any
	mech      Symbol
	buffered  int // bytes of received messages held: reassembly plus unsettled deliveries
	certs     []*x509.Certificate
	hdr       [8]byte

	// calls are callbacks queued while holding mu, run by the reader goroutine after unlocking.
	calls []func()

	// The reader's own state, touched by whichever goroutine reads.
	authDeadline  time.Time
	authTimer     *time.Timer
	stopHeartbeat func()
	stopShutdown  func() bool
	deep          bool        // a frame since the last hand-off ran front-end callbacks (start)
	done          func(error) // Start's
}

// ErrClosed is returned by operations on a connection, session or link that has ended.
var ErrClosed = errors.New("amqp: closed")

// Serve runs the server side of an AMQP connection on nc until it ends, and closes nc. It returns
// why the connection ended (nil for an orderly close by the peer). A *tls.Conn (or any net.Conn
// with a ConnectionState method) gives its client certificate to SASL EXTERNAL.
func Serve(ctx context.Context, nc net.Conn, cfg *Config) error {
	c := newConn(ctx, nc, cfg, cfg.Handler)
	return c.run()
}

// Start is Serve without waiting: it runs the TLS handshake and the
// protocol header exchange on the calling goroutine, returns, and reads
// the connection's frames on goroutines of its own, calling done with
// Serve's result once the connection has ended (on the calling goroutine
// when the handshake fails). An idle connection started so holds a
// smaller goroutine stack than one served by Serve (see start).
// The connection's handler is h (cfg's Handler is not used), so that one
// Prepared cfg serves every connection; cfg must not change afterwards.
func Start(ctx context.Context, nc net.Conn, cfg *Config, h Handler, done func(error)) {
	newConn(ctx, nc, cfg, h).start(done)
}

// Per-connection buffer sizes (newConn).
const (
	connReadBuffer  = 512
	connWriteBuffer = 1024
)

func newConn(ctx context.Context, nc net.Conn, cfg *Config, h Handler) *Conn {
	if !cfg.prepared {
		d := cfg.withDefaults()
		cfg = &d
	}
	c := &Conn{cfg: cfg, h: h, nc: nc, sessions: map[uint16]*Session{}}
	c.ctx, c.cancel = context.WithCancel(ctx)
	// Small buffers, borrowed while in use (see borrowReader): under them
	// TLS (or a WebSocket) buffers whole records already. Reads larger than
	// the buffer (message bodies) bypass it; the writer still gathers the
	// small frames of one turn (dispositions, flows) into one record.
	c.borrowReader()
	c.peerMax = minMaxFrameSize
	return c
}

// Context is cancelled when the connection ends.
func (c *Conn) Context() context.Context { return c.ctx }

// RemoteAddr is the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// PeerOpen is the peer's open performative (nil before it arrived).
func (c *Conn) PeerOpen() *Open {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerOpen
}

// SASLMechanism is the mechanism the peer authenticated with ("" for the no-SASL start).
func (c *Conn) SASLMechanism() Symbol {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mech
}

// PeerCertificates is the TLS client certificate chain, if any.
func (c *Conn) PeerCertificates() []*x509.Certificate { return c.certs }

// Authenticated records that the peer proved who it is (a CBS token, a certificate), which lifts
// the unauthenticated-connection deadline, and keeps identity for the front end.
func (c *Conn) Authenticated(identity any) {
	c.mu.Lock()
	c.authed = true
	c.identity = identity
	c.dropAuthTimerLocked()
	c.mu.Unlock()
}

// dropAuthTimerLocked stops the auth deadline's timer and lets it go: an
// authenticated connection does not keep it.
func (c *Conn) dropAuthTimerLocked() {
	if c.authTimer != nil {
		c.authTimer.Stop()
		c.authTimer = nil
	}
}

// Identity is what Authenticated recorded.
func (c *Conn) Identity() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.identity
}

// Close closes the connection with an error condition (nil for a plain close), for instance when
// the credential it was opened with is revoked. It returns at once; the peer's close is awaited
// for a moment before the socket is closed.
func (c *Conn) Close(e *Error) {
	c.mu.Lock()
	c.closeLocked(e)
	c.mu.Unlock()
}

// closeGrace is how long berth waits for the peer's close after sending its own.
const closeGrace = time.Second

func (c *Conn) closeLocked(e *Error) {
	if c.closing || c.closed {
		return
	}
	c.closing = true
	if e != nil && c.closeErr == nil {
		c.closeErr = e
	}
	if !c.amqpPhase {
		// Still in the protocol header or SASL exchange: there is no close frame to send.
		_ = c.nc.Close()
		return
	}
	if !c.openSent {
		// An open must precede close: answer one first.
		c.openSent = true
		_ = c.writeLocked(frameAMQP, 0, c.ourOpen(), nil)
	}
	_ = c.writeLocked(frameAMQP, 0, &Close{Error: e}, nil)
	c.flushLocked()
	_ = c.nc.SetReadDeadline(time.Now().Add(closeGrace))
}

func (c *Conn) ourOpen() *Open {
	return &Open{
		ContainerID:  c.cfg.ContainerID,
		MaxFrameSize: c.cfg.MaxFrameSize,
		ChannelMax:   uint16(c.cfg.MaxSessions - 1),
		IdleTimeout:  uint32(c.cfg.IdleTimeout / time.Millisecond),
	}
}

// writeLocked encodes and buffers one frame. A performative that does not fit the peer's
// max-frame-size closes the connection with amqp:frame-size-too-small.
func (c *Conn) writeLocked(typ uint8, ch uint16, perf marshaler, payload []byte) error {
	if c.closed {
		return ErrClosed
	}
	bp := frameBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 64<<10 { // do not keep a large message's buffer
			frameBufs.Put(bp)
		}
	}()
	var err error
	*bp, err = appendFrame((*bp)[:0], typ, ch, perf, payload)
	if err != nil {
		return err
	}
	frame := *bp
	if uint32(len(frame)) > c.peerMax && typ == frameAMQP {
		if _, isClose := perf.(*Close); !isClose {
			c.closeLocked(Errorf(ErrCondFrameSizeTooSmall, "a %T of %d bytes does not fit the peer's max-frame-size %d", perf, len(frame), c.peerMax))
			return ErrClosed
		}
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	if c.bw == nil {
		c.bw = writers.Get().(*bufio.Writer)
		c.bw.Reset(c.nc)
	}
	if _, err := c.bw.Write(frame); err != nil {
		c.brokenLocked(err)
		return err
	}
	c.lastWrite = time.Now()
	return nil
}

// Buffers an idle connection does not hold: the reader's and writer's
// bufio buffers are borrowed while bytes wait in them, a frame's encoding
// buffer while it is written. An idle device would otherwise keep about
// 2 KiB of them (docs/benchmarks.md, "Idle connections"). The pools are
// caches, shared by every connection of the process.
var (
	readers   = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, connReadBuffer) }}
	writers   = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, connWriteBuffer) }}
	frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
)

// borrowReader gives the reader a buffer; the reader alone calls it.
func (c *Conn) borrowReader() {
	c.br = readers.Get().(*bufio.Reader)
	c.br.Reset(c.nc)
}

// releaseReader returns the reader's buffer once nothing waits in it.
func (c *Conn) releaseReader() {
	if c.br != nil && c.br.Buffered() == 0 {
		c.br.Reset(nil)
		readers.Put(c.br)
		c.br = nil
	}
}

func (c *Conn) flushLocked() {
	if c.closed {
		return
	}
	if c.bw == nil {
		return // nothing written since the last flush
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	if err := c.bw.Flush(); err != nil {
		c.brokenLocked(err)
		return
	}
	c.bw.Reset(nil)
	writers.Put(c.bw)
	c.bw = nil
}

// brokenLocked gives up on a connection whose writes fail: closing the socket ends the reader.
func (c *Conn) brokenLocked(err error) {
	if c.closeErr == nil {
		c.closeErr = fmt.Errorf("amqp: write: %w", err)
	}
	c.closing = true
	_ = c.nc.Close()
}

// queue schedules a callback to run on the reader goroutine once mu is released.
func (c *Conn) queue(f func()) { c.calls = append(c.calls, f) }

// unlockAndRun releases mu and runs the queued callbacks.
func (c *Conn) unlockAndRun() {
	for {
		calls := c.calls
		c.calls = nil
		c.mu.Unlock()
		if len(calls) == 0 {
			return
		}
		for _, f := range calls {
			f()
		}
		c.mu.Lock()
	}
}

// run is the reader: handshake, then frames until the end, all on the
// calling goroutine (Serve).
func (c *Conn) run() error {
	if err := c.openRecovering(); err != nil {
		return c.finish(err)
	}
	err, _ := c.readLoop(false)
	return c.finish(err)
}

// start is Start's: the handshake on the calling goroutine, then the frames
// on a fresh one, and a fresh one again whenever the connection goes idle
// after frames whose handling runs deep (open, begin, attach, detach, end:
// the front end's callbacks). A goroutine's stack stays at its high-water
// mark while it waits in a TLS read (the runtime halves a stack only when
// less than a quarter of it is in use, and a TLS read alone is more than a
// quarter of 4 KiB), so a reader that did the handshake or an attach would
// hold 8 KiB for the connection's life; a fresh one holds the runtime's
// starting size. There is one reader goroutine at any time.
func (c *Conn) start(done func(error)) {
	c.done = done
	if err := c.openRecovering(); err != nil {
		done(c.finish(err))
		return
	}
	go c.detachedLoop()
}

// detachedLoop reads frames until the connection ends, or until it hands
// reading on to a fresh goroutine (start).
func (c *Conn) detachedLoop() {
	err, handedOff := c.readLoop(true)
	if !handedOff {
		c.done(c.finish(err))
	}
}

// openRecovering runs open, turning a panic into the connection's end.
func (c *Conn) openRecovering() (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("amqp: panic: %v", v)
		}
	}()
	return c.open()
}

// open arms the auth deadline and runs the TLS handshake and the protocol
// header exchange (with SASL when the peer asks for it).
func (c *Conn) open() error {
	c.authDeadline = time.Now().Add(c.cfg.AuthTimeout)
	c.mu.Lock()
	c.authTimer = time.AfterFunc(c.cfg.AuthTimeout, func() {
		c.mu.Lock()
		if !c.authed {
			c.closeLocked(Errorf(ErrCondUnauthorizedAccess, "not authenticated within %s", c.cfg.AuthTimeout))
		}
		c.mu.Unlock()
	})
	c.mu.Unlock()
	_ = c.nc.SetDeadline(c.authDeadline)
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := tc.HandshakeContext(c.ctx); err != nil {
			return fmt.Errorf("amqp: TLS handshake: %w", err)
		}
	}
	if cs, ok := c.nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		c.certs = cs.ConnectionState().PeerCertificates
	}
	if err := c.handshake(); err != nil {
		return err
	}
	c.stopShutdown = context.AfterFunc(c.ctx, func() {
		c.Close(Errorf(ErrCondConnectionForced, "server shutting down"))
	})
	return nil
}

// finish stops the connection's timers and tears it down.
func (c *Conn) finish(err error) error {
	c.mu.Lock()
	c.dropAuthTimerLocked()
	c.mu.Unlock()
	if c.stopHeartbeat != nil {
		c.stopHeartbeat()
	}
	if c.stopShutdown != nil {
		c.stopShutdown()
	}
	return c.teardown(err)
}

// readLoop handles frames until the connection ends (err says why, nil
// for an orderly close) or, when detach is set, until it goes idle after a
// frame whose handling may have grown this goroutine's stack: it then
// continues on a fresh goroutine and reports handedOff. Its frame is kept
// small, as it sits under every idle connection's wait.
func (c *Conn) readLoop(detach bool) (err error, handedOff bool) {
	defer func() {
		if v := recover(); v != nil {
			err, handedOff = fmt.Errorf("amqp: panic: %v", v), false
		}
	}()
	for {
		more, err := c.step()
		if !more {
			return err, false
		}
		if detach && c.deep && c.br == nil {
			c.deep = false
			go c.detachedLoop()
			return nil, true
		}
	}
}

// step reads and handles one frame; more is false when the connection is
// over, err then saying why.
func (c *Conn) step() (more bool, err error) {
	c.mu.Lock()
	closing, opened := c.closing, c.peerOpen != nil
	c.mu.Unlock()
	if !closing {
		dl := time.Now().Add(c.cfg.IdleTimeout)
		if !opened && dl.After(c.authDeadline) {
			dl = c.authDeadline
		}
		_ = c.nc.SetReadDeadline(dl)
	}
	max := c.cfg.MaxFrameSize
	if !opened {
		max = minMaxFrameSize * 128 // an open with long properties; still bounded
	}
	var (
		h    frameHeader
		body []byte
		ferr error
	)
	if c.br == nil {
		// Idle: wait for the first byte without a buffer (releaseReader).
		if _, ferr = io.ReadFull(c.nc, c.hdr[:1]); ferr == nil {
			c.borrowReader()
			h, body, ferr = readFrameRest(c.br, c.hdr[:], 1, max)
		}
	} else {
		h, body, ferr = readFrame(c.br, c.hdr[:], max)
	}
	if ferr != nil {
		return c.readFailed(ferr, opened)
	}
	c.mu.Lock()
	if c.closing {
		// Only the peer's close matters now.
		if h.typ == frameAMQP && len(body) > 0 {
			if p, err := decodeFrameBody(body); err == nil {
				if _, ok := p.(*Close); ok {
					c.mu.Unlock()
					return false, nil
				}
			}
		}
		c.mu.Unlock()
		return true, nil
	}
	done := c.frameLocked(h, body)
	if c.stopHeartbeat == nil && c.peerOpen != nil && c.peerOpen.IdleTimeout > 0 {
		c.stopHeartbeat = c.startHeartbeat(time.Duration(c.peerOpen.IdleTimeout) * time.Millisecond)
	}
	if c.br.Buffered() == 0 {
		c.flushLocked()
		c.releaseReader()
	}
	c.unlockAndRun()
	return !done, nil
}

// readFailed decides what a failed frame read means: step's result.
func (c *Conn) readFailed(ferr error, opened bool) (more bool, err error) {
	c.mu.Lock()
	closing := c.closing
	var ae *Error
	switch {
	case closing:
	case errors.As(ferr, &ae):
		c.closeLocked(ae)
	case errors.Is(ferr, os.ErrDeadlineExceeded):
		if opened {
			c.closeLocked(Errorf(ErrCondResourceLimitExceeded, "idle timeout: nothing received for %s", c.cfg.IdleTimeout))
		} else {
			c.closeLocked(Errorf(ErrCondUnauthorizedAccess, "no open within %s", c.cfg.AuthTimeout))
		}
	default:
		if c.closeErr == nil && !errors.Is(ferr, io.EOF) {
			c.closeErr = ferr
		}
	}
	grace := !closing && errors.Is(ferr, os.ErrDeadlineExceeded)
	c.mu.Unlock()
	if grace {
		return true, nil // berth closed for idleness: give the peer its moment to answer close
	}
	if ae != nil && !closing {
		return false, ae
	}
	return false, nil
}

// teardown ends everything once the reader stops.
func (c *Conn) teardown(err error) error {
	c.mu.Lock()
	if c.closeErr == nil {
		c.closeErr = err
	}
	if !c.closed && c.bw != nil {
		_ = c.bw.Flush()
	}
	c.releaseReader()
	c.closed = true
	c.closing = true
	_ = c.nc.Close()
	cerr := c.closeErr
	for _, s := range c.sessions {
		s.goneLocked(connGone(cerr))
	}
	c.sessions = map[uint16]*Session{}
	c.unlockAndRun()
	c.cancel()
	if c.h != nil {
		c.h.Closed(c, cerr)
	}
	return cerr
}

func connGone(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	return Errorf(ErrCondDetachForced, "connection closed")
}

// startHeartbeat sends an empty frame whenever berth has been silent for half the peer's
// idle-time-out, so the peer never sees berth as dead.
func (c *Conn) startHeartbeat(peerIdle time.Duration) func() {
	interval := peerIdle / 2
	if interval < 50*time.Millisecond {
		interval = 50 * time.Millisecond
	}
	period := interval / 2
	// A timer, not a goroutine with a ticker: an idle connection then
	// holds no goroutine stack for its heartbeats (a new goroutine starts
	// with the process's average stack size, which the readers' TLS and
	// decoding make large). Called with c.mu held, so t is set before the
	// first tick, which takes c.mu, reads it.
	var (
		t       *time.Timer
		stopped bool
	)
	t = time.AfterFunc(period, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if stopped || c.closed {
			return
		}
		if time.Since(c.lastWrite) >= period {
			_ = c.writeLocked(frameAMQP, 0, nil, nil)
			c.flushLocked()
		}
		t.Reset(period)
	})
	return func() {
		c.mu.Lock()
		stopped = true
		c.mu.Unlock()
		t.Stop()
	}
}

// handshake reads the protocol header(s) and runs SASL when the peer asks for it.
func (c *Conn) handshake() error {
	if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
		return fmt.Errorf("amqp: reading protocol header: %w", err)
	}
	switch {
	case c.hdr == headerAMQP && !c.cfg.RequireSASL:
		// The no-SASL start: the peer must still authenticate (CBS, certificate) before the
		// auth deadline.
		return c.writeRaw(headerAMQP[:])
	case c.hdr == headerSASL:
		if err := c.writeRaw(headerSASL[:]); err != nil {
			return err
		}
		if err := c.sasl(); err != nil {
			return err
		}
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			return fmt.Errorf("amqp: reading protocol header after SASL: %w", err)
		}
		if c.hdr != headerAMQP {
			_ = c.writeRaw(headerAMQP[:])
			return fmt.Errorf("amqp: unexpected protocol header %q after SASL", c.hdr[:])
		}
		return c.writeRaw(headerAMQP[:])
	default:
		// Answer with the header berth speaks, then hang up, as the specification asks.
		if c.cfg.RequireSASL {
			_ = c.writeRaw(headerSASL[:])
		} else {
			_ = c.writeRaw(headerAMQP[:])
		}
		return fmt.Errorf("amqp: unsupported protocol header %q", c.hdr[:])
	}
}

func (c *Conn) writeRaw(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return ErrClosed
	}
	if _, err := c.nc.Write(b); err != nil {
		return err
	}
	if bytes.Equal(b, headerAMQP[:]) {
		c.amqpPhase = true
	}
	return nil
}

// maxSASLFrame bounds SASL frames; a sasl-init carries at most a SAS token or a certificate-less
// EXTERNAL identity, far below this.
const maxSASLFrame = 16 << 10

func (c *Conn) sasl() error {
	mechs := append([]Symbol(nil), c.cfg.Mechanisms...)
	if len(c.certs) > 0 {
		mechs = append(mechs, MechEXTERNAL)
	}
	c.mu.Lock()
	err := c.writeLocked(frameSASL, 0, &SASLMechanisms{Mechanisms: mechs}, nil)
	c.flushLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	h, body, err := readFrame(c.br, c.hdr[:], maxSASLFrame)
	if err != nil {
		return fmt.Errorf("amqp: reading sasl-init: %w", err)
	}
	if h.typ != frameSASL {
		return fmt.Errorf("amqp: frame type %d during SASL", h.typ)
	}
	p, err := decodeFrameBody(body)
	if err != nil {
		return fmt.Errorf("amqp: sasl-init: %w", err)
	}
	init, ok := p.(*SASLInit)
	if !ok {
		return fmt.Errorf("amqp: %T instead of sasl-init", p)
	}
	cred := &SASLCredentials{Mechanism: init.Mechanism, Hostname: init.Hostname,
		InitialResponse: init.InitialResponse, PeerCertificates: c.certs}
	code := SASLAuth
	offered := false
	for _, m := range mechs {
		offered = offered || m == init.Mechanism
	}
	switch {
	case !offered:
	case init.Mechanism == MechPLAIN:
		parts := bytes.SplitN(init.InitialResponse, []byte{0}, 3)
		if len(parts) == 3 && len(parts[1]) > 0 {
			cred.AuthzID, cred.Username, cred.Password = string(parts[0]), string(parts[1]), string(parts[2])
			code = c.h.Authenticate(c, cred)
		}
	case init.Mechanism == MechEXTERNAL:
		if len(c.certs) > 0 {
			code = c.h.Authenticate(c, cred)
		}
	default:
		code = c.h.Authenticate(c, cred)
	}
	c.mu.Lock()
	if code == SASLOK {
		c.mech = init.Mechanism
		if init.Mechanism == MechPLAIN || init.Mechanism == MechEXTERNAL {
			c.authed = true
			c.dropAuthTimerLocked()
		}
	}
	err = c.writeLocked(frameSASL, 0, &SASLOutcome{Code: code}, nil)
	c.flushLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if code != SASLOK {
		return fmt.Errorf("amqp: SASL %s refused (code %d)", init.Mechanism, code)
	}
	return nil
}

// frameLocked handles one frame of the AMQP phase. It reports whether the connection is over.
func (c *Conn) frameLocked(h frameHeader, body []byte) bool {
	if h.typ != frameAMQP {
		c.closeLocked(Errorf(ErrCondFramingError, "frame type %d after SASL", h.typ))
		return false
	}
	if len(body) == 0 {
		return false // heartbeat
	}
	p, err := decodeFrameBody(body)
	if err != nil {
		var ae *Error
		if errors.As(err, &ae) {
			c.closeLocked(ae)
		} else {
			c.closeLocked(Errorf(ErrCondDecodeError, "%v", err))
		}
		return false
	}
	if c.peerOpen == nil {
		o, ok := p.(*Open)
		if !ok {
			c.closeLocked(Errorf(ErrCondNotAllowed, "%T before open", p))
			return false
		}
		c.openLocked(o)
		c.deep = true
		return false
	}
	if int(h.channel) >= c.cfg.MaxSessions || uint32(h.channel) > uint32(c.peerOpen.ChannelMax) {
		c.closeLocked(Errorf(ErrCondFramingError, "channel %d beyond channel-max", h.channel))
		return false
	}
	switch p.(type) {
	case *Transfer, *Flow, *Disposition:
	default:
		c.deep = true // callbacks into the front end, deep (start)
	}
	switch p := p.(type) {
	case *Open:
		c.closeLocked(Errorf(ErrCondNotAllowed, "second open"))
	case *Close:
		_ = c.writeLocked(frameAMQP, 0, &Close{}, nil)
		c.flushLocked()
		if p.Error != nil && c.closeErr == nil {
			c.closeErr = p.Error
		}
		return true
	case *Begin:
		c.beginLocked(h.channel, p)
	case *SASLInit, *SASLMechanisms, *SASLChallenge, *SASLResponse, *SASLOutcome:
		c.closeLocked(Errorf(ErrCondFramingError, "SASL frame after SASL"))
	default:
		s := c.sessions[h.channel]
		if s == nil {
			c.closeLocked(Errorf(ErrCondNotAllowed, "%T on channel %d without a session", p, h.channel))
			return false
		}
		s.frameLocked(p)
	}
	return false
}

func (c *Conn) openLocked(o *Open) {
	if o.MaxFrameSize < minMaxFrameSize {
		c.peerOpen = o
		c.closeLocked(Errorf(ErrCondFrameSizeTooSmall, "max-frame-size %d below 512", o.MaxFrameSize))
		return
	}
	c.peerOpen = o
	c.peerMax = o.MaxFrameSize
	c.mu.Unlock()
	e := c.h.Open(c, o)
	c.mu.Lock()
	if c.closing {
		return
	}
	c.openSent = true
	_ = c.writeLocked(frameAMQP, 0, c.ourOpen(), nil)
	if e != nil {
		c.closeLocked(e)
	}
}

func (c *Conn) beginLocked(ch uint16, b *Begin) {
	if b.RemoteChannel != nil {
		c.closeLocked(Errorf(ErrCondNotAllowed, "begin answering a session berth never began"))
		return
	}
	if c.sessions[ch] != nil {
		c.closeLocked(Errorf(ErrCondNotAllowed, "channel %d already has a session", ch))
		return
	}
	s := &Session{
		c:                    c,
		ch:                   ch,
		handleMax:            uint32(c.cfg.MaxLinksPerSession - 1),
		nextIncomingID:       b.NextOutgoingID,
		incomingWindow:       c.cfg.SessionWindow,
		remoteIncomingWindow: b.IncomingWindow,
		links:                map[uint32]*Link{},
		inUnsettled:          map[uint32]*Delivery{},
		outUnsettled:         map[uint32]*Sent{},
	}
	if b.HandleMax < s.handleMax {
		s.handleMax = b.HandleMax
	}
	c.sessions[ch] = s
	rc := ch
	_ = c.writeLocked(frameAMQP, ch, &Begin{
		RemoteChannel:  &rc,
		NextOutgoingID: s.nextOutgoingID,
		IncomingWindow: s.incomingWindow,
		OutgoingWindow: c.cfg.SessionWindow,
		HandleMax:      uint32(c.cfg.MaxLinksPerSession - 1),
	}, nil)
}
