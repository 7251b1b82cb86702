package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The simulator against a real berth on loopback, as the README uses it:
// a device of an enrollment group provisions, connects, answers methods
// invoked through the service API, mirrors a desired patch into reported
// properties, completes a C2D message and sends its telemetry.
func TestDeviceSimulateAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	t.Setenv("BERTH_CONNECTION_STRING", "")
	t.Setenv("BERTH_OUTPUT", "")
	dir := startBerth(t)
	b := berthRunner{t: t, pre: []string{"--data-dir", dir}}
	grp := b.must("enrollment-group", "create", "sims")
	groupKey, _ := jsonAt(grp, "attestation", "symmetricKey", "primaryKey").(string)
	if groupKey == "" {
		t.Fatalf("no group key in %v", grp)
	}

	sim := startSimulate(t, dir, "--registration-id", "sim-1", "--group-key", groupKey,
		"--interval", "50ms", "--messages", "3",
		"--method", "reboot=echo", "--method", `getInfo=201:{"fw":"1.0"}`, "--method", "slow@200ms=echo")
	waitLog, stderr := sim.waitLog, sim.stderr
	waitLog("msg=connected")
	waitLog("msg=\"twin read\"")

	hub := berthRunner{t: t, pre: []string{"--data-dir", dir, "hub"}}
	// Methods invoked through the service API, answered by the simulator.
	res := hub.must("invoke-device-method", "-d", "sim-1", "--mn", "reboot", "--mp", `{"delay":1}`)
	if res["status"] != 200.0 || jsonAt(res, "payload", "delay") != 1.0 {
		t.Errorf("reboot: %v", res)
	}
	res = hub.must("invoke-device-method", "-d", "sim-1", "--mn", "getInfo")
	if res["status"] != 201.0 || jsonAt(res, "payload", "fw") != "1.0" {
		t.Errorf("getInfo: %v", res)
	}
	res = hub.must("invoke-device-method", "-d", "sim-1", "--mn", "slow", "--mp", `"x"`)
	if res["status"] != 200.0 || res["payload"] != "x" {
		t.Errorf("slow: %v", res)
	}
	res = hub.must("invoke-device-method", "-d", "sim-1", "--mn", "unknown")
	if res["status"] != 404.0 {
		t.Errorf("a method with no spec and no *: %v", res)
	}

	// A desired patch comes back as reported.
	hub.must("device-twin", "update", "-d", "sim-1", "--desired", `{"interval":30,"mode":{"eco":true}}`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		tw := hub.must("device-twin", "show", "-d", "sim-1")
		if jsonAt(tw, "properties", "reported", "interval") == 30.0 && jsonAt(tw, "properties", "reported", "mode", "eco") == true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reported never mirrored the desired patch: %v\n%s", tw["properties"], stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A C2D message is completed: the queue is empty after it.
	hub.must("c2d", "send", "-d", "sim-1", "--data", "hello", "--props", "color=red")
	waitLog("msg=\"c2d message completed\"")
	if got := hub.must("c2d", "purge", "-d", "sim-1"); got["totalMessagesPurged"] != 0.0 {
		t.Errorf("queue after completion: %v", got)
	}

	// The three telemetry messages were acknowledged by the hub.
	waitLog("msg=\"telemetry done\" device=sim-1 messages=3")
	if n := strings.Count(stderr.String(), "msg=\"telemetry sent\""); n != 3 {
		t.Errorf("telemetry sent %d times, want 3", n)
	}
	var last map[string]any
	for _, line := range strings.Split(stderr.String(), "\n") {
		if i := strings.Index(line, "body="); i >= 0 && strings.Contains(line, "telemetry sent") {
			var s string
			if err := json.Unmarshal([]byte(line[i+len("body="):]), &s); err == nil {
				_ = json.Unmarshal([]byte(s), &last)
			}
		}
	}
	if last["deviceId"] != "sim-1" || last["count"] != 3.0 {
		t.Errorf("last telemetry body: %v", last)
	}
}

// simRun is a `device simulate` running in the background until the test
// ends.
type simRun struct {
	t      *testing.T
	stderr *syncBuffer
	done   chan error
}

