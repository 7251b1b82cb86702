// Package server assembles a berth: store, domain services, TLS and the
// protocol listeners, with their lifecycle (start, addresses, graceful
// shutdown). `berth serve` and the end-to-end tests both run it in-process.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/eventhubs"
	amqpfront "github.com/berth-iot/berth/frontend/amqp"
	mqttfront "github.com/berth-iot/berth/frontend/mqtt"
	"github.com/berth-iot/berth/frontend/rest"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/linkbus"
	"github.com/berth-iot/berth/metrics"
	"github.com/berth-iot/berth/pki"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
	"github.com/berth-iot/berth/store/sqlite"
	"github.com/berth-iot/berth/stream"
	"github.com/berth-iot/berth/throttle"
	"github.com/berth-iot/berth/wsconn"
)

// Config is everything `berth serve` can be told.
type Config struct {
	// DataDir holds the SQLite store, the development CA, the server
	// certificate and client.json. Created if missing.
	DataDir string
	// Hosts are the host names and IP addresses devices use to reach berth.
	// The first is the public name: the DPS global endpoint, the service host
	// name and, unless HubName is set, the hub host name. All of them are in
	// the generated server certificate.
	Hosts []string
	// HubName is the host name of the hub devices are assigned to.
	HubName string
	// AcceptNewHub lets a start whose HubName (or, in a cluster, first
	// host) differs from the one recorded in the store go ahead: it
	// records the new names, and the hub is created if it is new and made
	// the default; the previous hub stays, with its devices. Without it
	// such a start is refused (docs/operations.md#the-hub-of-a-data-directory).
	AcceptNewHub bool
	// Region is this node's location label: geoLatency allocation prefers
	// hubs with the same region (docs/provisioning.md).
	Region string
	// MQTTAddr and HTTPSAddr are the listen addresses (":8883", ":443").
	MQTTAddr  string
	HTTPSAddr string
	// AMQPAddr is the AMQPS listen address (":5671"); "off" serves no AMQP
	// over TCP (AmqpWs on the HTTPS listener stays).
	AMQPAddr string
	// TLSCert and TLSKey name a user-supplied certificate and key; when
	// empty berth issues its own from its development CA.
	TLSCert string
	TLSKey  string
	// IDScope is used only on first start; later starts keep the stored one.
	IDScope string
	// StoreURL selects the store: "" or "sqlite:PATH" for SQLite (default
	// DataDir/berth.db), "postgres://…" for PostgreSQL.
	StoreURL string
	// RetryAfter is the retry-after (seconds) on DPS 202 answers.
	RetryAfter int
	// NATSURL selects the telemetry stream: "" for the embedded NATS
	// server (JetStream under DataDir/nats), or the URLs of an external
	// NATS (cluster) with JetStream.
	NATSURL string
	// StreamListen is where the embedded NATS server accepts local readers
	// (berth hub monitor-events, any NATS client) with a token kept in
	// client.json; "" keeps it in-process only. Default 127.0.0.1:0.
	StreamListen string
	// StreamReplicas is the telemetry stream's replication on an external
	// NATS cluster (0: 1 when berth creates the stream). A start never
	// lowers an existing stream's replicas.
	StreamReplicas int
	// MaxTokenLifetime is the longest lifetime (se minus now) of a device
	// or service SAS token berth accepts; 0 for no limit, as Azure.
	MaxTokenLifetime time.Duration
	// AdminAddr is the operator listener (console, /metrics, /healthz,
	// /readyz), HTTPS with the server certificate; "" for none. `berth
	// serve` defaults it to 127.0.0.1:8443 (docs/operations.md).
	AdminAddr string
	Logger    *slog.Logger
	// DPSFaults and HubFaults inject failures into the domains, for test
	// servers (dpstest, hubtest); nil in production.
	DPSFaults dps.Faults
	HubFaults hub.Faults
	// JobRetention is how long a finished job is kept after it ended
	// (berth serve --job-retention): 0 for IoT Hub's 30 days, negative to
	// keep every job (docs/hub-jobs.md#retention).
	JobRetention time.Duration
	// Throttle applies Azure's published throttles (berth serve
	// --throttle, --throttle-units, --throttle-limit); the zero value
	// throttles nothing (docs/operations.md).
	Throttle throttle.Settings
}

