// Package bench is berth's load generator: provisioning, telemetry and
// idle connections at scale, driven the way real devices drive berth (a new
// TLS connection per device, the full DPS flow, one MQTT connection per
// device), each measured next to a baseline taken in the same run — the
// bare TLS handshake of the same listener, and Mosquitto under the same
// load — so that every figure is a ratio that carries from one machine to
// another. `berth bench` (internal/cli) is its command line.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/berth-iot/berth/deviceclient"
)

// Options are shared by every bench.
type Options struct {
	Devices     int
	Concurrency int
	// GroupKey names an existing symmetric-key enrollment group by its
	// key; empty creates (and afterwards deletes) a group bench-<random>.
	GroupKey string
	// Baseline runs the baselines (TLS handshake, Mosquitto).
	Baseline bool
	// MosquittoBin and MosquittoHost locate the baseline broker; defaults
	// DefaultMosquitto and DefaultMosquittoHost.
	MosquittoBin  string
	MosquittoHost string
	AllowRemote   bool
	// DeviceTimeout bounds one device's provisioning; default 60 s.
	DeviceTimeout time.Duration
	Progress      ProgressOptions
	// Log receives notes about the run (clean-up problems); nil discards.
	Log *slog.Logger
}

func (o *Options) defaults() error {
	if o.Devices <= 0 {
		return errors.New("bench: --devices must be positive")
	}
	if o.Concurrency <= 0 {
		return errors.New("bench: --concurrency must be positive")
	}
	if o.MosquittoBin == "" {
		o.MosquittoBin = DefaultMosquitto
	}
	if o.MosquittoHost == "" {
		o.MosquittoHost = DefaultMosquittoHost
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// cleanupTimeout bounds each clean-up step, which runs on a context of its
// own: after Ctrl-C the run's context is cancelled, and the clean-up must
// still happen.
const cleanupTimeout = 10 * time.Second

func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// setup checks the target and prepares the group.
func setup(ctx context.Context, t *Target, o *Options, s *Summary) (*Group, func(), error) {
	if err := o.defaults(); err != nil {
		return nil, nil, err
	}
	if err := t.Check(ctx, o.AllowRemote); err != nil {
		return nil, nil, err
	}
	g, err := SetupGroup(ctx, t, o.GroupKey)
	if err != nil {
		return nil, nil, err
	}
	s.Group = g.ID
	return g, func() {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if err := g.Close(cctx); err != nil {
			o.Log.Warn("bench: clean-up", "error", err)
		}
	}, nil
}

// interrupted marks a summary cut short by ctx and passes ctx's error on.
func interrupted(ctx context.Context, s *Summary, err error) (*Summary, error) {
	if ctx.Err() != nil {
		s.Interrupted = true
		s.Evaluate()
		return s, ctx.Err()
	}
	return s, err
}

// RunProvision measures provisioning, with the bare TLS handshake of the
// same listener as its baseline.
func RunProvision(ctx context.Context, t *Target, o Options, pc ProvisionConfig) (*Summary, error) {
	s := NewSummary("provision", t)
	start := time.Now()
	g, cleanup, err := setup(ctx, t, &o, s)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	pc.Devices, pc.Concurrency, pc.DeviceTimeout = o.Devices, o.Concurrency, o.DeviceTimeout
	if o.Baseline {
		addr := t.MQTTAddress
		if pc.Transport == deviceclient.TransportHTTPS {
			addr = t.HTTPSAddress
		}
		s.Handshake, err = Handshakes(ctx, addr, t.GlobalEndpoint, t.RootCAs, o.Devices, o.Concurrency, o.Progress)
		if err != nil || ctx.Err() != nil {
			return interrupted(ctx, s, err)
		}
	}
	cpu := startCPU(ctx, t)
	s.Provision, err = Provision(ctx, t, g, pc, o.Progress, nil)
	if s.Provision != nil {
		if u := cpu.stop(ctx, "provision", s.Provision.Assigned); u != nil {
			s.ServerCPU = append(s.ServerCPU, u)
		}
	}
	s.Seconds = seconds(time.Since(start))
	if err != nil || ctx.Err() != nil {
		return interrupted(ctx, s, err)
	}
	s.Evaluate()
	return s, nil
}

// provisionDevices provisions the devices of a telemetry or connect run
// and returns them with their hub, which must be one for all.
func provisionDevices(ctx context.Context, t *Target, g *Group, o Options, s *Summary) ([]Device, string, error) {
	devices := make([]Device, o.Devices)
	var mu sync.Mutex
	hub := ""
	var hubErr error
	var err error
	s.Provision, err = Provision(ctx, t, g, ProvisionConfig{Devices: o.Devices, Concurrency: o.Concurrency,
		Transport: deviceclient.TransportMQTT, DeviceTimeout: o.DeviceTimeout}, o.Progress,
		func(i int, id, h string) {
			_, key, _ := g.Device(i) // cannot fail: it just worked for this device
			devices[i] = Device{ID: id, Key: key}
			mu.Lock()
			defer mu.Unlock()
			if hub == "" {
				hub = h
			} else if h != hub && hubErr == nil {
				hubErr = fmt.Errorf("bench: devices were assigned to hubs %s and %s; a run drives one hub", hub, h)
			}
		})
	if err != nil {
		return nil, "", err
	}
	if hubErr != nil {
		return nil, "", hubErr
	}
	// Devices that failed to provision sit out the run.
	ok := devices[:0]
	for _, d := range devices {
		if d.ID != "" {
			ok = append(ok, d)
		}
	}
	if len(ok) == 0 && ctx.Err() == nil {
		return nil, "", fmt.Errorf("bench: no device could be provisioned (%d errors; see the summary)", s.Provision.Failed)
	}
	for i := range t.NodeCount() {
		if err := CheckLoopback(ctx, nil, t.ForDevice(i).HubAddress(hub), o.AllowRemote); err != nil {
			return nil, "", err
		}
	}
	return ok, hub, nil
}

// RunTelemetry provisions the devices, then loads the hub with telemetry
// over one MQTT connection per device, and Mosquitto with the same load as
// its baseline.
func RunTelemetry(ctx context.Context, t *Target, o Options, tc TelemetryConfig) (*Summary, error) {
	s := NewSummary("telemetry", t)
	start := time.Now()
	g, cleanup, err := setup(ctx, t, &o, s)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	tc.Concurrency = o.Concurrency
	if err := CheckTransport(tc.Transport); err != nil {
		return nil, err
	}
	if tc.Transport == TransportAMQP && tc.QoS != 1 {
		return nil, errors.New("bench: over AMQP telemetry is sent unsettled (QoS 1) only")
	}
	devices, hub, err := provisionDevices(ctx, t, g, o, s)
	if err != nil || ctx.Err() != nil {
		return interrupted(ctx, s, err)
	}
	ep, err := HubEndpointOver(t, hub, tc.Transport)
	if err != nil {
		return interrupted(ctx, s, err)
	}
	var reader *eventHubsReader
	if tc.ReadEventHubs {
		name := hub
		if name == "" {
			name = t.HubHostName
		}
		if reader, err = startEventHubsReader(ctx, t, name); err != nil {
			return interrupted(ctx, s, err)
		}
	}
	cpu := startCPU(ctx, t)
	s.Telemetry, err = Telemetry(ctx, ep, devices, tc, o.Progress)
	if s.Telemetry != nil {
		// The phase includes the devices' connects and disconnects: small
		// next to the messages of a run of seconds.
		if u := cpu.stop(ctx, "telemetry", s.Telemetry.Accepted); u != nil {
			s.ServerCPU = append(s.ServerCPU, u)
		}
	}
	if reader != nil {
		// The reader drains what was accepted, then stops.
		var accepted int64
		if s.Telemetry != nil {
			accepted = s.Telemetry.Accepted
		}
		s.EventHubsRead = reader.finish(ctx, accepted, 5*time.Second)
	}
	if err != nil || ctx.Err() != nil {
		return interrupted(ctx, s, err)
	}
	if tc.Transport != "" && tc.Transport != TransportMQTT {
		s.MQTTTelemetry, err = Telemetry(ctx, HubEndpoint(t, hub), devices, tc, o.Progress)
		if err != nil || ctx.Err() != nil {
			return interrupted(ctx, s, err)
		}
	}
	if o.Baseline {
		m, err := StartMosquitto(ctx, o.MosquittoBin, o.MosquittoHost)
		if err != nil {
			return interrupted(ctx, s, err)
		}
		defer stopMosquitto(m, o.Log)
		s.MosquittoTelemetry, err = Telemetry(ctx, m.Endpoint, devices, tc, o.Progress)
		if err != nil || ctx.Err() != nil {
			return interrupted(ctx, s, err)
		}
	}
	s.Seconds = seconds(time.Since(start))
	s.Evaluate()
	return s, nil
}

func stopMosquitto(m *Mosquitto, log *slog.Logger) {
	if err := m.Close(); err != nil {
		log.Warn("bench: stop mosquitto", "error", err)
	}
}

// Connection kinds of RunConnect.
const (
	KindHub = "hub" // provisioned devices connected to the hub
	KindDPS = "dps" // DPS sessions (connected and subscribed, no request)
)

// RunConnect holds N idle connections open and reads the server's memory
// per connection; with the baseline, the same against Mosquitto.
func RunConnect(ctx context.Context, t *Target, o Options, kind string, cc ConnectConfig) (*Summary, error) {
	s := NewSummary("connect", t)
	start := time.Now()
	if kind != KindHub && kind != KindDPS {
		return nil, fmt.Errorf("bench: --kind %q: use hub or dps", kind)
	}
	if err := CheckTransport(cc.Transport); err != nil {
		return nil, err
	}
	if kind == KindDPS && cc.Transport != "" && cc.Transport != TransportMQTT {
		return nil, errors.New("bench: --kind dps holds MQTT sessions only")
	}
	g, cleanup, err := setup(ctx, t, &o, s)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	cc.Concurrency = o.Concurrency
	if cc.PID == 0 {
		cc.PID = t.ServerPID
	}
	if len(cc.PIDs) == 0 && t.NodeCount() > 1 {
		cc.PIDs = t.ServerPIDs()
	}
	cc.SameProcess = cc.PID == os.Getpid()
	var dial Dialer
	address := t.MQTTAddress
	ids := make([]string, o.Devices)
	switch kind {
	case KindHub:
		devices, hub, err := provisionDevices(ctx, t, g, o, s)
		if err != nil || ctx.Err() != nil {
			return interrupted(ctx, s, err)
		}
		ep, err := HubEndpointOver(t, hub, cc.Transport)
		if err != nil {
			return interrupted(ctx, s, err)
		}
		address = ep.Address
		ids = ids[:len(devices)]
		for i, d := range devices {
			ids[i] = d.ID
		}
		dial = func(ctx context.Context, i int) (io.Closer, error) {
			return ep.ForDevice(i).connect(ctx, devices[i].ID, devices[i].Key)
		}
		if cc.Transport != "" && cc.Transport != TransportMQTT {
			// The same devices over MQTT first, in the same run: the
			// figure the transport is compared with.
			mqtt := HubEndpoint(t, hub)
			s.MQTTConnect, err = Connect(ctx, "berth", kind, mqtt.Address, len(devices), func(ctx context.Context, i int) (io.Closer, error) {
				return mqtt.ForDevice(i).connect(ctx, devices[i].ID, devices[i].Key)
			}, cc, o.Progress)
			if err != nil || ctx.Err() != nil {
				return interrupted(ctx, s, err)
			}
			s.MQTTConnect.Transport = TransportMQTT
		}
	case KindDPS:
		// DPS checks credentials per request, not at CONNECT: these
		// devices need no provisioning to hold a session.
		for i := range ids {
			ids[i] = g.Prefix + strconv.Itoa(i)
		}
		dial = func(ctx context.Context, i int) (io.Closer, error) {
			id, key, err := g.Device(i)
			if err != nil {
				return nil, err
			}
			sess, err := deviceclient.Dial(ctx, deviceclient.Options{Transport: deviceclient.TransportMQTT,
				GlobalEndpoint: t.GlobalEndpoint, Address: t.ForDevice(i).MQTTAddress, IDScope: t.IDScope,
				RegistrationID: id, SymmetricKey: key, RootCAs: t.RootCAs})
			if err != nil {
				return nil, err
			}
			return sess, nil
		}
	}
	s.Connect, err = Connect(ctx, "berth", kind, address, len(ids), dial, cc, o.Progress)
	if err != nil || ctx.Err() != nil {
		return interrupted(ctx, s, err)
	}
	s.Connect.Transport = cc.Transport
	if s.Connect.Transport == "" || kind == KindDPS {
		s.Connect.Transport = TransportMQTT
	}
	if o.Baseline {
		m, err := StartMosquitto(ctx, o.MosquittoBin, o.MosquittoHost)
		if err != nil {
			return interrupted(ctx, s, err)
		}
		defer stopMosquitto(m, o.Log)
		mc := cc
		mc.PID, mc.PIDs, mc.SameProcess = m.PID, nil, false
		s.MosquittoConnect, err = Connect(ctx, "mosquitto", "mqtt", m.Endpoint.Address, len(ids),
			func(ctx context.Context, i int) (io.Closer, error) {
				c, err := m.Endpoint.Dial(ctx, ids[i], "")
				if err != nil {
					return nil, err
				}
				return pahoCloser{c}, nil
			}, mc, o.Progress)
		if err != nil || ctx.Err() != nil {
			return interrupted(ctx, s, err)
		}
		s.MosquittoConnect.Transport = TransportMQTT
	}
	s.Seconds = seconds(time.Since(start))
	s.Evaluate()
	return s, nil
}

// pahoCloser ends a paho connection with DISCONNECT.
type pahoCloser struct{ c paho.Client }

func (p pahoCloser) Close() error {
	p.c.Disconnect(0)
	return nil
}
