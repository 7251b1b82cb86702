// Package mqtt is berth's MQTT 3.1.1 listener. One listener serves every
// device that speaks MQTT to berth: DPS registrations
// (docs/spec/dps-protocol.md#mqtt-connect) and IoT Hub device sessions
// (docs/spec/iothub-protocol.md, MQTT: telemetry, twins, direct methods and
// cloud-to-device messages). The CONNECT username decides
// which protocol a connection speaks; everything after CONNECT is handled by
// a session of that kind (see session in conn.go).
//
// Packets are encoded and decoded by mochi-mqtt's packets codec. The
// listener is not a broker: there are no retained messages and no routing
// between clients; a device's persistent session keeps only its
// subscriptions (docs/hub-wire.md, "MQTT sessions"). Each answer goes to the
// connection that asked for it.
package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/internal/acceptloop"
	"github.com/berth-iot/berth/internal/tlsidle"
)

// Defaults for Config.
const (
	// DefaultMaxPacketSize is IoT Hub's 256 KiB message limit plus room for
	// the topic (which carries the message properties) and packet header.
	DefaultMaxPacketSize = 256*1024 + 4*1024
	// DefaultConnectTimeout bounds the TLS handshake plus CONNECT.
	DefaultConnectTimeout = 10 * time.Second
)

const (
	// writeTimeout bounds one packet write: a client that stops reading
	// must not hold a goroutine (or Shutdown) forever.
	writeTimeout = 10 * time.Second
	// readBufferSize is the size of the pooled read buffers. Small packets
	// (everything DPS and most of IoT Hub exchanges) fit in one; bigger
	// bodies are read straight into their own allocation.
	readBufferSize = 2 * 1024
	// maxPooledWriteBuffer keeps the write buffer pool from holding on to
	// the memory of one unusually large packet.
	maxPooledWriteBuffer = 16 * 1024
)

// Config configures a Server.
type Config struct {
	// MaxPacketSize bounds the Remaining Length of an inbound packet; a
	// bigger packet closes the connection. Default DefaultMaxPacketSize.
	// DPS answers publishes over its 96 KB limit with res/413 as long as
	// they fit in MaxPacketSize.
	MaxPacketSize int
	// ConnectTimeout is the time allowed from accept to a complete CONNECT
	// (TLS handshake included). Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Logger receives the listener's logs; slog.Default() when nil.
	Logger *slog.Logger
	// Hub serves IoT Hub device sessions ({hub}/{deviceId}/?api-version=…
	// usernames) when set; without it they are refused with CONNACK 5.
	Hub *HubConfig
	// OnSession, when set, is told of every accepted CONNECT: "dps" or
	// "hub" (the operator's metrics).
	OnSession func(kind string)
}

// Server is an MQTT listener. Create it with New.
type Server struct {
	cfg Config
	dps DPS
	log *slog.Logger

	// ctx is the parent of every domain call's context; Shutdown cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	conns acceptloop.Tracker[*conn] // listeners and connection goroutines

	// readers and writeBufs are borrowed per packet so that an idle
	// connection holds no I/O buffer of its own.
	readers   sync.Pool // *bufio.Reader
	writeBufs sync.Pool // *bytes.Buffer
	packets   sync.Pool // *packets.Packet

	// pingresp is the encoded PINGRESP, the one packet an idle device
	// makes the server write.
	pingresp []byte

	// panics counts recovered panics; the fuzz tests require it to stay 0.
	panics atomic.Int64

	// idle waits for parked connections' sockets (conn.maybePark). It is
	// started by the first connection that can use it and closed by
	// Shutdown; idleDone refuses to start it after that.
	idleMu   sync.Mutex
	idle     *tlsidle.Poller
	idleErr  error
	idleDone bool
}

