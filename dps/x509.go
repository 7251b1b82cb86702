package dps

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/refusal"
)

// X509Attestation is Azure's X509Attestation: an individual enrollment's
// device certificates (clientCertificates), or a group's signing (root or
// intermediate) certificates or references to uploaded, verified CA
// certificates (caReferences).
type X509Attestation struct {
	ClientCertificates  *X509Certificates `json:"clientCertificates,omitempty"`
	SigningCertificates *X509Certificates `json:"signingCertificates,omitempty"`
	CAReferences        *X509CAReferences `json:"caReferences,omitempty"`
}

// X509Certificates is a primary and an optional secondary certificate.
type X509Certificates struct {
	Primary   *X509CertificateWithInfo `json:"primary,omitempty"`
	Secondary *X509CertificateWithInfo `json:"secondary,omitempty"`
}

// X509CertificateWithInfo carries a certificate as clients send it (PEM or
// base64 DER) and, in answers, only its info: the service never returns
// the certificate itself.
type X509CertificateWithInfo struct {
	Certificate string               `json:"certificate,omitempty"`
	Info        *X509CertificateInfo `json:"info,omitempty"`
}

// X509CertificateInfo describes a certificate.
type X509CertificateInfo struct {
	SubjectName      string `json:"subjectName"`
	SHA1Thumbprint   string `json:"sha1Thumbprint"`
	SHA256Thumbprint string `json:"sha256Thumbprint"`
	IssuerName       string `json:"issuerName"`
	NotBeforeUTC     Time   `json:"notBeforeUtc"`
	NotAfterUTC      Time   `json:"notAfterUtc"`
	SerialNumber     string `json:"serialNumber"`
	Version          int    `json:"version"`
}

// X509CAReferences names uploaded CA certificates.
type X509CAReferences struct {
	Primary   string `json:"primary,omitempty"`
	Secondary string `json:"secondary,omitempty"`
}

// ParseCertificate reads a certificate in any of the forms Azure accepts
// wherever one is uploaded (enrollments, groups, CA certificates and their
// proofs of possession): PEM; base64 of DER (a .cer file, what the C# SDK
// sends); and base64 of a PEM file's content (what Microsoft's Node SDK
// tests send). Whitespace and line breaks in base64 are ignored.
func ParseCertificate(s string) (*x509.Certificate, error) {
	s = strings.TrimSpace(s)
	der, err := pemCertificate([]byte(s))
	if err != nil {
		return nil, err
	}
	if der == nil {
		b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), ""))
		if err != nil {
			return nil, errors.New("not PEM and not base64 of DER or PEM")
		}
		// A DER certificate starts with a SEQUENCE (0x30); base64 of a
		// PEM file decodes to text that holds a PEM block.
		if der, err = pemCertificate(b); err != nil {
			return nil, err
		}
		if der == nil {
			der = b
		}
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

// pemCertificate returns the DER of b's first PEM block, nil when b holds
// no PEM block, or an error when that block is not a certificate.
func pemCertificate(b []byte) ([]byte, error) {
	block, _ := pem.Decode(b)
	switch {
	case block == nil:
		return nil, nil
	case block.Type != "CERTIFICATE":
		return nil, fmt.Errorf("PEM block is %q, not CERTIFICATE", block.Type)
	}
	return block.Bytes, nil
}

// Thumbprints are a certificate's SHA-1 and SHA-256 hashes of its DER, in
// upper-case hex as Azure shows them.
func Thumbprints(c *x509.Certificate) (sha1Hex, sha256Hex string) {
	s1 := sha1.Sum(c.Raw)
	s2 := sha256.Sum256(c.Raw)
	return strings.ToUpper(hex.EncodeToString(s1[:])), strings.ToUpper(hex.EncodeToString(s2[:]))
}

// CertificateInfo describes c as the service API shows it.
func CertificateInfo(c *x509.Certificate) *X509CertificateInfo {
	s1, s2 := Thumbprints(c)
	return &X509CertificateInfo{
		SubjectName:      c.Subject.String(),
		SHA1Thumbprint:   s1,
		SHA256Thumbprint: s2,
		IssuerName:       c.Issuer.String(),
		NotBeforeUTC:     Time{c.NotBefore.UTC()},
		NotAfterUTC:      Time{c.NotAfter.UTC()},
		SerialNumber:     strings.ToUpper(c.SerialNumber.Text(16)),
		Version:          c.Version,
	}
}

