package serviceclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
)

// testKey is base64("0123456789abcdef0123456789abcdef"), the key of
// docs/spec/dps-protocol.md#test-vectors, vector 22.
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// testHost is a name in the httptest certificate. It is never resolved: the
// client dials the listener through Options.Address.
const testHost = "example.com"

// seen is one request as the fake server received it.
type seen struct {
	Method, Path, Query string
	Header              http.Header
	Body                string
}

// reply is one programmed answer.
type reply struct {
	status int
	header map[string]string
	body   string
}

// fake is a TLS service API that records requests and plays replies in
// order.
type fake struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []seen
	replies []reply
}

func newFake(t *testing.T, replies ...reply) *fake {
	t.Helper()
	f := &fake{t: t, replies: replies}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(body)})
		var rp reply
		if len(f.replies) > 0 {
			rp, f.replies = f.replies[0], f.replies[1:]
		} else {
			rp = reply{status: 500, body: `{"errorCode":500000,"message":"fake: no reply programmed"}`}
		}
		f.mu.Unlock()
		for k, v := range rp.header {
			w.Header()[k] = []string{v}
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(rp.status)
		io.WriteString(w, rp.body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// caFile writes the fake's certificate as a PEM CA file.
func (f *fake) caFile() string {
	f.t.Helper()
	p := filepath.Join(f.t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(p, data, 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fake) client() *Client {
	f.t.Helper()
	c, err := New("HostName="+testHost+";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="+testKey,
		Options{CAFile: f.caFile(), Address: f.srv.Listener.Addr().String()})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func (f *fake) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

// checkCommon asserts what every request carries: api-version, JSON
// content type, and a fresh service token for the host signed with the key.
func checkCommon(t *testing.T, r seen) {
	t.Helper()
	if r.Query != "api-version="+APIVersion {
		t.Errorf("%s %s: query %q, want api-version=%s", r.Method, r.Path, r.Query, APIVersion)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json; charset=utf-8" {
		t.Errorf("%s %s: Content-Type %q", r.Method, r.Path, got)
	}
	tok, err := sas.Parse(r.Header.Get("Authorization"))
	if err != nil {
		t.Fatalf("%s %s: Authorization: %v", r.Method, r.Path, err)
	}
	if !tok.ResourceIs(testHost) || tok.KeyName != "provisioningserviceowner" || !tok.VerifyKey(testKey) {
		t.Errorf("%s %s: token sr=%q skn=%q verifies=%v", r.Method, r.Path, tok.RawResource, tok.KeyName, tok.VerifyKey(testKey))
	}
	if ttl := time.Until(tok.Expiry); ttl < 59*time.Minute || ttl > 61*time.Minute {
		t.Errorf("%s %s: token lifetime %v, want 1h", r.Method, r.Path, ttl)
	}
}

func TestRequests(t *testing.T) {
	enrollment := `{"registrationId":"dev-1","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cGs=","secondaryKey":"c2s="}},"etag":"e2","provisioningStatus":"enabled"}`
	group := `{"enrollmentGroupId":"g 1","attestation":{"type":"symmetricKey"},"etag":"ge"}`
	reg := `{"registrationId":"dev-1","status":"assigned","assignedHub":"hub.example","deviceId":"dev-1","etag":"re"}`
	att := `{"type":"symmetricKey","symmetricKey":{"primaryKey":"cGs=","secondaryKey":"c2s="}}`

	runRequestCases(t, []requestCase{
		{
			name:  "put enrollment",
			reply: reply{status: 200, body: enrollment},
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.PutEnrollment(ctx, &dps.IndividualEnrollment{RegistrationID: "dev-1", Common: dps.Common{
					Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}}, `"e1"`)
			},
			wantMethod: "PUT", wantPath: "/enrollments/dev-1", wantIfM: `"e1"`,
			wantBody: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}`,
			want: &dps.IndividualEnrollment{RegistrationID: "dev-1", Common: dps.Common{
				Attestation: &dps.AttestationMechanism{Type: "symmetricKey", SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: "cGs=", SecondaryKey: "c2s="}},
				ETag:        "e2", ProvisioningStatus: "enabled"}},
		},
		{
			name:       "get enrollment",
			reply:      reply{status: 200, body: enrollment},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GetEnrollment(ctx, "dev-1") },
			wantMethod: "GET", wantPath: "/enrollments/dev-1",
		},
		{
			name:  "delete enrollment",
			reply: reply{status: 204},
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.DeleteEnrollment(ctx, "dev-1", "e2")
			},
			wantMethod: "DELETE", wantPath: "/enrollments/dev-1", wantIfM: "e2",
		},
		{
			name:       "enrollment attestation",
			reply:      reply{status: 200, body: att},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.EnrollmentAttestation(ctx, "dev-1") },
			wantMethod: "POST", wantPath: "/enrollments/dev-1/attestationmechanism",
			want: &dps.AttestationMechanism{Type: "symmetricKey", SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: "cGs=", SecondaryKey: "c2s="}},
		},
		{
			name:  "put group escapes the id",
			reply: reply{status: 200, body: group},
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.PutEnrollmentGroup(ctx, &dps.EnrollmentGroup{EnrollmentGroupID: "g 1", Common: dps.Common{
					Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}}, "")
			},
			wantMethod: "PUT", wantPath: "/enrollmentGroups/g%201",
			wantBody: `{"enrollmentGroupId":"g 1","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}`,
			want: &dps.EnrollmentGroup{EnrollmentGroupID: "g 1", Common: dps.Common{
				Attestation: &dps.AttestationMechanism{Type: "symmetricKey"}, ETag: "ge"}},
		},
		{
			name:       "get group",
			reply:      reply{status: 200, body: group},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GetEnrollmentGroup(ctx, "g1") },
			wantMethod: "GET", wantPath: "/enrollmentGroups/g1",
		},
		{
			name:  "delete group",
			reply: reply{status: 204},
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.DeleteEnrollmentGroup(ctx, "g1", "")
			},
			wantMethod: "DELETE", wantPath: "/enrollmentGroups/g1",
		},
		{
			name:       "group attestation",
			reply:      reply{status: 200, body: att},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.EnrollmentGroupAttestation(ctx, "g1") },
			wantMethod: "POST", wantPath: "/enrollmentGroups/g1/attestationmechanism",
		},
		{
			name:       "get registration",
			reply:      reply{status: 200, body: reg},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GetRegistration(ctx, "dev-1") },
			wantMethod: "GET", wantPath: "/registrations/dev-1",
			want: &dps.RegistrationState{RegistrationID: "dev-1", Status: "assigned", AssignedHub: "hub.example", DeviceID: "dev-1", ETag: "re"},
		},
		{
			name:  "delete registration",
			reply: reply{status: 204},
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.DeleteRegistration(ctx, "dev-1", "re")
			},
			wantMethod: "DELETE", wantPath: "/registrations/dev-1", wantIfM: "re",
		},
	})
}