// AMQPOff as Config.AMQPAddr turns the AMQPS listener off.
const AMQPOff = "off"

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.DataDir == "" {
		c.DataDir = localconf.DefaultDataDir()
	}
	if len(c.Hosts) == 0 {
		c.Hosts = []string{"127.0.0.1", "localhost"}
	}
	if c.HubName == "" {
		c.HubName = c.Hosts[0]
	}
	// An absolute name's trailing dot names the same host; a hub's name
	// (a device's HostName, a token's audience) is written without it.
	c.HubName = strings.TrimSuffix(c.HubName, ".")
	if c.MQTTAddr == "" {
		c.MQTTAddr = ":8883"
	}
	if c.HTTPSAddr == "" {
		c.HTTPSAddr = ":443"
	}
	if c.AMQPAddr == "" {
		c.AMQPAddr = ":5671"
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = dps.DefaultRetryAfter
	}
	if c.StreamListen == "" {
		c.StreamListen = "127.0.0.1:0"
	} else if c.StreamListen == "none" {
		c.StreamListen = ""
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Server is a running berth.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store store.Store
	// pg is the store when it is PostgreSQL (shared by a cluster's
	// nodes), for its change notifications; nil otherwise.
	pg       *postgres.Store
	settings *dps.Settings
	dps      *dps.Service
	registry *hub.Registry
	hubs     *hub.Directory
	hubSet   *hub.Settings
	ca       *pki.CA
	// hubSvc is the hub domain every front end translates into.
	hubSvc   *hub.Services
	stream   *stream.Stream
	bus      *linkbus.Bus // nil with the embedded NATS
	metrics  *metrics.Metrics
	admin    admin
	certs    *pki.CertSource
	caFile   string
	firstRun bool
	lock     *dirLock // the data directory's, released last by Shutdown
	// policyWatched are the hubs' policy sets watched for revocations
	// (watchHubPolicies).
	policyMu      sync.Mutex
	policyWatched map[*hub.Settings]bool

	mqttLn  net.Listener
	httpsLn net.Listener
	amqpLn  net.Listener // nil with AMQPAddr "off"
	mqtt    *mqttfront.Server
	amqp    *amqpfront.Server
	https   *http.Server
	wg      sync.WaitGroup
	// stopBackground ends the background work Start begins (DPS removal
	// retries).
	stopBackground context.CancelFunc
	errs           chan error
}

