package stream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/berth-iot/berth/hub"
)

// Group commit: with SyncAlways a JetStream stream fsyncs every message on
// its own, so acknowledged telemetry is bounded by the disk's fsync rate
// however many devices send. Append therefore queues its message and one
// committer goroutine per Stream publishes whatever queued up while the
// previous publish was in flight. There is no timer: a lone message goes out
// at once, and groups only form because messages arrive while the disk is
// busy. How a group gets one fsync:
//
//   - embedded server: the server runs without SyncAlways and berth fsyncs
//     the stream's blocks itself once the group's PubAcks are in
//     (publishUnsynced, syncLoop, blocksync.go); syncLoop syncs one group
//     while run publishes the next.
//   - external server: a group of minBatch or more is one atomic batch
//     (nats-server ≥ 2.12), which the server stores with one fsync
//     (sync_interval: always) or one replication round (R3).
//
// Limits, see nats-server v2.15.2 server/stream.go: streamDefaultMaxAtomicBatchSize
// (1000 messages per batch unless the server sets jetstream.limits.max_batch_size),
// streamDefaultMaxAtomicBatchInflightPerStream (50 open batches per stream; one
// committer keeps at most one open), streamDefaultMaxBatchTimeout (10 s between
// a batch's messages before the server abandons it).
const (
	// maxBatchMsgs and maxBatchBytes bound one batch: well under the
	// server's default 1000-message limit, and small enough that one batch
	// never holds much memory or makes the server stage much.
	maxBatchMsgs  = 256
	maxBatchBytes = 1 << 20
	// minAtomicR1 is the smallest group sent as an atomic batch to a
	// single-replica stream. There the server stages each batch in a
	// temporary file store of its own (newBatchStore in
	// server/jetstream_batching.go: a directory created and removed, about
	// three fsyncs besides the stream's own, per strace), which costs about
	// as much as a dozen single-message fsyncs (BenchmarkAppendAtomicBatch:
	// 2.8 ms per batch of 4 or 16, against 0.22–0.28 ms per message), so
	// smaller groups go as concurrent single publishes, which cost what
	// Append cost before group commit.
	// Replicated streams stage batches in memory, so any group of two or
	// more is worth batching there.
	minAtomicR1 = 16
	// maxQueuedMsgs and maxQueuedBytes bound the messages accepted and not
	// yet answered (queued or in flight). Append blocks for room: that is
	// the back-pressure the front ends pass on to devices.
	maxQueuedMsgs  = 4096
	maxQueuedBytes = 64 << 20
	// defaultPublishWait bounds a publish, retries included, whose
	// callers gave no deadline (see retry.go).
	defaultPublishWait = retryBudget
)

// Batch headers, from nats-server server/stream.go (JSBatchId,
// JSBatchSeq, JSBatchCommit). The server keeps them on the stored messages;
// decode ignores every Nats- header.
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// JetStream error codes (nats-server server/errors.json) that mean this
// stream will not take atomic batches of the current size.
const (
	errCodeAtomicDisabled = 10174 // JSAtomicPublishDisabledErr
	errCodeBatchTooLarge  = 10199 // JSAtomicPublishTooLargeBatchErrF
)

// pending is one Append waiting for its outcome.
type pending struct {
	ctx  context.Context
	msg  *nats.Msg
	size int
	what string // hub/device, for errors
	// sent is set, under committer.mu, when the committer takes the message;
	// from then on the waiter gets the publish's outcome, not its ctx's.
	sent bool
	done chan error // buffered: the committer never blocks on a waiter
	// cb, when set, replaces done: an AppendAsync caller's callback.
	cb func(error)
	// stored is set by the committer when the server acknowledged the
	// message and it waits for berth's fsync (blockSyncer).
	stored bool
}

// finish hands the outcome to the waiter or the callback.
func (p *pending) finish(err error) {
	if p.cb != nil {
		p.cb(err)
		return
	}
	p.done <- err
}

// committer owns the queue of one Stream.
type committer struct {
	s *Stream

	mu        sync.Mutex
	queue     []*pending
	accepted  int           // queued + in flight, messages
	acceptedB int           // … and bytes
	room      chan struct{} // closed (and replaced) when accepted shrinks
	wake      chan struct{} // cap 1: the queue is not empty
	closing   bool
	stopped   chan struct{}
	// maxQueued and maxQueuedB are maxQueuedMsgs and maxQueuedBytes,
	// fields so that a test can make the queue small.
	maxQueued, maxQueuedB int

	// Committer goroutine only.
	idPrefix string
	batchNo  atomic.Uint64 // any goroutine (nextBatchID)
	minBatch int
	maxBatch int
	atomicOK bool

	// syncq, when berth syncs the embedded stream itself (Stream.blocks),
	// takes each published group to syncLoop, which fsyncs and answers it
	// while run publishes the next group: the disk's fsync of one group
	// overlaps the server's storing of the next. Groups stay in order.
	syncq    chan []*pending
	syncDone chan struct{}
}

