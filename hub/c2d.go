package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"github.com/berth-iot/berth/throttle"
)

// Cloud-to-device queue limits and defaults
// (docs/spec/iothub-protocol.md#cloud-to-device-queue).
const (
	MaxC2DQueueDepth   = 50
	MaxC2DMessageSize  = 64 * 1024
	DefaultC2DTTL      = time.Hour
	MaxC2DTTL          = 48 * time.Hour
	DefaultLockTimeout = time.Minute
	MaxDeliveryCount   = 10
)

// Feedback requests (iothub-ack).
const (
	AckNone     = "none"
	AckPositive = "positive"
	AckNegative = "negative"
	AckFull     = "full"
)

// CloudMessage is a cloud-to-device message in a device's queue.
type CloudMessage struct {
	MessageID       string     `json:"messageId,omitempty"`
	CorrelationID   string     `json:"correlationId,omitempty"`
	UserID          string     `json:"userId,omitempty"`
	To              string     `json:"to"`
	Ack             string     `json:"ack,omitempty"`
	ContentType     string     `json:"contentType,omitempty"`
	ContentEncoding string     `json:"contentEncoding,omitempty"`
	Expiry          time.Time  `json:"expiry"`
	App             []Property `json:"app,omitempty"`
	Body            []byte     `json:"body"`
	Enqueued        time.Time  `json:"enqueued"`
	SequenceNumber  int64      `json:"sequenceNumber"`
	DeliveryCount   int        `json:"deliveryCount"`
	// GenerationID is the device's generation when the message was sent:
	// feedback records name it (deviceGenerationId).
	GenerationID string `json:"generationId,omitempty"`
	// LockToken is set while the message is delivered and not yet
	// completed, rejected or abandoned; it changes on every delivery.
	LockToken   string    `json:"lockToken,omitempty"`
	LockedUntil time.Time `json:"lockedUntil"`

	key  string
	etag string
}

// Size is what IoT Hub counts against the 64 KB limit.
func (m *CloudMessage) Size() int {
	n := len(m.Body) + len(m.MessageID) + len(m.CorrelationID) + len(m.UserID) + len(m.ContentType) + len(m.ContentEncoding)
	for _, p := range m.App {
		n += len(p.Name) + len(p.Value)
	}
	return n
}

// DevicePath is the "to" IoT Hub sets on a device's messages.
func DevicePath(deviceID string) string { return "/devices/" + deviceID + "/messages/deviceBound" }

// CloudToDevice is the per-device durable cloud-to-device queue.
//
// A message is enqueued, delivered under a lock (MQTT: until the device's
// PUBACK or until it disconnects; HTTPS: for the lock timeout), then
// completed (deleted), rejected (dead-lettered) or abandoned (visible
// again). Expired messages and messages delivered MaxDeliveryCount times
// are dead-lettered: berth logs and deletes them. Each outcome the
// message's iothub-ack asks for becomes a record in the hub's Feedback
// queue, written before the message is removed (docs/hub-wire.md#c2d-feedback).
type CloudToDevice struct {
	store    store.Store
	reg      *Registry
	links    *Links
	now      func() time.Time
	log      *slog.Logger
	obs      Observer
	feedback *Feedback

	seed  maphash.Seed
	locks [64]sync.Mutex
	// held are the locks of deliveries that end with their connection
	// (MQTT), by message key: kept in memory only, so that delivering a
	// message costs no store write. After a crash the message is simply
	// deliverable again (at-least-once). Guarded by hmu; an entry changes
	// only under its device's lock too.
	hmu  sync.Mutex
	held map[string]heldLock
	// parked are completions waiting for the device's next store
	// transaction (CompleteLater), by device key. Guarded by hmu.
	parked map[string][]string
	// order makes message keys strictly increasing on this node even when
	// the clock stands still or steps back.
	omu  sync.Mutex
	last int64
}

// NewCloudToDevice returns the queue service; links may be nil.
func NewCloudToDevice(st store.Store, reg *Registry, links *Links, log *slog.Logger) *CloudToDevice {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CloudToDevice{store: st, reg: reg, links: links, now: reg.now, log: log, seed: maphash.MakeSeed(),
		feedback: newFeedback(st, reg.now, log)}
}

