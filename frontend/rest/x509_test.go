package rest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
)

// dpsGlobal is the host DPS devices send in Host (their global endpoint).
const dpsGlobal = "global.azure-devices-provisioning.net"

// How a test expects a device to have authenticated, as the hub stamps it
// on the device's messages (iothub-connection-auth-method).
const (
	byCertificate = "x509"
	bySAS         = "sas"
)

// checkAuthMethod asserts the stamped iothub-connection-auth-method of m: a
// device-scoped method of IoT Hub whose type is SAS, or an X.509 type. The
// X.509 type's exact spelling is the domain's (hub. AuthenticateDeviceCert;
// docs/spec/iothub-protocol.md#properties-the-hub-stamps gives "x509",
// earlier versions of berth "x509Certificate" and "x509CA"), so any "x509…"
// passes here: this package's job is that the certificate path was taken and
// its identity stamped, not what the hub calls it.
func checkAuthMethod(t testing.TB, m *hub.Message, want string) {
	t.Helper()
	got, _ := prop(m.System, hub.PropConnAuthMethod)
	var am struct {
		Scope, Type, Issuer string
	}
	if err := json.Unmarshal([]byte(got), &am); err != nil {
		t.Fatalf("auth method %q: %v", got, err)
	}
	ok := am.Scope == "device" && am.Issuer == "iothub"
	if want == byCertificate {
		ok = ok && strings.HasPrefix(am.Type, "x509")
	} else {
		ok = ok && am.Type == want
	}
	if !ok {
		t.Errorf("auth method %s, want a device's %s", got, want)
	}
}

// onlyCert is an X.509 attestation's certificates: cert as the primary.
func onlyCert(cert *testcerts.Cert) *dps.X509Certificates {
	return &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: cert.PEM()}}
}

// x509Enroll creates an individual X.509 enrollment for regID whose device
// certificate is cert.
func (f *fixture) x509Enroll(t testing.TB, regID string, cert *testcerts.Cert) {
	t.Helper()
	e := &dps.IndividualEnrollment{RegistrationID: regID}
	e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationX509, X509: &dps.X509Attestation{ClientCertificates: onlyCert(cert)}}
	if _, err := f.svc.PutEnrollment(context.Background(), regID, e, ""); err != nil {
		t.Fatal(err)
	}
}

// x509Group creates an X.509 enrollment group whose signing certificate
// is ca.
func (f *fixture) x509Group(t testing.TB, id string, ca *testcerts.Cert) {
	t.Helper()
	g := &dps.EnrollmentGroup{EnrollmentGroupID: id}
	g.Attestation = &dps.AttestationMechanism{Type: dps.AttestationX509, X509: &dps.X509Attestation{SigningCertificates: onlyCert(ca)}}
	if _, err := f.svc.PutGroup(context.Background(), id, g, ""); err != nil {
		t.Fatal(err)
	}
}

// certDevice creates a hub device that authenticates by certificate.
func (f *fixture) certDevice(t testing.TB, hubName, id, status string, auth *hub.Authentication) {
	t.Helper()
	if _, err := f.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: id, Status: status, Authentication: auth}); err != nil {
		t.Fatal(err)
	}
}

// selfSigned is the authentication of a selfSigned device with these
// thumbprints ("" leaves the secondary out).
func selfSigned(primary, secondary string) *hub.Authentication {
	tp := &hub.X509Thumbprint{PrimaryThumbprint: &primary}
	if secondary != "" {
		tp.SecondaryThumbprint = &secondary
	}
	return &hub.Authentication{Type: hub.AuthSelfSigned, X509Thumbprint: tp}
}

// sha1Of is a certificate's SHA-1 thumbprint as Azure shows it.
func sha1Of(c *testcerts.Cert) string {
	s1, _ := dps.Thumbprints(c.Cert)
	return s1
}

// chainOf is a certificate chain, leaf first.
func chainOf(cs ...*testcerts.Cert) []*testcerts.Cert { return cs }

