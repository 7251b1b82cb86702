package testenv

import "testing"

func TestServicesRequired(t *testing.T) {
	for v, want := range map[string]bool{
		"": false, "0": false, "false": false, "FALSE": false,
		"1": true, "true": true, "True": true, "yes": true, "on": true,
	} {
		t.Setenv(RequireEnv, v)
		if got := ServicesRequired(); got != want {
			t.Errorf("%s=%q: required %v, want %v", RequireEnv, v, got, want)
		}
	}
}