// normalizeX509 checks an X.509 attestation and fills each certificate's
// info. Individual enrollments take clientCertificates; groups
// signingCertificates or caReferences (which must name uploaded
// certificates; they may be verified later, but only a verified one
// authenticates devices).
func (s *Service) normalizeX509(ctx context.Context, a *X509Attestation, group bool) error {
	invalid := func(format string, args ...any) error {
		return azerr.Newf(azerr.DPSInvalidEnrollment, format, args...)
	}
	if a == nil {
		return invalid("An x509 attestation needs its x509 certificates.")
	}
	fill := func(cs *X509Certificates, what string) error {
		if cs == nil || cs.Primary == nil || cs.Primary.Certificate == "" {
			return invalid("x509.%s.primary.certificate is required.", what)
		}
		for _, c := range []*X509CertificateWithInfo{cs.Primary, cs.Secondary} {
			if c == nil {
				continue
			}
			cert, err := ParseCertificate(c.Certificate)
			if err != nil {
				return invalid("x509.%s: %v", what, err)
			}
			c.Info = CertificateInfo(cert)
		}
		return nil
	}
	switch {
	case !group:
		if a.SigningCertificates != nil || a.CAReferences != nil {
			return invalid("An individual enrollment authenticates by clientCertificates only.")
		}
		return fill(a.ClientCertificates, "clientCertificates")
	case a.ClientCertificates != nil:
		return invalid("An enrollment group authenticates by signingCertificates or caReferences, not clientCertificates.")
	case a.SigningCertificates != nil && a.CAReferences != nil:
		return invalid("Give signingCertificates or caReferences, not both.")
	case a.SigningCertificates != nil:
		return fill(a.SigningCertificates, "signingCertificates")
	case a.CAReferences != nil && a.CAReferences.Primary != "":
		for _, name := range []string{a.CAReferences.Primary, a.CAReferences.Secondary} {
			if name == "" {
				continue
			}
			if _, err := s.GetCertificate(ctx, name); err != nil {
				return invalid("x509.caReferences: certificate %q is not uploaded.", name)
			}
		}
		return nil
	}
	return invalid("An x509 enrollment group needs signingCertificates or caReferences.")
}

// keepCertificates fills certificates a client left out (it read the
// enrollment, which shows only their info, and sent it back) from the
// stored version, so that such a read-modify-write keeps them.
func keepCertificates(a, prev *X509Attestation) {
	if a == nil || prev == nil {
		return
	}
	pairs := [][2]*X509Certificates{{a.ClientCertificates, prev.ClientCertificates}, {a.SigningCertificates, prev.SigningCertificates}}
	for _, p := range pairs {
		cur, old := p[0], p[1]
		if cur == nil || old == nil {
			continue
		}
		if cur.Primary != nil && cur.Primary.Certificate == "" && old.Primary != nil {
			cur.Primary.Certificate = old.Primary.Certificate
		}
		if cur.Secondary != nil && cur.Secondary.Certificate == "" && old.Secondary != nil {
			cur.Secondary.Certificate = old.Secondary.Certificate
		}
	}
}

// hideCertificates leaves only each certificate's info, as Azure answers.
func hideCertificates(a *X509Attestation) {
	if a == nil {
		return
	}
	for _, cs := range []*X509Certificates{a.ClientCertificates, a.SigningCertificates} {
		if cs == nil {
			continue
		}
		for _, c := range []*X509CertificateWithInfo{cs.Primary, cs.Secondary} {
			if c != nil {
				c.Certificate = ""
			}
		}
	}
}

// certsOf parses the certificates of a stored X509Certificates.
func certsOf(cs *X509Certificates) []*x509.Certificate {
	if cs == nil {
		return nil
	}
	var out []*x509.Certificate
	for _, c := range []*X509CertificateWithInfo{cs.Primary, cs.Secondary} {
		if c == nil || c.Certificate == "" {
			continue
		}
		if cert, err := ParseCertificate(c.Certificate); err == nil {
			out = append(out, cert)
		}
	}
	return out
}

// errInvalidCertificate is Azure's answer to a certificate that does not
// authenticate: 401002 "Invalid certificate.".
func errInvalidCertificate(cause error) error {
	e := azerr.Wrap(azerr.DPSInvalidCredentials, cause)
	e.Message = "Invalid certificate."
	return e
}