// requestCase is one call of the client and the one request it must send.
type requestCase struct {
	name       string
	reply      reply
	call       func(ctx context.Context, c *Client) (any, error)
	wantMethod string
	wantPath   string
	wantQuery  string // parameters after api-version; "" for none
	wantIfM    string
	wantBody   string // JSON compared semantically; "" means no body
	want       any
}

// runRequestCases runs each case against a fake that plays its reply.
func runRequestCases(t *testing.T, tests []requestCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.reply)
			got, err := tt.call(context.Background(), f.client())
			if err != nil {
				t.Fatal(err)
			}
			reqs := f.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			// More parameters follow api-version, which checkCommon checks.
			base, extra, _ := strings.Cut(r.Query, "&")
			if extra != tt.wantQuery {
				t.Errorf("query %q, want api-version then %q", r.Query, tt.wantQuery)
			}
			r.Query = base
			checkCommon(t, r)
			if r.Method != tt.wantMethod || r.Path != tt.wantPath {
				t.Errorf("request %s %s, want %s %s", r.Method, r.Path, tt.wantMethod, tt.wantPath)
			}
			if im := r.Header.Get("If-Match"); im != tt.wantIfM || (tt.wantIfM == "" && r.Header["If-Match"] != nil) {
				t.Errorf("If-Match %q, want %q", im, tt.wantIfM)
			}
			if tt.wantBody == "" {
				if r.Body != "" {
					t.Errorf("body %q, want none", r.Body)
				}
			} else {
				jsonEqual(t, r.Body, tt.wantBody)
			}
			if tt.want != nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("result\n got %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

func jsonEqual(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("body %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want %q: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("body\n got %s\nwant %s", got, want)
	}
}

func TestPagingLoop(t *testing.T) {
	f := newFake(t,
		reply{status: 200, header: map[string]string{"x-ms-continuation": "c1", "x-ms-item-type": "Enrollment"},
			body: `[{"registrationId":"a","attestation":{"type":"symmetricKey"}},{"registrationId":"b","attestation":{"type":"symmetricKey"}}]`},
		reply{status: 200, header: map[string]string{"x-ms-continuation": "c2", "x-ms-item-type": "Enrollment"},
			body: `[{"registrationId":"c","attestation":{"type":"symmetricKey"}},{"registrationId":"d","attestation":{"type":"symmetricKey"}}]`},
		reply{status: 200, header: map[string]string{"x-ms-item-type": "Enrollment"},
			body: `[{"registrationId":"e","attestation":{"type":"symmetricKey"}}]`},
	)
	all, err := f.client().ListEnrollments(context.Background(), 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range all {
		ids = append(ids, e.RegistrationID)
	}
	if strings.Join(ids, ",") != "a,b,c,d,e" {
		t.Errorf("ids %v", ids)
	}
	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	for i, wantCont := range []string{"", "c1", "c2"} {
		r := reqs[i]
		checkCommon(t, r)
		if r.Method != "POST" || r.Path != "/enrollments/query" {
			t.Errorf("page %d: %s %s", i, r.Method, r.Path)
		}
		jsonEqual(t, r.Body, `{"query":"SELECT * FROM enrollments"}`)
		if got := r.Header.Get("x-ms-max-item-count"); got != "2" {
			t.Errorf("page %d: x-ms-max-item-count %q", i, got)
		}
		if got, ok := r.Header["X-Ms-Continuation"]; (wantCont == "" && ok) || (wantCont != "" && (len(got) != 1 || got[0] != wantCont)) {
			t.Errorf("page %d: x-ms-continuation %q, want %q", i, got, wantCont)
		}
	}
}

func TestPagingLimit(t *testing.T) {
	f := newFake(t,
		reply{status: 200, header: map[string]string{"x-ms-continuation": "c1"},
			body: `[{"enrollmentGroupId":"a","attestation":{"type":"symmetricKey"}},{"enrollmentGroupId":"b","attestation":{"type":"symmetricKey"}}]`},
		reply{status: 200, header: map[string]string{"x-ms-continuation": "c2"},
			body: `[{"enrollmentGroupId":"c","attestation":{"type":"symmetricKey"}},{"enrollmentGroupId":"d","attestation":{"type":"symmetricKey"}}]`},
	)
	got, err := f.client().ListEnrollmentGroups(context.Background(), 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].EnrollmentGroupID != "c" {
		t.Fatalf("got %d groups", len(got))
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2 (stop once the limit is reached)", len(reqs))
	}
	if reqs[0].Path != "/enrollmentGroups/query" || reqs[0].Header.Get("x-ms-max-item-count") != "3" {
		t.Errorf("first page: %s max=%q", reqs[0].Path, reqs[0].Header.Get("x-ms-max-item-count"))
	}
}

func TestRegistrationQuery(t *testing.T) {
	f := newFake(t,
		reply{status: 200, header: map[string]string{"x-ms-continuation": "n"}, body: `[{"registrationId":"a","status":"assigned"}]`},
		reply{status: 200, body: `[]`},
	)
	got, err := f.client().ListRegistrations(context.Background(), "grp", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].RegistrationID != "a" {
		t.Fatalf("got %+v", got)
	}
	reqs := f.requests()
	if len(reqs) != 2 || reqs[0].Method != "POST" || reqs[0].Path != "/registrations/grp/query" || reqs[0].Body != "" {
		t.Fatalf("requests %+v", reqs)
	}
	if reqs[0].Header.Get("x-ms-max-item-count") != "" || reqs[1].Header.Get("x-ms-continuation") != "n" {
		t.Errorf("paging headers: %v / %v", reqs[0].Header, reqs[1].Header)
	}
}

func TestRepeatedContinuation(t *testing.T) {
	page := reply{status: 200, header: map[string]string{"x-ms-continuation": "same"}, body: `[]`}
	f := newFake(t, page, page, page)
	if _, err := f.client().ListEnrollments(context.Background(), 0, 0); err == nil || !strings.Contains(err.Error(), "repeated") {
		t.Fatalf("err = %v, want a repeated-token error", err)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name  string
		reply reply
		want  Error
	}{
		{"dps body", reply{status: 404, header: map[string]string{"x-ms-request-id": "hdr"},
			body: `{"errorCode":404201,"trackingId":"t-1","message":"Enrollment not found.","timestampUtc":"2024-01-01T00:00:00Z"}`},
			Error{Status: 404, Code: 404201, Message: "Enrollment not found.", TrackingID: "t-1"}},
		{"not json", reply{status: 502, header: map[string]string{"x-ms-error-code": "502000", "x-ms-request-id": "r-9"}, body: `<html>bad gateway</html>`},
			Error{Status: 502, Code: 502000, Message: "<html>bad gateway</html>", TrackingID: "r-9"}},
		{"precondition", reply{status: 412, body: `{"errorCode":412001,"trackingId":"t","message":"Precondition failed."}`},
			Error{Status: 412, Code: 412001, Message: "Precondition failed.", TrackingID: "t"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.reply)
			_, err := f.client().GetEnrollment(context.Background(), "x")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T %v, want *Error", err, err)
			}
			if *e != tt.want {
				t.Errorf("error %+v, want %+v", *e, tt.want)
			}
			if IsNotFound(err) != (tt.want.Status == 404) {
				t.Errorf("IsNotFound = %v", IsNotFound(err))
			}
		})
	}
}