// Feedback returns the feedback queue the outcomes of this queue's
// messages go to.
func (q *CloudToDevice) Feedback() *Feedback { return q.feedback }

func (q *CloudToDevice) lock(dk string) func() {
	m := &q.locks[maphash.String(q.seed, dk)%uint64(len(q.locks))]
	m.Lock()
	return m.Unlock
}

// nextOrder returns a strictly increasing number in microseconds since the
// Unix epoch: the key order and the sequence number of a message. IoT Hub
// documents only that sequence numbers grow per queue; microseconds keep
// them below 2^53, so JavaScript clients read them exactly.
func (q *CloudToDevice) nextOrder(now time.Time) int64 {
	q.omu.Lock()
	defer q.omu.Unlock()
	o := now.UnixMicro()
	if o <= q.last {
		o = q.last + 1
	}
	q.last = o
	return o
}

// validPropertyName is IoT Hub's rule for C2D property names: ASCII
// alphanumerics and ! # $ % & ' * + - . ^ _ ` | ~
// (docs/spec/iothub-protocol.md#cloud-to-device-queue).
func validPropertyName(s string) bool { return alnumOr(s, "!#$%&'*+-.^_`|~") }

// validPropertyValue allows printable ASCII: values travel in MQTT topics
// (percent-encoded) and HTTP headers.
func validPropertyValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Send enqueues m for a device and wakes its live connection. It returns
// the message as enqueued (message ID, sequence number, expiry set).
func (q *CloudToDevice) Send(ctx context.Context, hubName, deviceID string, m *CloudMessage) (_ *CloudMessage, err error) {
	defer func() {
		if err == nil {
			observeC2D(q.obs, "sent", 1)
		}
	}()
	if err := q.reg.throttled(hubName, throttle.HubC2DSend, 1); err != nil {
		return nil, err
	}
	generation, err := q.reg.sendGeneration(ctx, hubName, deviceID)
	if err != nil {
		return nil, err
	}
	now := q.now().UTC()
	switch strings.ToLower(m.Ack) {
	case "":
		m.Ack = ""
	case AckNone, AckPositive, AckNegative, AckFull:
		m.Ack = strings.ToLower(m.Ack)
	default:
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "iothub-ack '%s' is not one of none, positive, negative, full.", m.Ack)
	}
	for _, p := range m.App {
		if !validPropertyName(p.Name) || !validPropertyValue(p.Value) {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "Application property %q is not valid: names are ASCII letters, digits and !#$%%&'*+-.^_`|~, values printable ASCII.", clipKey(p.Name))
		}
	}
	// System property values travel in the same places as application
	// property values (HTTP headers, MQTT topics), so they obey the same
	// rule: a control character would break the device's parser.
	for _, v := range []string{m.MessageID, m.CorrelationID, m.UserID, m.ContentType, m.ContentEncoding} {
		if !validPropertyValue(v) {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "System property value %q is not valid: values are printable ASCII.", clipKey(v))
		}
	}
	if n := m.Size(); n > MaxC2DMessageSize {
		return nil, azerr.Newf(azerr.HubMessageTooLarge, "Message of %d bytes is over the %d bytes limit.", n, MaxC2DMessageSize)
	}
	switch {
	case m.Expiry.IsZero():
		m.Expiry = now.Add(DefaultC2DTTL)
	case m.Expiry.After(now.Add(MaxC2DTTL)):
		m.Expiry = now.Add(MaxC2DTTL)
	}
	if m.MessageID == "" {
		m.MessageID = newUUID()
	}
	m.To = DevicePath(deviceID)
	m.Enqueued = now
	m.DeliveryCount, m.LockToken, m.LockedUntil = 0, "", time.Time{}
	m.GenerationID = generation

	dk := deviceKey(hubName, deviceID)
	unlock := q.lock(dk)
	defer unlock()
	if parked := q.takeParked(dk); len(parked) > 0 {
		return q.sendSettling(ctx, hubName, deviceID, m, now, parked)
	}
	n, err := q.store.Count(ctx, store.KindC2D, dk)
	if err != nil {
		return nil, fmt.Errorf("hub: count C2D queue of %s: %w", deviceID, err)
	}
	if n >= MaxC2DQueueDepth {
		return nil, azerr.Newf(azerr.HubQueueDepthExceeded, "Device %s has %d messages queued, the maximum.", deviceID, n)
	}
	order := q.nextOrder(now)
	m.SequenceNumber = order
	m.key = c2dKey(dk, order)
	rec, err := encodeC2D(dk, m)
	if err != nil {
		return nil, err
	}
	rec, err = q.store.Put(ctx, rec, store.Cond{IfNotExists: true})
	if err != nil {
		return nil, fmt.Errorf("hub: enqueue C2D message for %s: %w", deviceID, err)
	}
	m.etag = rec.ETag
	if q.links != nil {
		q.links.wakeCloudToDevice(hubName, deviceID)
	}
	return m, nil
}

