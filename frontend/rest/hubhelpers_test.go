package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// fakeSink is an in-memory TelemetrySink that records what it made
// "durable" and can be told to fail.
type fakeSink struct {
	mu    sync.Mutex
	msgs  []*hub.Message
	calls int
	// fail, when set, is asked on every Append with the 1-based call
	// number; a non-nil answer fails that Append and records nothing.
	fail func(call int) error
}

func (s *fakeSink) Append(_ context.Context, m *hub.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fail != nil {
		if err := s.fail(s.calls); err != nil {
			return err
		}
	}
	// Keep a deep copy: the caller must not be able to change a message
	// after it is durable, and the test must see what was appended.
	cp := *m
	cp.Body = bytes.Clone(m.Body)
	cp.System = slices.Clone(m.System)
	cp.App = slices.Clone(m.App)
	s.msgs = append(s.msgs, &cp)
	return nil
}

// messages returns what was appended since the last reset.
func (s *fakeSink) messages() []*hub.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// reset forgets the messages and the failure mode.
func (s *fakeSink) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs, s.calls, s.fail = nil, 0, nil
}

// failWith makes every Append fail with err from the call-th on (1-based).
func (s *fakeSink) failWith(err error, call int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = func(n int) error {
		if n >= call {
			return err
		}
		return nil
	}
}

// device creates a hub device directly in the registry; its keys are
// added to the secrets that must stay out of the logs.
func (f *fixture) device(t testing.TB, id, status string) *hub.Device {
	t.Helper()
	d, err := f.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: id, Status: status})
	if err != nil {
		t.Fatal(err)
	}
	*f.secrets = append(*f.secrets, d.Keys()...)
	return d
}

