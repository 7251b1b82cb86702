package sqlite

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/store"
)

// commitLog records the op count of every commit of a store's committer,
// and holds the committer after the first one until let is called, so
// that a test can queue calls behind it.
type commitLog struct {
	mu      sync.Mutex
	sizes   []int
	held    chan struct{} // closed when the first commit is held
	release chan struct{}
	once    sync.Once
}

// holdFirstCommit makes a write and returns once its commit is held.
func holdFirstCommit(t *testing.T, s *Store) *commitLog {
	t.Helper()
	l := &commitLog{held: make(chan struct{}), release: make(chan struct{})}
	s.c.afterCommit = func(n int) {
		l.mu.Lock()
		l.sizes = append(l.sizes, n)
		first := len(l.sizes) == 1
		l.mu.Unlock()
		if first {
			close(l.held)
			<-l.release
		}
	}
	t.Cleanup(l.let)
	// The first commit: a write of its own, answered once released.
	go func() {
		_, _ = s.Put(context.Background(), store.Record{Kind: store.KindConfig, Key: "first", Data: []byte(`{}`)}, store.Cond{})
	}()
	select {
	case <-l.held:
	case <-time.After(20 * time.Second):
		t.Fatal("the first commit did not happen")
	}
	return l
}

func (l *commitLog) let() { l.once.Do(func() { close(l.release) }) }

func (l *commitLog) commits() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.sizes)
}

// waitQueued waits until n ops wait in s's queue: the calls made so far
// are queued, in the order they were made.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.c.mu.Lock()
		got := len(s.c.queue)
		s.c.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d ops queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// call is one write call made in the background, its answer kept.
type call struct {
	done chan struct{}
	rec  store.Record
	recs []store.Record
	err  error
}

func goCall(fn func(c *call)) *call {
	c := &call{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		fn(c)
	}()
	return c
}

func (c *call) wait(t *testing.T) *call {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Fatal("a write call did not return")
	}
	return c
}

// Calls made while a commit is in progress share the next one, and each
// still gets its own answer: failed conditions among them fail alone,
// and a call later in the batch sees what an earlier one wrote.
func TestGroupCommitSharesOneCommit(t *testing.T) {
	s, path := openTemp(t)
	ctx := context.Background()
	taken, err := s.Put(ctx, store.Record{Kind: store.KindEnrollment, Key: "taken", Data: []byte(`{"v":0}`)}, store.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	log := holdFirstCommit(t, s)

	var calls []*call
	queue := func(fn func(c *call)) *call {
		c := goCall(fn)
		calls = append(calls, c)
		waitQueued(t, s, len(calls))
		return c
	}
	put := func(key string, cond store.Cond) *call {
		return queue(func(c *call) {
			c.rec, c.err = s.Put(ctx, store.Record{Kind: store.KindEnrollment, Key: key, Data: []byte(`{"k":"` + key + `"}`)}, cond)
		})
	}
	var plain []*call
	for i := range 10 {
		plain = append(plain, put(fmt.Sprintf("new-%02d", i), store.Cond{IfNotExists: true}))
	}
	badMatch := put("taken", store.Cond{IfMatch: "bogus"})
	exists := put("taken", store.Cond{IfNotExists: true})
	missing := put("nobody", store.Cond{IfMatch: "*"})
	created := put("seq", store.Cond{IfNotExists: true})
	// Sees "seq" created by the call before it in the same transaction.
	updated := put("seq", store.Cond{IfMatch: "*"})
	again := put("seq", store.Cond{IfNotExists: true})
	badDelete := queue(func(c *call) { c.err = s.Delete(ctx, store.KindEnrollment, "taken", "bogus") })
	goneDelete := queue(func(c *call) { c.err = s.Delete(ctx, store.KindEnrollment, "nobody", "") })
	applied := queue(func(c *call) {
		c.recs, c.err = s.Apply(ctx, []store.Record{
			{Kind: store.KindRegistration, Key: "r", Data: []byte(`{}`)},
			{Kind: store.KindEnrollment, Key: "new-00", Delete: true},
			{Kind: store.KindOperation, Key: "o", Index: "r", Data: []byte(`{}`)},
		})
	})
	for i := range 10 {
		plain = append(plain, put(fmt.Sprintf("new-%02d", 10+i), store.Cond{}))
	}
	matched := put("taken", store.Cond{IfMatch: taken.ETag})
	log.let()
	for _, c := range calls {
		c.wait(t)
	}

	if got, want := log.commits(), []int{1, len(calls)}; !slices.Equal(got, want) {
		t.Fatalf("commits of %v ops, want %v: the queued calls did not share one commit", got, want)
	}
	for _, c := range append(slices.Clone(plain), created, updated, matched) {
		if c.err != nil {
			t.Errorf("a call in the batch failed: %v", c.err)
		}
	}
	for _, tc := range []struct {
		name string
		c    *call
		want error
	}{
		{"IfMatch with a stale ETag", badMatch, store.ErrPreconditionFailed},
		{"IfNotExists on an existing key", exists, store.ErrExists},
		{"IfMatch * on a missing key", missing, store.ErrNotFound},
		{"IfNotExists after a create in the same batch", again, store.ErrExists},
		{"Delete with a stale ETag", badDelete, store.ErrPreconditionFailed},
		{"Delete of a missing key", goneDelete, store.ErrNotFound},
	} {
		if !errors.Is(tc.c.err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, tc.c.err, tc.want)
		}
	}
	if applied.err != nil || len(applied.recs) != 3 || applied.recs[0].ETag == "" || !applied.recs[1].Delete {
		t.Fatalf("Apply in the batch: %+v, %v", applied.recs, applied.err)
	}

	// What was acknowledged is durable: reopen and look.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	get := func(kind store.Kind, key string) (store.Record, error) { return s2.Get(ctx, kind, key) }
	if _, err := get(store.KindEnrollment, "new-00"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("new-00, deleted by the Apply after its create: %v", err)
	}
	for _, c := range plain[1:] {
		if got, err := get(c.rec.Kind, c.rec.Key); err != nil || got.ETag != c.rec.ETag {
			t.Errorf("%s after reopen: %+v, %v; want ETag %s", c.rec.Key, got, err, c.rec.ETag)
		}
	}
	if got, err := get(store.KindEnrollment, "seq"); err != nil || got.ETag != updated.rec.ETag {
		t.Errorf("seq after reopen: %+v, %v; want the update's ETag %s", got, err, updated.rec.ETag)
	}
	if got, err := get(store.KindEnrollment, "taken"); err != nil || got.ETag != matched.rec.ETag {
		t.Errorf("taken after reopen: %+v, %v; want the matching Put's ETag %s", got, err, matched.rec.ETag)
	}
	for _, r := range []store.Record{applied.recs[0], applied.recs[2]} {
		if got, err := get(r.Kind, r.Key); err != nil || got.ETag != r.ETag {
			t.Errorf("%s/%s after reopen: %+v, %v", r.Kind, r.Key, got, err)
		}
	}
	if _, err := get(store.KindEnrollment, "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("nobody: %v", err)
	}
}

