package cli

import (
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/sas"
)

// Vectors of docs/spec/dps-protocol.md#test-vectors.
const (
	groupKey19 = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
	devKey20   = "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc="
	hubKey21   = "18RQk/hOPJR9EbsJlk2j8WA6vWaj/yi+oaYg7zmxfQNdOyMSu+SJ8O7TSlZhDJCYmn4rzEiVKIzNiVAWjLxrGA=="
)

func TestDeviceHelpers(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	if err := localconf.Write(dir, &localconf.Info{IDScope: "0ne00000A0A"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{name: "derive-key, vector 19",
			args: []string{"device", "derive-key", "--group-key", groupKey19, "--registration-id", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"},
			want: "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=\n"},
		{name: "derive-key, vector 20",
			args: []string{"device", "derive-key", "--group-key", groupKey19, "--registration-id", "my-device"},
			want: devKey20 + "\n"},
		{name: "derive-key needs a base64 key",
			args:    []string{"device", "derive-key", "--group-key", "%%%", "--registration-id", "x"},
			wantErr: "--group-key"},
		{name: "sas-token, vector 20 Python/C# form",
			args: []string{"device", "sas-token", "--id-scope", "0ne00000A0A", "--registration-id", "my-device", "--key", devKey20, "--expires-at", "1700000000"},
			want: "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000&skn=registration\n"},
		{name: "sas-token, vector 20 Node form",
			args: []string{"device", "sas-token", "--id-scope", "0ne00000A0A", "--registration-id", "my-device", "--key", devKey20, "--expires-at", "1700000000", "--encode=false"},
			want: "SharedAccessSignature sr=0ne00000A0A/registrations/my-device&sig=vOD8j%2FkUndWgz4uUTp%2BhkguuYut3oirY0In6rDoxF8c%3D&se=1700000000&skn=registration\n"},
		{name: "sas-token, vector 20 Python form without skn",
			args: []string{"device", "sas-token", "--id-scope", "0ne00000A0A", "--registration-id", "my-device", "--key", devKey20, "--expires-at", "1700000000", "--key-name", ""},
			want: "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000\n"},
		{name: "sas-token takes the ID scope from client.json",
			args: []string{"--data-dir", dir, "device", "sas-token", "--registration-id", "my-device", "--key", devKey20, "--expires-at", "1700000000"},
			want: "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000&skn=registration\n"},
		{name: "sas-token --resource, vector 21",
			args: []string{"device", "sas-token", "--resource", "MyExampleHub.azure-devices.net/devices/my-symkey-device", "--key", hubKey21, "--expires-at", "1663119026"},
			want: "SharedAccessSignature sr=MyExampleHub.azure-devices.net%2Fdevices%2Fmy-symkey-device&sig=f%2BwW8XOKeJOtiPc9Iwjc4OpExvPM7NlhM9qxN2a1aAM%3D&se=1663119026\n"},
		{name: "sas-token --resource excludes --registration-id",
			args:    []string{"device", "sas-token", "--resource", "r", "--registration-id", "d", "--key", hubKey21},
			wantErr: "--resource replaces"},
		{name: "sas-token needs a scope",
			args:    []string{"--data-dir", t.TempDir(), "device", "sas-token", "--registration-id", "d", "--key", hubKey21},
			wantErr: "--id-scope"},
		{name: "sas-token needs a key",
			args:    []string{"device", "sas-token", "--id-scope", "s", "--registration-id", "d"},
			wantErr: "key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := run(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out != tt.want {
				t.Errorf("output\n got %q\nwant %q", out, tt.want)
			}
		})
	}
}

func TestSASTokenExpiry(t *testing.T) {
	clearEnv(t)
	out, _, err := run(t, "device", "sas-token", "--id-scope", "0ne00000A0A", "--registration-id", "my-device", "--key", devKey20, "--expiry", "600")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.Parse(strings.TrimSpace(out))
	if err != nil || !tok.VerifyKey(devKey20) || !tok.ResourceIs("0ne00000A0A/registrations/my-device") {
		t.Fatalf("token %q: %v", out, err)
	}
	if d := time.Until(tok.Expiry); d < 590*time.Second || d > 601*time.Second {
		t.Errorf("token expires in %v, want 600s", d)
	}
}

// deviceFake is the DPS device API over HTTPS: register answers 202, each
// poll answers with the next of polls.
type deviceFake struct {
	t     *testing.T
	srv   *httptest.Server
	key   string // the device key tokens must verify with
	mu    sync.Mutex
	reqs  []string
	polls []string
}

