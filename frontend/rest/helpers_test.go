package rest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

const (
	// scope, groupKey and the tokens in vector20 are
	// docs/spec/dps-protocol.md#test-vectors, vectors 19 and 20.
	scope    = "0ne00000A0A"
	groupKey = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
	indivKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	otherKey = "b3RoZXJrZXlvdGhlcmtleW90aGVya2V5b3RoZXJrZXk="
	dpsHost  = "dps.berth.test"
	hubName  = "hub.berth.test"
	readOnly = "enrollmentread"
)

// vector20 are the three client encodings of one device token
// (docs/spec/dps-protocol.md#test-vectors, vector 20) for group key groupKey,
// registration ID "my-device", scope scope, se 1700000000.
var vector20 = []struct{ name, token string }{
	{"python/csharp %2F", "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000"},
	{"csharp %2F skn", "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000&skn=registration"},
	{"c sdk %2f", "SharedAccessSignature sr=0ne00000A0A%2fregistrations%2fmy-device&sig=mWu0BvUzRGQw3HB%2bZOVYhlCnaI87x%2b%2f3JBIaO7cdBak%3d&se=1700000000&skn=registration"},
	{"embedded c %2f upper sig", "SharedAccessSignature sr=0ne00000A0A%2fregistrations%2fmy-device&sig=mWu0BvUzRGQw3HB%2BZOVYhlCnaI87x%2B%2F3JBIaO7cdBak%3D&se=1700000000"},
	{"node raw", "SharedAccessSignature sr=0ne00000A0A/registrations/my-device&sig=vOD8j%2FkUndWgz4uUTp%2BhkguuYut3oirY0In6rDoxF8c%3D&skn=registration&se=1700000000"},
}

// syncBuffer is a log sink safe for handler goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type fixture struct {
	st       store.Store
	svc      *dps.Service
	settings *dps.Settings
	h        http.Handler
	now      time.Time
	logs     *syncBuffer
	logger   *slog.Logger
	owner    *dps.Policy
	reader   *dps.Policy

	// The hub side: the registry DPS provisions into is the one the hub
	// routes serve, as in the server.
	reg         *hub.Registry
	hubSettings *hub.Settings
	sink        *fakeSink
	links       *hub.Links
	c2d         *hub.CloudToDevice
	hubCfg      *HubConfig
	// secrets are more strings that must never reach the logs (device
	// keys the test created).
	secrets *[]string
}

// newFixture builds the real domain on memstore. The clock sits just
// before vector 20's expiry so its literal tokens are valid.
func newFixture(t testing.TB) *fixture {
	return newFixtureStore(t, memstore.New())
}

func newFixtureStore(t testing.TB, st store.Store) *fixture {
	t.Helper()
	f := &fixture{st: st, now: time.Unix(1699999000, 0), logs: &syncBuffer{}, sink: &fakeSink{}, secrets: new([]string)}
	clock := func() time.Time { return f.now }
	f.reg = hub.NewRegistry(st, clock)
	settings, _, err := dps.LoadOrCreateSettings(context.Background(), st, scope)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := dps.New(st, f.reg, dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock,
		Settings: settings, ServiceHosts: []string{dpsHost}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := settings.PolicySet().Put(context.Background(), dps.Policy{
		KeyName: readOnly, Rights: []string{dps.RightEnrollmentRead},
	}); err != nil {
		t.Fatal(err)
	}
	f.svc, f.settings = svc, settings
	// certificateAuthority devices chain to the DPS's verified CA
	// certificates and X.509 group signing certificates, as server.go
	// wires it.
	f.reg.SetCATrust(svc)
	f.owner, _ = settings.Policy(dps.OwnerPolicy)
	f.reader, _ = settings.Policy(readOnly)
	if f.hubSettings, err = hub.LoadOrCreateSettings(context.Background(), st, hubName); err != nil {
		t.Fatal(err)
	}
	// The hub's push services, wired as server.go wires them.
	hs := hub.NewServices(st, f.reg, f.sink, clock, nil)
	f.links, f.c2d = hs.Links, hs.CloudToDevice
	f.hubCfg = &HubConfig{Name: hubName, Settings: f.hubSettings, Services: hs}
	f.logger = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.h = NewHandler(Config{Hosts: []string{dpsHost}, Logger: f.logger, Now: clock, Hub: f.hubCfg}, svc, settings)
	// Whatever a test did, no credential may have reached the logs.
	t.Cleanup(func() {
		logs := f.logs.String()
		secrets := []string{"sr=", "sig=", f.owner.PrimaryKey, f.owner.SecondaryKey, indivKey, groupKey}
		for _, p := range f.hubSettings.Policies {
			secrets = append(secrets, p.PrimaryKey, p.SecondaryKey)
		}
		for _, secret := range append(secrets, *f.secrets...) {
			if secret == "" {
				continue
			}
			if strings.Contains(logs, secret) {
				t.Errorf("logs contain %q:\n%s", secret, logs)
			}
		}
	})
	return f
}

// enroll creates an individual symmetric-key enrollment.
func (f *fixture) enroll(t testing.TB, id, deviceID, status string) {
	t.Helper()
	e := &dps.IndividualEnrollment{RegistrationID: id, DeviceID: deviceID}
	e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: indivKey}}
	e.ProvisioningStatus = status
	if _, err := f.svc.PutEnrollment(context.Background(), id, e, ""); err != nil {
		t.Fatal(err)
	}
}

