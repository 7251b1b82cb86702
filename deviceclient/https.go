package deviceclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxAnswer bounds an answer body: DPS messages are at most 96 KB.
const maxAnswer = 1 << 20

// httpsSession is a Session over the DPS device REST API.
type httpsSession struct {
	opts Options
	log  *slog.Logger
	hc   *http.Client
	host string // URL host: the global endpoint, bracketed if IPv6
}

func newHTTPS(opts Options, tlsConf *tls.Config) *httpsSession {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	tr.ForceAttemptHTTP2 = false
	addr := opts.Address
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	// Dial Address whatever the URL says, so that the URL (and TLS) can
	// name the endpoint even when it does not resolve to berth.
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
	host := opts.GlobalEndpoint
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return &httpsSession{opts: opts, log: opts.Logger, hc: &http.Client{Transport: tr, Timeout: time.Minute}, host: host}
}

// endpoint is the URL of /{idScope}/registrations/{registrationId} and more
// segments, each escaped on its own.
func (s *httpsSession) endpoint(more ...string) string {
	segs := append([]string{s.opts.IDScope, "registrations", s.opts.RegistrationID}, more...)
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return "https://" + s.host + "/" + strings.Join(segs, "/") + "?api-version=" + HTTPSAPIVersion
}

// Register is PUT …/register.
func (s *httpsSession) Register(ctx context.Context) (*Result, error) {
	body, err := RegisterBody(s.opts.RegistrationID, s.opts.Payload)
	if err != nil {
		return nil, err
	}
	return s.do(ctx, http.MethodPut, s.endpoint("register"), body)
}

// Poll is GET …/operations/{operationId}.
func (s *httpsSession) Poll(ctx context.Context, operationID string) (*Result, error) {
	return s.do(ctx, http.MethodGet, s.endpoint("operations", operationID), nil)
}

func (s *httpsSession) do(ctx context.Context, method, u string, body []byte) (*Result, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	token, err := s.opts.token()
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", s.opts.ClientVersion)
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	s.log.Debug("deviceclient: https request", "method", method, "url", u)
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, u, err)
	}
	ra, hasRA := parseRetryAfter(resp.Header.Get("Retry-After"))
	s.log.Debug("deviceclient: https answer", "status", resp.StatusCode, "retryAfter", ra)
	return decodeAnswer(resp.StatusCode, ra, hasRA, data, resp.Header.Get("x-ms-request-id"))
}

// parseRetryAfter reads delta-seconds, the only form DPS sends (C# reads
// Headers.RetryAfter.Delta).
func parseRetryAfter(v string) (time.Duration, bool) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// Close drops idle connections.
func (s *httpsSession) Close() error {
	s.hc.CloseIdleConnections()
	return nil
}
