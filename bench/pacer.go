package bench

import (
	"context"
	"sync"
	"time"
)

// Pacer spaces events evenly at a rate shared by all its callers (the
// devices of a telemetry run share one, so --rate is the total offered
// load whatever the device count). The k-th slot is due at start + k/rate:
// callers that wake late — timers on a loaded machine always do — are given
// the slots they missed, up to burst of them, so the offered rate does not
// drift below the target; after a longer stall the schedule restarts from
// now rather than releasing a flood.
type Pacer struct {
	interval time.Duration // 0: unlimited
	maxLag   time.Duration
	now      func() time.Time

	mu   sync.Mutex
	next time.Time // the next free slot; zero before the first Reserve
}

// NewPacer returns a pacer for rate events per second; rate ≤ 0 means
// unlimited. burst (≥ 1) is how many missed slots may be caught up at
// once.
func NewPacer(rate float64, burst int) *Pacer {
	p := &Pacer{now: time.Now}
	if rate > 0 {
		p.interval = max(time.Duration(float64(time.Second)/rate), 1)
		p.maxLag = time.Duration(max(burst, 1)-1) * p.interval
	}
	return p
}

// Reserve takes the next slot and returns how long the caller must wait
// for it (≤ 0: go now).
func (p *Pacer) Reserve() time.Duration {
	if p.interval == 0 {
		return 0
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if earliest := now.Add(-p.maxLag); p.next.Before(earliest) {
		p.next = earliest
	}
	slot := p.next
	p.next = slot.Add(p.interval)
	return slot.Sub(now)
}

// Wait blocks until the caller's slot, or ctx is done.
func (p *Pacer) Wait(ctx context.Context) error {
	d := p.Reserve()
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
