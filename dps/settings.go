package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
)

// Rights of a shared access policy (DPS and hub).
const (
	RightServiceConfig           = "ServiceConfig"
	RightEnrollmentRead          = "EnrollmentRead"
	RightEnrollmentWrite         = "EnrollmentWrite"
	RightRegistrationStatusRead  = "RegistrationStatusRead"
	RightRegistrationStatusWrite = "RegistrationStatusWrite"
)

// OwnerPolicy is the default policy name with every right.
const OwnerPolicy = "provisioningserviceowner"

// Policy is a shared access policy.
type Policy = policy.Policy

// Rights are the rights a DPS policy may have.
var Rights = []string{RightServiceConfig, RightEnrollmentRead, RightEnrollmentWrite, RightRegistrationStatusRead, RightRegistrationStatusWrite}

// Settings are the persistent identity of a berth DPS, created on first
// start: its ID scope and its shared access policies.
type Settings struct {
	IDScope string
	// policies change at run time (berth policy …).
	policies *policy.Set
}

// settingsDoc is the stored form.
type settingsDoc struct {
	IDScope  string   `json:"idScope"`
	Policies []Policy `json:"policies"`
}

const settingsKey = "dps"

// MaxPolicies is Azure's limit of shared access policies per service.
const MaxPolicies = 16

// LoadOrCreateSettings reads the settings from the store, or creates them
// with a new ID scope (idScope when not empty) and an owner policy.
// created reports a first start.
func LoadOrCreateSettings(ctx context.Context, st store.Store, idScope string) (s *Settings, created bool, err error) {
	rec, err := st.Get(ctx, store.KindConfig, settingsKey)
	switch {
	case err == nil:
		var doc settingsDoc
		if err := json.Unmarshal(rec.Data, &doc); err != nil {
			return nil, false, fmt.Errorf("dps: decode settings: %w", err)
		}
		idScope = doc.IDScope
	case !errors.Is(err, store.ErrNotFound):
		return nil, false, fmt.Errorf("dps: read settings: %w", err)
	default:
		if idScope == "" {
			idScope = NewIDScope()
		}
		doc := settingsDoc{
			IDScope: idScope,
			Policies: []Policy{{
				KeyName:      OwnerPolicy,
				PrimaryKey:   NewKey(),
				SecondaryKey: NewKey(),
				Rights:       Rights,
			}},
		}
		data, err := json.Marshal(doc)
		if err != nil {
			return nil, false, fmt.Errorf("dps: encode settings: %w", err)
		}
		_, err = st.Put(ctx, store.Record{Kind: store.KindConfig, Key: settingsKey, Data: data}, store.Cond{IfNotExists: true})
		if errors.Is(err, store.ErrExists) {
			// Another berth node sharing the store won the race; use its settings.
			return LoadOrCreateSettings(ctx, st, idScope)
		}
		if err != nil {
			return nil, false, fmt.Errorf("dps: write settings: %w", err)
		}
		created = true
	}
	set, err := policy.Load(ctx, st, policy.Config{Kind: store.KindConfig, Key: settingsKey, Rights: Rights, Limit: MaxPolicies, Keep: RightServiceConfig})
	if err != nil {
		return nil, false, fmt.Errorf("dps: load policies: %w", err)
	}
	return &Settings{IDScope: idScope, policies: set}, created, nil
}

// Policy returns a copy of the named policy.
func (s *Settings) Policy(name string) (*Policy, bool) { return s.policies.Get(name) }

// Policies iterates over a snapshot of the policies.
func (s *Settings) Policies(yield func(int, Policy) bool) {
	for i, p := range s.policies.List() {
		if !yield(i, p) {
			return
		}
	}
}

// PolicySet is the policies, for management (berth policy …).
func (s *Settings) PolicySet() *policy.Set { return s.policies }

// AuthorizeService checks a service SAS token: sr must name the host the
// request came to (or one of hosts), skn a policy with the right.
func (s *Settings) AuthorizeService(token string, hosts []string, right string, now time.Time) (*Policy, error) {
	if token == "" {
		return nil, azerr.New(azerr.DPSUnauthorized)
	}
	tok, err := sas.Parse(token)
	if err != nil {
		return nil, azerr.Wrap(azerr.DPSUnauthorized, err)
	}
	p, ok := s.Policy(tok.KeyName)
	if !ok {
		return nil, azerr.Wrap(azerr.DPSInvalidCredentials, fmt.Errorf("unknown policy %q", tok.KeyName))
	}
	// The audience is the host, possibly followed by path segments (a
	// segment prefix of the request URL, as Azure documents).
	aud := strings.TrimSuffix(tok.Resource, "/")
	if i := strings.IndexByte(aud, '/'); i >= 0 {
		aud = aud[:i]
	}
	match := false
	for _, h := range hosts {
		if h != "" && strings.EqualFold(aud, h) {
			match = true
			break
		}
	}
	if !match {
		return nil, azerr.Wrap(azerr.DPSInvalidCredentials, sas.ErrAudience)
	}
	if _, err := tok.Verify(now, p.PrimaryKey, p.SecondaryKey); err != nil {
		return nil, azerr.Wrap(azerr.DPSInvalidCredentials, err)
	}
	if !p.Has(right) {
		return nil, azerr.Wrap(azerr.DPSInvalidCredentials, fmt.Errorf("policy %s lacks %s", p.KeyName, right))
	}
	return p, nil
}
