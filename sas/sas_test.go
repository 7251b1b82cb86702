package sas

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/refusal"
)

// Vectors from docs/spec/dps-protocol.md#test-vectors.
const (
	groupKey = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
)

func TestDeriveKey(t *testing.T) {
	tests := []struct{ id, want string }{
		{"sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="},
		{"my-device", "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc="},
	}
	for _, tt := range tests {
		got, err := DeriveKey(groupKey, tt.id)
		if err != nil || got != tt.want {
			t.Errorf("DeriveKey(%q) = %q, %v; want %q", tt.id, got, err, tt.want)
		}
	}
	if _, err := DeriveKey("not base64!", "x"); err == nil {
		t.Error("DeriveKey accepted a non-base64 key")
	}
}

// All three client encodings of one token must validate against one key.
func TestVerifyClientEncodings(t *testing.T) {
	key := "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc="
	now := time.Unix(1700000000-60, 0)
	tokens := []string{
		"SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000",
		"SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000&skn=registration",
		"SharedAccessSignature sr=0ne00000A0A%2fregistrations%2fmy-device&sig=mWu0BvUzRGQw3HB%2bZOVYhlCnaI87x%2b%2f3JBIaO7cdBak%3d&se=1700000000&skn=registration",
		"SharedAccessSignature sr=0ne00000A0A%2fregistrations%2fmy-device&sig=mWu0BvUzRGQw3HB%2BZOVYhlCnaI87x%2B%2F3JBIaO7cdBak%3D&se=1700000000",
		"SharedAccessSignature sr=0ne00000A0A/registrations/my-device&sig=vOD8j%2FkUndWgz4uUTp%2BhkguuYut3oirY0In6rDoxF8c%3D&skn=registration&se=1700000000",
	}
	for _, s := range tokens {
		tok, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		if !tok.ResourceIs("0ne00000a0a/registrations/MY-DEVICE") {
			t.Errorf("%q: resource %q not matched", s, tok.Resource)
		}
		if i, err := (Limits{}).Verify(tok, now, "AAAA", key); err != nil || i != 1 {
			t.Errorf("%q: Verify = %d, %v", s, i, err)
		}
		if _, err := (Limits{}).Verify(tok, now, groupKey); !errors.Is(err, ErrSignature) {
			t.Errorf("%q: wrong key accepted: %v", s, err)
		}
		if _, err := (Limits{}).Verify(tok, time.Unix(1700000000, 0).Add(MaxClockSkew+time.Second), key); !errors.Is(err, ErrExpired) {
			t.Errorf("%q: expired token accepted: %v", s, err)
		}
	}
}

func TestSignVectors(t *testing.T) {
	// Node primitive vector: resource "uri", key base64("password").
	tok := SignRaw("uri", []byte("password"), "", time.Unix(12345, 0))
	want := "SharedAccessSignature sr=uri&sig=kcWxXAK2OAaAoq2oCkaGzX2NMqDB8nCyNuq2fPYCDhk%3D&se=12345"
	if tok != want {
		t.Errorf("SignRaw = %q, want %q", tok, want)
	}
	// Service SAS vector.
	got, err := Sign("mydps.azure-devices-provisioning.net", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "provisioningserviceowner", time.Unix(1700000000, 0))
	want = "SharedAccessSignature sr=mydps.azure-devices-provisioning.net&sig=xXBqEKztXMACe9dg1gMBreO%2F8CMn3ovt%2B%2BxDvPb6Xl0%3D&se=1700000000&skn=provisioningserviceowner"
	if err != nil || got != want {
		t.Errorf("Sign = %q, %v; want %q", got, err, want)
	}
	// Python/C# encoding of a device token.
	got, err = SignEncoded("0ne00000A0A/registrations/my-device", "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc=", "", time.Unix(1700000000, 0))
	want = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000"
	if err != nil || got != want {
		t.Errorf("SignEncoded = %q, %v; want %q", got, err, want)
	}
}

