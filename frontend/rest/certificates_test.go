package rest

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/internal/testcerts"
)

// certCall sends an owner-authorised request to the certificate API.
func (f *fixture) certCall(t testing.TB, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	return f.do(request(method, target, body, append([]string{"Authorization", f.ownerToken(t), "Content-Type", "application/json"}, hdr...)...))
}

// certBody is the JSON body carrying a certificate (PEM or base64 DER).
func certBody(t testing.TB, cert string) string {
	t.Helper()
	b, err := json.Marshal(certificateBody{Certificate: cert})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantCertificate checks a one-certificate answer: the status, the common
// headers, the quoted ETag header matching the body's etag, and no
// certificate material in the body.
func wantCertificate(t testing.TB, rec *httptest.ResponseRecorder, status int) dps.Certificate {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d: %s", rec.Code, status, rec.Body)
	}
	checkCommon(t, rec)
	c := decode[dps.Certificate](t, rec)
	if etag, _ := raw(rec, "ETag"); c.ETag == "" || etag != `"`+c.ETag+`"` {
		t.Errorf("ETag header %q, body etag %q", etag, c.ETag)
	}
	if strings.Contains(rec.Body.String(), "CERTIFICATE") || strings.Contains(rec.Body.String(), `"certificate"`) {
		t.Errorf("the answer carries the certificate: %s", rec.Body)
	}
	return c
}

// prove runs proof of possession for the uploaded certificate name, whose
// key ca holds: generate a code, sign a certificate with CN = code, verify.
func (f *fixture) prove(t testing.TB, name string, ca *testcerts.Cert) dps.Certificate {
	t.Helper()
	code := wantCertificate(t, f.certCall(t, http.MethodPost, "/certificates/"+name+"/generateVerificationCode", ""), http.StatusOK)
	proof := testcerts.Valid(t, code.Properties.VerificationCode, ca, false, f.now)
	return wantCertificate(t, f.certCall(t, http.MethodPost, "/certificates/"+name+"/verify", certBody(t, proof.PEM())), http.StatusOK)
}

// upload uploads ca as name and returns the stored certificate.
func (f *fixture) upload(t testing.TB, name string, ca *testcerts.Cert) dps.Certificate {
	t.Helper()
	return wantCertificate(t, f.certCall(t, http.MethodPut, "/certificates/"+name, certBody(t, ca.PEM())), http.StatusCreated)
}

