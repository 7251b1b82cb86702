package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestHubJobAgainstBerth: berth hub job create, show, list and cancel
// against berth's own /jobs/v2: a twin-update job runs to completion and
// changes the twin, a future one is cancelled, and a bad condition's
// position reaches the user.
func TestHubJobAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	dir := startBerth(t)
	b := berthRunner{t: t, pre: []string{"--data-dir", dir, "hub"}}
	for _, id := range []string{"a", "b"} {
		b.must("device-identity", "create", id)
	}
	b.must("device-twin", "update", "a", "--tags", `{"floor":3}`)
	job := b.must("job", "create", "--job-id", "fw", "--job-type", "scheduleUpdateTwin", "-q", "tags.floor = 3",
		"--twin-patch", `{"properties":{"desired":{"fw":"2.0"}}}`)
	if job["status"] != "queued" || job["jobId"] != "fw" {
		t.Fatalf("create: %v", job)
	}
	deadline := time.Now().Add(30 * time.Second)
	for job["status"] != "completed" {
		if time.Now().After(deadline) {
			t.Fatalf("the job did not complete: %v", job)
		}
		time.Sleep(100 * time.Millisecond)
		job = b.must("job", "show", "--job-id", "fw")
	}
	if st := job["deviceJobStatistics"].(map[string]any); st["deviceCount"] != 1.0 || st["succeededCount"] != 1.0 {
		t.Errorf("statistics %v, want one device, succeeded", st)
	}
	tw := b.must("device-twin", "show", "a")
	if d := tw["properties"].(map[string]any)["desired"].(map[string]any); d["fw"] != "2.0" {
		t.Errorf("a's desired %v", d)
	}
	b.must("job", "create", "--job-id", "later", "--job-type", "scheduleDeviceMethod", "-q", "deviceId = 'b'",
		"--method-name", "reboot", "--start-time", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if c := b.must("job", "cancel", "later"); c["status"] != "cancelled" {
		t.Errorf("cancel: %v", c)
	}
	out, _, err := run(t, "--data-dir", dir, "hub", "job", "list", "--job-status", "cancelled")
	if err != nil {
		t.Fatal(err)
	}
	var listed []map[string]any
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed) != 1 || listed[0]["jobId"] != "later" {
		t.Errorf("list --job-status cancelled: %s (%v)", out, err)
	}
	_, _, err = run(t, "--data-dir", dir, "hub", "job", "create", "--job-id", "bad", "--job-type", "scheduleUpdateTwin",
		"-q", "tags.floor =", "--twin-patch", `{"tags":{}}`)
	if err == nil || !strings.Contains(err.Error(), "position") {
		t.Errorf("a bad condition: %v, want the position", err)
	}
}
