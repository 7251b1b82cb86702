package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := NewRoot(&out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// berth version and berth --version print the build; --json is the build
// information as an object.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := runCLI(t, args...)
		if err != nil || !strings.HasPrefix(out, "berth ") || !strings.Contains(out, "go1.") {
			t.Errorf("%v: %q, %v", args, out, err)
		}
	}
	out, err := runCLI(t, "version", "--json")
	var info struct{ Version, GoVersion, Path string }
	if err != nil || json.Unmarshal([]byte(out), &info) != nil || info.Version == "" || info.Path != "github.com/berth-iot/berth" || !strings.HasPrefix(info.GoVersion, "go1.") {
		t.Errorf("version --json: %q, %v", out, err)
	}
}

// --log-format json writes one JSON object a line; text is slog's
// key=value; anything else is refused before berth starts.
func TestLogFormat(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(&buf, "json", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("mqtt: CONNECT refused", "reason", "wrong key")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "mqtt: CONNECT refused" || rec["reason"] != "wrong key" || rec["level"] != "INFO" {
		t.Errorf("json log line %q: %v", buf.String(), err)
	}
	buf.Reset()
	log, _ = newLogger(&buf, "text", slog.LevelInfo)
	log.Info("hello", "k", "v")
	if !strings.Contains(buf.String(), "msg=hello k=v") {
		t.Errorf("text log line %q", buf.String())
	}
	if _, err := runCLI(t, "serve", "--log-format", "xml", "--data-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("--log-format xml: %v", err)
	}
}