func TestParseMalformed(t *testing.T) {
	bad := []string{
		"",
		"SharedAccessSignature",
		"SharedAccessSignaturesr=a&sig=b&se=1",
		"sharedaccesssignature sr=a&sig=b&se=1",
		"SharedAccessSignature sr=a&sig=b",
		"SharedAccessSignature sr=a&se=1",
		"SharedAccessSignature sig=b&se=1",
		"SharedAccessSignature sr=a&sig=b&se=x",
		"SharedAccessSignature sr=a&sig=b&se=-1",
		"SharedAccessSignature sr=a&sig=b&se=1 extra",
		"SharedAccessSignature sr=%zz&sig=b&se=1",
		"SharedAccessSignature sr=a&sr=b&sig=b&se=1",
		"SharedAccessSignature sr=a&sig=b&se=1&junk",
		"SharedAccessSignature sr=&sig=b&se=1",
	}
	for _, s := range bad {
		if _, err := Parse(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", s, err)
		}
	}
	// Field order and key case are free.
	tok, err := Parse("SharedAccessSignature SIG=abc&Se=10&SKN=registration&sr=x%2Fy")
	if err != nil || tok.RawResource != "x%2Fy" || tok.Resource != "x/y" || tok.KeyName != "registration" || tok.RawExpiry != "10" {
		t.Errorf("Parse reordered = %+v, %v", tok, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000")
	f.Add("SharedAccessSignature sr=a/b&sig=%2B&skn=registration&se=1")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			return
		}
		if tok.RawResource == "" || tok.Signature == "" || tok.RawExpiry == "" {
			t.Fatalf("accepted token with empty required field: %q", s)
		}
		_ = tok.VerifyKey("AAAA")
	})
}

func BenchmarkVerify(b *testing.B) {
	s := "SharedAccessSignature sr=0ne00000A0A/registrations/my-device&sig=vOD8j%2FkUndWgz4uUTp%2BhkguuYut3oirY0In6rDoxF8c%3D&skn=registration&se=1700000000"
	key := "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc="
	now := time.Unix(1700000000, 0)
	b.ReportAllocs()
	for b.Loop() {
		tok, err := Parse(s)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := (Limits{}).Verify(tok, now, key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDeriveKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DeriveKey(groupKey, "my-device"); err != nil {
			b.Fatal(err)
		}
	}
}

// The operator's longest lifetime applies to se minus now, with the clock
// skew allowed on top; no limit (the default) accepts a century, as Azure
// does. Each refusal names its reason for the log.
func TestLimits(t *testing.T) {
	key := "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc="
	now := time.Unix(1700000000, 0)
	sign := func(d time.Duration) Token {
		s, err := Sign("hub/devices/d", key, "", now.Add(d))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	century := 100 * 365 * 24 * time.Hour
	tests := []struct {
		name   string
		lim    Limits
		ttl    time.Duration
		keys   []string
		reason refusal.Reason // "" accepted
		is     error
	}{
		{"no limit accepts a century", Limits{}, century, []string{key}, "", nil},
		{"within the limit", Limits{MaxLifetime: time.Hour}, time.Hour, []string{key}, "", nil},
		{"clock skew allowed", Limits{MaxLifetime: time.Hour}, time.Hour + MaxClockSkew, []string{key}, "", nil},
		{"too long", Limits{MaxLifetime: time.Hour}, time.Hour + MaxClockSkew + time.Second, []string{key}, refusal.LifetimeTooLong, ErrLifetime},
		{"a century under a limit", Limits{MaxLifetime: 24 * time.Hour}, century, []string{key}, refusal.LifetimeTooLong, ErrLifetime},
		{"expired", Limits{MaxLifetime: time.Hour}, -MaxClockSkew - time.Second, []string{key}, refusal.Expired, ErrExpired},
		{"wrong key", Limits{}, time.Hour, []string{"AAAA", ""}, refusal.WrongKey, ErrSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.lim.Verify(sign(tt.ttl), now, tt.keys...)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			r := refusal.Of(err)
			if r == nil || r.Reason != tt.reason || !errors.Is(err, tt.is) {
				t.Fatalf("err %v (refusal %v), want reason %q and %v", err, r, tt.reason, tt.is)
			}
			if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), sign(tt.ttl).Signature) {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
	if _, err := Parse("SharedAccessSignature sr=x&se=1"); refusal.Of(err) == nil || refusal.Of(err).Reason != refusal.Malformed {
		t.Errorf("malformed: %v", err)
	}
}
