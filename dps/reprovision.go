package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// A device that reprovisioning moves to another hub is removed from the hub
// it left, as Azure's DPS does ("the device registration with the initial
// IoT hub will be removed"; docs/provisioning.md, Reprovisioning). The
// removal is written as an intent (a KindHubRemoval record) in the same
// transaction as the new assignment, then carried out through the hub
// registry's own delete, the one the service API's DELETE /devices/{id}
// uses: identity, twin, C2D queue, and whatever else the hub ties to a
// device's deletion (its live sessions). The intent is deleted once the
// device is gone. A removal that fails stays recorded against the
// registration and is retried with backoff (RunRemovals); one a crash
// interrupted is finished when berth starts again.

// Backoff of removal retries: the first retry after removalRetryMin,
// doubling to at most removalRetryMax.
const (
	removalRetryMin = time.Second
	removalRetryMax = 10 * time.Minute
	// removalPoll is how often RunRemovals looks for intents other nodes
	// recorded, when it has nothing due sooner.
	removalPoll = time.Minute
)

// removal is the durable intent to delete a device from the hub it left.
type removal struct {
	RegistrationID string `json:"registrationId"`
	Hub            string `json:"hub"`
	DeviceID       string `json:"deviceId"`
	// GenerationID is the generation of the device that left: a device
	// created since under the same ID is another device and stays.
	GenerationID string    `json:"generationId"`
	Created      time.Time `json:"created"`
	Attempts     int       `json:"attempts,omitempty"`
	LastError    string    `json:"lastError,omitempty"`
	NextAttempt  time.Time `json:"nextAttempt"`
}

// removalKey addresses a removal by the device it deletes: hub names are
// case-insensitive, device IDs are not.
func removalKey(hubName, deviceID string) string {
	return strings.ToLower(hubName) + "/" + deviceID
}

// leaveRecord returns the removal intent of a device that was on prev's
// hub and is now assigned to hubName, or nil when it stays (same hub, or
// policy never) or the hub it leaves does not hold it any more.
func (s *Service) leaveRecord(ctx context.Context, regID string, prev *RegistrationState, hubName string, now time.Time) (*store.Record, error) {
	if prev == nil || strings.EqualFold(prev.AssignedHub, hubName) {
		return nil, nil
	}
	from, fromID := prev.AssignedHub, prev.DeviceID
	d, err := s.registry.Get(ctx, from, fromID)
	if err != nil {
		var ae *azerr.Error
		if errors.As(err, &ae) && ae.Code == azerr.HubDeviceNotFound {
			return nil, nil
		}
		return nil, fmt.Errorf("dps: read device %s on the hub it leaves: %w", fromID, err)
	}
	data, err := json.Marshal(removal{RegistrationID: regID, Hub: from, DeviceID: fromID, GenerationID: d.GenerationID, Created: now, NextAttempt: now})
	if err != nil {
		return nil, fmt.Errorf("dps: encode removal: %w", err)
	}
	return &store.Record{Kind: store.KindHubRemoval, Key: removalKey(from, fromID), Index: Key(regID), Data: data}, nil
}

// settleRemoval carries out a removal still pending for a device identity
// before it is assigned again (a device moved away and straight back): the
// returning device is a new device on that hub, as on Azure, and the old
// intent must not later delete it.
func (s *Service) settleRemoval(ctx context.Context, hubName, deviceID string) error {
	rec, err := s.store.Get(ctx, store.KindHubRemoval, removalKey(hubName, deviceID))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dps: read pending removal: %w", err)
	}
	return s.runRemoval(ctx, rec)
}

// removeNow carries out a removal just written with an assignment. The
// assignment stands whatever happens: a failure is recorded on the intent
// and left to RunRemovals.
func (s *Service) removeNow(ctx context.Context, rec store.Record) {
	if err := s.runRemoval(ctx, rec); err != nil {
		s.log.Warn("dps: could not remove a reprovisioned device from the hub it left; will retry",
			"key", rec.Key, "error", err.Error())
		s.wakeRemovals()
	}
}

