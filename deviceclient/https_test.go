package deviceclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/berth-iot/berth/sas"
)

const (
	testScope = "0ne00000A0A"
	testKey   = "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc="
)

// httpsFake is a DPS device API with scripted answers per request, which
// checks the request's credentials and shape.
type httpsFake struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	log     []string
	answers []func(w http.ResponseWriter)
	// x509 makes the fake expect certificate authentication (no
	// Authorization); chains are the client certificate chains it saw,
	// as subject CNs.
	x509   bool
	chains []string
}

func newHTTPSFake(t *testing.T, answers ...func(w http.ResponseWriter)) *httpsFake {
	f := &httpsFake{t: t, answers: answers}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	// Request, never require, a client certificate, as berth and Azure do.
	f.srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *httpsFake) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.log = append(f.log, r.Method+" "+r.Host+" "+r.URL.EscapedPath()+"?"+r.URL.RawQuery+" "+string(body))
	f.chains = append(f.chains, chainCNs(r.TLS.PeerCertificates))
	x509Auth := f.x509
	var answer func(http.ResponseWriter)
	if len(f.answers) > 0 {
		answer, f.answers = f.answers[0], f.answers[1:]
	}
	f.mu.Unlock()

	if x509Auth {
		if _, ok := r.Header["Authorization"]; ok {
			f.t.Errorf("%s %s: Authorization sent with a client certificate", r.Method, r.URL.Path)
		}
	} else if tok, err := sas.Parse(r.Header.Get("Authorization")); err != nil || !tok.ResourceIs(testScope+"/registrations/dev-1") || tok.KeyName != "registration" || !tok.VerifyKey(testKey) {
		f.t.Errorf("%s %s: bad token (%v)", r.Method, r.URL.Path, err)
	}
	if r.Method == http.MethodPut && r.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		f.t.Errorf("PUT Content-Type %q", r.Header.Get("Content-Type"))
	}
	if answer == nil {
		w.WriteHeader(500)
		io.WriteString(w, `{"errorCode":500000,"message":"fake: no answer"}`)
		return
	}
	answer(w)
}

func answer(status int, retryAfter, body string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if retryAfter != "" {
			// Lower case on the wire, as berth writes it.
			w.Header()["retry-after"] = []string{retryAfter}
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func (f *httpsFake) options() Options {
	pool := x509.NewCertPool()
	pool.AddCert(f.srv.Certificate())
	return Options{
		Transport:      TransportHTTPS,
		GlobalEndpoint: "example.com", // in the httptest certificate; dialled through Address
		Address:        f.srv.Listener.Addr().String(),
		IDScope:        testScope,
		RegistrationID: "dev-1",
		SymmetricKey:   testKey,
		RootCAs:        pool,
	}
}

func TestHTTPSProvision(t *testing.T) {
	f := newHTTPSFake(t,
		answer(202, "0", `{"operationId":"op 1","status":"assigning"}`),
		answer(429, "0", `{"errorCode":429001,"trackingId":"t","message":"Too many requests."}`),
		answer(202, "0", `{"operationId":"op 1","status":"assigning","registrationState":{"registrationId":"dev-1","status":"assigning"}}`),
		answer(200, "", `{"operationId":"op 1","status":"assigned","registrationState":{"registrationId":"dev-1","assignedHub":"hub.example","deviceId":"dev-1","status":"assigned","substatus":"initialAssignment"}}`),
	)
	opts := f.options()
	opts.Payload = []byte(`{"modelId":"dtmi:x;1"}`)
	got, err := Provision(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != "assigned" || got.RegistrationState.AssignedHub != "hub.example" || got.RegistrationState.DeviceID != "dev-1" {
		t.Errorf("result %+v", got)
	}
	want := []string{
		`PUT example.com /0ne00000A0A/registrations/dev-1/register?api-version=2021-06-01 {"registrationId":"dev-1","payload":{"modelId":"dtmi:x;1"}}`,
		`GET example.com /0ne00000A0A/registrations/dev-1/operations/op%201?api-version=2021-06-01 `,
		`GET example.com /0ne00000A0A/registrations/dev-1/operations/op%201?api-version=2021-06-01 `,
		`GET example.com /0ne00000A0A/registrations/dev-1/operations/op%201?api-version=2021-06-01 `,
	}
	if strings.Join(f.log, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests\n got %s\nwant %s", strings.Join(f.log, "\n"), strings.Join(want, "\n"))
	}
}

func TestHTTPSError(t *testing.T) {
	f := newHTTPSFake(t, answer(401, "", `{"errorCode":401002,"trackingId":"tr","message":"Unauthorized","timestampUtc":"2020-01-17T05:11:45.7515964Z"}`))
	_, err := Provision(context.Background(), f.options())
	var e *Error
	if !errors.As(err, &e) || e.Status != 401 || e.Code != 401002 || e.TrackingID != "tr" {
		t.Fatalf("err %#v", err)
	}
	if len(f.log) != 1 {
		t.Errorf("%d requests, want 1 (401 is not retried)", len(f.log))
	}
}

func TestHTTPSUntrusted(t *testing.T) {
	f := newHTTPSFake(t)
	opts := f.options()
	opts.RootCAs = x509.NewCertPool() // trusts nothing
	if _, err := Provision(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err %v, want a certificate error", err)
	}
	if len(f.log) != 0 {
		t.Errorf("the server saw %d requests", len(f.log))
	}
}
