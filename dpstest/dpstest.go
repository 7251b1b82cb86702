// Package dpstest starts an in-process berth for tests of provisioning
// code, in the spirit of net/http/httptest: a Device Provisioning Service
// (with its hub) on 127.0.0.1 with ephemeral ports, a throwaway CA and a
// store in a temporary directory, closed by t.Cleanup.
//
//	srv := dpstest.NewServer(t, dpstest.ThrottleRegistrations(2))
//
// The Server gives the endpoints (GlobalEndpoint, MQTTAddr, HTTPSAddr,
// IDScope, HubName), the owner connection strings and a TLS configuration
// that trusts it. Go clients take these addresses as they are; clients
// that hard-code Azure's ports (the Azure SDKs dial 8883 and 443) need a
// berth on those ports instead: run `berth serve` on a loopback address
// of its own such as 127.0.0.2 (docs/testing.md).
//
// Faults make it answer as Azure does when it is under pressure: 429 or 503
// to the next registrations, and the hub's faults of package hubtest (the
// same Server).
package dpstest

import (
	"testing"

	"github.com/berth-iot/berth/internal/testserver"
)

// Server is a running test berth; see testserver.Server for its fields and
// fault switches. It is the same type as hubtest.Server.
type Server = testserver.Server

// Option configures a Server.
type Option = testserver.Option

// NewServer starts a Server and registers its Close with t.Cleanup.
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return testserver.New(t, opts...)
}

// Start starts a Server without a test: outside tests, or in an Example.
// Close stops it and removes its temporary directory.
func Start(opts ...Option) (*Server, error) { return testserver.Start(opts...) }

// WithLogger sends the server's log to l (discarded by default).
var WithLogger = testserver.WithLogger

// ThrottleRegistrations answers the first n registration requests 429
// Throttled with retry-after, as a DPS over its quota does.
func ThrottleRegistrations(n int) Option {
	return testserver.Then(func(s *Server) { s.ThrottleRegistrations(n) })
}

// FailRegistrations answers the first n registration requests (after any
// throttled ones) 503 ServiceUnavailable with retry-after.
func FailRegistrations(n int) Option {
	return testserver.Then(func(s *Server) { s.FailRegistrations(n) })
}