// runRemoval deletes the device an intent names, if it is still the
// generation that left, then the intent. On failure it records the attempt
// on the intent (attempts, last error, next attempt) and returns the error.
func (s *Service) runRemoval(ctx context.Context, rec store.Record) error {
	var r removal
	if err := json.Unmarshal(rec.Data, &r); err != nil {
		return fmt.Errorf("dps: decode removal %s: %w", rec.Key, err)
	}
	err := s.deleteLeftDevice(ctx, &r)
	if err == nil {
		if err := s.store.Delete(ctx, store.KindHubRemoval, rec.Key, rec.ETag); err != nil &&
			!errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrPreconditionFailed) {
			// The device is gone; the intent is found done next time.
			return fmt.Errorf("dps: delete removal %s: %w", rec.Key, err)
		}
		return nil
	}
	r.Attempts++
	r.LastError = err.Error()
	r.NextAttempt = s.now().UTC().Add(removalBackoff(r.Attempts))
	if data, merr := json.Marshal(&r); merr == nil {
		rec.Data = data
		// Conditional: another node may have finished it meanwhile.
		_, _ = s.store.Put(ctx, rec, store.Cond{IfMatch: rec.ETag})
	}
	return err
}

// deleteLeftDevice deletes the device through the hub registry, unless it
// is gone or was recreated since (another generation).
func (s *Service) deleteLeftDevice(ctx context.Context, r *removal) error {
	for range 3 {
		d, err := s.registry.Get(ctx, r.Hub, r.DeviceID)
		if isHubNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read device %s on %s: %w", r.DeviceID, r.Hub, err)
		}
		if d.GenerationID != r.GenerationID {
			return nil
		}
		err = s.registry.Delete(ctx, r.Hub, r.DeviceID, d.ETag)
		var ae *azerr.Error
		switch {
		case err == nil || isHubNotFound(err):
			return nil
		case errors.As(err, &ae) && ae.Code == azerr.HubPreconditionFailed:
			// Updated between the read and the delete: read again.
			continue
		default:
			return fmt.Errorf("delete device %s from %s: %w", r.DeviceID, r.Hub, err)
		}
	}
	return fmt.Errorf("delete device %s from %s: it kept changing", r.DeviceID, r.Hub)
}

func isHubNotFound(err error) bool {
	var ae *azerr.Error
	return errors.As(err, &ae) && ae.Code == azerr.HubDeviceNotFound
}

// removalBackoff is the wait before retry n (n >= 1).
func removalBackoff(n int) time.Duration {
	d := removalRetryMin
	for i := 1; i < n && d < removalRetryMax; i++ {
		d *= 2
	}
	return min(d, removalRetryMax)
}

func (s *Service) wakeRemovals() {
	select {
	case s.removalWake <- struct{}{}:
	default:
	}
}

// RetryRemovals runs every removal that is due: on start, those a crash
// interrupted; later, those that failed and whose backoff has passed. It
// returns when the next one is due (zero when none is pending).
func (s *Service) RetryRemovals(ctx context.Context) (time.Time, error) {
	var next time.Time
	after := ""
	for {
		recs, err := s.store.List(ctx, store.KindHubRemoval, store.ListOptions{After: after, Limit: 100})
		if err != nil {
			return time.Time{}, fmt.Errorf("dps: list pending removals: %w", err)
		}
		for _, rec := range recs {
			var r removal
			if err := json.Unmarshal(rec.Data, &r); err != nil {
				return time.Time{}, fmt.Errorf("dps: decode removal %s: %w", rec.Key, err)
			}
			if r.NextAttempt.After(s.now()) {
				if next.IsZero() || r.NextAttempt.Before(next) {
					next = r.NextAttempt
				}
				continue
			}
			if err := s.runRemoval(ctx, rec); err != nil {
				s.log.Warn("dps: removal of a reprovisioned device from the hub it left failed; will retry",
					"hub", r.Hub, "deviceId", r.DeviceID, "registrationId", r.RegistrationID, "attempts", r.Attempts+1, "error", err.Error())
				retry := s.now().UTC().Add(removalBackoff(r.Attempts + 1))
				if next.IsZero() || retry.Before(next) {
					next = retry
				}
			}
		}
		if len(recs) < 100 {
			return next, nil
		}
		after = recs[len(recs)-1].Key
	}
}

// RunRemovals retries pending removals until ctx ends: at once (finishing
// what a crash interrupted), when a removal fails, when its backoff has
// passed, and every minute for intents that other nodes recorded.
func (s *Service) RunRemovals(ctx context.Context) {
	for {
		next, err := s.RetryRemovals(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Warn("dps: pending removals", "error", err.Error())
		}
		wait := removalPoll
		if !next.IsZero() {
			wait = min(max(next.Sub(s.now()), 0), removalPoll)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.removalWake:
			t.Stop()
		case <-t.C:
		}
	}
}
