package cli

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/pki"
)

// readChain parses every certificate of a PEM file.
func readChain(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func TestDeviceCertificateCreate(t *testing.T) {
	clearEnv(t)
	now := time.Now()
	devDir := t.TempDir()
	dev, _, err := pki.LoadOrCreateCA(filepath.Join(devDir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	// Valid for longer than the leaves, which never outlive their CA.
	root := testcerts.Issue(t, "root", nil, true, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	inter := testcerts.Issue(t, "inter", root, true, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	// An operator's intermediate with its chain in one file.
	interFile := writeTemp(t, "inter.pem", []byte(inter.PEM()+root.PEM()))
	interKey := writeTemp(t, "inter.key", []byte(inter.KeyPEM(t)))
	leafFile := writeTemp(t, "leaf.pem", []byte(testcerts.Valid(t, "x", root, false, now).PEM()))
	tests := []struct {
		name      string
		args      []string
		wantChain []string // subject CNs, leaf first
		issuer    *x509.Certificate
		maxDays   int
		wantErr   string
	}{
		{name: "berth's development CA by default", args: []string{"--data-dir", devDir, "--registration-id", "dev-1"},
			wantChain: []string{"dev-1", dev.Cert.Subject.CommonName}, issuer: dev.Cert, maxDays: 365},
		{name: "an operator's CA with its chain, --days", args: []string{"--registration-id", "dev-1", "--ca-cert", interFile, "--ca-key", interKey, "--days", "30"},
			wantChain: []string{"dev-1", "inter", "root"}, issuer: inter.Cert, maxDays: 30},
		{name: "self-signed", args: []string{"--device-id", "dev-1", "--self-signed", "--days", "2"},
			wantChain: []string{"dev-1"}, maxDays: 2},
		{name: "no development CA", args: []string{"--data-dir", t.TempDir(), "--registration-id", "dev-1"}, wantErr: "development CA"},
		{name: "not a CA", args: []string{"--registration-id", "dev-1", "--ca-cert", leafFile, "--ca-key", interKey}, wantErr: "pki"},
		{name: "key without its certificate", args: []string{"--registration-id", "dev-1", "--ca-key", interKey}, wantErr: "ca-cert ca-key"},
		{name: "CA and self-signed", args: []string{"--registration-id", "dev-1", "--self-signed", "--ca-cert", interFile, "--ca-key", interKey}, wantErr: "self-signed"},
		{name: "an ID that is a path", args: []string{"--registration-id", "../x", "--self-signed"}, wantErr: "cannot name a file"},
		{name: "no ID", args: []string{"--self-signed"}, wantErr: "registration-id"},
		{name: "bad days", args: []string{"--registration-id", "d", "--self-signed", "--days", "0"}, wantErr: "--days"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "certs")
			args := append([]string{"--data-dir", t.TempDir(), "device", "certificate", "create", "--out", out}, tt.args...)
			stdout, _, err := run(t, args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err %v, want %q", err, tt.wantErr)
				}
				if entries, _ := os.ReadDir(out); len(entries) != 0 {
					t.Errorf("files written on error: %v", entries)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(stdout, "PRIVATE KEY") {
				t.Fatal("the private key was printed")
			}
			var got issuedCertificate
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("output %q: %v", stdout, err)
			}
			certFile, keyFile := filepath.Join(out, "dev-1.crt"), filepath.Join(out, "dev-1.key")
			if got.RegistrationID != "dev-1" || got.CertificateFile != certFile || got.KeyFile != keyFile {
				t.Errorf("output %+v", got)
			}
			if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("key file: %v %v, want mode 0600", st, err)
			}
			chain := readChain(t, certFile)
			var cns []string
			for _, c := range chain {
				cns = append(cns, c.Subject.CommonName)
			}
			if strings.Join(cns, ",") != strings.Join(tt.wantChain, ",") {
				t.Errorf("chain %v, want %v", cns, tt.wantChain)
			}
			leaf := chain[0]
			if tt.issuer != nil {
				if err := leaf.CheckSignatureFrom(tt.issuer); err != nil {
					t.Errorf("leaf not signed by %s: %v", tt.issuer.Subject, err)
				}
			} else if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
				t.Errorf("leaf not self-signed: %v", err)
			}
			if leaf.IsCA || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
				t.Errorf("leaf IsCA %v ExtKeyUsage %v, want a client certificate", leaf.IsCA, leaf.ExtKeyUsage)
			}
			if d := time.Until(leaf.NotAfter); d > time.Duration(tt.maxDays)*24*time.Hour || d < time.Duration(tt.maxDays)*24*time.Hour-time.Minute {
				t.Errorf("valid for %v, want %d days", d, tt.maxDays)
			}
			s1, s2 := dps.Thumbprints(leaf)
			if got.X509CertificateInfo == nil || got.SHA1Thumbprint != s1 || got.SHA256Thumbprint != s2 {
				t.Errorf("thumbprints %+v, want %s %s", got.X509CertificateInfo, s1, s2)
			}
			// The files are the key pair a device loads.
			if _, err := loadDeviceCert(certFile, ""); err != nil {
				t.Errorf("load the pair: %v", err)
			}
			// Never overwritten.
			if _, _, err := run(t, args...); err == nil || !strings.Contains(err.Error(), "exists") {
				t.Errorf("second run: err %v, want exists", err)
			}
		})
	}
}

func TestRegisterCertificateFlagErrors(t *testing.T) {
	clearEnv(t)
	c := testcerts.Valid(t, "dev-1", nil, false, time.Now())
	certFile := writeTemp(t, "dev-1.crt", []byte(c.PEM()))
	common := []string{"device", "register", "--id-scope", "s", "--global-endpoint", "h"}
	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--key", devKey20}, "--registration-id"},
		{[]string{"--certificate", certFile, "--group-key", groupKey19}, "certificate group-key"},
		// No dev-1.key next to the certificate.
		{[]string{"--certificate", certFile}, "dev-1.key"},
		// A symmetric key by mistake is not quoted.
		{[]string{"--certificate", certFile, "--key", devKey20}, "there is no such file"},
	} {
		_, _, err := run(t, append(common, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%v: err %v, want %q", tt.args, err, tt.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), devKey20) {
			t.Errorf("%v: the error quotes the key: %v", tt.args, err)
		}
	}
}
