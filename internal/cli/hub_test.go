package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/stream"
)

// hubConnStr is the hub connection string of the fakes: the iothubowner
// policy of a hub called fakeHost.
const hubConnStr = "HostName=" + fakeHost + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + ownerKey

// The keys of hubDeviceJSON.
const (
	devPrimary   = "cHJpbWFyeWtleXByaW1hcnlrZXk="
	devSecondary = "c2Vjb25kYXJ5a2V5c2Vjb25kYXI="
)

const (
	hubDeviceJSON  = `{"deviceId":"d1","generationId":"638000000000000000","etag":"AAAAAAAAAAE=","connectionState":"Disconnected","status":"enabled","statusReason":null,"connectionStateUpdatedTime":"0001-01-01T00:00:00Z","statusUpdatedTime":"0001-01-01T00:00:00Z","lastActivityTime":"0001-01-01T00:00:00Z","cloudToDeviceMessageCount":0,"authentication":{"symmetricKey":{"primaryKey":"` + devPrimary + `","secondaryKey":"` + devSecondary + `"},"type":"sas"},"capabilities":{"iotEdge":false},"deviceScope":null,"parentScopes":[]}`
	x509DeviceJSON = `{"deviceId":"x1","etag":"e","status":"enabled","authentication":{"x509Thumbprint":{"primaryThumbprint":"AB","secondaryThumbprint":null},"type":"selfSigned"}}`
	hubNotFound    = `{"Message":"ErrorCode:DeviceNotFound;Device nope not found.","ExceptionMessage":"Tracking ID:t-404-TimeStamp:01/02/2024 03:04:05"}`
)

// clearHubEnv keeps the caller's BERTH_* variables out of the tests.
func clearHubEnv(t *testing.T) {
	clearEnv(t)
	t.Setenv("BERTH_HUB_CONNECTION_STRING", "")
}

// hubFake is a TLS hub service API playing replies in order and recording
// each request as one line: METHOD PATH [if-match=…] [top=…] [ct=…] BODY,
// the body in canonical JSON, ct only when the Content-Type is not JSON's. It checks the API version and the service token of
// every request.
type hubFake struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []string
	replies []reply
}

func newHubFake(t *testing.T, replies ...reply) *hubFake {
	t.Helper()
	f := &hubFake{t: t, replies: replies}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *hubFake) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	q := r.URL.Query()
	if q.Get("api-version") != "2021-04-12" {
		f.t.Errorf("%s %s: query %q", r.Method, r.URL.Path, r.URL.RawQuery)
	}
	tok, err := sas.Parse(r.Header.Get("Authorization"))
	if err != nil || tok.RawResource != fakeHost || tok.KeyName != "iothubowner" || !tok.VerifyKey(ownerKey) {
		f.t.Errorf("%s %s: bad service token (%v)", r.Method, r.URL.Path, err)
	}
	line := r.Method + " " + r.URL.EscapedPath()
	if v, ok := r.Header["If-Match"]; ok {
		line += " if-match=" + strings.Join(v, ",")
	}
	if v := q.Get("top"); v != "" {
		line += " top=" + v
	}
	if v := r.Header.Get("Content-Type"); v != "application/json; charset=utf-8" {
		line += " ct=" + v
	}
	if len(body) > 0 {
		line += " " + canonical(f.t, string(body))
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, line)
	var rp reply
	if len(f.replies) > 0 {
		rp, f.replies = f.replies[0], f.replies[1:]
	} else {
		rp = reply{status: 500, header: map[string]string{"iothub-errorcode": "ServerError"}, body: `{"Message":"ErrorCode:ServerError;fake: no reply programmed"}`}
	}
	f.mu.Unlock()
	for k, v := range rp.header {
		w.Header()[k] = []string{v}
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(rp.status)
	io.WriteString(w, rp.body)
}

