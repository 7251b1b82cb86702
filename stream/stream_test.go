package stream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testenv"
)

// externalURL is the NATS server with JetStream the external-mode tests use;
// BERTH_TEST_NATS_URL overrides it.
func externalURL() string {
	if u := os.Getenv("BERTH_TEST_NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// backend describes one place a Stream can live; cfg returns a Config that
// is isolated from every other test (own StoreDir, or own stream name and
// subject prefix on the shared external server).
type backend struct {
	name string
	cfg  func(t testing.TB) Config
}

var backends = []backend{
	{"embedded", embeddedConfig},
	{"external", externalConfig},
}

func embeddedConfig(t testing.TB) Config {
	return Config{StoreDir: t.TempDir(), Logger: testLogger(t)}
}

func uniqueSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// externalConfig points at the machine's NATS server with a stream and
// prefix of the test's own, deleted in cleanup. Unreachable means skip,
// except under make test (BERTH_REQUIRE_SERVICES), where a missing server
// is a broken pipeline.
func externalConfig(t testing.TB) Config {
	t.Helper()
	url := externalURL()
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		testenv.Unavailable(t, "external NATS %s unreachable for the external-mode test (set BERTH_TEST_NATS_URL to a reachable server): %v", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		nc.Close()
		testenv.Unavailable(t, "external NATS %s has no JetStream for the external-mode test: %v", url, err)
	}
	u := uniqueSuffix()
	cfg := Config{
		URL:           url,
		StreamName:    "BERTH_TEST_" + u,
		SubjectPrefix: "berthtest." + u,
		Logger:        testLogger(t),
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, cfg.StreamName); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("delete stream %s: %v", cfg.StreamName, err)
		}
		nc.Close()
	})
	return cfg
}

func openT(t testing.TB, cfg Config) *Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func subscribeT(t *testing.T, s *Stream, opts SubscribeOptions) <-chan *hub.Message {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := s.Subscribe(ctx, opts)
	if err != nil {
		t.Fatalf("Subscribe(%+v): %v", opts, err)
	}
	return ch
}

func appendT(t testing.TB, s *Stream, m *hub.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Append(ctx, m); err != nil {
		t.Fatalf("Append(%s/%s): %v", m.Hub, m.DeviceID, err)
	}
}

func recvN(t *testing.T, ch <-chan *hub.Message, n int) []*hub.Message {
	t.Helper()
	var got []*hub.Message
	deadline := time.After(15 * time.Second)
	for len(got) < n {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed after %d of %d messages", len(got), n)
			}
			got = append(got, m)
		case <-deadline:
			t.Fatalf("received %d of %d messages", len(got), n)
		}
	}
	return got
}

// expectNone fails if anything arrives on ch within d.
func expectNone(t *testing.T, ch <-chan *hub.Message, d time.Duration) {
	t.Helper()
	select {
	case m, ok := <-ch:
		if ok {
			t.Fatalf("unexpected message %s/%s app=%v", m.Hub, m.DeviceID, m.App)
		}
	case <-time.After(d):
	}
}

// enqueued is a timestamp as the stream stores it (100 ns ticks, UTC).
func enqueued() time.Time {
	return time.Now().UTC().Truncate(100 * time.Nanosecond)
}

// fullSystem returns extra plus the system properties the hub stamps, in
// the canonical order decode returns them in.
func fullSystem(m *hub.Message, extra ...hub.Property) []hub.Property {
	sys := append([]hub.Property{}, extra...)
	sys = append(sys,
		hub.Property{Name: hub.PropConnDeviceID, Value: m.DeviceID},
	)
	if m.ModuleID != "" {
		sys = append(sys, hub.Property{Name: hub.PropConnModuleID, Value: m.ModuleID})
	}
	sys = append(sys,
		hub.Property{Name: hub.PropConnAuthMethod, Value: `{"scope":"device","type":"sas","issuer":"iothub"}`},
		hub.Property{Name: hub.PropEnqueuedTime, Value: m.Enqueued.Format(EnqueuedLayout)},
		hub.Property{Name: hub.PropMessageSource, Value: "Telemetry"},
	)
	return sys
}

