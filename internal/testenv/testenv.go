// Package testenv decides, for tests that need a service of the machine
// (PostgreSQL, an external NATS), whether its absence skips the test or
// fails it.
//
// One variable decides: BERTH_REQUIRE_SERVICES, which `make test` (the CI
// command) sets to 1. There a missing service is a broken pipeline, never
// a quiet skip. Without it (a developer's go test, make check) the test
// skips and says which service it missed and how to provide it.
package testenv

import (
	"os"
	"strconv"
	"testing"
)

// RequireEnv is the variable that makes the services required.
const RequireEnv = "BERTH_REQUIRE_SERVICES"

// ServicesRequired reports whether a missing service must fail the test.
// Any value but "", "0" and "false" (in any case) requires them: a typo
// must not turn failures into skips.
func ServicesRequired() bool {
	v, ok := os.LookupEnv(RequireEnv)
	if !ok || v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	return err != nil || b
}

// Unavailable ends t because a service it needs is not there: a failure
// when services are required, else a skip. The message says why either
// way; the skip also names the variable that would make it a failure.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if ServicesRequired() {
		t.Fatalf(format+" ("+RequireEnv+" is set: required)", args...)
	}
	t.Skipf(format+" (skipped; "+RequireEnv+"=1, as make test sets it, makes this a failure)", args...)
}
