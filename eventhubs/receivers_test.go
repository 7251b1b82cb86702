package eventhubs

import (
	"errors"
	"testing"
)

func TestReceivers(t *testing.T) {
	var r Receivers
	kicked := map[string]error{}
	join := func(name string, epoch *int64) (func(), error) {
		return r.Join("Hub", "$Default", 0, epoch, func(err error) { kicked[name] = err })
	}
	e := func(n int64) *int64 { return &n }
	for i := range MaxReceivers {
		if _, err := join(string(rune('a'+i)), nil); err != nil {
			t.Fatalf("receiver %d: %v", i, err)
		}
	}
	if _, err := join("six", nil); !errors.Is(err, ErrTooMany) {
		t.Fatalf("sixth receiver: %v, want ErrTooMany", err)
	}
	// Another group or partition is separate.
	if _, err := r.Join("hub", "other", 0, nil, func(error) {}); err != nil {
		t.Fatal(err)
	}
	leave5, err := join("e5", e(5))
	if err != nil {
		t.Fatal(err)
	}
	if len(kicked) != MaxReceivers {
		t.Fatalf("an epoch receiver kicked %d of %d", len(kicked), MaxReceivers)
	}
	if _, err := join("plain", nil); !errors.Is(err, ErrEpoch) {
		t.Errorf("no epoch under an epoch receiver: %v", err)
	}
	if _, err := join("e4", e(4)); !errors.Is(err, ErrEpoch) {
		t.Errorf("lower epoch: %v", err)
	}
	if _, err := join("e6", e(6)); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(kicked["e5"], ErrEpoch) {
		t.Errorf("e5 not kicked by e6: %v", kicked["e5"])
	}
	leave5() // already displaced: harmless
}