// New opens the store and prepares TLS and the domain; it does not listen.
// It first locks the data directory: with another berth running on it, New
// returns a *DataDirInUseError and touches nothing there.
func New(ctx context.Context, cfg Config) (*Server, error) {
	cfg.Defaults()
	if cfg.MaxTokenLifetime < 0 {
		return nil, fmt.Errorf("server: the longest token lifetime (--max-token-lifetime) is %s; give 0 for no limit or a positive duration", cfg.MaxTokenLifetime)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s, err := open(ctx, cfg)
	if err != nil {
		_ = lock.release()
		return nil, err
	}
	s.lock = lock
	return s, nil
}

// open is New once the data directory is locked.
func open(ctx context.Context, cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, metrics: metrics.New(), errs: make(chan error, 3)}
	// Every refusal is logged once; the log is where they are counted.
	s.log = slog.New(s.metrics.LogHandler(cfg.Logger.Handler()))
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.pg, _ = st.(*postgres.Store)
	st = s.metrics.Store(st)
	s.store = st
	shared := isShared(cfg.StoreURL)
	if shared {
		// Before anything is created: a node with other names must not
		// add a hub to the cluster's store.
		if err := s.checkClusterNames(ctx); err != nil {
			st.Close()
			return nil, err
		}
	} else if err := s.checkLocalHub(ctx); err != nil {
		// Likewise on one node: another hub name would add a hub.
		st.Close()
		return nil, err
	}
	settings, created, err := dps.LoadOrCreateSettings(ctx, st, cfg.IDScope)
	if err != nil {
		st.Close()
		return nil, err
	}
	if shared && !created && cfg.IDScope != "" && cfg.IDScope != settings.IDScope {
		st.Close()
		return nil, mismatch("server: this node was given --id-scope %s, but the cluster on its store has ID scope %s.", cfg.IDScope, settings.IDScope)
	}
	s.settings, s.firstRun = settings, created
	s.registry = hub.NewRegistry(st, nil)
	if !shared {
		s.registry.CacheSendViews() // this node is the store's only writer
	}
	limits := sas.Limits{MaxLifetime: cfg.MaxTokenLifetime}
	s.registry.SetTokenLimits(limits)
	if cfg.HubFaults != nil {
		s.registry.SetFaults(cfg.HubFaults)
	}
	// Telemetry gets its sink once the stream is open (openStream).
	s.hubSvc = hub.NewServices(st, s.registry, nil, nil, s.log)
	if s.hubs, err = hub.LoadDirectory(ctx, st, s.registry, cfg.HubName, time.Now()); err != nil {
		st.Close()
		return nil, err
	}
	s.hubSet = s.hubs.Default().Settings
	if !shared {
		if err := s.recordLocalIdentity(ctx); err != nil {
			st.Close()
			return nil, err
		}
	}
	s.dps, err = dps.New(st, s.registry, dps.Config{
		IDScope:    settings.IDScope,
		LinkedHubs: linkedHubs(s.hubs.List()),
		Region:     cfg.Region,
		DefaultHub: s.hubs.Default().Info.Name,
		RetryAfter: cfg.RetryAfter,
		// Service tokens bind to the configured names, never to a
		// request's Host header.
		Settings:     settings,
		ServiceHosts: serviceHosts(cfg),
		TokenLimits:  limits,
		Logger:       s.log.With("component", "dps"),
		Faults:       cfg.DPSFaults,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	// certificateAuthority devices chain to the DPS's CAs.
	s.registry.SetCATrust(s.dps)
	s.setupThrottle()
	s.instrument()
	if err := s.setupTLS(); err != nil {
		st.Close()
		return nil, err
	}
	if shared {
		if err := s.checkClusterCA(ctx); err != nil {
			st.Close()
			return nil, err
		}
	}
	// Every hub change relinks DPS and, with berth's own CA, reissues the
	// server certificate so that it names every hub (SNI).
	s.hubs.Watch(func(infos []hub.HubInfo) {
		s.watchHubPolicies(infos)
		s.dps.SetLinkedHubs(linkedHubs(infos))
		if err := s.reissueCert(infos); err != nil {
			s.log.Error("server: could not reissue the server certificate for the hubs", "error", err.Error())
		}
	})
	if err := s.openStream(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// liveNodes is how many berth nodes this one hears, itself included: 1
// without a bus (the embedded NATS). s.bus is set by openStream, later in
// New than setupThrottle, but before any request or scrape.
func (s *Server) liveNodes() int {
	if s.bus == nil {
		return 1
	}
	return s.bus.LiveNodes()
}

// setupThrottle installs cfg.Throttle in both domains, which every front
// end calls, and logs the limits the default hub gets.
func (s *Server) setupThrottle() {
	th := throttle.New(throttle.Config{Settings: s.cfg.Throttle, Observe: s.metrics.Throttled,
		// The quotas are the cluster's: each node takes its share by the
		// nodes linkbus hears.
		Nodes: s.liveNodes})
	if th == nil {
		return
	}
	s.registry.SetThrottle(th)
	s.dps.SetThrottle(th)
	hubName := s.hubs.Default().Info.Name
	s.log.Info("server: throttling as Azure does", "profile", s.cfg.Throttle.Profile.Name, "hub", hubName,
		"limits", strings.Join(s.cfg.Throttle.Describe(hubName), " "), "hubsWithOwnUnits", strings.Join(s.cfg.Throttle.HubsWithUnits(), ","))
}

func (s *Server) openStream(ctx context.Context) error {
	cfg := stream.Config{URL: s.cfg.NATSURL, Replicas: s.cfg.StreamReplicas, Logger: s.log}
	if cfg.URL == "" {
		cfg.StoreDir = filepath.Join(s.cfg.DataDir, "nats")
		if s.cfg.StreamListen != "" {
			cfg.ListenAddr = s.cfg.StreamListen
			cfg.Token = s.streamToken()
		}
	}
	st, err := stream.Open(ctx, cfg)
	if err != nil {
		return fmt.Errorf("server: telemetry stream: %w", err)
	}
	s.stream = st
	s.hubSvc.Telemetry = hub.NewTelemetry(s.metrics.Sink(st), s.registry, nil)
	// Each hub's messages go to the partitions of its Event
	// Hubs-compatible endpoint (docs/telemetry-stream.md).
	s.hubSvc.Telemetry.SetPartitions(s.hubs.Partitions)
	// Other berth nodes can share only an external NATS: only there can a
	// device be connected elsewhere. On the embedded server the bus would
	// find no one and only delay every 404 DeviceNotOnline by its margin.
	if cfg.URL != "" {
		bus, err := linkbus.Start(linkbus.Config{Conn: st.Conn(), Links: s.hubSvc.Links, Registry: s.registry, Logger: s.log})
		if err != nil {
			_ = st.Close()
			return fmt.Errorf("server: cross-node pushes: %w", err)
		}
		s.bus = bus
		s.hubSvc.Links.SetForwarder(bus)
		s.registry.SetPresencePeers(bus)
	}
	return nil
}

// streamToken is the embedded NATS listener's token: random per start, so
// only readers of client.json (mode 0600) can connect. Hex, because it
// travels in the user part of a nats:// URL.
func (s *Server) streamToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	u := cfg.StoreURL
	switch {
	case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
		st, err := postgres.Open(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("server: open postgres store: %w", err)
		}
		return st, nil
	case u == "" || strings.HasPrefix(u, "sqlite:"):
		path := strings.TrimPrefix(u, "sqlite:")
		if path == "" {
			path = filepath.Join(cfg.DataDir, "berth.db")
		}
		st, err := sqlite.Open(path)
		if err != nil {
			return nil, fmt.Errorf("server: open sqlite store: %w", err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("server: unknown store URL %q (want sqlite:PATH or postgres://…)", u)
}

func (s *Server) setupTLS() error {
	s.certs = &pki.CertSource{}
	if s.cfg.TLSCert != "" || s.cfg.TLSKey != "" {
		cert, err := pki.LoadKeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		s.certs.Set(&cert)
		return nil
	}
	caDir := filepath.Join(s.cfg.DataDir, "ca")
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		return fmt.Errorf("server: ca dir: %w", err)
	}
	ca, _, err := pki.LoadOrCreateCA(caDir)
	if err != nil {
		return fmt.Errorf("server: development CA: %w", err)
	}
	s.ca, s.caFile = ca, ca.CertFile
	return s.reissueCert(s.hubs.List())
}

// reissueCert makes the server certificate name the configured hosts and
// every hub (a no-op when the certificate already does). With an
// operator's own certificate it only warns about hubs it does not cover.
func (s *Server) reissueCert(infos []hub.HubInfo) error {
	hosts := append([]string{}, s.cfg.Hosts...)
	for _, h := range infos {
		if !containsFold(hosts, h.Name) {
			hosts = append(hosts, h.Name)
		}
	}
	if s.ca == nil {
		if c := s.certs.Get(); c != nil && c.Leaf != nil {
			for _, h := range infos {
				if c.Leaf.VerifyHostname(h.Name) != nil {
					s.log.Warn("server: the TLS certificate does not name a hub; its devices will not trust berth", "hub", h.Name)
				}
			}
		}
		return nil
	}
	cert, _, err := s.ca.LoadOrCreateServerCert(s.cfg.DataDir, hosts)
	if err != nil {
		return fmt.Errorf("server: server certificate: %w", err)
	}
	s.certs.Set(&cert)
	return nil
}

// linkedHubs is how the DPS sees the hubs.
func linkedHubs(infos []hub.HubInfo) []dps.LinkedHub {
	out := make([]dps.LinkedHub, len(infos))
	for i, h := range infos {
		out[i] = dps.LinkedHub{Name: h.Name, AllocationWeight: h.AllocationWeight, ApplyAllocationPolicy: h.ApplyAllocationPolicy, Region: h.Region}
	}
	return out
}

// Start listens on the MQTT and HTTPS addresses and serves until Shutdown.
func (s *Server) Start() error {
	var err error
	s.mqttLn, err = net.Listen("tcp", s.cfg.MQTTAddr)
	if err != nil {
		return fmt.Errorf("server: mqtt listener: %w", err)
	}
	s.httpsLn, err = net.Listen("tcp", s.cfg.HTTPSAddr)
	if err != nil {
		s.mqttLn.Close()
		return fmt.Errorf("server: https listener: %w", err)
	}
	s.mqttLn, s.httpsLn = s.metrics.Listener(s.mqttLn, "mqtt"), s.metrics.Listener(s.httpsLn, "https")
	if s.cfg.AMQPAddr != AMQPOff {
		if s.amqpLn, err = net.Listen("tcp", s.cfg.AMQPAddr); err != nil {
			s.mqttLn.Close()
			s.httpsLn.Close()
			return fmt.Errorf("server: amqp listener: %w", err)
		}
		s.amqpLn = s.metrics.Listener(s.amqpLn, "amqp")
	}
	hubCfg := &amqpfront.HubConfig{Name: s.cfg.HubName, Settings: s.hubSet, Hubs: s.hubs, Services: s.hubSvc,
		EventHubs: &amqpfront.EventHubs{Reader: s.stream, Receivers: &eventhubs.Receivers{}, Port: s.AMQPPort()}}
	s.amqp = amqpfront.New(amqpfront.Config{Logger: s.log.With("listener", "amqp"), Hub: hubCfg, DPS: s.dps})
	s.mqtt = mqttfront.New(mqttfront.Config{
		Logger:    s.log.With("listener", "mqtt"),
		OnSession: s.metrics.MQTTSession,
		Hub:       &mqttfront.HubConfig{Name: s.cfg.HubName, Settings: s.hubSet, Hubs: s.hubs, Services: s.hubSvc},
	}, s.dps)
	handler := rest.NewHandler(rest.Config{
		Hosts:  s.serviceHosts(),
		Logger: s.log.With("listener", "https"),
		Hub:    &rest.HubConfig{Name: s.cfg.HubName, Settings: s.hubSet, Hubs: s.hubs, Services: s.hubSvc},
	}, s.dps, s.settings)
	s.https = &http.Server{
		Handler:           s.websockets(handler),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		// HTTP/2 stays off: the C SDK reads response headers by exact,
		// case-sensitive name, which HTTP/2 would lower-case
		// (docs/spec/iothub-protocol.md#endpoints). A non-nil empty
		// TLSNextProto disables Go's automatic h2.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	// Removals of reprovisioned devices from the hubs they left: finish
	// what a crash interrupted, retry what failed.
	bg, stop := context.WithCancel(context.Background())
	s.stopBackground = stop
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.dps.RunRemovals(bg)
	}()
	// Policies and hubs changed by other nodes sharing the store.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchStore(bg)
	}()
	// Expired C2D messages of devices that never ask for them, with their
	// Expired feedback, and expired feedback records.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.hubSvc.CloudToDevice.RunSweeps(bg, time.Minute)
	}()
	// Scheduled twin-update and method jobs, resumed where a stop left them.
	if err := s.startJobs(bg); err != nil {
		return err
	}
	// Automatic device configurations: applied as devices and twins
	// change, and every minute to every device (what another node
	// changed).
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.hubSvc.Configurations.Run(bg, time.Minute)
	}()
	// Hubs with a retention shorter than the stream's lose their older
	// telemetry (docs/telemetry-stream.md, "Partitions").
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.runRetention(bg, time.Minute)
	}()
	mqttTLS := pki.ServerTLSConfig(s.certs, nil)
	httpsTLS := pki.ServerTLSConfig(s.certs, []string{"http/1.1"})
	if s.amqpLn != nil {
		// As MQTT: client certificates requested, not required (X.509
		// devices authenticate with them).
		amqpTLS := pki.ServerTLSConfig(s.certs, nil)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.amqp.Serve(tls.NewListener(s.amqpLn, amqpTLS)); err != nil && !errors.Is(err, net.ErrClosed) {
				s.errs <- fmt.Errorf("server: amqp: %w", err)
			}
		}()
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.mqtt.Serve(tls.NewListener(s.mqttLn, mqttTLS)); err != nil && !errors.Is(err, net.ErrClosed) {
			s.errs <- fmt.Errorf("server: mqtt: %w", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := s.https.Serve(tls.NewListener(s.httpsLn, httpsTLS)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errs <- fmt.Errorf("server: https: %w", err)
		}
	}()
	// client.json carries the owner connection strings: keep it current
	// when their keys are renewed, or local commands would stop working.
	rewrite := func() {
		if err := localconf.Write(s.cfg.DataDir, s.Info()); err != nil {
			s.log.Error("server: could not rewrite client.json", "error", err.Error())
		}
	}
	s.settings.PolicySet().Watch(rewrite)
	s.hubSet.PolicySet().Watch(rewrite)
	if err := s.startAdmin(); err != nil {
		return err
	}
	return localconf.Write(s.cfg.DataDir, s.Info())
}

// WebSocketPath is where devices and services reach AMQP and MQTT over
// WebSockets on the HTTPS listener (every Azure SDK fixes it, on 443).
const WebSocketPath = "/$iothub/websocket"

// EventHubsWebSocketPath is where the Event Hubs SDKs reach AMQP over
// WebSockets (their fixed path): the same AMQP front end, for the Event
// Hubs-compatible endpoint.
const EventHubsWebSocketPath = "/$servicebus/websocket"

// Subprotocols of WebSocketPath: AmqpWs and MqttWs (any case: the C SDK
// sends "MQTT").
const (
	subprotocolAMQP = "AMQPWSB10"
	subprotocolMQTT = "mqtt"
)

// websockets serves WebSocketPath in front of the HTTPS API: the
// connection becomes a byte stream (wsconn) handed to the AMQP or MQTT
// front end by its subprotocol, with the TLS client certificate under it.
func (s *Server) websockets(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != WebSocketPath && r.URL.Path != EventHubsWebSocketPath {
			next.ServeHTTP(w, r)
			return
		}
		nc, proto, err := wsconn.Upgrade(w, r, []string{subprotocolAMQP, subprotocolMQTT})
		if err != nil {
			s.log.Debug("server: WebSocket upgrade refused", "remote", r.RemoteAddr, "error", err.Error())
			return
		}
		// The HTTP server's request deadlines stay on a hijacked
		// connection; the front ends set their own.
		_ = nc.SetDeadline(time.Time{})
		if strings.EqualFold(proto, subprotocolMQTT) {
			s.mqtt.ServeConn(nc)
			return
		}
		s.amqp.ServeConn(nc)
	})
}