func diffMessage(got, want *hub.Message) string {
	var d []string
	if got.Hub != want.Hub {
		d = append(d, fmt.Sprintf("Hub %q, want %q", got.Hub, want.Hub))
	}
	if got.DeviceID != want.DeviceID {
		d = append(d, fmt.Sprintf("DeviceID %q, want %q", got.DeviceID, want.DeviceID))
	}
	if got.ModuleID != want.ModuleID {
		d = append(d, fmt.Sprintf("ModuleID %q, want %q", got.ModuleID, want.ModuleID))
	}
	if !got.Enqueued.Equal(want.Enqueued) {
		d = append(d, fmt.Sprintf("Enqueued %s, want %s", got.Enqueued, want.Enqueued))
	}
	if !bytes.Equal(got.Body, want.Body) {
		d = append(d, fmt.Sprintf("Body differs: %d bytes, want %d", len(got.Body), len(want.Body)))
	}
	cmp := func(kind string, g, w []hub.Property) {
		if len(g) != len(w) {
			d = append(d, fmt.Sprintf("%s: %d properties, want %d: %q", kind, len(g), len(w), g))
			return
		}
		for i := range g {
			if g[i] != w[i] {
				d = append(d, fmt.Sprintf("%s[%d] = %q, want %q", kind, i, g[i], w[i]))
			}
		}
	}
	cmp("System", got.System, want.System)
	cmp("App", got.App, want.App)
	return strings.Join(d, "\n")
}

// oddApp is application properties chosen to break naive encodings.
func oddApp() []hub.Property {
	return []hub.Property{
		{Name: "Temp", Value: "21.5"},
		{Name: "temp", Value: "lower-case twin"},
		{Name: "TEMP", Value: "upper-case twin"},
		{Name: "camelCaseName", Value: "x"},
		{Name: "温度", Value: "二十一度 🌡"},
		{Name: "empty", Value: ""},
		{Name: "spaces", Value: "  leading and trailing  "},
		{Name: "crlf", Value: "line1\r\nNats-Msg-Id: injected"},
		{Name: "percent", Value: "50% of %41"},
		{Name: "%41", Value: "literal percent name"},
		{Name: "a.b:c/d=e,f;g", Value: "separators"},
		{Name: "with space", Value: "tab\there"},
		{Name: "message-id", Value: "app prop named like a system prop"},
		{Name: "Nats-Msg-Id", Value: "app prop named like a NATS header"},
		{Name: "iothub-app-nested", Value: "prefix inside a name"},
		{Name: "dup", Value: "first"},
		{Name: "berth-hub", Value: "not the hub"},
		{Name: "dup", Value: "second"},
		{Name: "", Value: "empty name"},
		{Name: "ctl", Value: "\x00\x01\x7f\xff"},
	}
}

