package server

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDataDirLockHelper is not a test: TestDataDirLockAcrossProcesses runs
// the test binary again with BERTH_TEST_LOCK_DIR to hold the lock in
// another process until it is killed.
func TestDataDirLockHelper(t *testing.T) {
	dir := os.Getenv("BERTH_TEST_LOCK_DIR")
	if dir == "" {
		t.Skip("helper process for TestDataDirLockAcrossProcesses")
	}
	if _, err := lockDataDir(dir); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("locked\n")
	time.Sleep(time.Minute)
}

// Another process holding the data directory is named by its PID; once it
// is killed (no clean shutdown, SIGKILL) the lock is free: nothing stale.
func TestDataDirLockAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestDataDirLockHelper$")
	child.Env = append(os.Environ(), "BERTH_TEST_LOCK_DIR="+dir)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "locked" {
		t.Fatalf("helper: %q %v", line, err)
	}

	_, err = lockDataDir(dir)
	var inUse *DataDirInUseError
	if !errors.As(err, &inUse) || inUse.PID != child.Process.Pid {
		t.Fatalf("lock held by PID %d: got %v", child.Process.Pid, err)
	}
	if msg := err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, "PID "+strconv.Itoa(child.Process.Pid)) {
		t.Fatalf("message %q does not name the directory and the PID", msg)
	}

	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	l, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("after the holder was killed: %v", err)
	}
	defer l.release()
	if pid := readPID(dir + "/" + LockFile); pid != os.Getpid() {
		t.Fatalf("lock file names PID %d, want %d", pid, os.Getpid())
	}
}

// Within one process too (flock belongs to the open file): a second
// Server on a data directory is refused until the first shuts down.
func TestDataDirLockReleasedByClose(t *testing.T) {
	dir := t.TempDir()
	l, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var inUse *DataDirInUseError
	if _, err := lockDataDir(dir); !errors.As(err, &inUse) || inUse.PID != os.Getpid() {
		t.Fatalf("second lock: %v", err)
	}
	if err := l.release(); err != nil {
		t.Fatal(err)
	}
	l2, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.release()
}
