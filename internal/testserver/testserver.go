// Package testserver is the in-process berth behind dpstest and hubtest:
// one berth (DPS and hub) on 127.0.0.1 with ephemeral ports, a throwaway
// CA and store in a temporary directory, and switchable faults injected at
// the domains' fault points (dps.Faults, hub.Faults), so that every front
// end shows them.
package testserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/server"
)

// Defaults of a test server.
const (
	// Host is the DPS global endpoint and service host name: the loopback
	// address the server listens on, named in its certificate.
	Host = "127.0.0.1"
	// DefaultHubName is the hub's host name. It does not resolve: clients
	// dial MQTTAddr or HTTPSAddr and verify the certificate for this name.
	DefaultHubName = "hub.berth.test"
)

// Server is a running in-process berth. Its fields describe how to reach
// it; its methods switch faults on and off while it runs. A Server is safe
// for concurrent use.
type Server struct {
	// MQTTAddr, HTTPSAddr and AMQPAddr are the host:port of the MQTT
	// (8883 on a real berth), HTTPS (443) and AMQP (5671) listeners.
	MQTTAddr  string
	HTTPSAddr string
	AMQPAddr  string
	// GlobalEndpoint is the DPS host name devices provision through
	// (deviceclient.Options.GlobalEndpoint), also the TLS name of both
	// listeners.
	GlobalEndpoint string
	// IDScope is the DPS's ID scope; HubName the host name of its one hub,
	// to which DPS assigns devices.
	IDScope string
	HubName string
	// DPSConnectionString is the DPS owner policy's service connection
	// string (serviceclient); HubConnectionString the hub owner's
	// (hubclient). Their HostName has no port: give the client HTTPSAddr
	// as its address.
	DPSConnectionString string
	HubConnectionString string
	// CAFile is the PEM file of the throwaway CA (for clients that take a
	// file, such as serviceclient.Options.CAFile).
	CAFile string
	// Dir is the server's temporary data directory (store, CA, stream).
	Dir string

	srv    *server.Server
	pool   *x509.CertPool
	faults *faults
	once   sync.Once
}

// Option configures a test server.
type Option func(*config)

type config struct {
	logger  *slog.Logger
	hubName string
	// then run once the server is up, to switch initial faults on.
	then []func(*Server)
}

// WithLogger sends the server's log to l; by default it is discarded.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithHubName names the hub (default DefaultHubName).
func WithHubName(name string) Option { return func(c *config) { c.hubName = name } }

// Then runs f on the server once it is started: the options of dpstest and
// hubtest switch faults on with it.
func Then(f func(*Server)) Option { return func(c *config) { c.then = append(c.then, f) } }

// New starts a test server and registers its Close with tb.Cleanup. It
// fails tb if the server cannot start.
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s, err := Start(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("testserver: %v", err)
		}
	})
	return s
}

// Start starts a test server in a new temporary directory; Close stops it
// and removes the directory.
func Start(opts ...Option) (_ *Server, err error) {
	cfg := config{hubName: DefaultHubName}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir, err := os.MkdirTemp("", "berth-test-")
	if err != nil {
		return nil, fmt.Errorf("testserver: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	f := &faults{sent: map[string]int{}}
	srv, err := server.New(context.Background(), server.Config{
		DataDir:   dir,
		Hosts:     []string{Host, "localhost"},
		HubName:   cfg.hubName,
		MQTTAddr:  Host + ":0",
		HTTPSAddr: Host + ":0",
		AMQPAddr:  Host + ":0",
		// Clients wait as little as the protocol allows.
		RetryAfter:   1,
		StreamListen: "none",
		Logger:       cfg.logger,
		DPSFaults:    f,
		HubFaults:    f,
	})
	if err != nil {
		return nil, fmt.Errorf("testserver: %w", err)
	}
	f.links = srv.Hub().Links
	s := &Server{srv: srv, faults: f, Dir: dir}
	if err := srv.Start(); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("testserver: %w", err)
	}
	info := srv.Info()
	s.MQTTAddr, s.HTTPSAddr, s.AMQPAddr = info.MQTTAddress, info.HTTPSAddress, info.AMQPAddress
	s.GlobalEndpoint, s.IDScope, s.HubName = info.GlobalEndpoint, info.IDScope, info.HubHostName
	s.DPSConnectionString, s.HubConnectionString = info.ServiceConnectionString, info.HubConnectionString
	s.CAFile = info.CAFile
	pem, err := os.ReadFile(info.CAFile)
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("testserver: read the CA: %w", err)
	}
	s.pool = x509.NewCertPool()
	if !s.pool.AppendCertsFromPEM(pem) {
		_ = s.Close()
		return nil, fmt.Errorf("testserver: %s holds no certificate", info.CAFile)
	}
	for _, f := range cfg.then {
		f(s)
	}
	return s, nil
}

// Close shuts the server down, ending every connection, and removes its
// directory. Later calls do nothing and return nil.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = errors.Join(s.srv.Shutdown(ctx), os.RemoveAll(s.Dir))
		if err != nil {
			err = fmt.Errorf("testserver: close: %w", err)
		}
	})
	return err
}