func TestRoundTrip(t *testing.T) {
	big := make([]byte, 256*1024)
	_, _ = rand.Read(big)
	many := make([]hub.Property, 255)
	for i := range many {
		many[i] = hub.Property{Name: fmt.Sprintf("Prop-%03d-Ünï", 254-i), Value: strings.Repeat("ü", i%7)}
	}

	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			s := openT(t, be.cfg(t))
			tests := []struct {
				name string
				m    *hub.Message
				// want is what Subscribe returns; nil means m itself.
				want func(m *hub.Message) *hub.Message
			}{{
				name: "system and odd app properties",
				m: func() *hub.Message {
					m := &hub.Message{Hub: "hub.example.lan", DeviceID: "dev-1", Enqueued: enqueued(), Body: []byte(`{"t":21.5}`), App: oddApp()}
					m.System = fullSystem(m,
						hub.Property{Name: hub.PropMessageID, Value: "mid-1"},
						hub.Property{Name: hub.PropCorrelationID, Value: "c%rr 1"},
						hub.Property{Name: hub.PropContentType, Value: "application/json;charset=utf-8"},
						hub.Property{Name: hub.PropContentEncoding, Value: "utf-8"},
						hub.Property{Name: hub.PropCreationTime, Value: "2024-05-06T07:08:09.123Z"},
						hub.Property{Name: hub.PropComponent, Value: "thermostat1"},
						hub.Property{Name: hub.PropSchema, Value: "dtmi:com:example:Thermostat;1"},
					)
					return m
				}(),
			}, {
				name: "255 properties and 256 KiB body",
				m: func() *hub.Message {
					m := &hub.Message{Hub: "h", DeviceID: "d", Enqueued: enqueued(), Body: big, App: many}
					m.System = fullSystem(m)
					return m
				}(),
			}, {
				name: "module with dots and percent",
				m: func() *hub.Message {
					m := &hub.Message{Hub: "hub.example.lan", DeviceID: "edge.01%", ModuleID: "mod*1", Enqueued: enqueued(), Body: []byte{}}
					m.System = fullSystem(m, hub.Property{Name: hub.PropOutputName, Value: "out>1"})
					return m
				}(),
			}, {
				name: "empty body, one app property",
				m: func() *hub.Message {
					m := &hub.Message{Hub: "h", DeviceID: "one", Enqueued: enqueued(), App: []hub.Property{{Name: "Only", Value: " x "}}}
					m.System = fullSystem(m)
					return m
				}(),
				want: func(m *hub.Message) *hub.Message {
					w := *m
					w.Body = []byte{}
					return &w
				},
			}, {
				name: "bare message gets device id and enqueued time stamped",
				m:    &hub.Message{Hub: "h", DeviceID: "bare", Body: []byte("x")},
				want: func(m *hub.Message) *hub.Message {
					w := *m
					w.System = []hub.Property{{Name: hub.PropConnDeviceID, Value: "bare"}, {Name: hub.PropEnqueuedTime}}
					return &w
				},
			}}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					ch := subscribeT(t, s, SubscribeOptions{Hub: tt.m.Hub, DeviceID: tt.m.DeviceID})
					before := time.Now()
					appendT(t, s, tt.m)
					after := time.Now()
					got := recvN(t, ch, 1)[0]
					want := tt.m
					if tt.want != nil {
						want = tt.want(tt.m)
					}
					if tt.m.Enqueued.IsZero() {
						// Stamped by Append: check the window, then compare
						// the rest against what was stamped.
						if got.Enqueued.Before(before.Add(-time.Microsecond)) || got.Enqueued.After(after) {
							t.Errorf("stamped Enqueued %s outside [%s, %s]", got.Enqueued, before, after)
						}
						want.Enqueued = got.Enqueued
						for i := range want.System {
							if want.System[i].Name == hub.PropEnqueuedTime {
								want.System[i].Value = got.Enqueued.Format(EnqueuedLayout)
							}
						}
					}
					if d := diffMessage(got, want); d != "" {
						t.Error(d)
					}
				})
			}
		})
	}
}

