package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// Feedback status codes: what became of a cloud-to-device message that
// asked for feedback (iothub-ack). The description of a record is its
// status code: the C service SDK derives the status from the description,
// compared case-insensitively with these names (docs/hub-wire.md).
const (
	FeedbackSuccess               = "Success"
	FeedbackExpired               = "Expired"
	FeedbackDeliveryCountExceeded = "DeliveryCountExceeded"
	FeedbackRejected              = "Rejected"
	FeedbackPurged                = "Purged"
)

// Feedback queue limits and the wire constants of a feedback message
// (docs/hub-wire.md#c2d-feedback).
const (
	// FeedbackContentType is the content type of a feedback message.
	FeedbackContentType = "application/vnd.microsoft.iothub.feedback.json"
	// MaxFeedbackBatch is how many records one feedback message carries
	// at most (IoT Hub batches up to 64).
	MaxFeedbackBatch = 64
	// FeedbackTTL is how long a record waits to be received and
	// completed (IoT Hub's feedback.ttl default).
	FeedbackTTL = time.Hour
	// FeedbackLockTimeout is how long a received feedback message stays
	// locked before its records are delivered again.
	FeedbackLockTimeout = time.Minute
	// MaxFeedbackDeliveryCount is how often a record is delivered
	// (received, then abandoned or left to time out) before it is dropped.
	MaxFeedbackDeliveryCount = 100
)

// FeedbackRecord is one element of a feedback message's JSON array, with
// the names every service SDK reads.
type FeedbackRecord struct {
	OriginalMessageID  string `json:"originalMessageId"`
	EnqueuedTimeUTC    string `json:"enqueuedTimeUtc"`
	StatusCode         string `json:"statusCode"`
	Description        string `json:"description"`
	DeviceID           string `json:"deviceId"`
	DeviceGenerationID string `json:"deviceGenerationId"`
}

// FeedbackMessage is a batch of records as delivered to a feedback
// receiver, locked under LockToken until it is completed, abandoned or
// rejected, or its lock times out.
type FeedbackMessage struct {
	MessageID     string
	LockToken     string
	UserID        string // the hub's name, as IoT Hub sets it
	Enqueued      time.Time
	DeliveryCount int // the highest delivery count among the records
	Records       []FeedbackRecord
	// Body is Records as the JSON array the SDKs parse.
	Body []byte
}

// feedbackDoc is a stored feedback record: one per C2D message (keyed by
// the message, so that settling the same message twice after a crash
// writes one record), with the lock of the batch that holds it.
type feedbackDoc struct {
	Record        FeedbackRecord `json:"record"`
	Created       time.Time      `json:"created"`
	Expiry        time.Time      `json:"expiry"`
	DeliveryCount int            `json:"deliveryCount"`
	LockToken     string         `json:"lockToken,omitempty"`
	LockedUntil   time.Time      `json:"lockedUntil"`
}

// feedbackBatch is the stored lock of a delivered feedback message: which
// records it holds, so that completing it needs no scan.
type feedbackBatch struct {
	Keys        []string  `json:"keys"`
	LockedUntil time.Time `json:"lockedUntil"`
}

// Feedback is a hub's durable queue of C2D delivery feedback: records are
// written by CloudToDevice when a message that asked for them is settled,
// dead-lettered, expired or purged, and taken by the service in batches
// (AMQP /messages/serviceBound/feedback, HTTPS GET
// /messages/serviceBound/feedback). Records survive restarts until a
// batch holding them is completed, they expire (FeedbackTTL) or they were
// delivered MaxFeedbackDeliveryCount times.
type Feedback struct {
	store store.Store
	now   func() time.Time
	log   *slog.Logger

	seed  maphash.Seed
	locks [16]sync.Mutex
	// wake, when set, is told that a hub has new feedback (a live AMQP
	// feedback receiver waits on it).
	wmu   sync.Mutex
	wakes map[string]map[*FeedbackWaiter]struct{}
}

// FeedbackWaiter is a channel that receives a value when a hub has new
// feedback. It never blocks the writer: one pending wake-up is enough.
type FeedbackWaiter struct {
	C   chan struct{}
	hub string
}