// certWire sends one request over srv's TLS, as host, from a client that
// presents chain (leaf first, then what it sends after it; nil presents no
// certificate), the way the SDKs configure their X.509 TLS client.
func certWire(t testing.TB, srv *httptest.Server, host string, chain []*testcerts.Cert, method, target string, body []byte, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	var certs []tls.Certificate
	if len(chain) > 0 {
		certs = append(certs, chain[0].TLS(chain[1:]...))
	}
	rec, err := wireAs(srv, clientTLS(srv, certs...), host, method, target, body, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// newX509Fixture is a fixture served over TLS, and a root CA with an
// intermediate CA under it, valid at the fixture's time.
func newX509Fixture(t *testing.T) (f *fixture, srv *httptest.Server, root, inter *testcerts.Cert) {
	t.Helper()
	f = newFixture(t)
	root = testcerts.Valid(t, "berth-test-root", nil, true, f.now)
	return f, f.tlsServer(t, 30*time.Second), root, testcerts.Valid(t, "berth-test-intermediate", root, true, f.now)
}

// dpsPath is a DPS device API path under the fixture's ID scope.
func dpsPath(regID, rest string) string {
	return "/" + scope + "/registrations/" + regID + rest + "?api-version=2021-06-01"
}

// registerByCert is a device's HTTPS registration as the SDKs run it: PUT
// register, then poll the operation until it is terminal. It returns the
// register answer, and the last operation status when that was a 202.
func registerByCert(t *testing.T, srv *httptest.Server, regID string, chain []*testcerts.Cert, hdr ...string) (*httptest.ResponseRecorder, *dps.OperationStatus) {
	t.Helper()
	hdr = append([]string{"Content-Type", "application/json; charset=utf-8"}, hdr...)
	reg := certWire(t, srv, dpsGlobal, chain, http.MethodPut, dpsPath(regID, "/register"), []byte(`{"registrationId":"`+regID+`"}`), hdr...)
	if reg.Code != http.StatusAccepted {
		return reg, nil
	}
	op := decode[dps.OperationStatus](t, reg)
	for range 5 {
		poll := certWire(t, srv, dpsGlobal, chain, http.MethodGet, dpsPath(regID, "/operations/"+op.OperationID), nil, hdr...)
		if poll.Code != http.StatusOK && poll.Code != http.StatusAccepted {
			t.Fatalf("poll: %d %s", poll.Code, poll.Body)
		}
		op = decode[dps.OperationStatus](t, poll)
		if op.Terminal() {
			break
		}
	}
	return reg, &op
}

// TestX509RegisterHTTPS: a device registers over real HTTPS by its TLS client
// certificate and no Authorization header
// (docs/spec/dps-protocol.md#device-api-over-https, #x509-attestation), polls
// and looks its registration up the same way, and then sends telemetry to the
// hub DPS assigned it with the same certificate. Every refusal is DPS's
// 401002 "Invalid certificate.", except a request with no credential at all
// (401000, as before).
func TestX509RegisterHTTPS(t *testing.T) {
	f, srv, root, inter := newX509Fixture(t)
	now := f.now
	indiv := testcerts.Valid(t, "x509-indiv", nil, false, now)
	member := testcerts.Valid(t, "x509-member", inter, false, now)
	stranger := testcerts.Valid(t, "x509-indiv", nil, false, now) // the right CN, not enrolled
	expired := testcerts.Issue(t, "x509-expired", nil, false, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	f.x509Enroll(t, "x509-indiv", indiv)
	f.x509Enroll(t, "x509-expired", expired)
	f.x509Group(t, "x509-group", root)
	f.enroll(t, "sym-dev", "", "")

	tests := []struct {
		name  string
		regID string
		chain []*testcerts.Cert
		hdr   []string
		// wantCode is the refusal; 0 expects an assignment through
		// wantGroup ("" for the individual enrollment) to a hub device
		// authenticated by wantAuth, which then sends telemetry by its
		// certificate when wantMethod is byCertificate.
		wantCode   int
		wantGroup  string
		wantAuth   string
		wantMethod string
	}{
		{name: "individual, self-signed", regID: "x509-indiv", chain: chainOf(indiv),
			wantAuth: hub.AuthSelfSigned, wantMethod: byCertificate},
		{name: "group, with the intermediate the device sends", regID: "x509-member", chain: chainOf(member, inter),
			wantGroup: "x509-group", wantAuth: hub.AuthCertificateAuthority, wantMethod: byCertificate},
		{name: "group, intermediate not sent", regID: "x509-member", chain: chainOf(member), wantCode: 401002},
		{name: "CN is not the registration ID", regID: "x509-other", chain: chainOf(indiv), wantCode: 401002},
		{name: "not the enrollment's certificate", regID: "x509-indiv", chain: chainOf(stranger), wantCode: 401002},
		{name: "expired", regID: "x509-expired", chain: chainOf(expired), wantCode: 401002},
		{name: "no credential", regID: "x509-indiv", wantCode: 401000},
		{name: "an Authorization header decides over a certificate", regID: "sym-dev", chain: chainOf(indiv),
			hdr: []string{"Authorization", f.devToken(t, "sym-dev", indivKey)}, wantAuth: hub.AuthSAS},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg, op := registerByCert(t, srv, tc.regID, tc.chain, tc.hdr...)
			if tc.wantCode != 0 {
				e := checkError(t, reg, tc.wantCode)
				if tc.wantCode == 401002 && e.Message != "Invalid certificate." {
					t.Errorf("message %q, want Azure's \"Invalid certificate.\"", e.Message)
				}
				return
			}
			if reg.Code != http.StatusAccepted {
				t.Fatalf("register: %d %s", reg.Code, reg.Body)
			}
			st := op.RegistrationState
			if op.Status != dps.StatusAssigned || st == nil || st.AssignedHub != hubName || st.DeviceID != tc.regID {
				t.Fatalf("operation %+v", op)
			}
			switch {
			case tc.wantMethod == "" && st.X509 != nil:
				t.Errorf("a SAS registration reports x509 %+v", st.X509)
			case tc.wantMethod != "" && (st.X509 == nil || st.X509.EnrollmentGroupID != tc.wantGroup):
				t.Errorf("x509 %+v, want group %q", st.X509, tc.wantGroup)
			}

			// The registration status lookup authenticates the same way.
			look := certWire(t, srv, dpsGlobal, tc.chain, http.MethodPost, dpsPath(tc.regID, ""), nil, tc.hdr...)
			if look.Code != http.StatusOK || decode[dps.RegistrationState](t, look).Status != dps.StatusAssigned {
				t.Errorf("status lookup: %d %s", look.Code, look.Body)
			}
			// Another certificate with the registration ID as its CN gets
			// neither the operation nor the status.
			if tc.wantMethod != "" {
				imposter := chainOf(testcerts.Valid(t, tc.regID, nil, false, now))
				checkError(t, certWire(t, srv, dpsGlobal, imposter, http.MethodGet, dpsPath(tc.regID, "/operations/"+op.OperationID), nil), 401002)
				checkError(t, certWire(t, srv, dpsGlobal, imposter, http.MethodPost, dpsPath(tc.regID, ""), nil), 401002)
			}

			d, err := f.reg.Get(context.Background(), hubName, tc.regID)
			if err != nil {
				t.Fatal(err)
			}
			if d.Authentication == nil || d.Authentication.Type != tc.wantAuth {
				t.Fatalf("hub device authentication %+v, want %s", d.Authentication, tc.wantAuth)
			}
			if tc.wantMethod == "" {
				*f.secrets = append(*f.secrets, d.Keys()...)
				return
			}
			// The provisioned device sends telemetry with the certificate
			// it registered with.
			f.sink.reset()
			rec := certWire(t, srv, hubName, tc.chain, http.MethodPost, devicePath(tc.regID), []byte("hello"))
			if rec.Code != http.StatusNoContent {
				t.Fatalf("telemetry: %d %s", rec.Code, rec.Body)
			}
			msgs := f.sink.messages()
			if len(msgs) != 1 {
				t.Fatalf("%d messages", len(msgs))
			}
			checkAuthMethod(t, msgs[0], tc.wantMethod)
		})
	}
}

// TestX509HubTelemetryHTTPS: a device sends telemetry over real HTTPS with
// its TLS client certificate and no Authorization header
// (docs/spec/iothub-protocol.md#x509-device-authentication): a selfSigned
// device by either thumbprint in either hash, a certificateAuthority device
// by a chain to a CA the DPS trusts; anything else is IoT Hub's 401
// IotHubUnauthorizedAccess and nothing is appended.
func TestX509HubTelemetryHTTPS(t *testing.T) {
	f, srv, root, inter := newX509Fixture(t)
	now := f.now
	otherRoot := testcerts.Valid(t, "other-root", nil, true, now)
	// The group's signing certificate is what the hub trusts
	// (dps.Service.TrustedCAs, set on the registry by the fixture).
	f.x509Group(t, "trust-group", root)

	selfA := testcerts.Valid(t, "self-a", nil, false, now)
	selfB := testcerts.Valid(t, "self-b", nil, false, now)
	unrelated := testcerts.Valid(t, "unrelated", nil, false, now)
	expired := testcerts.Issue(t, "self-old", nil, false, now.Add(-48*time.Hour), now.Add(-time.Hour))
	offCert := testcerts.Valid(t, "self-off", nil, false, now)
	_, b256 := dps.Thumbprints(selfB.Cert)
	f.certDevice(t, hubName, "self-a", "", selfSigned(sha1Of(selfA), ""))
	// SHA-256 as the secondary, lower-case: IoT Hub compares either hash
	// in any case.
	f.certDevice(t, hubName, "self-b", "", selfSigned(sha1Of(unrelated), strings.ToLower(b256)))
	f.certDevice(t, hubName, "self-old", "", selfSigned(sha1Of(expired), ""))
	f.certDevice(t, hubName, "self-off", hub.StatusDisabled, selfSigned(sha1Of(offCert), ""))
	f.certDevice(t, hubName, "ca-dev", "", &hub.Authentication{Type: hub.AuthCertificateAuthority})
	sas := f.device(t, "sas-dev", "")
	sasTok := hubDeviceToken(t, "sas-dev", sas.Keys()[0], now.Add(time.Hour))

	tests := []struct {
		name       string
		deviceID   string
		chain      []*testcerts.Cert
		hdr        []string
		wantMethod string // "" expects 401 IotHubUnauthorizedAccess
	}{
		{"selfSigned, SHA-1 primary", "self-a", chainOf(selfA), nil, byCertificate},
		{"selfSigned, SHA-256 secondary", "self-b", chainOf(selfB), nil, byCertificate},
		{"selfSigned, another device's certificate", "self-a", chainOf(selfB), nil, ""},
		{"selfSigned, expired certificate", "self-old", chainOf(expired), nil, ""},
		{"selfSigned, disabled device", "self-off", chainOf(offCert), nil, ""},
		{"certificateAuthority, chain to the trusted root", "ca-dev",
			chainOf(testcerts.Valid(t, "ca-dev", inter, false, now), inter), nil, byCertificate},
		{"certificateAuthority, signed by the trusted root itself", "ca-dev",
			chainOf(testcerts.Valid(t, "ca-dev", root, false, now)), nil, byCertificate},
		{"certificateAuthority, CN is another device", "ca-dev",
			chainOf(testcerts.Valid(t, "self-a", inter, false, now), inter), nil, ""},
		{"certificateAuthority, intermediate not sent", "ca-dev",
			chainOf(testcerts.Valid(t, "ca-dev", inter, false, now)), nil, ""},
		{"certificateAuthority, untrusted root", "ca-dev",
			chainOf(testcerts.Valid(t, "ca-dev", otherRoot, false, now)), nil, ""},
		{"SAS device presenting a certificate", "sas-dev", chainOf(selfA), nil, ""},
		{"unknown device", "nobody", chainOf(selfA), nil, ""},
		{"no credential", "self-a", nil, nil, ""},
		{"an Authorization header decides over a certificate", "sas-dev", chainOf(selfA),
			[]string{"Authorization", sasTok}, bySAS},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.sink.reset()
			rec := certWire(t, srv, hubName, tc.chain, http.MethodPost, devicePath(tc.deviceID), []byte(`{"t":1}`), tc.hdr...)
			msgs := f.sink.messages()
			if tc.wantMethod == "" {
				checkHubError(t, rec, azerr.HubUnauthorizedAccess)
				if len(msgs) != 0 {
					t.Errorf("%d messages appended", len(msgs))
				}
				return
			}
			if rec.Code != http.StatusNoContent {
				t.Fatalf("telemetry: %d %s", rec.Code, rec.Body)
			}
			if len(msgs) != 1 || msgs[0].DeviceID != tc.deviceID || msgs[0].Hub != hubName {
				t.Fatalf("messages %+v", msgs)
			}
			checkAuthMethod(t, msgs[0], tc.wantMethod)
		})
	}
}

