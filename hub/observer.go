package hub

import (
	"strings"
	"time"
)

// Observer is told what the twin, method and C2D services did, for the
// operator's metrics. Set it with SetObserver before serving; nil means
// nobody listens.
type Observer interface {
	// HubOperation reports one twin or method operation ("twin.get",
	// "twin.patch", "twin.replace", "twin.reported", "method.invoke"), how
	// long it took and its error (nil on success).
	HubOperation(op string, d time.Duration, err error)
	// CloudToDevice reports n C2D messages reaching an outcome: sent,
	// completed, rejected, abandoned, expired, deadlettered, purged.
	CloudToDevice(outcome string, n int)
}

// observeOp reports an operation that began at start when it returns;
// call it deferred with the address of the named error result.
func observeOp(o Observer, op string, start time.Time, err *error) {
	if o != nil {
		o.HubOperation(op, time.Since(start), *err)
	}
}

func observeC2D(o Observer, outcome string, n int) {
	if o != nil && n > 0 {
		o.CloudToDevice(outcome, n)
	}
}

// c2dOutcome is the past tense of a settlement, as the metric names it.
func c2dOutcome(how string) string {
	if strings.HasSuffix(how, "e") {
		return how + "d"
	}
	return how + "ed"
}

// SetObserver sets who hears of twin operations.
func (t *Twins) SetObserver(o Observer) { t.obs = o }

// SetObserver sets who hears of method calls.
func (m *Methods) SetObserver(o Observer) { m.obs = o }

// SetObserver sets who hears of C2D outcomes.
func (q *CloudToDevice) SetObserver(o Observer) { q.obs = o }
