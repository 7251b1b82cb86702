package bench

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func pacerAt(rate float64, burst int) (*Pacer, *fakeClock) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	p := NewPacer(rate, burst)
	p.now = c.now
	return p, c
}

func TestPacerSpacesSlots(t *testing.T) {
	p, _ := pacerAt(100, 1) // one slot every 10 ms
	// Callers arriving together are given consecutive slots.
	for i := range 5 {
		if got, want := p.Reserve(), time.Duration(i)*10*time.Millisecond; got != want {
			t.Fatalf("reservation %d: wait %v, want %v", i, got, want)
		}
	}
}

func TestPacerCatchesUpWithinBurst(t *testing.T) {
	p, c := pacerAt(1000, 3) // 1 ms slots, up to 3 missed ones caught up
	for range 3 {            // a fresh pacer starts with its burst available
		if d := p.Reserve(); d > 0 {
			t.Fatalf("initial burst: wait %v", d)
		}
	}
	if d := p.Reserve(); d <= 0 {
		t.Fatal("a fourth caller at once was not made to wait")
	}
	// A late caller (timer slack) finds its slot overdue and goes at once;
	// so do the ones after it, until the schedule is caught up.
	c.advance(10 * time.Millisecond)
	go0 := 0
	for p.Reserve() <= 0 {
		go0++
		if go0 > 100 {
			t.Fatal("the pacer never made a caller wait")
		}
	}
	// After a stall, at most burst slots are released at once (the one
	// that waited counts: burst-1 are in the past plus the current one).
	if go0 != 3 {
		t.Fatalf("%d callers went at once after a stall, want 3 (burst)", go0)
	}
}

func TestPacerKeepsLongRunRate(t *testing.T) {
	p, c := pacerAt(1000, 10)
	// Callers that always oversleep by 0.3 ms still get 1000 slots a
	// second: the schedule, not the wake-ups, sets the rate.
	n := 0
	for c.t.Before(time.Unix(1001, 0)) {
		d := p.Reserve()
		c.advance(max(d, 0) + 300*time.Microsecond)
		n++
	}
	// 1000, plus the initial burst of up to 10.
	if n < 995 || n > 1010 {
		t.Fatalf("%d events in a second at rate 1000", n)
	}
}

func TestPacerUnlimited(t *testing.T) {
	p, _ := pacerAt(0, 1)
	for range 10 {
		if d := p.Reserve(); d != 0 {
			t.Fatalf("unlimited pacer made a caller wait %v", d)
		}
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestPacerWaitHonoursContext(t *testing.T) {
	p := NewPacer(0.001, 1) // a slot every 1000 s
	_ = p.Reserve()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a cancelled context: %v", err)
	}
}
