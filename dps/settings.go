package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
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
type Policy struct {
	KeyName      string   `json:"keyName"`
	PrimaryKey   string   `json:"primaryKey"`
	SecondaryKey string   `json:"secondaryKey"`
	Rights       []string `json:"rights"`
}

// Has reports whether the policy grants right.
func (p *Policy) Has(right string) bool {
	for _, r := range p.Rights {
		if strings.EqualFold(r, right) {
			return true
		}
	}
	return false
}

// Settings are the persistent identity of a berth DPS, created on first
// start.
type Settings struct {
	IDScope  string   `json:"idScope"`
	Policies []Policy `json:"policies"`
}

const settingsKey = "dps"

// LoadOrCreateSettings reads the settings from the store, or creates them
// with a new ID scope (idScope when not empty) and an owner policy.
// created reports a first start.
func LoadOrCreateSettings(ctx context.Context, st store.Store, idScope string) (s *Settings, created bool, err error) {
	rec, err := st.Get(ctx, store.KindConfig, settingsKey)
	if err == nil {
		var s Settings
		if err := json.Unmarshal(rec.Data, &s); err != nil {
			return nil, false, fmt.Errorf("dps: decode settings: %w", err)
		}
		return &s, false, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, false, fmt.Errorf("dps: read settings: %w", err)
	}
	if idScope == "" {
		idScope = NewIDScope()
	}
	s = &Settings{
		IDScope: idScope,
		Policies: []Policy{{
			KeyName:      OwnerPolicy,
			PrimaryKey:   NewKey(),
			SecondaryKey: NewKey(),
			Rights:       []string{RightServiceConfig, RightEnrollmentRead, RightEnrollmentWrite, RightRegistrationStatusRead, RightRegistrationStatusWrite},
		}},
	}
	data, err := json.Marshal(s)
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
	return s, true, nil
}

// Policy returns the named policy.
func (s *Settings) Policy(name string) (*Policy, bool) {
	for i := range s.Policies {
		if strings.EqualFold(s.Policies[i].KeyName, name) {
			return &s.Policies[i], true
		}
	}
	return nil, false
}

// ConnectionString is the service connection string of a policy.
func (p *Policy) ConnectionString(host string) string {
	return "HostName=" + host + ";SharedAccessKeyName=" + p.KeyName + ";SharedAccessKey=" + p.PrimaryKey
}

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
