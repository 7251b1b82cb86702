package dps

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// Certificate is an uploaded CA certificate, in the shape of Azure's
// CertificateResponse (az iot dps certificate …). Enrollment groups
// reference it by name (x509.caReferences); it authenticates devices only
// once verified by proof of possession: the owner asks for a verification
// code, signs a certificate whose subject CN is that code with the CA's
// private key, and uploads it.
type Certificate struct {
	Name       string                `json:"name"`
	ETag       string                `json:"etag"`
	Properties CertificateProperties `json:"properties"`
	// pem is the certificate as uploaded; not shown by the service API.
	pem string
}

// CertificateProperties describe an uploaded certificate.
type CertificateProperties struct {
	Subject          string    `json:"subject"`
	Expiry           time.Time `json:"expiry"`
	Thumbprint       string    `json:"thumbprint"`       // SHA-1, upper-case hex
	ThumbprintSHA256 string    `json:"thumbprintSha256"` // berth adds it
	IsVerified       bool      `json:"isVerified"`
	Created          time.Time `json:"created"`
	Updated          time.Time `json:"updated"`
	// VerificationCode is set between generateVerificationCode and verify.
	VerificationCode string `json:"verificationCode,omitempty"`
}

// certificateDoc is the stored form.
type certificateDoc struct {
	Name       string                `json:"name"`
	PEM        string                `json:"pem"`
	Properties CertificateProperties `json:"properties"`
}

// MaxCertificates is Azure's limit of CA certificates per service.
const MaxCertificates = 25

func certKey(name string) string { return strings.ToLower(name) }

// validCertName: 1–64 letters, digits, '-', '_' and '.'.
func validCertName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func decodeCertificate(rec store.Record) (*Certificate, error) {
	var d certificateDoc
	if err := json.Unmarshal(rec.Data, &d); err != nil {
		return nil, fmt.Errorf("dps: decode certificate %s: %w", rec.Key, err)
	}
	return &Certificate{Name: d.Name, ETag: rec.ETag, Properties: d.Properties, pem: d.PEM}, nil
}

func (s *Service) getCertificate(ctx context.Context, name string) (*Certificate, error) {
	rec, err := s.store.Get(ctx, store.KindCertificate, certKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, azerr.Newf(azerr.DPSNotFound, "Certificate %s not found.", name)
	}
	if err != nil {
		return nil, fmt.Errorf("dps: get certificate: %w", err)
	}
	return decodeCertificate(rec)
}

// GetCertificate returns an uploaded certificate (without its PEM).
func (s *Service) GetCertificate(ctx context.Context, name string) (*Certificate, error) {
	return s.getCertificate(ctx, name)
}

