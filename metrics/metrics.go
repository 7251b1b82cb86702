// Package metrics is berth's Prometheus instrumentation. A Metrics holds
// its own registry (no global state) and hands out small wrappers and
// observers that the server puts between the layers: a telemetry sink, a
// store, listeners and a log handler. The domain and the front ends stay
// unaware of Prometheus; the hub domain reports through hub.Observer.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/refusal"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/throttle"
)

// Metrics is one berth's set of collectors.
type Metrics struct {
	reg *prometheus.Registry

	connTotal     *prometheus.CounterVec
	connOpen      *prometheus.GaugeVec
	registrations *prometheus.CounterVec
	telemetryMsgs *prometheus.CounterVec
	telemetryByte *prometheus.CounterVec
	appendLatency prometheus.Histogram
	c2d           *prometheus.CounterVec
	ops           *prometheus.CounterVec
	opLatency     *prometheus.HistogramVec
	authFailures  *prometheus.CounterVec
	storeErrors   *prometheus.CounterVec
	streamErrors  prometheus.Counter
	throttled     *prometheus.CounterVec
}

// New registers berth's collectors and the Go runtime and process
// collectors on a fresh registry.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.connTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_connections_total",
		Help: "Connections accepted, by protocol (mqtt, https, admin) and kind (tcp: every accepted connection; dps, hub: every accepted MQTT CONNECT of that kind)."}, []string{"protocol", "kind"})
	m.connOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_connections_open",
		Help: "Connections open now, by protocol."}, []string{"protocol"})
	m.registrations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_dps_registrations_total",
		Help: "DPS registration requests by result: assigned, failed (the device was refused or could not be assigned), error (berth could not answer)."}, []string{"result"})
	m.telemetryMsgs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_telemetry_messages_total",
		Help: "Device-to-cloud messages made durable on the stream, by hub."}, []string{"hub"})
	m.telemetryByte = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_telemetry_bytes_total",
		Help: "Body bytes of the device-to-cloud messages made durable, by hub."}, []string{"hub"})
	m.appendLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_telemetry_append_seconds",
		Help:    "Time to make one message durable on the stream (the wait before a PUBACK or 204).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)})
	m.c2d = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_c2d_messages_total",
		Help: "Cloud-to-device queue outcomes: sent, completed, rejected, abandoned, expired, deadlettered, purged."}, []string{"outcome"})
	m.ops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_hub_operations_total",
		Help: "Twin and direct-method operations by operation and result (ok or the error code)."}, []string{"operation", "result"})
	m.opLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "berth_hub_operation_seconds",
		Help:    "Latency of twin and direct-method operations (a method call includes the device's answer).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}, []string{"operation"})
	m.authFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_auth_failures_total",
		Help: "Refused device and service credentials by reason (docs/operations.md lists them)."}, []string{"reason"})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_store_errors_total",
		Help: "Store calls that failed for another reason than not-found, exists or a precondition, by operation."}, []string{"operation"})
	m.streamErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_stream_errors_total",
		Help: "Telemetry appends the stream refused or did not confirm."})
	m.throttled = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_throttled_requests_total",
		Help: "Requests refused by berth serve --throttle (429), by operation class and hub (\"\" for the DPS)."}, []string{"operation", "hub"})
	for _, c := range []prometheus.Collector{m.connTotal, m.connOpen, m.registrations, m.telemetryMsgs, m.telemetryByte,
		m.appendLatency, m.c2d, m.ops, m.opLatency, m.authFailures, m.storeErrors, m.streamErrors, m.throttled,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is for tests and for collectors of other packages.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// AddGauge registers a gauge read at scrape time (queue depths, build
// information), with constant labels given as name, value pairs.
func (m *Metrics) AddGauge(name, help string, read func() float64, labels ...string) {
	cl := prometheus.Labels{}
	for i := 0; i+1 < len(labels); i += 2 {
		cl[labels[i]] = labels[i+1]
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: cl}, read))
}

// Registration counts one DPS registration answer by result.
func (m *Metrics) Registration(result string) { m.registrations.WithLabelValues(result).Inc() }

// Throttled counts one request a throttle refused (throttle.Config.Observe).
func (m *Metrics) Throttled(op throttle.Op, hub string) {
	m.throttled.WithLabelValues(op.String(), strings.ToLower(hub)).Inc()
}

