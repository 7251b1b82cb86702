package eventhubs

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// StartKind is what a receiver's start position is expressed in.
type StartKind int

const (
	// StartEarliest reads from the first event retained.
	StartEarliest StartKind = iota
	// StartLatest reads only events enqueued after the receiver attached.
	StartLatest
	// StartSequence reads from a sequence number (an offset is the same
	// number in berth, written as a string).
	StartSequence
	// StartTime reads from an enqueued time.
	StartTime
)

// Start is a receiver's start position, from its selector filter.
type Start struct {
	Kind StartKind
	// Seq is the first sequence number to deliver (StartSequence): the
	// filter's value, plus one when exclusive.
	Seq int64
	// Time is the first enqueued time to deliver (StartTime): the
	// filter's value, plus one millisecond when exclusive (enqueued times
	// have millisecond precision on the wire).
	Time time.Time
}

// Filter annotation names of the selector filter grammar.
const (
	annOffset   = "amqp.annotation.x-opt-offset"
	annSequence = "amqp.annotation.x-opt-sequence-number"
	annEnqueued = "amqp.annotation.x-opt-enqueued-time"
)

// maxFilterLen bounds a selector expression (the SDKs send under 100 bytes).
const maxFilterLen = 1024

// ErrFilter is wrapped by every ParseSelector error.
var ErrFilter = errors.New("eventhubs: invalid selector filter")

// ParseSelector parses the selector filter the Event Hubs SDKs put on a
// partition receiver (docs/spec/amqp-protocol.md, "Partition receivers"):
// one comparison `{annotation} (>|>=) '{value}'` on the offset, the
// sequence number or the enqueued time (ms since the epoch). Offset '-1'
// is the start of retention, '@latest' the end. An empty expression means
// the start.
func ParseSelector(expr string) (Start, error) {
	if len(expr) > maxFilterLen {
		return Start{}, fmt.Errorf("%w: longer than %d bytes", ErrFilter, maxFilterLen)
	}
	s := strings.TrimSpace(expr)
	if s == "" {
		return Start{Kind: StartEarliest}, nil
	}
	name, rest, ok := strings.Cut(s, " ")
	if !ok {
		return Start{}, fmt.Errorf("%w: %q is not `annotation op 'value'`", ErrFilter, expr)
	}
	rest = strings.TrimSpace(rest)
	var inclusive bool
	switch {
	case strings.HasPrefix(rest, ">="):
		inclusive, rest = true, rest[2:]
	case strings.HasPrefix(rest, ">"):
		rest = rest[1:]
	default:
		return Start{}, fmt.Errorf("%w: the operator must be > or >=", ErrFilter)
	}
	rest = strings.TrimSpace(rest)
	if len(rest) < 2 || rest[0] != '\'' || rest[len(rest)-1] != '\'' {
		return Start{}, fmt.Errorf("%w: the value must be one quoted string", ErrFilter)
	}
	val := rest[1 : len(rest)-1]
	if strings.ContainsRune(val, '\'') {
		return Start{}, fmt.Errorf("%w: the value must be one quoted string", ErrFilter)
	}
	switch strings.ToLower(name) {
	case annOffset:
		if val == "@latest" {
			return Start{Kind: StartLatest}, nil
		}
		return seqStart(val, inclusive)
	case annSequence:
		return seqStart(val, inclusive)
	case annEnqueued:
		ms, err := strconv.ParseInt(val, 10, 64)
		if err != nil || ms < 0 || ms > 253402300799999 { // year 9999
			return Start{}, fmt.Errorf("%w: enqueued time %q is not milliseconds since 1970", ErrFilter, val)
		}
		t := time.UnixMilli(ms).UTC()
		if !inclusive {
			t = t.Add(time.Millisecond)
		}
		return Start{Kind: StartTime, Time: t}, nil
	}
	return Start{}, fmt.Errorf("%w: unknown annotation %q", ErrFilter, name)
}

func seqStart(val string, inclusive bool) (Start, error) {
	n, err := strconv.ParseInt(val, 10, 64)
	if err != nil || n < -1 {
		return Start{}, fmt.Errorf("%w: %q is not a sequence number or offset", ErrFilter, val)
	}
	if n == -1 {
		// -1 is "before the first event", whatever the operator.
		return Start{Kind: StartEarliest}, nil
	}
	if !inclusive {
		if n == 1<<63-1 {
			return Start{Kind: StartLatest}, nil
		}
		n++
	}
	if n <= 0 {
		return Start{Kind: StartEarliest}, nil
	}
	return Start{Kind: StartSequence, Seq: n}, nil
}
