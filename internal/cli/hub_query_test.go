package cli

import (
	"strings"
	"testing"
)

// TestHubQueryAgainstBerth: berth hub query against berth's own
// POST /devices/query: filters, pages followed to the end, --top, and a
// malformed query's position reaching the user.
func TestHubQueryAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	dir := startBerth(t)
	b := berthRunner{t: t, pre: []string{"--data-dir", dir, "hub"}}
	for i, id := range []string{"a", "b", "c"} {
		b.must("device-identity", "create", id)
		b.must("device-twin", "update", id, "--tags", `{"floor":`+string(rune('1'+i))+`}`)
	}
	query := func(args ...string) string {
		t.Helper()
		out, _, err := run(t, append([]string{"--data-dir", dir, "hub", "query"}, args...)...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return strings.Join(strings.Fields(out), "")
	}
	if got := query("-q", "SELECT deviceId FROM devices WHERE tags.floor >= 2"); got != `[{"deviceId":"b"},{"deviceId":"c"}]` {
		t.Errorf("filter: %s", got)
	}
	if got := query("-q", "SELECT deviceId FROM devices", "--page-size", "1"); got != `[{"deviceId":"a"},{"deviceId":"b"},{"deviceId":"c"}]` {
		t.Errorf("pages of 1: %s", got)
	}
	if got := query("-q", "SELECT deviceId FROM devices", "--page-size", "2", "--top", "1"); got != `[{"deviceId":"a"}]` {
		t.Errorf("--top 1: %s", got)
	}
	if got := query("-q", "SELECT COUNT() AS n FROM devices WHERE tags.floor = 9"); got != `[{"n":0}]` {
		t.Errorf("count: %s", got)
	}
	if _, _, err := run(t, "--data-dir", dir, "hub", "query", "-q", "SELECT * FROM devices WHERE"); err == nil ||
		!strings.Contains(err.Error(), "position 28") || !strings.Contains(err.Error(), "ArgumentInvalid") {
		t.Errorf("malformed: %v", err)
	}
	if _, _, err := run(t, "--data-dir", dir, "hub", "query"); err == nil {
		t.Error("no -q: no error")
	}
}
