package cli

import (
	"crypto/x509"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/pki"
)

const (
	certJSON     = `{"name":"root-1","etag":"e1","properties":{"subject":"root","expiry":"2030-01-01T00:00:00Z","thumbprint":"AB","thumbprintSha256":"CD","isVerified":false,"created":"2024-05-01T10:00:00Z","updated":"2024-05-01T10:00:00Z"}}`
	codeJSON     = `{"name":"root-1","etag":"e2","properties":{"subject":"root","expiry":"2030-01-01T00:00:00Z","thumbprint":"AB","thumbprintSha256":"CD","isVerified":false,"created":"2024-05-01T10:00:00Z","updated":"2024-05-01T10:00:00Z","verificationCode":"C0DE"}}`
	verifiedJSON = `{"name":"root-1","etag":"e3","properties":{"subject":"root","expiry":"2030-01-01T00:00:00Z","thumbprint":"AB","thumbprintSha256":"CD","isVerified":true,"created":"2024-05-01T10:00:00Z","updated":"2024-05-01T10:00:00Z"}}`
	cert404      = `{"errorCode":404000,"trackingId":"t","message":"Certificate root-1 not found."}`
)

// caFiles writes a CA certificate and its key, as an operator has them.
func caFiles(t *testing.T, ca *testcerts.Cert) (certFile, keyFile string) {
	return writeTemp(t, "ca.pem", []byte(ca.PEM())), writeTemp(t, "ca.key", []byte(ca.KeyPEM(t)))
}

// jsonString is s as a JSON string, for expected request bodies.
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// serviceCase is one command against a fake service: the requests it
// must send and what it must print.
type serviceCase struct {
	name     string
	args     []string
	replies  []reply
	wantReqs []string // none when empty
	wantOut  string   // canonical JSON; "-" for none
	wantErr  string
}

// runServiceCases runs each case, prefix then its args, against a fake
// that plays its replies.
func runServiceCases(t *testing.T, prefix []string, tests []serviceCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newServiceFake(t, tt.replies...)
			out, _, err := run(t, append(append(f.flags(), prefix...), tt.args...)...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("err %v", err)
			}
			if got, want := f.requests(), canonicalLines(t, tt.wantReqs); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("requests\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			switch {
			case tt.wantErr != "" || tt.wantOut == "-":
				if out != "" {
					t.Errorf("printed %q", out)
				}
			case canonical(t, out) != canonical(t, tt.wantOut):
				t.Errorf("output\n got %s\nwant %s", canonical(t, out), canonical(t, tt.wantOut))
			}
		})
	}
}