func (f *hubFake) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func (f *hubFake) caFile() string {
	p := filepath.Join(f.t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// flags point the commands at the fake. They follow the command path:
// --hub-connection-string belongs to `berth hub`.
func (f *hubFake) flags() []string {
	return []string{
		"--data-dir", f.t.TempDir(),
		"--hub-connection-string", hubConnStr,
		"--ca-file", f.caFile(),
		"--address", f.srv.Listener.Addr().String(),
	}
}

func TestHubDeviceIdentityCommands(t *testing.T) {
	clearHubEnv(t)
	exists := reply{status: 409, header: map[string]string{"iothub-errorcode": "DeviceAlreadyExists"},
		body: `{"Message":"ErrorCode:DeviceAlreadyExists;A device with ID 'd1' is already registered.","ExceptionMessage":"Tracking ID:t-409-TimeStamp:01/02/2024 03:04:05"}`}
	notFound := reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound"}, body: hubNotFound}
	stale := reply{status: 412, header: map[string]string{"iothub-errorcode": "PreconditionFailed"}, body: `{"Message":"ErrorCode:PreconditionFailed;Precondition failed."}`}
	ok := reply{status: 200, body: hubDeviceJSON}
	runHubCases(t, []string{"device-identity"}, []hubCase{
		{
			name:     "create with every flag",
			args:     []string{"create", "--device-id", "d1", "--primary-key", devPrimary, "--secondary-key", devSecondary, "--status", "Disabled", "--status-reason", "rma"},
			replies:  []reply{ok},
			wantReqs: []string{`PUT /devices/d1 {"deviceId":"d1","status":"disabled","statusReason":"rma","authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + devPrimary + `","secondaryKey":"` + devSecondary + `"}}}`},
			wantOut:  hubDeviceJSON,
		},
		{
			name:     "create with generated keys, ID as argument",
			args:     []string{"create", "d2"},
			replies:  []reply{ok},
			wantReqs: []string{`PUT /devices/d2 {"deviceId":"d2","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`},
			wantOut:  hubDeviceJSON,
		},
		{
			name:     "create does not overwrite",
			args:     []string{"create", "-d", "d1"},
			replies:  []reply{exists},
			wantReqs: []string{`PUT /devices/d1 {"deviceId":"d1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`},
			wantErr:  "409 Conflict (DeviceAlreadyExists): A device with ID 'd1' is already registered. [trackingId t-409]",
		},
		{
			name:    "create checks keys without quoting them",
			args:    []string{"create", "d1", "--primary-key", "s3cr3t-not-base64!"},
			wantErr: "--primary-key is not valid base64",
		},
		{
			name:    "create checks the status",
			args:    []string{"create", "d1", "--status", "maybe"},
			wantErr: "use enabled or disabled",
		},
		{
			name:    "create needs an ID",
			args:    []string{"create"},
			wantErr: "give the ID",
		},
		{
			name:     "show by argument",
			args:     []string{"show", "d1"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /devices/d1"},
			wantOut:  hubDeviceJSON,
		},
		{
			name:     "show by --device-id, escaped as one segment",
			args:     []string{"show", "--device-id", "a?b#c"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /devices/a%3Fb%23c"},
			wantOut:  hubDeviceJSON,
		},
		{
			name:    "show with two different IDs",
			args:    []string{"show", "d1", "-d", "d2"},
			wantErr: "given twice",
		},
		{
			name:     "show not found",
			args:     []string{"show", "nope"},
			replies:  []reply{notFound},
			wantReqs: []string{"GET /devices/nope"},
			wantErr:  "show device nope: iot hub: 404 Not Found (DeviceNotFound): Device nope not found. [trackingId t-404]",
		},
		{
			name:     "list",
			args:     []string{"list"},
			replies:  []reply{{status: 200, body: "[" + hubDeviceJSON + "]"}},
			wantReqs: []string{"GET /devices"},
			wantOut:  "[" + hubDeviceJSON + "]",
		},
		{
			name:     "list --top, empty",
			args:     []string{"list", "--top", "5"},
			replies:  []reply{{status: 200, body: "[]"}},
			wantReqs: []string{"GET /devices top=5"},
			wantOut:  "[]",
		},
		{
			name:    "list --top over the page limit",
			args:    []string{"list", "--top", "1001"},
			wantErr: "between 1 and 1000",
		},
		{
			name:    "update changes the status under the etag just read",
			args:    []string{"update", "d1", "--status", "disabled"},
			replies: []reply{ok, ok},
			wantReqs: []string{
				"GET /devices/d1",
				`PUT /devices/d1 if-match="AAAAAAAAAAE=" {"deviceId":"d1","status":"disabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + devPrimary + `","secondaryKey":"` + devSecondary + `"}},"capabilities":{"iotEdge":false}}`,
			},
			wantOut: hubDeviceJSON,
		},
		{
			name:    "update with --etag replaces one key",
			args:    []string{"update", "--device-id", "d1", "--etag", "e9", "--secondary-key", devPrimary},
			replies: []reply{ok, ok},
			wantReqs: []string{
				"GET /devices/d1",
				`PUT /devices/d1 if-match="e9" {"deviceId":"d1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + devPrimary + `","secondaryKey":"` + devPrimary + `"}},"capabilities":{"iotEdge":false}}`,
			},
			wantOut: hubDeviceJSON,
		},
		{
			name:    "update with --etag *",
			args:    []string{"update", "d1", "--etag", "*"},
			replies: []reply{ok, ok},
			wantReqs: []string{
				"GET /devices/d1",
				`PUT /devices/d1 if-match="*" {"deviceId":"d1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + devPrimary + `","secondaryKey":"` + devSecondary + `"}},"capabilities":{"iotEdge":false}}`,
			},
			wantOut: hubDeviceJSON,
		},
		{
			name:    "update loses the race",
			args:    []string{"update", "d1", "--status", "enabled"},
			replies: []reply{ok, stale},
			wantReqs: []string{
				"GET /devices/d1",
				`PUT /devices/d1 if-match="AAAAAAAAAAE=" {"deviceId":"d1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + devPrimary + `","secondaryKey":"` + devSecondary + `"}},"capabilities":{"iotEdge":false}}`,
			},
			wantErr: "412 Precondition Failed (PreconditionFailed)",
		},
		{
			name:     "update of a missing device",
			args:     []string{"update", "nope", "--status", "enabled"},
			replies:  []reply{notFound},
			wantReqs: []string{"GET /devices/nope"},
			wantErr:  "404 Not Found (DeviceNotFound)",
		},
		{
			name:     "delete sends the wildcard, as az and the Node SDK do",
			args:     []string{"delete", "d1"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{`DELETE /devices/d1 if-match="*"`},
			wantOut:  "-",
		},
		{
			name:     "delete --etag",
			args:     []string{"delete", "-d", "d1", "--etag", "e1"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{`DELETE /devices/d1 if-match="e1"`},
			wantOut:  "-",
		},
		{
			name:     "device-identity connection-string show",
			args:     []string{"connection-string", "show", "-d", "d1"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /devices/d1"},
			wantOut:  `{"connectionString":"HostName=` + fakeHost + `;DeviceId=d1;SharedAccessKey=` + devPrimary + `"}`,
		},
		{
			name:    "device-identity connection-string show needs a device",
			args:    []string{"connection-string", "show"},
			wantErr: "give the ID",
		},
	})
}

// hubCase is one command run against a hubFake.
type hubCase struct {
	name     string
	args     []string
	replies  []reply
	wantReqs []string
	wantOut  string // canonical JSON; "-" for no output
	wantErr  string
}

// runHubCases runs each case as `berth hub {prefix…} {args…}` against a
// new hubFake.
func runHubCases(t *testing.T, prefix []string, tests []hubCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newHubFake(t, tt.replies...)
			args := append(append([]string{"hub"}, prefix...), tt.args...)
			out, _, err := run(t, append(args, f.flags()...)...)
			checkRun(t, f, err, out, tt.wantErr, tt.wantOut, tt.wantReqs)
		})
	}
}

// checkRun asserts a command's error, requests and output.
func checkRun(t *testing.T, f *hubFake, err error, out, wantErr, wantOut string, wantReqs []string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("err %v, want %q", err, wantErr)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("the error quotes the key: %v", err)
		}
	} else if err != nil {
		t.Fatalf("err %v", err)
	}
	got, want := f.requests(), canonicalLines(t, wantReqs)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	switch {
	case wantErr != "":
		if out != "" {
			t.Errorf("printed %q on error", out)
		}
	case wantOut == "-":
		if out != "" {
			t.Errorf("printed %q, want nothing", out)
		}
	default:
		if !strings.HasSuffix(out, "\n") || (len(out) > 3 && !strings.Contains(out, "\n  ")) {
			t.Errorf("output is not indented JSON: %q", out)
		}
		if canonical(t, out) != canonical(t, wantOut) {
			t.Errorf("output\n got %s\nwant %s", canonical(t, out), canonical(t, wantOut))
		}
	}
}

func TestHubConnectionStringCommand(t *testing.T) {
	clearHubEnv(t)
	ok := reply{status: 200, body: hubDeviceJSON}
	runHubCases(t, []string{"connection-string", "show"}, []hubCase{
		{
			name:     "a device's, primary key",
			args:     []string{"--device-id", "d1"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /devices/d1"},
			wantOut:  `{"connectionString":"HostName=` + fakeHost + `;DeviceId=d1;SharedAccessKey=` + devPrimary + `"}`,
		},
		{
			name:     "a device's, secondary key",
			args:     []string{"d1", "--key-type", "Secondary"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /devices/d1"},
			wantOut:  `{"connectionString":"HostName=` + fakeHost + `;DeviceId=d1;SharedAccessKey=` + devSecondary + `"}`,
		},
		{
			name:    "the hub's, with no request",
			args:    nil,
			wantOut: `{"connectionString":"` + hubConnStr + `"}`,
		},
		{
			name: "the hub's Event Hubs-compatible one",
			args: []string{"--eventhub"},
			wantOut: `{"connectionString":"Endpoint=sb://` + fakeHost + `/;SharedAccessKeyName=iothubowner;SharedAccessKey=` + ownerKey +
				`;EntityPath=` + strings.Split(fakeHost, ".")[0] + `"}`,
		},
		{
			name:     "a device without a symmetric key",
			args:     []string{"x1"},
			replies:  []reply{{status: 200, body: x509DeviceJSON}},
			wantReqs: []string{"GET /devices/x1"},
			wantErr:  "device x1 has no symmetric key (authentication type selfSigned)",
		},
		{
			name:    "a bad key type, with no request",
			args:    []string{"d1", "--key-type", "tertiary"},
			wantErr: "use primary or secondary",
		},
	})
}

// sasOut decodes the {"sas": …} sas-token prints.
func sasOut(t *testing.T, out string) string {
	t.Helper()
	var v struct {
		SAS string `json:"sas"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.SAS == "" {
		t.Fatalf("output %q: %v", out, err)
	}
	if !strings.Contains(out, "\n  \"sas\": ") {
		t.Errorf("output is not az's indented JSON: %q", out)
	}
	return v.SAS
}

func TestHubSASTokenVectors(t *testing.T) {
	clearHubEnv(t)
	se := time.Unix(2000000000, 0)
	tests := []struct {
		name     string
		args     []string
		resource string // sr as it must appear in the token
		skn      string
		key      string
	}{
		{"device token with --key", []string{"--device-id", "d1", "--key", devPrimary, "--hub", "hub.example.lan"},
			"hub.example.lan%2Fdevices%2Fd1", "", devPrimary},
		// encodeURIComponent keeps ! ' ( ) * and escapes the rest.
		{"device ID with reserved characters", []string{"-d", "d!(1)*' x:y", "--key", devPrimary, "--hub", "hub.example.lan"},
			"hub.example.lan%2Fdevices%2Fd!(1)*'%20x%3Ay", "", devPrimary},
		{"hub with a port", []string{"-d", "d1", "--key", devPrimary, "--hub", "127.0.0.1:8443"},
			"127.0.0.1%3A8443%2Fdevices%2Fd1", "", devPrimary},
		{"hub token from the connection string", []string{"--hub-connection-string", hubConnStr},
			fakeHost, "iothubowner", ownerKey},
		{"hub token with --key and --policy-name", []string{"--key", devSecondary, "--policy-name", "service", "--hub", "hub.example.lan"},
			"hub.example.lan", "service", devSecondary},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"hub", "sas-token", "--data-dir", t.TempDir(), "--expires-at", "2000000000"}, tt.args...)
			out, _, err := run(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			got := sasOut(t, out)
			want, err := sas.Sign(tt.resource, tt.key, tt.skn, se)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("token\n got %s\nwant %s", got, want)
			}
			tok, err := sas.Parse(got)
			if err != nil {
				t.Fatal(err)
			}
			if tok.RawResource != tt.resource || tok.KeyName != tt.skn {
				t.Errorf("sr %q skn %q", tok.RawResource, tok.KeyName)
			}
			if _, err := tok.Verify(se.Add(-time.Minute), tt.key); err != nil {
				t.Errorf("token does not verify with its key: %v", err)
			}
			if _, err := tok.Verify(se.Add(-time.Minute), ownerKeyOr(tt.key)); err == nil {
				t.Error("token verifies with another key")
			}
		})
	}
}

// ownerKeyOr is a key that is not k.
func ownerKeyOr(k string) string {
	if k == ownerKey {
		return devPrimary
	}
	return ownerKey
}

// TestHubSASTokenFromRegistry: without --key, the device's key comes from
// the registry, and the token lives --duration seconds.
func TestHubSASTokenFromRegistry(t *testing.T) {
	clearHubEnv(t)
	for _, tt := range []struct {
		keyType string
		key     string
	}{{"primary", devPrimary}, {"secondary", devSecondary}} {
		t.Run(tt.keyType, func(t *testing.T) {
			f := newHubFake(t, reply{status: 200, body: hubDeviceJSON})
			out, _, err := run(t, append([]string{"hub", "sas-token", "-d", "d1", "--duration", "60", "--key-type", tt.keyType}, f.flags()...)...)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.requests(); len(got) != 1 || got[0] != "GET /devices/d1" {
				t.Errorf("requests %v", got)
			}
			tok, err := sas.Parse(sasOut(t, out))
			if err != nil {
				t.Fatal(err)
			}
			if tok.RawResource != fakeHost+"%2Fdevices%2Fd1" || !tok.ResourceIs(fakeHost+"/devices/d1") || tok.KeyName != "" {
				t.Errorf("sr %q skn %q", tok.RawResource, tok.KeyName)
			}
			if i, err := tok.Verify(time.Now(), devPrimary, devSecondary); err != nil || (i == 0) != (tt.key == devPrimary) {
				t.Errorf("Verify = %d, %v; want the %s key", i, err, tt.keyType)
			}
			if ttl := time.Until(tok.Expiry); ttl < 55*time.Second || ttl > 61*time.Second {
				t.Errorf("lifetime %v, want 60s", ttl)
			}
		})
	}
}

func TestHubSASTokenErrors(t *testing.T) {
	clearHubEnv(t)
	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"-d", "d1", "--key", devPrimary, "--duration", "0"}, "--duration must be positive"},
		{[]string{"-d", "d1", "--key", "s3cr3t!"}, "--key is not valid base64"},
		{[]string{"--policy-name", "service", "--hub-connection-string", hubConnStr}, "--policy-name needs --key"},
		{[]string{"-d", "d1", "--key", devPrimary, "--policy-name", "service", "--hub", "h"}, "a device token has no skn"},
		{[]string{"--hub", "other.example", "--hub-connection-string", hubConnStr}, "is not the hub of the connection string"},
		{[]string{"-d", "d1", "--key", devPrimary}, "pass --hub"},
		{[]string{"-d", "d1", "--key", devPrimary, "--hub-connection-string", "HostName=h;SharedAccessKeyName=p"}, "SharedAccessKey"},
		{[]string{"-d", "d1", "--key-type", "both", "--hub-connection-string", hubConnStr}, "use primary or secondary"},
	} {
		out, _, err := run(t, append([]string{"hub", "sas-token", "--data-dir", t.TempDir()}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%v: err %v, want %q", tt.args, err, tt.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%v: the error quotes the key: %v", tt.args, err)
		}
		if out != "" {
			t.Errorf("%v: printed %q on error", tt.args, out)
		}
	}
}

// TestHubFromClientJSON: with no flags, the hub commands find the local
// berth's hub through the data directory, and never send another hub's
// requests to it.
func TestHubFromClientJSON(t *testing.T) {
	clearHubEnv(t)
	f := newHubFake(t, reply{status: 204})
	dir := t.TempDir()
	if err := localconf.Write(dir, &localconf.Info{
		GlobalEndpoint:      "dps.example.lan",
		HubHostName:         fakeHost,
		HTTPSAddress:        f.srv.Listener.Addr().String(),
		CAFile:              f.caFile(),
		HubConnectionString: hubConnStr,
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, "--data-dir", dir, "hub", "device-identity", "delete", "d1"); err != nil {
		t.Fatal(err)
	}
	if got := f.requests(); len(got) != 1 || got[0] != `DELETE /devices/d1 if-match="*"` {
		t.Errorf("requests %v", got)
	}

	// The environment variable names another hub: its requests must not go
	// to the local berth's address (nor trust its CA).
	t.Setenv("BERTH_HUB_CONNECTION_STRING", "HostName=other.invalid;SharedAccessKeyName=iothubowner;SharedAccessKey="+ownerKey)
	if _, _, err := run(t, "--data-dir", dir, "hub", "device-identity", "delete", "d1"); err == nil {
		t.Fatal("a request for another hub succeeded")
	}
	if got := f.requests(); len(got) != 1 {
		t.Errorf("the local berth saw a request meant for another hub: %v", got)
	}
	t.Setenv("BERTH_HUB_CONNECTION_STRING", "")

	// A device token with --key needs no connection: the hub is the local
	// berth's.
	out, _, err := run(t, "--data-dir", dir, "hub", "sas-token", "-d", "d1", "--key", devPrimary, "--expires-at", "2000000000")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := sas.Sign(fakeHost+"%2Fdevices%2Fd1", devPrimary, "", time.Unix(2000000000, 0)); sasOut(t, out) != want {
		t.Errorf("token %s, want %s", sasOut(t, out), want)
	}

	// No berth at all.
	_, _, err = run(t, "--data-dir", t.TempDir(), "hub", "device-identity", "list")
	if err == nil || !strings.Contains(err.Error(), "--hub-connection-string") || !strings.Contains(err.Error(), "berth serve") {
		t.Errorf("err %v, want advice to pass --hub-connection-string or run berth serve", err)
	}
}

func TestEncodeURIComponent(t *testing.T) {
	for in, want := range map[string]string{
		"hub.example.lan/devices/d1": "hub.example.lan%2Fdevices%2Fd1",
		"A-Z_a.z~0!9*'()":            "A-Z_a.z~0!9*'()",
		"a b+c&d=e?f#g%h:i;j@k$l,m":  "a%20b%2Bc%26d%3De%3Ff%23g%25h%3Ai%3Bj%40k%24l%2Cm",
		"°C":                         "%C2%B0C",
	} {
		if got := encodeURIComponent(in); got != want {
			t.Errorf("encodeURIComponent(%q) = %q, want %q", in, got, want)
		}
	}
}

// ---- monitor-events ----

// syncBuffer is a bytes.Buffer the command writes from its goroutine while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// monitorRun is a monitor-events command running in the background.
type monitorRun struct {
	stdout, stderr *syncBuffer
	done           chan error
}

func startMonitor(t *testing.T, args ...string) *monitorRun {
	t.Helper()
	r := &monitorRun{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	root := NewRoot(r.stdout, r.stderr)
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { r.done <- root.ExecuteContext(ctx) }()
	return r
}

// waitFor polls cond until it holds; it fails the test if the command ends
// first or 15 s pass.
func (r *monitorRun) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		select {
		case err := <-r.done:
			r.done <- err
			t.Fatalf("the command ended (err %v) before %s; stdout %q stderr %q", err, what, r.stdout, r.stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stdout %q stderr %q", what, r.stdout, r.stderr)
		}
	}
}

// wait returns the command's error once it ends.
func (r *monitorRun) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("the command did not end; stdout %q stderr %q", r.stdout, r.stderr)
		return nil
	}
}

func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

const monitorHub = "hub.example.lan"

// openTestStream starts an embedded stream with a loopback listener, and
// writes the client.json `berth serve` would write for it.
func openTestStream(t *testing.T) (*stream.Stream, string) {
	t.Helper()
	ctx := context.Background()
	st, err := stream.Open(ctx, stream.Config{StoreDir: t.TempDir(), ListenAddr: "127.0.0.1:0", Token: "t",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dir := t.TempDir()
	if err := localconf.Write(dir, &localconf.Info{
		HubHostName:         monitorHub,
		HubConnectionString: "HostName=" + monitorHub + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + ownerKey,
		NATSURL:             st.ClientURL(),
		StreamName:          stream.DefaultStreamName,
		StreamSubjectPrefix: stream.DefaultSubjectPrefix,
	}); err != nil {
		t.Fatal(err)
	}
	return st, dir
}

func appendMsg(t *testing.T, st *stream.Stream, m *hub.Message) {
	t.Helper()
	if err := st.Append(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestMonitorEvents: end to end against a real stream, the two messages of
// d1 are printed as they arrive, one JSON line each, and the command ends
// after --count of them.
func TestMonitorEvents(t *testing.T) {
	clearHubEnv(t)
	st, dir := openTestStream(t)
	enq := time.Date(2024, 5, 6, 7, 8, 9, 123456700, time.UTC)

	r := startMonitor(t, "--data-dir", dir, "hub", "monitor-events", "--device-id", "d1", "--count", "2", "--timeout", "10s", "--properties", "all")
	r.waitFor(t, "the subscription", func() bool {
		return strings.Contains(r.stderr.String(), "Starting event monitor, filtering on device: d1")
	})

	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "d1", Enqueued: enq,
		System: []hub.Property{
			{Name: hub.PropMessageID, Value: "m1"},
			{Name: hub.PropContentType, Value: "application/json"},
			{Name: hub.PropContentEncoding, Value: "utf-8"},
			{Name: hub.PropConnDeviceID, Value: "d1"},
			{Name: hub.PropConnAuthMethod, Value: `{"scope":"device","type":"sas","issuer":"iothub"}`},
			{Name: hub.PropMessageSource, Value: "Telemetry"},
		},
		App:  []hub.Property{{Name: "unit", Value: "°C"}, {Name: "alert", Value: "<false>"}},
		Body: []byte("{\"temperature\": 21.50,\n \"t\":1}"),
	})
	// Printed before the command ends: a reader of the pipe sees each
	// message as it comes.
	r.waitFor(t, "the first event", func() bool { return len(lines(r.stdout.String())) == 1 })

	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "d2", Body: []byte(`{"other":true}`)})
	appendMsg(t, st, &hub.Message{Hub: "other.hub", DeviceID: "d1", Body: []byte(`{"other":"hub"}`)})
	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "d1", Enqueued: enq.Add(time.Second), Body: []byte("plain text")})

	if err := r.wait(t); err != nil {
		t.Fatalf("err %v; stderr %q", err, r.stderr)
	}
	got := lines(r.stdout.String())
	want := []string{
		`{"event":{"origin":"d1","module":"","interface":"","component":"",` +
			`"properties":{"system":{"content_encoding":"utf-8","content_type":"application/json","message_id":"m1"},"application":{"unit":"°C","alert":"<false>"}},` +
			`"annotations":{"iothub-connection-device-id":"d1","iothub-connection-auth-method":"{\"scope\":\"device\",\"type\":\"sas\",\"issuer\":\"iothub\"}","iothub-enqueuedtime":1714979289123,"iothub-message-source":"Telemetry"},` +
			`"payload":{"temperature":21.50,"t":1}}}`,
		`{"event":{"origin":"d1","module":"","interface":"","component":"",` +
			`"properties":{"application":{}},` +
			`"annotations":{"iothub-connection-device-id":"d1","iothub-enqueuedtime":1714979290123},` +
			`"payload":"plain text"}}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, l := range got {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Errorf("line is not JSON: %q: %v", l, err)
		}
	}
	if !strings.Contains(r.stderr.String(), "Successfully parsed 2 message(s).") {
		t.Errorf("stderr %q", r.stderr)
	}
}

// TestMonitorEventsReplay: --from-start replays what the stream holds;
// wildcards select devices as az's do, only the hub of the connection
// string is shown, without --properties only the identity and payload are
// printed, and --timeout ends an idle monitor with success.
func TestMonitorEventsReplay(t *testing.T) {
	clearHubEnv(t)
	st, dir := openTestStream(t)
	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "d1", Body: []byte(`[1,2]`)})
	appendMsg(t, st, &hub.Message{Hub: "other.hub", DeviceID: "d3", Body: []byte(`"elsewhere"`)})
	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "e1", Body: []byte(`"not d*"`)})
	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "d2", ModuleID: "m1",
		System: []hub.Property{{Name: hub.PropContentType, Value: "text/plain"}, {Name: hub.PropComponent, Value: "thermostat1"},
			{Name: hub.PropSchema, Value: "dtmi:com:example:Thermostat;1"}},
		Body: []byte(`{"json":"but text/plain"}`)})

	start := time.Now()
	r := startMonitor(t, "--data-dir", dir, "hub", "monitor-events", "-d", "d*", "--from-start", "--timeout", "1")
	if err := r.wait(t); err != nil {
		t.Fatalf("err %v; stderr %q", err, r.stderr)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("ended after %v, before the idle timeout", d)
	}
	want := []string{
		`{"event":{"origin":"d1","module":"","interface":"","component":"","payload":[1,2]}}`,
		`{"event":{"origin":"d2","module":"m1","interface":"dtmi:com:example:Thermostat;1","component":"thermostat1","payload":"{\"json\":\"but text/plain\"}"}}`,
	}
	if got := lines(r.stdout.String()); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(r.stderr.String(), "no message for 1s") {
		t.Errorf("stderr %q", r.stderr)
	}

	// --hub shows another hub's messages; --properties sys app as az
	// spells it (space-separated).
	r = startMonitor(t, "--data-dir", dir, "hub", "monitor-events", "--hub", "other.hub", "--from-start", "--count", "1", "--properties", "sys", "app")
	if err := r.wait(t); err != nil {
		t.Fatalf("err %v; stderr %q", err, r.stderr)
	}
	if got, want := r.stdout.String(), `{"event":{"origin":"d3","module":"","interface":"","component":"","properties":{"application":{}},"payload":"elsewhere"}}`+"\n"; got != want {
		t.Errorf("printed %q, want %q", got, want)
	}
}