// MQTTSession counts an accepted MQTT CONNECT by its kind (dps or hub).
func (m *Metrics) MQTTSession(kind string) { m.connTotal.WithLabelValues("mqtt", kind).Inc() }

// HubOperation implements hub.Observer.
func (m *Metrics) HubOperation(op string, d time.Duration, err error) {
	m.ops.WithLabelValues(op, result(err)).Inc()
	m.opLatency.WithLabelValues(op).Observe(d.Seconds())
}

// CloudToDevice implements hub.Observer.
func (m *Metrics) CloudToDevice(outcome string, n int) {
	m.c2d.WithLabelValues(outcome).Add(float64(n))
}

var _ hub.Observer = (*Metrics)(nil)

// result is an error's label: "ok", or the Azure errorCode it carries.
func result(err error) string {
	if err == nil {
		return "ok"
	}
	var e *azerr.Error
	if errors.As(err, &e) {
		return strconv.Itoa(e.Code.Number())
	}
	return "error"
}

// Sink wraps a telemetry sink: it counts messages and bytes made durable,
// times each append and counts the stream's errors.
// What the inner sink can do beyond Append stays visible through the
// wrapper, or the hub would fall back to a weaker path without a sign: an
// asynchronous append (hub.AsyncSink, the stream's group commit with
// several messages of a connection in flight) and an all-or-nothing batch
// (hub.BatchSink, an HTTPS batch as one JetStream atomic batch).
func (m *Metrics) Sink(inner hub.TelemetrySink) hub.TelemetrySink {
	s := &sink{m: m, inner: inner}
	as, async := inner.(hub.AsyncSink)
	bs, batch := inner.(hub.BatchSink)
	switch {
	case async && batch:
		return &asyncBatchSink{asyncSink: &asyncSink{sink: s, async: as}, batch: bs}
	case async:
		return &asyncSink{sink: s, async: as}
	case batch:
		return &batchSink{sink: s, batch: bs}
	}
	return s
}

type asyncSink struct {
	*sink
	async hub.AsyncSink
}

func (s *asyncSink) AppendAsync(ctx context.Context, msg *hub.Message, done func(error)) {
	start := time.Now()
	s.async.AppendAsync(ctx, msg, func(err error) {
		s.observe(ctx, msg, start, err)
		done(err)
	})
}

type batchSink struct {
	*sink
	batch hub.BatchSink
}

func (s *batchSink) AppendBatch(ctx context.Context, msgs []*hub.Message) error {
	return s.sink.appendBatch(ctx, s.batch, msgs)
}

type asyncBatchSink struct {
	*asyncSink
	batch hub.BatchSink
}

func (s *asyncBatchSink) AppendBatch(ctx context.Context, msgs []*hub.Message) error {
	return s.sink.appendBatch(ctx, s.batch, msgs)
}

// appendBatch counts a batch as its messages: each one durable, with the
// batch's latency; a failed batch is one stream error.
func (s *sink) appendBatch(ctx context.Context, inner hub.BatchSink, msgs []*hub.Message) error {
	start := time.Now()
	err := inner.AppendBatch(ctx, msgs)
	if err != nil {
		if ctx.Err() == nil {
			s.m.streamErrors.Inc()
		}
		return err
	}
	for _, msg := range msgs {
		s.observe(ctx, msg, start, nil)
	}
	return nil
}

type sink struct {
	m     *Metrics
	inner hub.TelemetrySink
}

func (s *sink) Append(ctx context.Context, msg *hub.Message) error {
	start := time.Now()
	err := s.inner.Append(ctx, msg)
	s.observe(ctx, msg, start, err)
	return err
}

func (s *sink) observe(ctx context.Context, msg *hub.Message, start time.Time, err error) {
	if err != nil {
		if ctx.Err() == nil {
			s.m.streamErrors.Inc()
		}
		return
	}
	s.m.appendLatency.Observe(time.Since(start).Seconds())
	s.m.telemetryMsgs.WithLabelValues(msg.Hub).Inc()
	s.m.telemetryByte.WithLabelValues(msg.Hub).Add(float64(len(msg.Body)))
}

