package hubclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/berth-iot/berth/hub"
)

// FeedbackBatch is one feedback message of the hub: delivery outcomes of
// C2D messages that asked for them (iothub-ack), locked for the caller
// under LockToken until it completes or abandons them.
type FeedbackBatch struct {
	LockToken string
	MessageID string
	UserID    string
	Records   []hub.FeedbackRecord
}

// ReceiveFeedback takes the hub's next feedback message: GET
// /messages/serviceBound/feedback. It returns nil, nil when there is none
// (204). Complete the batch with CompleteFeedback once its records are
// handled; otherwise they are delivered again when the lock ends.
func (c *Client) ReceiveFeedback(ctx context.Context) (*FeedbackBatch, error) {
	var hdr http.Header
	data, err := c.do(ctx, request{method: http.MethodGet, path: []string{"messages", "serviceBound", "feedback"}, respHeader: &hdr})
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, nil
	}
	b := &FeedbackBatch{
		LockToken: strings.Trim(hdr.Get("ETag"), `"`),
		MessageID: hdr.Get("iothub-messageid"),
		UserID:    hdr.Get("iothub-userid"),
	}
	if b.LockToken == "" {
		return nil, errors.New("hubclient: feedback message without a lock token (ETag)")
	}
	if err := json.Unmarshal(data, &b.Records); err != nil {
		return nil, fmt.Errorf("hubclient: decode feedback records: %w", err)
	}
	return b, nil
}

// CompleteFeedback removes a received feedback message's records: DELETE
// /messages/serviceBound/feedback/{lockToken}. A lock that holds nothing
// any more is 412 DeviceMessageLockLost.
func (c *Client) CompleteFeedback(ctx context.Context, lockToken string) error {
	if lockToken == "" {
		return errors.New("hubclient: CompleteFeedback: empty lock token")
	}
	_, err := c.do(ctx, request{method: http.MethodDelete, path: []string{"messages", "serviceBound", "feedback", lockToken}})
	return err
}

// AbandonFeedback gives a received feedback message's records back to the
// hub for a later receive: POST /messages/serviceBound/feedback/{lockToken}/abandon.
func (c *Client) AbandonFeedback(ctx context.Context, lockToken string) error {
	if lockToken == "" {
		return errors.New("hubclient: AbandonFeedback: empty lock token")
	}
	_, err := c.do(ctx, request{method: http.MethodPost, path: []string{"messages", "serviceBound", "feedback", lockToken, "abandon"}})
	return err
}
