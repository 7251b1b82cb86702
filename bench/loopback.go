package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNotLoopback is wrapped by CheckLoopback's refusal.
var ErrNotLoopback = errors.New("bench: target is not a loopback address")

// Resolver looks host names up; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// CheckLoopback returns nil when every address hostport's host resolves
// to is a loopback address, or when allowRemote is set. A load generator
// pointed at somebody else's server by a typo is a denial of service, so a
// name that resolves to a mix of loopback and other addresses is refused
// as well.
func CheckLoopback(ctx context.Context, r Resolver, hostport string, allowRemote bool) error {
	if allowRemote {
		return nil
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !isLoopback(ip) {
			return fmt.Errorf("%w: %s (pass --allow-remote to load a remote server)", ErrNotLoopback, hostport)
		}
		return nil
	}
	if r == nil {
		r = net.DefaultResolver
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("bench: resolve %s: %w", host, err)
	}
	if len(ips) == 0 {
		return fmt.Errorf("bench: %s resolves to no address", host)
	}
	for _, ip := range ips {
		if !isLoopback(ip) {
			return fmt.Errorf("%w: %s resolves to %s (pass --allow-remote to load a remote server)", ErrNotLoopback, host, ip)
		}
	}
	return nil
}

// isLoopback accepts 127.0.0.0/8, ::1 and IPv4-mapped 127/8.
func isLoopback(ip netip.Addr) bool { return ip.Unmap().IsLoopback() }
