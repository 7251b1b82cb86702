package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/serviceclient"
)

// serveOnce runs `berth serve` on dataDir until it has printed its banner,
// stops it and returns what it printed on stdout.
func serveOnce(t *testing.T, dataDir string) string {
	t.Helper()
	var out, errb syncBuffer
	root := NewRoot(&out, &errb)
	root.SetArgs([]string{"--data-dir", dataDir, "serve", "--host", "127.0.0.1", "--hub-name", "hub.berth.test",
		"--mqtt-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0", "--amqp-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--stream-listen", "none", "--log-level", "error"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(out.String(), "Next, in another terminal") {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("serve ended before its banner: %v\n%s", err, errb.String())
		case <-deadline:
			cancel()
			t.Fatalf("no banner in 30 s:\n%s\n%s", out.String(), errb.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v\n%s", err, errb.String())
	}
	return out.String()
}

// The owner keys are printed at the start that creates them and never
// again: later starts say where the connection strings are, and the
// commands named there print them.
func TestServePrintsOwnerKeysOnlyAtFirstStart(t *testing.T) {
	clearHubEnv(t)
	dir := t.TempDir()
	first := serveOnce(t, dir)
	info, err := localconf.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	dpsCS, err := serviceclient.ParseConnectionString(info.ServiceConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	hubKey := info.HubConnectionString[strings.LastIndex(info.HubConnectionString, "SharedAccessKey=")+len("SharedAccessKey="):]
	if !strings.Contains(first, info.ServiceConnectionString) || !strings.Contains(first, info.HubConnectionString) {
		t.Fatalf("first start does not print the connection strings:\n%s", first)
	}
	// The Event Hubs-compatible one: the hub's host and AMQP port, its
	// first label as the entity.
	if !strings.Contains(first, "Endpoint=sb://hub.berth.test:") || !strings.Contains(first, "SharedAccessKey="+hubKey+";EntityPath=hub\n") {
		t.Errorf("first start does not print the Event Hubs connection string:\n%s", first)
	}

	second := serveOnce(t, dir)
	if strings.Contains(second, dpsCS.SharedAccessKey) || strings.Contains(second, hubKey) || strings.Contains(second, "SharedAccessKey") {
		t.Fatalf("second start printed a key:\n%s", second)
	}
	for _, want := range []string{localconf.FileName, "dps connection-string show", "hub connection-string show", "hub connection-string show --eventhub"} {
		if !strings.Contains(second, want) {
			t.Errorf("second start does not mention %q:\n%s", want, second)
		}
	}

	// The commands it names print them.
	for _, c := range []struct{ cmd, want string }{
		{"dps", info.ServiceConnectionString},
		{"hub", info.HubConnectionString},
	} {
		stdout, stderr, err := run(t, "--data-dir", dir, c.cmd, "connection-string", "show")
		if err != nil {
			t.Fatalf("%s connection-string show: %v %s", c.cmd, err, stderr)
		}
		var got connectionString
		if err := json.Unmarshal([]byte(stdout), &got); err != nil || got.ConnectionString != c.want {
			t.Errorf("%s connection-string show: %s (%v), want %s", c.cmd, stdout, err, c.want)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"512MiB": 512 << 20, "2GiB": 2 << 30, "1000": 1000, "64KiB": 64 << 10, "10B": 10} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1MiB", "lots", "1.5GiB", "99999999999TiB"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) accepted", in)
		}
	}
}
