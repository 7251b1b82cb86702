package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Retrying through a NATS leader election (docs/telemetry-stream.md,
// "When the cluster is briefly unavailable"). While a replicated stream
// elects a new leader, or while berth's connection moves to another
// server, a publish gets no answer (a timeout), "no responders", or
// JetStream's "temporarily unavailable". Elections take a few seconds;
// failing the append at once would make the front end drop the device,
// which reconnects and fails again (issue #16 saw devices dropped every
// 0.5 s). So each publish waits at most attemptWait for its ack and is
// sent again until retryBudget has passed since the first try (or its
// callers' deadline, if that is sooner). A retry can store a message twice
// when the first try was stored and only its ack was lost: at-least-once,
// as IoT Hub itself and every QoS 1 redelivery already are.
const (
	attemptWait = 2 * time.Second
	retryBudget = 10 * time.Second
	// retryPause is the first pause between tries, doubled up to
	// retryPauseMax: long enough not to spin against a server that
	// answers "no responders" at once, short enough to catch the new
	// leader soon after it is elected.
	retryPause    = 50 * time.Millisecond
	retryPauseMax = 500 * time.Millisecond
)

// JetStream error codes (nats-server server/errors.json) that mean "try
// again shortly" rather than "this message is refused".
const (
	errCodeClusterNotAvail = 10008 // JSClusterNotAvailErr: JetStream system temporarily unavailable
	errCodeStreamOffline   = 10118 // JSStreamOfflineErr
	errCodeInsufficient    = 10023 // JSInsufficientResourcesErr: e.g. no quorum for a new leader yet
	// errCodeBatchIncomplete (JSAtomicPublishIncompleteBatchErr) answers
	// a commit whose batch lost a message: in a reconnect or election,
	// but also when the server refused a message before the commit
	// (those are sent without a reply, so the refusal has no other
	// voice). So one incomplete batch is tried again and a second is
	// taken as a refusal (see publishAtomicRetrying).
	errCodeBatchIncomplete = 10176
)

// finalError is an error retrying must not retry although its cause looks
// transient.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// unavailableError is an append that failed because the stream could not
// be reached within the retry budget. Unavailable lets the front ends
// answer as IoT Hub does when it is briefly unavailable (azerr maps it to
// 503 ServiceUnavailable; MQTT closes without PUBACK so the device
// resends), rather than as if the message were bad.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string     { return e.err.Error() }
func (e *unavailableError) Unwrap() error     { return e.err }
func (e *unavailableError) Unavailable() bool { return true }

// retryable reports whether err is a transient failure of the cluster or
// the connection, not a refusal of the message.
func retryable(err error) bool {
	var final *finalError
	if err == nil || errors.As(err, &final) {
		return false
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode {
		case errCodeClusterNotAvail, errCodeStreamOffline, errCodeInsufficient, errCodeBatchIncomplete:
			return true
		}
		return api.Code == 503
	}
	return errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

// retryBudgetOf is the stream's retry budget (a field so that tests can
// make it short).
func (s *Stream) retryBudgetOf() time.Duration {
	if s.testRetryBudget > 0 {
		return s.testRetryBudget
	}
	return retryBudget
}

// retrying runs try, each time with a context bounded by attemptWait and
// ctx, until it succeeds, fails with an error that is not retryable, or ctx
// ends. ctx must carry the overall deadline (see overall). The last
// retryable error comes back as an unavailableError.
func (s *Stream) retrying(ctx context.Context, what string, try func(ctx context.Context) error) error {
	pause := retryPause
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, attemptWait)
		err := try(actx)
		cancel()
		if err == nil || !retryable(err) {
			if err == nil && n > 1 {
				s.log.Info("telemetry append stored after retrying", "what", what, "tries", n)
			}
			return err
		}
		if ctx.Err() != nil {
			s.log.Warn("telemetry append: stream unavailable, giving up", "what", what, "tries", n, "err", err)
			return &unavailableError{fmt.Errorf("stream unavailable after %d tries: %w", n, err)}
		}
		s.log.Debug("telemetry append: retrying", "what", what, "try", n, "err", err)
		select {
		case <-ctx.Done():
			return &unavailableError{fmt.Errorf("stream unavailable after %d tries: %w", n, err)}
		case <-time.After(pause):
		}
		pause = min(2*pause, retryPauseMax)
	}
}

// overall is the context that bounds all tries of one publish: its
// callers' latest deadline (wait), but no more than the retry budget.
func (s *Stream) overall(wait time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), min(wait, s.retryBudgetOf()))
}

// publishRetrying is publishOne with retries, bounded by ctx and the
// retry budget.
func (s *Stream) publishRetrying(ctx context.Context, msg *nats.Msg, what string) error {
	octx, cancel := context.WithTimeout(ctx, s.retryBudgetOf())
	defer cancel()
	return s.synced(s.retrying(octx, what, func(actx context.Context) error {
		return s.publishOne(actx, msg, what)
	}), what)
}

// publishAtomicRetrying is publishAtomic with retries, each try a new batch
// (a batch ID is never reused, so a retry cannot complete a half-sent
// earlier try).
func (s *Stream) publishAtomicRetrying(ctx context.Context, what string, nextID func() string, msgs []*nats.Msg, adapt func(*jetstream.APIError)) error {
	incomplete := 0
	return s.retrying(ctx, what, func(actx context.Context) error {
		err := s.publishAtomic(actx, nextID(), msgs, adapt)
		var api *jetstream.APIError
		if errors.As(err, &api) && api.ErrorCode == errCodeBatchIncomplete {
			if incomplete++; incomplete > 1 {
				return &finalError{err}
			}
		}
		return err
	})
}
