package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/berth-iot/berth/store"
)

// Group commit.
//
// SQLite has one writer, and with synchronous=FULL every commit costs an
// fsync, so a store that commits each call alone is bounded by one write
// call per fsync however many callers wait. Instead, every write call
// (Put, Delete, Apply) becomes an op on a queue, and one committer at a
// time takes every op waiting (up to maxBatchOps ops and maxBatchBytes of
// documents), runs them in order in one transaction on the writer
// connection, commits (one fsync) and only then answers each caller. Calls
// that arrive while a commit is in progress therefore share the next one.
// There is no linger timer: a call that finds no commit in progress
// commits at once on its own goroutine and, if it is a single Put or
// Delete, as one autocommitted statement exactly as before, so a lone
// writer waits for nothing but its own fsync.
//
// Each caller gets its own answer:
//   - A conditional Put or Delete whose condition fails matched no row and
//     wrote nothing (a single statement); its caller gets ErrExists,
//     ErrNotFound or ErrPreconditionFailed, worked out inside the same
//     transaction (so it sees the ops before it), and the batch goes on.
//     Ops later in the batch see the state the earlier ones left, as if
//     they had been called one after another in queue order.
//   - Any SQL error (a constraint, an I/O error: SQLite may roll the whole
//     transaction back by itself on some) abandons the batch: it is rolled
//     back and its ops are run again one by one, each in its own
//     transaction, so the failure stays with the op that caused it.
//   - A failed COMMIT fails every op of the batch: none of them is durable.
//
// A caller whose context ends while its op waits in the queue returns the
// context's error at once and its op is skipped (it never writes). Once a
// committer has taken the op, the caller still returns at once, and the
// write may or may not commit: as before, only a nil error promises
// anything. Ops run under a context of their own, so one caller's
// cancellation never interrupts a transaction that carries others' writes;
// the call that commits on its own goroutine waits for that commit, which
// it started with its context live.
const (
	maxBatchOps   = 256
	maxBatchBytes = 4 << 20
)

var errClosed = errors.New("sqlite: store is closed")

type opKind uint8

const (
	opPut opKind = iota
	opDelete
	opApply
)

// op states: queued until the committer takes it or its caller leaves.
const (
	opQueued int32 = iota
	opTaken
	opAbandoned
)

// op is one write call. The committer writes its results before closing
// done; the caller reads them only after.
type op struct {
	kind  opKind
	rec   store.Record   // opPut: the record, its ETag already chosen; opDelete: Kind and Key
	cond  store.Cond     // opPut
	match string         // opDelete: ifMatch
	recs  []store.Record // opApply
	size  int

	state atomic.Int32
	done  chan struct{} // closed once answered; nil for the op of the call that commits it

	err error          // the caller's answer (nil: durable)
	out []store.Record // opApply's result
}

// committer is the queue of write calls. It has no goroutine of its own
// while idle: the call that finds it idle commits its own op at once on
// its own goroutine (the lone writer's path, with no hand-off to wait
// for), and if calls queued meanwhile, a goroutine is started to commit
// them, which goes on while the queue is not empty. One commit runs at a
// time.
type committer struct {
	s *Store

	mu     sync.Mutex
	queue  []*op
	busy   bool      // a commit is in progress or about to be: queued ops will be taken
	idle   sync.Cond // signalled when busy becomes false
	closed bool

	// afterCommit, when set (tests), is called after each successful
	// commit with the number of ops in it; it may block to hold the next
	// batch back.
	afterCommit func(ops int)
}

func newCommitter(s *Store) *committer {
	c := &committer{s: s}
	c.idle.L = &c.mu
	return c
}

// submit queues o and returns its answer, or the context's error if ctx
// ends first while another goroutine commits.
func (c *committer) submit(ctx context.Context, o *op) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errClosed
	}
	lead := !c.busy
	if !lead {
		o.done = make(chan struct{}) // the one who commits o closes it
	}
	c.queue = append(c.queue, o)
	c.busy = true
	c.mu.Unlock()
	if lead {
		// The queue was empty: o is first and goes in this batch. The
		// caller waits for nothing but its own commit (and whichever
		// calls slipped in before the batch was taken). Deferred, so that
		// the calls queued behind it are served even if it panics.
		defer func() {
			if c.more() {
				go c.drain()
			}
		}()
		c.run(c.take())
		return o.err
	}
	select {
	case <-o.done:
		return o.err
	case <-ctx.Done():
		select {
		case <-o.done: // answered at the same moment: the answer wins
			return o.err
		default:
		}
		// Queued still: it will be skipped and never write. Taken: it may
		// commit; the caller cannot know, as with any write whose call
		// ended in an error.
		o.state.CompareAndSwap(opQueued, opAbandoned)
		return ctx.Err()
	}
}

