// Package amqp is berth's AMQP 1.0 front end (5671, and AmqpWs on 443): it
// maps link addresses to the hub domain (docs/amqp-wire.md). The protocol
// itself (framing, SASL, sessions, links, credit) is the engine in package
// github.com/berth-iot/berth/amqp; this package only decides who a peer is
// (SASL, CBS put-token, TLS client certificates) and translates each
// link's messages into calls on the hub bundle.
package amqp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/acceptloop"
)

// HubConfig is the hub this front end serves (as for the MQTT listener).
type HubConfig struct {
	// Name is the default hub host name.
	Name string
	// Settings are the default hub's policies.
	Settings *hub.Settings
	// Hubs, when set, are every hub served; a CBS audience must name one.
	Hubs *hub.Directory
	// Services is the hub domain. Required.
	*hub.Services
	// Now is the registry's clock (default time.Now).
	Now func() time.Time
	// EventHubs serves the hubs' Event Hubs-compatible endpoint; nil
	// turns it off.
	EventHubs *EventHubs
}

// Config configures a Server.
type Config struct {
	Logger *slog.Logger
	Hub    *HubConfig
	// DPS, when set, serves DPS over AMQP ({scope}/registrations/{reg},
	// dps.go).
	DPS DPS
	// Engine overrides the engine's limits; its Handler is set per
	// connection.
	Engine engine.Config
}

// Server is the AMQP listener. Create it with New.
type Server struct {
	cfg    Config
	engine *engine.Config // cfg.Engine, Prepared: shared by every connection
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc

	conns acceptloop.Tracker[*conn] // listeners and connections
}

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Hub != nil {
		h := *cfg.Hub
		if h.Now == nil {
			h.Now = time.Now
		}
		cfg.Hub = &h
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, engine: cfg.Engine.Prepared(), log: cfg.Logger, ctx: ctx, cancel: cancel}
}

// Serve accepts connections on ln (a TLS listener: the handshake runs in
// the connection's goroutine, under the engine's authentication deadline)
// until ln fails or Shutdown is called; it returns nil after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	return s.conns.Serve(s.ctx, ln, s.log, "amqp", func(nc net.Conn) bool {
		go s.startConn(nc)
		return true
	})
}

// ServeConn serves one AMQP connection established elsewhere (a WebSocket
// byte stream from wsconn: AmqpWs) as Serve serves an accepted one: it runs
// the protocol header exchange on the calling goroutine, then returns, the
// connection going on on goroutines of its own until it ends and closes nc
// (as frontend/mqtt's ServeConn). nc's ConnectionState, when it has one,
// gives X.509 devices their client certificate.
func (s *Server) ServeConn(nc net.Conn) {
	s.startConn(nc)
}

// startConn starts one connection: after the handshake it is read on
// goroutines of the engine's own (engine.Start), which keeps an idle
// connection's goroutine stack small.
func (s *Server) startConn(nc net.Conn) {
	c := newConn(s)
	if !s.conns.Track(c) {
		nc.Close()
		return
	}
	engine.Start(s.ctx, nc, s.engine, c, func(err error) {
		defer s.conns.Untrack(c)
		if err != nil {
			s.log.Debug("amqp: connection ended", "remote", nc.RemoteAddr().String(), "error", err.Error())
		}
	})
}

// Shutdown closes the listeners and every connection (amqp:connection:forced)
// and waits for them, or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.conns.Shutdown()
	s.cancel()
	if err := s.conns.Wait(ctx); err != nil {
		return fmt.Errorf("amqp: shutdown: %w", err)
	}
	return nil
}

// RecheckServiceGrants checks every connection's service grants of
// hubName against its policies again: the server calls it when the hub's
// policies change (here, or on another node), so that a renewed or
// deleted key ends the service links authorised with it.
func (s *Server) RecheckServiceGrants(hubName string) {
	for _, c := range s.conns.Conns() {
		c.recheckService(hubName)
	}
}

// ConnCount is the number of open connections.
func (s *Server) ConnCount() int {
	return s.conns.Len()
}

// servedHub resolves a host name to the hub's name as berth knows it and
// its policies.
func (s *Server) servedHub(name string) (string, *hub.Settings, bool) {
	h := s.cfg.Hub
	if h == nil {
		return "", nil, false
	}
	return hub.ServedHub(h.Hubs, h.Name, h.Settings, name)
}