// New returns a Server that answers DPS requests with d (nil: DPS
// usernames are refused) and, when cfg.Hub is set, serves IoT Hub device
// sessions.
func New(cfg Config, d DPS) *Server {
	if cfg.MaxPacketSize <= 0 {
		cfg.MaxPacketSize = DefaultMaxPacketSize
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Hub != nil {
		// A copy, so that the caller cannot change it under the
		// connections.
		h := *cfg.Hub
		if h.Now == nil {
			h.Now = time.Now
		}
		cfg.Hub = &h
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:    cfg,
		dps:    d,
		log:    cfg.Logger,
		ctx:    ctx,
		cancel: cancel,
	}
	var ping bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
	_ = pk.PingrespEncode(&ping) // writes two bytes; cannot fail
	s.pingresp = ping.Bytes()
	s.readers.New = func() any { return bufio.NewReaderSize(nil, readBufferSize) }
	s.writeBufs.New = func() any { return new(bytes.Buffer) }
	s.packets.New = func() any { return new(packets.Packet) }
	return s
}

// Serve accepts connections on ln until ln fails or Shutdown is called.
// ln must yield connections that are already TLS (tls.NewListener): the
// handshake runs in the connection's goroutine, under ConnectTimeout. Serve
// returns nil after Shutdown, and the accept error otherwise.
func (s *Server) Serve(ln net.Listener) error {
	return s.conns.Serve(s.ctx, ln, s.log, "mqtt", s.serveConn)
}

// ServeConn serves one connection established elsewhere — MQTT over a
// WebSocket (wsconn) on the HTTPS listener — exactly as a connection
// Serve accepted: same sessions, limits and deadlines. It returns at once;
// the connection runs on its own goroutine. nc's ConnectionState, when it
// has one, gives X.509 devices their client certificate.
func (s *Server) ServeConn(nc net.Conn) {
	s.serveConn(nc)
}

// serveConn starts the goroutine of one accepted connection. It reports
// false, having closed nc, once Shutdown has begun.
func (s *Server) serveConn(nc net.Conn) bool {
	c := newConn(s, nc)
	if !s.conns.Track(c) {
		nc.Close()
		return false
	}
	go c.serve()
	return true
}

// Shutdown stops accepting, cancels the domain calls in flight, closes
// every connection and waits for their goroutines, or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.conns.Shutdown()
	s.cancel()
	for _, c := range conns {
		c.close(true)
	}
	err := s.conns.Wait(ctx)
	// Connections still parked (none, unless ctx ended the wait) are
	// woken with an error and end.
	s.idleMu.Lock()
	p := s.idle
	s.idle, s.idleDone = nil, true
	s.idleMu.Unlock()
	if p != nil {
		_ = p.Close()
	}
	if err != nil {
		return fmt.Errorf("mqtt: shutdown: %w", err)
	}
	return nil
}

// parkedConns is the number of connections the idle poller holds.
func (s *Server) parkedConns() int {
	s.idleMu.Lock()
	p := s.idle
	s.idleMu.Unlock()
	if p == nil {
		return 0
	}
	return p.Len()
}

// poller returns the poller of idle connections, started on first use; nil
// after Shutdown or where there is none (not Linux), and the connections
// then wait on goroutines of their own.
func (s *Server) poller() *tlsidle.Poller {
	s.idleMu.Lock()
	defer s.idleMu.Unlock()
	if s.idle == nil && s.idleErr == nil && !s.idleDone {
		s.idle, s.idleErr = tlsidle.NewPoller()
		if s.idleErr != nil {
			s.log.Debug("mqtt: idle connections wait on goroutines", "reason", s.idleErr.Error())
		}
	}
	return s.idle
}

// ConnCount is the number of open connections, whether or not they have
// completed CONNECT.
func (s *Server) ConnCount() int {
	return s.conns.Len()
}

func (s *Server) getWriteBuf() *bytes.Buffer {
	b := s.writeBufs.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

func (s *Server) putWriteBuf(b *bytes.Buffer) {
	if b.Cap() <= maxPooledWriteBuffer {
		s.writeBufs.Put(b)
	}
}

// getPacket borrows a zeroed packet to decode into or encode from; the
// caller returns it with putPacket once nothing refers to it.
func (s *Server) getPacket() *packets.Packet { return s.packets.Get().(*packets.Packet) }

func (s *Server) putPacket(pk *packets.Packet) {
	*pk = packets.Packet{} // drop references into packet buffers
	s.packets.Put(pk)
}
