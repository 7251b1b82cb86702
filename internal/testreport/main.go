// Command testreport reads `go test -json` on stdin and prints what plain
// `go test` prints (each package's ok/FAIL line, and the output of every
// failing test), then every skipped test with the reason it gave.
//
// Plain `go test` shows a package whose PostgreSQL or NATS tests skipped
// as "ok", like one that ran them; the Makefile pipes its test runs through
// this command so that a skip is always seen, with its why. It exits 1 when
// a package failed or did not build.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output and build-fail
}

type testKey struct{ pkg, test string }

// skip is a skipped test and the lines it logged (its reason).
type skip struct {
	testKey
	reason []string
}

func main() {
	failed, err := report(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// report copies in to out as described above and says whether anything
// failed.
func report(in io.Reader, out io.Writer) (failed bool, err error) {
	w := bufio.NewWriter(out)
	defer w.Flush()
	outputs := map[testKey][]string{}
	var skips []skip
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			fmt.Fprintf(w, "%s\n", line) // not an event: the go command speaking
			continue
		}
		k := testKey{ev.Package, ev.Test}
		switch ev.Action {
		case "build-output":
			w.WriteString(ev.Output)
		case "build-fail":
			failed = true
		case "output":
			if ev.Test != "" {
				outputs[k] = append(outputs[k], ev.Output)
			} else if ev.Output != "PASS\n" {
				// The package's own lines: "ok …", "FAIL …", panics
				// outside a test. Plain go test omits the PASS.
				w.WriteString(ev.Output)
			}
		case "fail":
			if ev.Test == "" {
				failed = true
				break
			}
			for _, l := range outputs[k] {
				if !isFramingLine(l) {
					w.WriteString(l)
				}
			}
			delete(outputs, k)
		case "skip":
			if ev.Test != "" {
				skips = append(skips, skip{testKey: k, reason: reasonOf(outputs[k])})
			}
			delete(outputs, k)
		case "pass":
			delete(outputs, k)
		}
	}
	if err := sc.Err(); err != nil {
		return true, err
	}
	if len(skips) > 0 {
		fmt.Fprintf(w, "\nskipped tests (%d), with their reasons:\n", len(skips))
		for _, s := range skips {
			fmt.Fprintf(w, "  %s %s: %s\n", s.pkg, s.test, strings.Join(s.reason, " / "))
		}
	}
	return failed, nil
}

// isFramingLine reports the lines test2json adds around a test's own
// output in verbose mode, which plain go test does not print.
func isFramingLine(l string) bool {
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME"} {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

// reasonOf is what a skipped test logged: its t.Skip message and any log
// line before it.
func reasonOf(lines []string) []string {
	var r []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || isFramingLine(l) || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		r = append(r, t)
	}
	if len(r) == 0 {
		r = []string{"(no reason given)"}
	}
	return r
}