// An SQL error in one call of a batch (here a trigger that refuses one
// key) fails that call alone: the others are committed, and the failing
// Apply writes none of its records.
func TestGroupCommitIsolatesSQLFailure(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	// A temporary trigger lives on its connection: the writer's, the only one.
	if _, err := s.w.ExecContext(ctx, `CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.records
		WHEN new.key = 'refused' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`); err != nil {
		t.Fatal(err)
	}
	log := holdFirstCommit(t, s)
	var calls []*call
	queue := func(fn func(c *call)) *call {
		c := goCall(fn)
		calls = append(calls, c)
		waitQueued(t, s, len(calls))
		return c
	}
	before := queue(func(c *call) {
		c.rec, c.err = s.Put(ctx, store.Record{Kind: store.KindConfig, Key: "before", Data: []byte(`{}`)}, store.Cond{IfNotExists: true})
	})
	bad := queue(func(c *call) {
		c.recs, c.err = s.Apply(ctx, []store.Record{
			{Kind: store.KindConfig, Key: "half", Data: []byte(`{}`)},
			{Kind: store.KindConfig, Key: "refused", Data: []byte(`{}`)},
		})
	})
	after := queue(func(c *call) {
		c.rec, c.err = s.Put(ctx, store.Record{Kind: store.KindConfig, Key: "after", Data: []byte(`{}`)}, store.Cond{})
	})
	log.let()
	for _, c := range calls {
		c.wait(t)
	}
	if before.err != nil || after.err != nil {
		t.Fatalf("the other calls failed with the bad one: %v, %v", before.err, after.err)
	}
	if bad.err == nil || !strings.Contains(bad.err.Error(), "refused by the test") {
		t.Fatalf("the refused Apply: %v", bad.err)
	}
	for _, key := range []string{"before", "after"} {
		if _, err := s.Get(ctx, store.KindConfig, key); err != nil {
			t.Errorf("%s: %v", key, err)
		}
	}
	if _, err := s.Get(ctx, store.KindConfig, "half"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("half of the refused Apply was written: %v", err)
	}
	t.Logf("commits: %v", log.commits())
}

