package cli

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/pki"
)

// `berth device certificate create` issues X.509 device certificates, and
// this file holds the certificate and CA handling it shares with `berth
// dps certificate` and the X.509 enrollment flags. Private keys are only
// ever written to files (0600), never printed.

// devCAFile is berth's development CA certificate: client.json's caFile,
// or DATA_DIR/ca/ca.crt when client.json has none.
func devCAFile(g *globals) string {
	if info, err := localconf.Read(g.dataDir); err == nil && info.CAFile != "" {
		return info.CAFile
	}
	return filepath.Join(g.dataDir, "ca", pki.CACertFile)
}

// devCAKeyFile is the key of the development CA certificate file caFile:
// ca.key next to it, as pki lays them out.
func devCAKeyFile(caFile string) string { return filepath.Join(filepath.Dir(caFile), pki.CAKeyFile) }

// loadCA loads a CA certificate (PEM: the CA, optionally followed by its
// own chain) and its private key, to sign certificates with. chain is the
// certificate file's certificates in order, for a device to present
// after its leaf. It never creates anything: a CA made up on the spot
// would be trusted by nobody.
func loadCA(certFile, keyFile string) (ca *pki.CA, chain [][]byte, err error) {
	if _, err := os.Stat(certFile); err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	if _, err := os.Stat(keyFile); err != nil {
		return nil, nil, fmt.Errorf("CA private key: %w", err)
	}
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	if !kp.Leaf.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate (basicConstraints CA:TRUE)", certFile)
	}
	signer, ok := kp.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: the key cannot sign", keyFile)
	}
	ca = &pki.CA{Cert: kp.Leaf, Key: signer, CertPEM: pemCertificates(kp.Certificate[:1]), CertFile: absPath(certFile)}
	return ca, kp.Certificate, nil
}

// loadDevCA loads berth's development CA with its key.
func loadDevCA(g *globals) (*pki.CA, [][]byte, error) {
	file := devCAFile(g)
	ca, chain, err := loadCA(file, devCAKeyFile(file))
	if err != nil {
		return nil, nil, fmt.Errorf("berth's development CA (a berth serving its own TLS certificate has none; give the CA's certificate and key): %w", err)
	}
	return ca, chain, nil
}

// readCertificateFile reads the first certificate of a PEM file (a chain
// file's leaf) or of a DER file (.cer), and returns it as PEM with the
// parsed certificate: the form the service API takes.
func readCertificateFile(path string) (string, *x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	der := data
	if bytes.Contains(data, []byte("-----BEGIN")) {
		der = nil
		for rest := data; der == nil; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				return "", nil, fmt.Errorf("%s: no CERTIFICATE in the PEM file", path)
			}
			if block.Type == "CERTIFICATE" {
				der = block.Bytes
			}
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	return string(pemCertificates([][]byte{cert.Raw})), cert, nil
}