func newCommitter(s *Stream) *committer {
	var b [9]byte
	_, _ = rand.Read(b[:])
	c := &committer{
		s:    s,
		room: make(chan struct{}),
		wake: make(chan struct{}, 1),
		// Unique per process start, so a batch abandoned by a crashed
		// berth can never be continued by this one; well under the
		// server's 64-byte limit on batch IDs.
		idPrefix:   "berth-" + hex.EncodeToString(b[:]) + "-",
		stopped:    make(chan struct{}),
		maxQueued:  maxQueuedMsgs,
		maxQueuedB: maxQueuedBytes,
		minBatch:   2,
		maxBatch:   maxBatchMsgs,
		atomicOK:   true,
	}
	if s.cfg.Replicas == 1 {
		c.minBatch = minAtomicR1
	}
	if s.blocks != nil {
		c.syncq = make(chan []*pending, syncQueued)
		c.syncDone = make(chan struct{})
		go c.syncLoop()
	}
	go c.run()
	return c
}

// append queues msg and waits for its outcome.
func (c *committer) append(ctx context.Context, msg *nats.Msg, what string) error {
	p := newPending(ctx, msg, what)
	p.done = make(chan error, 1)
	if err := c.enqueue(p); err != nil {
		return err
	}
	return c.wait(p)
}

// appendAsync queues msg and returns; done runs once with its outcome, on
// the committer's goroutine (or on this one, when it cannot be queued).
// It blocks only while the queue is full (back-pressure), up to ctx.
func (c *committer) appendAsync(ctx context.Context, msg *nats.Msg, what string, done func(error)) {
	p := newPending(ctx, msg, what)
	p.cb = done
	if err := c.enqueue(p); err != nil {
		done(err)
	}
}

func newPending(ctx context.Context, msg *nats.Msg, what string) *pending {
	p := &pending{ctx: ctx, msg: msg, what: what}
	p.size = len(msg.Subject) + len(msg.Data)
	for k, vs := range msg.Header {
		for _, v := range vs {
			p.size += len(k) + len(v) + 4
		}
	}
	return p
}

// enqueue waits for room in the queue, up to p's ctx, and queues p.
func (c *committer) enqueue(p *pending) error {
	ctx, what := p.ctx, p.what
	c.mu.Lock()
	for {
		if c.closing {
			c.mu.Unlock()
			return fmt.Errorf("stream: append %s: stream closed", what)
		}
		// An empty queue takes any message, so one larger than the byte
		// bound is not refused forever.
		if c.accepted == 0 || (c.accepted < c.maxQueued && c.acceptedB+p.size <= c.maxQueuedB) {
			break
		}
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return fmt.Errorf("stream: append %s: waiting for room in the queue: %w", what, ctx.Err())
		}
		c.mu.Lock()
	}
	c.accepted++
	c.acceptedB += p.size
	c.queue = append(c.queue, p)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// wait waits for the outcome of a queued p; when p's ctx ends first and p
// is still queued, p is taken back.
func (c *committer) wait(p *pending) error {
	ctx, what := p.ctx, p.what
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
	}
	c.mu.Lock()
	if !p.sent {
		// Still queued: take it back, so nothing is stored behind the back
		// of a caller that will not acknowledge.
		if i := slices.Index(c.queue, p); i >= 0 {
			c.queue = slices.Delete(c.queue, i, i+1)
		}
		c.releaseLocked(p)
		c.mu.Unlock()
		return fmt.Errorf("stream: append %s: %w", what, ctx.Err())
	}
	c.mu.Unlock()
	// Already on its way: only the publish's outcome says whether it is
	// stored, and the publish is bounded (publishWait).
	return <-p.done
}

func (c *committer) releaseLocked(p *pending) {
	c.accepted--
	c.acceptedB -= p.size
	close(c.room)
	c.room = make(chan struct{})
}

// close lets the committer publish what is queued, then stops it. New
// Appends fail.
func (c *committer) close() {
	c.mu.Lock()
	c.closing = true
	close(c.room)
	c.room = make(chan struct{})
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	<-c.stopped
}