// sendSettling is the end of Send when completions are parked for the
// device: they commit in the same transaction as the new message (one
// fsync for both), and the queue depth is counted without them. The
// caller holds the device's lock. The message is written unconditionally
// (Apply has no IfNotExists): its key, from nextOrder, is new on this
// node, and is checked against the queue just read.
func (q *CloudToDevice) sendSettling(ctx context.Context, hubName, deviceID string, m *CloudMessage, now time.Time, parked []string) (*CloudMessage, error) {
	dk := deviceKey(hubName, deviceID)
	recs, err := q.store.List(ctx, store.KindC2D, store.ListOptions{Index: dk})
	if err != nil {
		q.CompleteLater(hubName, deviceID, parked) // not lost: the holder's CompleteMany takes them
		return nil, fmt.Errorf("hub: read C2D queue of %s: %w", deviceID, err)
	}
	b, err := q.settleBatch(hubName, deviceID, recs, parked, "complete")
	if err != nil {
		q.CompleteLater(hubName, deviceID, parked)
		return nil, err
	}
	if n := len(recs) - len(b.settled); n >= MaxC2DQueueDepth {
		if _, err := q.store.Apply(ctx, b.writes); err != nil {
			q.CompleteLater(hubName, deviceID, parked)
		} else {
			q.settledBatch(hubName, deviceID, b, "complete")
		}
		return nil, azerr.Newf(azerr.HubQueueDepthExceeded, "Device %s has %d messages queued, the maximum.", deviceID, n)
	}
	order := q.nextOrder(now)
	m.SequenceNumber = order
	m.key = c2dKey(dk, order)
	for _, r := range recs {
		if r.Key == m.key {
			q.CompleteLater(hubName, deviceID, parked)
			return nil, fmt.Errorf("hub: enqueue C2D message for %s: %w", deviceID, store.ErrExists)
		}
	}
	rec, err := encodeC2D(dk, m)
	if err != nil {
		q.CompleteLater(hubName, deviceID, parked)
		return nil, err
	}
	out, err := q.store.Apply(ctx, append([]store.Record{rec}, b.writes...))
	if err != nil {
		q.CompleteLater(hubName, deviceID, parked)
		return nil, fmt.Errorf("hub: enqueue C2D message for %s: %w", deviceID, err)
	}
	q.settledBatch(hubName, deviceID, b, "complete")
	m.etag = out[0].ETag
	if q.links != nil {
		q.links.wakeCloudToDevice(hubName, deviceID)
	}
	return m, nil
}

func c2dKey(dk string, order int64) string { return fmt.Sprintf("%s/%016x", dk, order) }

func encodeC2D(dk string, m *CloudMessage) (store.Record, error) {
	data, err := json.Marshal(m)
	if err != nil {
		return store.Record{}, fmt.Errorf("hub: encode C2D message: %w", err)
	}
	return store.Record{Kind: store.KindC2D, Key: m.key, Index: dk, Data: data}, nil
}

func decodeC2D(rec store.Record) (*CloudMessage, error) {
	var m CloudMessage
	if err := json.Unmarshal(rec.Data, &m); err != nil {
		return nil, fmt.Errorf("hub: decode C2D message %s: %w", rec.Key, err)
	}
	m.key, m.etag = rec.Key, rec.ETag
	return &m, nil
}

// heldLock is the in-memory lock of a delivery that ends with its
// connection: its token, when it times out, and the delivery count the
// delivery gave the message (stored only if the message is abandoned).
type heldLock struct {
	token  string
	until  time.Time
	count  int
	expiry time.Time // the message's, so that a receive skips it undecoded
}