// A call whose context ends while it waits in the queue returns at once
// and never writes; the calls around it are not affected.
func TestGroupCommitCanceledWhileQueued(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	log := holdFirstCommit(t, s)
	cctx, cancel := context.WithCancel(ctx)
	other := goCall(func(c *call) {
		c.rec, c.err = s.Put(ctx, store.Record{Kind: store.KindConfig, Key: "other", Data: []byte(`{}`)}, store.Cond{})
	})
	waitQueued(t, s, 1)
	canceled := goCall(func(c *call) {
		c.rec, c.err = s.Put(cctx, store.Record{Kind: store.KindConfig, Key: "canceled", Data: []byte(`{}`)}, store.Cond{})
	})
	waitQueued(t, s, 2)
	cancel()
	// Returns while the commit before it is still held.
	canceled.wait(t)
	if !errors.Is(canceled.err, context.Canceled) {
		t.Fatalf("canceled call: %v, want %v", canceled.err, context.Canceled)
	}
	log.let()
	if other.wait(t).err != nil {
		t.Fatal(other.err)
	}
	if _, err := s.Get(ctx, store.KindConfig, "canceled"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the canceled call wrote: %v", err)
	}
	if got, want := log.commits(), []int{1, 1}; !slices.Equal(got, want) {
		t.Fatalf("commits %v, want %v", got, want)
	}
}

// Batches are bounded: more calls than maxBatchOps take several commits.
func TestGroupCommitBatchesBounded(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	log := holdFirstCommit(t, s)
	n := maxBatchOps + 10
	calls := make([]*call, n)
	for i := range calls {
		calls[i] = goCall(func(c *call) {
			c.rec, c.err = s.Put(ctx, store.Record{Kind: store.KindConfig, Key: fmt.Sprintf("k%04d", i), Data: []byte(`{}`)}, store.Cond{})
		})
	}
	waitQueued(t, s, n)
	log.let()
	for _, c := range calls {
		if c.wait(t).err != nil {
			t.Fatal(c.err)
		}
	}
	if got, want := log.commits(), []int{1, maxBatchOps, 10}; !slices.Equal(got, want) {
		t.Fatalf("commits %v, want %v", got, want)
	}
}

// Close commits the calls already queued, then refuses new ones.
func TestGroupCommitCloseDrains(t *testing.T) {
	s, path := openTemp(t)
	ctx := context.Background()
	log := holdFirstCommit(t, s)
	calls := make([]*call, 5)
	for i := range calls {
		calls[i] = goCall(func(c *call) {
			c.rec, c.err = s.Put(ctx, store.Record{Kind: store.KindConfig, Key: fmt.Sprintf("k%d", i), Data: []byte(`{}`)}, store.Cond{})
		})
	}
	waitQueued(t, s, len(calls))
	closed := goCall(func(c *call) { c.err = s.Close() })
	log.let()
	if closed.wait(t).err != nil {
		t.Fatal(closed.err)
	}
	for _, c := range calls {
		if c.wait(t).err != nil {
			t.Fatalf("a call queued before Close: %v", c.err)
		}
	}
	if _, err := s.Put(ctx, store.Record{Kind: store.KindConfig, Key: "late", Data: []byte(`{}`)}, store.Cond{}); !errors.Is(err, errClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n, err := s2.Count(ctx, store.KindConfig, ""); err != nil || n != 6 {
		t.Fatalf("after reopen %d records (%v), want 6", n, err)
	}
}

// A panic on the goroutine that commits (here from the test hook) fails
// the calls of its batch rather than answering them with success, and
// leaves the store usable: the next call is not stuck behind it.
func TestGroupCommitPanicDoesNotWedge(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	s.c.afterCommit = func(int) { panic("boom") }
	panicked := goCall(func(c *call) {
		defer func() {
			if r := recover(); r != nil {
				c.err = fmt.Errorf("panic: %v", r)
			}
		}()
		_, c.err = s.Put(ctx, store.Record{Kind: store.KindConfig, Key: "a", Data: []byte(`{}`)}, store.Cond{})
	})
	if panicked.wait(t).err == nil {
		t.Fatal("the call whose commit panicked returned success")
	}
	s.c.afterCommit = nil
	after := goCall(func(c *call) {
		_, c.err = s.Put(ctx, store.Record{Kind: store.KindConfig, Key: "b", Data: []byte(`{}`)}, store.Cond{})
	})
	if after.wait(t).err != nil {
		t.Fatal(after.err)
	}
}