// TestHeaderLayout pins the wire layout other NATS clients rely on: exact
// header names (case kept: nats.Header does not canonicalise), the app
// prefix, value encoding, the order header and the subject.
func TestHeaderLayout(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	nc, err := nats.Connect("", nats.InProcessServer(s.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync(DefaultSubjectPrefix + ".>")
	if err != nil {
		t.Fatal(err)
	}
	// The publish comes from another connection: make sure the server has
	// registered the subscription first.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	when := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.FixedZone("x", 3600))
	appendT(t, s, &hub.Message{
		Hub: "hub.example.lan", DeviceID: "my.device*1", Partition: 2, Enqueued: when, Body: []byte("raw"),
		System: []hub.Property{{Name: hub.PropMessageID, Value: "Mid"}, {Name: hub.PropContentType, Value: "application/json"}},
		App:    []hub.Property{{Name: "zeta", Value: "1"}, {Name: "Alpha", Value: "50% ü"}, {Name: "a/b", Value: " "}},
	})
	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := "berth.telemetry.hub%2Eexample%2Elan.2.my%2Edevice%2A1"; msg.Subject != want {
		t.Errorf("subject %q, want %q", msg.Subject, want)
	}
	if string(msg.Data) != "raw" {
		t.Errorf("body %q", msg.Data)
	}
	want := map[string]string{
		"berth-hub":                   "hub.example.lan",
		"message-id":                  "Mid",
		"content-type":                "application/json",
		"iothub-connection-device-id": "my.device*1",
		"iothub-enqueuedtime":         "2024-05-06T06:08:09.1234567Z",
		"iothub-app-zeta":             "1",
		"iothub-app-Alpha":            "50%25 %C3%BC",
		"iothub-app-a%2Fb":            "%20",
		"berth-app-order":             "zeta,Alpha,a%2Fb",
	}
	for k, v := range want {
		if got := msg.Header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	for k := range msg.Header {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected header %s: %q", k, msg.Header[k])
		}
	}
}

func TestHeaderCaseKept(t *testing.T) {
	// The layout depends on nats.go keeping header key case, both when
	// publishing and when parsing what the server delivers.
	s := openT(t, embeddedConfig(t))
	nc, err := nats.Connect("", nats.InProcessServer(s.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("case.test")
	if err != nil {
		t.Fatal(err)
	}
	out := nats.NewMsg("case.test")
	out.Header["iothub-app-myProp"] = []string{"a"}
	out.Header.Add("iothub-app-MYPROP", "b")
	out.Header.Set("iothub-app-myprop", "c")
	if err := nc.PublishMsg(out); err != nil {
		t.Fatal(err)
	}
	in, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"iothub-app-myProp": "a", "iothub-app-MYPROP": "b", "iothub-app-myprop": "c"} {
		if got := in.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q (headers %v)", k, got, v, in.Header)
		}
	}
	if len(in.Header) != 3 {
		t.Errorf("headers %v, want 3 distinct keys", in.Header)
	}
}

func TestSubjectEncoding(t *testing.T) {
	tests := []struct {
		hub, device string
		want        string
	}{
		{"h", "plain-device_1", "p.h.plain-device_1"},
		{"hub.example.lan", "dev", "p.hub%2Eexample%2Elan.dev"},
		{"h", "a.b", "p.h.a%2Eb"},
		{"h", "a*b", "p.h.a%2Ab"},
		{"h", "a>b", "p.h.a%3Eb"},
		{"h", ">", "p.h.%3E"},
		{"h", "100%", "p.h.100%25"},
		{"h", "%2E", "p.h.%252E"},
		{"h", "sp ace\ttab", "p.h.sp%20ace%09tab"},
		{"h", "ünï", "p.h.%C3%BCn%C3%AF"},
		{"h", "$:-_!()=@,'", "p.h.$:-_!()=@,'"},
		{"127.0.0.1", "dev", "p.127%2E0%2E0%2E1.dev"},
	}
	for _, tt := range tests {
		t.Run(tt.device, func(t *testing.T) {
			got := Subject("p", tt.hub, tt.device)
			if got != tt.want {
				t.Errorf("Subject = %q, want %q", got, tt.want)
			}
			h, d, err := ParseSubject("p", got)
			if err != nil || h != tt.hub || d != tt.device {
				t.Errorf("ParseSubject(%q) = %q, %q, %v", got, h, d, err)
			}
		})
	}
	for _, bad := range []string{"q.h.d", "p.h", "p.h.d.e", "p..d", "p.h.%4", "p.h.%zz"} {
		if _, _, err := ParseSubject("p", bad); err == nil {
			t.Errorf("ParseSubject(%q) accepted", bad)
		}
	}
}

func TestValueEncoding(t *testing.T) {
	for _, v := range []string{"", " ", "  ", "a b", " a", "a ", "%", "%%41", "\r\n", "ü🌡", "\x00\xff", "plain"} {
		enc := encodeValue(v)
		if strings.ContainsAny(enc, "\r\n") || enc != strings.TrimSpace(enc) {
			t.Errorf("encodeValue(%q) = %q: not header-safe", v, enc)
		}
		for _, c := range []byte(enc) {
			if c < ' ' || c >= 0x7f {
				t.Errorf("encodeValue(%q) = %q: not ASCII", v, enc)
				break
			}
		}
		if dec, err := percentDecode(enc); err != nil || dec != v {
			t.Errorf("percentDecode(encodeValue(%q)) = %q, %v", v, dec, err)
		}
	}
	if got := encodeValue("application/json;charset=utf-8"); got != "application/json;charset=utf-8" {
		t.Errorf("ordinary value changed: %q", got)
	}
}

func TestFilterOneDevice(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			s := openT(t, be.cfg(t))
			const h = "hub.example.lan"
			// Devices whose raw IDs would collide or match wildcards if the
			// tokens were not encoded.
			target := "a.b"
			others := []string{"a", "a.b.c", "a*b", "a%2Eb", ">", "a.b "}
			chTarget := subscribeT(t, s, SubscribeOptions{Hub: h, DeviceID: target})
			chAll := subscribeT(t, s, SubscribeOptions{})
			chOtherHub := subscribeT(t, s, SubscribeOptions{Hub: "other.hub", DeviceID: target})
			for _, d := range others {
				appendT(t, s, &hub.Message{Hub: h, DeviceID: d, Body: []byte(d)})
			}
			appendT(t, s, &hub.Message{Hub: h, DeviceID: target, Body: []byte("mine")})

			got := recvN(t, chTarget, 1)[0]
			if got.DeviceID != target || string(got.Body) != "mine" {
				t.Errorf("filtered subscription got %q from %q", got.Body, got.DeviceID)
			}
			expectNone(t, chTarget, 300*time.Millisecond)
			expectNone(t, chOtherHub, 0)
			all := recvN(t, chAll, len(others)+1)
			for i, d := range append(others, target) {
				if all[i].DeviceID != d || all[i].Hub != h {
					t.Errorf("all[%d] = %s/%s, want %s/%s (stream order)", i, all[i].Hub, all[i].DeviceID, h, d)
				}
			}
		})
	}
}

