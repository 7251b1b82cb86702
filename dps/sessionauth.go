package dps

import (
	"crypto/x509"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/sas"
)

// SessionAuth is one device connection's memory of a successful
// authentication, so that the polls that follow a registration on the same
// connection do not look the enrollment up again (an individual enrollment
// read and a walk of every enrollment group per poll, for a group member).
// A front end keeps one per connection, whose credential does not change
// (MQTT: the CONNECT's password or the TLS client certificate), and passes
// it with each poll; nil means no memory.
//
// Only polls use it: a registration always authenticates in full. What a
// poll returns was decided by that registration; the memory is dropped when
// a write could change the outcome of its authentication (authForget): of
// the individual enrollment of its registration ID (which may also now
// take precedence over its group), of the group it authenticated by, of
// any CA certificate; and the credential's own time limits (SAS se, the
// leaf's validity) are checked on every use.
//
// It also remembers the outcome of the connection's last registration when
// that was assigned, so that the poll of its operation does not read back
// the operation and the registration just written (rememberOutcome).
type SessionAuth struct {
	mu    sync.Mutex
	ok    bool
	gen   uint64
	scope string
	regID string
	group string // Key of the enrollment group it authenticated by; "" for an individual enrollment
	token string
	leaf  *x509.Certificate
	tok   sas.Token

	// The connection's last registration, when it ended assigned: its
	// operation ID and the registration state written, remembered at
	// authentication generation opAuthGen and registration generation
	// opRegGen (rememberOutcome).
	opID      string
	opState   *RegistrationState
	opAuthGen uint64
	opRegGen  uint64
}

// maxForgotten bounds the enrollment and group IDs authForget keeps:
// beyond it the IDs are dropped and every memory is forgotten at once, as
// one change of everything.
const maxForgotten = 4096

// authForget says which remembered authentications a change made stale.
// Every change takes the next number of Service.authGen; a memory made
// at generation gen (read before its authentication began) is stale when
// a change numbered above gen touched its registration ID or its group,
// or when everything changed after gen (all).
type authForget struct {
	mu          sync.RWMutex
	all         uint64
	enrollments map[string]uint64 // Key(registration ID) → its last change
	groups      map[string]uint64 // Key(group ID) → its last change
}

// forgetAll makes every SessionAuth's memory stale: a CA certificate
// changed, or the changes of another node may have been missed.
func (s *Service) forgetAll() {
	f := &s.forget
	f.mu.Lock()
	defer f.mu.Unlock()
	f.all = s.authGen.Add(1)
	f.enrollments, f.groups = nil, nil
}

// forgetEnrollment makes stale the memories of registration ID id: its
// individual enrollment was written or deleted.
func (s *Service) forgetEnrollment(id string) { s.forgetID(id, false) }

// forgetGroup makes stale the memories of the members that authenticated
// by group id: it was written or deleted.
func (s *Service) forgetGroup(id string) { s.forgetID(id, true) }

func (s *Service) forgetID(id string, group bool) {
	if id == "" {
		s.forgetAll()
		return
	}
	f := &s.forget
	f.mu.Lock()
	defer f.mu.Unlock()
	gen := s.authGen.Add(1)
	if len(f.enrollments)+len(f.groups) >= maxForgotten {
		f.all, f.enrollments, f.groups = gen, nil, nil
		return
	}
	m := &f.enrollments
	if group {
		m = &f.groups
	}
	if *m == nil {
		*m = map[string]uint64{}
	}
	(*m)[Key(id)] = gen
}

// stale reports whether a memory made at gen of regID (authenticated by
// group, "" for none) has been made stale by a change since.
func (s *Service) stale(gen uint64, regID, group string) bool {
	f := &s.forget
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.all > gen || f.enrollments[Key(regID)] > gen {
		return true
	}
	return group != "" && f.groups[group] > gen
}

// registrationDeleted drops every SessionAuth's remembered outcome: a
// registration record was deleted, and a poll of its operation must read
// the store to say so (DPSRegistrationMissing).
func (s *Service) registrationDeleted() { s.regGen.Add(1) }

// rememberOutcome records that the registration that authenticated at
// generations authGen and regGen (both read before it started) wrote
// operation opID with status assigned and registration state st, durably.
// The poll that follows on the same connection is then answered from it
// instead of two store reads (the operation and the registration): what
// it would read is what was just written. A registration deleted since
// through this Service (regGen), an enrollment, group or certificate
// written since (authGen) or another credential sends the poll to the
// store. Across berth nodes a deletion elsewhere is not seen here: a poll
// in the moment between register and poll then answers the outcome the
// registration had, as a poll just before the deletion would have.
func (s *Service) rememberOutcome(a *SessionAuth, authGen, regGen uint64, opID string, st *RegistrationState) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.opID, a.opState, a.opAuthGen, a.opRegGen = opID, st, authGen, regGen
}

// recallOutcome returns a copy of the registration state remembered for
// operation opID of regID, or nil when a poll must read the store. Call it
// only once the poll is authenticated.
func (s *Service) recallOutcome(a *SessionAuth, regID, opID string) *RegistrationState {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.opState == nil || a.opID != opID || !strings.EqualFold(a.regID, regID) ||
		a.opAuthGen != s.authGen.Load() || a.opRegGen != s.regGen.Load() {
		return nil
	}
	st := *a.opState
	return &st
}

// recall reports whether a remembers a successful authentication of this
// very credential that is still good at now.
func (s *Service) recall(a *SessionAuth, scope, regID, token string, certs []*x509.Certificate, now time.Time) bool {
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ok || a.scope != scope || !strings.EqualFold(a.regID, regID) || a.token != token || s.stale(a.gen, a.regID, a.group) {
		return false
	}
	if token != "" {
		return s.limits.CheckTime(a.tok, now) == nil
	}
	if len(certs) == 0 || a.leaf == nil || certs[0] != a.leaf {
		return false
	}
	return !now.Before(a.leaf.NotBefore) && !now.After(a.leaf.NotAfter)
}

// remember records a successful authentication (by who) made at
// generation gen (read before it started, so a change during it is not
// missed).
func (s *Service) remember(a *SessionAuth, gen uint64, who *attested, scope, regID, token string, certs []*x509.Certificate) {
	if a == nil {
		return
	}
	group := ""
	if who != nil && who.group != nil {
		group = Key(who.group.EnrollmentGroupID)
	}
	var tok sas.Token
	if token != "" {
		t, err := sas.Parse(token)
		if err != nil {
			return
		}
		tok = t
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ok, a.gen, a.scope, a.regID, a.group, a.token, a.tok = true, gen, scope, regID, group, token, tok
	a.leaf = nil
	if token == "" && len(certs) > 0 {
		a.leaf = certs[0]
	}
}
