// Package pki is berth's built-in development PKI, in the spirit of Caddy's
// local CA: a long-lived ECDSA P-256 root kept in the data directory, a
// short-lived server certificate for the configured hosts that is reissued on
// demand, client certificates for X.509 attestation tests, and the TLS
// configuration of the device listeners.
//
// Everything is ECDSA P-256: it is what Azure's ECC endpoints use, every
// device TLS stack (mbedTLS, OpenSSL, Schannel, wolfSSL, BearSSL) supports it,
// and the handshake is several times cheaper for the server than RSA-2048,
// which matters because the TLS handshake is the physical limit of
// provisioning throughput.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside the directories given to LoadOrCreateCA and
// LoadOrCreateServerCert. They are part of berth's documented data layout
// (docs/operations.md).
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 365 * 24 * time.Hour
	// renewBefore is how close to expiry a server certificate may get before
	// it is reissued at load time. Thirty days leaves a month of restarts in
	// which a long-running berth picks up a fresh certificate.
	renewBefore = 30 * 24 * time.Hour
	// backdate moves NotBefore into the past so devices whose clocks run a
	// little behind (common on boards without an RTC that have just synced, or
	// not yet) still accept a certificate issued moments ago.
	backdate = time.Hour

	keyPerm  fs.FileMode = 0o600
	certPerm fs.FileMode = 0o644
)

// CA is berth's development certificate authority.
type CA struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertPEM  []byte // PEM of Cert alone: what devices must trust
	CertFile string // absolute path of ca.crt, for printing and client.json
}

// LoadOrCreateCA loads dir/ca.crt and dir/ca.key, or creates them when
// ca.crt does not exist. created reports whether a new CA was written.
//
// ca.crt is written after ca.key and is the commit marker: a key without a
// certificate is the remnant of an interrupted creation (no device can trust
// it yet) and is overwritten, while a certificate without its key, a key that
// does not match, or an expired root is an error. Those are never repaired
// silently, because replacing a root that devices already trust would break
// every device at once with nothing but a handshake failure to show for it.
func LoadOrCreateCA(dir string) (ca *CA, created bool, err error) {
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)

	certPEM, err := os.ReadFile(certPath)
	switch {
	case err == nil:
		ca, err := loadCA(certPath, keyPath, certPEM)
		if err != nil {
			return nil, false, err
		}
		return ca, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("pki: read %s: %w", certPath, err)
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("pki: create %s: %w", dir, err)
	}
	ca, err = newCA(certPath)
	if err != nil {
		return nil, false, err
	}
	keyPEM, err := marshalKey(ca.Key)
	if err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(keyPath, keyPEM, keyPerm); err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(certPath, ca.CertPEM, certPerm); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

func loadCA(certPath, keyPath string, certPEM []byte) (*CA, error) {
	cert, err := parseFirstCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", certPath, err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: %s: not a CA certificate (IsCA and KeyUsageCertSign required)", certPath)
	}
	if now := time.Now(); now.After(cert.NotAfter) {
		return nil, fmt.Errorf("pki: %s: CA expired on %s; remove %s and %s to create a new one (devices must then trust the new ca.crt)",
			certPath, cert.NotAfter.UTC().Format(time.RFC3339), certPath, keyPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: read %s: %w", keyPath, err)
	}
	key, err := parseSigner(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyPath, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match the public key of %s", keyPath, certPath)
	}
	return &CA{
		Cert:     cert,
		Key:      key,
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		CertFile: absPath(certPath),
	}, nil
}

func newCA(certPath string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	// The random suffix keeps roots of different berth installations apart
	// in trust stores and in error messages ("unknown authority: berth
	// development CA 3f9a1c2e" tells you which data directory to look in).
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("pki: CA id: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   "berth development CA " + hex.EncodeToString(id[:]),
			Organization: []string{"berth"},
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// MaxPathLen 1 rather than 0: DPS X.509 group enrollments are very
		// often made on an intermediate CA (root → intermediate → device),
		// and attestation tests need to build exactly that chain from this
		// root. One level is all that needs; anything deeper is refused by
		// verifiers. The root's key never leaves the data directory, so the
		// extra level does not widen who can issue.
		MaxPathLen: 1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse new CA certificate: %w", err)
	}
	return &CA{
		Cert:     cert,
		Key:      key,
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		CertFile: absPath(certPath),
	}, nil
}

// IssueClientCert issues a device client certificate: a fresh ECDSA P-256
// key, ExtKeyUsageClientAuth, CN = commonName (DPS takes the registration ID
// from the CN), valid from now (backdated an hour for clock skew) for
// validFor, but never beyond the CA's own expiry. certPEM holds the leaf
// only — devices send it and the server already knows the root — and keyPEM
// is PKCS#8.
func (ca *CA) IssueClientCert(commonName string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return nil, nil, errors.New("pki: client certificate: empty common name")
	}
	if validFor <= 0 {
		return nil, nil, fmt.Errorf("pki: client certificate %q: validity %v must be positive", commonName, validFor)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate client key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := ca.issue(tmpl, key.Public(), time.Now(), validFor)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: client certificate %q: %w", commonName, err)
	}
	keyPEM, err = marshalKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// issue fills in the fields every leaf shares and signs tmpl with the CA.