func (c *committer) run() {
	defer close(c.stopped)
	if c.syncq != nil {
		defer func() {
			close(c.syncq)
			<-c.syncDone
		}()
	}
	for {
		batch, expired, closing := c.take()
		for _, p := range expired {
			p.finish(fmt.Errorf("stream: append %s: %w", p.what, p.ctx.Err()))
		}
		if len(batch) == 0 {
			if closing {
				return
			}
			<-c.wake
			continue
		}
		if c.syncq != nil {
			c.publishUnsynced(batch)
			c.syncq <- batch // syncLoop answers and releases it
			continue
		}
		c.publish(batch)
		c.release(batch)
	}
}

func (c *committer) release(batch []*pending) {
	c.mu.Lock()
	for _, p := range batch {
		c.releaseLocked(p)
	}
	c.mu.Unlock()
}

// syncQueued is how many published groups may wait for syncLoop. It only
// bounds how far publishing runs ahead of the disk: one fsync covers every
// group waiting, and messages in them count against the queue's bounds
// until they are answered.
const syncQueued = 8

// publishUnsynced publishes a group to the embedded stream without an
// atomic batch: all its messages go out before the first PubAck is awaited
// (so the server stores them in order), the server writes each to the OS
// and acknowledges it, and the group then waits for syncLoop's fsync.
// Messages the server refused are answered here; the stored ones are
// marked for syncLoop.
func (c *committer) publishUnsynced(batch []*pending) {
	if h := c.s.testHookPublish; h != nil {
		h(len(batch))
	}
	ctx, cancel := c.s.overall(publishWait(batch))
	defer cancel()
	c.publishPipelined(ctx, batch)
}

// syncLoop fsyncs the stream's blocks for the groups run has published,
// in order, as many at once as are waiting, then answers their stored
// messages (nil, or the sync's error) and releases their room in the
// queue.
func (c *committer) syncLoop() {
	defer close(c.syncDone)
	for group := range c.syncq {
		groups := [][]*pending{group}
	more:
		for {
			select {
			case g, ok := <-c.syncq:
				if !ok {
					break more
				}
				groups = append(groups, g)
			default:
				break more
			}
		}
		stored := 0
		for _, g := range groups {
			for _, p := range g {
				if p.stored {
					stored++
				}
			}
		}
		var err error
		if stored > 0 {
			err = c.s.blocks.sync()
		}
		for _, g := range groups {
			n := 0
			for _, p := range g {
				if !p.stored {
					continue
				}
				n++
				if err != nil {
					p.finish(fmt.Errorf("stream: append %s to %s: %w", p.what, c.s.cfg.StreamName, err))
				} else {
					p.finish(nil)
				}
			}
			if h := c.s.testHookBatch; h != nil && n > 0 {
				h(n, err)
			}
			c.release(g)
		}
	}
}

// take removes the next batch from the head of the queue, in order, within
// maxBatch messages and maxBatchBytes (at least one message), and the
// messages before and among them whose callers' contexts ended (expired),
// which the caller fails outside the lock.
func (c *committer) take() (batch, expired []*pending, closing bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	size, i := 0, 0
	for ; i < len(c.queue) && len(batch) < c.maxBatch; i++ {
		p := c.queue[i]
		if p.ctx.Err() != nil {
			// Its caller has given up (an AppendAsync caller is not
			// waiting to take it back): not stored, failed. sent tells
			// a synchronous waiter it is no longer in the queue.
			p.sent = true
			c.releaseLocked(p)
			expired = append(expired, p)
			continue
		}
		if len(batch) > 0 && size+p.size > maxBatchBytes {
			break
		}
		p.sent = true
		size += p.size
		batch = append(batch, p)
	}
	clear(c.queue[:i])
	c.queue = c.queue[i:]
	if len(c.queue) == 0 {
		c.queue = nil // let the backing array go after a burst
	}
	return batch, expired, c.closing
}

// publishWait is how long the committer waits for the server: the latest
// deadline among the batch's callers, so that no caller is failed earlier
// than it would have been by its own publish.
func publishWait(batch []*pending) time.Duration {
	var wait time.Duration
	now := time.Now()
	for _, p := range batch {
		w := defaultPublishWait
		if dl, ok := p.ctx.Deadline(); ok {
			w = dl.Sub(now)
		}
		wait = max(wait, w)
	}
	return max(wait, time.Millisecond)
}

