package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/berth-iot/berth/store"
)

// Job retention (docs/hub-jobs.md#retention): IoT Hub keeps a job's
// history for 30 days; berth deletes a finished job (/jobs/v2 with its
// device jobs, and import and export jobs) once it ended longer ago than
// JobsConfig.Retention.

const (
	// DefaultJobRetention is how long a finished job is kept: IoT Hub's
	// "job history is retained up to 30 days".
	DefaultJobRetention = 30 * 24 * time.Hour
	// defaultJobRetentionSweep is how often the runner looks for expired
	// jobs.
	defaultJobRetentionSweep = time.Hour
	// retentionLeaseKey is the KindConfig record by which one node at a
	// time sweeps: two sweeps at once would be harmless but for a job ID
	// reused between one node's listing of device jobs and its delete.
	retentionLeaseKey = "jobs/retention-lease"
	retentionLease    = 5 * time.Minute
	retentionBatch    = 256
)

type retentionLeaseRecord struct {
	Owner string    `json:"owner"`
	Until time.Time `json:"until"`
}

// ExpireJobs deletes every finished job of every hub that ended before
// now minus the retention, and returns how many. It holds the sweep's
// lease while it works (another node's unexpired lease: it does nothing).
func (j *Jobs) ExpireJobs(ctx context.Context) (int, error) {
	if j.cfg.Retention < 0 {
		return 0, nil
	}
	now := j.now().UTC()
	ok, err := j.takeRetentionLease(ctx, now)
	if err != nil || !ok {
		return 0, err
	}
	defer j.dropRetentionLease(context.WithoutCancel(ctx))
	cutoff := now.Add(-j.cfg.Retention)
	n, err := j.expireKind(ctx, store.KindJob, cutoff, func(data []byte) (time.Time, string, bool) {
		r, err := decodeJobRecord(data)
		if err != nil || !r.Done || !r.terminal() {
			return time.Time{}, "", false
		}
		end := r.EndTime
		if end.IsZero() {
			end = r.CreatedTime
		}
		return end, r.JobID, true
	})
	if err != nil {
		return n, err
	}
	m, err := j.expireKind(ctx, store.KindImportExport, cutoff, func(data []byte) (time.Time, string, bool) {
		var r ieRecord
		if err := json.Unmarshal(data, &r); err != nil || !r.done() {
			return time.Time{}, "", false
		}
		end := r.EndTimeUtc
		if end.IsZero() {
			end = r.StartTimeUtc
		}
		return end, r.JobID, true
	})
	return n + m, err
}

// expireKind deletes the records of kind that ended before cutoff (as
// ended reads them); a /jobs/v2 job's device jobs go first, so that the
// job's ID, and with it devices.jobs, is never reused while they remain.
func (j *Jobs) expireKind(ctx context.Context, kind store.Kind, cutoff time.Time, ended func([]byte) (time.Time, string, bool)) (int, error) {
	n, after := 0, ""
	for {
		recs, err := j.store.List(ctx, kind, store.ListOptions{After: after, Limit: retentionBatch})
		if err != nil {
			return n, fmt.Errorf("hub: jobs retention: list: %w", err)
		}
		for _, rec := range recs {
			after = rec.Key
			if rec.Index != "" {
				continue // not finished
			}
			end, id, ok := ended(rec.Data)
			if !ok || !end.Before(cutoff) {
				continue
			}
			if kind == store.KindJob {
				if err := j.deleteDeviceJobs(ctx, rec.Key); err != nil {
					return n, err
				}
			}
			err := j.store.Delete(ctx, kind, rec.Key, rec.ETag)
			if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrPreconditionFailed) {
				continue // deleted or changed meanwhile
			}
			if err != nil {
				return n, fmt.Errorf("hub: jobs retention: delete job %s: %w", id, err)
			}
			n++
			j.log.Debug("hub: jobs retention: deleted a finished job", "hub", hubOfKey(rec.Key), "job", id, "ended", end)
			if err := j.renewRetentionLease(ctx); err != nil {
				return n, err
			}
		}
		if len(recs) < retentionBatch {
			return n, nil
		}
	}
}

