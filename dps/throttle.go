package dps

import (
	"fmt"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/throttle"
)

// SetThrottle installs the operator's throttles (berth serve --throttle;
// nil for none). Call it before serving: the checks read it without a
// lock.
func (s *Service) SetThrottle(t *throttle.Throttler) { s.throttle = t }

// throttled checks op against the throttles and returns Azure's answer
// when it is over its rate: 429 with the DPS error body and a retry-after
// of the wait, never less than the 202s' retry-after (Azure sends
// retry-after=3 on its 429s, docs/spec/dps-protocol.md#retry-after-and-polling).
// key is the registration ID for per-device limits.
func (s *Service) throttled(op throttle.Op, key string) error {
	d := s.throttle.Allow(op, "", key, 1)
	if d.Allowed {
		return nil
	}
	wait := throttle.Seconds(d.RetryAfter, s.retry)
	return azerr.Throttled(azerr.DPSThrottled, secondsDuration(wait),
		fmt.Sprintf("Too many requests: the %s limit of %s is reached. Retry after %d seconds.", opLabel(op), d.Limit, wait))
}

func opLabel(op throttle.Op) string {
	switch op {
	case throttle.DPSRegister:
		return "device registrations"
	case throttle.DPSDevicePoll:
		return "device polling"
	}
	return "operations"
}

// secondsDuration is n whole seconds.
func secondsDuration(n int) time.Duration { return time.Duration(n) * time.Second }