func startSimulate(t *testing.T, dir string, args ...string) *simRun {
	t.Helper()
	r := &simRun{t: t, stderr: &syncBuffer{}, done: make(chan error, 1)}
	root := NewRoot(&syncBuffer{}, r.stderr)
	root.SetArgs(append([]string{"--data-dir", dir, "device", "simulate"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("simulate: %v\n%s", err, r.stderr.String())
		}
	})
	return r
}

// waitLog waits for a line of the simulator's log.
func (r *simRun) waitLog(what string) {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a bound on a hang, not a timing assertion
	for !strings.Contains(r.stderr.String(), what) {
		select {
		case err := <-r.done:
			r.done <- err
			r.t.Fatalf("simulate ended before %q: %v\n%s", what, err, r.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no %q in the simulator's log:\n%s", what, r.stderr.String())
		}
	}
}

// An X.509 device of a CA-verified group, and a device from its hub
// connection string with no provisioning, over MQTT on a WebSocket: each
// connects and answers a method invoked through the service API.
func TestDeviceSimulateX509AndConnectionString(t *testing.T) {
	clearHubEnv(t)
	t.Setenv("BERTH_CONNECTION_STRING", "")
	t.Setenv("BERTH_OUTPUT", "")
	dir := startBerth(t)
	certs := t.TempDir()
	b := berthRunner{t: t, pre: []string{"--data-dir", dir}}
	b.must("dps", "certificate", "create", "--name", "berth-dev-ca", "--verify")
	b.must("enrollment-group", "create", "grp-x509", "--attestation-type", "x509", "--ca-name", "berth-dev-ca")
	b.must("device", "certificate", "create", "--registration-id", "x509-sim", "--out", certs)
	x := startSimulate(t, dir, "--certificate", filepath.Join(certs, "x509-sim.crt"), "--interval", "0")
	x.waitLog("msg=connected device=x509-sim")

	b.must("hub", "device-identity", "create", "cs-sim")
	cs := b.must("hub", "device-identity", "connection-string", "show", "cs-sim")["connectionString"].(string)
	c := startSimulate(t, dir, "--device-connection-string", cs, "--interval", "0", "--method", "ping=\"pong\"", "--hub-transport", "mqttws")
	c.waitLog("msg=connected device=cs-sim")
	c.waitLog("websocket=true")

	hub := berthRunner{t: t, pre: []string{"--data-dir", dir, "hub"}}
	if res := hub.must("invoke-device-method", "-d", "x509-sim", "--mn", "hello", "--mp", `{"a":1}`); res["status"] != 200.0 || jsonAt(res, "payload", "a") != 1.0 {
		t.Errorf("x509 device's answer: %v", res)
	}
	if res := hub.must("invoke-device-method", "-d", "cs-sim", "--mn", "ping"); res["status"] != 200.0 || res["payload"] != "pong" {
		t.Errorf("connection-string device's answer: %v", res)
	}
}

// A fleet: --devices 3 with a group key provisions sim-f-1 … sim-f-3, each
// with its own derived key, and each answers.
func TestDeviceSimulateFleet(t *testing.T) {
	clearHubEnv(t)
	t.Setenv("BERTH_CONNECTION_STRING", "")
	t.Setenv("BERTH_OUTPUT", "")
	dir := startBerth(t)
	b := berthRunner{t: t, pre: []string{"--data-dir", dir}}
	grp := b.must("enrollment-group", "create", "fleet")
	groupKey, _ := jsonAt(grp, "attestation", "symmetricKey", "primaryKey").(string)
	sim := startSimulate(t, dir, "--registration-id", "sim-f", "--group-key", groupKey, "--devices", "3", "--interval", "0")
	hub := berthRunner{t: t, pre: []string{"--data-dir", dir, "hub"}}
	for _, id := range []string{"sim-f-1", "sim-f-2", "sim-f-3"} {
		sim.waitLog("msg=connected device=" + id + " ")
		if res := hub.must("invoke-device-method", "-d", id, "--mn", "who", "--mp", `"`+id+`"`); res["status"] != 200.0 || res["payload"] != id {
			t.Errorf("%s answered %v", id, res)
		}
	}
	if out, _, err := run(t, "--data-dir", dir, "device", "simulate", "--registration-id", "x", "--key", groupKey, "--devices", "2"); err == nil || !strings.Contains(err.Error(), "--group-key") || out != "" {
		t.Errorf("--devices 2 with --key: %v", err)
	}
}