// publish sends batch and answers every waiter. A publish that finds the
// stream unavailable is retried (retry.go) until the latest deadline among
// its callers or the retry budget, whichever is sooner.
func (c *committer) publish(batch []*pending) {
	if h := c.s.testHookPublish; h != nil {
		h(len(batch))
	}
	ctx, cancel := c.s.overall(publishWait(batch))
	defer cancel()
	switch {
	case len(batch) == 1:
		p := batch[0]
		p.finish(c.s.retrying(ctx, p.what, func(actx context.Context) error {
			return c.s.publishOne(actx, p.msg, p.what)
		}))
	case !c.atomicOK || len(batch) < c.minBatch:
		c.publishPipelined(ctx, batch)
	default:
		err := c.s.publishAtomicRetrying(ctx, batch[0].what, c.nextBatchID, msgsOf(batch), c.adapt)
		if h := c.s.testHookBatch; h != nil {
			h(len(batch), err)
		}
		for _, p := range batch {
			if err != nil {
				p.finish(fmt.Errorf("stream: append %s to %s (batch of %d): %w", p.what, c.s.cfg.StreamName, len(batch), err))
			} else {
				p.finish(nil)
			}
		}
	}
}

func msgsOf(batch []*pending) []*nats.Msg {
	msgs := make([]*nats.Msg, len(batch))
	for i, p := range batch {
		msgs[i] = p.msg
	}
	return msgs
}

// nextBatchID is a batch ID unique to this process start; safe from any
// goroutine (AppendBatch publishes its own batches beside the committer's).
func (c *committer) nextBatchID() string {
	return c.idPrefix + strconv.FormatUint(c.batchNo.Add(1), 10)
}

// publishPipelined publishes a group too small for an atomic batch as
// single messages, all sent before the first PubAck is awaited: one
// connection, so the server stores them in order (one fsync each), and no
// goroutine per message. Those that fail for a transient reason are sent
// again within ctx (a retry may store one after a later message of the
// same group that went through the first time).
func (c *committer) publishPipelined(ctx context.Context, batch []*pending) {
	pause := retryPause
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, attemptWait)
		again, errs := c.pipelineOnce(actx, batch)
		cancel()
		if len(again) == 0 {
			return
		}
		if ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
		if ctx.Err() != nil {
			for i, p := range again {
				p.finish(&unavailableError{fmt.Errorf("stream: append %s to %s: stream unavailable after %d tries: %w", p.what, c.s.cfg.StreamName, n, errs[i])})
			}
			return
		}
		pause = min(2*pause, retryPauseMax)
		batch = again
	}
}

// pipelineOnce is one try of publishPipelined: it answers the messages
// stored or refused for good, and returns the others with their errors.
func (c *committer) pipelineOnce(ctx context.Context, batch []*pending) (again []*pending, errs []error) {
	futs := make([]jetstream.PubAckFuture, len(batch))
	fail := func(p *pending, err error) {
		if retryable(err) {
			again, errs = append(again, p), append(errs, err)
			return
		}
		p.finish(fmt.Errorf("stream: append %s to %s: %w", p.what, c.s.cfg.StreamName, err))
	}
	for i, p := range batch {
		f, err := c.s.js.PublishMsgAsync(p.msg)
		if err != nil {
			fail(p, err)
			continue
		}
		futs[i] = f
	}
	for i, f := range futs {
		if f == nil {
			continue
		}
		p := batch[i]
		select {
		case ack := <-f.Ok():
			switch {
			case ack.Stream != c.s.cfg.StreamName:
				p.finish(fmt.Errorf("stream: append %s: stored in stream %q, not %q; check SubjectPrefix", p.what, ack.Stream, c.s.cfg.StreamName))
			case c.syncq != nil:
				p.stored = true // answered after the fsync, by syncLoop
			default:
				p.finish(nil)
			}
		case err := <-f.Err():
			fail(p, err)
		case <-ctx.Done():
			fail(p, fmt.Errorf("no PubAck: %w", ctx.Err()))
		}
	}
	return again, errs
}

// batchAck is the server's reply to a batch commit: a PubAck with the
// batch ID and how many messages it stored (server/stream.go,
// processJetStreamAtomicBatchMsg), or an error.
type batchAck struct {
	Stream string              `json:"stream"`
	Seq    uint64              `json:"seq"`
	Batch  string              `json:"batch"`
	Count  int                 `json:"count"`
	Error  *jetstream.APIError `json:"error"`
}