// pemCertificates encodes DER certificates as PEM, in order.
func pemCertificates(ders [][]byte) []byte {
	var b bytes.Buffer
	for _, der := range ders {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return b.Bytes()
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// selfSignedClientCert makes a self-signed device certificate, for
// individual X.509 enrollments and selfSigned hub devices (both match the
// certificate itself, so no CA is involved). It has the shape of pki's
// client certificates: ECDSA P-256, client auth, backdated an hour.
func selfSignedClientCert(cn string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, fmt.Errorf("serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return pemCertificates([][]byte{der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// writeNewFile writes data to a file that must not exist yet: a device's
// key is its identity, and overwriting one by accident cannot be undone.
func writeNewFile(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// loadDeviceCert loads a device's certificate chain and key for X.509
// attestation; keyFile defaults to certFile with the extension .key. The
// key file's name is checked before it is read so that a symmetric key
// given as --key by mistake is never quoted in an error.
func loadDeviceCert(certFile, keyFile string) (*tls.Certificate, error) {
	if keyFile == "" {
		keyFile = strings.TrimSuffix(certFile, filepath.Ext(certFile)) + ".key"
	} else if _, err := os.Stat(keyFile); err != nil {
		return nil, errors.New("--key: with --certificate, --key is the file of the certificate's private key, and there is no such file")
	}
	cert, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &cert, nil
}

// issuedCertificate is what `device certificate create` prints: where the
// files are and the certificate's info, thumbprints included (a hub's
// selfSigned device is created with them).
type issuedCertificate struct {
	RegistrationID  string `json:"registrationId"`
	CertificateFile string `json:"certificateFile"`
	KeyFile         string `json:"keyFile"`
	*dps.X509CertificateInfo
}

func newDeviceCertCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certificate",
		Short: "Make X.509 device certificates",
	}
	cmd.AddCommand(newDeviceCertCreateCmd(g))
	return cmd
}

func newDeviceCertCreateCmd(g *globals) *cobra.Command {
	var (
		regID, caCert, caKey, out string
		selfSigned                bool
		days                      int
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Issue a device certificate and key (CN = registration ID) and print its thumbprints",
		Long: `Issue an X.509 device certificate whose subject CN is the registration ID, with
a new ECDSA P-256 key, and write ID.crt (the certificate, then its CA chain:
what the device presents) and ID.key (0600) into --out. Existing files are
never overwritten.

The certificate is signed by the CA of --ca-cert and --ca-key, by default
berth's development CA (the data directory's ca/ca.crt), or is self-signed
with --self-signed. CA-signed certificates are for X.509 enrollment groups
whose CA is uploaded and verified (berth dps certificate create --verify);
self-signed ones for individual enrollments (--certificate-path) and for hub
devices authenticated by thumbprint. The SHA-1 and SHA-256 thumbprints are
printed for the latter.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days <= 0 {
				return errors.New("--days must be positive")
			}
			// The ID names the files; a path in it would write elsewhere.
			if regID == "" || regID == "." || regID == ".." || strings.ContainsAny(regID, `/\`) {
				return fmt.Errorf("--registration-id %q cannot name a file", regID)
			}
			certFile := filepath.Join(out, regID+".crt")
			keyFile := filepath.Join(out, regID+".key")
			for _, f := range []string{certFile, keyFile} {
				if _, err := os.Lstat(f); err == nil {
					return fmt.Errorf("%s exists; remove it or choose another --out", f)
				}
			}
			validFor := time.Duration(days) * 24 * time.Hour
			var certPEM, keyPEM []byte
			var err error
			if selfSigned {
				certPEM, keyPEM, err = selfSignedClientCert(regID, validFor)
			} else {
				var ca *pki.CA
				var chain [][]byte
				if caCert != "" {
					ca, chain, err = loadCA(caCert, caKey)
				} else {
					ca, chain, err = loadDevCA(g)
				}
				if err != nil {
					return err
				}
				certPEM, keyPEM, err = ca.IssueClientCert(regID, validFor)
				certPEM = append(certPEM, pemCertificates(chain)...)
			}
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			if err := writeNewFile(keyFile, keyPEM, 0o600); err != nil {
				return err
			}
			if err := writeNewFile(certFile, certPEM, 0o644); err != nil {
				os.Remove(keyFile)
				return err
			}
			_, leaf, err := readCertificateFile(certFile)
			if err != nil {
				return err
			}
			return g.print(issuedCertificate{RegistrationID: regID, CertificateFile: absPath(certFile),
				KeyFile: absPath(keyFile), X509CertificateInfo: dps.CertificateInfo(leaf)})
		},
	}
	f := cmd.Flags()
	f.StringVar(&regID, "registration-id", "", "registration ID of the device: the certificate's subject CN (alias --device-id)")
	f.StringVar(&caCert, "ca-cert", "", "PEM file of the signing CA certificate, optionally followed by its chain (default: berth's development CA)")
	f.StringVar(&caKey, "ca-key", "", "PEM file of the signing CA's private key (with --ca-cert)")
	f.BoolVar(&selfSigned, "self-signed", false, "make a self-signed certificate instead of a CA-signed one")
	f.IntVar(&days, "days", 365, "validity in days (a CA-signed certificate never outlives its CA)")
	f.StringVar(&out, "out", ".", "directory to write ID.crt and ID.key into")
	aliasFlags(f, map[string]string{"device-id": "registration-id"})
	_ = cmd.MarkFlagRequired("registration-id")
	cmd.MarkFlagsRequiredTogether("ca-cert", "ca-key")
	cmd.MarkFlagsMutuallyExclusive("self-signed", "ca-cert")
	return cmd
}
