package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LockFile is the file in the data directory a running berth holds an
// exclusive lock on; it also names that berth's PID.
const LockFile = "berth.lock"

// DataDirInUseError is New's error when another berth runs on the same
// data directory.
type DataDirInUseError struct {
	Dir string
	// PID is the other process as it wrote itself into the lock file; 0
	// when the file did not say (it was written a moment later).
	PID int
}

func (e *DataDirInUseError) Error() string {
	who := "another berth"
	if e.PID > 0 {
		who = fmt.Sprintf("another berth (PID %d)", e.PID)
	}
	return fmt.Sprintf("server: data directory %s is in use by %s; stop it, or give this one another data directory", e.Dir, who)
}

// dirLock is the data directory's lock, held for the life of a Server.
//
// Two berths on one data directory would rewrite each other's client.json
// and share one embedded JetStream store, losing telemetry both had
// acknowledged. The lock is an OS lock (flock) on an open file, not the
// file's existence: the kernel drops it when the process ends, however it
// ends, so a crash leaves nothing stale to clean up.
type dirLock struct {
	f *os.File
}

// lockDataDir takes the data directory's lock or reports who holds it.
func lockDataDir(dir string) (*dirLock, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("server: data directory lock: %w", err)
	}
	if err := flockExclusive(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, &DataDirInUseError{Dir: dir, PID: readPID(path)}
		}
		return nil, fmt.Errorf("server: data directory lock %s: %w", path, err)
	}
	// Ours now: say who holds it, for the next one's message.
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("server: data directory lock %s: %w", path, err)
	}
	return &dirLock{f: f}, nil
}

// release drops the lock. The file stays: removing it could let a third
// process lock a new file while a second still waits on the old one.
func (l *dirLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
