package stream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Reading the stream through a NATS server loss (docs/telemetry-stream.md,
// "Readers through a NATS server loss").
//
// A reader (Subscribe, ReadPartition) pulls from an ephemeral, R1, in-memory
// consumer. On a cluster, JetStream places such a consumer on one server of
// the stream, and the server that hosts it, not the meta leader, answers its
// creation. When that server is killed, the other servers keep it in their
// placement choices for some seconds (until its raft heartbeats are missed)
// and mark it offline only after minutes (the missed statsz heartbeats). A
// consumer placed on it in that window is never answered: a creation
// without a deadline waits forever, and nats.go's ordered consumer, which
// retries its re-creation under the SAME consumer name, asks the dead server
// again each time, so an attached reader could stall until the server came
// back. berth therefore manages the consumer itself:
//
//   - every try to create a consumer has a fresh name and waits at most
//     readTry; a try that got no answer is deleted in the background (it may
//     exist on a live server) and the next one follows after a pause;
//   - the reader keeps the stream sequence of the last message it handed
//     over (or, before the first, the position its first consumer resolved:
//     "new messages" or a start time become a sequence once); a replacement
//     consumer starts right after it, so nothing is skipped or repeated;
//   - a consumer is replaced when its idle heartbeats stop (2 × readHeartbeat),
//     when its delivery sequence skips (a message lost in between), or on any
//     error of the pull.
const (
	readTry       = 5 * time.Second
	readHeartbeat = 2 * time.Second
	// readOpen bounds how long Subscribe tries to create the first
	// consumer of a reader of new messages before it gives up.
	readOpen = 20 * time.Second
	// readPause is the first pause between tries, doubled up to
	// readPauseMax.
	readPause    = 100 * time.Millisecond
	readPauseMax = 2 * time.Second
	// readInactive is how long the server keeps a consumer nobody pulls
	// from (a reader whose client stopped taking messages): after it the
	// reader replaces the consumer when it reads again.
	readInactive = 5 * time.Minute
)

// readFrom is where a reader's first consumer starts: policy with seq (for
// DeliverByStartSequencePolicy) or time (DeliverByStartTimePolicy).
type readFrom struct {
	policy jetstream.DeliverPolicy
	seq    uint64
	time   time.Time
}

// read runs a reader over filter from from on, handing over its messages,
// decoded, until ctx ends or the Stream closes (or the stream is deleted);
// then the channel is closed. For DeliverNewPolicy the first consumer
// exists when read returns, so "new messages" means those appended after
// read returns.
func (s *Stream) read(ctx context.Context, filter string, from readFrom) (<-chan Event, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("stream: subscribe on closed stream")
	}
	sctx, cancel := context.WithCancel(ctx)
	sub := &subscription{cancel: cancel}
	s.subs[sub] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	done := func() {
		cancel()
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
		s.wg.Done()
	}

	// A reader of new messages only must have its consumer before read
	// returns (that is what "new" is measured against); any other start is
	// a fixed position, and the consumer is created in the background, so
	// that a caller (an AMQP attach, which holds up its whole connection)
	// does not wait through a NATS election.
	var cons jetstream.Consumer
	var last uint64
	if from.policy == jetstream.DeliverNewPolicy {
		octx, ocancel := context.WithTimeout(sctx, readOpen)
		var err error
		cons, last, err = s.createReader(octx, filter, from)
		ocancel()
		if err != nil {
			done()
			return nil, fmt.Errorf("stream: subscribe %s: %w", filter, err)
		}
	}
	out := make(chan Event, 16)
	go func() {
		defer done()
		defer close(out)
		if cons == nil {
			var err error
			if cons, last, err = s.createReader(sctx, filter, from); err != nil {
				if sctx.Err() == nil {
					s.log.Warn("stream reader: no consumer", "filter", filter, "err", err)
				}
				return
			}
		}
		for {
			err := s.pump(sctx, cons, &last, out)
			s.forget(cons.CachedInfo().Name)
			if sctx.Err() != nil || s.nc.IsClosed() {
				return
			}
			s.log.Info("stream reader: replacing its consumer", "filter", filter, "after", last, "err", err)
			cons, _, err = s.createReader(sctx, filter, readFrom{policy: jetstream.DeliverByStartSequencePolicy, seq: last + 1})
			if err != nil {
				if sctx.Err() == nil {
					s.log.Warn("stream reader: ends", "filter", filter, "after", last, "err", err)
				}
				return
			}
		}
	}()
	return out, nil
}