// publishAtomic publishes msgs as one JetStream atomic batch with the
// given ID: every message carries Nats-Batch-Id and Nats-Batch-Sequence
// (1, 2, …); the last also Nats-Batch-Commit: 1 and a reply subject. Only
// the commit is answered: the others are sent without a reply, so any of
// them the server refuses (it then drops the whole batch) shows up as an
// error on the commit. The server stores all of the batch or none of it,
// and on a SyncAlways R1 stream fsyncs once, before the ack. A refusal
// goes to adapt (nil: none) before it is returned.
func (s *Stream) publishAtomic(ctx context.Context, id string, msgs []*nats.Msg, adapt func(*jetstream.APIError)) error {
	last := len(msgs) - 1
	for i, msg := range msgs {
		h := msg.Header
		if h == nil { // encode always sets some; be safe anyway
			h = nats.Header{}
			msg.Header = h
		}
		h[hdrBatchID] = []string{id}
		h[hdrBatchSeq] = []string{strconv.Itoa(i + 1)}
		delete(h, hdrBatchCommit)
		if i < last {
			if hook := s.testHookBatchMsg; hook != nil {
				hook(i, msg)
			}
			if err := s.nc.PublishMsg(msg); err != nil {
				return err
			}
		}
	}
	commit := msgs[last]
	commit.Header[hdrBatchCommit] = []string{"1"}
	resp, err := s.nc.RequestMsgWithContext(ctx, commit)
	if err != nil {
		return err
	}
	var ack batchAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return fmt.Errorf("batch commit: unreadable ack %q: %w", resp.Data, err)
	}
	if ack.Error != nil {
		if adapt != nil {
			adapt(ack.Error)
		}
		return ack.Error
	}
	if ack.Stream != s.cfg.StreamName {
		return fmt.Errorf("stored in stream %q, not %q; check SubjectPrefix", ack.Stream, s.cfg.StreamName)
	}
	if ack.Batch != id || ack.Count != len(msgs) {
		return fmt.Errorf("batch commit acked batch %q with %d messages, want %q with %d", ack.Batch, ack.Count, id, len(msgs))
	}
	return nil
}

// adapt reacts to a refused batch that says the stream changed under us
// (another program turned allow_atomic off, or the operator set a lower
// max_batch_size): the next groups go out in a form the server takes. The
// refused batch was not stored, and its waiters are failed, so devices
// resend.
func (c *committer) adapt(e *jetstream.APIError) {
	switch e.ErrorCode {
	case errCodeAtomicDisabled:
		c.atomicOK = false
		c.s.log.Warn("telemetry stream: atomic batch publish was disabled on the stream; appending one message per publish (one fsync each) from now on", "err", e.Error())
	case errCodeBatchTooLarge:
		c.maxBatch /= 2
		if c.maxBatch < c.minBatch {
			c.maxBatch = maxBatchMsgs
			c.atomicOK = false
		}
		c.s.log.Warn("telemetry stream: server refused a batch as too large", "maxBatch", c.maxBatch, "atomic", c.atomicOK, "err", e.Error())
	}
}

// AppendAsync is Append for callers that keep several messages in flight
// (hub.AsyncSink): it returns once m is queued, and done runs once m is
// durable (nil) or will not be, on the committer's goroutine. One caller's
// messages are stored in the order it gave them: the committer takes the
// queue in order and has one publish in flight at a time.
func (s *Stream) AppendAsync(ctx context.Context, m *hub.Message, done func(error)) {
	if m == nil {
		done(errors.New("stream: append nil message"))
		return
	}
	if err := ctx.Err(); err != nil {
		done(fmt.Errorf("stream: append %s/%s: %w", m.Hub, m.DeviceID, err))
		return
	}
	msg, err := encode(s.cfg.SubjectPrefix, m, time.Now())
	if err != nil {
		done(err)
		return
	}
	what := m.Hub + "/" + m.DeviceID
	if s.commit == nil {
		// No group commit: a publish of its own, as Append does. Order
		// among one caller's messages is then not kept; this path serves
		// servers without atomic batches.
		go func() { done(s.synced(s.publishOne(ctx, msg, what), what)) }()
		return
	}
	s.commit.appendAsync(ctx, msg, what, done)
}

var _ hub.AsyncSink = (*Stream)(nil)

// synced is err, or, when err is nil and berth syncs the embedded stream
// itself (blocks), the outcome of that sync: what was acknowledged is
// durable only after it.
func (s *Stream) synced(err error, what string) error {
	if err != nil || s.blocks == nil {
		return err
	}
	if err := s.blocks.sync(); err != nil {
		return fmt.Errorf("stream: append %s to %s: %w", what, s.cfg.StreamName, err)
	}
	return nil
}
