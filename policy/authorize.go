package policy

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/berth-iot/berth/refusal"
	"github.com/berth-iot/berth/sas"
)

// Request is what a service token must satisfy: the one service-token
// check of berth, for the DPS service API and every hub's alike.
type Request struct {
	// Hosts are the names the service is configured under (a DPS's --host
	// names, a hub's name): the token's sr must name one of them. Never
	// the Host header of the request: that is the client's to choose, so
	// binding to it would let a token name any host (the key is still
	// needed, but a token must not be valid beyond the service it was
	// issued for).
	Hosts []string
	// Path are the request's percent-decoded path segments: the segments
	// of sr after the host must be a prefix of them ("host/devices"
	// covers /devices/d1, "host/dev" does not), as Azure documents.
	Path []string
	// Rights: the policy must grant one of them.
	Rights []string
	// Now is the time to check the token's expiry against.
	Now time.Time
	// Limits are the operator's (berth serve --max-token-lifetime).
	Limits sas.Limits
	// TextKey checks the token as the Event Hubs SDKs sign it: the HMAC
	// key is the key text's bytes, and sr carries a scheme (sb:// or
	// amqps://) before the host.
	TextKey bool
}

// Authorize checks a service SAS token against the set: skn names a
// policy of this set (another service's policies never count, whatever
// their names), sr names one of req.Hosts optionally followed by a segment
// prefix of req.Path, the token's time is within req.Limits, it is signed
// with one of the policy's keys, and the policy grants one of req.Rights.
// Names and hosts compare case-insensitively; a port on sr's host is
// ignored (a connection string's HostName carries one when berth does not
// listen on 443, and the SDKs then sign "host:port").
//
// Every refusal is a *refusal.Error naming the reason for the operator's
// log; callers answer them all with their protocol's one code.
func (s *Set) Authorize(token string, req Request) (*Policy, error) {
	if token == "" {
		return nil, refusal.New(refusal.NoCredential, errors.New("no service token"))
	}
	tok, err := sas.Parse(token)
	if err != nil {
		return nil, err
	}
	if tok.KeyName == "" {
		// A device token: it never grants service access.
		return nil, refusal.New(refusal.UnknownPolicy, errors.New("service token without skn"))
	}
	p, ok := s.Get(tok.KeyName)
	if !ok {
		return nil, refusal.Newf(refusal.UnknownPolicy, "no policy %q", tok.KeyName)
	}
	sr := tok.Resource
	verify := req.Limits.Verify
	if req.TextKey {
		sr = stripScheme(sr)
		verify = req.Limits.VerifyText
	}
	if !Audience(sr, req.Hosts, req.Path) {
		return nil, sas.AudienceError(tok, strings.Join(req.Hosts, " or "))
	}
	if _, err := verify(tok, req.Now, p.PrimaryKey, p.SecondaryKey); err != nil {
		return nil, fmt.Errorf("policy %s: %w", p.KeyName, err)
	}
	if !slices.ContainsFunc(req.Rights, p.Has) {
		return nil, refusal.Newf(refusal.MissingRight, "policy %s lacks %s", p.KeyName, strings.Join(req.Rights, " or "))
	}
	return p, nil
}

// Audience reports whether the decoded sr covers a request to one of
// hosts for path: its first segment is one of hosts (port ignored) and the
// rest a segment prefix of path, all compared case-insensitively.
func Audience(sr string, hosts, path []string) bool {
	segs := strings.Split(strings.TrimSuffix(sr, "/"), "/")
	host := hostOf(segs[0])
	if host == "" || !slices.ContainsFunc(hosts, func(h string) bool { return h != "" && strings.EqualFold(hostOf(h), host) }) {
		return false
	}
	rest := segs[1:]
	if len(rest) > len(path) {
		return false
	}
	for i, s := range rest {
		if !strings.EqualFold(s, path[i]) {
			return false
		}
	}
	return true
}

// stripScheme removes the scheme an Event Hubs audience starts with.
func stripScheme(sr string) string {
	for _, scheme := range []string{"sb://", "amqps://", "amqp://"} {
		if len(sr) >= len(scheme) && strings.EqualFold(sr[:len(scheme)], scheme) {
			return sr[len(scheme):]
		}
	}
	return sr
}

// hostOf strips a port (and IPv6 brackets) from host.
func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}