func newDeviceFake(t *testing.T, key string, polls ...string) *deviceFake {
	f := &deviceFake{t: t, key: key, polls: polls}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.reqs = append(f.reqs, strings.TrimSpace(r.Method+" "+r.URL.RequestURI()+" "+string(body)))
		tok, err := sas.Parse(r.Header.Get("Authorization"))
		if err != nil || !tok.VerifyKey(f.key) || !tok.ResourceIs("0ne00000A0A/registrations/my-device") {
			w.WriteHeader(401)
			io.WriteString(w, `{"errorCode":401002,"trackingId":"t","message":"Unauthorized"}`)
			return
		}
		w.Header()["retry-after"] = []string{"0"}
		if r.Method == http.MethodPut {
			w.WriteHeader(202)
			io.WriteString(w, `{"operationId":"op-1","status":"assigning"}`)
			return
		}
		p := f.polls[0]
		f.polls = f.polls[1:]
		if strings.Contains(p, `"assigning"`) {
			w.WriteHeader(202)
		}
		io.WriteString(w, p)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *deviceFake) caFile() string {
	p := filepath.Join(f.t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

const assigned = `{"operationId":"op-1","status":"assigned","registrationState":{"registrationId":"my-device","assignedHub":"hub.example","deviceId":"my-device","status":"assigned","substatus":"initialAssignment"}}`

func TestRegisterCommand(t *testing.T) {
	clearEnv(t)
	f := newDeviceFake(t, devKey20, `{"operationId":"op-1","status":"assigning"}`, assigned)
	out, _, err := run(t, "--data-dir", t.TempDir(), "--ca-file", f.caFile(), "--address", f.srv.Listener.Addr().String(),
		"device", "register", "--transport", "https", "--id-scope", "0ne00000A0A", "--global-endpoint", fakeHost,
		"--registration-id", "my-device", "--group-key", groupKey19, "--payload", `{"modelId":"dtmi:x;1"}`)
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "operationId": "op-1",
  "status": "assigned",
  "registrationState": {
    "registrationId": "my-device",
    "assignedHub": "hub.example",
    "deviceId": "my-device",
    "status": "assigned",
    "substatus": "initialAssignment"
  }
}
`
	if out != want {
		t.Errorf("output\n got %s\nwant %s", out, want)
	}
	wantReqs := []string{
		`PUT /0ne00000A0A/registrations/my-device/register?api-version=2021-06-01 {"registrationId":"my-device","payload":{"modelId":"dtmi:x;1"}}`,
		`GET /0ne00000A0A/registrations/my-device/operations/op-1?api-version=2021-06-01`,
		`GET /0ne00000A0A/registrations/my-device/operations/op-1?api-version=2021-06-01`,
	}
	if strings.Join(f.reqs, "\n") != strings.Join(wantReqs, "\n") {
		t.Errorf("requests\n got %s\nwant %s", strings.Join(f.reqs, "\n"), strings.Join(wantReqs, "\n"))
	}
}

// TestRegisterFromClientJSON: scope, endpoint, address and CA of the local
// berth; a failed registration prints its status and fails.
func TestRegisterFromClientJSON(t *testing.T) {
	clearEnv(t)
	f := newDeviceFake(t, devKey20, `{"operationId":"op-1","status":"disabled","registrationState":{"registrationId":"my-device","status":"disabled"}}`)
	dir := t.TempDir()
	if err := localconf.Write(dir, &localconf.Info{
		IDScope:        "0ne00000A0A",
		GlobalEndpoint: fakeHost,
		MQTTAddress:    "127.0.0.1:1", // not used over https
		HTTPSAddress:   f.srv.Listener.Addr().String(),
		CAFile:         f.caFile(),
	}); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, "--data-dir", dir, "device", "register", "--transport", "https", "--registration-id", "my-device", "--key", devKey20)
	if err == nil || !strings.Contains(err.Error(), "not assigned") {
		t.Fatalf("err %v, want not assigned", err)
	}
	if !strings.Contains(out, `"status": "disabled"`) {
		t.Errorf("output %q lacks the final status", out)
	}
	if len(f.reqs) != 2 {
		t.Errorf("requests %v", f.reqs)
	}
}

func TestRegisterFlagErrors(t *testing.T) {
	clearEnv(t)
	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"device", "register", "--registration-id", "d", "--key", devKey20, "--group-key", groupKey19, "--id-scope", "s", "--global-endpoint", "h"}, "key group-key"},
		{[]string{"device", "register", "--registration-id", "d", "--id-scope", "s", "--global-endpoint", "h"}, "key group-key"},
		{[]string{"device", "register", "--registration-id", "d", "--key", devKey20, "--transport", "amqp", "--id-scope", "s", "--global-endpoint", "h"}, "--transport"},
		{[]string{"device", "register", "--registration-id", "d", "--key", devKey20, "--payload", "[]", "--id-scope", "s", "--global-endpoint", "h"}, "--payload"},
		{[]string{"--data-dir", t.TempDir(), "device", "register", "--registration-id", "d", "--key", devKey20}, "--id-scope"},
	} {
		_, _, err := run(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%v: err %v, want %q", tt.args, err, tt.wantErr)
		}
	}
}