// group creates a symmetric-key enrollment group with groupKey.
func (f *fixture) group(t testing.TB, id, status string) {
	t.Helper()
	g := &dps.EnrollmentGroup{EnrollmentGroupID: id}
	g.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: groupKey}}
	g.ProvisioningStatus = status
	if _, err := f.svc.PutGroup(context.Background(), id, g, ""); err != nil {
		t.Fatal(err)
	}
}

// Token styles of the SDKs
// (docs/spec/dps-protocol.md#token-format-and-client-encodings).
const (
	styleNode   = "node"   // raw sr, skn=registration
	stylePython = "python" // %2F, no skn
	styleCSharp = "csharp" // %2F, skn=registration
	styleC      = "c"      // %2f, skn=registration
)

// deviceToken signs a device token the way an SDK style does.
func deviceToken(t testing.TB, scopeID, regID, key, style string, expiry time.Time) string {
	t.Helper()
	res := scopeID + "/registrations/" + regID
	var tok string
	var err error
	switch style {
	case styleNode:
		tok, err = sas.Sign(res, key, "registration", expiry)
	case stylePython:
		tok, err = sas.SignEncoded(res, key, "", expiry)
	case styleCSharp:
		tok, err = sas.SignEncoded(res, key, "registration", expiry)
	case styleC:
		k, derr := base64.StdEncoding.DecodeString(key)
		if derr != nil {
			t.Fatal(derr)
		}
		tok = sas.SignRaw(strings.ReplaceAll(url.QueryEscape(res), "%2F", "%2f"), k, "registration", expiry)
	default:
		t.Fatalf("unknown style %q", style)
	}
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) devToken(t testing.TB, regID, key string) string {
	return deviceToken(t, scope, regID, key, styleCSharp, f.now.Add(time.Hour))
}

// serviceToken signs a service token for sr with a policy.
func serviceToken(t testing.TB, sr string, p *dps.Policy, expiry time.Time) string {
	t.Helper()
	tok, err := sas.Sign(sr, p.PrimaryKey, p.KeyName, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) ownerToken(t testing.TB) string {
	return serviceToken(t, dpsHost, f.owner, f.now.Add(time.Hour))
}

// request builds a request to the service host. hdr are name/value pairs.
func request(method, target, body string, hdr ...string) *http.Request {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	r.Host = dpsHost
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	return r
}

func (f *fixture) do(r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, r)
	return rec
}

// raw returns a response header exactly as written (no canonicalisation),
// which is what the C SDK's strcmp sees on HTTP/1.1.
func raw(rec *httptest.ResponseRecorder, name string) (string, bool) {
	v, ok := rec.Header()[name]
	if !ok || len(v) == 0 {
		return "", false
	}
	return strings.Join(v, ","), true
}

var (
	uuidRE      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	timestampRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$`)
)

// checkCommon asserts the headers every answer carries.
func checkCommon(t testing.TB, rec *httptest.ResponseRecorder) {
	t.Helper()
	if ct, _ := raw(rec, "Content-Type"); ct != contentTypeJSON {
		t.Errorf("Content-Type = %q, want %q", ct, contentTypeJSON)
	}
	if id, _ := raw(rec, "x-ms-request-id"); !uuidRE.MatchString(id) {
		t.Errorf("x-ms-request-id = %q, want a UUID", id)
	}
}

type wireError struct {
	ErrorCode    int    `json:"errorCode"`
	TrackingID   string `json:"trackingId"`
	Message      string `json:"message"`
	TimestampUTC string `json:"timestampUtc"`
}

// checkError asserts a DPS error answer with code and returns its body.
func checkError(t testing.TB, rec *httptest.ResponseRecorder, code int) wireError {
	t.Helper()
	checkCommon(t, rec)
	if rec.Code != code/1000 {
		t.Errorf("status = %d, want %d (body %s)", rec.Code, code/1000, rec.Body)
	}
	if got, _ := raw(rec, "x-ms-error-code"); got != strconv.Itoa(code) {
		t.Errorf("x-ms-error-code = %q, want %d", got, code)
	}
	var e wireError
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q: %v", rec.Body, err)
	}
	if e.ErrorCode != code {
		t.Errorf("errorCode = %d, want %d", e.ErrorCode, code)
	}
	if id, _ := raw(rec, "x-ms-request-id"); e.TrackingID != id || e.TrackingID == "" {
		t.Errorf("trackingId = %q, want the request id %q", e.TrackingID, id)
	}
	if !timestampRE.MatchString(e.TimestampUTC) {
		t.Errorf("timestampUtc = %q, want 7 fractional digits and Z", e.TimestampUTC)
	}
	if e.Message == "" {
		t.Error("empty message")
	}
	return e
}

// decode unmarshals a success body.
func decode[T any](t testing.TB, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	return v
}