// CertPool returns a pool holding the server's CA.
func (s *Server) CertPool() *x509.CertPool { return s.pool }

// TLSConfig returns a new client configuration that trusts the server. Set
// ServerName to HubName when dialling the hub by MQTTAddr.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.pool, MinVersion: tls.VersionTLS12}
}

// Berth returns the running server, for what the fields do not cover.
func (s *Server) Berth() *server.Server { return s.srv }

// ThrottleRegistrations answers the next n DPS registration requests 429
// Throttled (errorCode 429001) with retry-after, as Azure does when a DPS
// is over its quota. Polls are not counted.
func (s *Server) ThrottleRegistrations(n int) { s.faults.set(func(f *faults) { f.throttle = n }) }

// FailRegistrations answers the next n DPS registration requests 503
// ServiceUnavailable with retry-after (after any throttled ones).
func (s *Server) FailRegistrations(n int) { s.faults.set(func(f *faults) { f.unavailable = n }) }

// RefuseConnections refuses the next n device connections to the hub as
// unavailable: MQTT CONNACK 3, HTTPS 503.
func (s *Server) RefuseConnections(n int) { s.faults.set(func(f *faults) { f.refuse = n }) }

// DelayConnections holds every device connection for d before it is
// authenticated (0 to stop). MQTT allows a CONNECT 10 s in all.
func (s *Server) DelayConnections(d time.Duration) {
	s.faults.set(func(f *faults) { f.connectDelay = d })
}

// DropAfter drops each device connection after it had n messages
// accepted (0 to stop): the next message is not acknowledged and the hub
// closes the connection. The count starts again at every authentication,
// so it counts per MQTT (or AMQP) connection.
func (s *Server) DropAfter(n int) {
	s.faults.set(func(f *faults) { f.dropAfter = n; clear(f.sent) })
}

// DelayTwin delays every answer to a device's twin GET and
// reported-properties PATCH by d (0 to stop).
func (s *Server) DelayTwin(d time.Duration) { s.faults.set(func(f *faults) { f.twinDelay = d }) }

// DelayMethods delays every device's direct-method answer to its caller by
// d (0 to stop). Past the call's responseTimeoutInSeconds the caller gets
// 504 GatewayTimeout, as when a device answers late.
func (s *Server) DelayMethods(d time.Duration) { s.faults.set(func(f *faults) { f.methodDelay = d }) }

// ExpireTokens ends the device's live connection as IoT Hub does when its
// token expires; the device is expected to reconnect with a fresh token.
// It reports whether the device was connected. (The token the device held
// is not refused afterwards: only the session ends early.)
func (s *Server) ExpireTokens(deviceID string) bool {
	l := s.faults.links.Lookup(s.HubName, deviceID)
	if l == nil {
		return false
	}
	l.Close(hub.CloseExpired)
	return true
}

// InjectedFaults is how many answers the server's faults have changed so
// far: registrations throttled or failed, connections refused, connections
// dropped after their messages (delays are not counted). A test asserts
// with it that the client under test met the fault.
func (s *Server) InjectedFaults() int {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return s.faults.injected
}

// faults implements dps.Faults and hub.Faults from switches the Server's
// methods set.
type faults struct {
	links *hub.Links

	mu                                   sync.Mutex
	throttle, unavailable, refuse        int
	connectDelay, twinDelay, methodDelay time.Duration
	dropAfter                            int
	injected                             int
	sent                                 map[string]int // messages per hub/device since it authenticated
}

func (f *faults) set(change func(*faults)) {
	f.mu.Lock()
	change(f)
	f.mu.Unlock()
}

// Register implements dps.Faults.
func (f *faults) Register(context.Context, string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.throttle > 0:
		f.throttle--
		f.injected++
		return azerr.New(azerr.DPSThrottled)
	case f.unavailable > 0:
		f.unavailable--
		f.injected++
		return azerr.New(azerr.DPSServiceUnavailable)
	}
	return nil
}

// Fault implements hub.Faults.
func (f *faults) Fault(ctx context.Context, point hub.FaultPoint, hubName, deviceID string) error {
	key := hubName + "/" + deviceID
	f.mu.Lock()
	var wait time.Duration
	switch point {
	case hub.FaultConnect:
		delete(f.sent, key)
		if f.refuse > 0 {
			f.refuse--
			f.injected++
			f.mu.Unlock()
			return azerr.Newf(azerr.HubServiceUnavailable, "The test server refuses the connection.")
		}
		wait = f.connectDelay
	case hub.FaultTelemetry:
		if f.dropAfter > 0 {
			f.sent[key]++
			if f.sent[key] > f.dropAfter {
				delete(f.sent, key)
				f.injected++
				f.mu.Unlock()
				if l := f.links.Lookup(hubName, deviceID); l != nil {
					l.Close(hub.CloseFault)
				}
				return azerr.Newf(azerr.HubServiceUnavailable, "The test server drops the connection after %d messages.", f.dropAfter)
			}
		}
	case hub.FaultTwin:
		wait = f.twinDelay
	case hub.FaultMethod:
		wait = f.methodDelay
	}
	f.mu.Unlock()
	return sleep(ctx, wait)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("testserver: delay of %s: %w", d, ctx.Err())
	}
}
