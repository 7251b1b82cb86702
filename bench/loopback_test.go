package bench

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

// fakeResolver answers from a table.
type fakeResolver map[string][]string

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	addrs, ok := f[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	out := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		out[i] = netip.MustParseAddr(a)
	}
	return out, nil
}

func TestCheckLoopback(t *testing.T) {
	r := fakeResolver{
		"localhost":     {"127.0.0.1", "::1"},
		"loop.example":  {"127.5.6.7"},
		"mixed.example": {"127.0.0.1", "192.0.2.1"},
		"far.example":   {"203.0.113.9"},
		"empty.example": {},
	}
	tests := []struct {
		addr        string
		allowRemote bool
		wantErr     error // nil: accepted; ErrNotLoopback; or errAny
	}{
		{addr: "127.0.0.1:8883"},
		{addr: "127.22.33.44:443"},
		{addr: "[::1]:8883"},
		{addr: "[::ffff:127.0.0.1]:8883"},
		{addr: "127.0.0.77"},
		{addr: "localhost:8883"},
		{addr: "loop.example:8883"},
		{addr: "10.0.0.1:8883", wantErr: ErrNotLoopback},
		{addr: "[2001:db8::1]:8883", wantErr: ErrNotLoopback},
		{addr: "0.0.0.0:8883", wantErr: ErrNotLoopback},
		{addr: "mixed.example:8883", wantErr: ErrNotLoopback},
		{addr: "far.example:8883", wantErr: ErrNotLoopback},
		{addr: "far.example:8883", allowRemote: true},
		{addr: "10.0.0.1:8883", allowRemote: true},
		{addr: "unknown.example:8883", wantErr: errAny},
		{addr: "empty.example:8883", wantErr: errAny},
	}
	for _, tt := range tests {
		err := CheckLoopback(context.Background(), r, tt.addr, tt.allowRemote)
		switch {
		case tt.wantErr == nil && err != nil:
			t.Errorf("%s (allowRemote %v): refused: %v", tt.addr, tt.allowRemote, err)
		case tt.wantErr == ErrNotLoopback && !errors.Is(err, ErrNotLoopback):
			t.Errorf("%s: %v, want a refusal as not loopback", tt.addr, err)
		case tt.wantErr == errAny && err == nil:
			t.Errorf("%s: accepted, want an error", tt.addr)
		}
	}
}

// errAny stands for any error in test tables.
var errAny = errors.New("any error")
