package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"
)

// LoadOrCreateServerCert returns the server certificate in dir/server.crt and
// dir/server.key if it is still good for hosts, and otherwise issues, writes
// and returns a new one. reissued reports whether a new one was written.
//
// "Still good" means: leaf and key match, the leaf chains to ca for server
// authentication, the file holds exactly leaf then ca (so a CA that was
// re-created is noticed), it is valid now and for more than 30 more days, and
// every host has a SAN of its own. A superset of hosts is good enough: a
// removed host costs nothing to keep, and not reissuing spares devices that
// pinned the leaf. Anything wrong with the files short of being unable to read
// them just leads to a new certificate — they are berth's own and derivable.
//
// A new certificate has an ECDSA P-256 key, KeyUsageDigitalSignature,
// ExtKeyUsageServerAuth, exactly the given hosts as SANs (DNS names and IP
// addresses told apart with net.ParseIP), CN = the first host (ignored by
// modern verifiers but shown by tools), and a one-year validity capped at the
// CA's expiry. One year keeps it under Apple's 825-day limit for
// certificates from user-installed roots.
func (ca *CA) LoadOrCreateServerCert(dir string, hosts []string) (cert tls.Certificate, reissued bool, err error) {
	hs, err := parseHosts(hosts)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	certPath := filepath.Join(dir, ServerCertFile)
	keyPath := filepath.Join(dir, ServerKeyFile)

	now := time.Now()
	cert, ok, err := ca.loadServerCert(certPath, keyPath, hs, now)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	if ok {
		return cert, false, nil
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, false, fmt.Errorf("pki: create %s: %w", dir, err)
	}
	cert, certPEM, keyPEM, err := ca.newServerCert(hosts, hs, now)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	// Key first: if berth dies in between, the old certificate no longer
	// matches the new key and the next start simply issues again.
	if err := writeFileAtomic(keyPath, keyPEM, keyPerm); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := writeFileAtomic(certPath, certPEM, certPerm); err != nil {
		return tls.Certificate{}, false, err
	}
	return cert, true, nil
}

// loadServerCert reports ok=false for anything that calls for a new
// certificate, and an error only when the files exist but cannot be read.
func (ca *CA) loadServerCert(certPath, keyPath string, hs hostSet, now time.Time) (tls.Certificate, bool, error) {
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, false, nil
	}
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("pki: read %s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, false, nil
	}
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("pki: read %s: %w", keyPath, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM) // also checks that key and leaf match
	if err != nil {
		return tls.Certificate{}, false, nil
	}
	if len(cert.Certificate) != 2 || string(cert.Certificate[1]) != string(ca.Cert.Raw) {
		return tls.Certificate{}, false, nil
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return tls.Certificate{}, false, nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return tls.Certificate{}, false, nil
	}
	if !now.Add(renewBefore).Before(leaf.NotAfter) || !hs.coveredBy(leaf) {
		return tls.Certificate{}, false, nil
	}
	cert.Leaf = leaf
	return cert, true, nil
}

func (ca *CA) newServerCert(hosts []string, hs hostSet, now time.Time) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("pki: generate server key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: hs.first},
		// DigitalSignature only: with ECDHE the key signs the handshake and
		// never encrypts, so KeyEncipherment would be wrong for ECDSA.
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    hs.dns,
		IPAddresses: hs.ips,
	}
	der, err := ca.issue(tmpl, key.Public(), now, serverValidity)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("pki: server certificate for %q: %w", hosts, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("pki: parse new server certificate: %w", err)
	}
	keyPEM, err = marshalKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	// The chain carries the root too. Strictly a client must already have
	// it, but embedded stacks given only a thumbprint or a loose trust setup
	// cope better with the full chain, and it is one small ECDSA certificate.
	cert = tls.Certificate{
		Certificate: [][]byte{der, ca.Cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}
	return cert, pemCerts(der, ca.Cert.Raw), keyPEM, nil
}

