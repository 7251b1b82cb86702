package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-iot/berth/internal/localconf"
)

// runBench runs `berth bench ARGS` with globals of its own (the command
// is built on its own, not through NewRoot).
func runBench(t *testing.T, dataDir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return runBenchOutput(t, dataDir, "", "", args...)
}

// runBenchOutput is runBench with -o format and --query query.
func runBenchOutput(t *testing.T, dataDir, format, query string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	g := &globals{dataDir: dataDir, stdout: &out, stderr: &errb, output: format, query: query}
	cmd := newBenchCmd(g)
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestBenchProvisionEmbedded(t *testing.T) {
	profile := filepath.Join(t.TempDir(), "cpu.pprof")
	stdout, stderr, err := runBench(t, t.TempDir(), "provision", "--embedded", "--devices", "6", "--concurrency", "3",
		"--transport", "HTTPS", "--cpuprofile", profile)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var s struct {
		Bench     string
		Provision struct {
			Transport string
			Assigned  int
			Failed    int
		}
		Handshake *struct{ Succeeded int } `json:"tlsHandshakeBaseline"`
		Targets   []struct{ Status string }
	}
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("stdout is not the JSON summary: %v\n%s", err, stdout)
	}
	if s.Bench != "provision" || s.Provision.Transport != "https" || s.Provision.Assigned != 6 || s.Provision.Failed != 0 ||
		s.Handshake == nil || s.Handshake.Succeeded != 6 || len(s.Targets) != 1 {
		t.Errorf("summary %+v\n%s", s, stdout)
	}
	// Progress and the human summary go to stderr; stderr here is no
	// terminal, so progress lines carry no carriage return.
	if !strings.Contains(stderr, "provision https 6/6") || strings.Contains(stderr, "\r") || !strings.Contains(stderr, "target ") {
		t.Errorf("stderr:\n%s", stderr)
	}
	if fi, err := os.Stat(profile); err != nil || fi.Size() == 0 {
		t.Errorf("CPU profile: %v", err)
	}
}

func TestBenchFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown transport", []string{"provision", "--embedded", "--transport", "amqp"}, "--transport"},
		{"rate and max", []string{"telemetry", "--embedded", "--rate", "10", "--max"}, "exclude each other"},
		{"qos 2", []string{"telemetry", "--embedded", "--qos", "2"}, "--qos"},
		{"negative size", []string{"telemetry", "--embedded", "--size", "-1"}, "--size"},
		{"embedded and spawn", []string{"provision", "--embedded", "--spawn"}, "embedded"},
		{"profile needs embedded", []string{"provision", "--cpuprofile", "x.pprof"}, "--embedded"},
		{"no local berth", []string{"provision"}, "--embedded or --spawn"},
		{"no devices", []string{"provision", "--embedded", "--devices", "0"}, "--devices"},
		{"unknown kind", []string{"connect", "--embedded", "--kind", "amqp", "--server-pid", "1"}, "--kind"},
		{"cluster of none", []string{"provision", "--cluster", "0"}, "node count"},
		{"cluster of three sizes", []string{"provision", "--cluster", "1,2,3"}, "N or N,M"},
		{"cluster and spawn", []string{"provision", "--cluster", "3", "--spawn"}, "cluster"},
		{"too few hosts", []string{"provision", "--cluster", "3", "--spawn-hosts", "127.0.0.9"}, "--spawn-hosts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runBench(t, dir, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestBenchRefusesRemoteTarget(t *testing.T) {
	dir := t.TempDir()
	// A client.json naming a server elsewhere: nothing is dialled, the
	// check comes first.
	if err := localconf.Write(dir, &localconf.Info{IDScope: "0ne00000A0A", GlobalEndpoint: "198.51.100.7",
		HubHostName: "198.51.100.7", MQTTAddress: "198.51.100.7:8883", HTTPSAddress: "198.51.100.7:443",
		ServiceConnectionString: "HostName=198.51.100.7;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=AAAA"}); err != nil {
		t.Fatal(err)
	}
	_, _, err := runBench(t, dir, "provision", "--devices", "1")
	if err == nil || !strings.Contains(err.Error(), "not a loopback") || !strings.Contains(err.Error(), "--allow-remote") {
		t.Fatalf("err %v, want a refusal naming --allow-remote", err)
	}
}

// The summary follows the global -o and --query like any command's
// output: YAML here, and nothing at all with -o none.
func TestBenchHonoursOutput(t *testing.T) {
	stdout, stderr, err := runBenchOutput(t, t.TempDir(), "yaml", "provision.{assigned:assigned}",
		"provision", "--embedded", "--devices", "2", "--baseline=false")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if strings.TrimSpace(stdout) != "assigned: 2" {
		t.Errorf("-o yaml --query: stdout %q", stdout)
	}
	stdout, stderr, err = runBenchOutput(t, t.TempDir(), "none", "", "provision", "--embedded", "--devices", "1", "--baseline=false")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if stdout != "" || !strings.Contains(stderr, "provision mqtt: 1/1") {
		t.Errorf("-o none: stdout %q, stderr %q", stdout, stderr)
	}
}
