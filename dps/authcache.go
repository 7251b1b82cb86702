package dps

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"fmt"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// The enrollment groups and the CA certificates are read by every
// registration of a group member (a symmetric-key member's key is derived
// from its group's; an X.509 member's chain ends at its group's
// certificate), and written rarely. So the service keeps them decoded in
// memory, as one snapshot each, tagged with the cacheGen it was read at. A
// group or certificate write through this Service bumps cacheGen after it
// reaches the store, and so does a change another node made, announced by
// the store (ForgetAuth, called by the server's watch of a shared store —
// docs/operations.md#running-a-cluster). A snapshot older than cacheGen is
// not used: the next registration reads the store again.
//
// A snapshot's groups and certificates are shared by concurrent
// registrations and are never modified; whoever changes one copies it
// first (allocation.go copies the group it sends to a webhook).

// groupSnapshot is every enrollment group, in key order, as read at gen.
type groupSnapshot struct {
	gen    uint64
	groups []*cachedGroup
}

// cachedGroup is a decoded group with what authentication derives from it
// once: the symmetric keys' bytes and the parsed signing certificates.
type cachedGroup struct {
	*EnrollmentGroup
	symKeys [2][]byte // nil: no such key, or not base64
	signing []*x509.Certificate
}

// certSnapshot is every uploaded CA certificate, as read at gen.
type certSnapshot struct {
	gen uint64
	// byName holds every certificate by certKey(name).
	byName map[string]*cachedCert
	// verified are the parsed verified certificates, in name order, and
	// roots the same as a pool (x509.CertPool is safe for concurrent
	// Verify once built).
	verified []*x509.Certificate
	roots    *x509.CertPool
}

type cachedCert struct {
	*Certificate
	parsed *x509.Certificate // nil when the PEM does not parse
}

// ForgetAuth makes the service forget what a change of the record kind
// and key (as the store names them) may have made stale: for an
// individual enrollment, the SessionAuth memories of its registration ID;
// for a group, the cached groups and the memories of the members that
// authenticated by it; for a CA certificate, the cached groups and
// certificates and every memory. The server calls it when the shared
// store announces that another node (or an operator's SQL) changed one,
// and with kind "" when it may have missed announcements (its watch
// reconnected): then everything is forgotten. Every change also makes
// stale the snapshot of whether any individual enrollment exists
// (individualEnrollment): each takes the next authGen.
func (s *Service) ForgetAuth(kind store.Kind, key string) {
	switch kind {
	case store.KindEnrollment:
		s.forgetEnrollment(key)
	case store.KindGroup:
		s.groupChanged(key)
	case store.KindCertificate, "":
		s.cacheChanged()
	}
}

// cacheChanged drops the group and certificate snapshots and every
// SessionAuth's memory. Call it after the write reached the store: a
// snapshot read before is then older than cacheGen.
func (s *Service) cacheChanged() {
	s.cacheGen.Add(1)
	s.forgetAll()
}

// groupChanged drops the group and certificate snapshots and the memories
// of the members that authenticated by group id, after its write reached
// the store.
func (s *Service) groupChanged(id string) {
	s.cacheGen.Add(1)
	s.forgetGroup(id)
}

// individualSnapshot says whether the store held no individual
// enrollment at all when read at authentication generation gen.
type individualSnapshot struct {
	gen  uint64
	none bool
}

// individualEnrollment is getEnrollment for authentication. A fleet
// provisioned through enrollment groups often has no individual
// enrollment at all, and every registration of a group member looked its
// registration ID up first (individual enrollments take precedence) and
// missed: so whether any exists is kept as a snapshot, tagged with the
// authGen read before the store was (any enrollment write bumps it after
// reaching the store, and so does a change another node announces,
// ForgetAuth), and while it says none, the answer is not found without a
// read. Individual enrollments themselves are not cached (see ForgetAuth).
func (s *Service) individualEnrollment(ctx context.Context, regID string) (*IndividualEnrollment, error) {
	gen := s.authGen.Load()
	snap := s.indivSnap.Load()
	if snap == nil || snap.gen != gen {
		recs, err := s.store.List(ctx, store.KindEnrollment, store.ListOptions{Limit: 1})
		if err != nil {
			return nil, fmt.Errorf("dps: list enrollments: %w", err)
		}
		snap = &individualSnapshot{gen: gen, none: len(recs) == 0}
		s.indivSnap.Store(snap)
	}
	if snap.none {
		return nil, azerr.New(azerr.DPSEnrollmentNotFound)
	}
	return s.getEnrollment(ctx, regID)
}