// Errors reports listener failures after Start.
func (s *Server) Errors() <-chan error { return s.errs }

// Shutdown stops the listeners, waits for connections to end (or ctx), and
// closes the store.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	if err := s.shutdownAdmin(ctx); err != nil {
		errs = append(errs, err)
	}
	if s.https != nil {
		if err := s.https.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("server: https shutdown: %w", err))
		}
	}
	if s.mqtt != nil {
		if err := s.mqtt.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("server: mqtt shutdown: %w", err))
		}
	}
	if s.amqp != nil {
		if err := s.amqp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("server: amqp shutdown: %w", err))
		}
	}
	if s.stopBackground != nil {
		s.stopBackground()
	}
	s.wg.Wait()
	// The bus uses the stream's connection: it goes first.
	if s.bus != nil {
		s.hubSvc.Links.SetForwarder(nil)
		s.registry.SetPresencePeers(nil)
		if err := s.bus.Close(); err != nil {
			errs = append(errs, fmt.Errorf("server: close cross-node pushes: %w", err))
		}
	}
	if s.stream != nil {
		if err := s.stream.Close(); err != nil {
			errs = append(errs, fmt.Errorf("server: close stream: %w", err))
		}
	}
	if err := s.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("server: close store: %w", err))
	}
	// Last: the next berth on this directory may start once everything
	// above is closed.
	if err := s.lock.release(); err != nil {
		errs = append(errs, fmt.Errorf("server: release data directory lock: %w", err))
	}
	return errors.Join(errs...)
}