// TestSurvivesRestart closes the Stream (for the embedded server: shuts the
// server down) and reopens it on the same store; everything acknowledged
// before must be there.
func TestSurvivesRestart(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			cfg := be.cfg(t)
			start := time.Now()
			s, err := Open(context.Background(), cfg)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			const n = 50
			for i := range n {
				appendT(t, s, &hub.Message{Hub: "h", DeviceID: fmt.Sprintf("d%d", i%3), Body: fmt.Appendf(nil, "msg %d", i), App: []hub.Property{{Name: "i", Value: fmt.Sprint(i)}}})
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := s.Append(context.Background(), &hub.Message{Hub: "h", DeviceID: "d", Body: []byte("late")}); err == nil {
				t.Error("Append after Close succeeded")
			}

			s2 := openT(t, cfg)
			ch := subscribeT(t, s2, SubscribeOptions{StartTime: start.Add(-time.Second)})
			got := recvN(t, ch, n)
			for i, m := range got {
				if want := fmt.Sprintf("msg %d", i); string(m.Body) != want {
					t.Errorf("message %d body %q, want %q", i, m.Body, want)
				}
			}
			expectNone(t, ch, 200*time.Millisecond)
		})
	}
}

func TestAppendContext(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			cfg := be.cfg(t)
			s := openT(t, cfg)
			m := &hub.Message{Hub: "h", DeviceID: "d", Body: []byte("x")}

			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			begin := time.Now()
			err := s.Append(ctx, m)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Append(cancelled) = %v, want context.Canceled", err)
			}
			if d := time.Since(begin); d > time.Second {
				t.Errorf("Append(cancelled) took %s", d)
			}

			// Nothing answers once the stream is gone: the deadline, not
			// JetStream's 5 s default, bounds the wait.
			js, _ := jetstream.New(s.nc)
			if err := js.DeleteStream(context.Background(), cfg.withDefaults().StreamName); err != nil {
				t.Fatal(err)
			}
			ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			begin = time.Now()
			if err := s.Append(ctx, m); err == nil {
				t.Error("Append without a stream succeeded")
			}
			if d := time.Since(begin); d > 2*time.Second {
				t.Errorf("Append without a stream took %s", d)
			}
		})
	}
}

