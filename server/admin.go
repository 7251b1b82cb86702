package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/berth-iot/berth/console"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/svcconn"
	"github.com/berth-iot/berth/internal/version"
	"github.com/berth-iot/berth/pki"
	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/stream"
)

// The operator listener (Config.AdminAddr): the console, /metrics,
// /healthz and /readyz. docs/operations.md says why it is loopback-only by
// default and what binding it elsewhere exposes.

// admin is the operator listener's state.
type admin struct {
	ln      net.Listener
	srv     *http.Server
	serving atomic.Bool // the device listeners are up (readyz)
	// stop ends every request's context at shutdown: live telemetry
	// streams never end by themselves.
	stop context.CancelFunc
}

// instrument connects the metrics to the domain: observers on the hub and
// DPS services, gauges read at scrape time. The store, the telemetry sink
// (openStream) and the listeners are wrapped where they are made.
func (s *Server) instrument() {
	m := s.metrics
	s.hubSvc.Twins.SetObserver(m)
	s.hubSvc.Methods.SetObserver(m)
	s.hubSvc.CloudToDevice.SetObserver(m)
	s.dps.SetObserver(m.Registration)
	m.AddGauge("berth_build_info", "Always 1; the labels say which berth this is.", func() float64 { return 1 }, "version", version.Get().Version)
	m.AddGauge("berth_cluster_nodes", "Berth nodes this one hears on NATS, itself included (1 alone); --throttle quotas are divided by it.", func() float64 {
		return float64(s.liveNodes())
	})
	m.AddGauge("berth_c2d_queued_messages", "Cloud-to-device messages waiting in every device queue (read from the store at scrape time).", func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := s.store.Count(ctx, store.KindC2D, "")
		if err != nil {
			return -1
		}
		return float64(n)
	})
}

// startAdmin opens the operator listener, when one is configured.
func (s *Server) startAdmin() error {
	s.admin.serving.Store(true)
	if s.cfg.AdminAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("server: operator listener (--admin-addr %s): %w", s.cfg.AdminAddr, err)
	}
	c, err := console.New(console.Config{
		Logger:      s.log.With("listener", "admin"),
		ServiceAddr: func() string { return s.httpsLn.Addr().String() },
		ServerCert:  s.certs.Get,
		IDScope:     s.settings.IDScope, GlobalEndpoint: s.cfg.Hosts[0],
		MQTTAddress:  func() string { return dialAddr(s.cfg.Hosts[0], s.mqttLn, s.cfg.MQTTAddr) },
		HTTPSAddress: func() string { return dialAddr(s.cfg.Hosts[0], s.httpsLn, s.cfg.HTTPSAddr) },
		CAFile:       s.caFile,
		Telemetry: func(ctx context.Context, hubName, deviceID string) (<-chan *hub.Message, error) {
			return s.stream.Subscribe(ctx, stream.SubscribeOptions{Hub: hubName, DeviceID: deviceID})
		},
		AuthorizeTelemetry: s.authorizeTelemetry,
		Metrics:            s.metrics.Handler(),
		Ready:              s.ready,
	})
	if err != nil {
		ln.Close()
		return err
	}
	s.admin.ln = s.metrics.Listener(ln, "admin")
	base, stop := context.WithCancel(context.Background())
	s.admin.stop = stop
	s.admin.srv = &http.Server{
		Handler:           c,
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	cfg := pki.ServerTLSConfig(s.certs, []string{"http/1.1"})
	// Operators' browsers are not devices: asking them for a client
	// certificate would only make some of them prompt for one.
	cfg.ClientAuth = tls.NoClientCert
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.admin.srv.Serve(tls.NewListener(s.admin.ln, cfg)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errs <- fmt.Errorf("server: operator listener: %w", err)
		}
	}()
	return nil
}

func (s *Server) shutdownAdmin(ctx context.Context) error {
	s.admin.serving.Store(false)
	if s.admin.srv == nil {
		return nil
	}
	s.admin.stop()
	if err := s.admin.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("server: operator listener shutdown: %w", err)
	}
	return nil
}

// AdminURL is the operator console's URL, or "" without an operator
// listener.
func (s *Server) AdminURL() string {
	if s.admin.ln == nil {
		return ""
	}
	return "https://" + dialAddr(s.cfg.Hosts[0], s.admin.ln, s.cfg.AdminAddr) + "/"
}

// ready is /readyz: the store answers, the stream is connected and the
// device listeners are serving.
func (s *Server) ready(ctx context.Context) error {
	if !s.admin.serving.Load() {
		return errors.New("listeners not serving")
	}
	if _, err := s.store.Count(ctx, store.KindConfig, ""); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if nc := s.stream.Conn(); nc == nil || !nc.IsConnected() {
		return errors.New("stream: not connected to NATS")
	}
	return nil
}

// authorizeTelemetry applies the service API's check to a console
// session's connection string: a token signed with its key must be one
// the hub it names accepts for ServiceConnect.
func (s *Server) authorizeTelemetry(cs svcconn.ConnectionString) (string, error) {
	served, ok := s.hubs.Lookup(svcconn.HostOnly(cs.HostName))
	if !ok {
		return "", fmt.Errorf("server: %s is no hub of this berth", cs.HostName)
	}
	now := time.Now()
	tok, err := sas.Sign(served.Info.Name, cs.SharedAccessKey, cs.SharedAccessKeyName, now.Add(time.Minute))
	if err != nil {
		return "", err
	}
	_, err = served.Settings.PolicySet().Authorize(tok, policy.Request{
		Hosts: []string{served.Info.Name}, Rights: []string{hub.RightServiceConnect}, Now: now,
		Limits: sas.Limits{MaxLifetime: s.cfg.MaxTokenLifetime},
	})
	if err != nil {
		return "", err
	}
	return served.Info.Name, nil
}
