package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var testHosts = []string{"localhost", "127.0.0.1", "hub.berth.test"}

func newTestCA(t testing.TB) *CA {
	t.Helper()
	ca, created, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("created = false for an empty directory")
	}
	return ca
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca") // does not exist yet
	ca, created, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("first call: created = false")
	}
	c := ca.Cert
	if !strings.HasPrefix(c.Subject.CommonName, "berth development CA ") || len(c.Subject.CommonName) <= len("berth development CA ") {
		t.Errorf("CN = %q", c.Subject.CommonName)
	}
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 1 {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v MaxPathLen=%d", c.IsCA, c.BasicConstraintsValid, c.MaxPathLen)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if life := c.NotAfter.Sub(time.Now()); life < 9*365*24*time.Hour || life > 11*365*24*time.Hour {
		t.Errorf("CA valid for %v more, want ~10 years", life)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if want := filepath.Join(dir, CACertFile); !filepath.IsAbs(ca.CertFile) || filepath.Base(ca.CertFile) != CACertFile {
		t.Errorf("CertFile = %q, want absolute %s", ca.CertFile, want)
	}
	onDisk, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, ca.CertPEM) {
		t.Error("CertPEM differs from ca.crt")
	}

	again, created, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("second call: created = true")
	}
	if again.Cert.SerialNumber.Cmp(c.SerialNumber) != 0 || !bytes.Equal(again.Cert.Raw, c.Raw) {
		t.Error("reloaded CA certificate differs")
	}
	if !publicKeysEqual(again.Key.Public(), ca.Key.Public()) {
		t.Error("reloaded CA key differs")
	}
	if again.CertFile != ca.CertFile || !bytes.Equal(again.CertPEM, ca.CertPEM) {
		t.Error("reloaded CertFile/CertPEM differ")
	}
}

func TestLoadOrCreateCABrokenFiles(t *testing.T) {
	other := newTestCA(t)
	otherKey, err := marshalKey(other.Key)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		setup       func(t *testing.T, dir string, ca *CA) // ca is a valid CA already in dir
		wantErr     string
		wantCreated bool
	}{
		{
			name:    "key missing",
			setup:   func(t *testing.T, dir string, _ *CA) { mustRemove(t, filepath.Join(dir, CAKeyFile)) },
			wantErr: "ca.key",
		},
		{
			name: "key of another CA",
			setup: func(t *testing.T, dir string, _ *CA) {
				mustWrite(t, filepath.Join(dir, CAKeyFile), otherKey)
			},
			wantErr: "does not match",
		},
		{
			name: "certificate garbage",
			setup: func(t *testing.T, dir string, _ *CA) {
				mustWrite(t, filepath.Join(dir, CACertFile), []byte("not PEM"))
			},
			wantErr: "no certificate",
		},
		{
			name: "not a CA",
			setup: func(t *testing.T, dir string, ca *CA) {
				certPEM, _, err := ca.IssueClientCert("device", time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				mustWrite(t, filepath.Join(dir, CACertFile), certPEM)
			},
			wantErr: "not a CA",
		},
		{
			// An interrupted creation leaves a key but no certificate;
			// nobody can trust that CA yet, so it is replaced.
			name:        "orphan key",
			setup:       func(t *testing.T, dir string, _ *CA) { mustRemove(t, filepath.Join(dir, CACertFile)) },
			wantCreated: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ca, _, err := LoadOrCreateCA(dir)
			if err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dir, ca)
			_, created, err := LoadOrCreateCA(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if created != tt.wantCreated {
				t.Errorf("created = %v, want %v", created, tt.wantCreated)
			}
		})
	}
}