// heldFor returns the in-memory lock of a message, if any.
func (q *CloudToDevice) heldFor(key string) (heldLock, bool) {
	q.hmu.Lock()
	defer q.hmu.Unlock()
	h, ok := q.held[key]
	return h, ok
}

func (q *CloudToDevice) setHeld(key string, h heldLock) {
	q.hmu.Lock()
	defer q.hmu.Unlock()
	if q.held == nil {
		q.held = make(map[string]heldLock)
	}
	q.held[key] = h
}

func (q *CloudToDevice) dropHeld(key string) {
	q.hmu.Lock()
	defer q.hmu.Unlock()
	delete(q.held, key)
}

// withHeld applies a message's in-memory lock to it, as if stored: the
// delivery count and lock of the last delivery.
func (q *CloudToDevice) withHeld(m *CloudMessage) {
	if h, ok := q.heldFor(m.key); ok {
		m.LockToken, m.LockedUntil = h.token, h.until
		m.DeliveryCount = max(m.DeliveryCount, h.count)
	}
}

// Count returns the number of messages in a device's queue.
func (q *CloudToDevice) Count(ctx context.Context, hubName, deviceID string) (int, error) {
	n, err := q.store.Count(ctx, store.KindC2D, deviceKey(hubName, deviceID))
	if err != nil {
		return 0, fmt.Errorf("hub: count C2D queue of %s: %w", deviceID, err)
	}
	return n, nil
}

// Receive locks and returns up to max deliverable messages of a device's
// queue, oldest first, each for lockFor: its delivery count goes up by one
// and it gets a new lock token. Expired messages and those already
// delivered MaxDeliveryCount times are dead-lettered on the way.
// The locks are durable before Receive returns.
func (q *CloudToDevice) Receive(ctx context.Context, hubName, deviceID string, max int, lockFor time.Duration) ([]*CloudMessage, error) {
	return q.receive(ctx, hubName, deviceID, max, lockFor, false)
}

// ReceiveHeld is Receive for a delivery that ends with its connection
// (MQTT: until the device's PUBACK or until it disconnects; AMQP: until
// the delivery's disposition or until its link ends): the locks are
// kept in this process's memory only, so it writes nothing. The holder
// must settle every message it got (Complete, CompleteMany, Reject,
// Abandon, AbandonMany) when the connection ends; a crash instead loses
// the locks, and the messages are delivered again, with the delivery
// count they had before (docs/hub-wire.md#c2d-locks). In a cluster the
// lock is not seen by other nodes: a receive there (the same device over
// HTTPS at the same time) may deliver the message a second time.
func (q *CloudToDevice) ReceiveHeld(ctx context.Context, hubName, deviceID string, max int, lockFor time.Duration) ([]*CloudMessage, error) {
	return q.receive(ctx, hubName, deviceID, max, lockFor, true)
}

func (q *CloudToDevice) receive(ctx context.Context, hubName, deviceID string, max int, lockFor time.Duration, inMemory bool) ([]*CloudMessage, error) {
	dk := deviceKey(hubName, deviceID)
	unlock := q.lock(dk)
	defer unlock()
	recs, err := q.store.List(ctx, store.KindC2D, store.ListOptions{Index: dk})
	if err != nil {
		return nil, fmt.Errorf("hub: read C2D queue of %s: %w", deviceID, err)
	}
	now := q.now().UTC()
	var out []*CloudMessage
	var writes []store.Record
	for _, rec := range recs {
		if len(out) >= max {
			break
		}
		if h, ok := q.heldFor(rec.Key); ok && now.Before(h.until) && now.Before(h.expiry) {
			continue // in flight on a connection: no need to decode it
		}
		m, err := decodeC2D(rec)
		if err != nil {
			return nil, err
		}
		q.withHeld(m)
		switch {
		case !now.Before(m.Expiry):
			q.deadLetter(ctx, hubName, deviceID, m, FeedbackExpired)
			continue
		case m.LockToken != "" && now.Before(m.LockedUntil):
			continue // delivered elsewhere, lock held
		case m.DeliveryCount >= MaxDeliveryCount:
			q.deadLetter(ctx, hubName, deviceID, m, FeedbackDeliveryCountExceeded)
			continue
		}
		m.DeliveryCount++
		m.LockToken = lockToken(m.key)
		m.LockedUntil = now.Add(lockFor)
		if inMemory {
			q.setHeld(m.key, heldLock{token: m.LockToken, until: m.LockedUntil, count: m.DeliveryCount, expiry: m.Expiry})
			out = append(out, m)
			continue
		}
		q.dropHeld(m.key) // a stored lock replaces a timed-out one in memory
		w, err := encodeC2D(dk, m)
		if err != nil {
			return nil, err
		}
		writes = append(writes, w)
		out = append(out, m)
	}
	if len(writes) == 0 {
		return out, nil
	}
	if _, err := q.store.Apply(ctx, writes); err != nil {
		return nil, fmt.Errorf("hub: lock C2D messages of %s: %w", deviceID, err)
	}
	return out, nil
}