// authenticateX509 authenticates a device by its TLS client certificate chain
// (leaf first, then the intermediates it sent) per
// docs/spec/dps-protocol.md#x509-attestation: the leaf's subject CN must be
// the registration ID and the leaf valid now; an individual enrollment of
// that ID must list the leaf itself; otherwise the enrollment group whose
// signing or (verified) CA certificate anchors the chain closest to the leaf
// wins.
func (s *Service) authenticateX509(ctx context.Context, regID string, chain []*x509.Certificate, now time.Time) (*attested, error) {
	leaf := chain[0]
	if leaf.Subject.CommonName != regID {
		return nil, errInvalidCertificate(refusal.Newf(refusal.WrongCertificate, "certificate CN %q is not the registration ID", leaf.Subject.CommonName))
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, errInvalidCertificate(refusal.Newf(refusal.Expired, "certificate valid from %s to %s",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	e, err := s.individualEnrollment(ctx, regID)
	switch {
	case err == nil:
		a := e.Attestation
		if a.Type != AttestationX509 || a.X509 == nil {
			return nil, errInvalidCertificate(refusal.Newf(refusal.WrongCredentialType, "enrollment %s attests by %s, not x509", regID, a.Type))
		}
		for _, c := range certsOf(a.X509.ClientCertificates) {
			if !c.Equal(leaf) {
				continue
			}
			// A CA-signed device certificate also needs a verified CA
			// certificate in its chain
			// (docs/spec/dps-protocol.md#x509-attestation); a self-signed one
			// is its own proof.
			if !selfSigned(leaf) {
				if err := s.verifiedChain(ctx, leaf, chain[1:], now); err != nil {
					return nil, errInvalidCertificate(refusal.New(refusal.NotEnrolled, err))
				}
			}
			return &attested{enrollment: e, cert: leaf}, nil
		}
		return nil, errInvalidCertificate(refusal.Newf(refusal.NotEnrolled, "the certificate is not enrollment %s's", regID))
	case !isNotFound(err):
		return nil, err
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	var best *EnrollmentGroup
	bestLen := 0
	groups, err := s.enrollmentGroups(ctx)
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		if g.Attestation.Type != AttestationX509 || g.Attestation.X509 == nil {
			continue
		}
		anchors, err := s.groupAnchors(ctx, g)
		if err != nil {
			return nil, err
		}
		for _, anchor := range anchors {
			roots := x509.NewCertPool()
			roots.AddCert(anchor)
			chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err != nil {
				continue
			}
			for _, ch := range chains {
				if best == nil || len(ch) < bestLen {
					best, bestLen = g.EnrollmentGroup, len(ch)
				}
			}
		}
	}
	if best == nil {
		return nil, errInvalidCertificate(refusal.New(refusal.NotEnrolled, errors.New("no individual enrollment, and no enrollment group's certificate anchors the chain")))
	}
	return &attested{group: best, cert: leaf}, nil
}

// selfSigned reports whether c signed itself. CheckSignature, not
// CheckSignatureFrom: a self-signed device certificate is no CA, and
// CheckSignatureFrom insists on one.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// verifiedChain checks that leaf chains, through the intermediates the
// device sent, to an uploaded and verified CA certificate.
func (s *Service) verifiedChain(ctx context.Context, leaf *x509.Certificate, intermediates []*x509.Certificate, now time.Time) error {
	certs, err := s.certificates(ctx)
	if err != nil {
		return err
	}
	if len(certs.verified) == 0 {
		return errors.New("the CA-signed certificate has no verified CA certificate in its chain")
	}
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: certs.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the CA-signed certificate does not chain to a verified CA certificate: %w", err)
	}
	return nil
}

// groupAnchors are the certificates a group trusts: its signing
// certificates, or its referenced CA certificates that are verified.
func (s *Service) groupAnchors(ctx context.Context, g *cachedGroup) ([]*x509.Certificate, error) {
	a := g.Attestation.X509
	if a.SigningCertificates != nil {
		return g.signing, nil
	}
	if a.CAReferences == nil {
		return nil, nil
	}
	certs, err := s.certificates(ctx)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, name := range []string{a.CAReferences.Primary, a.CAReferences.Secondary} {
		if name == "" {
			continue
		}
		if c := certs.byName[certKey(name)]; c != nil && c.Properties.IsVerified && c.parsed != nil {
			out = append(out, c.parsed)
		}
	}
	return out, nil
}

// TrustedCAs are the certificates berth's hubs accept as the anchor of a
// certificateAuthority device's chain: every verified uploaded CA
// certificate and every X.509 enrollment group's signing certificate (DPS
// created those devices; on Azure the operator uploads the same CA to the
// hub).
func (s *Service) TrustedCAs(ctx context.Context) ([]*x509.Certificate, error) {
	certs, err := s.certificates(ctx)
	if err != nil {
		return nil, err
	}
	groups, err := s.enrollmentGroups(ctx)
	if err != nil {
		return nil, err
	}
	// A new slice: the snapshot's are shared.
	out := append([]*x509.Certificate(nil), certs.verified...)
	for _, g := range groups {
		out = append(out, g.signing...)
	}
	return out, nil
}