func (ca *CA) issue(tmpl *x509.Certificate, pub crypto.PublicKey, now time.Time, validFor time.Duration) ([]byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.Add(validFor)
	// A leaf outliving its issuer is rejected by verifiers anyway; clamping
	// makes the stored NotAfter the real one, so the expiry check in
	// LoadOrCreateServerCert sees the truth.
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = false
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return der, nil
}

// Fingerprint is the SHA-256 of the certificate's DER in upper-case hex
// without colons: the form Azure uses for X.509 thumbprints, so what berth
// prints can be pasted into an enrollment as is.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// randomSerial returns a positive 128-bit serial. RFC 5280 allows up to 20
// octets; 128 random bits keep serials unique without any state.
func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	// Zero is not a valid serial; the chance is 2^-128, but it costs nothing.
	return n.Add(n, big.NewInt(1)), nil
}

func marshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseSigner reads the first private key in PEM data. PKCS#8 is what berth
// writes; SEC 1 ("EC PRIVATE KEY", the output of `openssl ecparam -genkey`)
// and PKCS#1 are accepted so a CA made by hand can be dropped in.
func parseSigner(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no private key in PEM data")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue // e.g. "EC PARAMETERS" ahead of the key
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%T cannot sign", key)
		}
		switch signer.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey:
		default:
			// Ed25519 parses fine but most device TLS stacks cannot verify
			// it; refuse here rather than fail in every handshake.
			return nil, fmt.Errorf("unsupported key type %T (want ECDSA or RSA)", key)
		}
		return signer, nil
	}
}

// parseFirstCert returns the first CERTIFICATE block in PEM data.
func parseFirstCert(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no certificate in PEM data")
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return cert, nil
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// hostSet is a host list split into SAN kinds, normalised and deduplicated.
type hostSet struct {
	first string // the first host, normalised: the CN of a new certificate
	dns   []string
	ips   []net.IP
}

// parseHosts tells DNS names from IP addresses. DNS names are compared
// case-insensitively by every verifier, so they are lower-cased here to make
// "Hub.Example" and "hub.example" one SAN; a trailing dot is dropped for the
// same reason. Ports and URLs are refused with a message that says so,
// because "localhost:8883" in a --host flag is the likeliest mistake.
func parseHosts(hosts []string) (hostSet, error) {
	var hs hostSet
	if len(hosts) == 0 {
		return hs, errors.New("pki: no hosts for the server certificate")
	}
	seen := make(map[string]bool)
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1] // "[::1]" as written in URLs
		}
		if ip := net.ParseIP(h); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			if hs.first == "" {
				hs.first = ip.String()
			}
			if !seen[ip.String()] {
				seen[ip.String()] = true
				hs.ips = append(hs.ips, ip)
			}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if name == "" {
			return hs, fmt.Errorf("pki: empty host name in %q", hosts)
		}
		if strings.ContainsAny(name, ":/ \t") {
			return hs, fmt.Errorf("pki: host %q is not a DNS name or IP address (no ports, schemes or paths)", h)
		}
		if hs.first == "" {
			hs.first = name
		}
		if !seen[name] {
			seen[name] = true
			hs.dns = append(hs.dns, name)
		}
	}
	return hs, nil
}

// coveredBy reports whether every host has a SAN of its own in cert. Matching
// is literal (no wildcard expansion): berth only ever issues the exact names
// it was given, so a literal match is the question that matters.
func (hs hostSet) coveredBy(cert *x509.Certificate) bool {
	for _, name := range hs.dns {
		found := false
		for _, san := range cert.DNSNames {
			if strings.EqualFold(strings.TrimSuffix(san, "."), name) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for _, ip := range hs.ips {
		found := false
		for _, san := range cert.IPAddresses {
			if san.Equal(ip) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// writeFileAtomic replaces path with data so that a reader — or berth after
// a crash — sees either the old file or the new one, never a torn one: write
// a temporary file in the same directory, set its mode, fsync, rename.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp already makes the file 0600, so a key is never readable by
	// others, not even for an instant; Chmod is what widens a certificate to
	// 0644 (and is independent of the umask, unlike OpenFile's perm).
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	// Persist the rename itself. Best effort: directories cannot be opened
	// for sync on every platform (Windows), and the data is already safe.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// pemCerts concatenates DER certificates as PEM, in order.
func pemCerts(ders ...[]byte) []byte {
	var buf bytes.Buffer
	for _, der := range ders {
		// pem.Encode into a bytes.Buffer cannot fail.
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return buf.Bytes()
}
