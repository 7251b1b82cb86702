package bench

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Device is one device of a telemetry or connect run.
type Device struct {
	ID  string
	Key string // for the hub's SAS; unused by the Mosquitto baseline
}

// TelemetryConfig is a telemetry run.
type TelemetryConfig struct {
	// Rate is the total offered load in messages per second over all
	// devices; 0 sends as fast as the acknowledgements allow.
	Rate float64
	QoS  byte
	Size int // payload bytes
	// Duration bounds the sending; Messages (total) ends it earlier.
	// At least one of them must be set.
	Duration time.Duration
	Messages int64
	// Inflight is how many unacknowledged messages a device may have; 1
	// (send, wait for the PUBACK, send the next) by default.
	Inflight int
	// Concurrency bounds the connection set-up.
	Concurrency int
	// AckTimeout bounds the wait for one PUBACK; default 30 s.
	AckTimeout time.Duration
	// Transport is TransportMQTT (""), TransportMQTTWS or TransportAMQP;
	// another than MQTT also runs the load over MQTT, in the same run, to
	// compare with.
	Transport string
	// ReadEventHubs reads the run back from the hub's Event
	// Hubs-compatible endpoint: each message carries its publish time as
	// an application property, and the summary has the end-to-end
	// latency and the read rate (RunTelemetry).
	ReadEventHubs bool
}

// TelemetryResult is what a telemetry run measured against one server.
type TelemetryResult struct {
	Server    string `json:"server"`
	Transport string `json:"transport"` // mqtt, mqtt-ws or amqp
	Address   string `json:"address"`
	Devices   int    `json:"devices"`
	Connected int    `json:"connected"`
	QoS       byte   `json:"qos"`
	Size      int    `json:"size"`
	Inflight  int    `json:"inflightPerDevice"`
	// OfferedRate is the configured rate; 0 for as fast as possible.
	OfferedRate float64 `json:"offeredRate"`
	Sent        int64   `json:"sent"`
	// Accepted counts messages the server acknowledged (QoS 1: PUBACK,
	// which berth sends only once the message is durable) or, at QoS 0,
	// that were written to the connection.
	Accepted int64   `json:"accepted"`
	Failed   int64   `json:"failed"`
	Seconds  float64 `json:"seconds"`
	// Rate is accepted messages per second, from the first publish to the
	// last acknowledgement.
	Rate       float64 `json:"messagesPerSecond"`
	PayloadMiB float64 `json:"payloadMiBPerSecond"`
	// Latency is publish → PUBACK (QoS 1) or publish → written (QoS 0).
	Latency        Latency              `json:"latency"`
	ConnectLatency Latency              `json:"connectLatency"`
	Errors         map[string]ErrorKind `json:"errors,omitempty"`
}

// Telemetry connects every device to ep (one connection each), then
// publishes to each device's telemetry topic until cfg's duration or
// message count is reached, and disconnects them all.
func Telemetry(ctx context.Context, ep Endpoint, devices []Device, cfg TelemetryConfig, po ProgressOptions) (*TelemetryResult, error) {
	if len(devices) == 0 {
		return nil, errors.New("bench: no devices")
	}
	if cfg.Duration <= 0 && cfg.Messages <= 0 {
		return nil, errors.New("bench: telemetry needs a duration or a message count")
	}
	if cfg.QoS > 1 {
		return nil, errors.New("bench: IoT Hub accepts QoS 0 and 1 only")
	}
	cfg.Inflight = max(cfg.Inflight, 1)
	cfg.Concurrency = max(cfg.Concurrency, 1)
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 30 * time.Second
	}
	if ep.Transport == TransportAMQP && cfg.QoS != 1 {
		return nil, errors.New("bench: over AMQP telemetry is sent unsettled (QoS 1) only")
	}
	transport := ep.Transport
	if transport == "" {
		transport = TransportMQTT
	}
	res := &TelemetryResult{Server: ep.Name, Transport: transport, Address: ep.Address, Devices: len(devices), QoS: cfg.QoS,
		Size: cfg.Size, Inflight: cfg.Inflight, OfferedRate: cfg.Rate}
	var errs Errors
	clients, connLat := connectAll(ctx, ep, devices, cfg.Concurrency, &errs, po, "connect "+ep.Name)
	defer disconnectAll(clients)
	res.ConnectLatency = connLat.Summary()
	for _, c := range clients {
		if c != nil {
			res.Connected++
		}
	}
	if ctx.Err() != nil || res.Connected == 0 {
		res.Errors = errs.Snapshot()
		return res, ctx.Err()
	}

	r := &telemetryRun{cfg: cfg, lat: NewHistogram(), errs: &errs, payload: make([]byte, cfg.Size),
		pacer: NewPacer(cfg.Rate, max(int(cfg.Rate/100), 1))}
	for i := range r.payload {
		r.payload[i] = 'a' + byte(i%26)
	}
	loadCtx, cancel := ctx, context.CancelFunc(func() {})
	if cfg.Duration > 0 {
		loadCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
	}
	defer cancel()
	r.prog = po.Start("telemetry "+ep.Name+" "+transport, cfg.Messages, cfg.Duration)
	r.start = time.Now()
	var wg sync.WaitGroup
	for _, c := range clients {
		if c != nil {
			wg.Go(func() { r.device(loadCtx, ctx, c) })
		}
	}
	wg.Wait()
	r.prog.Done()
	end := time.Unix(0, r.lastAck.Load())
	if end.Before(r.start) {
		end = time.Now()
	}
	elapsed := end.Sub(r.start)
	res.Sent, res.Accepted, res.Failed = r.sent.Load(), r.accepted.Load(), r.failed.Load()
	res.Seconds = seconds(elapsed)
	res.Rate = perSecond(res.Accepted, elapsed)
	res.PayloadMiB = float64(int64(res.Rate*float64(cfg.Size)/(1<<20)*100)) / 100
	res.Latency = r.lat.Summary()
	res.Errors = errs.Snapshot()
	return res, nil
}

