package hubquery

import "testing"

// TestDoubleBracketNames: a member name in [[…]] after a dot, as IoT Hub's
// configuration metrics name a configuration (configurations.[[id]]),
// may hold any character but "]]".
func TestDoubleBracketNames(t *testing.T) {
	doc := map[string]any{"configurations": map[string]any{"fw-1.0": map[string]any{"status": "Applied"}}}
	q, err := Parse("SELECT deviceId FROM devices WHERE configurations.[[fw-1.0]].status = 'Applied'")
	if err != nil {
		t.Fatal(err)
	}
	if !q.Matches(doc) {
		t.Error("configurations.[[fw-1.0]].status did not match")
	}
	for _, bad := range []string{
		"SELECT * FROM devices WHERE configurations.[[fw",
		"SELECT * FROM devices WHERE configurations.[[]].status = 'x'",
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