func TestAppendRejects(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	for name, m := range map[string]*hub.Message{
		"nil":           nil,
		"no hub":        {DeviceID: "d"},
		"no device":     {Hub: "h"},
		"reserved sys":  {Hub: "h", DeviceID: "d", System: []hub.Property{{Name: "iothub-app-x", Value: "v"}}},
		"nats sys":      {Hub: "h", DeviceID: "d", System: []hub.Property{{Name: "Nats-Msg-Id", Value: "v"}}},
		"berth sys":     {Hub: "h", DeviceID: "d", System: []hub.Property{{Name: "berth-hub", Value: "v"}}},
		"empty sysname": {Hub: "h", DeviceID: "d", System: []hub.Property{{Name: "", Value: "v"}}},
	} {
		if err := s.Append(context.Background(), m); err == nil {
			t.Errorf("%s: Append accepted", name)
		}
	}
}

func TestStartTime(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			s := openT(t, be.cfg(t))
			appendT(t, s, &hub.Message{Hub: "h", DeviceID: "d", Body: []byte("old-1")})
			time.Sleep(20 * time.Millisecond)
			mid := time.Now()
			time.Sleep(20 * time.Millisecond)
			appendT(t, s, &hub.Message{Hub: "h", DeviceID: "d", Body: []byte("old-2")})

			tests := []struct {
				name  string
				start time.Time
				want  []string
			}{
				{"zero: only new", time.Time{}, []string{"new"}},
				{"from the beginning", mid.Add(-time.Hour), []string{"old-1", "old-2", "new"}},
				{"from the middle", mid, []string{"old-2", "new"}},
			}
			chans := make([]<-chan *hub.Message, len(tests))
			for i, tt := range tests {
				chans[i] = subscribeT(t, s, SubscribeOptions{DeviceID: "d", StartTime: tt.start})
			}
			appendT(t, s, &hub.Message{Hub: "h", DeviceID: "d", Body: []byte("new")})
			for i, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got := recvN(t, chans[i], len(tt.want))
					for j, m := range got {
						if string(m.Body) != tt.want[j] {
							t.Errorf("message %d = %q, want %q", j, m.Body, tt.want[j])
						}
					}
					expectNone(t, chans[i], 100*time.Millisecond)
				})
			}
		})
	}
}