// createReader creates a consumer over filter starting at from, trying
// again (each try with a new name, each bounded by readTry) until it
// succeeds, ctx ends or the stream is gone. It returns the consumer and the
// stream sequence just before its first message.
func (s *Stream) createReader(ctx context.Context, filter string, from readFrom) (jetstream.Consumer, uint64, error) {
	pause := readPause
	for try := 1; ; try++ {
		cfg := jetstream.ConsumerConfig{
			Name:              readerName(),
			FilterSubject:     filter,
			DeliverPolicy:     from.policy,
			AckPolicy:         jetstream.AckNonePolicy,
			InactiveThreshold: readInactive,
			Replicas:          1,
			MemoryStorage:     true,
		}
		switch from.policy {
		case jetstream.DeliverByStartSequencePolicy:
			cfg.OptStartSeq = from.seq
		case jetstream.DeliverByStartTimePolicy:
			t := from.time
			cfg.OptStartTime = &t
		}
		tctx, cancel := context.WithTimeout(ctx, readTry)
		var cons jetstream.Consumer
		err := s.testHookCreateReader(try)
		if err == nil {
			cons, err = s.js.CreateOrUpdateConsumer(tctx, s.cfg.StreamName, cfg)
		}
		cancel()
		if err == nil {
			if try > 1 {
				s.log.Info("stream reader: consumer created after retrying", "filter", filter, "tries", try)
			}
			// The server resolved the start (new messages, a time) to
			// a sequence: the one before it is where a replacement
			// starts if this consumer is lost before its first message.
			return cons, cons.CachedInfo().Delivered.Stream, nil
		}
		// No answer does not mean no consumer: it may exist on a live
		// server, unused.
		s.forget(cfg.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) || s.nc.IsClosed() {
			return nil, 0, err
		}
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("no consumer after %d tries: %w", try, err)
		}
		s.log.Debug("stream reader: create consumer", "filter", filter, "try", try, "err", err)
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("no consumer after %d tries: %w", try, err)
		case <-time.After(pause):
		}
		pause = min(2*pause, readPauseMax)
	}
}

// testHookCreateReader, when set, can fail a try of createReader before it
// asks the server (a test's stand-in for a try that got no answer).
func (s *Stream) testHookCreateReader(try int) error {
	if s.testHookReaderTry == nil {
		return nil
	}
	return s.testHookReaderTry(try)
}

// pump hands cons's messages over until ctx ends or cons must be replaced
// (the error says why). *last is the stream sequence of the last message
// handed over; messages at or before it are skipped.
func (s *Stream) pump(ctx context.Context, cons jetstream.Consumer, last *uint64, out chan<- Event) error {
	// The pull buffer is bounded in messages because a message can be
	// ~1 MiB. A heartbeat missing twice ends Next with ErrNoHeartbeat.
	it, err := cons.Messages(jetstream.PullMaxMessages(64), jetstream.PullHeartbeat(readHeartbeat),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return err
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		it.Stop()
	}()
	var dseq uint64
	for {
		msg, err := it.Next()
		if err != nil {
			return err
		}
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		if md.Sequence.Consumer != dseq+1 {
			return fmt.Errorf("delivery %d after %d: a message went missing", md.Sequence.Consumer, dseq)
		}
		dseq = md.Sequence.Consumer
		if md.Sequence.Stream <= *last {
			continue
		}
		*last = md.Sequence.Stream
		m, err := decode(s.cfg.SubjectPrefix, msg.Subject(), msg.Headers(), msg.Data(), md.Timestamp)
		if err != nil {
			s.log.Warn("subscribe: skipping undecodable message", "subject", msg.Subject(), "err", err)
			continue
		}
		select {
		case out <- Event{Msg: m, Seq: md.Sequence.Stream, Stored: md.Timestamp}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// forget deletes a reader's consumer in the background; the server would
// drop it after readInactive anyway.
func (s *Stream) forget(name string) {
	if name == "" || s.nc.IsClosed() {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), readTry)
		defer cancel()
		_ = s.js.DeleteConsumer(ctx, s.cfg.StreamName, name)
	}()
}

// readerName is a fresh consumer name.
func readerName() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "berth_read_" + hex.EncodeToString(b[:])
}
