package dps_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
)

type testCert = testcerts.Cert

var (
	issue   = testcerts.Issue
	chainOf = testcerts.Chain
)

func x509Attestation(a *dps.X509Attestation) *dps.AttestationMechanism {
	return &dps.AttestationMechanism{Type: dps.AttestationX509, X509: a}
}

func certs(primary string) *dps.X509Certificates {
	return &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: primary}}
}

func (f *fixture) registerX509(t *testing.T, regID string, chain []*x509.Certificate) (*dps.OperationStatus, error) {
	t.Helper()
	ctx := context.Background()
	op, err := f.svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, ClientCerts: chain})
	if err != nil {
		return nil, err
	}
	return f.svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, ClientCerts: chain})
}

func TestX509Attestation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := f.now
	valid := func(cn string, parent *testCert, ca bool) *testCert {
		return issue(t, cn, parent, ca, now.Add(-time.Hour), now.Add(24*time.Hour))
	}
	root := valid("Test Root", nil, true)
	inter := valid("Test Intermediate", root, true)
	other := valid("Other Root", nil, true)
	selfDev := valid("self-dev", nil, false)
	selfDev2 := valid("self-dev", nil, false) // same CN, another key
	expired := issue(t, "old-dev", nil, false, now.Add(-48*time.Hour), now.Add(-time.Hour))

	// Individual enrollments list the device certificate itself.
	for id, c := range map[string]*testCert{"self-dev": selfDev, "old-dev": expired} {
		e := &dps.IndividualEnrollment{RegistrationID: id}
		e.Attestation = x509Attestation(&dps.X509Attestation{ClientCertificates: certs(c.PEM())})
		if _, err := f.svc.PutEnrollment(ctx, id, e, ""); err != nil {
			t.Fatal(err)
		}
	}
	// A group on the intermediate (uploaded with the enrollment) …
	g := &dps.EnrollmentGroup{EnrollmentGroupID: "inter-group"}
	g.Attestation = x509Attestation(&dps.X509Attestation{SigningCertificates: certs(inter.PEM())})
	if _, err := f.svc.PutGroup(ctx, g.EnrollmentGroupID, g, ""); err != nil {
		t.Fatal(err)
	}
	// … and one on the root, referenced as an uploaded CA certificate
	// that is verified by proof of possession.
	if _, err := f.svc.PutCertificate(ctx, "root-ca", root.PEM(), ""); err != nil {
		t.Fatal(err)
	}
	rg := &dps.EnrollmentGroup{EnrollmentGroupID: "root-group"}
	rg.Attestation = x509Attestation(&dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "root-ca"}})
	if _, err := f.svc.PutGroup(ctx, rg.EnrollmentGroupID, rg, ""); err != nil {
		t.Fatal(err)
	}
	viaInter := valid("inter-dev", inter, false)
	viaRoot := valid("root-dev", root, false)

	// Before verification the root group authenticates nobody.
	if _, err := f.registerX509(t, "root-dev", chainOf(viaRoot)); code(err) != azerr.DPSInvalidCredentials {
		t.Fatalf("unverified CA accepted: %v", err)
	}
	c, err := f.svc.GenerateVerificationCode(ctx, "root-ca", "")
	if err != nil || c.Properties.VerificationCode == "" || c.Properties.IsVerified {
		t.Fatalf("verification code: %+v, %v", c, err)
	}
	wrongSigner := valid(c.Properties.VerificationCode, other, false)
	wrongCN := valid("not-the-code", root, false)
	for _, bad := range []*testCert{wrongSigner, wrongCN} {
		if _, err := f.svc.VerifyCertificate(ctx, "root-ca", "", bad.PEM()); code(err) != azerr.DPSBadRequest {
			t.Errorf("bad proof accepted: %v", err)
		}
	}
	if c, err := f.svc.VerifyCertificate(ctx, "root-ca", "", valid(c.Properties.VerificationCode, root, false).PEM()); err != nil || !c.Properties.IsVerified {
		t.Fatalf("verify: %+v, %v", c, err)
	}

	cases := []struct {
		name      string
		regID     string
		chain     []*x509.Certificate
		wantErr   azerr.Code
		wantGroup string
		wantAuth  string
	}{
		{"self-signed individual", "self-dev", chainOf(selfDev), azerr.Code{}, "", hub.AuthSelfSigned},
		{"same CN, other certificate", "self-dev", chainOf(selfDev2), azerr.DPSInvalidCredentials, "", ""},
		{"expired", "old-dev", chainOf(expired), azerr.DPSInvalidCredentials, "", ""},
		{"CN is not the registration ID", "someone-else", chainOf(viaInter, inter), azerr.DPSInvalidCredentials, "", ""},
		{"group on the intermediate", "inter-dev", chainOf(viaInter, inter), azerr.Code{}, "inter-group", hub.AuthCertificateAuthority},
		{"intermediate missing from the chain still ends at it", "inter-dev", chainOf(viaInter), azerr.Code{}, "inter-group", hub.AuthCertificateAuthority},
		{"group on the verified root", "root-dev", chainOf(viaRoot), azerr.Code{}, "root-group", hub.AuthCertificateAuthority},
		{"another CA", "stranger", chainOf(valid("stranger", other, false)), azerr.DPSInvalidCredentials, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, err := f.registerX509(t, c.regID, c.chain)
			if c.wantErr != (azerr.Code{}) {
				if code(err) != c.wantErr {
					t.Fatalf("got %+v, %v; want %d", st, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rs := st.RegistrationState
			if st.Status != dps.StatusAssigned || rs.X509 == nil || rs.X509.EnrollmentGroupID != c.wantGroup || rs.SymmetricKey != nil {
				t.Fatalf("status %+v / %+v", st, rs)
			}
			d, err := f.reg.Get(ctx, hubName, c.regID)
			if err != nil || d.Authentication.Type != c.wantAuth || d.Keys() != nil {
				t.Fatalf("hub device: %+v, %v", d, err)
			}
			// The hub authenticates the device by the same certificate.
			f.reg.SetCATrust(f.svc)
			if _, err := f.reg.AuthenticateDeviceCert(ctx, hubName, c.regID, c.chain); err != nil {
				t.Errorf("hub refused the provisioned certificate: %v", err)
			}
		})
	}
	// Intermediate beats root: the most specific group wins.
	both := valid("both-dev", inter, false)
	if st, err := f.registerX509(t, "both-dev", chainOf(both, inter)); err != nil || st.RegistrationState.X509.EnrollmentGroupID != "inter-group" {
		t.Errorf("precedence: %+v, %v", st, err)
	}
	// A disabled individual enrollment revokes one device of a group.
	rev := &dps.IndividualEnrollment{RegistrationID: "inter-dev"}
	rev.Attestation = x509Attestation(&dps.X509Attestation{ClientCertificates: certs(viaInter.PEM())})
	rev.ProvisioningStatus = dps.ProvisioningDisabled
	if _, err := f.svc.PutEnrollment(ctx, "inter-dev", rev, ""); err != nil {
		t.Fatal(err)
	}
	if st, err := f.registerX509(t, "inter-dev", chainOf(viaInter, inter)); err != nil || st.Status != dps.StatusDisabled {
		t.Errorf("revoked device: %+v, %v", st, err)
	}
}

func TestX509EnrollmentDocuments(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dev := issue(t, "doc-dev", nil, false, f.now.Add(-time.Hour), f.now.Add(time.Hour))
	e := &dps.IndividualEnrollment{RegistrationID: "doc-dev"}
	e.Attestation = x509Attestation(&dps.X509Attestation{ClientCertificates: certs(dev.PEM())})
	out, err := f.svc.PutEnrollment(ctx, "doc-dev", e, "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.svc.GetEnrollment(ctx, "doc-dev", false)
	if err != nil {
		t.Fatal(err)
	}
	p := got.Attestation.X509.ClientCertificates.Primary
	s1, _ := dps.Thumbprints(dev.Cert)
	if p.Certificate != "" || p.Info == nil || p.Info.SHA1Thumbprint != s1 || p.Info.SubjectName != "CN=doc-dev" {
		t.Errorf("GET shows %+v / %+v", p, p.Info)
	}
	// A read-modify-write that sends the info back keeps the certificate.
	got.ProvisioningStatus = dps.ProvisioningDisabled
	if _, err := f.svc.PutEnrollment(ctx, "doc-dev", got, out.ETag); err != nil {
		t.Fatalf("update without the certificate: %v", err)
	}
	if st, err := f.registerX509(t, "doc-dev", chainOf(dev)); err != nil || st.Status != dps.StatusDisabled {
		t.Errorf("after update: %+v, %v", st, err)
	}
	for name, a := range map[string]*dps.X509Attestation{
		"no certificate":           {},
		"garbage":                  {ClientCertificates: certs("not a certificate")},
		"signing on an individual": {SigningCertificates: certs(dev.PEM())},
	} {
		e := &dps.IndividualEnrollment{RegistrationID: "bad"}
		e.Attestation = x509Attestation(a)
		if _, err := f.svc.PutEnrollment(ctx, "bad", e, ""); code(err) != azerr.DPSInvalidEnrollment {
			t.Errorf("%s: %v", name, err)
		}
	}
	g := &dps.EnrollmentGroup{EnrollmentGroupID: "bad-group"}
	g.Attestation = x509Attestation(&dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "never-uploaded"}})
	if _, err := f.svc.PutGroup(ctx, "bad-group", g, ""); code(err) != azerr.DPSInvalidEnrollment {
		t.Errorf("group referencing a missing CA: %v", err)
	}
	// Only CA certificates can be uploaded.
	if _, err := f.svc.PutCertificate(ctx, "leaf", dev.PEM(), ""); code(err) != azerr.DPSBadRequest || !strings.Contains(err.Error(), "CA") {
		t.Errorf("leaf uploaded as CA: %v", err)
	}
}