// ListCertificates returns every uploaded certificate.
func (s *Service) ListCertificates(ctx context.Context) ([]*Certificate, error) {
	recs, err := s.store.List(ctx, store.KindCertificate, store.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("dps: list certificates: %w", err)
	}
	out := make([]*Certificate, 0, len(recs))
	for _, rec := range recs {
		c, err := decodeCertificate(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func (s *Service) putCertificate(ctx context.Context, d *certificateDoc, cond store.Cond) (*Certificate, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("dps: encode certificate: %w", err)
	}
	rec, err := s.store.Put(ctx, store.Record{Kind: store.KindCertificate, Key: certKey(d.Name), Data: data}, cond)
	s.cacheChanged()
	switch {
	case errors.Is(err, store.ErrPreconditionFailed):
		return nil, azerr.New(azerr.DPSPreconditionFailed)
	case errors.Is(err, store.ErrNotFound):
		return nil, azerr.Newf(azerr.DPSNotFound, "Certificate %s not found.", d.Name)
	case errors.Is(err, store.ErrExists):
		return nil, azerr.Newf(azerr.DPSConflict, "Certificate %s exists.", d.Name)
	case err != nil:
		return nil, fmt.Errorf("dps: write certificate: %w", err)
	}
	return decodeCertificate(rec)
}

// PutCertificate uploads (or replaces) a CA certificate; it is unverified
// until proof of possession, even when it replaces a verified one.
// ifMatch guards a replace ("" creates or replaces unconditionally).
func (s *Service) PutCertificate(ctx context.Context, name, pemOrDER, ifMatch string) (*Certificate, error) {
	if !validCertName(name) {
		return nil, azerr.Newf(azerr.DPSBadRequest, "Certificate name %q is not valid: 1 to 64 letters, digits, '-', '_' or '.'.", name)
	}
	cert, err := ParseCertificate(pemOrDER)
	if err != nil {
		return nil, azerr.Newf(azerr.DPSBadRequest, "The certificate is not valid: %v", err)
	}
	if !cert.IsCA {
		return nil, azerr.Newf(azerr.DPSBadRequest, "The certificate is not a CA certificate (basicConstraints CA:TRUE).")
	}
	now := s.now().UTC()
	s1, s2 := Thumbprints(cert)
	d := &certificateDoc{Name: name, PEM: pemOrDER, Properties: CertificateProperties{
		Subject: cert.Subject.CommonName, Expiry: cert.NotAfter.UTC(), Thumbprint: s1, ThumbprintSHA256: s2,
		Created: now, Updated: now,
	}}
	prev, err := s.getCertificate(ctx, name)
	switch {
	case err == nil:
		d.Name, d.Properties.Created = prev.Name, prev.Properties.Created
	case !isNotFound(err):
		return nil, err
	default:
		if n, err := s.store.Count(ctx, store.KindCertificate, ""); err != nil {
			return nil, fmt.Errorf("dps: count certificates: %w", err)
		} else if n >= MaxCertificates {
			return nil, azerr.Newf(azerr.DPSBadRequest, "At most %d certificates can be uploaded.", MaxCertificates)
		}
	}
	cond := store.Cond{}
	if m := StoreETag(ifMatch); m != "" {
		cond.IfMatch = m
	}
	return s.putCertificate(ctx, d, cond)
}

// DeleteCertificate removes an uploaded certificate. Groups that reference
// it stop authenticating devices.
func (s *Service) DeleteCertificate(ctx context.Context, name, ifMatch string) error {
	err := s.store.Delete(ctx, store.KindCertificate, certKey(name), StoreETag(ifMatch))
	s.cacheChanged()
	switch {
	case errors.Is(err, store.ErrNotFound):
		return azerr.Newf(azerr.DPSNotFound, "Certificate %s not found.", name)
	case errors.Is(err, store.ErrPreconditionFailed):
		return azerr.New(azerr.DPSPreconditionFailed)
	case err != nil:
		return fmt.Errorf("dps: delete certificate: %w", err)
	}
	return nil
}

// GenerateVerificationCode starts proof of possession: the returned
// certificate carries a new random code (Properties.VerificationCode) to
// put in the subject CN of a certificate signed with the CA's key.
func (s *Service) GenerateVerificationCode(ctx context.Context, name, ifMatch string) (*Certificate, error) {
	c, err := s.getCertificate(ctx, name)
	if err != nil {
		return nil, err
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	d := &certificateDoc{Name: c.Name, PEM: c.pem, Properties: c.Properties}
	d.Properties.VerificationCode = strings.ToUpper(hex.EncodeToString(b[:]))
	d.Properties.Updated = s.now().UTC()
	return s.putCertificate(ctx, d, store.Cond{IfMatch: matchOr(ifMatch, c.ETag)})
}

// VerifyCertificate completes proof of possession: proof must be signed by
// the uploaded certificate's key and name the current verification code as
// its subject CN. The code is single-use.
func (s *Service) VerifyCertificate(ctx context.Context, name, ifMatch, proof string) (*Certificate, error) {
	c, err := s.getCertificate(ctx, name)
	if err != nil {
		return nil, err
	}
	if c.Properties.VerificationCode == "" {
		return nil, azerr.Newf(azerr.DPSBadRequest, "No verification code was generated for certificate %s.", name)
	}
	ca, err := ParseCertificate(c.pem)
	if err != nil {
		return nil, fmt.Errorf("dps: stored certificate %s: %w", name, err)
	}
	pc, err := ParseCertificate(proof)
	if err != nil {
		return nil, azerr.Newf(azerr.DPSBadRequest, "The verification certificate is not valid: %v", err)
	}
	if pc.Subject.CommonName != c.Properties.VerificationCode {
		return nil, azerr.Newf(azerr.DPSBadRequest, "The verification certificate's subject CN is not the verification code.")
	}
	if err := pc.CheckSignatureFrom(ca); err != nil {
		return nil, azerr.Newf(azerr.DPSBadRequest, "The verification certificate is not signed by certificate %s: %v", name, err)
	}
	d := &certificateDoc{Name: c.Name, PEM: c.pem, Properties: c.Properties}
	d.Properties.IsVerified = true
	d.Properties.VerificationCode = ""
	d.Properties.Updated = s.now().UTC()
	return s.putCertificate(ctx, d, store.Cond{IfMatch: matchOr(ifMatch, c.ETag)})
}

// matchOr is the client's If-Match, or the version just read so that a
// concurrent change is not overwritten.
func matchOr(ifMatch, current string) string {
	if m := StoreETag(ifMatch); m != "" {
		return m
	}
	return current
}