func TestServerCertVerifies(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	hosts := append(slices.Clone(testHosts), "::1")
	cert, reissued, err := ca.LoadOrCreateServerCert(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if !reissued {
		t.Error("reissued = false for an empty directory")
	}
	leaf := cert.Leaf
	if leaf == nil {
		t.Fatal("Leaf not set")
	}
	if leaf.Subject.CommonName != "localhost" {
		t.Errorf("CN = %q, want the first host", leaf.Subject.CommonName)
	}
	if !slices.Equal(leaf.DNSNames, []string{"localhost", "hub.berth.test"}) {
		t.Errorf("DNSNames = %q", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || !leaf.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Errorf("IPAddresses = %v", leaf.IPAddresses)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || leaf.IsCA {
		t.Errorf("KeyUsage=%v ExtKeyUsage=%v IsCA=%v", leaf.KeyUsage, leaf.ExtKeyUsage, leaf.IsCA)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if life := leaf.NotAfter.Sub(time.Now()); life < 360*24*time.Hour || life > 370*24*time.Hour {
		t.Errorf("leaf valid for %v more, want ~1 year", life)
	}
	if len(cert.Certificate) != 2 || !bytes.Equal(cert.Certificate[1], ca.Cert.Raw) {
		t.Error("chain is not leaf, CA")
	}
	if n := countPEMCerts(t, filepath.Join(dir, ServerCertFile)); n != 2 {
		t.Errorf("server.crt holds %d certificates, want 2 (leaf, CA)", n)
	}

	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, name := range []string{"localhost", "127.0.0.1", "hub.berth.test", "HUB.berth.test", "::1"} {
		t.Run(name, func(t *testing.T) {
			_, err := leaf.Verify(x509.VerifyOptions{
				Roots:     roots,
				DNSName:   name,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	for _, name := range []string{"example.com", "127.0.0.2", "berth.test"} {
		t.Run("not "+name, func(t *testing.T) {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err == nil {
				t.Error("verified for a host that is not in the certificate")
			}
		})
	}
}

func TestServerCertReissue(t *testing.T) {
	ca := newTestCA(t)
	otherCA := newTestCA(t)
	hour, day := time.Hour, 24*time.Hour
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) // before the second call; the first issued for testHosts
		hosts []string
		want  bool // reissued
	}{
		{name: "same hosts", hosts: testHosts, want: false},
		{name: "reordered, other case, duplicate", hosts: []string{"HUB.berth.test.", "127.0.0.1", "localhost", "localhost"}, want: false},
		{name: "subset", hosts: []string{"hub.berth.test"}, want: false},
		{name: "host added", hosts: append(slices.Clone(testHosts), "berth.example"), want: true},
		{name: "IP added", hosts: append(slices.Clone(testHosts), "10.0.0.7"), want: true},
		{
			name:  "near expiry",
			setup: func(t *testing.T, dir string) { writeServerCert(t, dir, ca, testHosts, -day, 10*day) },
			hosts: testHosts, want: true,
		},
		{
			name:  "expired",
			setup: func(t *testing.T, dir string) { writeServerCert(t, dir, ca, testHosts, -2*day, -hour) },
			hosts: testHosts, want: true,
		},
		{
			name:  "31 days left is fine",
			setup: func(t *testing.T, dir string) { writeServerCert(t, dir, ca, testHosts, -day, 31*day) },
			hosts: testHosts, want: false,
		},
		{
			name:  "not yet valid",
			setup: func(t *testing.T, dir string) { writeServerCert(t, dir, ca, testHosts, day, 100*day) },
			hosts: testHosts, want: true,
		},
		{
			name:  "signed by another CA",
			setup: func(t *testing.T, dir string) { writeServerCert(t, dir, otherCA, testHosts, -day, 100*day) },
			hosts: testHosts, want: true,
		},
		{
			name:  "key missing",
			setup: func(t *testing.T, dir string) { mustRemove(t, filepath.Join(dir, ServerKeyFile)) },
			hosts: testHosts, want: true,
		},
		{
			name: "key does not match",
			setup: func(t *testing.T, dir string) {
				_, keyPEM, err := ca.IssueClientCert("x", time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				mustWrite(t, filepath.Join(dir, ServerKeyFile), keyPEM)
			},
			hosts: testHosts, want: true,
		},
		{
			name:  "certificate garbage",
			setup: func(t *testing.T, dir string) { mustWrite(t, filepath.Join(dir, ServerCertFile), []byte("garbage")) },
			hosts: testHosts, want: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			first, reissued, err := ca.LoadOrCreateServerCert(dir, testHosts)
			if err != nil || !reissued {
				t.Fatalf("first call: reissued=%v err=%v", reissued, err)
			}
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			onDisk := readFile(t, filepath.Join(dir, ServerCertFile))
			got, reissued, err := ca.LoadOrCreateServerCert(dir, tt.hosts)
			if err != nil {
				t.Fatal(err)
			}
			if reissued != tt.want {
				t.Fatalf("reissued = %v, want %v", reissued, tt.want)
			}
			if !reissued {
				if !bytes.Equal(pemCerts(got.Certificate...), onDisk) {
					t.Error("returned certificate is not the one on disk")
				}
				if tt.setup == nil && !bytes.Equal(got.Certificate[0], first.Certificate[0]) {
					t.Error("returned a different certificate without reissuing")
				}
				return
			}
			// A reissued certificate covers exactly the requested hosts,
			// verifies, and is what a third call loads without reissuing.
			hs, err := parseHosts(tt.hosts)
			if err != nil {
				t.Fatal(err)
			}
			if !hs.coveredBy(got.Leaf) || len(got.Leaf.DNSNames)+len(got.Leaf.IPAddresses) != len(hs.dns)+len(hs.ips) {
				t.Errorf("SANs %q %v, want exactly %q", got.Leaf.DNSNames, got.Leaf.IPAddresses, tt.hosts)
			}
			if err := got.Leaf.CheckSignatureFrom(ca.Cert); err != nil {
				t.Error(err)
			}
			third, reissued, err := ca.LoadOrCreateServerCert(dir, tt.hosts)
			if err != nil || reissued {
				t.Fatalf("third call: reissued=%v err=%v", reissued, err)
			}
			if !bytes.Equal(third.Certificate[0], got.Certificate[0]) {
				t.Error("third call returned a different certificate")
			}
		})
	}
}

func TestServerCertBadHosts(t *testing.T) {
	ca := newTestCA(t)
	for _, hosts := range [][]string{nil, {}, {""}, {"localhost", " "}, {"localhost:8883"}, {"https://hub.berth.test"}, {"fe80::1%eth0"}} {
		if _, _, err := ca.LoadOrCreateServerCert(t.TempDir(), hosts); err == nil {
			t.Errorf("hosts %q: no error", hosts)
		}
	}
}

func TestFileModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permission bits on Windows")
	}
	root := t.TempDir()
	caDir := filepath.Join(root, "ca")
	ca, _, err := LoadOrCreateCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.LoadOrCreateServerCert(root, testHosts); err != nil {
		t.Fatal(err)
	}
	// Reissue once too, so replacing an existing file is covered.
	if _, reissued, err := ca.LoadOrCreateServerCert(root, []string{"other.berth.test"}); err != nil || !reissued {
		t.Fatalf("reissued=%v err=%v", reissued, err)
	}
	for path, want := range map[string]os.FileMode{
		filepath.Join(caDir, CAKeyFile):     0o600,
		filepath.Join(caDir, CACertFile):    0o644,
		filepath.Join(root, ServerKeyFile):  0o600,
		filepath.Join(root, ServerCertFile): 0o644,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", filepath.Base(path), got, want)
		}
	}
	// No temporary files are left behind.
	for _, d := range []string{root, caDir} {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("leftover %s", filepath.Join(d, e.Name()))
			}
		}
	}
}

func TestIssueClientCert(t *testing.T) {
	ca := newTestCA(t)
	certPEM, keyPEM, err := ca.IssueClientCert("device-01", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if len(pair.Certificate) != 1 {
		t.Errorf("certPEM holds %d certificates, want the leaf only", len(pair.Certificate))
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "device-01" {
		t.Errorf("CN = %q", leaf.Subject.CommonName)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if life := time.Until(leaf.NotAfter); life < 47*time.Hour || life > 48*time.Hour {
		t.Errorf("valid for %v more, want 48h", life)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client auth: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a device certificate verifies for server auth")
	}

	long, _, err := ca.IssueClientCert("device-02", 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := parseFirstCert(long); c.NotAfter.After(ca.Cert.NotAfter) {
		t.Error("client certificate outlives the CA")
	}

	for _, tc := range []struct {
		cn  string
		dur time.Duration
	}{{"", time.Hour}, {"device", 0}, {"device", -time.Hour}} {
		if _, _, err := ca.IssueClientCert(tc.cn, tc.dur); err == nil {
			t.Errorf("IssueClientCert(%q, %v): no error", tc.cn, tc.dur)
		}
	}
}

func TestFingerprint(t *testing.T) {
	ca := newTestCA(t)
	fp := Fingerprint(ca.Cert)
	sum := sha256.Sum256(ca.Cert.Raw)
	if want := strings.ToUpper(hex.EncodeToString(sum[:])); fp != want {
		t.Errorf("Fingerprint = %s, want %s", fp, want)
	}
	if len(fp) != 64 || strings.ContainsAny(fp, ":abcdef") {
		t.Errorf("Fingerprint %q is not 64 upper-case hex digits", fp)
	}
}

func TestLoadKeyPair(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	if _, _, err := ca.LoadOrCreateServerCert(dir, testHosts); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)
	cert, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf == nil || len(cert.Certificate) != 2 {
		t.Errorf("Leaf=%v, %d certificates", cert.Leaf != nil, len(cert.Certificate))
	}

	expiredDir := t.TempDir()
	writeServerCert(t, expiredDir, ca, testHosts, -2*time.Hour, -time.Hour)
	_, otherKey, err := ca.IssueClientCert("x", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherKeyFile := filepath.Join(t.TempDir(), "other.key")
	mustWrite(t, otherKeyFile, otherKey)
	for _, tc := range []struct{ name, cert, key string }{
		{"no key given", certFile, ""},
		{"no cert given", "", keyFile},
		{"missing file", filepath.Join(dir, "nope.crt"), keyFile},
		{"key does not match", certFile, otherKeyFile},
		{"expired", filepath.Join(expiredDir, ServerCertFile), filepath.Join(expiredDir, ServerKeyFile)},
	} {
		if _, err := LoadKeyPair(tc.cert, tc.key); err == nil {
			t.Errorf("%s: no error", tc.name)
		} else if !strings.HasPrefix(err.Error(), "pki: ") {
			t.Errorf("%s: error %q lacks the pki: prefix", tc.name, err)
		}
	}
}

func TestServerTLSConfig(t *testing.T) {
	cfg := ServerTLSConfig(&CertSource{}, nil)
	if cfg.MinVersion != tls.VersionTLS12 || cfg.MaxVersion != tls.VersionTLS13 {
		t.Errorf("versions %x..%x", cfg.MinVersion, cfg.MaxVersion)
	}
	if cfg.ClientAuth != tls.RequestClientCert {
		t.Errorf("ClientAuth = %v", cfg.ClientAuth)
	}
	if cfg.NextProtos != nil {
		t.Errorf("NextProtos = %q, want nil", cfg.NextProtos)
	}
	insecure := map[uint16]bool{}
	for _, s := range tls.InsecureCipherSuites() {
		insecure[s.ID] = true
	}
	for _, id := range cfg.CipherSuites {
		name := tls.CipherSuiteName(id)
		if insecure[id] || !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20")) {
			t.Errorf("cipher suite %s is not ECDHE+AEAD", name)
		}
	}
	// The caller's slice is copied, so later changes to it do not leak in.
	protos := []string{"http/1.1"}
	cfg = ServerTLSConfig(&CertSource{}, protos)
	protos[0] = "h2"
	if !slices.Equal(cfg.NextProtos, []string{"http/1.1"}) {
		t.Errorf("NextProtos = %q", cfg.NextProtos)
	}
}

// testServer holds a development CA, a server certificate for testHosts and
// the client configuration that trusts them.
type testServer struct {
	ca    *CA
	src   *CertSource
	roots *x509.CertPool
}

func newTestServer(t testing.TB) *testServer {
	t.Helper()
	ca := newTestCA(t)
	cert, _, err := ca.LoadOrCreateServerCert(t.TempDir(), testHosts)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return &testServer{ca: ca, src: NewCertSource(&cert), roots: roots}
}

func (s *testServer) client(version uint16) *tls.Config {
	return &tls.Config{RootCAs: s.roots, ServerName: "localhost", MinVersion: version, MaxVersion: version}
}

type handshakeResult struct {
	client, server tls.ConnectionState
	clientErr      error
	serverErr      error
}

// handshake runs one TLS handshake over a loopback TCP connection with
// serverCfg on the accepting side and clientCfg on the dialing side.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type serverSide struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan serverSide, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- serverSide{err: err}
			return
		}
		conn := tls.Server(raw, serverCfg)
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		err = conn.Handshake()
		done <- serverSide{state: conn.ConnectionState(), err: err}
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, clientCfg)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var r handshakeResult
	r.clientErr = conn.Handshake()
	r.client = conn.ConnectionState()
	if r.clientErr == nil {
		// In TLS 1.3 the client finishes first; a read makes it wait for the
		// server's verdict on its certificate (or the server's close).
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		conn.Read(make([]byte, 1))
	}
	conn.Close()
	s := <-done
	r.server, r.serverErr = s.state, s.err
	return r
}

func TestHandshake(t *testing.T) {
	s := newTestServer(t)
	mqtt := ServerTLSConfig(s.src, nil)
	https := ServerTLSConfig(s.src, []string{"http/1.1"})
	versions := []struct {
		name string
		v    uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}}
	tests := []struct {
		name       string
		server     *tls.Config
		clientALPN []string
		wantALPN   string
		wantFail   bool
	}{
		{name: "https, client offers h2 first", server: https, clientALPN: []string{"h2", "http/1.1"}, wantALPN: "http/1.1"},
		{name: "https, client offers http/1.1", server: https, clientALPN: []string{"http/1.1"}, wantALPN: "http/1.1"},
		{name: "https, client offers no ALPN", server: https},
		// h2 is never chosen: a client that can only speak h2 is refused
		// (no_application_protocol) rather than served HTTP/2.
		{name: "https, client offers only h2", server: https, clientALPN: []string{"h2"}, wantFail: true},
		{name: "mqtt, client offers no ALPN", server: mqtt},
		{name: "mqtt ignores client ALPN", server: mqtt, clientALPN: []string{"h2", "mqtt"}},
	}
	for _, ver := range versions {
		for _, tt := range tests {
			t.Run(ver.name+"/"+tt.name, func(t *testing.T) {
				c := s.client(ver.v)
				c.NextProtos = tt.clientALPN
				r := handshake(t, tt.server, c)
				if tt.wantFail {
					if r.clientErr == nil && r.serverErr == nil {
						t.Fatalf("handshake succeeded with ALPN %q", r.client.NegotiatedProtocol)
					}
					if r.serverErr == nil || !strings.Contains(r.serverErr.Error(), "application protocol") {
						t.Errorf("server error %v, want an ALPN refusal", r.serverErr)
					}
					return
				}
				if r.clientErr != nil || r.serverErr != nil {
					t.Fatalf("client: %v; server: %v", r.clientErr, r.serverErr)
				}
				if r.client.Version != ver.v {
					t.Errorf("version %x, want %x", r.client.Version, ver.v)
				}
				if r.client.NegotiatedProtocol != tt.wantALPN || r.server.NegotiatedProtocol != tt.wantALPN {
					t.Errorf("ALPN client %q server %q, want %q", r.client.NegotiatedProtocol, r.server.NegotiatedProtocol, tt.wantALPN)
				}
				if ver.v == tls.VersionTLS12 && !slices.Contains(TLS12CipherSuites(), r.client.CipherSuite) {
					t.Errorf("cipher suite %s not in the allowed list", tls.CipherSuiteName(r.client.CipherSuite))
				}
				if len(r.server.PeerCertificates) != 0 {
					t.Error("server saw a client certificate that was not sent")
				}
			})
		}
	}
}

func TestHandshakeRefusesWeakClients(t *testing.T) {
	s := newTestServer(t)
	server := ServerTLSConfig(s.src, nil)
	tests := []struct {
		name string
		cfg  func() *tls.Config
	}{
		{"TLS 1.1", func() *tls.Config { return s.client(tls.VersionTLS11) }},
		{"TLS 1.2 CBC only", func() *tls.Config {
			c := s.client(tls.VersionTLS12)
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
			return c
		}},
		{"wrong server name", func() *tls.Config {
			c := s.client(tls.VersionTLS13)
			c.ServerName = "evil.example"
			return c
		}},
		{"untrusted CA", func() *tls.Config {
			c := s.client(tls.VersionTLS13)
			c.RootCAs = x509.NewCertPool()
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := handshake(t, server, tt.cfg()); r.clientErr == nil {
				t.Fatal("handshake succeeded")
			}
		})
	}
}

func TestClientCertificate(t *testing.T) {
	s := newTestServer(t)
	server := ServerTLSConfig(s.src, nil)
	certPEM, keyPEM, err := s.ca.IssueClientCert("device-01", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	device, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, ver := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, withCert := range []bool{true, false} {
			t.Run(tls.VersionName(ver)+map[bool]string{true: "/with cert", false: "/without cert"}[withCert], func(t *testing.T) {
				c := s.client(ver)
				if withCert {
					c.Certificates = []tls.Certificate{device}
				}
				r := handshake(t, server, c)
				if r.clientErr != nil || r.serverErr != nil {
					t.Fatalf("client: %v; server: %v", r.clientErr, r.serverErr)
				}
				peers := r.server.PeerCertificates
				if !withCert {
					if len(peers) != 0 {
						t.Errorf("server saw %d peer certificates", len(peers))
					}
					return
				}
				if len(peers) != 1 || peers[0].Subject.CommonName != "device-01" {
					t.Fatalf("server peer certificates: %d", len(peers))
				}
				if Fingerprint(peers[0]) != Fingerprint(device.Leaf) {
					t.Error("peer certificate is not the device's")
				}
			})
		}
	}
}

func TestCertSourceSwap(t *testing.T) {
	s := newTestServer(t)
	src := &CertSource{}
	server := ServerTLSConfig(src, nil)

	if r := handshake(t, server, s.client(tls.VersionTLS13)); r.clientErr == nil || r.serverErr == nil {
		t.Fatal("handshake succeeded with no certificate set")
	}
	first := s.src.Get()
	src.Set(first)
	if r := handshake(t, server, s.client(tls.VersionTLS13)); r.clientErr != nil {
		t.Fatal(r.clientErr)
	} else if !bytes.Equal(r.client.PeerCertificates[0].Raw, first.Leaf.Raw) {
		t.Error("served a different certificate")
	}
	second, _, err := s.ca.LoadOrCreateServerCert(t.TempDir(), testHosts)
	if err != nil {
		t.Fatal(err)
	}
	src.Set(&second)
	if r := handshake(t, server, s.client(tls.VersionTLS13)); r.clientErr != nil {
		t.Fatal(r.clientErr)
	} else if !bytes.Equal(r.client.PeerCertificates[0].Raw, second.Leaf.Raw) {
		t.Error("the swapped-in certificate was not served")
	}
}

// BenchmarkHandshake measures one full TLS 1.3 handshake (no resumption) over
// loopback TCP against berth's ECDSA P-256 server certificate, client and
// server in this process, the client verifying the chain as a device would.
// It bounds how many provisioning connections a core can accept. The
// sub-benchmarks differ in the key exchange the client offers: X25519 and
// P-256 are what device stacks use; X25519MLKEM768 alone is a client that
// wants post-quantum protection; GoDefault offers both X25519MLKEM768 and
// X25519 (Go's default, and the bench's generator), and gets X25519.
func BenchmarkHandshake(b *testing.B) {
	s := newTestServer(b)
	server := ServerTLSConfig(s.src, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				conn := tls.Server(raw, server)
				conn.Handshake()
				conn.Close()
			}()
		}
	}()
	addr := ln.Addr().String()
	for _, kx := range []struct {
		name  string
		curve tls.CurveID
	}{{"X25519", tls.X25519}, {"P256", tls.CurveP256}, {"X25519MLKEM768", tls.X25519MLKEM768}, {"GoDefault", 0}} {
		b.Run(kx.name, func(b *testing.B) {
			c := s.client(tls.VersionTLS13)
			if kx.curve != 0 {
				c.CurvePreferences = []tls.CurveID{kx.curve}
			}
			cpu0 := processCPU()
			for b.Loop() {
				raw, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				conn := tls.Client(raw, c)
				if err := conn.Handshake(); err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
			// CPU time (user + system, client and server together) moves
			// far less than wall time on a machine shared with other work.
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// writeServerCert writes dir/server.crt and dir/server.key by hand, valid
// from now+notBefore to now+notAfter, signed by ca.
func writeServerCert(t testing.TB, dir string, ca *CA, hosts []string, notBefore, notAfter time.Duration) {
	t.Helper()
	hs, err := parseHosts(hosts)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hs.first},
		NotBefore:             now.Add(notBefore),
		NotAfter:              now.Add(notAfter),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              hs.dns,
		IPAddresses:           hs.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := marshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, ServerKeyFile), keyPEM)
	mustWrite(t, filepath.Join(dir, ServerCertFile), pemCerts(der, ca.Cert.Raw))
}

func countPEMCerts(t *testing.T, path string) int {
	t.Helper()
	data, n := readFile(t, path), 0
	for {
		var block *pem.Block
		if block, data = pem.Decode(data); block == nil {
			return n
		}
		if block.Type == "CERTIFICATE" {
			n++
		}
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func mustWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustRemove(t testing.TB, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// TestKeyExchangePreference: a client that offers X25519 gets it, even when
// it also offers (and sends a key share for) the post-quantum hybrid, as Go
// clients do by default; a client that offers only the hybrid gets the
// hybrid, and one that offers only P-256 gets P-256.
func TestKeyExchangePreference(t *testing.T) {
	s := newTestServer(t)
	server := ServerTLSConfig(s.src, nil)
	for _, tc := range []struct {
		name  string
		offer []tls.CurveID
		want  tls.CurveID
	}{
		{"Go default (hybrid and X25519 shares)", nil, tls.X25519},
		{"hybrid only", []tls.CurveID{tls.X25519MLKEM768}, tls.X25519MLKEM768},
		{"hybrid first, then X25519", []tls.CurveID{tls.X25519MLKEM768, tls.X25519}, tls.X25519},
		{"P-256 only", []tls.CurveID{tls.CurveP256}, tls.CurveP256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := s.client(tls.VersionTLS13)
			c.CurvePreferences = tc.offer
			r := handshake(t, server, c)
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("handshake: client %v, server %v", r.clientErr, r.serverErr)
			}
			if r.client.CurveID != tc.want {
				t.Errorf("negotiated %v, want %v", r.client.CurveID, tc.want)
			}
		})
	}
}

// processCPU is this process's user + system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
