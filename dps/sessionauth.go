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
// any enrollment, group or CA certificate is written through this Service
// (authGen), and the credential's own time limits (SAS se, the leaf's
// validity) are checked on every use.
type SessionAuth struct {
	mu    sync.Mutex
	ok    bool
	gen   uint64
	scope string
	regID string
	token string
	leaf  *x509.Certificate
	tok   sas.Token
}

// authChanged drops every SessionAuth's memory: an enrollment, group or
// certificate changed.
func (s *Service) authChanged() { s.authGen.Add(1) }

// recall reports whether a remembers a successful authentication of this
// very credential that is still good at now.
func (s *Service) recall(a *SessionAuth, scope, regID, token string, certs []*x509.Certificate, now time.Time) bool {
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ok || a.gen != s.authGen.Load() || a.scope != scope || !strings.EqualFold(a.regID, regID) || a.token != token {
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

// remember records a successful authentication made at generation gen
// (read before it started, so a change during it is not missed).
func (s *Service) remember(a *SessionAuth, gen uint64, scope, regID, token string, certs []*x509.Certificate) {
	if a == nil {
		return
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
	a.ok, a.gen, a.scope, a.regID, a.token, a.tok = true, gen, scope, regID, token, tok
	a.leaf = nil
	if token == "" && len(certs) > 0 {
		a.leaf = certs[0]
	}
}