// TestX509CloudToDeviceHTTPS: the device side of the C2D queue
// authenticates by certificate as telemetry does: receive, abandon,
// complete and reject all work with the device's certificate alone, and
// another certificate reaches none of them.
func TestX509CloudToDeviceHTTPS(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	cert := testcerts.Valid(t, "c2d-x509", nil, false, f.now)
	other := chainOf(testcerts.Valid(t, "c2d-x509", nil, false, f.now))
	f.certDevice(t, hubName, "c2d-x509", "", selfSigned(sha1Of(cert), ""))
	own := chainOf(cert)
	for _, body := range []string{"first", "second"} {
		if _, err := f.c2d.Send(context.Background(), hubName, "c2d-x509", &hub.CloudMessage{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	path := c2dPath("c2d-x509", "devicebound")
	receive := func(want string) string {
		t.Helper()
		rec := certWire(t, srv, hubName, own, http.MethodGet, path, nil)
		if rec.Code != http.StatusOK || rec.Body.String() != want {
			t.Fatalf("receive: %d %q, want %q", rec.Code, rec.Body, want)
		}
		tok, _ := raw(rec, "ETag")
		return strings.Trim(tok, `"`)
	}
	settle := func(chain []*testcerts.Cert, method, target string) *httptest.ResponseRecorder {
		t.Helper()
		return certWire(t, srv, hubName, chain, method, target, nil)
	}

	checkHubError(t, settle(other, http.MethodGet, path), azerr.HubUnauthorizedAccess)
	lock := receive("first")
	checkHubError(t, settle(other, http.MethodPost, path+"/"+lock+"/abandon"), azerr.HubUnauthorizedAccess)
	checkHubError(t, settle(other, http.MethodDelete, path+"/"+lock), azerr.HubUnauthorizedAccess)
	if rec := settle(own, http.MethodPost, path+"/"+lock+"/abandon"); rec.Code != http.StatusNoContent {
		t.Fatalf("abandon: %d %s", rec.Code, rec.Body)
	}
	if rec := settle(own, http.MethodDelete, path+"/"+receive("first")); rec.Code != http.StatusNoContent {
		t.Fatalf("complete: %d %s", rec.Code, rec.Body)
	}
	if rec := settle(own, http.MethodDelete, path+"/"+receive("second")+"?reject"); rec.Code != http.StatusNoContent {
		t.Fatalf("reject: %d %s", rec.Code, rec.Body)
	}
	if rec := settle(own, http.MethodGet, path); rec.Code != http.StatusNoContent {
		t.Fatalf("empty queue: %d %s", rec.Code, rec.Body)
	}
}

// TestX509HubFollowsHost: with several hubs, a certificate device is
// looked up on the hub the Host header names, as SAS devices are; the
// same certificate on another hub's host finds no device there.
func TestX509HubFollowsHost(t *testing.T) {
	f := newDirFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	cert := testcerts.Valid(t, "on-b", nil, false, f.now)
	f.certDevice(t, hubB, "on-b", "", selfSigned(sha1Of(cert), ""))

	rec := certWire(t, srv, hubB, chainOf(cert), http.MethodPost, devicePath("on-b"), []byte("x"))
	if rec.Code != http.StatusNoContent {
		t.Fatalf("telemetry to hub B: %d %s", rec.Code, rec.Body)
	}
	if msgs := f.sink.messages(); len(msgs) != 1 || msgs[0].Hub != hubB {
		t.Fatalf("messages %+v", msgs)
	}
	checkHubError(t, certWire(t, srv, hubName, chainOf(cert), http.MethodPost, devicePath("on-b"), []byte("x")), azerr.HubUnauthorizedAccess)
}