// hubDeviceToken signs a device token the way Node and C# do: sr is
// {hub}/devices/{id} percent-encoded, no skn.
func hubDeviceToken(t testing.TB, deviceID, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.SignEncoded(hubName+"/devices/"+deviceID, key, "", expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// hubPolicy returns one of the hub's default policies.
func (f *fixture) hubPolicy(t testing.TB, name string) *hub.Policy {
	t.Helper()
	p, ok := f.hubSettings.Policy(name)
	if !ok {
		t.Fatalf("no hub policy %q", name)
	}
	return p
}

// hubToken signs a policy token for sr, as the Node service SDK does (sr
// unencoded, skn).
func (f *fixture) hubToken(t testing.TB, sr, policy string) string {
	t.Helper()
	p := f.hubPolicy(t, policy)
	tok, err := sas.Sign(sr, p.PrimaryKey, p.KeyName, f.now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// hubOwnerToken is an iothubowner token for the hub.
func (f *fixture) hubOwnerToken(t testing.TB) string { return f.hubToken(t, hubName, hub.OwnerPolicy) }

// devicePath is the telemetry path of a device, its ID percent-encoded as
// the SDKs do.
func devicePath(id string) string {
	return "/devices/" + url.PathEscape(id) + "/messages/events?api-version=2021-04-12"
}

var hubExceptionRE = regexp.MustCompile(`^Tracking ID:([0-9a-f-]{36})-TimeStamp:\d\d/\d\d/\d{4} \d\d:\d\d:\d\d$`)

// hubWireError is the legacy hub error body; strict decoding proves there
// is nothing else in it.
type hubWireError struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// nodeParseErrorBody does what azure-iot-common's parseErrorBody does with a
// hub error body (docs/spec/iothub-protocol.md#http-error-body): split
// Message on ";", take the code after "ErrorCode:" and the message after it.
func nodeParseErrorBody(body string) (code, message string, ok bool) {
	var e struct{ Message string }
	if json.Unmarshal([]byte(body), &e) != nil || e.Message == "" {
		return "", "", false
	}
	parts := strings.Split(e.Message, ";")
	if len(parts) < 2 {
		return "", "", false
	}
	kv := strings.Split(parts[0], ":")
	if len(kv) < 2 {
		return "", "", false
	}
	return kv[1], parts[1], true
}

// checkHubError asserts a hub error answer with code (its name in the
// header and the body, its status) and returns the human message.
func checkHubError(t testing.TB, rec *httptest.ResponseRecorder, code azerr.Code) string {
	t.Helper()
	name := code.Name()
	if code.Service() != azerr.Hub {
		t.Fatalf("code %v is not an IoT Hub code", code)
	}
	return checkHubErrorNamed(t, rec, code.Status(), name)
}

func checkHubErrorNamed(t testing.TB, rec *httptest.ResponseRecorder, status int, name string) string {
	t.Helper()
	checkCommon(t, rec)
	if rec.Code != status {
		t.Errorf("status = %d, want %d (body %s)", rec.Code, status, rec.Body)
	}
	if got, _ := raw(rec, "iothub-errorcode"); got != name {
		t.Errorf("iothub-errorcode = %q, want %q (headers %v)", got, name, rec.Header())
	}
	if _, has := raw(rec, "Iothub-Errorcode"); has {
		t.Error("a canonicalised Iothub-Errorcode header was written")
	}
	if _, has := raw(rec, "x-ms-error-code"); has {
		t.Error("a hub error carries the DPS x-ms-error-code header")
	}
	var e hubWireError
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("hub error body %q: %v", rec.Body, err)
	}
	code, msg, ok := nodeParseErrorBody(rec.Body.String())
	if !ok || code != name || msg == "" {
		t.Errorf("Node's parseErrorBody reads code %q message %q from %s", code, msg, rec.Body)
	}
	if want := "ErrorCode:" + name + ";" + msg; e.Message != want {
		t.Errorf("Message = %q, want %q (a ';' in the message would cut it for Node)", e.Message, want)
	}
	m := hubExceptionRE.FindStringSubmatch(e.ExceptionMessage)
	if m == nil {
		t.Errorf("ExceptionMessage = %q", e.ExceptionMessage)
	} else if id, _ := raw(rec, "x-ms-request-id"); m[1] != id {
		t.Errorf("tracking ID %q, want the request id %q", m[1], id)
	}
	return msg
}

// prop returns a property's value from a list.
func prop(list []hub.Property, name string) (string, bool) {
	for _, p := range list {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// stampNames are the system properties the hub adds itself.
var stampNames = []string{hub.PropConnDeviceID, hub.PropConnGenerationID, hub.PropConnAuthMethod, hub.PropEnqueuedTime, hub.PropMessageSource}

// deviceSet returns the system properties a device set (the stamps
// removed).
func deviceSet(m *hub.Message) []hub.Property {
	var out []hub.Property
	for _, p := range m.System {
		if !slices.Contains(stampNames, p.Name) {
			out = append(out, p)
		}
	}
	return out
}

// checkStamped asserts the hub's stamps on a message from device d.
func (f *fixture) checkStamped(t testing.TB, m *hub.Message, d *hub.Device, scope string) {
	t.Helper()
	if m.Hub != hubName || m.DeviceID != d.DeviceID || !m.Enqueued.Equal(f.now) || m.ModuleID != "" {
		t.Errorf("message hub %q device %q enqueued %v module %q", m.Hub, m.DeviceID, m.Enqueued, m.ModuleID)
	}
	want := map[string]string{
		hub.PropConnDeviceID:     d.DeviceID,
		hub.PropConnGenerationID: d.GenerationID,
		hub.PropConnAuthMethod:   `{"scope":"` + scope + `","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`,
		hub.PropEnqueuedTime:     f.now.UTC().Format("2006-01-02T15:04:05.000Z"),
		hub.PropMessageSource:    "Telemetry",
	}
	for name, v := range want {
		got, ok := prop(m.System, name)
		if !ok || got != v {
			t.Errorf("stamp %s = %q (%v), want %q", name, got, ok, v)
		}
	}
	if d.GenerationID == "" {
		t.Error("the device has no generation ID to stamp")
	}
}
