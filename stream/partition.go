package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Partitions of a hub (docs/telemetry-stream.md, "Partitions"): every
// message of a hub's partition p is stored under prefix.{hub}.{p}.*, so a
// partition is a subject filter over the one stream, never a copy. Its
// sequence numbers are the stream's: they grow within a partition (with
// gaps where other partitions' messages fall) and survive restarts.

// Position is where ReadPartition starts.
type Position struct {
	// Seq, when not zero, starts at the first message whose stream
	// sequence is Seq or higher.
	Seq uint64
	// Time, when Seq is zero and Time is not, starts at the first message
	// stored at or after Time.
	Time time.Time
	// Latest, when Seq and Time are zero, starts with the messages stored
	// after ReadPartition returns; otherwise the partition is read from
	// its first message.
	Latest bool
}

// PartitionState is what a partition holds now.
type PartitionState struct {
	// Empty is true when the partition holds no message; the other
	// fields are then zero.
	Empty bool
	// First and Last are the stream sequences of its first and last
	// message.
	First, Last uint64
	// LastStored is when the last message was stored.
	LastStored time.Time
}

// PartitionState looks up the first and last message of a hub's partition.
func (s *Stream) PartitionState(ctx context.Context, hubName string, partition int) (PartitionState, error) {
	filter := PartitionFilter(s.cfg.SubjectPrefix, hubName, partition)
	st, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		return PartitionState{}, fmt.Errorf("stream: partition %d of %s: %w", partition, hubName, err)
	}
	last, err := st.GetLastMsgForSubject(ctx, filter)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return PartitionState{Empty: true}, nil
	}
	if err != nil {
		return PartitionState{}, fmt.Errorf("stream: last message of partition %d of %s: %w", partition, hubName, err)
	}
	first, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(filter))
	if err != nil {
		return PartitionState{}, fmt.Errorf("stream: first message of partition %d of %s: %w", partition, hubName, err)
	}
	return PartitionState{First: first.Sequence, Last: last.Sequence, LastStored: last.Time.UTC()}, nil
}

// ReadPartition delivers a hub partition's messages from pos on, in order,
// until ctx ends or the Stream closes; then the channel is closed. It
// returns at once, reading in the background through NATS server losses
// (reader.go), except that pos.Latest first asks for the partition's last
// message, which waits at most readTry for the stream's leader. Nothing
// is acknowledged or removed: readers are independent, as an Event Hub's
// are. The channel is small and the consumer's pull buffer bounded, so a
// reader that stops taking messages stops the reading.
func (s *Stream) ReadPartition(ctx context.Context, hubName string, partition int, pos Position) (<-chan Event, error) {
	from := readFrom{policy: jetstream.DeliverAllPolicy}
	switch {
	case pos.Seq > 0:
		from = readFrom{policy: jetstream.DeliverByStartSequencePolicy, seq: pos.Seq}
	case !pos.Time.IsZero():
		from = readFrom{policy: jetstream.DeliverByStartTimePolicy, time: pos.Time.UTC()}
	case pos.Latest:
		// "After the partition's last message" is a fixed position
		// once that message is known, so the reader need not create
		// its consumer before returning (see read).
		last, err := s.lastSeq(ctx, hubName, partition)
		if err != nil {
			return nil, err
		}
		from = readFrom{policy: jetstream.DeliverByStartSequencePolicy, seq: last + 1}
	}
	return s.read(ctx, PartitionFilter(s.cfg.SubjectPrefix, hubName, partition), from)
}

// lastSeq is the stream sequence of a partition's last message, 0 when it
// has none (a reader from 1 then gets every message stored later). One
// request, bounded by readTry.
func (s *Stream) lastSeq(ctx context.Context, hubName string, partition int) (uint64, error) {
	st, err := s.PartitionLast(ctx, hubName, partition)
	return st.Last, err
}

// TrimHub removes a hub's messages stored before cutoff (a hub's own
// retention, shorter than the stream's MaxAge). It purges by subject, so
// other hubs' messages stay.
func (s *Stream) TrimHub(ctx context.Context, hubName string, cutoff time.Time) error {
	filter := s.cfg.SubjectPrefix + "." + EncodeToken(hubName) + ".>"
	st, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		return fmt.Errorf("stream: trim %s: %w", hubName, err)
	}
	// The stream's end before the search: if nothing of the hub is at or
	// after cutoff, everything up to here goes, and a message appended
	// meanwhile (after cutoff by definition) stays.
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream: trim %s: %w", hubName, err)
	}
	// The first message to keep: the first stored at or after cutoff.
	t := cutoff.UTC()
	cons, err := s.js.OrderedConsumer(ctx, s.cfg.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &t,
	})
	if err != nil {
		return fmt.Errorf("stream: trim %s: %w", hubName, err)
	}
	keep := uint64(0)
	msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
	switch {
	case err == nil:
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("stream: trim %s: %w", hubName, err)
		}
		keep = md.Sequence.Stream
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrNoMessages):
		keep = info.State.LastSeq + 1
	default:
		return fmt.Errorf("stream: trim %s: %w", hubName, err)
	}
	if keep <= 1 {
		return nil
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(filter), jetstream.WithPurgeSequence(keep)); err != nil {
		return fmt.Errorf("stream: trim %s: %w", hubName, err)
	}
	return nil
}

// PartitionLast is PartitionState without First (one request fewer, and
// First stays zero): the partition's last message, for a reader that
// reports how far behind it is. It waits at most readTry.
func (s *Stream) PartitionLast(ctx context.Context, hubName string, partition int) (PartitionState, error) {
	ctx, cancel := context.WithTimeout(ctx, readTry)
	defer cancel()
	filter := PartitionFilter(s.cfg.SubjectPrefix, hubName, partition)
	st, err := s.js.Stream(ctx, s.cfg.StreamName)
	if err != nil {
		return PartitionState{}, fmt.Errorf("stream: partition %d of %s: %w", partition, hubName, err)
	}
	last, err := st.GetLastMsgForSubject(ctx, filter)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return PartitionState{Empty: true}, nil
	case err != nil:
		return PartitionState{}, fmt.Errorf("stream: last message of partition %d of %s: %w", partition, hubName, err)
	}
	return PartitionState{Last: last.Sequence, LastStored: last.Time.UTC()}, nil
}
