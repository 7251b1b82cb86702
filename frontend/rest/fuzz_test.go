package rest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
)

// newQuietFixture logs warnings and errors only: a fuzzing worker runs
// millions of requests and the debug access log would fill its memory.
func newQuietFixture(f *testing.F) *fixture {
	fx := newFixture(f)
	logger := slog.New(slog.NewTextHandler(fx.logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fx.h = NewHandler(Config{Hosts: []string{dpsHost}, Logger: logger, Now: func() time.Time { return fx.now }, Hub: fx.hubCfg}, fx.svc, fx.settings)
	return fx
}

// validStatuses are the answers the API may give at all.
// 201 is a management PUT that created (a policy, a hub, a certificate);
// 403 is a full C2D queue; 503 a method invocation cut short by the
// request's end, 504 one the device did not answer in time.
var validStatuses = map[int]bool{200: true, 201: true, 202: true, 204: true, 400: true, 401: true, 403: true, 404: true, 405: true, 409: true, 412: true, 413: true, 415: true, 503: true, 504: true}

// validMethod mirrors net/http's check: the server refuses other methods
// before any handler runs.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// hubCodesByName are the codes a hub error may name, for checking that
// the name and the status agree.
var hubCodesByName = func() map[string]azerr.Code {
	m := map[string]azerr.Code{}
	for _, c := range azerr.Codes() {
		if c.Service() == azerr.Hub {
			m[c.Name()] = c
		}
	}
	return m
}()

// checkAnswer asserts what every answer must be: a valid status, the common
// headers, and an error body consistent with the status: IoT Hub's when
// the answer names an iothub-errorcode, DPS's otherwise.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	if !validStatuses[rec.Code] {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if ct, _ := raw(rec, "Content-Type"); rec.Code == http.StatusOK && ct == contentTypeOctets {
		// A received C2D message: its body is the message's, not JSON.
		if _, ok := raw(rec, "ETag"); !ok {
			t.Fatal("a C2D message without its lock token")
		}
		return
	}
	checkCommon(t, rec)
	if rec.Code < 400 {
		if rec.Code != http.StatusNoContent && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%d with invalid JSON %q", rec.Code, rec.Body)
		}
		return
	}
	if name, isHub := raw(rec, "iothub-errorcode"); isHub {
		code, ok := hubCodesByName[name]
		if !ok || code.Status() != rec.Code {
			t.Fatalf("status %d with iothub-errorcode %q", rec.Code, name)
		}
		checkHubErrorNamed(t, rec, rec.Code, name)
		if t.Failed() {
			t.FailNow()
		}
		return
	}
	var e struct {
		ErrorCode  int    `json:"errorCode"`
		TrackingID string `json:"trackingId"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body %q: %v", rec.Body, err)
	}
	if e.ErrorCode/1000 != rec.Code || e.TrackingID == "" {
		t.Fatalf("status %d with body %s", rec.Code, rec.Body)
	}
	if got, _ := raw(rec, "x-ms-error-code"); got != strconv.Itoa(e.ErrorCode) {
		t.Fatalf("x-ms-error-code %q for %d", got, e.ErrorCode)
	}
}

// FuzzRoute: any method and request target (that net/http would hand to a
// handler), with or without credentials, gets a valid answer and never a
// panic or a 500. The credentials are the DPS owner's, or the hub owner's
// on hub paths (the owner also has DeviceConnect, so telemetry is
// accepted for the fixture's device); without them the request presents
// the TLS client certificate of a device enrolled and on the hub.
func FuzzRoute(f *testing.F) {
	// The clock of every fixture (newFixture).
	now := time.Unix(1699999000, 0)
	fzCA := testcerts.Valid(f, "fz-ca", nil, true, now)
	fzDevice := testcerts.Valid(f, "fz-x509", nil, false, now)
	seeds := []struct {
		method, target string
		auth           bool
		body           string
	}{
		{"PUT", "/0ne00000A0A/registrations/dev-1/register?api-version=2021-06-01", false, `{"registrationId":"dev-1"}`},
		{"GET", "/0ne00000A0A/registrations/dev-1/operations/5.abc.def", false, "{}"},
		{"POST", "/0ne00000A0A/registrations/dev-1", false, ""},
		{"PUT", "/enrollments/fz-1", true, `{"attestation":{"type":"symmetricKey"}}`},
		{"GET", "/enrollments/fz-1", true, ""},
		{"DELETE", "/enrollmentGroups/g", true, ""},
		{"POST", "/enrollmentgroups/g/attestationmechanism", true, ""},
		{"POST", "/enrollments/query", true, `{"query":"SELECT * FROM enrollments"}`},
		{"POST", "/registrations/g/query", true, ""},
		{"GET", "/registrations/r%2F1", true, ""},
		{"PATCH", "/enrollments/x", true, ""},
		{"GET", "/%7Benrollments%7D/query", true, ""},
		{"POST", "/devices/fz-1/messages/events?api-version=2021-04-12", true, `{"t":1}`},
		{"POST", "/devices/fz-1/messages/events", false, "x"},
		{"POST", "/devices/fz%2D1/modules/m/messages/events", true, ""},
		{"PUT", "/devices/fz-2", true, `{"deviceId":"fz-2","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`},
		{"PUT", "/devices/fz-1", true, `{"status":"disabled"}`},
		{"GET", "/devices/fz-1", true, ""},
		{"GET", "/devices?top=5", true, ""},
		{"DELETE", "/devices/fz-2", true, ""},
		{"GET", "/statistics/devices", true, ""},
		{"PATCH", "/Devices/x", true, ""},
		{"GET", "/devices/x/twin", true, ""},
		{"GET", "/twins/fz-1", true, ""},
		{"PATCH", "/twins/fz-1", true, `{"tags":{"a":1},"properties":{"desired":{"b":null}}}`},
		{"PUT", "/twins/fz-1", true, `{"tags":{}}`},
		{"POST", "/twins/fz-1/methods", true, `{"methodName":"m","payload":{"a":1},"responseTimeoutInSeconds":5}`},
		{"POST", "/twins/fz-1/modules/m/methods", true, `{}`},
		{"GET", "/twins/fz-1/modules/m", true, ""},
		{"PUT", "/devices/fz-1/modules/m", true, `{"moduleId":"m"}`},
		{"GET", "/devices/fz-1/modules", true, ""},
		{"DELETE", "/devices/fz-1/modules/m", true, ""},
		{"POST", "/devices/fz-1/messages/deviceBound", true, "c2d"},
		{"GET", "/devices/fz-1/messages/devicebound?iothub-messagelocktimeout=60", true, ""},
		{"DELETE", "/devices/fz-1/messages/devicebound/00000000-0000-0000-0000-000000000000?reject", true, ""},
		{"POST", "/devices/fz-1/messages/DeviceBound/x/abandon", true, ""},
		{"DELETE", "/devices/fz-1/commands", true, ""},
		// By certificate (no Authorization: the request presents the
		// fixture's device certificate, enrolled and on the hub).
		{"PUT", "/0ne00000A0A/registrations/fz-x509/register", false, `{"registrationId":"fz-x509"}`},
		{"POST", "/0ne00000A0A/registrations/fz-x509", false, ""},
		{"POST", "/devices/fz-x509/messages/events", false, "x"},
		{"GET", "/devices/fz-x509/messages/deviceBound", false, ""},
		// CA certificate management.
		{"GET", "/certificates", true, ""},
		{"PUT", "/certificates/fz-ca", true, certBody(f, fzCA.PEM())},
		{"PUT", "/certificates/fz-ca", true, certBody(f, base64.StdEncoding.EncodeToString(fzCA.Cert.Raw))},
		{"GET", "/Certificates/FZ-CA", true, ""},
		{"POST", "/certificates/fz-ca/generateVerificationCode", true, ""},
		{"POST", "/certificates/fz-ca/verify", true, `{"certificate":"MIIB"}`},
		{"DELETE", "/certificates/fz-ca", true, ""},
		{"PATCH", "/certificates/fz-ca", true, ""},
		{"POST", "/certificates/registrations/verify", true, "{}"},
		{"PUT", "/enrollmentGroups/fz-g", true, `{"attestation":{"type":"x509","x509":{"caReferences":{"primary":"fz-ca"}}}}`},
		{"GET", "/", false, ""},
		{"GET", "//", false, ""},
		{"OPTIONS", "*", false, ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.target, s.auth, []byte(s.body))
	}
	fx := newQuietFixture(f)
	tok := fx.ownerToken(f)
	hubTok := fx.hubOwnerToken(f)
	fx.device(f, "fz-1", "")
	fx.x509Enroll(f, "fz-x509", fzDevice)
	fx.certDevice(f, hubName, "fz-x509", "", selfSigned(sha1Of(fzDevice), ""))
	peers := &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: testcerts.Chain(fzDevice)}
	f.Fuzz(func(t *testing.T, method, target string, auth bool, body []byte) {
		if !validMethod(method) {
			t.Skip()
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			t.Skip() // net/http answers 400 itself
		}
		r := &http.Request{
			Method:        method,
			URL:           u,
			RequestURI:    target,
			Proto:         "HTTP/1.1",
			ProtoMajor:    1,
			ProtoMinor:    1,
			Header:        http.Header{},
			Host:          dpsHost,
			Body:          io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)),
		}
		if !auth {
			// As on the 443 listener, a request without credentials may
			// still come over TLS with a client certificate.
			r.TLS = peers
		}
		if auth {
			r.Header.Set("Authorization", tok)
			if segs, ok, _ := splitPath(u.EscapedPath()); ok && (strings.EqualFold(segs[0], "devices") || strings.EqualFold(segs[0], "twins") || strings.EqualFold(segs[0], "statistics")) {
				r.Header.Set("Authorization", hubTok)
			}
		}
		// A method invocation may wait up to 300 s for its device to
		// connect; the request's end bounds the wait (an answer of 503).
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r = r.WithContext(ctx)
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, r)
		checkAnswer(t, rec)
		fx.sink.reset() // bound the fuzzing worker's memory
	})
}