// TestDPSCertificateCommands: what each command sends and prints, against
// a fake service.
func TestDPSCertificateCommands(t *testing.T) {
	clearEnv(t)
	root := testcerts.Valid(t, "root", nil, true, time.Now())
	rootFile, rootKey := caFiles(t, root)
	// A DER file and a PEM file with a key ahead of the certificate read
	// as the same certificate.
	derFile := writeTemp(t, "ca.cer", root.Cert.Raw)
	mixed := writeTemp(t, "mixed.pem", []byte(root.KeyPEM(t)+root.PEM()))
	proof := testcerts.Valid(t, "C0DE", root, false, time.Now())
	proofFile := writeTemp(t, "proof.pem", []byte(proof.PEM()))
	put := `PUT /certificates/root-1 {"certificate":` + jsonString(root.PEM()) + `}`
	runServiceCases(t, []string{"dps", "certificate"}, []serviceCase{
		{
			name:     "list, az's shape",
			args:     []string{"list"},
			replies:  []reply{{status: 200, body: `{"value":[` + certJSON + `]}`}},
			wantReqs: []string{"GET /certificates"},
			wantOut:  `{"value":[` + certJSON + `]}`,
		},
		{
			name:     "list none",
			args:     []string{"list"},
			replies:  []reply{{status: 200, body: `{"value":[]}`}},
			wantReqs: []string{"GET /certificates"},
			wantOut:  `{"value":[]}`,
		},
		{
			name:     "show by --certificate-name",
			args:     []string{"show", "--certificate-name", "root-1"},
			replies:  []reply{{status: 200, body: certJSON}},
			wantReqs: []string{"GET /certificates/root-1"},
			wantOut:  certJSON,
		},
		{
			name:     "show not found",
			args:     []string{"show", "-n", "root-1"},
			replies:  []reply{{status: 404, body: cert404}},
			wantReqs: []string{"GET /certificates/root-1"},
			wantErr:  "Certificate root-1 not found.",
		},
		{
			name:     "create uploads the PEM",
			args:     []string{"create", "--name", "root-1", "--path", rootFile},
			replies:  []reply{{status: 404, body: cert404}, {status: 201, body: certJSON}},
			wantReqs: []string{"GET /certificates/root-1", put},
			wantOut:  certJSON,
		},
		{
			name:     "create from DER uploads PEM",
			args:     []string{"create", "root-1", "-p", derFile},
			replies:  []reply{{status: 404, body: cert404}, {status: 201, body: certJSON}},
			wantReqs: []string{"GET /certificates/root-1", put},
			wantOut:  certJSON,
		},
		{
			name:     "create sends the certificate, never the key next to it",
			args:     []string{"create", "root-1", "-p", mixed},
			replies:  []reply{{status: 404, body: cert404}, {status: 201, body: certJSON}},
			wantReqs: []string{"GET /certificates/root-1", put},
			wantOut:  certJSON,
		},
		{
			name:     "create refuses to replace",
			args:     []string{"create", "root-1", "-p", rootFile},
			replies:  []reply{{status: 200, body: certJSON}},
			wantReqs: []string{"GET /certificates/root-1"},
			wantErr:  "already exists; use `berth dps certificate update`",
		},
		{
			name:    "create --verify of another CA needs its key",
			args:    []string{"create", "root-1", "-p", rootFile, "--verify"},
			wantErr: "--verify needs the CA's private key (--key)",
		},
		{
			name:    "--key without --verify",
			args:    []string{"create", "root-1", "-p", rootFile, "--key", rootKey},
			wantErr: "--key is for --verify",
		},
		{
			name:    "create of a missing file",
			args:    []string{"create", "root-1", "-p", filepath.Join(t.TempDir(), "nope.pem")},
			wantErr: "--path",
		},
		{
			name:    "create with no development CA",
			args:    []string{"create", "root-1"},
			wantErr: "ca.crt",
		},
		{
			name:     "update replaces if unchanged since read",
			args:     []string{"update", "root-1", "-p", rootFile},
			replies:  []reply{{status: 200, body: certJSON}, {status: 200, body: certJSON}},
			wantReqs: []string{"GET /certificates/root-1", `PUT /certificates/root-1 if-match=e1 {"certificate":` + jsonString(root.PEM()) + `}`},
			wantOut:  certJSON,
		},
		{
			name:     "update with --etag",
			args:     []string{"update", "root-1", "-p", rootFile, "--etag", "e0"},
			replies:  []reply{{status: 200, body: certJSON}, {status: 412, body: `{"errorCode":412002,"message":"Precondition failed."}`}},
			wantReqs: []string{"GET /certificates/root-1", `PUT /certificates/root-1 if-match=e0 {"certificate":` + jsonString(root.PEM()) + `}`},
			wantErr:  "412",
		},
		{
			name:     "update never creates",
			args:     []string{"update", "root-1", "-p", rootFile},
			replies:  []reply{{status: 404, body: cert404}},
			wantReqs: []string{"GET /certificates/root-1"},
			wantErr:  "404",
		},
		{
			name:     "delete with --etag",
			args:     []string{"delete", "root-1", "--etag", "e1"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /certificates/root-1 if-match=e1"},
			wantOut:  "-",
		},
		{
			name:     "generate-verification-code",
			args:     []string{"generate-verification-code", "--name", "root-1"},
			replies:  []reply{{status: 200, body: codeJSON}},
			wantReqs: []string{"POST /certificates/root-1/generateVerificationCode"},
			wantOut:  codeJSON,
		},
		{
			name:     "verify uploads the proof",
			args:     []string{"verify", "--name", "root-1", "--path", proofFile},
			replies:  []reply{{status: 200, body: verifiedJSON}},
			wantReqs: []string{`POST /certificates/root-1/verify {"certificate":` + jsonString(proof.PEM()) + `}`},
			wantOut:  verifiedJSON,
		},
		{
			name:    "verify needs --path",
			args:    []string{"verify", "--name", "root-1"},
			wantErr: "path",
		},
		{
			name:    "no name",
			args:    []string{"show"},
			wantErr: "--name",
		},
	})
}

// TestDPSCertificateCreateVerify: --verify generates a code and uploads a
// certificate with that CN signed by the CA's key, for an operator's CA
// (--key) and for berth's development CA (no flags at all).
func TestDPSCertificateCreateVerify(t *testing.T) {
	clearEnv(t)
	root := testcerts.Valid(t, "root", nil, true, time.Now())
	rootFile, rootKey := caFiles(t, root)
	devDir := t.TempDir()
	dev, _, err := pki.LoadOrCreateCA(filepath.Join(devDir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		ca    *x509.Certificate
		pemCA string
	}{
		{"an operator's CA with --key", []string{"--path", rootFile, "--key", rootKey}, root.Cert, root.PEM()},
		{"berth's development CA by default", []string{"--data-dir", devDir}, dev.Cert, string(dev.CertPEM)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newServiceFake(t, reply{status: 404, body: cert404}, reply{status: 201, body: certJSON},
				reply{status: 200, body: codeJSON}, reply{status: 200, body: verifiedJSON})
			// A later --data-dir wins over the fake's.
			args := append(f.flags(), "dps", "certificate", "create", "--name", "root-1", "--verify")
			out, _, err := run(t, append(args, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if canonical(t, out) != canonical(t, verifiedJSON) {
				t.Errorf("output %s", out)
			}
			reqs := f.requests()
			want := canonicalLines(t, []string{"GET /certificates/root-1", `PUT /certificates/root-1 {"certificate":` + jsonString(tt.pemCA) + `}`,
				"POST /certificates/root-1/generateVerificationCode"})
			if len(reqs) != 4 || strings.Join(reqs[:3], "\n") != strings.Join(want, "\n") {
				t.Fatalf("requests\n got %s\nwant %s then the verify", strings.Join(reqs, "\n"), strings.Join(want, "\n"))
			}
			body, ok := strings.CutPrefix(reqs[3], "POST /certificates/root-1/verify ")
			if !ok {
				t.Fatalf("last request %s", reqs[3])
			}
			var b struct{ Certificate string }
			if err := json.Unmarshal([]byte(body), &b); err != nil {
				t.Fatal(err)
			}
			pc, err := dps.ParseCertificate(b.Certificate)
			if err != nil {
				t.Fatal(err)
			}
			if pc.Subject.CommonName != "C0DE" {
				t.Errorf("proof CN %q, want the code", pc.Subject.CommonName)
			}
			if err := pc.CheckSignatureFrom(tt.ca); err != nil {
				t.Errorf("proof not signed by the CA: %v", err)
			}
			if strings.Contains(out+body, "PRIVATE KEY") {
				t.Error("a private key was sent or printed")
			}
		})
	}
}

// TestX509EnrollmentFlags: the certificate flags fill clientCertificates,
// signingCertificates or caReferences, as az's do.
func TestX509EnrollmentFlags(t *testing.T) {
	clearEnv(t)
	now := time.Now()
	root := testcerts.Valid(t, "root", nil, true, now)
	devCert := testcerts.Valid(t, "dev-1", nil, false, now)
	devCert2 := testcerts.Valid(t, "dev-1", nil, false, now)
	rootFile, _ := caFiles(t, root)
	devFile := writeTemp(t, "dev-1.crt", []byte(devCert.PEM()+root.PEM())) // leaf, then chain
	dev2File := writeTemp(t, "dev-2.crt", []byte(devCert2.PEM()))
	cert := func(c *testcerts.Cert) string { return `{"certificate":` + jsonString(c.PEM()) + `}` }
	const (
		info        = `{"subjectName":"CN=dev-1","sha1Thumbprint":"AB","sha256Thumbprint":"CD","issuerName":"CN=dev-1","notBeforeUtc":"2024-01-01T00:00:00.0000000Z","notAfterUtc":"2025-01-01T00:00:00.0000000Z","serialNumber":"1","version":3}`
		times       = `"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null`
		clientAtt   = `{"type":"x509","x509":{"clientCertificates":{"primary":{"info":` + info + `}}}}`
		signingAtt  = `{"type":"x509","x509":{"signingCertificates":{"primary":{"info":` + info + `}}}}`
		x509Enroll  = `{"registrationId":"dev-1","attestation":` + clientAtt + `,"etag":"e1",` + times + `}`
		x509Group   = `{"enrollmentGroupId":"g1","attestation":` + signingAtt + `,"etag":"ge",` + times + `}`
		putEnroll   = `PUT /enrollments/dev-1 {"registrationId":"dev-1","attestation":{"type":"x509","x509":{"clientCertificates":`
		putGroup    = `PUT /enrollmentGroups/g1 {"enrollmentGroupId":"g1","attestation":{"type":"x509","x509":`
		enrollCheck = "GET /enrollments/dev-1"
		groupCheck  = "GET /enrollmentGroups/g1"
	)
	runServiceCases(t, nil, []serviceCase{
		{
			name:     "individual with primary and secondary; info shown as returned",
			args:     []string{"enrollment", "create", "dev-1", "--attestation-type", "x509", "--certificate-path", devFile, "--secondary-certificate-path", dev2File},
			replies:  []reply{{status: 404, body: notFound}, {status: 200, body: x509Enroll}},
			wantReqs: []string{enrollCheck, putEnroll + `{"primary":` + cert(devCert) + `,"secondary":` + cert(devCert2) + `}}},` + times + `}`},
			wantOut:  x509Enroll,
		},
		{
			name:     "the certificate flags imply x509",
			args:     []string{"enrollment", "create", "dev-1", "--certificate-path", devFile},
			replies:  []reply{{status: 404, body: notFound}, {status: 200, body: x509Enroll}},
			wantReqs: []string{enrollCheck, putEnroll + `{"primary":` + cert(devCert) + `}}},` + times + `}`},
			wantOut:  x509Enroll,
		},
		{
			name:    "not with symmetrickey",
			args:    []string{"enrollment", "create", "dev-1", "--attestation-type", "symmetrickey", "--certificate-path", devFile},
			wantErr: "need --attestation-type x509",
		},
		{
			name:    "individual enrollments take no CA names",
			args:    []string{"enrollment", "create", "dev-1", "--attestation-type", "x509", "--ca-name", "root-1"},
			wantErr: "unknown flag: --ca-name",
		},
		{
			name:     "group by CA reference",
			args:     []string{"enrollment-group", "create", "g1", "--attestation-type", "x509", "--ca-name", "root-1", "--secondary-ca-name", "root-2"},
			replies:  []reply{{status: 404, body: notFound}, {status: 200, body: groupJSON}},
			wantReqs: []string{groupCheck, putGroup + `{"caReferences":{"primary":"root-1","secondary":"root-2"}}},` + times + `}`},
			wantOut:  groupJSON,
		},
		{
			name:     "group by signing certificate",
			args:     []string{"enrollment-group", "create", "g1", "--attestation-type", "x509", "--certificate-path", rootFile},
			replies:  []reply{{status: 404, body: notFound}, {status: 200, body: x509Group}},
			wantReqs: []string{groupCheck, putGroup + `{"signingCertificates":{"primary":` + cert(root) + `}}},` + times + `}`},
			wantOut:  x509Group,
		},
		{
			name:    "group: not both",
			args:    []string{"enrollment-group", "create", "g1", "--certificate-path", rootFile, "--ca-name", "root-1"},
			wantErr: "not both",
		},
		{
			name:    "group x509 needs one",
			args:    []string{"enrollment-group", "create", "g1", "--attestation-type", "x509"},
			wantErr: "--ca-name",
		},
		{
			name:    "group update from signing certificate to CA reference; the rest stays",
			args:    []string{"enrollment-group", "update", "g1", "--ca-name", "root-1"},
			replies: []reply{{status: 200, body: x509Group}, {status: 200, body: signingAtt}, {status: 200, body: groupJSON}},
			wantReqs: []string{groupCheck, "POST /enrollmentGroups/g1/attestationmechanism",
				`PUT /enrollmentGroups/g1 if-match=ge {"enrollmentGroupId":"g1","attestation":{"type":"x509","x509":{"caReferences":{"primary":"root-1"}}},"etag":"ge",` + times + `}`},
			wantOut: groupJSON,
		},
		{
			name:    "individual update of the secondary keeps the primary for the service to fill in",
			args:    []string{"enrollment", "update", "dev-1", "--secondary-certificate-path", dev2File},
			replies: []reply{{status: 200, body: x509Enroll}, {status: 200, body: clientAtt}, {status: 200, body: x509Enroll}},
			wantReqs: []string{enrollCheck, "POST /enrollments/dev-1/attestationmechanism",
				`PUT /enrollments/dev-1 if-match=e1 {"registrationId":"dev-1","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"info":` + info + `},"secondary":` + cert(devCert2) + `}}},"etag":"e1",` + times + `}`},
			wantOut: x509Enroll,
		},
	})
}