// LoadKeyPair loads a user-supplied certificate chain and key (PEM) for the
// listeners. Unlike the development certificate it is never replaced, so
// problems that would make every device handshake fail — a missing file, a
// key that does not match, an expired leaf — are reported at startup instead.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, fmt.Errorf("pki: both a certificate and a key file are needed (got cert %q, key %q)", certFile, keyFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: load key pair %s, %s: %w", certFile, keyFile, err)
	}
	// Leaf is normally filled in by LoadX509KeyPair, but not under
	// GODEBUG=x509keypairleaf=0; parse it so callers can rely on it.
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("pki: parse %s: %w", certFile, err)
		}
	}
	if now := time.Now(); now.After(cert.Leaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("pki: %s expired on %s", certFile, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, nil
}

// CertSource holds the listeners' current certificate. Set may be called at
// any time, e.g. after a reissue; handshakes that start afterwards use the
// new certificate while those in flight finish with the old one. The zero
// value is ready to use (and serves nothing until Set). It must not be copied.
type CertSource struct {
	cert atomic.Pointer[tls.Certificate]
}

// NewCertSource returns a CertSource that serves cert.
func NewCertSource(cert *tls.Certificate) *CertSource {
	s := &CertSource{}
	s.Set(cert)
	return s
}

// Set replaces the certificate served from now on. The caller must not
// modify *cert afterwards.
func (s *CertSource) Set(cert *tls.Certificate) { s.cert.Store(cert) }

// Get returns the current certificate, or nil before the first Set.
func (s *CertSource) Get() *tls.Certificate { return s.cert.Load() }

// GetCertificate has the signature of tls.Config.GetCertificate.
func (s *CertSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.Get(); c != nil {
		return c, nil
	}
	return nil, errors.New("pki: no server certificate configured")
}

// tls12CipherSuites are the TLS 1.2 suites berth accepts: the ECDHE + AEAD
// suites Azure IoT Hub lists as recommended (AES-GCM with ECDSA and RSA
// certificates), plus ChaCha20-Poly1305 for devices without AES hardware.
// Azure's non-recommended CBC suites are left out on purpose: Go implements
// the CBC-SHA256 ones without Lucky13 countermeasures, and every device stack
// the Azure SDKs build on (OpenSSL, mbedTLS, Schannel, wolfSSL) has AES-GCM.
// The RSA entries never match berth's own ECDSA certificate; they are there
// for a user-supplied RSA certificate (--tls-cert). TLS 1.3 suites are not
// configurable in Go and are all AEAD.
var tls12CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// TLS12CipherSuites returns the TLS 1.2 cipher suites ServerTLSConfig allows
// (a copy; for tests and diagnostics).
func TLS12CipherSuites() []uint16 { return append([]uint16(nil), tls12CipherSuites...) }

// ServerTLSConfig returns the TLS configuration of berth's device listeners.
//
//   - TLS 1.2 and 1.3 only, as Azure IoT Hub with TLS 1.2 enforcement.
//   - Client certificates are requested but neither required nor verified
//     here: SAS devices and X.509 devices share a listener, as on Azure, and
//     whether a presented certificate is acceptable depends on the
//     enrollment, which only the DPS/hub layer knows (it reads
//     ConnectionState().PeerCertificates).
//   - nextProtos is the ALPN list, in server preference order. The HTTPS
//     listener passes []string{"http/1.1"} so h2 is never negotiated, even
//     when a client offers it first (the Azure C SDK matches HTTP/1.1 header
//     names case-sensitively). MQTT passes nil: no ALPN, and whatever a
//     client offers is ignored. A client offering only protocols that are
//     not in a non-empty list fails the handshake (no_application_protocol).
//   - The certificate comes from src at each handshake, so it can be swapped
//     without restarting the listeners.
//   - Key exchange: X25519 whenever the client offers it, the hybrid
//     X25519MLKEM768 only for a client that does not (see classicalKX).
func ServerTLSConfig(src *CertSource, nextProtos []string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		MaxVersion:     tls.VersionTLS13,
		CipherSuites:   TLS12CipherSuites(),
		ClientAuth:     tls.RequestClientCert,
		NextProtos:     append([]string(nil), nextProtos...),
		GetCertificate: src.GetCertificate,
	}
	classical := cfg.Clone()
	classical.CurvePreferences = slices.Clone(classicalKX)
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(hello.SupportedCurves, tls.X25519) {
			return classical, nil
		}
		return nil, nil
	}
	return cfg
}

// classicalKX are the key exchanges of a handshake with a client that offers
// X25519. crypto/tls (Go 1.26) always picks a post-quantum hybrid when both
// sides support one, whatever CurvePreferences' order, and Go clients send
// both an X25519MLKEM768 and an X25519 key share: every Go device (and the
// bench's generator) would pay the ML-KEM encapsulation, about 0.3 ms of
// server CPU per handshake here (docs/benchmarks.md), a quarter of a
// provisioning. Device TLS stacks (mbedTLS, wolfSSL, OpenSSL before 3.5)
// offer X25519 or P-256 only and are not affected. A client that offers
// only the hybrid still gets it, from the default configuration. The
// trade-off — no post-quantum protection for a client that offers both —
// is the operator's to revisit; it is named in docs/benchmarks.md.
// The configuration GetConfigForClient returns shares the original's
// session ticket keys (crypto/tls initialises it from the original).
var classicalKX = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384}