// Info describes this berth to local clients (written to client.json).
func (s *Server) Info() *localconf.Info {
	owner, _ := s.settings.Policy(dps.OwnerPolicy)
	info := &localconf.Info{
		IDScope:        s.settings.IDScope,
		GlobalEndpoint: s.cfg.Hosts[0],
		HubHostName:    s.cfg.HubName,
		MQTTAddress:    dialAddr(s.cfg.Hosts[0], s.mqttLn, s.cfg.MQTTAddr),
		HTTPSAddress:   dialAddr(s.cfg.Hosts[0], s.httpsLn, s.cfg.HTTPSAddr),
		CAFile:         s.caFile,
	}
	if s.cfg.AMQPAddr != AMQPOff {
		info.AMQPAddress = dialAddr(s.cfg.Hosts[0], s.amqpLn, s.cfg.AMQPAddr)
	}
	if owner != nil {
		info.ServiceConnectionString = owner.ConnectionString(s.cfg.Hosts[0])
	}
	if p, ok := s.hubSet.Policy(hub.OwnerPolicy); ok {
		info.HubConnectionString = p.ConnectionString(s.cfg.HubName)
	}
	if s.stream != nil {
		info.NATSURL = s.stream.ClientURL()
		info.StreamName = stream.DefaultStreamName
		info.StreamSubjectPrefix = stream.DefaultSubjectPrefix
	}
	return info
}

