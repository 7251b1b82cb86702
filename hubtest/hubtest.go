// Package hubtest starts an in-process berth for tests of device and
// back-end code that talks to an IoT hub, in the spirit of
// net/http/httptest: a hub (with its Device Provisioning Service) on
// 127.0.0.1 with ephemeral ports, a throwaway CA and a store in a
// temporary directory, closed by t.Cleanup.
//
//	srv := hubtest.NewServer(t, hubtest.DropAfter(3))
//
// The Server gives the endpoints (MQTTAddr, HTTPSAddr, HubName, and the
// DPS's GlobalEndpoint and IDScope), the owner connection strings and a
// TLS configuration that trusts it (dial MQTTAddr with ServerName set to
// HubName). Go clients take these addresses as they are; clients that
// hard-code Azure's ports (the Azure SDKs dial 8883 and 443) need a berth
// on those ports instead: run `berth serve` on a loopback address of its
// own such as 127.0.0.2 (docs/testing.md).
//
// Faults, as options or switched while the server runs: refuse or delay
// device connections, drop a connection after n messages, delay twin and
// method answers, end a device's session as if its token expired
// (Server.ExpireTokens). They act in the hub domain, so MQTT, HTTPS and
// every other front end show them alike.
package hubtest

import (
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/testserver"
)

// Server is a running test berth; see testserver.Server for its fields and
// fault switches. It is the same type as dpstest.Server.
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

// WithHubName names the hub (default hub.berth.test).
var WithHubName = testserver.WithHubName

// RefuseConnections refuses the first n device connections as unavailable
// (MQTT CONNACK 3, HTTPS 503).
func RefuseConnections(n int) Option {
	return testserver.Then(func(s *Server) { s.RefuseConnections(n) })
}

// DelayConnections holds every device connection for d before it is
// authenticated.
func DelayConnections(d time.Duration) Option {
	return testserver.Then(func(s *Server) { s.DelayConnections(d) })
}

// DropAfter closes every device connection once it had n messages
// accepted; the next message is not acknowledged.
func DropAfter(n int) Option {
	return testserver.Then(func(s *Server) { s.DropAfter(n) })
}

// DelayTwin delays the answers to devices' twin requests by d.
func DelayTwin(d time.Duration) Option {
	return testserver.Then(func(s *Server) { s.DelayTwin(d) })
}

// DelayMethods delays devices' direct-method answers to their callers by d.
func DelayMethods(d time.Duration) Option {
	return testserver.Then(func(s *Server) { s.DelayMethods(d) })
}
