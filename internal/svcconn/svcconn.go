// Package svcconn is what berth's service API clients (serviceclient for
// DPS, hubclient for IoT Hub) share: the service connection string and an
// HTTPS client that trusts a given CA and may dial another address than the
// host it verifies.
package svcconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// ErrNoKeyName is returned for a connection string without
// SharedAccessKeyName (a device connection string, for instance).
var ErrNoKeyName = errors.New("connection string has no SharedAccessKeyName")

// ConnectionString is a parsed service connection string.
type ConnectionString struct {
	HostName            string
	SharedAccessKeyName string
	SharedAccessKey     string
}

// Parse parses "HostName=…;SharedAccessKeyName=…;SharedAccessKey=…". Keys
// are matched case-insensitively and may come in any order; values are
// split at the first '=' because base64 keys end in '='; unknown fields are
// ignored, as the SDK parsers do. Errors start with prefix and never quote
// the key.
func Parse(prefix, s string) (ConnectionString, error) {
	var cs ConnectionString
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return cs, fmt.Errorf("%s: connection string: a field has no '='", prefix)
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "hostname":
			cs.HostName = strings.TrimSpace(v)
		case "sharedaccesskeyname":
			cs.SharedAccessKeyName = strings.TrimSpace(v)
		case "sharedaccesskey":
			cs.SharedAccessKey = strings.TrimSpace(v)
		}
	}
	switch {
	case cs.HostName == "":
		return cs, fmt.Errorf("%s: connection string has no HostName", prefix)
	case cs.SharedAccessKeyName == "":
		return cs, fmt.Errorf("%s: %w", prefix, ErrNoKeyName)
	case cs.SharedAccessKey == "":
		return cs, fmt.Errorf("%s: connection string has no SharedAccessKey", prefix)
	}
	if k, err := base64.StdEncoding.DecodeString(cs.SharedAccessKey); err != nil || len(k) == 0 {
		return cs, fmt.Errorf("%s: connection string: SharedAccessKey is not valid base64", prefix)
	}
	if strings.ContainsAny(cs.HostName, "/?#@ ") {
		return cs, fmt.Errorf("%s: connection string: HostName %q is not a host name", prefix, cs.HostName)
	}
	return cs, nil
}

// HTTPClient builds a client whose TLS verifies host (without its port)
// against the roots in caFile (system roots when ""), and which dials
// address instead of host when it is not "". HTTP/2 is not attempted:
// berth's listener is HTTP/1.1 only, and a few service calls gain nothing
// from it.
func HTTPClient(prefix, host, caFile, address string) (*http.Client, error) {
	var pool *x509.CertPool
	if caFile != "" {
		var err error
		if pool, err = LoadCertPool(prefix, caFile); err != nil {
			return nil, err
		}
	}
	return HTTPClientWithRoots(host, pool, address), nil
}

// SystemRootsAnd returns the system roots plus the CAs in file: what a
// client trusts when it may reach either a local berth (its development
// CA) or a real service.
func SystemRootsAnd(prefix, file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: CA file: %w", prefix, err)
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: CA file %s holds no PEM certificate", prefix, file)
	}
	return pool, nil
}

// HTTPClientWithRoots is HTTPClient with the roots given (system roots
// when nil).
func HTTPClientWithRoots(host string, roots *x509.CertPool, address string) *http.Client {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: HostOnly(host), RootCAs: roots}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	tr.ForceAttemptHTTP2 = false
	if address != "" {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		}
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

// LoadCertPool reads a PEM file of CA certificates into a new pool.
func LoadCertPool(prefix, file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: CA file: %w", prefix, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: CA file %s holds no PEM certificate", prefix, file)
	}
	return pool, nil
}

// HostOnly strips a port (and IPv6 brackets) from host.
func HostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}