func TestSubscribeEnds(t *testing.T) {
	s, err := Open(context.Background(), embeddedConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := s.Subscribe(ctx, SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	waitClosed(t, ch, "ctx cancel")

	ch, err = s.Subscribe(context.Background(), SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitClosed(t, ch, "Close")
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Subscribe(context.Background(), SubscribeOptions{}); err == nil {
		t.Error("Subscribe after Close succeeded")
	}
}

func waitClosed(t *testing.T, ch <-chan *hub.Message, why string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatalf("%s: got a message, want a closed channel", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: channel not closed", why)
	}
}

// The embedded listener lets another program read the stream with the
// token, and refuses it without.
func TestEmbeddedListener(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.ListenAddr, cfg.Token = "127.0.0.1:0", "s3cret-"+uniqueSuffix()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	url := s.ClientURL()
	if !strings.HasPrefix(url, "nats://"+cfg.Token+"@127.0.0.1:") {
		t.Fatalf("ClientURL = %q", url)
	}
	if nc, err := nats.Connect(strings.Replace(url, cfg.Token+"@", "", 1), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("connected without the token")
	}
	if _, err := Open(context.Background(), Config{URL: url, StreamName: "NOPE", ReadOnly: true, Logger: testLogger(t)}); err == nil {
		t.Fatal("a read-only open created a missing stream")
	}
	reader, err := Open(context.Background(), Config{URL: url, ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("open over the listener: %v", err)
	}
	defer reader.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := reader.Subscribe(ctx, SubscribeOptions{DeviceID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, &hub.Message{Hub: "h.example", DeviceID: "d1", Body: []byte("hi"), Enqueued: time.Now()}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		if string(m.Body) != "hi" || m.DeviceID != "d1" {
			t.Fatalf("got %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("no message over the listener")
	}
	// The in-process server has no listener by default.
	plain, err := Open(context.Background(), embeddedConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if u := plain.ClientURL(); u != "" {
		t.Errorf("ClientURL without listener = %q", u)
	}
}

func TestOpenValidates(t *testing.T) {
	for name, cfg := range map[string]Config{
		"embedded without dir": {},
		"bad prefix":           {StoreDir: t.TempDir(), SubjectPrefix: "a.*"},
		"empty token prefix":   {StoreDir: t.TempDir(), SubjectPrefix: "a..b"},
		"bad stream name":      {StoreDir: t.TempDir(), StreamName: "A.B"},
		"embedded replicas":    {StoreDir: t.TempDir(), Replicas: 3},
		"listener no token":    {StoreDir: t.TempDir(), ListenAddr: "127.0.0.1:0"},
	} {
		if s, err := Open(context.Background(), cfg); err == nil {
			_ = s.Close()
			t.Errorf("%s: Open accepted %+v", name, cfg)
		}
	}
}

// TestSurvivesKill is the unclean version of TestSurvivesRestart: a child
// process appends to an embedded stream and reports each acknowledged
// message; it is SIGKILLed mid-stream (no Close, no server shutdown), and
// every message it reported as acknowledged must be in the store afterwards.
// (A process kill leaves the page cache intact, so this proves recovery and
// ack ordering, not the fsync itself; that needs a power cut.)
func TestSurvivesKill(t *testing.T) {
	if dir := os.Getenv("BERTH_STREAM_KILL_CHILD_DIR"); dir != "" {
		killChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	dir, cmd, out := startKillChild(t, "TestSurvivesKill", "BERTH_STREAM_KILL_CHILD_DIR")
	acked := -1
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "acked "); ok {
			acked, _ = strconv.Atoi(n)
			if acked >= 300 {
				break
			}
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if acked < 300 {
		t.Fatalf("child acknowledged only %d messages before exiting", acked+1)
	}

	s := openT(t, Config{StoreDir: dir, Logger: testLogger(t)})
	ch := subscribeT(t, s, SubscribeOptions{StartTime: time.Unix(0, 0)})
	got := recvN(t, ch, acked+1)
	for i, m := range got {
		if want := fmt.Sprintf("msg %d", i); string(m.Body) != want {
			t.Fatalf("message %d = %q, want %q", i, m.Body, want)
		}
	}
	t.Logf("child killed after %d acks; all present after recovery", acked+1)
}

// startKillChild runs this test binary's test name as a child process
// whose environment variable env names a fresh store directory, and
// returns the directory, the process and its standard output.
func startKillChild(t *testing.T, name, env string) (string, *exec.Cmd, io.Reader) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$")
	cmd.Env = append(os.Environ(), env+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return dir, cmd, out
}

func killChild(dir string) {
	s, err := Open(context.Background(), Config{StoreDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		if err := s.Append(context.Background(), &hub.Message{Hub: "h", DeviceID: "d", Body: fmt.Appendf(nil, "msg %d", i)}); err != nil {
			fmt.Println("append:", err)
			os.Exit(1)
		}
		fmt.Fprintf(w, "acked %d\n", i)
		_ = w.Flush()
	}
}

func TestWhereRedacts(t *testing.T) {
	s := &Stream{cfg: Config{URL: "nats://alice:s3cret@a:4222, nats://tok3n@b:4222,nats://c:4222"}}
	got := s.where()
	if strings.Contains(got, "s3cret") || strings.Contains(got, "tok3n") || strings.Contains(got, "alice") {
		t.Errorf("where() = %q leaks credentials", got)
	}
	if !strings.Contains(got, "a:4222") || !strings.Contains(got, "c:4222") {
		t.Errorf("where() = %q lost the hosts", got)
	}
}