// Listener counts the connections ln accepts and those still open.
func (m *Metrics) Listener(ln net.Listener, protocol string) net.Listener {
	return &listener{Listener: ln, total: m.connTotal.WithLabelValues(protocol, "tcp"), open: m.connOpen.WithLabelValues(protocol)}
}

type listener struct {
	net.Listener
	total prometheus.Counter
	open  prometheus.Gauge
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.total.Inc()
	l.open.Inc()
	return &countedConn{Conn: c, open: l.open}, nil
}

type countedConn struct {
	net.Conn
	open prometheus.Gauge
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(c.open.Dec)
	return c.Conn.Close()
}

// errNotSyscallConn is SyscallConn's answer when the counted connection is
// not a socket.
var errNotSyscallConn = errors.New("metrics: the counted connection has no file descriptor")

// SyscallConn passes the socket on: the MQTT listener waits for an idle
// connection's socket to become readable through it (internal/tlsidle).
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errNotSyscallConn
}

// Store wraps a store and counts its failures. Not-found, exists and
// precondition failures are answers, not failures, and are not counted.
// A store that filters (store.Filterer) stays one, so that the device
// query still pushes its conditions down.
func (m *Metrics) Store(inner store.Store) store.Store {
	c := &countingStore{Store: inner, m: m}
	if f, ok := inner.(store.Filterer); ok {
		return &countingFilterStore{countingStore: c, f: f}
	}
	return c
}

type countingFilterStore struct {
	*countingStore
	f store.Filterer
}

func (s *countingFilterStore) ListWhere(ctx context.Context, kind store.Kind, opts store.ListOptions, preds []store.Pred) ([]store.Record, error) {
	r, err := s.f.ListWhere(ctx, kind, opts, preds)
	s.count("list", err)
	return r, err
}

type countingStore struct {
	store.Store
	m *Metrics
}

func (s *countingStore) count(op string, err error) {
	if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrExists) ||
		errors.Is(err, store.ErrPreconditionFailed) || errors.Is(err, context.Canceled) {
		return
	}
	s.m.storeErrors.WithLabelValues(op).Inc()
}

func (s *countingStore) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	r, err := s.Store.Get(ctx, kind, key)
	s.count("get", err)
	return r, err
}

func (s *countingStore) Put(ctx context.Context, rec store.Record, cond store.Cond) (store.Record, error) {
	r, err := s.Store.Put(ctx, rec, cond)
	s.count("put", err)
	return r, err
}

func (s *countingStore) Delete(ctx context.Context, kind store.Kind, key, ifMatch string) error {
	err := s.Store.Delete(ctx, kind, key, ifMatch)
	s.count("delete", err)
	return err
}

func (s *countingStore) List(ctx context.Context, kind store.Kind, opts store.ListOptions) ([]store.Record, error) {
	r, err := s.Store.List(ctx, kind, opts)
	s.count("list", err)
	return r, err
}

func (s *countingStore) Count(ctx context.Context, kind store.Kind, index string) (int, error) {
	n, err := s.Store.Count(ctx, kind, index)
	s.count("count", err)
	return n, err
}

func (s *countingStore) Apply(ctx context.Context, recs []store.Record) ([]store.Record, error) {
	r, err := s.Store.Apply(ctx, recs)
	s.count("apply", err)
	return r, err
}

// LogHandler wraps a log handler and counts every refused credential the
// front ends log: each refusal is logged exactly once with its
// refusal.Reason as an attribute (package refusal, LogAttrs), so the log
// is the one place that sees them all. Records pass on to inner only when
// it wants their level, so a quieter --log-level loses no count.
func (m *Metrics) LogHandler(inner slog.Handler) slog.Handler {
	return &logHandler{inner: inner, m: m}
}

type logHandler struct {
	inner slog.Handler
	m     *Metrics
}

func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.inner.Enabled(ctx, l)
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if reason, ok := a.Value.Any().(refusal.Reason); ok {
			h.m.authFailures.WithLabelValues(string(reason)).Inc()
			return false
		}
		return true
	})
	if !h.inner.Enabled(ctx, r.Level) {
		return nil
	}
	return h.inner.Handle(ctx, r)
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{inner: h.inner.WithAttrs(as), m: h.m}
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{inner: h.inner.WithGroup(name), m: h.m}
}
