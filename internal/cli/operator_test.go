package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/sas"
)

// ownerKey is the service policy key of the fakes.
const ownerKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// fakeHost is in the httptest certificate; it is never resolved, the
// commands dial the listener through --address or client.json.
const fakeHost = "example.com"

// clearEnv keeps the caller's BERTH_* variables out of the tests (NewRoot
// reads them as flag defaults).
func clearEnv(t *testing.T) {
	for _, k := range []string{"BERTH_CONNECTION_STRING", "BERTH_CA_FILE", "BERTH_ADDRESS", "BERTH_DATA_DIR"} {
		t.Setenv(k, "")
	}
}

// run executes the command line and returns what it printed.
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := NewRoot(&out, &errb)
	root.SetArgs(args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

type reply struct {
	status int
	header map[string]string
	body   string
}

// serviceFake is a TLS service API playing replies in order and recording
// each request as one line: METHOD PATH [if-match=…] [max=…] [cont=…] BODY,
// the body in canonical JSON.
type serviceFake struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []string
	replies []reply
}

func newServiceFake(t *testing.T, replies ...reply) *serviceFake {
	t.Helper()
	f := &serviceFake{t: t, replies: replies}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *serviceFake) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.URL.RawQuery != "api-version=2021-10-01" {
		f.t.Errorf("%s %s: query %q", r.Method, r.URL.Path, r.URL.RawQuery)
	}
	tok, err := sas.Parse(r.Header.Get("Authorization"))
	if err != nil || !tok.ResourceIs(fakeHost) || tok.KeyName != "provisioningserviceowner" || !tok.VerifyKey(ownerKey) {
		f.t.Errorf("%s %s: bad service token (%v)", r.Method, r.URL.Path, err)
	}
	line := r.Method + " " + r.URL.EscapedPath()
	if v := r.Header.Get("If-Match"); v != "" {
		line += " if-match=" + v
	}
	if v := r.Header.Get("x-ms-max-item-count"); v != "" {
		line += " max=" + v
	}
	if v := r.Header.Get("x-ms-continuation"); v != "" {
		line += " cont=" + v
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
		rp = reply{status: 500, body: `{"errorCode":500000,"message":"fake: no reply programmed"}`}
	}
	f.mu.Unlock()
	for k, v := range rp.header {
		w.Header()[k] = []string{v}
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(rp.status)
	io.WriteString(w, rp.body)
}

