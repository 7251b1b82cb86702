package eventhubs

import (
	"errors"
	"testing"
	"time"
)

func TestParseSelector(t *testing.T) {
	ms := time.UnixMilli(1700000000123).UTC()
	for _, tc := range []struct {
		in   string
		want Start
	}{
		{"", Start{Kind: StartEarliest}},
		{"amqp.annotation.x-opt-offset > '-1'", Start{Kind: StartEarliest}},
		{"amqp.annotation.x-opt-offset > '@latest'", Start{Kind: StartLatest}},
		{"amqp.annotation.x-opt-offset > '41'", Start{Kind: StartSequence, Seq: 42}},
		{"amqp.annotation.x-opt-offset >= '41'", Start{Kind: StartSequence, Seq: 41}},
		{"amqp.annotation.x-opt-sequence-number >= '0'", Start{Kind: StartEarliest}},
		{"amqp.annotation.x-opt-sequence-number > '0'", Start{Kind: StartSequence, Seq: 1}},
		{"AMQP.ANNOTATION.X-OPT-SEQUENCE-NUMBER > '7'", Start{Kind: StartSequence, Seq: 8}},
		{"amqp.annotation.x-opt-enqueued-time > '1700000000123'", Start{Kind: StartTime, Time: ms.Add(time.Millisecond)}},
		{"amqp.annotation.x-opt-enqueued-time >= '1700000000123'", Start{Kind: StartTime, Time: ms}},
	} {
		got, err := ParseSelector(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSelector(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		"amqp.annotation.x-opt-offset",
		"amqp.annotation.x-opt-offset = '1'",
		"amqp.annotation.x-opt-offset < '1'",
		"amqp.annotation.x-opt-offset > 1",
		"amqp.annotation.x-opt-offset > 'x'",
		"amqp.annotation.x-opt-offset > '-2'",
		"amqp.annotation.x-opt-offset > ''1'",
		"amqp.annotation.x-opt-enqueued-time > '-5'",
		"amqp.annotation.x-opt-partition-key > '1'",
		"amqp.annotation.x-opt-offset > '1' OR 1=1",
	} {
		if _, err := ParseSelector(bad); !errors.Is(err, ErrFilter) {
			t.Errorf("ParseSelector(%q) error %v, want ErrFilter", bad, err)
		}
	}
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{
		"amqp.annotation.x-opt-offset > '-1'",
		"amqp.annotation.x-opt-offset > '@latest'",
		"amqp.annotation.x-opt-sequence-number >= '0'",
		"amqp.annotation.x-opt-enqueued-time > '1700000000123'",
		"", "a > ''", "x >= '9223372036854775807'",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseSelector(s)
		if err != nil {
			if !errors.Is(err, ErrFilter) {
				t.Fatalf("error %v does not wrap ErrFilter", err)
			}
			return
		}
		if st.Kind == StartSequence && st.Seq <= 0 {
			t.Fatalf("sequence start %d", st.Seq)
		}
	})
}

func TestEntityName(t *testing.T) {
	for in, want := range map[string]string{"hub.example.lan": "hub", "hub.example.lan:5671": "hub", "127.0.0.1": "127-0-0-1"} {
		if got := EntityName(in); got != want {
			t.Errorf("EntityName(%q) = %q, want %q", in, got, want)
		}
	}
}
