package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/refusal"
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

// AuthorizeService checks a DPS service SAS token (policy.Set.Authorize):
// sr must name one of the DPS's configured host names (Config.ServiceHosts,
// never the request's Host header), optionally followed by a segment
// prefix of the request path, and skn a policy with the right. A missing
// or unreadable token is 401000, any other refusal 401002, as Azure
// answers; the error's *refusal.Error says why, for the log.
func (s *Service) AuthorizeService(token string, path []string, right string) (*Policy, error) {
	if s.settings == nil {
		return nil, azerr.Wrap(azerr.DPSInvalidCredentials, refusal.New(refusal.UnknownPolicy, errors.New("this DPS has no policies")))
	}
	p, err := s.settings.policies.Authorize(token, policy.Request{
		Hosts:  s.serviceHosts,
		Path:   path,
		Rights: []string{right},
		Now:    s.now(),
		Limits: s.limits,
	})
	if err != nil {
		return nil, azerr.Wrap(deniedCode(err), err)
	}
	return p, nil
}

// deniedCode is the DPS code of a refused credential: 401000 when there is
// none or it cannot be read, 401002 when it does not authenticate.
func deniedCode(err error) azerr.Code {
	if r := refusal.Of(err); r != nil && (r.Reason == refusal.NoCredential || r.Reason == refusal.Malformed) {
		return azerr.DPSUnauthorized
	}
	return azerr.DPSInvalidCredentials
}