func (f *serviceFake) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// caFile writes the fake's certificate as a CA file.
func (f *serviceFake) caFile() string {
	p := filepath.Join(f.t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// flags are the global flags that point the commands at the fake.
func (f *serviceFake) flags() []string {
	return []string{
		"--data-dir", f.t.TempDir(),
		"--connection-string", "HostName=" + fakeHost + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + ownerKey,
		"--ca-file", f.caFile(),
		"--address", f.srv.Listener.Addr().String(),
	}
}

// canonical re-encodes JSON with sorted keys and no spaces.
func canonical(t *testing.T, s string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %q: %v", s, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// canonicalLines canonicalises the JSON at the end of request lines.
func canonicalLines(t *testing.T, lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		if j := strings.IndexAny(l, "{["); j >= 0 {
			l = l[:j] + canonical(t, l[j:])
		}
		out[i] = l
	}
	return out
}

const (
	enrollmentJSON = `{"registrationId":"dev-1","deviceId":"d1","attestation":{"type":"symmetricKey","symmetricKey":{}},"iotHubHostName":"hub.example","etag":"e1","provisioningStatus":"enabled","createdDateTimeUtc":"2024-01-02T03:04:05.1234567Z","lastUpdatedDateTimeUtc":"2024-01-02T03:04:05.1234567Z","registrationState":{"registrationId":"dev-1","status":"assigned","assignedHub":"hub.example","deviceId":"d1"}}`
	attJSON        = `{"type":"symmetricKey","symmetricKey":{"primaryKey":"cHJpbWFyeWtleXByaW1hcnlrZXk=","secondaryKey":"c2Vjb25kYXJ5a2V5c2Vjb25kYXI="}}`
	groupJSON      = `{"enrollmentGroupId":"g1","attestation":{"type":"symmetricKey","symmetricKey":{}},"etag":"ge","provisioningStatus":"enabled","createdDateTimeUtc":"2024-01-02T03:04:05.1234567Z","lastUpdatedDateTimeUtc":"2024-01-02T03:04:05.1234567Z"}`
	notFound       = `{"errorCode":404201,"trackingId":"t-404","message":"Enrollment not found."}`
)

func TestOperatorCommands(t *testing.T) {
	clearEnv(t)
	tests := []struct {
		name     string
		args     []string
		replies  []reply
		wantReqs []string
		wantOut  string // compared exactly when it starts with a newline (indented output), else as canonical JSON; "-" for no output
		wantErr  string
	}{
		{
			name: "enrollment create with every flag",
			args: []string{"enrollment", "create", "--enrollment-id", "dev-1", "--primary-key", "cHJpbWFyeWtleXByaW1hcnlrZXk=", "--secondary-key", "c2Vjb25kYXJ5a2V5c2Vjb25kYXI=",
				"--device-id", "d1", "--provisioning-status", "Disabled", "--iot-hub-host-name", "hub.example",
				"--initial-twin-tags", `{"site":"a"}`, "--initial-twin-properties", `{"interval":5}`},
			replies: []reply{{status: 404, body: notFound}, {status: 200, body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey"},"etag":"e1"}`}},
			wantReqs: []string{
				"GET /enrollments/dev-1",
				`PUT /enrollments/dev-1 {"registrationId":"dev-1","deviceId":"d1","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cHJpbWFyeWtleXByaW1hcnlrZXk=","secondaryKey":"c2Vjb25kYXJ5a2V5c2Vjb25kYXI="}},"iotHubHostName":"hub.example","initialTwin":{"tags":{"site":"a"},"properties":{"desired":{"interval":5}}},"provisioningStatus":"disabled","createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}`,
			},
			wantOut: `
{
  "registrationId": "dev-1",
  "attestation": {
    "type": "symmetricKey"
  },
  "etag": "e1",
  "createdDateTimeUtc": null,
  "lastUpdatedDateTimeUtc": null
}
`,
		},
		{
			name:     "enrollment create with the --registration-id alias and generated keys",
			args:     []string{"enrollment", "create", "--registration-id", "dev-2"},
			replies:  []reply{{status: 404, body: notFound}, {status: 200, body: `{"registrationId":"dev-2","attestation":{"type":"symmetricKey"}}`}},
			wantReqs: []string{"GET /enrollments/dev-2", `PUT /enrollments/dev-2 {"registrationId":"dev-2","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}`},
			wantOut:  `{"registrationId":"dev-2","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}`,
		},
		{
			name:     "enrollment create refuses to overwrite",
			args:     []string{"enrollment", "create", "dev-1"},
			replies:  []reply{{status: 200, body: enrollmentJSON}},
			wantReqs: []string{"GET /enrollments/dev-1"},
			wantErr:  "already exists",
		},
		{
			name:    "enrollment create refuses x509 without a certificate",
			args:    []string{"enrollment", "create", "dev-1", "--attestation-type", "x509"},
			wantErr: "needs --certificate-path",
		},
		{
			name:    "enrollment create refuses tpm",
			args:    []string{"enrollment", "create", "dev-1", "--attestation-type", "tpm"},
			wantErr: "use symmetrickey or x509",
		},
		{
			name: "enrollment-group create with allocation and reprovisioning",
			args: []string{"enrollment-group", "create", "g1", "--primary-key", "cHJpbWFyeWtleXByaW1hcnlrZXk=", "--secondary-key", "c2Vjb25kYXJ5a2V5c2Vjb25kYXI=",
				"--allocation-policy", "Custom", "--iot-hubs", "a.example,b.example", "--webhook-url", "https://alloc.example/fn?code=x",
				"--reprovision-policy", "reprovisionandresetdata"},
			replies: []reply{{status: 404, body: notFound}, {status: 200, body: `{"enrollmentGroupId":"g1"}`}},
			wantReqs: []string{
				"GET /enrollmentGroups/g1",
				`PUT /enrollmentGroups/g1 {"enrollmentGroupId":"g1","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cHJpbWFyeWtleXByaW1hcnlrZXk=","secondaryKey":"c2Vjb25kYXJ5a2V5c2Vjb25kYXI="}},"reprovisionPolicy":{"updateHubAssignment":true,"migrateDeviceData":false},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null,"allocationPolicy":"custom","iotHubs":["a.example","b.example"],"customAllocationDefinition":{"webhookUrl":"https://alloc.example/fn?code=x","apiVersion":"2021-10-01"}}`,
			},
			wantOut: `
{
  "enrollmentGroupId": "g1",
  "attestation": null,
  "createdDateTimeUtc": null,
  "lastUpdatedDateTimeUtc": null
}
`,
		},
		{
			name:    "enrollment create checks the allocation policy",
			args:    []string{"enrollment", "create", "dev-1", "--allocation-policy", "random"},
			wantErr: "use hashed, static, geolatency or custom",
		},
		{
			name:    "enrollment create checks the reprovision policy",
			args:    []string{"enrollment", "create", "dev-1", "--reprovision-policy", "sometimes"},
			wantErr: "use reprovisionandmigratedata, reprovisionandresetdata or never",
		},
		{
			name:    "enrollment create checks the twin JSON",
			args:    []string{"enrollment", "create", "dev-1", "--initial-twin-tags", `[1]`},
			wantErr: "--initial-twin-tags must be a JSON object",
		},
		{
			name:    "enrollment create checks the status",
			args:    []string{"enrollment", "create", "dev-1", "--provisioning-status", "maybe"},
			wantErr: "use enabled or disabled",
		},
		{
			name:     "enrollment show",
			args:     []string{"enrollment", "show", "dev-1"},
			replies:  []reply{{status: 200, body: enrollmentJSON}},
			wantReqs: []string{"GET /enrollments/dev-1"},
			wantOut:  enrollmentJSON,
		},
		{
			name:     "enrollment show --show-keys",
			args:     []string{"enrollment", "show", "--enrollment-id", "dev-1", "--show-keys"},
			replies:  []reply{{status: 200, body: enrollmentJSON}, {status: 200, body: attJSON}},
			wantReqs: []string{"GET /enrollments/dev-1", "POST /enrollments/dev-1/attestationmechanism"},
			wantOut:  strings.Replace(enrollmentJSON, `"attestation":{"type":"symmetricKey","symmetricKey":{}}`, `"attestation":`+attJSON, 1),
		},
		{
			name:     "enrollment show not found",
			args:     []string{"enrollment", "show", "nope"},
			replies:  []reply{{status: 404, body: notFound}},
			wantReqs: []string{"GET /enrollments/nope"},
			wantErr:  "404 Not Found (errorCode 404201): Enrollment not found. [trackingId t-404]",
		},
		{
			name: "enrollment list pages through everything",
			args: []string{"enrollment", "list"},
			replies: []reply{
				{status: 200, header: map[string]string{"x-ms-continuation": "c1", "x-ms-item-type": "Enrollment"}, body: `[{"registrationId":"a","attestation":{"type":"symmetricKey"}}]`},
				{status: 200, header: map[string]string{"x-ms-item-type": "Enrollment"}, body: `[{"registrationId":"b","attestation":{"type":"symmetricKey"}}]`},
			},
			wantReqs: []string{
				`POST /enrollments/query {"query":"SELECT * FROM enrollments"}`,
				`POST /enrollments/query cont=c1 {"query":"SELECT * FROM enrollments"}`,
			},
			wantOut: `[{"registrationId":"a","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null},{"registrationId":"b","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}]`,
		},
		{
			name: "enrollment list --top",
			args: []string{"enrollment", "list", "--top", "1"},
			replies: []reply{
				{status: 200, header: map[string]string{"x-ms-continuation": "c1"}, body: `[{"registrationId":"a","attestation":{"type":"symmetricKey"}}]`},
			},
			wantReqs: []string{`POST /enrollments/query max=1 {"query":"SELECT * FROM enrollments"}`},
			wantOut:  `[{"registrationId":"a","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}]`,
		},
		{
			name:     "enrollment list of nothing prints []",
			args:     []string{"enrollment", "list"},
			replies:  []reply{{status: 200, body: `[]`}},
			wantReqs: []string{`POST /enrollments/query {"query":"SELECT * FROM enrollments"}`},
			wantOut:  "\n[]\n",
		},
		{
			name:    "enrollment update is a conditional read-modify-write that keeps the keys",
			args:    []string{"enrollment", "update", "dev-1", "--provisioning-status", "disabled"},
			replies: []reply{{status: 200, body: enrollmentJSON}, {status: 200, body: attJSON}, {status: 200, body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey"},"etag":"e2"}`}},
			wantReqs: []string{
				"GET /enrollments/dev-1",
				"POST /enrollments/dev-1/attestationmechanism",
				`PUT /enrollments/dev-1 if-match=e1 {"registrationId":"dev-1","deviceId":"d1","attestation":` + attJSON + `,"iotHubHostName":"hub.example","etag":"e1","provisioningStatus":"disabled","createdDateTimeUtc":"2024-01-02T03:04:05.1234567Z","lastUpdatedDateTimeUtc":"2024-01-02T03:04:05.1234567Z"}`,
			},
			wantOut: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey"},"etag":"e2","createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}`,
		},
		{
			name:    "enrollment update with --etag and new keys",
			args:    []string{"enrollment", "update", "dev-1", "--etag", `"zz"`, "--device-id", "d2", "--primary-key", "bmV3cHJpbWFyeWtleW5ld3ByaQ=="},
			replies: []reply{{status: 200, body: enrollmentJSON}, {status: 200, body: attJSON}, {status: 412, body: `{"errorCode":412001,"trackingId":"t","message":"Precondition failed."}`}},
			wantReqs: []string{
				"GET /enrollments/dev-1",
				"POST /enrollments/dev-1/attestationmechanism",
				`PUT /enrollments/dev-1 if-match="zz" {"registrationId":"dev-1","deviceId":"d2","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"bmV3cHJpbWFyeWtleW5ld3ByaQ==","secondaryKey":"c2Vjb25kYXJ5a2V5c2Vjb25kYXI="}},"iotHubHostName":"hub.example","etag":"e1","provisioningStatus":"enabled","createdDateTimeUtc":"2024-01-02T03:04:05.1234567Z","lastUpdatedDateTimeUtc":"2024-01-02T03:04:05.1234567Z"}`,
			},
			wantErr: "412 Precondition Failed",
		},
		{
			name:     "enrollment delete",
			args:     []string{"enrollment", "delete", "dev-1", "--etag", "e1"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /enrollments/dev-1 if-match=e1"},
			wantOut:  "-",
		},
		{
			name:    "the ID twice",
			args:    []string{"enrollment", "delete", "dev-1", "--enrollment-id", "dev-2"},
			wantErr: "given twice",
		},
		{
			name:    "no ID",
			args:    []string{"enrollment", "show"},
			wantErr: "give the ID",
		},
		{
			name:     "enrollment-group create",
			args:     []string{"enrollment-group", "create", "--enrollment-id", "g1", "--provisioning-status", "enabled"},
			replies:  []reply{{status: 404, body: notFound}, {status: 200, body: groupJSON}},
			wantReqs: []string{"GET /enrollmentGroups/g1", `PUT /enrollmentGroups/g1 {"enrollmentGroupId":"g1","attestation":{"type":"symmetricKey"},"provisioningStatus":"enabled","createdDateTimeUtc":null,"lastUpdatedDateTimeUtc":null}`},
			wantOut:  groupJSON,
		},
		{
			name:     "enrollment-group show --show-keys with the --group-id alias",
			args:     []string{"enrollment-group", "show", "--group-id", "g1", "--show-keys"},
			replies:  []reply{{status: 200, body: groupJSON}, {status: 200, body: attJSON}},
			wantReqs: []string{"GET /enrollmentGroups/g1", "POST /enrollmentGroups/g1/attestationmechanism"},
			wantOut:  strings.Replace(groupJSON, `"attestation":{"type":"symmetricKey","symmetricKey":{}}`, `"attestation":`+attJSON, 1),
		},
		{
			name:     "enrollment-group list",
			args:     []string{"enrollment-group", "list"},
			replies:  []reply{{status: 200, header: map[string]string{"x-ms-item-type": "EnrollmentGroup"}, body: "[" + groupJSON + "]"}},
			wantReqs: []string{`POST /enrollmentGroups/query {"query":"SELECT * FROM enrollmentGroups"}`},
			wantOut:  "[" + groupJSON + "]",
		},
		{
			name:    "enrollment-group update",
			args:    []string{"enrollment-group", "update", "g1", "--iot-hub-host-name", "hub2.example"},
			replies: []reply{{status: 200, body: groupJSON}, {status: 200, body: attJSON}, {status: 200, body: groupJSON}},
			wantReqs: []string{
				"GET /enrollmentGroups/g1",
				"POST /enrollmentGroups/g1/attestationmechanism",
				`PUT /enrollmentGroups/g1 if-match=ge {"enrollmentGroupId":"g1","attestation":` + attJSON + `,"iotHubHostName":"hub2.example","etag":"ge","provisioningStatus":"enabled","createdDateTimeUtc":"2024-01-02T03:04:05.1234567Z","lastUpdatedDateTimeUtc":"2024-01-02T03:04:05.1234567Z"}`,
			},
			wantOut: groupJSON,
		},
		{
			name:     "enrollment-group delete",
			args:     []string{"enrollment-group", "delete", "g1"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /enrollmentGroups/g1"},
			wantOut:  "-",
		},
		{
			name:     "registration show",
			args:     []string{"registration", "show", "dev-1"},
			replies:  []reply{{status: 200, body: `{"registrationId":"dev-1","status":"assigned","assignedHub":"hub.example","deviceId":"dev-1","etag":"r1"}`}},
			wantReqs: []string{"GET /registrations/dev-1"},
			wantOut: `
{
  "registrationId": "dev-1",
  "assignedHub": "hub.example",
  "deviceId": "dev-1",
  "status": "assigned",
  "etag": "r1"
}
`,
		},
		{
			name: "registration list of a group",
			args: []string{"registration", "list", "--enrollment-group", "g1"},
			replies: []reply{
				{status: 200, header: map[string]string{"x-ms-continuation": "n"}, body: `[{"registrationId":"a","status":"assigned"}]`},
				{status: 200, body: `[{"registrationId":"b","status":"assigned"}]`},
			},
			wantReqs: []string{"POST /registrations/g1/query", "POST /registrations/g1/query cont=n"},
			wantOut:  `[{"registrationId":"a","status":"assigned"},{"registrationId":"b","status":"assigned"}]`,
		},
		{
			name: "registration list of everything",
			args: []string{"registration", "list"},
			replies: []reply{
				{status: 200, body: "[" + groupJSON + "]"},
				{status: 200, body: `[{"registrationId":"z-member","status":"assigned"}]`},
				{status: 200, body: `[{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}},{"registrationId":"dev-2","attestation":{"type":"symmetricKey"}}]`},
				{status: 200, body: `{"registrationId":"dev-1","status":"assigned"}`},
				{status: 404, body: `{"errorCode":404202,"trackingId":"t","message":"Registration not found."}`},
			},
			wantReqs: []string{
				`POST /enrollmentGroups/query {"query":"SELECT * FROM enrollmentGroups"}`,
				"POST /registrations/g1/query",
				`POST /enrollments/query {"query":"SELECT * FROM enrollments"}`,
				"GET /registrations/dev-1",
				"GET /registrations/dev-2",
			},
			wantOut: `[{"registrationId":"dev-1","status":"assigned"},{"registrationId":"z-member","status":"assigned"}]`,
		},
		{
			name:     "registration delete",
			args:     []string{"registration", "delete", "--registration-id", "dev-1", "--etag", "r1"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /registrations/dev-1 if-match=r1"},
			wantOut:  "-",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newServiceFake(t, tt.replies...)
			out, _, err := run(t, append(f.flags(), tt.args...)...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("err %v", err)
			}
			got, want := f.requests(), canonicalLines(t, tt.wantReqs)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("requests\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			switch {
			case tt.wantErr != "":
				if out != "" {
					t.Errorf("printed %q on error", out)
				}
			case tt.wantOut == "-":
				if out != "" {
					t.Errorf("printed %q, want nothing", out)
				}
			case strings.HasPrefix(tt.wantOut, "\n"):
				if out != tt.wantOut[1:] {
					t.Errorf("output\n got %s\nwant %s", out, tt.wantOut[1:])
				}
			default:
				if !strings.Contains(out, "\n  ") || !strings.HasSuffix(out, "\n") {
					t.Errorf("output is not indented JSON: %q", out)
				}
				if canonical(t, out) != canonical(t, tt.wantOut) {
					t.Errorf("output\n got %s\nwant %s", canonical(t, out), canonical(t, tt.wantOut))
				}
			}
		})
	}
}

// TestConnectionFromClientJSON: with no flags, the commands find the local
// berth through the data directory.
func TestConnectionFromClientJSON(t *testing.T) {
	clearEnv(t)
	f := newServiceFake(t, reply{status: 204})
	dir := t.TempDir()
	if err := localconf.Write(dir, &localconf.Info{
		IDScope:                 "0ne00000A0A",
		GlobalEndpoint:          fakeHost,
		HTTPSAddress:            f.srv.Listener.Addr().String(),
		CAFile:                  f.caFile(),
		ServiceConnectionString: "HostName=" + fakeHost + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + ownerKey,
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, "--data-dir", dir, "registration", "delete", "dev-1"); err != nil {
		t.Fatal(err)
	}
	if got := f.requests(); len(got) != 1 || got[0] != "DELETE /registrations/dev-1" {
		t.Errorf("requests %v", got)
	}

	// A connection string for another DPS must not be sent to the local
	// berth's address (nor trust its CA).
	_, _, err := run(t, "--data-dir", dir, "--connection-string", "HostName=other.invalid;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="+ownerKey,
		"registration", "delete", "dev-1")
	if err == nil {
		t.Fatal("a request for another DPS succeeded")
	}
	if got := f.requests(); len(got) != 1 {
		t.Errorf("the local berth saw a request meant for another DPS: %v", got)
	}
}

func TestNoConnection(t *testing.T) {
	clearEnv(t)
	_, _, err := run(t, "--data-dir", t.TempDir(), "enrollment", "list")
	if err == nil || !strings.Contains(err.Error(), "berth serve") || !strings.Contains(err.Error(), "--connection-string") {
		t.Fatalf("err %v, want advice to run berth serve or pass --connection-string", err)
	}
	_, _, err = run(t, "--data-dir", t.TempDir(), "--connection-string", "HostName=h;SharedAccessKeyName=k", "enrollment", "list")
	if err == nil || !strings.Contains(err.Error(), "SharedAccessKey") {
		t.Fatalf("err %v", err)
	}
}

// TestCommandTreesAreIndependent: flags are per tree, not package state.
func TestCommandTreesAreIndependent(t *testing.T) {
	clearEnv(t)
	f := newServiceFake(t, reply{status: 204}, reply{status: 204})
	if _, _, err := run(t, append(f.flags(), "enrollment", "delete", "a", "--etag", "x")...); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, append(f.flags(), "enrollment", "delete", "b")...); err != nil {
		t.Fatal(err)
	}
	if got := f.requests(); len(got) != 2 || got[1] != "DELETE /enrollments/b" {
		t.Errorf("the second run inherited the first's flags: %v", got)
	}
}