// lockToken is a GUID-shaped token: the message's order (so that it finds
// the message without a scan) and 64 random bits (so that it changes on
// every delivery). Hex only: it travels in URL paths and ETag headers.
func lockToken(key string) string {
	order := key[strings.LastIndexByte(key, '/')+1:]
	var b [8]byte
	_, _ = rand.Read(b[:])
	s := order + hex.EncodeToString(b[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

// byLockToken returns the locked message a token names, or
// DeviceMessageLockLost (412) when no message holds that token any more.
func (q *CloudToDevice) byLockToken(ctx context.Context, dk, token string) (*CloudMessage, error) {
	lost := azerr.Newf(azerr.HubMessageLockLost, "The message lock %s is not valid: the message was completed, rejected, abandoned, expired or delivered again.", clipKey(token))
	raw := strings.ReplaceAll(token, "-", "")
	if len(raw) != 32 {
		return nil, lost
	}
	if _, err := hex.DecodeString(raw); err != nil {
		return nil, lost
	}
	rec, err := q.store.Get(ctx, store.KindC2D, dk+"/"+raw[:16])
	if errors.Is(err, store.ErrNotFound) {
		q.dropHeld(dk + "/" + raw[:16]) // gone (purged, expired): nothing to hold
		return nil, lost
	}
	if err != nil {
		return nil, fmt.Errorf("hub: read C2D message: %w", err)
	}
	m, err := decodeC2D(rec)
	if err != nil {
		return nil, err
	}
	q.withHeld(m)
	if m.LockToken != token {
		return nil, lost
	}
	return m, nil
}

// Complete removes a delivered message (HTTPS DELETE, MQTT PUBACK). A lock
// that timed out still completes as long as nobody received the message
// again.
func (q *CloudToDevice) Complete(ctx context.Context, hubName, deviceID, token string) error {
	return q.settle(ctx, hubName, deviceID, token, "complete")
}

// Reject dead-letters a delivered message (HTTPS DELETE ?reject).
func (q *CloudToDevice) Reject(ctx context.Context, hubName, deviceID, token string) error {
	return q.settle(ctx, hubName, deviceID, token, "reject")
}

// Abandon makes a delivered message visible again; its delivery count
// keeps the delivery (HTTPS POST …/abandon, an MQTT connection that ends
// before PUBACK).
func (q *CloudToDevice) Abandon(ctx context.Context, hubName, deviceID, token string) error {
	return q.settle(ctx, hubName, deviceID, token, "abandon")
}

func (q *CloudToDevice) settle(ctx context.Context, hubName, deviceID, token, how string) (err error) {
	defer func() {
		if err == nil {
			observeC2D(q.obs, c2dOutcome(how), 1)
		}
	}()
	dk := deviceKey(hubName, deviceID)
	unlock := q.lock(dk)
	defer unlock()
	m, err := q.byLockToken(ctx, dk, token)
	if err != nil {
		return err
	}
	switch how {
	case "abandon":
		// The delivery count stays: it is stored here for a delivery
		// whose lock was held in memory.
		m.LockToken, m.LockedUntil = "", time.Time{}
		rec, err := encodeC2D(dk, m)
		if err != nil {
			return err
		}
		_, err = q.store.Put(ctx, rec, store.Cond{IfMatch: m.etag})
		if err == nil {
			q.dropHeld(m.key)
		}
		if errors.Is(err, store.ErrPreconditionFailed) || errors.Is(err, store.ErrNotFound) {
			return azerr.Newf(azerr.HubMessageLockLost, "The message lock %s is not valid any more.", clipKey(token))
		}
		if err != nil {
			return fmt.Errorf("hub: abandon C2D message: %w", err)
		}
		if q.links != nil {
			q.links.wakeCloudToDevice(hubName, deviceID)
		}
		return nil
	case "reject":
		q.log.Info("hub: C2D message rejected by the device (dead-lettered)", "deviceId", deviceID, "messageId", m.MessageID)
	}
	status := FeedbackSuccess
	if how == "reject" {
		status = FeedbackRejected
	}
	err = q.remove(ctx, hubName, deviceID, m, status)
	if errors.Is(err, store.ErrPreconditionFailed) || errors.Is(err, store.ErrNotFound) {
		return azerr.Newf(azerr.HubMessageLockLost, "The message lock %s is not valid any more.", clipKey(token))
	}
	if err != nil {
		return fmt.Errorf("hub: %s C2D message: %w", how, err)
	}
	return nil
}

// remove deletes a message that reached an outcome, after writing the
// feedback record its iothub-ack asks for. The store writes no record and
// deletes another in one transaction, so the record goes first: a crash
// between the two leaves the message to be settled again, whose record
// then replaces this one (records are keyed by message). When the delete
// finds the message changed (its lock lost), the record is taken back,
// unless a later writer already replaced it. The caller holds the
// device's lock.
func (q *CloudToDevice) remove(ctx context.Context, hubName, deviceID string, m *CloudMessage, status string) error {
	fb, want, err := q.feedback.record(hubName, deviceID, m, status)
	if err != nil {
		return err
	}
	if want {
		if fb, err = q.store.Put(ctx, fb, store.Cond{}); err != nil {
			return fmt.Errorf("hub: write feedback record: %w", err)
		}
	}
	err = q.store.Delete(ctx, store.KindC2D, m.key, m.etag)
	if err != nil {
		if want {
			if derr := q.store.Delete(ctx, store.KindFeedback, fb.Key, fb.ETag); derr != nil && !errors.Is(derr, store.ErrNotFound) && !errors.Is(derr, store.ErrPreconditionFailed) {
				q.log.Warn("hub: could not take back a feedback record", "deviceId", deviceID, "messageId", m.MessageID, "error", derr.Error())
			}
		}
		return err
	}
	q.dropHeld(m.key)
	if want {
		q.feedback.wake(feedbackIndex(hubName))
	}
	return nil
}

// CompleteMany completes delivered messages, by their lock tokens, in one
// store transaction (one fsync on SQLite) with the feedback records they
// ask for: what an MQTT connection does with the PUBACKs that came in
// while its last store call ran. A token whose lock is lost is skipped,
// and counted in the lost result; the others complete.
func (q *CloudToDevice) CompleteMany(ctx context.Context, hubName, deviceID string, tokens []string) (lost int, err error) {
	return q.settleMany(ctx, hubName, deviceID, tokens, "complete")
}

// AbandonMany makes delivered messages visible again, in one store
// transaction: an MQTT connection that ends with messages in flight.
func (q *CloudToDevice) AbandonMany(ctx context.Context, hubName, deviceID string, tokens []string) (lost int, err error) {
	return q.settleMany(ctx, hubName, deviceID, tokens, "abandon")
}

// settleMany is settle for several messages of one device in one Apply.
// Its writes and deletes are unconditional: the records were read under
// the device's lock just before, which every settle and receive on this
// node takes. (A node of a cluster that changes one of them meanwhile is
// the HTTPS receive of a message already delivered over MQTT here; the
// device acknowledged it, so completing it anyway is right.)
func (q *CloudToDevice) settleMany(ctx context.Context, hubName, deviceID string, tokens []string, how string) (lost int, err error) {
	dk := deviceKey(hubName, deviceID)
	unlock := q.lock(dk)
	defer unlock()
	if how == "complete" {
		// Completions parked for the next Send go now instead.
		tokens = append(q.takeParked(dk), tokens...)
	}
	if len(tokens) == 0 {
		return 0, nil
	}
	recs, err := q.store.List(ctx, store.KindC2D, store.ListOptions{Index: dk})
	if err != nil {
		return 0, fmt.Errorf("hub: read C2D queue of %s: %w", deviceID, err)
	}
	b, err := q.settleBatch(hubName, deviceID, recs, tokens, how)
	if err != nil {
		return 0, err
	}
	if len(b.writes) == 0 {
		return b.lost, nil
	}
	if _, err := q.store.Apply(ctx, b.writes); err != nil {
		return 0, fmt.Errorf("hub: %s %d C2D messages of %s: %w", how, len(b.settled), deviceID, err)
	}
	q.settledBatch(hubName, deviceID, b, how)
	return b.lost, nil
}

// batch is what settling several messages writes, and what it settled.
type batch struct {
	writes   []store.Record
	settled  []string // message keys
	lost     int
	feedback bool
}

// settleBatch builds the writes that settle the messages tokens name,
// from the device's queue as read (recs), under the device's lock.
func (q *CloudToDevice) settleBatch(hubName, deviceID string, recs []store.Record, tokens []string, how string) (batch, error) {
	dk := deviceKey(hubName, deviceID)
	var b batch
	byKey := make(map[string]store.Record, len(recs))
	for _, r := range recs {
		byKey[r.Key] = r
	}
	for _, token := range tokens {
		raw := strings.ReplaceAll(token, "-", "")
		if len(raw) != 32 {
			b.lost++
			continue
		}
		rec, ok := byKey[dk+"/"+raw[:16]]
		if !ok {
			q.dropHeld(dk + "/" + raw[:16]) // gone (purged, expired): nothing to hold
			b.lost++
			continue
		}
		m, err := decodeC2D(rec)
		if err != nil {
			return batch{}, err
		}
		q.withHeld(m)
		if m.LockToken != token {
			b.lost++
			continue
		}
		delete(byKey, m.key) // a token named twice settles once
		b.settled = append(b.settled, m.key)
		if how == "abandon" {
			m.LockToken, m.LockedUntil = "", time.Time{}
			w, err := encodeC2D(dk, m)
			if err != nil {
				return batch{}, err
			}
			b.writes = append(b.writes, w)
			continue
		}
		fb, want, err := q.feedback.record(hubName, deviceID, m, FeedbackSuccess)
		if err != nil {
			return batch{}, err
		}
		if want {
			b.writes = append(b.writes, fb)
			b.feedback = true
		}
		b.writes = append(b.writes, store.Record{Kind: store.KindC2D, Key: m.key, Delete: true})
	}
	return b, nil
}

// settledBatch does what follows a committed batch.
func (q *CloudToDevice) settledBatch(hubName, deviceID string, b batch, how string) {
	for _, k := range b.settled {
		q.dropHeld(k)
	}
	observeC2D(q.obs, c2dOutcome(how), len(b.settled))
	if b.feedback {
		q.feedback.wake(feedbackIndex(hubName))
	}
	if how == "abandon" && len(b.settled) > 0 && q.links != nil {
		q.links.wakeCloudToDevice(hubName, deviceID)
	}
}

// CompleteLater parks completions (of held deliveries) for the device's
// next store transaction: the next Send to the device commits them with
// the new message, in the same fsync, and otherwise CompleteMany (the
// holder's, after a short wait: see frontend/mqtt) does. Parked
// completions are not durable: a crash loses them, and the messages are
// delivered again (at-least-once, docs/hub-wire.md#c2d-locks).
func (q *CloudToDevice) CompleteLater(hubName, deviceID string, tokens []string) {
	if len(tokens) == 0 {
		return
	}
	dk := deviceKey(hubName, deviceID)
	q.hmu.Lock()
	defer q.hmu.Unlock()
	if q.parked == nil {
		q.parked = make(map[string][]string)
	}
	q.parked[dk] = append(q.parked[dk], tokens...)
}

// takeParked returns and forgets a device's parked completions. The
// caller holds the device's lock.
func (q *CloudToDevice) takeParked(dk string) []string {
	q.hmu.Lock()
	defer q.hmu.Unlock()
	t := q.parked[dk]
	delete(q.parked, dk)
	return t
}

func (q *CloudToDevice) deadLetter(ctx context.Context, hubName, deviceID string, m *CloudMessage, why string) {
	if err := q.remove(ctx, hubName, deviceID, m, why); err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrPreconditionFailed) {
		q.log.Warn("hub: could not dead-letter a C2D message", "deviceId", deviceID, "messageId", m.MessageID, "error", err.Error())
		return
	}
	outcome := "deadlettered"
	if why == "Expired" {
		outcome = "expired"
	}
	observeC2D(q.obs, outcome, 1)
	q.log.Info("hub: C2D message dead-lettered", "deviceId", deviceID, "messageId", m.MessageID, "reason", why, "deliveryCount", m.DeliveryCount)
}

// Sweep dead-letters every expired message that no device holds locked,
// with its Expired feedback, and drops expired feedback. Receive finds
// expired messages of a device that asks for messages; Sweep, run
// periodically (server: every minute), finds those of devices that never
// ask. A locked message is left to its holder until the lock ends.
func (q *CloudToDevice) Sweep(ctx context.Context) error {
	now := q.now().UTC()
	after := ""
	for {
		recs, err := q.store.List(ctx, store.KindC2D, store.ListOptions{After: after, Limit: 256})
		if err != nil {
			return fmt.Errorf("hub: read C2D queues: %w", err)
		}
		for _, rec := range recs {
			m, err := decodeC2D(rec)
			if err != nil {
				continue
			}
			q.withHeld(m)
			if now.Before(m.Expiry) || (m.LockToken != "" && now.Before(m.LockedUntil)) {
				continue
			}
			q.sweepOne(ctx, rec)
		}
		if len(recs) < 256 {
			break
		}
		after = recs[len(recs)-1].Key
	}
	return q.feedback.sweep(ctx)
}

// sweepOne dead-letters one expired message under its device's lock,
// reading it again there: it may have been settled meanwhile.
func (q *CloudToDevice) sweepOne(ctx context.Context, rec store.Record) {
	dk := rec.Index
	hubName, deviceID, ok := strings.Cut(dk, "/")
	if !ok {
		return
	}
	unlock := q.lock(dk)
	defer unlock()
	rec, err := q.store.Get(ctx, store.KindC2D, rec.Key)
	if err != nil {
		return
	}
	m, err := decodeC2D(rec)
	if err != nil {
		return
	}
	q.withHeld(m)
	now := q.now().UTC()
	if now.Before(m.Expiry) || (m.LockToken != "" && now.Before(m.LockedUntil)) {
		return
	}
	q.deadLetter(ctx, hubName, deviceID, m, FeedbackExpired)
}

// RunSweeps runs Sweep every interval until ctx ends.
func (q *CloudToDevice) RunSweeps(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := q.Sweep(ctx); err != nil && ctx.Err() == nil {
				q.log.Warn("hub: C2D expiry sweep failed", "error", err.Error())
			}
		}
	}
}