func newFeedback(st store.Store, now func() time.Time, log *slog.Logger) *Feedback {
	return &Feedback{store: st, now: now, log: log, seed: maphash.MakeSeed(), wakes: map[string]map[*FeedbackWaiter]struct{}{}}
}

func (f *Feedback) lock(hk string) func() {
	m := &f.locks[maphash.String(f.seed, hk)%uint64(len(f.locks))]
	m.Lock()
	return m.Unlock
}

// Wait registers a waiter for hubName's new feedback; Release it when done.
func (f *Feedback) Wait(hubName string) *FeedbackWaiter {
	w := &FeedbackWaiter{C: make(chan struct{}, 1), hub: strings.ToLower(hubName)}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	set := f.wakes[w.hub]
	if set == nil {
		set = map[*FeedbackWaiter]struct{}{}
		f.wakes[w.hub] = set
	}
	set[w] = struct{}{}
	return w
}

// Release forgets a waiter.
func (f *Feedback) Release(w *FeedbackWaiter) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if set := f.wakes[w.hub]; set != nil {
		delete(set, w)
		if len(set) == 0 {
			delete(f.wakes, w.hub)
		}
	}
}

func (f *Feedback) wake(hk string) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	for w := range f.wakes[hk] {
		select {
		case w.C <- struct{}{}:
		default:
		}
	}
}

// wants says whether a message's iothub-ack asks for feedback on status.
func wantsFeedback(ack, status string) bool {
	switch ack {
	case AckFull:
		return true
	case AckPositive:
		return status == FeedbackSuccess
	case AckNegative:
		return status != FeedbackSuccess
	}
	return false
}

func feedbackIndex(hubName string) string { return strings.ToLower(hubName) }

// feedbackKey names the record of one C2D message: its hub, then its
// order (the message key's last part), then its device, so that records
// list roughly oldest first and a message has one record.
func feedbackKey(hubName, deviceID, c2dKey string) string {
	return feedbackIndex(hubName) + "/" + c2dKey[strings.LastIndexByte(c2dKey, '/')+1:] + "/" + deviceID
}

// batchKey names the lock of a delivered feedback message. "~" sorts after
// every record key of the hub, and the batch has another index, so lists
// of records never see it.
func batchKey(hubName, token string) string { return feedbackIndex(hubName) + "/~lock/" + token }

const batchIndexPrefix = "lock:"

// record returns the stored feedback record for m's outcome, or false
// when m did not ask for one.
func (f *Feedback) record(hubName, deviceID string, m *CloudMessage, status string) (store.Record, bool, error) {
	if f == nil || !wantsFeedback(m.Ack, status) {
		return store.Record{}, false, nil
	}
	now := f.now().UTC()
	doc := feedbackDoc{
		Record: FeedbackRecord{
			OriginalMessageID:  m.MessageID,
			EnqueuedTimeUTC:    now.Format(EnqueuedTimeLayout),
			StatusCode:         status,
			Description:        status,
			DeviceID:           deviceID,
			DeviceGenerationID: m.GenerationID,
		},
		Created: now,
		Expiry:  now.Add(FeedbackTTL),
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return store.Record{}, false, fmt.Errorf("hub: encode feedback record: %w", err)
	}
	return store.Record{Kind: store.KindFeedback, Key: feedbackKey(hubName, deviceID, m.key), Index: feedbackIndex(hubName), Data: data}, true, nil
}