func TestMonitorEventsErrors(t *testing.T) {
	clearHubEnv(t)
	inProcess := t.TempDir()
	if err := localconf.Write(inProcess, &localconf.Info{HubHostName: monitorHub}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--data-dir", inProcess}, "keeps its telemetry stream in-process"},
		{[]string{"--data-dir", t.TempDir()}, "pass --nats-url"},
		{[]string{"--data-dir", inProcess, "--properties", "sys,everything"}, `--properties "everything"`},
		{[]string{"--data-dir", inProcess, "--properties", "sys", "bogus"}, `--properties "bogus"`},
		{[]string{"--data-dir", inProcess, "stray"}, `unexpected argument "stray"`},
		{[]string{"--data-dir", inProcess, "--count", "-1"}, "--count must not be negative"},
		{[]string{"--data-dir", inProcess, "--timeout", "-5"}, "negative"},
		{[]string{"--data-dir", inProcess, "--timeout", "soon"}, "want seconds or a duration"},
		{[]string{"--data-dir", inProcess, "--start-time", "yesterday"}, "--start-time"},
		{[]string{"--data-dir", inProcess, "--from-start", "--enqueued-time", "1"}, "none of the others can be"},
	} {
		out, _, err := run(t, append([]string{"hub", "monitor-events"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%v: err %v, want %q", tt.args, err, tt.wantErr)
		}
		if out != "" {
			t.Errorf("%v: printed %q", tt.args, out)
		}
	}
}

func TestPayloadOf(t *testing.T) {
	utf16le := []byte{0xFF, 0xFE, '{', 0, '"', 0, 'a', 0, '"', 0, ':', 0, '1', 0, '}', 0}
	for _, tt := range []struct {
		name     string
		body     []byte
		ct, ce   string
		wantJSON string
	}{
		{"JSON with a JSON content type", []byte(`{"a":1}`), "application/json; charset=utf-8", "utf-8", `{"a":1}`},
		{"JSON without a content type", []byte(` {"a": [1, 2.50]} `), "", "", `{"a":[1,2.50]}`},
		{"JSON declared as text", []byte(`{"a":1}`), "text/plain", "", `"{\"a\":1}"`},
		{"text that is not JSON", []byte(`hello <world> & co`), "application/json", "", `"hello <world> & co"`},
		{"empty body", nil, "application/json", "", `""`},
		{"invalid UTF-8", []byte{0xff, 0x00, 0xfe}, "", "", `"{{non-decodable payload}}"`},
		{"UTF-16 with a byte order mark", utf16le, "application/json", "utf-16", `{"a":1}`},
		{"UTF-16BE", []byte{0, 'h', 0, 'i'}, "", "utf-16be", `"hi"`},
		{"UTF-32LE", []byte{'o', 0, 0, 0, 'k', 0, 0, 0}, "", "utf-32", `"ok"`},
		{"odd-length UTF-16", []byte{0, 'h', 0}, "", "utf-16", `"{{non-decodable payload}}"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := marshalNoEscape(payloadOf(tt.body, tt.ct, tt.ce))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.wantJSON {
				t.Errorf("payload %s, want %s", got, tt.wantJSON)
			}
		})
	}
}

// TestFormatEventContentTypeHint: --content-type overrides the message's.
func TestFormatEventContentTypeHint(t *testing.T) {
	m := &hub.Message{Hub: "h", DeviceID: "d1", System: []hub.Property{{Name: hub.PropContentType, Value: "application/json"},
		{Name: hub.PropExpiry, Value: "2024-05-06T07:08:09Z"}}, Body: []byte(`{"a":1}`)}
	var buf bytes.Buffer
	if err := writeEvent(&buf, formatEvent(m, propSet{sys: true}, "text/plain")); err != nil {
		t.Fatal(err)
	}
	want := `{"event":{"origin":"d1","module":"","interface":"","component":"","properties":{"system":{"absolute_expiry_time":1714979289000,"content_type":"application/json"}},"payload":"{\"a\":1}"}}` + "\n"
	if buf.String() != want {
		t.Errorf("printed %s\nwant    %s", buf.String(), want)
	}
}

// TestHubCommandTreesAreIndependent: the hub flags are per tree.
func TestHubCommandTreesAreIndependent(t *testing.T) {
	clearHubEnv(t)
	f := newHubFake(t, reply{status: 204})
	if _, _, err := run(t, append([]string{"hub", "device-identity", "delete", "a", "--etag", "x"}, f.flags()...)...); err != nil {
		t.Fatal(err)
	}
	// No connection string this time: the first tree's must not leak.
	_, _, err := run(t, "hub", "device-identity", "delete", "b", "--data-dir", t.TempDir())
	if err == nil {
		t.Fatal("the second tree inherited the first's connection string")
	}
	if got := f.requests(); len(got) != 1 {
		t.Errorf("requests %v", got)
	}
}

// TestMonitorEventsOutput: --query picks from each event and -o tsv or
// yaml prints it as it comes; a table, which cannot align rows to come, is
// refused.
func TestMonitorEventsOutput(t *testing.T) {
	clearHubEnv(t)
	st, dir := openTestStream(t)
	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "d1", Body: []byte(`{"temperature":21.5}`)})
	appendMsg(t, st, &hub.Message{Hub: monitorHub, DeviceID: "d2", Body: []byte(`{"temperature":22}`)})
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--query", "event.{d:origin, t:payload.temperature}", "-o", "tsv"}, "d1\t21.5\nd2\t22\n"},
		{[]string{"--query", "event.{d:origin}", "-o", "yaml"}, "---\nd: d1\n---\nd: d2\n"},
		{[]string{"-o", "none"}, ""},
	} {
		r := startMonitor(t, append([]string{"--data-dir", dir, "hub", "monitor-events", "--from-start", "--count", "2", "--timeout", "10s"}, tt.args...)...)
		if err := r.wait(t); err != nil {
			t.Fatalf("%v: %v; stderr %q", tt.args, err, r.stderr)
		}
		if got := r.stdout.String(); got != tt.want {
			t.Errorf("%v: printed %q, want %q", tt.args, got, tt.want)
		}
	}
	r := startMonitor(t, "--data-dir", dir, "hub", "monitor-events", "--from-start", "-o", "table")
	if err := r.wait(t); err == nil || !strings.Contains(err.Error(), "-o tsv") {
		t.Errorf("-o table: %v", err)
	}
}
