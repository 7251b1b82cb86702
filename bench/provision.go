package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-iot/berth/deviceclient"
)

// ProvisionConfig is a provisioning run.
type ProvisionConfig struct {
	Devices     int
	Concurrency int    // devices in flight at once
	Transport   string // deviceclient.TransportMQTT or TransportHTTPS
	// HubConnect makes each device connect to its assigned hub over MQTT
	// once assigned (and disconnect), as firmware does next.
	HubConnect bool
	// HonorRetryAfter makes devices wait the server's retry-after before
	// polling, as the SDKs do. Off by default: berth assigns synchronously,
	// so the wait is client-side idle time (3 s by default) that would
	// make the run measure the retry-after instead of the server; with it
	// on, the rate is bounded by Concurrency / retry-after.
	HonorRetryAfter bool
	// DeviceTimeout bounds one device's whole flow; default 60 s.
	DeviceTimeout time.Duration
	// Paho makes the MQTT devices use paho's client (deviceclient's
	// default, and the generator of rounds 1 and 2 in docs/benchmarks.md)
	// instead of the synchronous one (deviceclient.Options.SyncMQTT),
	// whose cost beside the TLS handshake is a few packets: the baseline's
	// client only handshakes, so the generator's own MQTT cost is kept
	// small by default.
	Paho bool
}

// ProvisionResult is what a provisioning run measured.
type ProvisionResult struct {
	Transport   string  `json:"transport"`
	Devices     int     `json:"devices"`
	Concurrency int     `json:"concurrency"`
	Assigned    int64   `json:"assigned"`
	Failed      int64   `json:"failed"`
	Seconds     float64 `json:"seconds"`
	// Rate is assigned devices per second of the run.
	Rate float64 `json:"registrationsPerSecond"`
	// Latency is per device: new TLS connection → assigned.
	Latency Latency `json:"latency"`
	// HubConnect is the hub connection after assignment (TLS + CONNACK).
	HubConnect *Latency             `json:"hubConnectLatency,omitempty"`
	Errors     map[string]ErrorKind `json:"errors,omitempty"`
}

// AssignedFunc is told about each assigned device (from several
// goroutines at once).
type AssignedFunc func(i int, deviceID, hub string)

// Provision runs devices 0…Devices-1 of g through the provisioning flow
// against t, Concurrency at a time, each on a new TLS connection. Device
// failures are counted, not returned; the error is for a run that could
// not start. A cancelled ctx ends the run early with what was measured.
func Provision(ctx context.Context, t *Target, g *Group, cfg ProvisionConfig, po ProgressOptions, onAssigned AssignedFunc) (*ProvisionResult, error) {
	if cfg.Devices <= 0 || cfg.Concurrency <= 0 {
		return nil, errors.New("bench: devices and concurrency must be positive")
	}
	addr := t.MQTTAddress
	switch cfg.Transport {
	case deviceclient.TransportMQTT:
	case deviceclient.TransportHTTPS:
		addr = t.HTTPSAddress
	default:
		return nil, fmt.Errorf("bench: transport %q: use mqtt or https", cfg.Transport)
	}
	if cfg.DeviceTimeout <= 0 {
		cfg.DeviceTimeout = time.Minute
	}
	base := deviceclient.Options{
		Transport:      cfg.Transport,
		GlobalEndpoint: t.GlobalEndpoint,
		Address:        addr,
		IDScope:        t.IDScope,
		RootCAs:        t.RootCAs,
		SyncMQTT:       !cfg.Paho,
	}
	if !cfg.HonorRetryAfter {
		// MaxPoll bounds every wait; one nanosecond polls at once.
		base.MaxPoll = time.Nanosecond
	}
	lat, hubLat := NewHistogram(), NewHistogram()
	var errs Errors
	var assigned, failed atomic.Int64
	hubs := &interner{m: map[string]string{}}
	prog := po.Start("provision "+cfg.Transport, int64(cfg.Devices), 0)
	start := time.Now()
	forEach(ctx, cfg.Devices, cfg.Concurrency, func(ctx context.Context, i int) {
		ok := provisionOne(ctx, t, g, cfg, base, i, lat, hubLat, &errs, hubs, onAssigned)
		switch {
		case ok:
			assigned.Add(1)
		case ctx.Err() != nil:
			return // interrupted: neither a success nor the server's failure
		default:
			failed.Add(1)
		}
		prog.Add(ok)
	})
	elapsed := time.Since(start)
	prog.Done()
	res := &ProvisionResult{
		Transport:   cfg.Transport,
		Devices:     cfg.Devices,
		Concurrency: cfg.Concurrency,
		Assigned:    assigned.Load(),
		Failed:      failed.Load(),
		Seconds:     seconds(elapsed),
		Rate:        perSecond(assigned.Load(), elapsed),
		Latency:     lat.Summary(),
		Errors:      errs.Snapshot(),
	}
	if cfg.HubConnect {
		s := hubLat.Summary()
		res.HubConnect = &s
	}
	return res, nil
}

func provisionOne(ctx context.Context, t *Target, g *Group, cfg ProvisionConfig, base deviceclient.Options, i int,
	lat, hubLat *Histogram, errs *Errors, hubs *interner, onAssigned AssignedFunc) bool {
	ctx, cancel := context.WithTimeout(ctx, cfg.DeviceTimeout)
	defer cancel()
	id, key, err := g.Device(i)
	if err != nil {
		errs.Add("provision", err)
		return false
	}
	// A cluster's devices go to node i % N, as behind a balancer.
	t = t.ForDevice(i)
	opts := base
	opts.RegistrationID, opts.SymmetricKey = id, key
	if cfg.Transport == deviceclient.TransportHTTPS {
		opts.Address = t.HTTPSAddress
	} else {
		opts.Address = t.MQTTAddress
	}
	start := time.Now()
	op, err := deviceclient.Provision(ctx, opts)
	if err != nil {
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			errs.Add("provision", err)
		}
		return false
	}
	lat.Record(time.Since(start))
	st := op.RegistrationState
	if st == nil || st.DeviceID == "" {
		errs.Add("provision", errors.New("assigned without a device ID"))
		return false
	}
	hub := hubs.intern(st.AssignedHub)
	if cfg.HubConnect {
		hstart := time.Now()
		c, err := HubEndpoint(t, hub).Dial(ctx, st.DeviceID, key)
		if err != nil {
			errs.Add("hub-connect", err)
		} else {
			hubLat.Record(time.Since(hstart))
			c.Disconnect(0)
		}
	}
	if onAssigned != nil {
		onAssigned(i, st.DeviceID, hub)
	}
	return true
}

// forEach calls fn(ctx, i) for every i in [0, n) from c goroutines and
// returns once all calls have returned. When ctx is done no new call
// starts; calls in flight must honour ctx themselves.
func forEach(ctx context.Context, n, c int, fn func(ctx context.Context, i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(c, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(ctx, i)
			}
		})
	}
	wg.Wait()
}

// interner shares one copy of each hub name among the devices.
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

func (in *interner) intern(s string) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[s]; ok {
		return v
	}
	in.m[s] = s
	return s
}

// seconds is d in seconds, to the millisecond.
func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

// perSecond is n per second of d, to one decimal.
func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return math.Round(float64(n)/d.Seconds()*10) / 10
}
