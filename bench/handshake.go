package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// HandshakeResult is the bare TLS handshake baseline: the same listener,
// the same count and concurrency as the run it is compared with, but each
// connection only completes the handshake and closes. No device can
// provision faster than it can handshake, so this is the physical limit
// of provisioning on the machine (client and server costs included, as
// in the run itself).
type HandshakeResult struct {
	Address     string               `json:"address"`
	Count       int                  `json:"count"`
	Concurrency int                  `json:"concurrency"`
	Succeeded   int64                `json:"succeeded"`
	Failed      int64                `json:"failed"`
	Seconds     float64              `json:"seconds"`
	Rate        float64              `json:"handshakesPerSecond"`
	Latency     Latency              `json:"latency"`
	TLSVersion  string               `json:"tlsVersion,omitempty"`
	Errors      map[string]ErrorKind `json:"errors,omitempty"`
}

// handshakeTimeout bounds one dial and handshake.
const handshakeTimeout = 30 * time.Second

// Handshakes dials addr n times, c at a time, completes a TLS handshake
// verifying serverName against roots (as the devices do), and closes.
func Handshakes(ctx context.Context, addr, serverName string, roots *x509.CertPool, n, c int, po ProgressOptions) (*HandshakeResult, error) {
	if n <= 0 || c <= 0 {
		return nil, errors.New("bench: handshake count and concurrency must be positive")
	}
	lat := NewHistogram()
	var errs Errors
	var ok, failed atomic.Int64
	var version atomic.Uint32
	prog := po.Start("tls handshake", int64(n), 0)
	start := time.Now()
	forEach(ctx, n, c, func(ctx context.Context, _ int) {
		ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		defer cancel()
		// A fresh config per connection, as each device has its own: no
		// session resumption, every handshake is a full one.
		d := tls.Dialer{NetDialer: &net.Dialer{}, Config: &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, RootCAs: roots}}
		t0 := time.Now()
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				errs.Add("handshake", err)
				failed.Add(1)
			}
			prog.Add(false)
			return
		}
		lat.Record(time.Since(t0))
		version.Store(uint32(conn.(*tls.Conn).ConnectionState().Version))
		conn.Close()
		ok.Add(1)
		prog.Add(true)
	})
	elapsed := time.Since(start)
	prog.Done()
	res := &HandshakeResult{
		Address:     addr,
		Count:       n,
		Concurrency: c,
		Succeeded:   ok.Load(),
		Failed:      failed.Load(),
		Seconds:     seconds(elapsed),
		Rate:        perSecond(ok.Load(), elapsed),
		Latency:     lat.Summary(),
		Errors:      errs.Snapshot(),
	}
	if v := version.Load(); v != 0 {
		res.TLSVersion = tls.VersionName(uint16(v))
	}
	return res, nil
}