// FuzzBatchBody: any body sent as a batch is either accepted (204, one
// stamped message per array element, all of them appended, within the
// size limit) or refused with a 4xx that names the batch as the problem,
// with nothing appended; never a 500.
func FuzzBatchBody(f *testing.F) {
	for _, s := range []string{
		`[{"body":""}]`,
		`[{"body":"eyJ0IjoxfQ==","properties":{"iothub-app-k":"v","iothub-messageid":"m"}}]`,
		`[{"body":"text","base64Encoded":false,"properties":{"IoTHub-App-Case":"x","dt-subject":"c","iothub-messageschema":"s"}},{"body":"AA=="}]`,
		`[{"body":null,"base64Encoded":null,"properties":null}]`,
		`[{"body":"","properties":{"iothub-app-k":"1","iothub-app-k":"2"}}]`,
		`[{"body":"` + strings.Repeat("QUFB", 100) + `"}]`,
		`[]`,
		`[null]`,
		`{}`,
		`[{"body":1}]`,
		`[{"body":"!!"}]`,
		`[{"body":"","properties":{"a":null}}]`,
		`[{"body":""}] x`,
		`[{"body":"\u0000","base64Encoded":false}]`,
	} {
		f.Add([]byte(s))
	}
	fx := newQuietFixture(f)
	d := fx.device(f, "fz-batch", "")
	tok := hubDeviceToken(f, "fz-batch", d.Keys()[0], fx.now.Add(time.Hour))
	allowed := map[azerr.Code]bool{azerr.HubFormatError: true, azerr.HubArgumentInvalid: true, azerr.HubMessageTooLarge: true}
	f.Fuzz(func(t *testing.T, body []byte) {
		fx.sink.reset()
		r := httptest.NewRequest(http.MethodPost, devicePath("fz-batch"), bytes.NewReader(body))
		r.Host = hubName
		r.Header.Set("Authorization", tok)
		r.Header.Set("Content-Type", "application/vnd.microsoft.iothub.json")
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, r)
		checkAnswer(t, rec)
		msgs := fx.sink.messages()
		if rec.Code != http.StatusNoContent {
			name, _ := raw(rec, "iothub-errorcode")
			if !allowed[hubCodesByName[name]] {
				t.Fatalf("refused with %s: %s", name, rec.Body)
			}
			if len(msgs) != 0 {
				t.Fatalf("%d messages appended by a refused batch", len(msgs))
			}
			return
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(body, &elems); err != nil {
			t.Fatalf("accepted a batch that is not a JSON array: %v", err)
		}
		if len(msgs) != len(elems) || len(msgs) == 0 {
			t.Fatalf("%d messages for %d elements", len(msgs), len(elems))
		}
		total := 0
		for _, m := range msgs {
			if v, _ := prop(m.System, hub.PropConnDeviceID); v != "fz-batch" || m.DeviceID != "fz-batch" {
				t.Fatalf("message not stamped: %+v", m)
			}
			total += len(m.Body)
			for _, p := range deviceSet(m) {
				total += len(p.Value)
			}
			for _, p := range m.App {
				total += len(p.Name) + len(p.Value)
			}
		}
		if total > 256*1024 { // IoT Hub's limit
			t.Fatalf("accepted %d bytes", total)
		}
	})
}