// more reports whether ops wait; if none do, the committer is idle.
func (c *committer) more() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) > 0 {
		return true
	}
	c.busy = false
	c.idle.Broadcast()
	return false
}

// drain commits batches until the queue is empty.
func (c *committer) drain() {
	for c.more() {
		if batch := c.take(); len(batch) > 0 {
			c.run(batch)
		}
	}
}

// stop refuses new calls and waits for the ones already queued to be
// committed.
func (c *committer) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for c.busy {
		c.idle.Wait()
	}
}

// take removes the next batch from the queue, skipping abandoned ops.
func (c *committer) take() []*op {
	c.mu.Lock()
	defer c.mu.Unlock()
	var batch []*op
	size, i := 0, 0
	for ; i < len(c.queue); i++ {
		o := c.queue[i]
		if len(batch) > 0 && (len(batch) == maxBatchOps || size+o.size > maxBatchBytes) {
			break
		}
		if !o.state.CompareAndSwap(opQueued, opTaken) {
			continue // its caller has gone
		}
		batch = append(batch, o)
		size += o.size
	}
	n := copy(c.queue, c.queue[i:])
	clear(c.queue[n:])
	c.queue = c.queue[:n]
	return batch
}

// run makes batch durable in one commit, or as many as it takes to keep a
// failure with its op, and answers every op.
func (c *committer) run(batch []*op) {
	if len(batch) == 0 {
		return
	}
	defer func() {
		r := recover()
		for _, o := range batch {
			if r != nil { // nothing is known of the transaction: no caller may read success
				o.err, o.out = fmt.Errorf("sqlite: write abandoned by a panic: %v", r), nil
			}
			if o.done != nil { // nil: the op of the call running this batch
				close(o.done)
			}
		}
		if r != nil {
			panic(r)
		}
	}()
	s := c.s
	ctx := context.Background()
	if len(batch) == 1 {
		c.runAlone(ctx, batch[0])
		return
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		for _, o := range batch {
			o.err = o.fail(ctx, "begin", err)
		}
		return
	}
	defer func() { _ = tx.Rollback() }() // a no-op once committed; frees the connection on any other way out
	w := newTxWriter(tx)
	for _, o := range batch {
		if err := s.exec(ctx, w, o); err != nil {
			// Keep the failure with its op: start again one by one.
			_ = tx.Rollback()
			for _, o := range batch {
				c.runAlone(ctx, o)
			}
			return
		}
	}
	if err := tx.Commit(); err != nil {
		for _, o := range batch {
			o.err, o.out = o.fail(ctx, "commit", err), nil
		}
		return
	}
	if c.afterCommit != nil {
		c.afterCommit(len(batch))
	}
}

// runAlone runs o in its own transaction: a single Put or Delete as one
// autocommitted statement, an Apply as a transaction.
func (c *committer) runAlone(ctx context.Context, o *op) {
	s := c.s
	o.err, o.out = nil, nil
	if o.kind != opApply {
		if err := s.exec(ctx, dbWriter{}, o); err != nil {
			o.err = o.fail(ctx, "", err)
			return
		}
		if c.afterCommit != nil {
			c.afterCommit(1)
		}
		return
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		o.err = o.fail(ctx, "begin", err)
		return
	}
	defer func() { _ = tx.Rollback() }() // a no-op once committed
	if err := s.exec(ctx, newTxWriter(tx), o); err != nil {
		o.err, o.out = o.fail(ctx, "", err), nil
		return
	}
	if err := tx.Commit(); err != nil {
		o.err, o.out = o.fail(ctx, "commit", err), nil
		return
	}
	if c.afterCommit != nil {
		c.afterCommit(1)
	}
}

// fail wraps an SQL error for o's caller.
func (o *op) fail(ctx context.Context, step string, err error) error {
	name := map[opKind]string{opPut: "put", opDelete: "delete", opApply: "apply"}[o.kind]
	if step != "" {
		name += " " + step
	}
	rec := o.rec
	if o.kind == opApply {
		rec = o.recs[0]
		name = fmt.Sprintf("%s (%d records)", name, len(o.recs))
	}
	return fail(ctx, name, rec.Kind, rec.Key, err)
}