// Receive locks and returns the next feedback message of a hub: up to
// MaxFeedbackBatch records that are not locked, oldest first, all under
// one new lock token for lockFor; nil when there are none. Expired records
// and records delivered MaxFeedbackDeliveryCount times are dropped on the
// way. The lock is durable before Receive returns.
func (f *Feedback) Receive(ctx context.Context, hubName string, lockFor time.Duration) (*FeedbackMessage, error) {
	hk := feedbackIndex(hubName)
	unlock := f.lock(hk)
	defer unlock()
	now := f.now().UTC()
	token := newUUID()
	msg := &FeedbackMessage{MessageID: newUUID(), LockToken: token, UserID: hubName, Enqueued: now}
	var writes []store.Record
	batch := feedbackBatch{LockedUntil: now.Add(lockFor)}
	after := ""
	for len(batch.Keys) < MaxFeedbackBatch {
		recs, err := f.store.List(ctx, store.KindFeedback, store.ListOptions{Index: hk, After: after, Limit: 256})
		if err != nil {
			return nil, fmt.Errorf("hub: read feedback of %s: %w", hubName, err)
		}
		for _, rec := range recs {
			if len(batch.Keys) >= MaxFeedbackBatch {
				break
			}
			var d feedbackDoc
			if err := json.Unmarshal(rec.Data, &d); err != nil {
				return nil, fmt.Errorf("hub: decode feedback record %s: %w", rec.Key, err)
			}
			switch {
			case !now.Before(d.Expiry), d.DeliveryCount >= MaxFeedbackDeliveryCount && (d.LockToken == "" || !now.Before(d.LockedUntil)):
				f.drop(ctx, rec, d, "expired or delivered too often")
				continue
			case d.LockToken != "" && now.Before(d.LockedUntil):
				continue
			}
			d.DeliveryCount++
			d.LockToken, d.LockedUntil = token, batch.LockedUntil
			data, err := json.Marshal(d)
			if err != nil {
				return nil, fmt.Errorf("hub: encode feedback record: %w", err)
			}
			writes = append(writes, store.Record{Kind: store.KindFeedback, Key: rec.Key, Index: rec.Index, Data: data})
			batch.Keys = append(batch.Keys, rec.Key)
			msg.Records = append(msg.Records, d.Record)
			msg.DeliveryCount = max(msg.DeliveryCount, d.DeliveryCount)
		}
		if len(recs) < 256 {
			break
		}
		after = recs[len(recs)-1].Key
	}
	if len(batch.Keys) == 0 {
		return nil, nil
	}
	data, err := json.Marshal(batch)
	if err != nil {
		return nil, fmt.Errorf("hub: encode feedback lock: %w", err)
	}
	writes = append(writes, store.Record{Kind: store.KindFeedback, Key: batchKey(hubName, token), Index: batchIndexPrefix + hk, Data: data})
	if _, err := f.store.Apply(ctx, writes); err != nil {
		return nil, fmt.Errorf("hub: lock feedback of %s: %w", hubName, err)
	}
	if msg.Body, err = json.Marshal(msg.Records); err != nil {
		return nil, fmt.Errorf("hub: encode feedback message: %w", err)
	}
	return msg, nil
}

func (f *Feedback) drop(ctx context.Context, rec store.Record, d feedbackDoc, why string) {
	if err := f.store.Delete(ctx, store.KindFeedback, rec.Key, rec.ETag); err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrPreconditionFailed) {
		f.log.Warn("hub: could not drop a feedback record", "key", rec.Key, "error", err.Error())
		return
	}
	f.log.Info("hub: feedback record dropped", "reason", why, "deviceId", d.Record.DeviceID, "originalMessageId", d.Record.OriginalMessageID)
}

// Complete removes the records of a received feedback message (AMQP
// accepted, HTTPS DELETE). A lock that timed out still completes the
// records nobody received again. An unknown token is
// DeviceMessageLockLost (412).
func (f *Feedback) Complete(ctx context.Context, hubName, token string) error {
	return f.settle(ctx, hubName, token, false)
}

// Reject drops the records of a received feedback message, as Complete
// does, but logs them: the receiver refused them (AMQP rejected).
func (f *Feedback) Reject(ctx context.Context, hubName, token string) error {
	f.log.Info("hub: feedback message rejected by the service (dropped)", "hub", hubName, "lockToken", token)
	return f.settle(ctx, hubName, token, false)
}

// Abandon makes the records of a received feedback message available
// again (AMQP released or modified, HTTPS POST …/abandon); their delivery
// counts keep the delivery.
func (f *Feedback) Abandon(ctx context.Context, hubName, token string) error {
	return f.settle(ctx, hubName, token, true)
}

