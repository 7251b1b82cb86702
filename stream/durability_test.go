package stream

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/synctrace"
	"github.com/berth-iot/berth/internal/testenv"
)

const (
	syncSerial      = 20 // appends one after another: a lone message goes at once
	syncProducers   = 4  // then concurrent appends: group commit batches them
	syncPerProducer = 10
)

// keepSeq numbers the traces kept under BERTH_SYNCTRACE_KEEP (-count=N
// runs the test N times in one process).
var keepSeq atomic.Int64

// syncMarker is in message i's body; the ';' keeps "7;" from matching "17;".
func syncMarker(i int) string { return fmt.Sprintf("berth-durable-%d;", i) }

// syncAck is what the child writes, in one system call, once Append(i)
// returned nil: the moment a front end would send PUBACK or 204.
func syncAck(i int) string { return fmt.Sprintf("[ack %d]", i) }

// TestAckedIsSynced runs an embedded stream in a child process under strace
// and checks, for every acknowledged message, that the file write carrying
// it was followed by an fsync of that file which returned before Append
// returned. It asserts the property, not the mechanism: one fsync per
// message, a group commit or any later commit path must all pass, and a
// stream that acknowledges from the page cache (SyncAlways off) fails,
// which TestSurvivesKill cannot see.
func TestAckedIsSynced(t *testing.T) {
	if dir := os.Getenv("BERTH_STREAM_SYNC_CHILD_DIR"); dir != "" {
		syncChild(dir, 0, 0)
		return
	}
	checkAckedIsSynced(t, "TestAckedIsSynced")
}

// TestAckedIsSyncedAcrossBlocks is TestAckedIsSynced with 32 KB message
// blocks (a small MaxBytes makes the server choose them) and 1 KiB bodies,
// so the messages fill several blocks: berth's own sync (blocksync.go) must
// follow the stream from one block file to the next.
func TestAckedIsSyncedAcrossBlocks(t *testing.T) {
	if dir := os.Getenv("BERTH_STREAM_SYNC_CHILD_DIR"); dir != "" {
		syncChild(dir, 120_000, 1024)
		return
	}
	checkAckedIsSynced(t, "TestAckedIsSyncedAcrossBlocks")
}

func checkAckedIsSynced(t *testing.T, name string) {
	if testing.Short() {
		t.Skip("spawns a child process under strace")
	}
	if err := synctrace.Available(); err != nil {
		testenv.Unavailable(t, "cannot check fsync before acknowledgement: %v", err)
	}
	dir := t.TempDir()
	traceFile := filepath.Join(t.TempDir(), "strace.out")
	if keep := os.Getenv("BERTH_SYNCTRACE_KEEP"); keep != "" {
		// A flaky failure can only be understood from its trace: keep
		// every run's trace there, named after the test and its pid.
		traceFile = filepath.Join(keep, fmt.Sprintf("%s-%d-%d.strace", name, os.Getpid(), keepSeq.Add(1)))
		defer func() {
			if t.Failed() {
				t.Logf("trace kept in %s", traceFile)
			}
		}()
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$")
	cmd.Env = append(os.Environ(), "BERTH_STREAM_SYNC_CHILD_DIR="+dir)
	if err := synctrace.Wrap(cmd, traceFile); err != nil {
		t.Fatal(err)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	tr, err := synctrace.Load(traceFile)
	if err != nil {
		t.Fatal(err)
	}
	total, failed := syncSerial+syncProducers*syncPerProducer, 0
	for i := range total {
		if failed == 3 {
			t.Fatalf("stopping after 3 of %d messages", total)
		}
		ack, ok := tr.WriteContaining(syncAck(i))
		if !ok {
			t.Fatalf("the child never reported %s", syncAck(i))
		}
		w, s, err := tr.Durable(syncMarker(i), dir)
		if err != nil {
			t.Errorf("message %d acknowledged (trace line %d): %v", i, ack.Start+1, err)
			failed++
			continue
		}
		if s.End >= ack.Start {
			t.Errorf("message %d acknowledged (trace line %d) before the %s of %s (lines %d-%d) that made its write (line %d) durable returned",
				i, ack.Start+1, s.Name, w.Path, s.Start+1, s.End+1, w.End+1)
			failed++
		}
	}
}

// syncChild appends to an embedded stream in dir and writes syncAck(i) to
// stdout as each append is acknowledged, first one at a time, then from
// several goroutines at once. maxBytes sets the stream's limit (and so its
// block size), pad adds bytes after each message's marker.
func syncChild(dir string, maxBytes int64, pad int) {
	ctx := context.Background()
	s, err := Open(ctx, Config{StoreDir: dir, MaxBytes: maxBytes, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(1)
	}
	send := func(i int) {
		if err := s.Append(ctx, &hub.Message{Hub: "h", DeviceID: "d", Body: append([]byte(syncMarker(i)), make([]byte, pad)...)}); err != nil {
			fmt.Fprintln(os.Stderr, "append:", err)
			os.Exit(1)
		}
		_, _ = os.Stdout.WriteString(syncAck(i) + "\n")
	}
	for i := range syncSerial {
		send(i)
	}
	var wg sync.WaitGroup
	for p := range syncProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range syncPerProducer {
				send(syncSerial + p*syncPerProducer + j)
			}
		}()
	}
	wg.Wait()
	_ = s.Close()
}
