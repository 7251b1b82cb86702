package hub

import (
	"context"
	"fmt"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/throttle"
)

// BatchSink is a TelemetrySink that can store several messages as one:
// AppendBatch stores all of them or none, and returns only once they are
// durable. Telemetry uses it for batches when the sink offers it.
type BatchSink interface {
	TelemetrySink
	AppendBatch(ctx context.Context, ms []*Message) error
}

// AsyncSink is a TelemetrySink that can take a message without holding
// its caller until the message is durable: AppendAsync returns once the
// message is queued (or failed), and done runs exactly once, when the
// message is durable (nil) or will not be. Messages given by one caller are
// stored in the order given. done runs on the sink's own goroutine: it must
// be quick and must not block (hand the outcome on, don't write to a
// network connection there). A front end uses it to keep several messages
// of one connection in flight while it goes on reading.
type AsyncSink interface {
	TelemetrySink
	AppendAsync(ctx context.Context, m *Message, done func(error))
}

// Sender is who sends device-to-cloud messages, as the stamps name it.
// Front ends keep one per session rather than the device document (which
// holds the keys), so an idle connection costs little.
type Sender struct {
	Hub          string // the hub's name as berth knows it
	DeviceID     string
	ModuleID     string // "" for a device; stamped as iothub-connection-module-id
	GenerationID string
	AuthMethod   string // iothub-connection-auth-method
	// ModelID is the device's model (MQTT username model-id), stamped as
	// dt-dataschema; "" when it gave none.
	ModelID string
}

// SenderOf is the sender an authenticated identity is on hubName.
func SenderOf(hubName string, id *Identity) Sender {
	return Sender{Hub: hubName, DeviceID: id.Device.DeviceID, ModuleID: id.Device.moduleID, GenerationID: id.Device.GenerationID, AuthMethod: id.AuthMethod}
}

// Telemetry accepts device-to-cloud messages: it holds them to IoT Hub's
// size limit, stamps them, makes them durable in the sink and marks the
// device active. Every front end hands it what the device sent and
// acknowledges (MQTT PUBACK, HTTP 204, AMQP disposition) only once it
// returned nil.
type Telemetry struct {
	sink     TelemetrySink
	registry *Registry
	now      func() time.Time
	// partitions is the partition count of a hub (Directory.Partitions);
	// nil means DefaultPartitionCount for every hub.
	partitions func(hub string) int
}

// SetPartitions tells Telemetry each hub's partition count; call it before
// the first Accept.
func (t *Telemetry) SetPartitions(fn func(hub string) int) { t.partitions = fn }

// NewTelemetry returns the service that appends to sink. sink nil means
// telemetry is not enabled: every Accept fails with 503
// ServiceUnavailable. now defaults to time.Now and must be the registry's
// clock.
func NewTelemetry(sink TelemetrySink, reg *Registry, now func() time.Time) *Telemetry {
	if now == nil {
		now = time.Now
	}
	return &Telemetry{sink: sink, registry: reg, now: now}
}

// Enabled reports whether there is a sink.
func (t *Telemetry) Enabled() bool { return t != nil && t.sink != nil }

// Accept takes one message (see AcceptBatch).
func (t *Telemetry) Accept(ctx context.Context, from Sender, m *Message) error {
	return t.AcceptBatch(ctx, from, []*Message{m})
}

// AcceptBatch takes messages the device sent together, all or nothing as
// far as the device can tell: the limit counts the whole batch (body,
// system property values, application property names and values, as the
// device sent them; the hub's own stamps are not the device's to budget
// for), nothing is appended when it is over (413 MessageTooLarge), every
// message gets one enqueued time, and the batch is acknowledged only once
// all of it is durable. With a BatchSink the messages are stored atomically;
// otherwise one by one in order, so a failure part way leaves the earlier
// ones stored and the device's retry duplicates them, which at-least-once
// consumers absorb.
func (t *Telemetry) AcceptBatch(ctx context.Context, from Sender, ms []*Message) error {
	if err := t.prepare(ctx, from, ms); err != nil {
		return err
	}
	if bs, ok := t.sink.(BatchSink); ok && len(ms) > 1 {
		if err := bs.AppendBatch(ctx, ms); err != nil {
			return fmt.Errorf("hub: append %d messages from %s: %w", len(ms), from.DeviceID, err)
		}
	} else {
		for i, m := range ms {
			if err := t.sink.Append(ctx, m); err != nil {
				if len(ms) == 1 {
					return fmt.Errorf("hub: append telemetry from %s: %w", from.DeviceID, err)
				}
				return fmt.Errorf("hub: append message %d of %d from %s: %w", i+1, len(ms), from.DeviceID, err)
			}
		}
	}
	t.active(from)
	return nil
}

// prepare applies the hub's rules to messages the device sent together:
// telemetry enabled, injected faults, the size limit, the stamps.
func (t *Telemetry) prepare(ctx context.Context, from Sender, ms []*Message) error {
	if !t.Enabled() {
		return azerr.Newf(azerr.HubServiceUnavailable, "Telemetry is not enabled on this hub.")
	}
	if len(ms) == 0 {
		return azerr.Newf(azerr.HubArgumentInvalid, "The batch contains no messages.")
	}
	if err := t.registry.fault(ctx, FaultTelemetry, from.Hub, from.DeviceID); err != nil {
		return err
	}
	// One send operation, whatever the batch holds (IoT Hub counts send
	// operations, not messages or 4 KB chunks).
	if err := t.registry.throttled(from.Hub, throttle.HubD2C, 1); err != nil {
		return err
	}
	total := 0
	for _, m := range ms {
		total += m.Size()
	}
	if total > MaxMessageSize {
		return azerr.Newf(azerr.HubMessageTooLarge, "The message size %d bytes is over the %d bytes limit.", total, MaxMessageSize)
	}
	now := t.now()
	n := DefaultPartitionCount
	if t.partitions != nil {
		n = t.partitions(from.Hub)
	}
	part := PartitionOf(from.DeviceID, n)
	for _, m := range ms {
		stampSender(m, from, now)
		m.Partition = part
	}
	return nil
}

func (t *Telemetry) active(from Sender) {
	if t.registry != nil {
		t.registry.Active(from.Hub, TwinID(from.DeviceID, from.ModuleID))
	}
}

// AcceptAsync is Accept for a caller that keeps several messages in
// flight: the checks run at once (an error from them is returned and done
// is not called), then the message goes to the sink and done runs once,
// when it is durable (nil) or is not (see AsyncSink for where done runs).
// The messages of one caller are stored in the order it gave them. With a
// sink that cannot append asynchronously, the append runs before
// AcceptAsync returns (done on the caller's goroutine), which keeps that
// order.
func (t *Telemetry) AcceptAsync(ctx context.Context, from Sender, m *Message, done func(error)) error {
	ms := [1]*Message{m}
	if err := t.prepare(ctx, from, ms[:]); err != nil {
		return err
	}
	finish := func(err error) {
		if err != nil {
			done(fmt.Errorf("hub: append telemetry from %s: %w", from.DeviceID, err))
			return
		}
		t.active(from)
		done(nil)
	}
	if as, ok := t.sink.(AsyncSink); ok {
		as.AppendAsync(ctx, m, finish)
		return nil
	}
	finish(t.sink.Append(ctx, m))
	return nil
}