// TestServiceTokenVector checks the Authorization header against
// docs/spec/dps-protocol.md#test-vectors, vector 22.
func TestServiceTokenVector(t *testing.T) {
	f := newFake(t, reply{status: 204})
	c, err := New("HostName=mydps.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="+testKey,
		Options{HTTPClient: f.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return time.Unix(1700000000, 0).Add(-TokenTTL) }
	// The HTTPClient of the fake accepts its certificate for any name and
	// the URL's host does not matter to it, but the name must resolve: send
	// to the listener by rewriting the base.
	c.base.Host = f.srv.Listener.Addr().String()
	if err := c.DeleteRegistration(context.Background(), "d", ""); err != nil {
		t.Fatal(err)
	}
	want := "SharedAccessSignature sr=mydps.azure-devices-provisioning.net&sig=xXBqEKztXMACe9dg1gMBreO%2F8CMn3ovt%2B%2BxDvPb6Xl0%3D&se=1700000000&skn=provisioningserviceowner"
	if got := f.requests()[0].Header.Get("Authorization"); got != want {
		t.Errorf("Authorization\n got %s\nwant %s", got, want)
	}
}

func TestTLSTrust(t *testing.T) {
	f := newFake(t, reply{status: 204})
	// Another CA does not vouch for this server. (Every httptest server
	// shares one certificate, so make a new one.)
	c, err := New("HostName="+testHost+";SharedAccessKeyName=k;SharedAccessKey="+testKey,
		Options{CAFile: otherCA(t), Address: f.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRegistration(context.Background(), "d", ""); err == nil {
		t.Fatal("request to an untrusted server succeeded")
	}
	// The right CA but a host name the certificate does not carry.
	c, err = New("HostName=wrong.invalid;SharedAccessKeyName=k;SharedAccessKey="+testKey,
		Options{CAFile: f.caFile(), Address: f.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRegistration(context.Background(), "d", ""); err == nil {
		t.Fatal("request to a server with a certificate for another name succeeded")
	}
	if len(f.requests()) != 0 {
		t.Errorf("the server saw %d requests", len(f.requests()))
	}
}

// otherCA writes a fresh self-signed CA certificate for example.com.
func otherCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "other CA"},
		DNSNames:              []string{testHost},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseConnectionString(t *testing.T) {
	tests := []struct {
		in      string
		want    ConnectionString
		wantErr string
	}{
		{in: "HostName=h.example;SharedAccessKeyName=owner;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "h.example", SharedAccessKeyName: "owner", SharedAccessKey: testKey}},
		{in: " sharedaccesskey=" + testKey + " ; HOSTNAME=h:8443 ;SharedAccessKeyName=owner;",
			want: ConnectionString{HostName: "h:8443", SharedAccessKeyName: "owner", SharedAccessKey: testKey}},
		{in: "SharedAccessKeyName=owner;SharedAccessKey=" + testKey, wantErr: "no HostName"},
		{in: "HostName=h;SharedAccessKey=" + testKey, wantErr: "no SharedAccessKeyName"},
		{in: "HostName=h;SharedAccessKeyName=owner", wantErr: "no SharedAccessKey"},
		{in: "HostName=h;SharedAccessKeyName=owner;SharedAccessKey=not*base64", wantErr: "not valid base64"},
		{in: "HostName=https://h/;SharedAccessKeyName=owner;SharedAccessKey=" + testKey, wantErr: "not a host name"},
		{in: "garbage", wantErr: "no '='"},
	}
	for _, tt := range tests {
		got, err := ParseConnectionString(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err %v, want %q", tt.in, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "not*base64") {
				t.Errorf("%q: the error quotes the key: %v", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}
