package sqlite

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-iot/berth/store"
)

// TestSurvivesKill: a child process writes with 16 concurrent writers
// (Puts and Applies, which the committer groups) and prints each write as
// it is acknowledged; after enough acknowledgements and at least one
// shared commit, it is killed with SIGKILL. Every acknowledged write must
// be in the database when it is opened again, with the ETag its caller
// was given. (A kill keeps the page cache: that the commit is fsynced
// before the answer is e2e TestAckedWritesAreSynced's part.)
func TestSurvivesKill(t *testing.T) {
	if path := os.Getenv("BERTH_SQLITE_KILL_CHILD_DB"); path != "" {
		killChild(path)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	path := filepath.Join(t.TempDir(), "kill.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSurvivesKill$")
	cmd.Env = append(os.Environ(), "BERTH_SQLITE_KILL_CHILD_DB="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	type ack struct{ kind, key, etag string }
	var acks []ack
	shared := 0
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	deadline := time.After(2 * time.Minute)
	for len(acks) < 3000 || shared == 0 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the child exited after %d acknowledgements", len(acks))
			}
			f := strings.Fields(l)
			switch {
			case len(f) == 4 && f[0] == "acked":
				acks = append(acks, ack{f[1], f[2], f[3]})
			case len(f) == 2 && f[0] == "commit":
				if f[1] != "1" {
					shared++
				}
			default:
				t.Fatalf("child: %s", l)
			}
		case <-deadline:
			t.Fatalf("%d acknowledgements, %d shared commits after 2 minutes", len(acks), shared)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	_ = cmd.Wait()
	for l := range lines { // acknowledgements printed before the kill count too
		// (each line is one write to the pipe, shorter than PIPE_BUF: whole)
		if f := strings.Fields(l); len(f) == 4 && f[0] == "acked" {
			acks = append(acks, ack{f[1], f[2], f[3]})
		}
	}

	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, a := range acks {
		rec, err := s.Get(context.Background(), store.Kind(a.kind), a.key)
		if err != nil {
			t.Fatalf("acknowledged %s/%s: %v", a.kind, a.key, err)
		}
		if rec.ETag != a.etag {
			t.Fatalf("acknowledged %s/%s with ETag %s, stored %s", a.kind, a.key, a.etag, rec.ETag)
		}
	}
	t.Logf("%d acknowledged writes stored; %d shared commits seen before the kill", len(acks), shared)
}

func killChild(path string) {
	s, err := Open(path)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(w, format+"\n", a...)
		_ = w.Flush()
		mu.Unlock()
	}
	s.c.afterCommit = func(n int) { say("commit %d", n) }
	ctx := context.Background()
	var wg sync.WaitGroup
	for p := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				key := fmt.Sprintf("w%02d-%06d", p, i)
				if i%4 == 3 {
					recs, err := s.Apply(ctx, []store.Record{
						{Kind: store.KindRegistration, Key: key, Data: []byte(`{"apply":true}`)},
						{Kind: store.KindOperation, Key: key, Index: key, Data: []byte(`{}`)},
					})
					if err != nil {
						say("apply: %v", err)
						os.Exit(1)
					}
					for _, r := range recs {
						say("acked %s %s %s", r.Kind, r.Key, r.ETag)
					}
					continue
				}
				rec, err := s.Put(ctx, store.Record{Kind: store.KindEnrollment, Key: key, Data: []byte(`{"put":true}`)}, store.Cond{IfNotExists: true})
				if err != nil {
					say("put: %v", err)
					os.Exit(1)
				}
				say("acked %s %s %s", rec.Kind, rec.Key, rec.ETag)
			}
		})
	}
	wg.Wait()
}