// FirstRun reports whether this start created the berth's identity.
func (s *Server) FirstRun() bool { return s.firstRun }

// runRetention trims each hub with its own retention (RetentionDays) every
// interval until ctx ends. Trimming is idempotent, so every node of a
// cluster may do it.
func (s *Server) runRetention(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, h := range s.hubs.List() {
			if h.RetentionDays <= 0 {
				continue
			}
			cut := time.Now().Add(-time.Duration(h.RetentionDays) * 24 * time.Hour)
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := s.stream.TrimHub(tctx, h.Name, cut); err != nil && ctx.Err() == nil {
				s.log.Warn("server: could not trim a hub's telemetry to its retention", "hub", h.Name, "error", err.Error())
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// AMQPPort is the port of the AMQPS listener (5671 when it is off: AmqpWs
// clients name no port).
func (s *Server) AMQPPort() int {
	if s.amqpLn != nil {
		if a, ok := s.amqpLn.Addr().(*net.TCPAddr); ok {
			return a.Port
		}
	}
	return 5671
}

// EventHubConnectionString is the Event Hubs-compatible connection string
// of the default hub's owner policy ("" without one).
func (s *Server) EventHubConnectionString() string {
	p, ok := s.hubSet.Policy(hub.OwnerPolicy)
	if !ok {
		return ""
	}
	return eventhubs.ConnectionString(s.cfg.HubName, s.AMQPPort(), p)
}

// Hubs returns the hubs this berth serves.
func (s *Server) Hubs() *hub.Directory { return s.hubs }

// Stream returns the telemetry stream.
func (s *Server) Stream() *stream.Stream { return s.stream }

// DPS returns the DPS domain service (for tests and in-process tools).
func (s *Server) DPS() *dps.Service { return s.dps }

// Hub returns the hub domain the front ends serve (for tests and
// in-process tools).
func (s *Server) Hub() *hub.Services { return s.hubSvc }

// Settings returns the DPS settings.
func (s *Server) Settings() *dps.Settings { return s.settings }

func (s *Server) serviceHosts() []string { return serviceHosts(s.cfg) }

// serviceHosts are the names the DPS service API answers to: every --host
// and the hub name.
func serviceHosts(cfg Config) []string {
	hosts := append([]string{}, cfg.Hosts...)
	return append(hosts, cfg.HubName)
}

// dialAddr is where a local client should connect: the listener's port on
// its bound address, or on the public host when bound to all interfaces.
func dialAddr(host string, ln net.Listener, configured string) string {
	addr := configured
	if ln != nil {
		addr = ln.Addr().String()
	}
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
		h = host
	}
	return net.JoinHostPort(h, port)
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}