// deleteDeviceJobs deletes the device jobs of the job keyed key, a batch
// a transaction.
func (j *Jobs) deleteDeviceJobs(ctx context.Context, key string) error {
	for {
		recs, err := j.store.List(ctx, store.KindJobDevice, store.ListOptions{Index: key, Limit: retentionBatch})
		if err != nil {
			return fmt.Errorf("hub: jobs retention: list device jobs of %s: %w", key, err)
		}
		if len(recs) == 0 {
			return nil
		}
		dels := make([]store.Record, len(recs))
		for i, r := range recs {
			dels[i] = store.Record{Kind: store.KindJobDevice, Key: r.Key, Delete: true}
		}
		if _, err := j.store.Apply(ctx, dels); err != nil {
			return fmt.Errorf("hub: jobs retention: delete device jobs of %s: %w", key, err)
		}
		if len(recs) < retentionBatch {
			return nil
		}
	}
}

// takeRetentionLease claims the sweep for this node unless another node
// holds it and its lease has not run out.
func (j *Jobs) takeRetentionLease(ctx context.Context, now time.Time) (bool, error) {
	rec, err := j.store.Get(ctx, store.KindConfig, retentionLeaseKey)
	cond := store.Cond{IfNotExists: true}
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return false, fmt.Errorf("hub: jobs retention: read the lease: %w", err)
	default:
		var l retentionLeaseRecord
		if json.Unmarshal(rec.Data, &l) == nil && l.Owner != j.cfg.NodeID && now.Before(l.Until) {
			return false, nil
		}
		cond = store.Cond{IfMatch: rec.ETag}
	}
	data, _ := json.Marshal(retentionLeaseRecord{Owner: j.cfg.NodeID, Until: now.Add(retentionLease)})
	_, err = j.store.Put(ctx, store.Record{Kind: store.KindConfig, Key: retentionLeaseKey, Data: data}, cond)
	if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrPreconditionFailed) || errors.Is(err, store.ErrNotFound) {
		return false, nil // another node took it first
	}
	if err != nil {
		return false, fmt.Errorf("hub: jobs retention: take the lease: %w", err)
	}
	return true, nil
}

// renewRetentionLease extends this node's lease; it fails when another
// node has taken it (this one ran out).
func (j *Jobs) renewRetentionLease(ctx context.Context) error {
	rec, err := j.store.Get(ctx, store.KindConfig, retentionLeaseKey)
	if err != nil {
		return fmt.Errorf("hub: jobs retention: read the lease: %w", err)
	}
	var l retentionLeaseRecord
	if err := json.Unmarshal(rec.Data, &l); err != nil || l.Owner != j.cfg.NodeID {
		return errors.New("hub: jobs retention: another node took the sweep over")
	}
	l.Until = j.now().UTC().Add(retentionLease)
	data, _ := json.Marshal(l)
	if _, err := j.store.Put(ctx, store.Record{Kind: store.KindConfig, Key: retentionLeaseKey, Data: data}, store.Cond{IfMatch: rec.ETag}); err != nil {
		return fmt.Errorf("hub: jobs retention: renew the lease: %w", err)
	}
	return nil
}

// dropRetentionLease ends this node's lease, so that the next sweep, on
// whichever node, need not wait for it to run out.
func (j *Jobs) dropRetentionLease(ctx context.Context) {
	rec, err := j.store.Get(ctx, store.KindConfig, retentionLeaseKey)
	if err != nil {
		return
	}
	var l retentionLeaseRecord
	if json.Unmarshal(rec.Data, &l) == nil && l.Owner == j.cfg.NodeID {
		_ = j.store.Delete(ctx, store.KindConfig, retentionLeaseKey, rec.ETag)
	}
}

// retentionSweeps runs ExpireJobs at start and every sweep interval until
// ctx ends.
func (j *Jobs) retentionSweeps(ctx context.Context) {
	if j.cfg.Retention < 0 {
		return
	}
	t := time.NewTicker(j.cfg.RetentionSweep)
	defer t.Stop()
	for {
		if n, err := j.ExpireJobs(ctx); err != nil && ctx.Err() == nil {
			j.log.Error("hub: jobs retention sweep failed", "error", err.Error())
		} else if n > 0 {
			j.log.Info("hub: deleted finished jobs past their retention", "jobs", n, "retention", j.cfg.Retention.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
