package metrics_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/tlsidle"
	"github.com/berth-iot/berth/metrics"
	"github.com/berth-iot/berth/refusal"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/throttle"
)

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// Refusals are counted from the log, by reason, even when the log level
// hides the INFO line; other records are not counted.
func TestLogHandlerCountsRefusalsAtAnyLevel(t *testing.T) {
	m := metrics.New()
	var out bytes.Buffer
	log := slog.New(m.LogHandler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn})))
	r := refusal.New(refusal.Expired, errors.New("se in the past"))
	log.With("listener", "mqtt").Info("mqtt: CONNECT refused", r.LogAttrs()...)
	log.Info("rest: authentication refused", refusal.New(refusal.WrongKey, nil).LogAttrs()...)
	log.Info("unrelated", "reason", "a plain string is no refusal")
	log.Warn("shown")
	text := scrape(t, m)
	for _, want := range []string{`berth_auth_failures_total{reason="expired"} 1`, `berth_auth_failures_total{reason="wrong key"} 1`} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s in\n%s", want, grep(text, "berth_auth"))
		}
	}
	if strings.Contains(text, "a plain string") {
		t.Error("a plain reason string was counted")
	}
	if got := out.String(); strings.Contains(got, "refused") || !strings.Contains(got, "shown") {
		t.Errorf("the log level is not honoured: %q", got)
	}
}

// Only real store failures count: not-found, exists and preconditions are
// answers.
func TestStoreCountsOnlyFailures(t *testing.T) {
	m := metrics.New()
	st := m.Store(memstore.New())
	ctx := context.Background()
	if _, err := st.Get(ctx, store.KindDevice, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if strings.Contains(scrape(t, m), "berth_store_errors_total{") {
		t.Error("a not-found counted as a store error")
	}
	closed := m.Store(failing{})
	_, _ = closed.Get(ctx, store.KindDevice, "x")
	if !strings.Contains(scrape(t, m), `berth_store_errors_total{operation="get"} 1`) {
		t.Errorf("a failure was not counted:\n%s", grep(scrape(t, m), "berth_store"))
	}
}

type failing struct{ store.Store }

func (failing) Get(context.Context, store.Kind, string) (store.Record, error) {
	return store.Record{}, errors.New("disk on fire")
}

// Hub operations are labelled by their Azure error code.
func TestHubOperationResult(t *testing.T) {
	m := metrics.New()
	m.HubOperation("method.invoke", 3*time.Millisecond, azerr.New(azerr.HubDeviceNotOnline))
	m.HubOperation("method.invoke", time.Millisecond, nil)
	text := scrape(t, m)
	for _, want := range []string{
		`berth_hub_operations_total{operation="method.invoke",result="404103"} 1`,
		`berth_hub_operations_total{operation="method.invoke",result="ok"} 1`,
		`berth_hub_operation_seconds_count{operation="method.invoke"} 2`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s in\n%s", want, grep(text, "berth_hub"))
		}
	}
}