// FuzzParseCertificate: any input is a certificate or an error, never a
// panic; what parses has info and thumbprints.
func FuzzParseCertificate(f *testing.F) {
	now := time.Unix(1700000000, 0)
	c := testcerts.Valid(f, "seed", nil, false, now)
	f.Add(c.PEM())
	f.Add("MIIB")
	f.Add("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	f.Add("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	// The three forms Azure accepts: PEM (above), base64 of DER (.cer),
	// base64 of the PEM file; and base64 of a PEM that is not a certificate.
	f.Add(base64.StdEncoding.EncodeToString(c.Cert.Raw))
	f.Add(base64.StdEncoding.EncodeToString([]byte(c.PEM())))
	f.Add(base64.StdEncoding.EncodeToString([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")))
	f.Add(base64.StdEncoding.EncodeToString([]byte("-----BEGIN CERTIFICATE-----\n")))
	f.Fuzz(func(t *testing.T, s string) {
		cert, err := dps.ParseCertificate(s)
		if err != nil {
			return
		}
		info := dps.CertificateInfo(cert)
		if len(info.SHA1Thumbprint) != 40 || len(info.SHA256Thumbprint) != 64 {
			t.Fatalf("info %+v", info)
		}
	})
}

// TestX509IndividualCASigned: an individual enrollment with a CA-signed
// device certificate authenticates only once a CA of its chain is uploaded
// and verified (docs/spec/dps-protocol.md#x509-attestation); a self-signed
// one needs nothing.
func TestX509IndividualCASigned(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	root := testcerts.Valid(t, "Root", nil, true, f.now)
	inter := testcerts.Valid(t, "Inter", root, true, f.now)
	dev := testcerts.Valid(t, "ca-signed-dev", inter, false, f.now)
	e := &dps.IndividualEnrollment{RegistrationID: "ca-signed-dev"}
	e.Attestation = x509Attestation(&dps.X509Attestation{ClientCertificates: certs(dev.PEM())})
	if _, err := f.svc.PutEnrollment(ctx, e.RegistrationID, e, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.registerX509(t, "ca-signed-dev", chainOf(dev, inter)); code(err) != azerr.DPSInvalidCredentials {
		t.Fatalf("no verified CA yet: %v", err)
	}
	if _, err := f.svc.PutCertificate(ctx, "root", root.PEM(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.registerX509(t, "ca-signed-dev", chainOf(dev, inter)); code(err) != azerr.DPSInvalidCredentials {
		t.Fatalf("uploaded but unverified CA: %v", err)
	}
	c, err := f.svc.GenerateVerificationCode(ctx, "root", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.VerifyCertificate(ctx, "root", "", testcerts.Valid(t, c.Properties.VerificationCode, root, false, f.now).PEM()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.registerX509(t, "ca-signed-dev", chainOf(dev)); code(err) != azerr.DPSInvalidCredentials {
		t.Fatalf("intermediate not sent: %v", err)
	}
	st, err := f.registerX509(t, "ca-signed-dev", chainOf(dev, inter))
	if err != nil || st.Status != dps.StatusAssigned {
		t.Fatalf("verified CA in the chain: %+v, %v", st, err)
	}
}

// certForms are the three ways Azure accepts a certificate wherever one is
// uploaded: PEM, base64 of DER (a .cer file, what the C# SDK sends) and
// base64 of the PEM file's content (Microsoft's Node e2e suite sends a
// group's signing certificate that way).
func certForms(c *testCert) map[string]string {
	return map[string]string{
		"PEM":           c.PEM(),
		"base64 DER":    base64.StdEncoding.EncodeToString(c.Cert.Raw),
		"base64 PEM":    base64.StdEncoding.EncodeToString([]byte(c.PEM())),
		"base64 PEM 76": wrap76(base64.StdEncoding.EncodeToString([]byte(c.PEM()))),
	}
}

// wrap76 breaks base64 into lines as base64(1) does.
func wrap76(s string) string {
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\n")
		s = s[76:]
	}
	return b.String() + s + "\n"
}

func TestCertificateFormsAccepted(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	root := testcerts.Valid(t, "Forms Root", nil, true, f.now)
	dev := testcerts.Valid(t, "forms-dev", nil, false, f.now)
	for form, text := range certForms(root) {
		t.Run(form, func(t *testing.T) {
			c, err := dps.ParseCertificate(text)
			if err != nil || !c.Equal(root.Cert) {
				t.Fatalf("ParseCertificate: %v", err)
			}
			name := strings.ReplaceAll(form, " ", "-")
			// A group's signing certificate.
			g := &dps.EnrollmentGroup{EnrollmentGroupID: "forms-" + name}
			g.Attestation = x509Attestation(&dps.X509Attestation{SigningCertificates: certs(text)})
			out, err := f.svc.PutGroup(ctx, g.EnrollmentGroupID, g, "")
			if err != nil {
				t.Fatalf("group: %v", err)
			}
			if info := out.Attestation.X509.SigningCertificates.Primary.Info; info == nil || info.SubjectName != "CN=Forms Root" {
				t.Errorf("group certificate info: %+v", info)
			}
			// A CA certificate, and its proof of possession.
			if _, err := f.svc.PutCertificate(ctx, name, text, ""); err != nil {
				t.Fatalf("CA certificate: %v", err)
			}
			code, err := f.svc.GenerateVerificationCode(ctx, name, "")
			if err != nil {
				t.Fatal(err)
			}
			proof := certForms(testcerts.Valid(t, code.Properties.VerificationCode, root, false, f.now))[form]
			if c, err := f.svc.VerifyCertificate(ctx, name, "", proof); err != nil || !c.Properties.IsVerified {
				t.Errorf("verification with a %s proof: %+v, %v", form, c, err)
			}
		})
	}
	// An individual enrollment's device certificate, in each form.
	for form, text := range certForms(dev) {
		e := &dps.IndividualEnrollment{RegistrationID: "forms-dev"}
		e.Attestation = x509Attestation(&dps.X509Attestation{ClientCertificates: certs(text)})
		if _, err := f.svc.PutEnrollment(ctx, e.RegistrationID, e, ""); err != nil {
			t.Fatalf("enrollment, %s: %v", form, err)
		}
		if st, err := f.registerX509(t, "forms-dev", chainOf(dev)); err != nil || st.Status != dps.StatusAssigned {
			t.Errorf("device of an enrollment with a %s certificate: %+v, %v", form, st, err)
		}
	}
	// Still refused: base64 of a PEM that is not a certificate, or of junk.
	for _, bad := range []string{
		base64.StdEncoding.EncodeToString([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")),
		base64.StdEncoding.EncodeToString([]byte("not a certificate")),
	} {
		if _, err := dps.ParseCertificate(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