// telemetryRun is the shared state of the devices' senders.
type telemetryRun struct {
	cfg     TelemetryConfig
	pacer   *Pacer
	payload []byte
	lat     *Histogram
	errs    *Errors
	prog    *Progress
	start   time.Time

	sent, accepted, failed atomic.Int64
	lastAck                atomic.Int64 // UnixNano of the latest acknowledgement
}

// pending is a message awaiting its acknowledgement.
type pending struct {
	ack   ackWait
	start time.Time
}

// device sends on one connection until loadCtx ends or the message budget
// is spent, keeping at most Inflight messages unacknowledged; the
// acknowledgements of the last ones are awaited (under ctx) before it
// returns. Acknowledgements come in order on one connection, so one
// goroutine awaits them in publishing order.
func (r *telemetryRun) device(loadCtx, ctx context.Context, c deviceConn) {
	// slots holds a token per unacknowledged message: taken before the
	// PUBLISH, given back by the awaiter, so that no more than Inflight
	// are ever outstanding. window never blocks: it has room for them all.
	slots := make(chan struct{}, r.cfg.Inflight)
	window := make(chan pending, r.cfg.Inflight)
	acks := make(chan struct{})
	go func() {
		defer close(acks)
		for p := range window {
			r.await(ctx, p)
			<-slots
		}
	}()
	defer func() {
		close(window)
		<-acks
	}()
	for loadCtx.Err() == nil {
		select {
		case slots <- struct{}{}:
		case <-loadCtx.Done():
			return
		}
		if err := r.pacer.Wait(loadCtx); err != nil {
			<-slots
			return
		}
		if r.cfg.Messages > 0 && r.sent.Add(1) > r.cfg.Messages {
			r.sent.Add(-1)
			<-slots
			return
		} else if r.cfg.Messages <= 0 {
			r.sent.Add(1)
		}
		start := time.Now()
		var stamp int64
		if r.cfg.ReadEventHubs {
			stamp = start.UnixNano()
		}
		window <- pending{start: start, ack: c.publish(r.payload, r.cfg.QoS, stamp)}
	}
}

// await waits for one acknowledgement and records it.
func (r *telemetryRun) await(ctx context.Context, p pending) {
	err := p.ack(ctx, r.cfg.AckTimeout)
	if err == nil {
		now := time.Now()
		r.lat.Record(now.Sub(p.start))
		r.accepted.Add(1)
		for cur := r.lastAck.Load(); now.UnixNano() > cur && !r.lastAck.CompareAndSwap(cur, now.UnixNano()); cur = r.lastAck.Load() {
		}
		r.prog.Add(true)
		return
	}
	if ctx.Err() != nil {
		return // interrupted: not the server's failure
	}
	r.failed.Add(1)
	r.errs.Add("publish", err)
	r.prog.Add(false)
}

// connectAll connects every device, c at a time; failed devices have a nil
// client.
func connectAll(ctx context.Context, ep Endpoint, devices []Device, c int, errs *Errors, po ProgressOptions, label string) ([]deviceConn, *Histogram) {
	clients := make([]deviceConn, len(devices))
	lat := NewHistogram()
	prog := po.Start(label, int64(len(devices)), 0)
	forEach(ctx, len(devices), c, func(ctx context.Context, i int) {
		start := time.Now()
		cl, err := ep.ForDevice(i).connect(ctx, devices[i].ID, devices[i].Key)
		if err != nil {
			if ctx.Err() == nil {
				errs.Add("connect", err)
			}
			prog.Add(false)
			return
		}
		lat.Record(time.Since(start))
		clients[i] = cl
		prog.Add(true)
	})
	prog.Done()
	return clients, lat
}

// disconnectAll closes every connection (nil entries are devices that
// never connected).
func disconnectAll(clients []deviceConn) {
	closers := make([]io.Closer, len(clients))
	for i, c := range clients {
		if c != nil {
			closers[i] = c
		}
	}
	closeAll(closers)
}