func (f *Feedback) settle(ctx context.Context, hubName, token string, abandon bool) error {
	hk := feedbackIndex(hubName)
	unlock := f.lock(hk)
	defer unlock()
	lost := azerr.Newf(azerr.HubMessageLockLost, "The feedback lock %s is not valid: the feedback message was completed, abandoned or delivered again.", clipKey(token))
	if !validLockToken(token) {
		return lost
	}
	brec, err := f.store.Get(ctx, store.KindFeedback, batchKey(hubName, token))
	if errors.Is(err, store.ErrNotFound) {
		return lost
	}
	if err != nil {
		return fmt.Errorf("hub: read feedback lock: %w", err)
	}
	var b feedbackBatch
	if err := json.Unmarshal(brec.Data, &b); err != nil {
		return fmt.Errorf("hub: decode feedback lock: %w", err)
	}
	for _, k := range b.Keys {
		rec, err := f.store.Get(ctx, store.KindFeedback, k)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("hub: read feedback record: %w", err)
		}
		var d feedbackDoc
		if err := json.Unmarshal(rec.Data, &d); err != nil {
			return fmt.Errorf("hub: decode feedback record %s: %w", rec.Key, err)
		}
		if d.LockToken != token {
			continue // delivered again since, or written anew
		}
		if abandon {
			d.LockToken, d.LockedUntil = "", time.Time{}
			data, err := json.Marshal(d)
			if err != nil {
				return fmt.Errorf("hub: encode feedback record: %w", err)
			}
			rec.Data = data
			_, err = f.store.Put(ctx, rec, store.Cond{IfMatch: rec.ETag})
			if err != nil && !errors.Is(err, store.ErrPreconditionFailed) && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("hub: abandon feedback record: %w", err)
			}
			continue
		}
		err = f.store.Delete(ctx, store.KindFeedback, rec.Key, rec.ETag)
		if err != nil && !errors.Is(err, store.ErrPreconditionFailed) && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("hub: complete feedback record: %w", err)
		}
	}
	if err := f.store.Delete(ctx, store.KindFeedback, brec.Key, ""); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("hub: delete feedback lock: %w", err)
	}
	if abandon {
		f.wake(hk)
	}
	return nil
}

// validLockToken accepts the GUID shape newUUID makes, so that a token
// from a URL never builds a surprising store key.
func validLockToken(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		default:
			return false
		}
	}
	return true
}

// Count returns how many feedback records of a hub are stored (received
// or not).
func (f *Feedback) Count(ctx context.Context, hubName string) (int, error) {
	n, err := f.store.Count(ctx, store.KindFeedback, feedbackIndex(hubName))
	if err != nil {
		return 0, fmt.Errorf("hub: count feedback of %s: %w", hubName, err)
	}
	return n, nil
}

// sweep drops expired records and the locks of feedback messages whose
// lock ended more than a lock timeout ago (their records were released
// by the timeout; a late complete then answers lock lost).
func (f *Feedback) sweep(ctx context.Context) error {
	now := f.now().UTC()
	after := ""
	for {
		recs, err := f.store.List(ctx, store.KindFeedback, store.ListOptions{After: after, Limit: 256})
		if err != nil {
			return fmt.Errorf("hub: read feedback: %w", err)
		}
		for _, rec := range recs {
			if strings.HasPrefix(rec.Index, batchIndexPrefix) {
				var b feedbackBatch
				if json.Unmarshal(rec.Data, &b) == nil && now.After(b.LockedUntil.Add(FeedbackLockTimeout)) {
					_ = f.store.Delete(ctx, store.KindFeedback, rec.Key, rec.ETag)
				}
				continue
			}
			var d feedbackDoc
			if json.Unmarshal(rec.Data, &d) == nil && !now.Before(d.Expiry) {
				f.drop(ctx, rec, d, "expired")
			}
		}
		if len(recs) < 256 {
			return nil
		}
		after = recs[len(recs)-1].Key
	}
}
