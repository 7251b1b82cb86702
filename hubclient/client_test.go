package hubclient

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// testKey is base64("0123456789abcdef0123456789abcdef").
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// testHost is a name in the httptest certificate. It is never resolved: the
// client dials the listener through Options.Address.
const testHost = "example.com"

// seen is one request as the fake hub received it.
type seen struct {
	Method, Path, Query string
	Header              http.Header
	Body                string
}

type reply struct {
	status int
	header map[string]string
	body   string
}

// fake is a TLS hub that records requests and plays replies in order.
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
			rp = reply{status: 500, body: `{"Message":"ErrorCode:ServerError;fake: no reply programmed"}`}
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

func (f *fake) caFile() string {
	f.t.Helper()
	p := filepath.Join(f.t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fake) client() *Client {
	f.t.Helper()
	c, err := New("HostName="+testHost+";SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey,
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

// checkCommon asserts what every request carries: the API version, JSON
// content type, and a fresh service token for the bare host name signed
// with the policy's key.
func checkCommon(t *testing.T, r seen, wantQuery string) {
	t.Helper()
	if r.Query != wantQuery {
		t.Errorf("%s %s: query %q, want %q", r.Method, r.Path, r.Query, wantQuery)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json; charset=utf-8" {
		t.Errorf("%s %s: Content-Type %q", r.Method, r.Path, got)
	}
	tok, err := sas.Parse(r.Header.Get("Authorization"))
	if err != nil {
		t.Fatalf("%s %s: Authorization: %v", r.Method, r.Path, err)
	}
	if tok.RawResource != testHost || tok.KeyName != "iothubowner" || !tok.VerifyKey(testKey) {
		t.Errorf("%s %s: token sr=%q skn=%q verifies=%v", r.Method, r.Path, tok.RawResource, tok.KeyName, tok.VerifyKey(testKey))
	}
	if _, err := tok.Verify(time.Now(), "d3Jvbmc=", testKey); err != nil {
		t.Errorf("%s %s: token does not verify: %v", r.Method, r.Path, err)
	}
	if ttl := time.Until(tok.Expiry); ttl < 59*time.Minute || ttl > 61*time.Minute {
		t.Errorf("%s %s: token lifetime %v, want 1h", r.Method, r.Path, ttl)
	}
}

// jsonEqual compares JSON documents semantically.
func jsonEqual(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("got is not JSON: %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want is not JSON: %q: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("JSON\n got %s\nwant %s", got, want)
	}
}

const deviceJSON = `{"deviceId":"d1","generationId":"638000000000000000","etag":"AAAAAAAAAAE=","connectionState":"Disconnected","status":"enabled","statusReason":null,"connectionStateUpdatedTime":"0001-01-01T00:00:00Z","statusUpdatedTime":"0001-01-01T00:00:00Z","lastActivityTime":"0001-01-01T00:00:00Z","cloudToDeviceMessageCount":0,"authentication":{"symmetricKey":{"primaryKey":"cGs=","secondaryKey":"c2s="},"type":"sas"},"capabilities":{"iotEdge":false}}`

const api = "api-version=" + APIVersion

func TestRequests(t *testing.T) {
	ctx := context.Background()
	reason := "maintenance"
	tests := []struct {
		name      string
		replies   []reply
		call      func(c *Client) (any, error)
		wantReq   []string // "METHOD PATH" per request
		wantQuery string
		wantMatch string // If-Match of the (last) request; "-" for none
		wantBody  string // JSON of the (last) request body; "" for none
		wantOut   string // JSON of the result; "" for none
	}{
		{
			name:    "create sends the settable fields and no If-Match",
			replies: []reply{{status: 200, body: deviceJSON}},
			call: func(c *Client) (any, error) {
				return c.CreateDevice(ctx, &hub.Device{DeviceID: "d1", Status: hub.StatusEnabled, ConnectionState: "Connected", ETag: "ignored",
					Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{}}})
			},
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: "-",
			wantBody:  `{"deviceId":"d1","status":"enabled","authentication":{"symmetricKey":{"primaryKey":"","secondaryKey":""},"type":"sas"}}`,
			wantOut:   deviceJSON,
		},
		{
			name:    "update quotes a bare etag",
			replies: []reply{{status: 200, body: deviceJSON}},
			call: func(c *Client) (any, error) {
				return c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1", Status: hub.StatusDisabled, StatusReason: &reason}, "AAAAAAAAAAE=")
			},
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: `"AAAAAAAAAAE="`,
			wantBody:  `{"deviceId":"d1","status":"disabled","statusReason":"maintenance"}`,
			wantOut:   deviceJSON,
		},
		{
			name:      "update quotes the wildcard",
			replies:   []reply{{status: 200, body: deviceJSON}},
			call:      func(c *Client) (any, error) { return c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1"}, "*") },
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: `"*"`,
			wantBody:  `{"deviceId":"d1"}`,
			wantOut:   deviceJSON,
		},
		{
			name:      "update keeps an etag that is already quoted",
			replies:   []reply{{status: 200, body: deviceJSON}},
			call:      func(c *Client) (any, error) { return c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1"}, `"e1"`) },
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: `"e1"`,
			wantBody:  `{"deviceId":"d1"}`,
			wantOut:   deviceJSON,
		},
		{
			name:      "get escapes the ID as one segment",
			replies:   []reply{{status: 200, body: deviceJSON}},
			call:      func(c *Client) (any, error) { return c.GetDevice(ctx, "dev 1?#/x") },
			wantReq:   []string{"GET /devices/dev%201%3F%23%2Fx"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   deviceJSON,
		},
		{
			name:      "delete with an etag",
			replies:   []reply{{status: 204}},
			call:      func(c *Client) (any, error) { return nil, c.DeleteDevice(ctx, "d1", "e1") },
			wantReq:   []string{"DELETE /devices/d1"},
			wantQuery: api,
			wantMatch: `"e1"`,
		},
		{
			name:      "delete with the wildcard",
			replies:   []reply{{status: 204}},
			call:      func(c *Client) (any, error) { return nil, c.DeleteDevice(ctx, "d1", "*") },
			wantReq:   []string{"DELETE /devices/d1"},
			wantQuery: api,
			wantMatch: `"*"`,
		},
		{
			name:      "delete unconditionally",
			replies:   []reply{{status: 204}},
			call:      func(c *Client) (any, error) { return nil, c.DeleteDevice(ctx, "d1", "") },
			wantReq:   []string{"DELETE /devices/d1"},
			wantQuery: api,
			wantMatch: "-",
		},
		{
			name:      "list with top",
			replies:   []reply{{status: 200, body: "[" + deviceJSON + "]"}},
			call:      func(c *Client) (any, error) { return c.ListDevices(ctx, 5) },
			wantReq:   []string{"GET /devices"},
			wantQuery: api + "&top=5",
			wantMatch: "-",
			wantOut:   "[" + deviceJSON + "]",
		},
		{
			name:      "list without top, empty registry",
			replies:   []reply{{status: 200, body: "[]"}},
			call:      func(c *Client) (any, error) { return c.ListDevices(ctx, 0) },
			wantReq:   []string{"GET /devices"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   "[]",
		},
		{
			name:      "statistics",
			replies:   []reply{{status: 200, body: `{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}`}},
			call:      func(c *Client) (any, error) { return c.DeviceStatistics(ctx) },
			wantReq:   []string{"GET /statistics/devices"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   `{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.replies...)
			out, err := tt.call(f.client())
			if err != nil {
				t.Fatal(err)
			}
			reqs := f.requests()
			var got []string
			for _, r := range reqs {
				got = append(got, r.Method+" "+r.Path)
				checkCommon(t, r, tt.wantQuery)
			}
			if strings.Join(got, "\n") != strings.Join(tt.wantReq, "\n") {
				t.Fatalf("requests %q, want %q", got, tt.wantReq)
			}
			last := reqs[len(reqs)-1]
			if m, ok := last.Header["If-Match"]; tt.wantMatch == "-" && ok {
				t.Errorf("If-Match %q sent, want none", m)
			} else if tt.wantMatch != "-" && (len(m) != 1 || m[0] != tt.wantMatch) {
				t.Errorf("If-Match %q, want %q", m, tt.wantMatch)
			}
			if tt.wantBody == "" {
				if last.Body != "" {
					t.Errorf("body %q, want none", last.Body)
				}
			} else {
				// Exact text, not just the same JSON: the read-only fields
				// must be absent, not sent as zero values.
				if last.Body != tt.wantBody {
					t.Errorf("body\n got %s\nwant %s", last.Body, tt.wantBody)
				}
			}
			if tt.wantOut != "" {
				b, err := json.Marshal(out)
				if err != nil {
					t.Fatal(err)
				}
				jsonEqual(t, string(b), tt.wantOut)
			}
		})
	}
}

// TestErrors: both error bodies of spec §9.1 and what is not one of them.
func TestErrors(t *testing.T) {
	tests := []struct {
		name  string
		reply reply
		want  Error
		text  string
	}{
		{
			name: "legacy body with header (berth, IoT Hub)",
			reply: reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound", "x-ms-request-id": "req-1"},
				body: `{"Message":"ErrorCode:DeviceNotFound;Device d9 not found.","ExceptionMessage":"Tracking ID:abc-123-G:11-TimeStamp:07/16/2016 00:12:41"}`},
			want: Error{Status: 404, Name: "DeviceNotFound", Message: "Device d9 not found.", TrackingID: "abc-123-G:11"},
			text: "iot hub: 404 Not Found (DeviceNotFound): Device d9 not found. [trackingId abc-123-G:11]",
		},
		{
			name:  "legacy body without header: the name comes from Message",
			reply: reply{status: 409, body: `{"Message":"ErrorCode:DeviceAlreadyExists;A device with ID 'd1' is already registered.","ExceptionMessage":""}`},
			want:  Error{Status: 409, Name: "DeviceAlreadyExists", Message: "A device with ID 'd1' is already registered."},
			text:  "iot hub: 409 Conflict (DeviceAlreadyExists): A device with ID 'd1' is already registered.",
		},
		{
			name:  "the header wins over the body",
			reply: reply{status: 412, header: map[string]string{"iothub-errorcode": "PreconditionFailed"}, body: `{"Message":"ErrorCode:Other;Precondition failed."}`},
			want:  Error{Status: 412, Name: "PreconditionFailed", Message: "Precondition failed."},
		},
		{
			name: "Message holding JSON (newer IoT Hub)",
			reply: reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound"},
				body: `{"Message":"{\"errorCode\":404001,\"trackingId\":\"t-9\",\"message\":\"Device not found\",\"timestampUtc\":\"2024-01-01T00:00:00Z\"}","ExceptionMessage":""}`},
			want: Error{Status: 404, Name: "DeviceNotFound", Message: "Device not found", TrackingID: "t-9"},
		},
		{
			name:  "not JSON: quoted, the request ID kept",
			reply: reply{status: 502, header: map[string]string{"x-ms-request-id": "req-2"}, body: "<html>bad gateway</html>"},
			want:  Error{Status: 502, Message: "<html>bad gateway</html>", TrackingID: "req-2"},
			text:  "iot hub: 502 Bad Gateway: <html>bad gateway</html> [trackingId req-2]",
		},
		{
			name:  "empty body",
			reply: reply{status: 401},
			want:  Error{Status: 401},
			text:  "iot hub: 401 Unauthorized",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.reply)
			_, err := f.client().GetDevice(context.Background(), "d9")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T %v, want *Error", err, err)
			}
			if *e != tt.want {
				t.Errorf("error %+v, want %+v", *e, tt.want)
			}
			if tt.text != "" && e.Error() != tt.text {
				t.Errorf("Error() %q, want %q", e.Error(), tt.text)
			}
			if IsNotFound(err) != (tt.want.Status == 404) {
				t.Errorf("IsNotFound = %v", IsNotFound(err))
			}
		})
	}
}

func TestArgumentChecks(t *testing.T) {
	f := newFake(t)
	c := f.client()
	ctx := context.Background()
	if _, err := c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1"}, ""); err == nil {
		t.Error("UpdateDevice without If-Match succeeded: it would be a create")
	}
	if _, err := c.CreateDevice(ctx, &hub.Device{}); err == nil {
		t.Error("CreateDevice without an ID succeeded")
	}
	if _, err := c.ListDevices(ctx, MaxTop+1); err == nil {
		t.Error("ListDevices over the page limit succeeded")
	}
	if got := f.requests(); len(got) != 0 {
		t.Errorf("refused calls reached the hub: %v", got)
	}
}

func TestQuoteETag(t *testing.T) {
	for in, want := range map[string]string{
		"*":              `"*"`,
		`"*"`:            `"*"`,
		"AAAAAAAAAAE=":   `"AAAAAAAAAAE="`,
		`"AAAAAAAAAAE="`: `"AAAAAAAAAAE="`,
		`"`:              `"""`,
		`a"b`:            `"a"b"`,
	} {
		if got := QuoteETag(in); got != want {
			t.Errorf("QuoteETag(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTLSTrust: the client verifies the server against the CA file, for the
// connection string's host name.
func TestTLSTrust(t *testing.T) {
	f := newFake(t, reply{status: 200, body: deviceJSON})
	// No CA file: the httptest certificate is not trusted.
	c, err := New("HostName="+testHost+";SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey, Options{Address: f.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetDevice(context.Background(), "d1"); err == nil {
		t.Error("an untrusted server was accepted")
	}
	// Right CA, wrong name.
	c, err = New("HostName=other.invalid;SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey, Options{CAFile: f.caFile(), Address: f.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetDevice(context.Background(), "d1"); err == nil {
		t.Error("a certificate for another name was accepted")
	}
	if _, err := New("HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey, Options{CAFile: filepath.Join(t.TempDir(), "none.pem")}); err == nil {
		t.Error("a missing CA file was accepted")
	}
}

func TestParseConnectionString(t *testing.T) {
	cs, err := ParseConnectionString(" sharedaccesskey=" + testKey + "; HostName=hub.example.lan ;SharedAccessKeyName=iothubowner;GatewayHostName=gw")
	if err != nil {
		t.Fatal(err)
	}
	if cs != (ConnectionString{HostName: "hub.example.lan", SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey}) {
		t.Errorf("parsed %+v", cs)
	}
	for _, bad := range []string{
		"",
		"HostName=h;SharedAccessKeyName=p",
		"HostName=h;DeviceId=d1;SharedAccessKey=" + testKey, // a device connection string
		"SharedAccessKeyName=p;SharedAccessKey=" + testKey,
		"HostName=h;SharedAccessKeyName=p;SharedAccessKey=not*base64",
		"HostName=h/x;SharedAccessKeyName=p;SharedAccessKey=" + testKey,
		"HostName=h;SharedAccessKeyName=p;junk",
	} {
		_, err := ParseConnectionString(bad)
		if err == nil {
			t.Errorf("ParseConnectionString(%q) succeeded", bad)
			continue
		}
		if strings.Contains(err.Error(), testKey) || strings.Contains(err.Error(), "not*base64") {
			t.Errorf("error quotes the key: %v", err)
		}
	}
}