// writer gives the writer statements either as they are (autocommit on
// the writer connection) or bound to a transaction.
type writer interface {
	stmt(ctx context.Context, st *sql.Stmt) *sql.Stmt
}

type dbWriter struct{}

func (dbWriter) stmt(_ context.Context, st *sql.Stmt) *sql.Stmt { return st }

// txWriter binds each statement to the transaction once.
type txWriter struct {
	tx    *sql.Tx
	bound map[*sql.Stmt]*sql.Stmt
}

func newTxWriter(tx *sql.Tx) *txWriter { return &txWriter{tx: tx, bound: map[*sql.Stmt]*sql.Stmt{}} }

func (w *txWriter) stmt(ctx context.Context, st *sql.Stmt) *sql.Stmt {
	b, ok := w.bound[st]
	if !ok {
		b = w.tx.StmtContext(ctx, st)
		w.bound[st] = b
	}
	return b
}

// exec runs o's statements through w and records its answer in o. It
// returns an error only for an SQL failure, which leaves the transaction
// in no known state; an unmet condition is an answer, not such a failure.
func (s *Store) exec(ctx context.Context, w writer, o *op) error {
	switch o.kind {
	case opPut:
		rec, cond := o.rec, o.cond
		data := nonNil(rec.Data)
		var (
			res sql.Result
			err error
		)
		switch {
		case cond.IfNotExists:
			res, err = w.stmt(ctx, s.insertNew).ExecContext(ctx, string(rec.Kind), rec.Key, rec.Index, rec.ETag, data)
		case cond.IfMatch != "":
			res, err = w.stmt(ctx, s.update).ExecContext(ctx, rec.Index, rec.ETag, data, string(rec.Kind), rec.Key, cond.IfMatch, cond.IfMatch)
		default:
			_, err = w.stmt(ctx, s.upsert).ExecContext(ctx, string(rec.Kind), rec.Key, rec.Index, rec.ETag, data)
		}
		if err != nil {
			return err
		}
		if res != nil {
			return s.explainNoRow(ctx, w, o, res, "put", cond.IfNotExists)
		}
		return nil
	case opDelete:
		res, err := w.stmt(ctx, s.del).ExecContext(ctx, string(o.rec.Kind), o.rec.Key, o.match, o.match)
		if err != nil {
			return err
		}
		return s.explainNoRow(ctx, w, o, res, "delete", false)
	default:
		out := make([]store.Record, len(o.recs))
		var up, del *sql.Stmt
		for i, rec := range o.recs {
			if rec.Delete {
				if del == nil {
					del = w.stmt(ctx, s.del)
				}
				if _, err := del.ExecContext(ctx, string(rec.Kind), rec.Key, "", ""); err != nil {
					return err
				}
				out[i] = store.Record{Kind: rec.Kind, Key: rec.Key, Delete: true}
				continue
			}
			if up == nil {
				up = w.stmt(ctx, s.upsert)
			}
			rec.ETag = newETag()
			if _, err := up.ExecContext(ctx, string(rec.Kind), rec.Key, rec.Index, rec.ETag, nonNil(rec.Data)); err != nil {
				return err
			}
			out[i] = rec
		}
		o.out = out
		return nil
	}
}

// explainNoRow sets o's answer when its conditional statement changed no
// row: why not, seen from inside the same transaction, so that an op
// after another in the batch sees that one's write.
func (s *Store) explainNoRow(ctx context.Context, w writer, o *op, res sql.Result, verb string, ifNotExists bool) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if ifNotExists {
		o.err = fmt.Errorf("sqlite: %s %s/%s: %w", verb, o.rec.Kind, o.rec.Key, store.ErrExists)
		return nil
	}
	var one int
	err = w.stmt(ctx, s.wexists).QueryRowContext(ctx, string(o.rec.Kind), o.rec.Key).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		o.err = fmt.Errorf("sqlite: %s %s/%s: %w", verb, o.rec.Kind, o.rec.Key, store.ErrNotFound)
	case err != nil:
		return err
	default:
		o.err = fmt.Errorf("sqlite: %s %s/%s: %w", verb, o.rec.Kind, o.rec.Key, store.ErrPreconditionFailed)
	}
	return nil
}