// FuzzEnrollmentBody: any body PUT to /enrollments/{id} is either stored
// (200, a well-formed enrollment that reads back: symmetric keys filled,
// or X.509 certificates described and never returned) or refused with a 4xx
// naming the body or the enrollment as the problem; never a 500.
func FuzzEnrollmentBody(f *testing.F) {
	// A device certificate as the SDKs send it, {"certificate":"<PEM>"}.
	fzCert := certBody(f, testcerts.Valid(f, "fuzz-dev", nil, false, time.Unix(1699999000, 0)).PEM())
	for _, s := range []string{
		`{"registrationId":"fuzz-dev","attestation":{"type":"symmetricKey"}}`,
		`{"attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"` + indivKey + `"}},"deviceId":"d1","provisioningStatus":"disabled"}`,
		`{"registrationId":"FUZZ-DEV","attestation":{"type":"symmetricKey"},"initialTwin":{"tags":{"a":1},"properties":{"desired":{"b":2}}},"capabilities":{"iotEdge":true},"reprovisionPolicy":{"updateHubAssignment":false,"migrateDeviceData":false},"allocationPolicy":"static","iotHubs":["hub.berth.test"],"iotHubHostName":"hub.berth.test"}`,
		`{"registrationId":"fuzz-dev","attestation":{"type":"symmetricKey"},"etag":"\"abc\"","createdDateTimeUtc":"2020-04-10T03:11:13.0276997Z","lastUpdatedDateTimeUtc":"2020-04-10T03:11:13Z","registrationState":{"registrationId":"fuzz-dev","status":"assigned"}}`,
		`{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":"MII"}}}}}`,
		`{"attestation":{"type":"tpm","tpm":{"endorsementKey":"AToAAQ"}}}`,
		`{"attestation":{"type":"symmetricKey"},"optionalDeviceInformation":{"version":1,"k":"v"},"customAllocationDefinition":{"webhookUrl":"https://x","apiVersion":"2019-03-31"}}`,
		`{"attestation":null}`,
		`{}`,
		`[]`,
		`null`,
		`{"attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"short"}}}`,
		`{"createdDateTimeUtc":"not a time","attestation":{"type":"symmetricKey"}}`,
		"{\"registrationId\":\"fuzz-dev\\u0000\",\"attestation\":{\"type\":\"symmetricKey\"}}",
		`{"attestation":{"type":"symmetricKey"}}}`,
		`{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":` + fzCert + `}}}}`,
		`{"attestation":{"type":"x509","x509":{"clientCertificates":{"primary":` + fzCert + `,"secondary":{"certificate":"MIIB"}}}}}`,
		`{"attestation":{"type":"x509","x509":{"signingCertificates":{"primary":` + fzCert + `}}}}`,
	} {
		f.Add([]byte(s))
	}
	fx := newQuietFixture(f)
	tok := fx.ownerToken(f)
	allowed := map[azerr.Code]bool{azerr.DPSInvalidBody: true, azerr.DPSInvalidEnrollment: true, azerr.DPSInvalidRegistration: true, azerr.DPSTooLarge: true}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPut, "/enrollments/fuzz-dev", bytes.NewReader(body))
		r.Host = dpsHost
		r.Header.Set("Authorization", tok)
		r.Header.Set("Content-Type", "application/json; charset=utf-8")
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, r)
		checkAnswer(t, rec)
		switch rec.Code {
		case http.StatusOK:
			var e dps.IndividualEnrollment
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("stored enrollment does not decode: %v: %s", err, rec.Body)
			}
			a := e.Attestation
			if !strings.EqualFold(e.RegistrationID, "fuzz-dev") || a == nil || e.ETag == "" {
				t.Fatalf("stored enrollment %s", rec.Body)
			}
			switch {
			case a.SymmetricKey != nil:
				if a.SymmetricKey.PrimaryKey == "" || a.SymmetricKey.SecondaryKey == "" {
					t.Fatalf("stored enrollment without keys %s", rec.Body)
				}
			case a.X509 != nil:
				// Described, never returned.
				cs := a.X509.ClientCertificates
				if cs == nil || cs.Primary == nil || cs.Primary.Info == nil || strings.Contains(rec.Body.String(), `"certificate"`) {
					t.Fatalf("stored X.509 enrollment %s", rec.Body)
				}
			default:
				t.Fatalf("stored enrollment without an attestation it can use %s", rec.Body)
			}
			get := httptest.NewRequest(http.MethodGet, "/enrollments/fuzz-dev", nil)
			get.Host = dpsHost
			get.Header.Set("Authorization", tok)
			rec2 := httptest.NewRecorder()
			fx.h.ServeHTTP(rec2, get)
			if rec2.Code != http.StatusOK {
				t.Fatalf("stored enrollment does not read back: %d %s", rec2.Code, rec2.Body)
			}
			checkAnswer(t, rec2)
		default:
			var e struct {
				ErrorCode int `json:"errorCode"`
			}
			_ = json.Unmarshal(rec.Body.Bytes(), &e) // checkAnswer proved it decodes
			if c, _ := azerr.Lookup(azerr.DPS, e.ErrorCode); !allowed[c] {
				t.Fatalf("refused with %d: %s", e.ErrorCode, rec.Body)
			}
		}
	})
}