// Purge deletes every message of a device's queue (DELETE
// /devices/{id}/commands) and returns how many there were.
func (q *CloudToDevice) Purge(ctx context.Context, hubName, deviceID string) (int, error) {
	if _, err := q.reg.Get(ctx, hubName, deviceID); err != nil {
		return 0, err
	}
	dk := deviceKey(hubName, deviceID)
	unlock := q.lock(dk)
	defer unlock()
	recs, err := q.store.List(ctx, store.KindC2D, store.ListOptions{Index: dk})
	if err != nil {
		return 0, fmt.Errorf("hub: read C2D queue of %s: %w", deviceID, err)
	}
	n := 0
	for _, rec := range recs {
		m, err := decodeC2D(rec)
		if err != nil {
			return n, err
		}
		err = q.remove(ctx, hubName, deviceID, m, FeedbackPurged)
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrPreconditionFailed) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("hub: purge C2D queue: %w", err)
		}
		n++
	}
	observeC2D(q.obs, "purged", n)
	return n, nil
}

func purgeC2D(ctx context.Context, st store.Store, dk string) (int, error) {
	recs, err := st.List(ctx, store.KindC2D, store.ListOptions{Index: dk})
	if err != nil {
		return 0, fmt.Errorf("hub: read C2D queue: %w", err)
	}
	n := 0
	for _, rec := range recs {
		err := st.Delete(ctx, store.KindC2D, rec.Key, "")
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("hub: purge C2D queue: %w", err)
		}
		n++
	}
	return n, nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	s := hex.EncodeToString(b[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}
