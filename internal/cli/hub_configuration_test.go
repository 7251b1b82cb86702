package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHubConfigurationAgainstBerth: berth hub configuration create, show,
// list and delete against berth's own /configurations, the content read
// from a file, and the configuration's content reaching a matching twin.
func TestHubConfigurationAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	dir := startBerth(t)
	hub := func(args ...string) string {
		t.Helper()
		out, _, err := run(t, append([]string{"--data-dir", dir, "hub"}, args...)...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	hub("device-identity", "create", "north-1")
	hub("device-twin", "update", "north-1", "--tags", `{"site":"north"}`)
	contentFile := filepath.Join(t.TempDir(), "content.json")
	if err := os.WriteFile(contentFile, []byte(`{"content":{"deviceContent":{"properties.desired.mode":"eco"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out := hub("configuration", "create", "-c", "eco", "--priority", "2", "--target-condition", "tags.site='north'",
		"--content", "@"+contentFile, "--labels", `{"team":"ops"}`, "--metrics", `{"queries":{"all":"SELECT deviceId FROM devices"}}`)
	var created struct {
		ID       string            `json:"id"`
		Priority int               `json:"priority"`
		Labels   map[string]string `json:"labels"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID != "eco" || created.Priority != 2 || created.Labels["team"] != "ops" {
		t.Fatalf("create: %v %s", err, out)
	}
	// Applied in the background: poll the twin (the deadline only bounds
	// a failure).
	for deadline := time.Now().Add(20 * time.Second); ; {
		tw := hub("device-twin", "show", "north-1")
		if strings.Contains(tw, `"mode": "eco"`) && strings.Contains(tw, `"Applied"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the content never reached the twin: %s", tw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	show := strings.Join(strings.Fields(hub("configuration", "show", "-c", "eco")), "")
	for _, want := range []string{`"appliedCount":1`, `"targetedCount":1`, `"all":1`} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %s: %s", want, show)
		}
	}
	if list := hub("configuration", "list"); !strings.Contains(list, `"id": "eco"`) {
		t.Errorf("list: %s", list)
	}
	if _, _, err := run(t, "--data-dir", dir, "hub", "configuration", "create", "-c", "eco", "--content", `{"deviceContent":{"properties.desired.a":1}}`); err == nil ||
		!strings.Contains(err.Error(), "ConfigurationAlreadyExists") {
		t.Errorf("create again: %v", err)
	}
	hub("configuration", "delete", "-c", "eco")
	if _, _, err := run(t, "--data-dir", dir, "hub", "configuration", "show", "-c", "eco"); err == nil || !strings.Contains(err.Error(), "ConfigurationNotFound") {
		t.Errorf("show after delete: %v", err)
	}
	if _, _, err := run(t, "--data-dir", dir, "hub", "configuration", "create", "-c", "x"); err == nil {
		t.Error("create without --content: no error")
	}
}
