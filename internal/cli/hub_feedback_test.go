package cli

import (
	"encoding/json"
	"testing"
)

// TestHubC2DFeedbackAgainstBerth: c2d send --ack and c2d feedback against
// berth's REST routes: a purge of a message sent with --ack full is
// reported Purged, one sent with --ack positive is not; --keep gives the
// records back, a plain receive completes them.
func TestHubC2DFeedbackAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	dir := startBerth(t)
	b := berthRunner{t: t, pre: []string{"--data-dir", dir, "hub"}}
	b.must("device-identity", "create", "d1")
	b.must("c2d", "send", "d1", "--data", "x", "--message-id", "m-full", "--ack", "full")
	b.must("c2d", "send", "d1", "--data", "y", "--message-id", "m-pos", "--ack", "positive")
	feedback := func(args ...string) []map[string]any {
		t.Helper()
		out, _, err := run(t, append(append([]string{}, b.pre...), append([]string{"c2d", "feedback"}, args...)...)...)
		if err != nil {
			t.Fatalf("c2d feedback %v: %v", args, err)
		}
		var recs []map[string]any
		if err := json.Unmarshal([]byte(out), &recs); err != nil {
			t.Fatalf("output is not a JSON array: %q", out)
		}
		return recs
	}
	if got := feedback(); len(got) != 0 {
		t.Fatalf("feedback before any outcome: %v", got)
	}
	b.must("c2d", "purge", "d1")
	for _, args := range [][]string{{"--keep"}, {"--wait", "5s"}} {
		got := feedback(args...)
		if len(got) != 1 || got[0]["originalMessageId"] != "m-full" || got[0]["statusCode"] != "Purged" ||
			got[0]["description"] != "Purged" || got[0]["deviceId"] != "d1" || got[0]["deviceGenerationId"] == "" || got[0]["enqueuedTimeUtc"] == nil {
			t.Fatalf("feedback %v: %v", args, got)
		}
	}
	if got := feedback(); len(got) != 0 {
		t.Fatalf("completed feedback came back: %v", got)
	}
}
