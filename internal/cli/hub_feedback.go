package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
)

// c2d feedback: the delivery outcomes of messages sent with --ack, taken
// through the service's HTTPS feedback endpoints (docs/hub-wire.md#c2d-feedback).

// feedbackPoll is how often c2d feedback asks again while it waits.
const feedbackPoll = time.Second

func newC2DFeedbackCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		wait time.Duration
		keep bool
	)
	cmd := &cobra.Command{
		Use:   "feedback",
		Short: "Receive and show the delivery feedback of cloud-to-device messages sent with --ack",
		Long: `Receive the hub's pending feedback records and print them as one JSON array of
{"originalMessageId", "enqueuedTimeUtc", "statusCode", "description", "deviceId",
"deviceGenerationId"}; statusCode is Success, Rejected, Expired,
DeliveryCountExceeded or Purged. Records are completed (removed from the hub) once
printed, unless --keep gives them back for a later receive.

With --wait, keep asking until at least one record arrives or the time is up.

  berth hub c2d send -d d1 --data hi --ack full
  berth hub c2d feedback --wait 1m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			recs, err := receiveFeedback(cmd.Context(), c, wait, keep)
			if err != nil {
				return err
			}
			return g.print(recs)
		},
	}
	fs := cmd.Flags()
	fs.DurationVar(&wait, "wait", 0, "how long to wait for the first record (default: take what is there now)")
	fs.BoolVar(&keep, "keep", false, "give the records back to the hub (abandon) instead of completing them")
	return cmd
}

// receiveFeedback takes every pending feedback message, settling each
// after its records are in hand, waiting up to wait for the first one.
// Records are printed only after their batch is settled: a failed
// complete leaves them for the next receive rather than printed twice.
func receiveFeedback(ctx context.Context, c *hubclient.Client, wait time.Duration, keep bool) ([]hub.FeedbackRecord, error) {
	recs := []hub.FeedbackRecord{}
	deadline := time.Now().Add(wait)
	seen := map[string]bool{}
	for {
		b, err := c.ReceiveFeedback(ctx)
		if err != nil {
			return nil, fmt.Errorf("receive feedback: %w", err)
		}
		if b == nil || seen[b.LockToken] {
			if len(recs) > 0 || !time.Now().Before(deadline) {
				return recs, nil
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(feedbackPoll):
			}
			continue
		}
		seen[b.LockToken] = true
		settle := c.CompleteFeedback
		if keep {
			settle = c.AbandonFeedback
		}
		if err := settle(ctx, b.LockToken); err != nil {
			return nil, fmt.Errorf("settle feedback message %s: %w", b.LockToken, err)
		}
		recs = append(recs, b.Records...)
		if keep {
			// Abandoned records come straight back: one pass is all.
			return recs, nil
		}
	}
}