// TestCertificateLifecycle: a CA certificate is uploaded, read, listed,
// replaced (unverified again), proven (generate a code, sign a
// certificate with CN = code using the CA's key, verify), used by an
// enrollment group's caReferences to register a device over HTTPS by
// certificate, and deleted; If-Match guards every write.
func TestCertificateLifecycle(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	now := f.now
	root := testcerts.Valid(t, "berth-root", nil, true, now)
	inter := testcerts.Valid(t, "berth-intermediate", root, true, now)
	s1, s2 := dps.Thumbprints(root.Cert)

	// An empty list is ARM's {"value":[]}.
	rec := f.certCall(t, http.MethodGet, "/certificates?api-version=2021-10-01", "")
	if rec.Code != http.StatusOK || rec.Body.String() != `{"value":[]}` {
		t.Fatalf("empty list: %d %s", rec.Code, rec.Body)
	}

	// Upload: 201, described, unverified.
	up := f.upload(t, "root-1", root)
	p := up.Properties
	if up.Name != "root-1" || p.Subject != "berth-root" || p.Thumbprint != s1 || p.ThumbprintSHA256 != s2 ||
		!p.Expiry.Equal(root.Cert.NotAfter) || p.IsVerified || p.VerificationCode != "" || p.Created.IsZero() {
		t.Fatalf("uploaded %+v", up)
	}
	// Read, by any case of the name.
	if got := wantCertificate(t, f.certCall(t, http.MethodGet, "/Certificates/ROOT-1", ""), http.StatusOK); got.ETag != up.ETag || got.Name != "root-1" {
		t.Errorf("GET %+v, want etag %s", got, up.ETag)
	}
	// Replace as base64 DER under the current etag (the header's quoted
	// form): 200, a new etag.
	der := base64.StdEncoding.EncodeToString(root.Cert.Raw)
	replaced := wantCertificate(t, f.certCall(t, http.MethodPut, "/certificates/root-1", certBody(t, der), "If-Match", `"`+up.ETag+`"`), http.StatusOK)
	if replaced.ETag == up.ETag || replaced.Properties.Thumbprint != s1 {
		t.Errorf("replaced %+v", replaced)
	}
	// The old etag no longer matches.
	checkError(t, f.certCall(t, http.MethodPut, "/certificates/root-1", certBody(t, root.PEM()), "If-Match", up.ETag), 412001)

	// Proof of possession. A proof that is wrong is refused and leaves
	// the code in place.
	code := wantCertificate(t, f.certCall(t, http.MethodPost, "/certificates/root-1/generateVerificationCode", "", "If-Match", replaced.ETag), http.StatusOK)
	vc := code.Properties.VerificationCode
	if vc == "" || code.Properties.IsVerified {
		t.Fatalf("generateVerificationCode %+v", code)
	}
	otherCA := testcerts.Valid(t, "other-ca", nil, true, now)
	for _, bad := range []struct{ name, body string }{
		{"CN is not the code", certBody(t, testcerts.Valid(t, "not-the-code", root, false, now).PEM())},
		{"signed by another key", certBody(t, testcerts.Valid(t, vc, otherCA, false, now).PEM())},
		{"self-signed", certBody(t, testcerts.Valid(t, vc, nil, false, now).PEM())},
		{"not a certificate", certBody(t, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")},
	} {
		t.Run("proof "+bad.name, func(t *testing.T) {
			checkError(t, f.certCall(t, http.MethodPost, "/certificates/root-1/verify", bad.body), 400000)
		})
	}
	proof := testcerts.Valid(t, vc, root, false, now)
	verified := wantCertificate(t, f.certCall(t, http.MethodPost, "/certificates/root-1/verify", certBody(t, proof.PEM())), http.StatusOK)
	if !verified.Properties.IsVerified || verified.Properties.VerificationCode != "" {
		t.Fatalf("verified %+v", verified)
	}
	// The code is single-use.
	checkError(t, f.certCall(t, http.MethodPost, "/certificates/root-1/verify", certBody(t, proof.PEM())), 400000)

	rec = f.certCall(t, http.MethodGet, "/certificates", "")
	list := decode[certificateList](t, rec)
	if rec.Code != http.StatusOK || len(list.Value) != 1 || list.Value[0].Name != "root-1" || !list.Value[0].Properties.IsVerified {
		t.Fatalf("list: %d %s", rec.Code, rec.Body)
	}

	// A group referencing the verified CA registers a device whose chain
	// ends at it.
	rec = f.certCall(t, http.MethodPut, "/enrollmentGroups/ca-group",
		`{"enrollmentGroupId":"ca-group","attestation":{"type":"x509","x509":{"caReferences":{"primary":"root-1"}}}}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("group: %d %s", rec.Code, rec.Body)
	}
	dev := chainOf(testcerts.Valid(t, "ca-ref-dev", inter, false, now), inter)
	reg, op := registerByCert(t, srv, "ca-ref-dev", dev)
	if reg.Code != http.StatusAccepted || op.Status != dps.StatusAssigned || op.RegistrationState.X509 == nil ||
		op.RegistrationState.X509.EnrollmentGroupID != "ca-group" {
		t.Fatalf("registration by CA reference: %d %s %+v", reg.Code, reg.Body, op)
	}

	// Replacing the certificate makes it unverified again: it no longer
	// authenticates the group's devices.
	again := wantCertificate(t, f.certCall(t, http.MethodPut, "/certificates/root-1", certBody(t, root.PEM())), http.StatusOK)
	if again.Properties.IsVerified {
		t.Errorf("a replaced certificate is still verified: %+v", again)
	}
	reg, _ = registerByCert(t, srv, "ca-ref-dev", dev)
	checkError(t, reg, 401002)

	// Delete: a stale If-Match is refused, then 204, then 404.
	checkError(t, f.certCall(t, http.MethodDelete, "/certificates/root-1", "", "If-Match", verified.ETag), 412001)
	rec = f.certCall(t, http.MethodDelete, "/certificates/root-1", "", "If-Match", `"`+again.ETag+`"`)
	if rec.Code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	checkError(t, f.certCall(t, http.MethodGet, "/certificates/root-1", ""), 404000)
	checkError(t, f.certCall(t, http.MethodDelete, "/certificates/root-1", ""), 404000)
}

// TestCertificateErrors: authorization (a DPS service token with
// ServiceConfig, checked before anything else), bad names, bodies and
// certificates, unknown certificates and wrong methods, each in the DPS
// error format.
func TestCertificateErrors(t *testing.T) {
	f := newFixture(t)
	now := f.now
	root := testcerts.Valid(t, "err-root", nil, true, now)
	f.upload(t, "known", root)
	leaf := testcerts.Valid(t, "leaf", root, false, now)
	routes := []struct{ method, path, body string }{
		{http.MethodGet, "/certificates", ""},
		{http.MethodGet, "/certificates/known", ""},
		{http.MethodPut, "/certificates/new", certBody(t, root.PEM())},
		{http.MethodDelete, "/certificates/known", ""},
		{http.MethodPost, "/certificates/known/generateVerificationCode", ""},
		{http.MethodPost, "/certificates/known/verify", certBody(t, leaf.PEM())},
	}
	reader := serviceToken(t, dpsHost, f.reader, now.Add(time.Hour))
	for _, rt := range routes {
		t.Run("auth "+rt.method+" "+rt.path, func(t *testing.T) {
			checkError(t, f.do(request(rt.method, rt.path, rt.body)), 401000)
			checkError(t, f.do(request(rt.method, rt.path, rt.body, "Authorization", reader)), 401002)
		})
	}
	if _, err := f.svc.GetCertificate(t.Context(), "new"); err == nil {
		t.Error("an unauthorized PUT uploaded a certificate")
	}

	tests := []struct {
		name, method, path, body string
		code                     int
	}{
		{"name with a space", http.MethodPut, "/certificates/a%20b", certBody(t, root.PEM()), 400000},
		{"name too long", http.MethodPut, "/certificates/" + strings.Repeat("n", 65), certBody(t, root.PEM()), 400000},
		{"not a CA", http.MethodPut, "/certificates/leaf", certBody(t, leaf.PEM()), 400000},
		{"not a certificate", http.MethodPut, "/certificates/junk", certBody(t, "not base64!"), 400000},
		{"no certificate", http.MethodPut, "/certificates/empty", `{"name":"empty"}`, 400000},
		{"no body", http.MethodPut, "/certificates/empty", "", 400101},
		{"body not JSON", http.MethodPut, "/certificates/empty", "certificate", 400101},
		{"If-Match on a new certificate", http.MethodPut, "/certificates/fresh", certBody(t, root.PEM()), 0},
		{"verify without a code", http.MethodPost, "/certificates/known/verify", certBody(t, leaf.PEM()), 400000},
		{"verify with no certificate", http.MethodPost, "/certificates/known/verify", `{}`, 400000},
		{"read unknown", http.MethodGet, "/certificates/nope", "", 404000},
		{"delete unknown", http.MethodDelete, "/certificates/nope", "", 404000},
		{"code for unknown", http.MethodPost, "/certificates/nope/generateVerificationCode", "", 404000},
		{"verify unknown", http.MethodPost, "/certificates/nope/verify", certBody(t, leaf.PEM()), 404000},
		{"PATCH", http.MethodPatch, "/certificates/known", "{}", 405000},
		{"DELETE the collection", http.MethodDelete, "/certificates", "", 405000},
		{"GET verify", http.MethodGet, "/certificates/known/verify", "", 405000},
		{"unknown action", http.MethodPost, "/certificates/known/renew", "", 404000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.code == 0 {
				// A conditional write of a certificate that does not exist
				// fails its condition (404 or 412, the domain's choice)
				// and creates nothing.
				hdr = []string{"If-Match", `"e1"`}
			}
			rec := f.certCall(t, tc.method, tc.path, tc.body, hdr...)
			if tc.code == 0 {
				if rec.Code != http.StatusNotFound && rec.Code != http.StatusPreconditionFailed {
					t.Errorf("status %d: %s", rec.Code, rec.Body)
				}
				if _, err := f.svc.GetCertificate(t.Context(), "fresh"); err == nil {
					t.Error("a failed conditional PUT created the certificate")
				}
				return
			}
			checkError(t, rec, tc.code)
			if tc.code == 405000 {
				if allow, _ := raw(rec, "Allow"); allow == "" {
					t.Error("405 without Allow")
				}
			}
		})
	}
	// Nothing above changed the known certificate.
	if c, err := f.svc.GetCertificate(t.Context(), "known"); err != nil || c.Properties.IsVerified || c.Properties.VerificationCode != "" {
		t.Errorf("known certificate %+v, %v", c, err)
	}
}

// x509Enrollment is an enrollment or group answer as far as these tests
// read it.
type x509Enrollment struct {
	ETag        string                    `json:"etag"`
	Attestation *dps.AttestationMechanism `json:"attestation"`
}

// TestX509EnrollmentRoundTrip: X.509 enrollments and groups go through
// the service API as Azure's SDKs send them (PEM or base64 DER), and come
// back from PUT, GET and POST …/attestationmechanism with each
// certificate's info filled and the certificate itself never returned; a
// read enrollment written back keeps its certificates.
func TestX509EnrollmentRoundTrip(t *testing.T) {
	f := newFixture(t)
	now := f.now
	dev1 := testcerts.Valid(t, "x509-rt", nil, false, now)
	dev2 := testcerts.Valid(t, "x509-rt", nil, false, now)
	root := testcerts.Valid(t, "rt-root", nil, true, now)
	f.upload(t, "rt-ca", root)
	f.prove(t, "rt-ca", root)
	certJSON := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	der := func(c *testcerts.Cert) string { return base64.StdEncoding.EncodeToString(c.Cert.Raw) }

	tests := []struct {
		name       string
		collection string // enrollments or enrollmentGroups
		idField    string
		x509       string
		// certs picks the certificates the answer describes (nil for
		// caReferences), primary and secondary those they must describe.
		certs              func(*dps.X509Attestation) *dps.X509Certificates
		primary, secondary *testcerts.Cert
		caRef              string
	}{
		{name: "individual, PEM and base64 DER", collection: "enrollments", idField: "registrationId",
			x509:  `{"clientCertificates":{"primary":{"certificate":` + certJSON(dev1.PEM()) + `},"secondary":{"certificate":"` + der(dev2) + `"}}}`,
			certs: func(a *dps.X509Attestation) *dps.X509Certificates { return a.ClientCertificates }, primary: dev1, secondary: dev2},
		{name: "group, signing certificate", collection: "enrollmentGroups", idField: "enrollmentGroupId",
			x509:  `{"signingCertificates":{"primary":{"certificate":` + certJSON(root.PEM()) + `}}}`,
			certs: func(a *dps.X509Attestation) *dps.X509Certificates { return a.SigningCertificates }, primary: root},
		{name: "group, CA reference", collection: "enrollmentGroups", idField: "enrollmentGroupId",
			x509: `{"caReferences":{"primary":"rt-ca"}}`, caRef: "rt-ca"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := "/" + tc.collection + "/x509-rt"
			check := func(what string, rec *httptest.ResponseRecorder, a *dps.AttestationMechanism) {
				t.Helper()
				if rec.Code != http.StatusOK {
					t.Fatalf("%s: %d %s", what, rec.Code, rec.Body)
				}
				if strings.Contains(rec.Body.String(), `"certificate"`) || strings.Contains(rec.Body.String(), "CERTIFICATE") {
					t.Errorf("%s returns a certificate", what)
				}
				if a == nil || a.Type != dps.AttestationX509 || a.X509 == nil {
					t.Fatalf("%s attestation %s", what, rec.Body)
				}
				if tc.caRef != "" {
					if a.X509.CAReferences == nil || a.X509.CAReferences.Primary != tc.caRef {
						t.Errorf("%s caReferences %s", what, rec.Body)
					}
					return
				}
				cs := tc.certs(a.X509)
				for _, slot := range []struct {
					got  *dps.X509CertificateWithInfo
					want *testcerts.Cert
				}{{cs.Primary, tc.primary}, {cs.Secondary, tc.secondary}} {
					if slot.want == nil {
						if slot.got != nil {
							t.Errorf("%s: unexpected certificate %+v", what, slot.got)
						}
						continue
					}
					s1, s2 := dps.Thumbprints(slot.want.Cert)
					if slot.got == nil || slot.got.Info == nil || slot.got.Info.SHA1Thumbprint != s1 || slot.got.Info.SHA256Thumbprint != s2 ||
						slot.got.Info.SubjectName != slot.want.Cert.Subject.String() {
						t.Errorf("%s: info %+v, want %s's", what, slot.got, slot.want.Cert.Subject)
					}
				}
			}
			body := `{"` + tc.idField + `":"x509-rt","attestation":{"type":"x509","x509":` + tc.x509 + `}}`
			rec := f.certCall(t, http.MethodPut, path, body)
			check("PUT", rec, decode[x509Enrollment](t, rec).Attestation)
			rec = f.certCall(t, http.MethodGet, path, "")
			asRead := rec.Body.String()
			read := decode[x509Enrollment](t, rec)
			check("GET", rec, read.Attestation)
			rec = f.certCall(t, http.MethodPost, path+"/attestationmechanism", "")
			check("attestationmechanism", rec, decode[*dps.AttestationMechanism](t, rec))
			// Written back as read (info only, under its etag), the
			// enrollment keeps its certificates.
			rec = f.certCall(t, http.MethodPut, path, asRead, "If-Match", read.ETag)
			check("PUT as read", rec, decode[x509Enrollment](t, rec).Attestation)
		})
	}

	refused := []struct{ name, collection, idField, x509 string }{
		{"individual with a signing certificate", "enrollments", "registrationId",
			`{"signingCertificates":{"primary":{"certificate":` + certJSON(root.PEM()) + `}}}`},
		{"group with a client certificate", "enrollmentGroups", "enrollmentGroupId",
			`{"clientCertificates":{"primary":{"certificate":` + certJSON(dev1.PEM()) + `}}}`},
		{"CA reference to nothing uploaded", "enrollmentGroups", "enrollmentGroupId", `{"caReferences":{"primary":"nope"}}`},
		{"malformed certificate", "enrollments", "registrationId", `{"clientCertificates":{"primary":{"certificate":"MIIB"}}}`},
		{"no certificates", "enrollments", "registrationId", `{}`},
	}
	for _, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			body := `{"` + tc.idField + `":"x509-no","attestation":{"type":"x509","x509":` + tc.x509 + `}}`
			checkError(t, f.certCall(t, http.MethodPut, "/"+tc.collection+"/x509-no", body), 400104)
		})
	}
}
