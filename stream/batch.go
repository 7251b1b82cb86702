package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/berth-iot/berth/hub"
)

// maxAppendBatch is the most messages AppendBatch takes: the server's
// default atomic batch limit (streamDefaultMaxAtomicBatchSize, 1000). An
// HTTPS batch is at most 256 KB, so only a batch of tiny messages comes
// near it.
const maxAppendBatch = 1000

// AppendBatch stores ms as one JetStream atomic batch: all of them or none,
// in the order given, and returns once the stream has acknowledged the
// batch (durable, as for Append). hub.Telemetry uses it for an HTTPS batch
// (and AMQP batched sends), so a 204 means the whole batch is stored and an
// error means none of it is, and the device's retry stores no duplicates of
// part of it. It publishes its own batch, beside the committer's: a batch
// is one caller's, whatever others append meanwhile. Transient failures
// are retried as for Append (retry.go); a retried batch is a new batch, so
// it is still all or nothing.
//
// Without atomic batches (a server older than 2.12, or a stream that
// refuses them) the messages are appended one by one in order, as
// hub.Telemetry does for a sink without AppendBatch: a failure part way
// leaves the earlier ones stored.
func (s *Stream) AppendBatch(ctx context.Context, ms []*hub.Message) error {
	if len(ms) == 0 {
		return nil
	}
	if len(ms) > maxAppendBatch {
		return fmt.Errorf("stream: append batch of %d messages: more than %d", len(ms), maxAppendBatch)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stream: append batch: %w", err)
	}
	if !s.atomic || len(ms) == 1 {
		for i, m := range ms {
			if err := s.Append(ctx, m); err != nil {
				return fmt.Errorf("stream: append message %d of %d: %w", i+1, len(ms), err)
			}
		}
		return nil
	}
	now := time.Now()
	msgs := make([]*nats.Msg, len(ms))
	for i, m := range ms {
		if m == nil {
			return errors.New("stream: append batch: nil message")
		}
		msg, err := encode(s.cfg.SubjectPrefix, m, now)
		if err != nil {
			return err
		}
		msgs[i] = msg
	}
	what := ms[0].Hub + "/" + ms[0].DeviceID
	octx, cancel := context.WithTimeout(ctx, s.retryBudgetOf())
	defer cancel()
	err := s.synced(s.publishAtomicRetrying(octx, what, s.commit.nextBatchID, msgs, nil), what)
	if h := s.testHookBatch; h != nil {
		h(len(msgs), err)
	}
	if err != nil {
		return fmt.Errorf("stream: append %s to %s (batch of %d): %w", what, s.cfg.StreamName, len(msgs), err)
	}
	return nil
}

var _ hub.BatchSink = (*Stream)(nil)
