package amqp

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store/memstore"
)

const (
	hubName = "testhub.azure-devices.net"
	devKey  = "aW5kaXZpZHVhbGtleWluZGl2aWR1YWxrZXlpbmRpdmk="
)

type sink struct {
	mu   sync.Mutex
	msgs []*hub.Message
}

func (s *sink) Append(_ context.Context, m *hub.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	return nil
}

func (s *sink) messages() []*hub.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*hub.Message(nil), s.msgs...)
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuf) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

type fixture struct {
	srv      *Server
	addr     string
	st       *memstore.Store
	reg      *hub.Registry
	svc      *hub.Services
	settings *hub.Settings
	sink     *sink
	logs     *syncBuf
}

func newFixture(t *testing.T) *fixture { return newFixtureWith(t) }

// newFixtureWith is newFixture with changes to the server's Config (a DPS).
func newFixtureWith(t *testing.T, opts ...func(*fixture, *Config)) *fixture {
	t.Helper()
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	settings, err := hub.LoadOrCreateSettings(context.Background(), st, hubName)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st, reg: reg, settings: settings, sink: &sink{}, logs: &syncBuf{}}
	f.svc = hub.NewServices(st, reg, f.sink, nil, nil)
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := Config{Logger: log, Hub: &HubConfig{Name: hubName, Settings: settings, Services: f.svc}}
	for _, o := range opts {
		o(f, &cfg)
	}
	srv := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert := testcerts.Valid(t, "127.0.0.1", nil, false, time.Now())
	tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert.TLS()}, ClientAuth: tls.RequestClientCert})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(tln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		<-done
		for _, p := range settings.Policies {
			if strings.Contains(f.logs.String(), p.PrimaryKey) {
				t.Error("logs contain a policy key")
			}
		}
		if strings.Contains(f.logs.String(), devKey) {
			t.Error("logs contain a device key")
		}
	})
	f.addr, f.srv = ln.Addr().String(), srv
	return f
}

func (f *fixture) device(t *testing.T, id string) {
	t.Helper()
	_, err := f.svc.Registry.Create(context.Background(), hubName, &hub.Device{DeviceID: id, Status: hub.StatusEnabled,
		Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: devKey, SecondaryKey: devKey}}})
	if err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// dial connects as the Node SDKs do: TLS, no SASL.
func (f *fixture) dial(t *testing.T, opts *goamqp.ConnOptions) *goamqp.Conn {
	t.Helper()
	if opts == nil {
		opts = &goamqp.ConnOptions{}
	}
	if opts.TLSConfig == nil {
		opts.TLSConfig = &tls.Config{InsecureSkipVerify: true}
	}
	c, err := goamqp.Dial(ctxT(t), "amqps://"+f.addr, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func session(t *testing.T, c *goamqp.Conn) *goamqp.Session {
	t.Helper()
	s, err := c.NewSession(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// putToken runs one CBS put-token and returns the status code and
// description.
func putToken(t *testing.T, s *goamqp.Session, audience, token string) (int32, string) {
	t.Helper()
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close(ctx)
	rcv, err := s.NewReceiver(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close(ctx)
	msg := &goamqp.Message{
		Properties:            &goamqp.MessageProperties{MessageID: "req-1", ReplyTo: ptr("cbs")},
		ApplicationProperties: map[string]any{"operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": audience},
		Value:                 token,
	}
	if err := snd.Send(ctx, msg, nil); err != nil {
		t.Fatal(err)
	}
	reply, err := rcv.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = rcv.AcceptMessage(ctx, reply)
	if got := reply.Properties.CorrelationID; got != "req-1" {
		t.Errorf("correlation-id %v (%T), want the request's message-id as a string", got, got)
	}
	code, ok := reply.ApplicationProperties["status-code"].(int32)
	if !ok {
		t.Fatalf("status-code %v is %T, want int32", reply.ApplicationProperties["status-code"], reply.ApplicationProperties["status-code"])
	}
	desc, _ := reply.ApplicationProperties["status-description"].(string)
	return code, desc
}

func ptr[T any](v T) *T { return &v }

func deviceToken(t *testing.T, id string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.SignEncoded(hubName+"/devices/"+id, devKey, "", expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) serviceToken(t *testing.T, policy string, expiry time.Time) string {
	t.Helper()
	p, ok := f.settings.Policy(policy)
	if !ok {
		t.Fatalf("no policy %s", policy)
	}
	tok, err := sas.SignEncoded(hubName, p.PrimaryKey, p.KeyName, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// deviceConn is a device connected and authenticated with CBS.
func (f *fixture) deviceConn(t *testing.T, id string) *goamqp.Session {
	t.Helper()
	s := session(t, f.dial(t, nil))
	if code, desc := putToken(t, s, hubName+"%2Fdevices%2F"+id, deviceToken(t, id, time.Now().Add(time.Hour))); code != 200 {
		t.Fatalf("put-token: %d %s", code, desc)
	}
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
