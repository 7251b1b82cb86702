// Package heapprofile lets the idle-memory tests (frontend/mqtt,
// frontend/amqp) write the live heap's profile, to find what an idle
// connection holds (docs/benchmarks.md, "Idle connections").
package heapprofile

import (
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
)

// Env names the file the profile is written to; when it is set, every
// allocation of the test binary is recorded (runtime.MemProfileRate = 1),
// from its start.
const Env = "BERTH_MEMTEST_HEAPPROFILE"

func init() {
	if os.Getenv(Env) != "" {
		runtime.MemProfileRate = 1
	}
}

// Write writes the live heap's profile to the file Env names, if it is set.
func Write(t testing.TB) {
	t.Helper()
	path := os.Getenv(Env)
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
}
