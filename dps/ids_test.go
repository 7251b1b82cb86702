package dps

import (
	"regexp"
	"strings"
	"testing"
)

func TestValidRegistrationID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"my-device", true},
		{"sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", true},
		{"A.b_c:d", true},
		{"ends-with-dash-", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"", false},
		{"-starts", false},
		{".starts", false},
		{"ends.", false},
		{"ends_", false},
		{"ends:", false},
		{"has/slash", false},
		{"has space", false},
		{"häs", false},
		{"a%2Fb", false},
	}
	for _, tt := range tests {
		if got := ValidRegistrationID(tt.id); got != tt.want {
			t.Errorf("ValidRegistrationID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

func TestStoreETag(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"*", "*"},
		{`"*"`, "*"},
		{`"abc"`, "abc"},
		{"abc", "abc"},
		{registrationETag("abc123"), "abc123"},
		{`"` + registrationETag("abc123") + `"`, "abc123"},
	}
	for _, tt := range tests {
		if got := StoreETag(tt.in); got != tt.want {
			t.Errorf("StoreETag(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestGeneratedIDs(t *testing.T) {
	s := NewIDScope()
	if len(s) != 11 || !strings.HasPrefix(s, "0ne") || strings.ToUpper(s[3:]) != s[3:] {
		t.Errorf("NewIDScope() = %q", s)
	}
	a, b := newOperationID(), newOperationID()
	if a == b || !strings.HasPrefix(a, "5.") || len(a) != len("5.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d") {
		t.Errorf("operation ids %q %q", a, b)
	}
	if !regexp.MustCompile(`^5\.[0-9a-f]{16}\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(a) {
		t.Errorf("operation id %q is not 5.<16 hex>.<UUID v4>", a)
	}
	if k := NewKey(); len(k) != 88 {
		t.Errorf("NewKey() length %d, want 88", len(k))
	}
}
