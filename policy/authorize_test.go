package policy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/refusal"
	"github.com/berth-iot/berth/sas"
)

// Authorize is the one service-token check of every DPS and hub: each
// refusal names its reason, the audience binds to the configured hosts
// (port ignored) and a prefix of the request path, and the operator's
// lifetime limit applies.
func TestAuthorize(t *testing.T) {
	s, _ := newSet(t)
	ctx := context.Background()
	if _, _, err := s.Put(ctx, policy.Policy{KeyName: "reader", Rights: []string{"Read"}}); err != nil {
		t.Fatal(err)
	}
	owner, _ := s.Get("owner")
	reader, _ := s.Get("reader")
	now := time.Unix(1700000000, 0)
	sign := func(sr, key, skn string, exp time.Time) string {
		tok, err := sas.Sign(sr, key, skn, exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hour := now.Add(time.Hour)
	path := []string{"enrollments", "e1"}
	tests := []struct {
		name   string
		token  string
		hosts  []string
		rights []string
		limits sas.Limits
		reason refusal.Reason // "" accepted
	}{
		{"owner", sign("dps.test", owner.PrimaryKey, "owner", hour), nil, nil, sas.Limits{}, ""},
		{"secondary key", sign("dps.test", owner.SecondaryKey, "owner", hour), nil, nil, sas.Limits{}, ""},
		{"host case and port", sign("DPS.test:8443", owner.PrimaryKey, "owner", hour), nil, nil, sas.Limits{}, ""},
		{"IPv6 host with port", sign("[::1]:443", owner.PrimaryKey, "owner", hour), []string{"::1"}, nil, sas.Limits{}, ""},
		{"path prefix", sign("dps.test/Enrollments", owner.PrimaryKey, "owner", hour), nil, nil, sas.Limits{}, ""},
		{"reader reads", sign("dps.test", reader.PrimaryKey, "reader", hour), nil, []string{"Write", "Read"}, sas.Limits{}, ""},

		{"no token", "", nil, nil, sas.Limits{}, refusal.NoCredential},
		{"garbage", "SharedAccessSignature sr=x", nil, nil, sas.Limits{}, refusal.Malformed},
		{"device token (no skn)", sign("dps.test", owner.PrimaryKey, "", hour), nil, nil, sas.Limits{}, refusal.UnknownPolicy},
		{"unknown policy", sign("dps.test", owner.PrimaryKey, "nobody", hour), nil, nil, sas.Limits{}, refusal.UnknownPolicy},
		{"another host", sign("evil.example.com", owner.PrimaryKey, "owner", hour), nil, nil, sas.Limits{}, refusal.WrongAudience},
		{"not a segment prefix", sign("dps.test/enroll", owner.PrimaryKey, "owner", hour), nil, nil, sas.Limits{}, refusal.WrongAudience},
		{"longer than the path", sign("dps.test/enrollments/e1/x", owner.PrimaryKey, "owner", hour), nil, nil, sas.Limits{}, refusal.WrongAudience},
		{"wrong key", sign("dps.test", reader.PrimaryKey, "owner", hour), nil, nil, sas.Limits{}, refusal.WrongKey},
		{"expired", sign("dps.test", owner.PrimaryKey, "owner", now.Add(-time.Hour)), nil, nil, sas.Limits{}, refusal.Expired},
		{"lifetime too long", sign("dps.test", owner.PrimaryKey, "owner", now.Add(48*time.Hour)), nil, nil, sas.Limits{MaxLifetime: 24 * time.Hour}, refusal.LifetimeTooLong},
		{"missing right", sign("dps.test", reader.PrimaryKey, "reader", hour), nil, []string{"Write"}, sas.Limits{}, refusal.MissingRight},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hosts := tt.hosts
			if hosts == nil {
				hosts = []string{"other.test", "dps.test"}
			}
			rights := tt.rights
			if rights == nil {
				rights = []string{"Admin"}
			}
			p, err := s.Authorize(tt.token, policy.Request{Hosts: hosts, Path: path, Rights: rights, Now: now, Limits: tt.limits})
			if tt.reason == "" {
				if err != nil || p == nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			r := refusal.Of(err)
			if r == nil || r.Reason != tt.reason {
				t.Fatalf("err %v, want reason %q", err, tt.reason)
			}
			for _, secret := range []string{owner.PrimaryKey, owner.SecondaryKey, reader.PrimaryKey} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the refusal shows a key: %v", err)
				}
			}
			if tok, perr := sas.Parse(tt.token); perr == nil && strings.Contains(err.Error(), tok.Signature) {
				t.Errorf("the refusal shows the signature: %v", err)
			}
		})
	}
}
