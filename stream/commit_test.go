package stream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
)

// seqMessage is message seq of producer dev.
func seqMessage(dev string, seq int) *hub.Message {
	return &hub.Message{
		Hub: "hub.example.lan", DeviceID: dev, Enqueued: enqueued(),
		Body: []byte(strconv.Itoa(seq)),
		App:  []hub.Property{{Name: "seq", Value: strconv.Itoa(seq)}},
	}
}

// storedMsgs is how many messages the stream holds.
func storedMsgs(t *testing.T, s *Stream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.Msgs
}

// gate holds the committer before its first publish until released, so
// that Appends made meanwhile queue up behind it.
type gate struct {
	held    chan struct{} // closed when the committer is held
	release chan struct{}
	once    sync.Once
}

func holdCommitter(s *Stream) *gate {
	g := &gate{held: make(chan struct{}), release: make(chan struct{})}
	var first atomic.Bool
	s.testHookPublish = func(int) {
		if first.CompareAndSwap(false, true) {
			close(g.held)
			<-g.release
		}
	}
	return g
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// waitQueued waits until n messages are queued behind the held publish.
func waitQueued(t *testing.T, s *Stream, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.commit.mu.Lock()
		q := len(s.commit.queue)
		s.commit.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGroupCommitConcurrent: many producers appending at once are all
// stored, each producer's messages in its order, and under that load the
// committer really sends batches of several messages.
func TestGroupCommitConcurrent(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	if s.commit == nil {
		t.Fatal("embedded server: group commit not enabled")
	}
	var batches, batched, maxBatch atomic.Int64
	s.testHookBatch = func(n int, err error) {
		if err != nil {
			t.Errorf("batch of %d: %v", n, err)
		}
		batches.Add(1)
		batched.Add(int64(n))
		for {
			m := maxBatch.Load()
			if int64(n) <= m || maxBatch.CompareAndSwap(m, int64(n)) {
				break
			}
		}
	}
	const producers, each = 64, 40
	ch := subscribeT(t, s, SubscribeOptions{})
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			dev := fmt.Sprintf("dev-%02d", p)
			for i := range each {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := s.Append(ctx, seqMessage(dev, i))
				cancel()
				if err != nil {
					t.Errorf("Append(%s #%d): %v", dev, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := recvN(t, ch, producers*each)
	next := map[string]int{}
	for _, m := range got {
		if want, have := strconv.Itoa(next[m.DeviceID]), string(m.Body); have != want {
			t.Fatalf("%s: message %s, want %s (out of order)", m.DeviceID, have, want)
		}
		next[m.DeviceID]++
	}
	if len(next) != producers {
		t.Fatalf("messages from %d producers, want %d", len(next), producers)
	}
	if n := storedMsgs(t, s); n != producers*each {
		t.Fatalf("stream holds %d messages, want %d", n, producers*each)
	}
	t.Logf("%d atomic batches holding %d of %d messages, largest %d", batches.Load(), batched.Load(), producers*each, maxBatch.Load())
	if batches.Load() == 0 || maxBatch.Load() < minAtomicR1 {
		t.Fatalf("%d atomic batches, largest %d: no group commit under load", batches.Load(), maxBatch.Load())
	}
	if maxBatch.Load() > maxBatchMsgs {
		t.Fatalf("batch of %d, over the %d bound", maxBatch.Load(), maxBatchMsgs)
	}
}

// TestGroupCommitLoneMessage: a message appended on its own is not held
// back for company.
func TestGroupCommitLoneMessage(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	var groups []int
	var mu sync.Mutex
	s.testHookPublish = func(n int) { mu.Lock(); groups = append(groups, n); mu.Unlock() }
	for i := range 3 {
		appendT(t, s, seqMessage("lone", i))
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(groups) != "[1 1 1]" {
		t.Fatalf("publishes of %v messages, want [1 1 1]", groups)
	}
}

// TestGroupCommitCancelQueued: a message whose ctx ends while it is queued
// is taken back (never stored) and its Append returns at once.
func TestGroupCommitCancelQueued(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	g := holdCommitter(s)
	defer g.open()
	first := make(chan error, 1)
	go func() { first <- s.Append(context.Background(), seqMessage("a", 0)) }()
	<-g.held

	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() { second <- s.Append(ctx, seqMessage("b", 0)) }()
	waitQueued(t, s, 1)
	cancel()
	select {
	case err := <-second:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("queued Append after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued Append did not return after its ctx was cancelled")
	}
	waitQueued(t, s, 0)
	g.open()
	if err := <-first; err != nil {
		t.Fatalf("first Append: %v", err)
	}
	appendT(t, s, seqMessage("c", 0)) // the committer carries on
	if n := storedMsgs(t, s); n != 2 {
		t.Fatalf("stream holds %d messages, want 2 (the cancelled one must not be stored)", n)
	}
	// The committer releases a batch's room just after answering it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s.commit.mu.Lock()
		n, size := s.commit.accepted, s.commit.acceptedB
		s.commit.mu.Unlock()
		if n == 0 && size == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue accounting leaked: %d messages, %d bytes", n, size)
		}
	}
}

// queueN appends n messages concurrently (behind a held committer) and
// returns their results once all are queued; bad, if ≥ 0, gets body.
func queueN(t *testing.T, s *Stream, n, bad int, body []byte) <-chan error {
	t.Helper()
	errs := make(chan error, n)
	for i := range n {
		go func() {
			m := seqMessage(fmt.Sprintf("q-%d", i), 0)
			if i == bad {
				m.Body = body
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errs <- s.Append(ctx, m)
		}()
	}
	waitQueued(t, s, n)
	return errs
}

// TestGroupCommitBatchFailure: when the server refuses one message of a
// batch it stores none of them, and every waiter of the batch gets the
// error.
func TestGroupCommitBatchFailure(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.serverSync = true // the atomic batch path, as on an external server
	s := openT(t, cfg)
	ctx := context.Background()
	info, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	sc := info.CachedInfo().Config
	sc.MaxMsgSize = 4096
	if _, err := s.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	var batchErr atomic.Value
	s.testHookBatch = func(n int, err error) {
		if err != nil {
			batchErr.Store(fmt.Sprintf("%d: %v", n, err))
		}
	}
	g := holdCommitter(s)
	defer g.open()
	first := make(chan error, 1)
	go func() { first <- s.Append(ctx, seqMessage("a", 0)) }()
	<-g.held

	const n = 2 * minAtomicR1
	errs := queueN(t, s, n, n/2, make([]byte, 8192))
	g.open()
	if err := <-first; err != nil {
		t.Fatalf("first Append: %v", err)
	}
	for range n {
		err := <-errs
		if err == nil {
			t.Fatal("an Append of the failed batch returned nil")
		}
		if !strings.Contains(err.Error(), "batch of") {
			t.Fatalf("error %v does not name the batch", err)
		}
	}
	if v := batchErr.Load(); v == nil || !strings.HasPrefix(v.(string), strconv.Itoa(n)+":") {
		t.Fatalf("failed batch seen by the hook: %v, want one of %d", v, n)
	}
	t.Logf("batch error: %v", batchErr.Load())
	if got := storedMsgs(t, s); got != 1 {
		t.Fatalf("stream holds %d messages, want 1: a refused batch must store nothing", got)
	}
	// The stream still takes batches afterwards.
	appendT(t, s, seqMessage("b", 0))
}

// TestGroupCommitRefusedAlone: on the embedded stream, where berth syncs
// itself and groups are not atomic batches, a message the server refuses
// fails alone; the rest of its group is stored, synced and acknowledged.
func TestGroupCommitRefusedAlone(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	if s.blocks == nil {
		t.Fatal("embedded stream without berth's own sync")
	}
	ctx := context.Background()
	info, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	sc := info.CachedInfo().Config
	sc.MaxMsgSize = 4096
	if _, err := s.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	var groups atomic.Int64
	s.testHookBatch = func(n int, err error) {
		if err != nil {
			t.Errorf("group of %d: %v", n, err)
		}
		groups.Add(1)
	}
	g := holdCommitter(s)
	defer g.open()
	first := make(chan error, 1)
	go func() { first <- s.Append(ctx, seqMessage("a", 0)) }()
	<-g.held

	const n = 2 * minAtomicR1
	errs := queueN(t, s, n, n/2, make([]byte, 8192))
	g.open()
	if err := <-first; err != nil {
		t.Fatalf("first Append: %v", err)
	}
	failed := 0
	for range n {
		if err := <-errs; err != nil {
			if !strings.Contains(err.Error(), "q-16") {
				t.Errorf("error %v is not the large message's", err)
			}
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d Appends failed, want 1 (the large message)", failed)
	}
	if got := storedMsgs(t, s); got != n {
		t.Fatalf("stream holds %d messages, want %d", got, n)
	}
	if groups.Load() < 2 {
		t.Fatalf("%d groups synced, want at least 2", groups.Load())
	}
}

// TestGroupCommitAtomicDisabledLater: if something turns allow_atomic off
// after Open (an older berth sharing the stream), the batch in flight fails
// and later messages go out one per publish.
func TestGroupCommitAtomicDisabledLater(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.serverSync = true // the atomic batch path, as on an external server
	s := openT(t, cfg)
	ctx := context.Background()
	info, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	sc := info.CachedInfo().Config
	sc.AllowAtomicPublish = false
	if _, err := s.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	var batches atomic.Int64
	s.testHookBatch = func(int, error) { batches.Add(1) }
	for round, wantFail := range []bool{true, false} {
		g := holdCommitter(s)
		first := make(chan error, 1)
		go func() { first <- s.Append(ctx, seqMessage("a", round)) }()
		<-g.held
		errs := queueN(t, s, minAtomicR1, -1, nil)
		g.open()
		if err := <-first; err != nil {
			t.Fatalf("round %d: lone Append: %v", round, err)
		}
		for range minAtomicR1 {
			if err := <-errs; (err != nil) != wantFail {
				t.Fatalf("round %d: Append: %v, want failure %v", round, err, wantFail)
			}
		}
	}
	if b := batches.Load(); b != 1 {
		t.Fatalf("%d atomic batches attempted, want 1", b)
	}
	if n := storedMsgs(t, s); n != 2+minAtomicR1 {
		t.Fatalf("stream holds %d messages, want %d", n, 2+minAtomicR1)
	}
}

// TestAppendWithoutAtomicBatches: the per-message path Open falls back to
// when the server or stream cannot take atomic batches (forced here on the
// embedded server; the external server on this machine may be older than
// 2.12 and take it for real).
func TestAppendWithoutAtomicBatches(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.noAtomic = true
	cfg.serverSync = true // berth's own sync always has a committer
	s := openT(t, cfg)
	if s.commit != nil {
		t.Fatal("group commit enabled despite noAtomic")
	}
	info, err := s.js.Stream(context.Background(), s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if info.CachedInfo().Config.AllowAtomicPublish {
		t.Fatal("stream has allow_atomic on the per-message path")
	}
	const producers, each = 16, 10
	ch := subscribeT(t, s, SubscribeOptions{})
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				if err := s.Append(context.Background(), seqMessage(fmt.Sprintf("dev-%d", p), i)); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	next := map[string]int{}
	for _, m := range recvN(t, ch, producers*each) {
		if want := strconv.Itoa(next[m.DeviceID]); string(m.Body) != want {
			t.Fatalf("%s: message %s, want %s", m.DeviceID, m.Body, want)
		}
		next[m.DeviceID]++
	}
}

// TestExternalAtomicDetection: Open picks group commit exactly when the
// external server keeps allow_atomic on the stream (nats-server ≥ 2.12).
func TestExternalAtomicDetection(t *testing.T) {
	s := openT(t, externalConfig(t))
	info, err := s.js.Stream(context.Background(), s.cfg.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	has := info.CachedInfo().Config.AllowAtomicPublish
	t.Logf("external nats-server %s: allow_atomic %v", s.nc.ConnectedServerVersion(), has)
	if (s.commit != nil) != has {
		t.Fatalf("group commit %v, stream allow_atomic %v", s.commit != nil, has)
	}
	var major, minor int
	if _, err := fmt.Sscanf(s.nc.ConnectedServerVersion(), "%d.%d", &major, &minor); err == nil && (major < 2 || major == 2 && minor < 12) && has {
		t.Fatalf("server %s cannot have allow_atomic", s.nc.ConnectedServerVersion())
	}
	appendT(t, s, seqMessage("ext", 0))
}

// TestSurvivesKillBatched is TestSurvivesKill with many producers, so that
// the child commits atomic batches when it is SIGKILLed: every message it
// reported as acknowledged must be in the store afterwards, each producer's
// in order and without gaps.
func TestSurvivesKillBatched(t *testing.T) {
	if dir := os.Getenv("BERTH_STREAM_KILL_BATCH_DIR"); dir != "" {
		killBatchChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	checkKilledAppender(t, "TestSurvivesKillBatched", "BERTH_STREAM_KILL_BATCH_DIR")
}

// checkKilledAppender runs test name as a child appending with group commit
// (its output: "acked DEV SEQ" and "batch N" lines), kills it with SIGKILL
// after 3000 acknowledgements, and checks the stream it leaves: each
// device's messages in order, none twice, no gap, every acknowledged one
// present.
func checkKilledAppender(t *testing.T, name, env string) {
	t.Helper()
	dir, cmd, out := startKillChild(t, name, env)
	acked := map[string]int{} // producer → highest acknowledged seq
	total, batches := 0, 0
	sc := bufio.NewScanner(out)
	for sc.Scan() && total < 3000 {
		var dev string
		var seq int
		if _, err := fmt.Sscanf(sc.Text(), "acked %s %d", &dev, &seq); err == nil {
			acked[dev] = max(acked[dev], seq)
			total++
		} else if _, err := fmt.Sscanf(sc.Text(), "batch %d", &seq); err == nil {
			batches++
		} else {
			t.Logf("child: %s", sc.Text())
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if total < 3000 {
		t.Fatalf("child acknowledged only %d messages before exiting", total)
	}
	if batches == 0 {
		t.Fatal("the child committed no atomic batch")
	}

	s := openT(t, Config{StoreDir: dir, Logger: testLogger(t)})
	n := storedMsgs(t, s)
	ch := subscribeT(t, s, SubscribeOptions{StartTime: time.Unix(0, 0)})
	next := map[string]int{}
	for _, m := range recvN(t, ch, int(n)) {
		if want := strconv.Itoa(next[m.DeviceID]); string(m.Body) != want {
			t.Fatalf("%s: message %s, want %s (a duplicate, a gap or out of order)", m.DeviceID, m.Body, want)
		}
		next[m.DeviceID]++
	}
	for dev, seq := range acked {
		if next[dev] <= seq {
			t.Fatalf("%s: %d messages stored, but %d was acknowledged", dev, next[dev], seq)
		}
	}
	t.Logf("child killed after %d acks in ≥ %d batches; %d messages stored, all acknowledged ones present", total, batches, n)
}

func killBatchChild(dir string) {
	s, err := Open(context.Background(), Config{StoreDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(w, format+"\n", a...)
		w.Flush()
		mu.Unlock()
	}
	s.testHookBatch = func(n int, err error) {
		if err == nil {
			say("batch %d", n)
		}
	}
	var wg sync.WaitGroup
	for p := range 32 {
		wg.Go(func() {
			dev := fmt.Sprintf("d%02d", p)
			for i := 0; ; i++ {
				if err := s.Append(context.Background(), seqMessage(dev, i)); err != nil {
					say("append: %v", err)
					os.Exit(1)
				}
				say("acked %s %d", dev, i)
			}
		})
	}
	wg.Wait()
}

// TestGroupCommitBackPressure: when the queue is full, Append waits for
// room until its ctx ends.
func TestGroupCommitBackPressure(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	s.commit.maxQueued = 3
	g := holdCommitter(s)
	defer g.open()
	first := make(chan error, 1)
	go func() { first <- s.Append(context.Background(), seqMessage("a", 0)) }()
	<-g.held
	errs := queueN(t, s, 2, -1, nil) // 1 in flight + 2 queued: full

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Append(ctx, seqMessage("late", 0)); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "room") {
		t.Fatalf("Append to a full queue: %v, want a deadline error while waiting for room", err)
	}
	waiting := make(chan error, 1)
	go func() { waiting <- s.Append(context.Background(), seqMessage("waiting", 0)) }()
	select {
	case err := <-waiting:
		t.Fatalf("Append to a full queue returned %v without waiting", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.open()
	for _, ch := range []<-chan error{first, errs, errs, waiting} {
		if err := <-ch; err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if n := storedMsgs(t, s); n != 4 {
		t.Fatalf("stream holds %d messages, want 4", n)
	}
}

// TestGroupCommitClose: Close publishes what is queued and answers it;
// Appends after Close fail.
func TestGroupCommitClose(t *testing.T) {
	cfg := embeddedConfig(t)
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := holdCommitter(s)
	defer g.open()
	first := make(chan error, 1)
	go func() { first <- s.Append(context.Background(), seqMessage("a", 0)) }()
	<-g.held
	errs := queueN(t, s, 20, -1, nil)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// Close must not return while messages are queued.
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v with messages queued", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.open()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatalf("queued Append during Close: %v", err)
		}
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Append(context.Background(), seqMessage("after", 0)); err == nil {
		t.Fatal("Append after Close succeeded")
	}
	s = openT(t, Config{StoreDir: cfg.StoreDir, Logger: cfg.Logger})
	if n := storedMsgs(t, s); n != 21 {
		t.Fatalf("after reopening: %d messages, want 21", n)
	}
}

// TestSurvivesKillPipelined is TestSurvivesKillBatched for AppendAsync, as
// the MQTT front end uses it: each producer keeps 8 messages in flight.
// After kill -9, every acknowledged message is stored, none twice, and each
// producer's messages are in the order it gave them, with no gap.
func TestSurvivesKillPipelined(t *testing.T) {
	if dir := os.Getenv("BERTH_STREAM_KILL_PIPE_DIR"); dir != "" {
		killPipeChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	checkKilledAppender(t, "TestSurvivesKillPipelined", "BERTH_STREAM_KILL_PIPE_DIR")
}

func killPipeChild(dir string) {
	s, err := Open(context.Background(), Config{StoreDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(w, format+"\n", a...)
		w.Flush()
		mu.Unlock()
	}
	s.testHookBatch = func(n int, err error) {
		if err == nil {
			say("batch %d", n)
		}
	}
	var wg sync.WaitGroup
	for p := range 16 {
		wg.Go(func() {
			dev := fmt.Sprintf("d%02d", p)
			slots := make(chan struct{}, 8)
			for i := 0; ; i++ {
				slots <- struct{}{}
				s.AppendAsync(context.Background(), seqMessage(dev, i), func(err error) {
					if err != nil {
						say("append: %v", err)
						os.Exit(1)
					}
					say("acked %s %d", dev, i)
					<-slots
				})
			}
		})
	}
	wg.Wait()
}

// TestAppendAsyncOrderAndCancel: AppendAsync returns before the message is
// stored; callbacks come once each, a message whose ctx ended while it was
// queued is failed and not stored, and the others are stored in the order
// given.
func TestAppendAsyncOrderAndCancel(t *testing.T) {
	s := openT(t, embeddedConfig(t))
	g := holdCommitter(s)
	defer g.open()
	results := make(chan string, 8)
	cb := func(name string) func(error) {
		return func(err error) { results <- fmt.Sprintf("%s %v", name, err) }
	}
	s.AppendAsync(context.Background(), seqMessage("a", 0), cb("a0"))
	<-g.held // a0 is being published; the rest queue behind it
	ctx, cancel := context.WithCancel(context.Background())
	s.AppendAsync(ctx, seqMessage("a", 99), cb("cancelled"))
	for i := 1; i <= 3; i++ {
		s.AppendAsync(context.Background(), seqMessage("a", i), cb(fmt.Sprintf("a%d", i)))
	}
	waitQueued(t, s, 4)
	cancel()
	g.open()
	got := map[string]bool{}
	for range 5 {
		select {
		case r := <-results:
			got[r] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("callbacks so far %v, want 5", got)
		}
	}
	for _, want := range []string{"a0 <nil>", "a1 <nil>", "a2 <nil>", "a3 <nil>"} {
		if !got[want] {
			t.Errorf("no %q among %v", want, got)
		}
	}
	var cancelled bool
	for r := range got {
		cancelled = cancelled || strings.HasPrefix(r, "cancelled") && strings.Contains(r, context.Canceled.Error())
	}
	if !cancelled {
		t.Errorf("the cancelled message's callback did not report the cancellation: %v", got)
	}
	if n := storedMsgs(t, s); n != 4 {
		t.Fatalf("stream holds %d messages, want 4 (the cancelled one must not be stored)", n)
	}
	ch := subscribeT(t, s, SubscribeOptions{StartTime: time.Unix(0, 0)})
	for i, m := range recvN(t, ch, 4) {
		if want := strconv.Itoa(i); string(m.Body) != want {
			t.Fatalf("message %d has body %s, want %s (order given)", i, m.Body, want)
		}
	}
}