func grep(text, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Throttled counts refusals by operation class and hub, hub names in
// lower case so that one hub is one series however a request spelled it.
func TestThrottled(t *testing.T) {
	m := metrics.New()
	m.Throttled(throttle.HubD2C, "Hub.Example")
	m.Throttled(throttle.HubD2C, "hub.example")
	m.Throttled(throttle.DPSRegister, "")
	text := scrape(t, m)
	for _, want := range []string{
		`berth_throttled_requests_total{hub="hub.example",operation="d2c"} 2`,
		`berth_throttled_requests_total{hub="",operation="dps-register"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s in\n%s", want, grep(text, "berth_throttled"))
		}
	}
}

// asyncInner is a hub.AsyncSink that answers at once.
type asyncInner struct{ async int }

func (a *asyncInner) Append(context.Context, *hub.Message) error { return nil }
func (a *asyncInner) AppendAsync(_ context.Context, _ *hub.Message, done func(error)) {
	a.async++
	done(nil)
}

// The wrapper keeps an asynchronous sink asynchronous (the MQTT front end
// pipelines a connection's telemetry only through a hub.AsyncSink) and
// counts what it stores; a plain sink stays plain.
func TestSinkKeepsAsync(t *testing.T) {
	m := metrics.New()
	inner := &asyncInner{}
	as, ok := m.Sink(inner).(hub.AsyncSink)
	if !ok {
		t.Fatal("the wrapper of an AsyncSink is not one")
	}
	var got error = errors.New("not called")
	as.AppendAsync(context.Background(), &hub.Message{Hub: "h1", Body: []byte("abc")}, func(err error) { got = err })
	if got != nil || inner.async != 1 {
		t.Fatalf("done(%v), inner called %d times", got, inner.async)
	}
	if text := scrape(t, m); !strings.Contains(text, `berth_telemetry_messages_total{hub="h1"} 1`) {
		t.Errorf("message not counted:\n%s", grep(text, "berth_telemetry"))
	}
	if _, ok := m.Sink(plainSink{}).(hub.AsyncSink); ok {
		t.Error("the wrapper of a plain sink claims to append asynchronously")
	}
}

type plainSink struct{}

func (plainSink) Append(context.Context, *hub.Message) error { return nil }

// batchInner is a hub.BatchSink, asynchronous or not, that records batches.
type batchInner struct {
	asyncInner
	batches [][]*hub.Message
	fail    error
}

func (b *batchInner) AppendBatch(_ context.Context, ms []*hub.Message) error {
	if b.fail != nil {
		return b.fail
	}
	b.batches = append(b.batches, ms)
	return nil
}

type batchOnly struct{ b *batchInner }

func (s batchOnly) Append(ctx context.Context, m *hub.Message) error { return s.b.Append(ctx, m) }
func (s batchOnly) AppendBatch(ctx context.Context, ms []*hub.Message) error {
	return s.b.AppendBatch(ctx, ms)
}

// The wrapper keeps an all-or-nothing batch sink one (an HTTPS batch is
// atomic only through hub.BatchSink), with or without AppendAsync, hands
// the batch over whole and counts each message; a failed batch counts as
// one stream error.
func TestSinkKeepsBatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		inner func(*batchInner) hub.TelemetrySink
		async bool
	}{
		{"async+batch", func(b *batchInner) hub.TelemetrySink { return b }, true},
		{"batch", func(b *batchInner) hub.TelemetrySink { return batchOnly{b} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New()
			inner := &batchInner{}
			w := m.Sink(tc.inner(inner))
			bs, ok := w.(hub.BatchSink)
			if !ok {
				t.Fatal("the wrapper of a BatchSink is not one")
			}
			if _, ok := w.(hub.AsyncSink); ok != tc.async {
				t.Fatalf("wrapper AsyncSink = %v, want %v", ok, tc.async)
			}
			ms := []*hub.Message{{Hub: "h1", Body: []byte("a")}, {Hub: "h1", Body: []byte("bc")}}
			if err := bs.AppendBatch(context.Background(), ms); err != nil {
				t.Fatal(err)
			}
			if len(inner.batches) != 1 || len(inner.batches[0]) != 2 {
				t.Fatalf("inner got batches %v, want one of 2", inner.batches)
			}
			inner.fail = errors.New("refused")
			if err := bs.AppendBatch(context.Background(), ms); err == nil {
				t.Fatal("a failed batch returned nil")
			}
			text := scrape(t, m)
			for _, want := range []string{`berth_telemetry_messages_total{hub="h1"} 2`, `berth_telemetry_bytes_total{hub="h1"} 3`} {
				if !strings.Contains(text, want) {
					t.Errorf("missing %s in\n%s", want, grep(text, "berth_telemetry"))
				}
			}
		})
	}
	if _, ok := metrics.New().Sink(plainSink{}).(hub.BatchSink); ok {
		t.Error("the wrapper of a plain sink claims to append batches")
	}
}

// The counting listener's connections stay sockets to the MQTT listener,
// which waits for an idle connection's socket to become readable through
// syscall.Conn (internal/tlsidle); a wrapper without it would make every
// idle device keep crypto/tls's buffers and a grown stack.
func TestListenerKeepsSyscallConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	counted := metrics.New().Listener(ln, "mqtt")
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := counted.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !tlsidle.CanWait(tls.Server(c, &tls.Config{})) {
		t.Fatal("a TLS connection over the counting listener cannot wait for its socket")
	}
}