// enrollmentGroups returns every enrollment group, from the snapshot when
// it is current.
func (s *Service) enrollmentGroups(ctx context.Context) ([]*cachedGroup, error) {
	gen := s.cacheGen.Load()
	if snap := s.groupSnap.Load(); snap != nil && snap.gen == gen {
		return snap.groups, nil
	}
	var groups []*cachedGroup
	after := ""
	for {
		recs, err := s.store.List(ctx, store.KindGroup, store.ListOptions{After: after, Limit: 100})
		if err != nil {
			return nil, fmt.Errorf("dps: list groups: %w", err)
		}
		for _, rec := range recs {
			g, err := decodeGroup(rec)
			if err != nil {
				return nil, err
			}
			groups = append(groups, newCachedGroup(g))
		}
		if len(recs) < 100 {
			break
		}
		after = recs[len(recs)-1].Key
	}
	// Stored even when a change came meanwhile: it is tagged with the
	// generation read before the store was, so it is simply not used.
	s.groupSnap.Store(&groupSnapshot{gen: gen, groups: groups})
	return groups, nil
}

func newCachedGroup(g *EnrollmentGroup) *cachedGroup {
	c := &cachedGroup{EnrollmentGroup: g}
	a := g.Attestation
	if a == nil {
		return c
	}
	if sk := a.SymmetricKey; a.Type == AttestationSymmetricKey && sk != nil {
		for i, k := range []string{sk.PrimaryKey, sk.SecondaryKey} {
			if b, err := base64.StdEncoding.DecodeString(k); err == nil && len(b) > 0 {
				c.symKeys[i] = b
			}
		}
	}
	if a.Type == AttestationX509 && a.X509 != nil {
		c.signing = certsOf(a.X509.SigningCertificates)
	}
	return c
}

// certificates returns the CA certificate snapshot, reading the store when
// it is not current.
func (s *Service) certificates(ctx context.Context) (*certSnapshot, error) {
	gen := s.cacheGen.Load()
	if snap := s.certSnap.Load(); snap != nil && snap.gen == gen {
		return snap, nil
	}
	certs, err := s.ListCertificates(ctx)
	if err != nil {
		return nil, err
	}
	snap := &certSnapshot{gen: gen, byName: make(map[string]*cachedCert, len(certs)), roots: x509.NewCertPool()}
	for _, c := range certs {
		cc := &cachedCert{Certificate: c}
		if p, err := ParseCertificate(c.pem); err == nil {
			cc.parsed = p
			if c.Properties.IsVerified {
				snap.verified = append(snap.verified, p)
				snap.roots.AddCert(p)
			}
		}
		snap.byName[certKey(c.Name)] = cc
	}
	s.certSnap.Store(snap)
	return snap, nil
}

// groupKeyMatch checks a token's signature against the keys a group
// derives for regID, without the base64 round trips of sas.DeriveKey and
// Token.Match: the derived key's bytes go straight into the token's HMAC.
// sts is the token's string-to-sign and sig its decoded signature. It
// returns the derived keys (base64, as the device's hub credentials) when
// one verifies. Every key is tried, as Token.Match would have.
func (c *cachedGroup) groupKeyMatch(regID, sts string, sig []byte) ([2]string, bool) {
	var derived [2][sha256.Size]byte
	ok := false
	for i, gk := range c.symKeys {
		if gk == nil {
			continue
		}
		hmacSHA256(gk, regID, &derived[i])
		var want [sha256.Size]byte
		hmacSHA256(derived[i][:], sts, &want)
		if subtle.ConstantTimeCompare(want[:], sig) == 1 {
			ok = true
		}
	}
	if !ok {
		return [2]string{}, false
	}
	var keys [2]string
	for i := range derived {
		if c.symKeys[i] != nil {
			keys[i] = base64.StdEncoding.EncodeToString(derived[i][:])
		}
	}
	return keys, true
}

// hmacBlock is SHA-256's block size, and hmacMaxMsg the longest message
// hmacSHA256 hashes on the stack: a registration ID is at most 128
// characters, a string to sign about 30 more plus the resource's.
const (
	hmacBlock  = 64
	hmacMaxMsg = 448
)

// hmacSHA256 is HMAC-SHA256 (RFC 2104) of msg under key into out. A
// registration walks every symmetric-key group, two HMACs each;
// crypto/hmac allocates its two digests and pads on every call, this
// hashes stack buffers (the common case: key ≤ 64 bytes, short msg) and
// falls back to crypto/hmac otherwise.
func hmacSHA256(key []byte, msg string, out *[sha256.Size]byte) {
	if len(key) > hmacBlock || len(msg) > hmacMaxMsg {
		// Copies of key and of the sum, so that neither key nor out
		// escapes to the heap on the common path.
		h := hmac.New(sha256.New, append([]byte(nil), key...))
		h.Write([]byte(msg))
		copy(out[:], h.Sum(nil))
		return
	}
	var in [hmacBlock + hmacMaxMsg]byte
	copy(in[:], key)
	for i := range hmacBlock {
		in[i] ^= 0x36
	}
	n := hmacBlock + copy(in[hmacBlock:], msg)
	inner := sha256.Sum256(in[:n])
	var o [hmacBlock + sha256.Size]byte
	copy(o[:], key)
	for i := range hmacBlock {
		o[i] ^= 0x5c
	}
	copy(o[hmacBlock:], inner[:])
	*out = sha256.Sum256(o[:])
}
