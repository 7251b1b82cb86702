package rest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/pki"
)

// tlsServer serves the fixture's handler over real TLS on loopback with
// the 443 listener's own TLS configuration (pki.ServerTLSConfig: HTTP/1.1
// only, client certificates requested but not verified, so that X.509
// devices reach the handler as they reach berth's), with writeTimeout as
// its WriteTimeout (the server uses 30 s).
func (f *fixture) tlsServer(t testing.TB, writeTimeout time.Duration) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(f.h)
	srv.Config.WriteTimeout = writeTimeout
	srv.Config.ReadHeaderTimeout = 10 * time.Second
	// The server certificate is httptest's, which StartTLS puts into the
	// configuration's Certificates (its client trusts it); the source is
	// filled from there before the first connection.
	src := &pki.CertSource{}
	srv.TLS = pki.ServerTLSConfig(src, []string{"http/1.1"})
	srv.StartTLS()
	src.Set(&srv.TLS.Certificates[0])
	t.Cleanup(srv.Close)
	return srv
}

// clientTLS is the TLS configuration of a client of srv that presents
// certs (none: a SAS client).
func clientTLS(srv *httptest.Server, certs ...tls.Certificate) *tls.Config {
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.Certificates = certs
	return cfg
}

// wire sends one request to srv on a new TLS connection, as hub host, and
// returns the answer as a recorder whose header map holds the names
// exactly as they were on the wire (Go's client would canonicalise them:
// "ETag" would read as "Etag"), so that the checks written for recorders
// apply to real answers. hdr are name/value pairs.
func wire(t testing.TB, srv *httptest.Server, method, target string, body []byte, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	rec, err := wireErr(srv, method, target, body, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// wireErr is wire for goroutines, which must not call t.Fatal.
func wireErr(srv *httptest.Server, method, target string, body []byte, hdr ...string) (*httptest.ResponseRecorder, error) {
	return wireAs(srv, clientTLS(srv), hubName, method, target, body, hdr...)
}

// wireAs is wireErr for a client with its own TLS configuration (a client
// certificate), sending host in Host.
func wireAs(srv *httptest.Server, cfg *tls.Config, host, method, target string, body []byte, hdr ...string) (*httptest.ResponseRecorder, error) {
	req, err := http.NewRequest(method, "https://"+host+target, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body == nil {
		req.Body, req.ContentLength = nil, 0
	}
	req.Close = true
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// A bound, not an assertion: a hung handler fails the test instead of
	// the whole run.
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	// The request is written while the answer is read, as Go's transport
	// does: a server refusing an oversized body answers (and stops
	// reading) before the client has finished writing it.
	wrote := make(chan error, 1)
	go func() { wrote <- req.Write(conn) }()
	var seen bytes.Buffer
	resp, err := http.ReadResponse(bufio.NewReader(io.TeeReader(conn, &seen)), req)
	if err != nil {
		if werr := <-wrote; werr != nil {
			err = fmt.Errorf("%w (writing the request: %w)", err, werr)
		}
		return nil, fmt.Errorf("%s %s: %w", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: body: %w", method, target, err)
	}
	rec := httptest.NewRecorder()
	rec.Code = resp.StatusCode
	head, _, _ := strings.Cut(seen.String(), "\r\n\r\n")
	lines := strings.Split(head, "\r\n")
	for _, line := range lines[1:] {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("header line %q", line)
		}
		rec.HeaderMap[name] = append(rec.HeaderMap[name], strings.TrimSpace(value))
	}
	rec.Body.Write(b)
	return rec, nil
}

// fakeLink is a live device connection as a front end would attach it.
type fakeLink struct {
	mu         sync.Mutex
	subscribed bool
	// answer, when set, answers an invocation; otherwise the link answers
	// 200 with the request payload.
	answer  func(ctx context.Context, name string, payload []byte) (int, []byte, error)
	calls   []methodCall
	desired []desiredCall
	pending int
}

type methodCall struct {
	name     string
	payload  string
	deadline time.Time
}

type desiredCall struct {
	version int64
	body    string
}

func (l *fakeLink) DesiredPatch(version int64, body []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.desired = append(l.desired, desiredCall{version, string(body)})
}

func (l *fakeLink) MethodsSubscribed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.subscribed
}

func (l *fakeLink) InvokeMethod(ctx context.Context, name string, payload []byte) (int, []byte, error) {
	dl, _ := ctx.Deadline()
	l.mu.Lock()
	l.calls = append(l.calls, methodCall{name, string(payload), dl})
	answer := l.answer
	l.mu.Unlock()
	if answer != nil {
		return answer(ctx, name, payload)
	}
	return http.StatusOK, payload, nil
}

func (l *fakeLink) Close(hub.CloseReason) {}

func (l *fakeLink) CloudToDevicePending() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending++
}

func (l *fakeLink) snapshot() (calls []methodCall, desired []desiredCall, pending int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]methodCall(nil), l.calls...), append([]desiredCall(nil), l.desired...), l.pending
}

// attach connects a fake device link for id, subscribed to methods or
// not, for the rest of the test.
func (f *fixture) attach(t testing.TB, id string, subscribed bool) *fakeLink {
	t.Helper()
	l := &fakeLink{subscribed: subscribed}
	t.Cleanup(f.attachLink(hubName, id, l))
	return l
}

// attachLink attaches l as the device's link, with the credential the
// device has now (as a front end attaches a session that authenticated),
// and returns its detach.
func (f *fixture) attachLink(hubName, deviceID string, l hub.DeviceLink) func() {
	cred := ""
	if d, err := f.reg.Get(context.Background(), hubName, deviceID); err == nil {
		cred = hub.Credential(d)
	}
	_, detach := f.links.Attach(hubName, deviceID, cred, l)
	return detach
}
