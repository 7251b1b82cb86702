package hub

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hubquery"
	"github.com/berth-iot/berth/store"
)

// Job types IoT Hub's /jobs/v2 schedules (docs/hub-jobs.md).
const (
	JobTypeUpdateTwin   = "scheduleUpdateTwin"
	JobTypeDeviceMethod = "scheduleDeviceMethod"
)

// Job statuses, as IoT Hub shows them: a job is queued when created,
// scheduled while it waits for its start time, running, and then
// completed, failed (it ran out of its maximum execution time) or
// cancelled.
const (
	JobQueued    = "queued"
	JobScheduled = "scheduled"
	JobRunning   = "running"
	JobCompleted = "completed"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
)

// Statuses of one device's part of a job (devices.jobs).
const (
	DeviceJobScheduled = "scheduled"
	DeviceJobRunning   = "running"
	DeviceJobCompleted = "completed"
	DeviceJobFailed    = "failed"
	DeviceJobCancelled = "cancelled"
)

// Job limits (docs/spec/iothub-protocol.md#jobs).
const (
	MaxJobIDLength            = 64
	DefaultJobMaxExecution    = 3600 * time.Second
	DefaultJobsQueryPageSize  = 100
	MaxJobsQueryPageSize      = 1000
	jobRunIndex               = "run"
	defaultJobPoll            = time.Second
	defaultJobLease           = 30 * time.Second
	defaultJobDeviceBatch     = 16
	defaultJobEnumerateBatch  = 200
	defaultJobsAtOnce         = 4
	interruptedMethodErrorMsg = "berth stopped while this device's method call was in progress; it is not called twice."
)

// JobStatistics is a job's deviceJobStatistics.
type JobStatistics struct {
	DeviceCount    int `json:"deviceCount"`
	FailedCount    int `json:"failedCount"`
	SucceededCount int `json:"succeededCount"`
	RunningCount   int `json:"runningCount"`
	PendingCount   int `json:"pendingCount"`
}

// JobMethod is a method job's cloudToDeviceMethod.
type JobMethod struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds"`
}

// Job is IoT Hub's JobResponse: a job as GET /jobs/v2/{id} answers it.
type Job struct {
	JobID                     string          `json:"jobId"`
	QueryCondition            string          `json:"queryCondition,omitempty"`
	CreatedTime               time.Time       `json:"createdTime"`
	StartTime                 time.Time       `json:"startTime"`
	EndTime                   time.Time       `json:"endTime,omitzero"`
	MaxExecutionTimeInSeconds int64           `json:"maxExecutionTimeInSeconds"`
	Type                      string          `json:"type"`
	CloudToDeviceMethod       *JobMethod      `json:"cloudToDeviceMethod,omitempty"`
	UpdateTwin                json.RawMessage `json:"updateTwin,omitempty"`
	Status                    string          `json:"status"`
	FailureReason             string          `json:"failureReason,omitempty"`
	StatusMessage             string          `json:"statusMessage,omitempty"`
	DeviceJobStatistics       JobStatistics   `json:"deviceJobStatistics"`
}

func (j *Job) terminal() bool {
	return j.Status == JobCompleted || j.Status == JobFailed || j.Status == JobCancelled
}

// jobRecord is a job as stored: the Job and the runner's state.
type jobRecord struct {
	Job
	// Phase is "" before the job starts, "enumerate" while the devices
	// its query selects are written as device jobs, "execute" while they
	// are run.
	Phase string `json:"phase,omitempty"`
	// Cursor is where the phase resumes: the query's continuation token
	// (enumerate) or the key of the last device job done (execute).
	Cursor string `json:"cursor,omitempty"`
	// Done says no runner has anything left to do (the record leaves the
	// runner's index).
	Done bool `json:"done,omitempty"`
	// Owner and LeaseUntil: the node running the job and until when its
	// claim holds unless renewed (several berth nodes share one store).
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"leaseUntil,omitzero"`
}

// DeviceJob is one device's part of a job, the document of devices.jobs.
type DeviceJob struct {
	DeviceID               string            `json:"deviceId"`
	JobID                  string            `json:"jobId"`
	JobType                string            `json:"jobType"`
	Status                 string            `json:"status"`
	StartTimeUtc           time.Time         `json:"startTimeUtc"`
	EndTimeUtc             time.Time         `json:"endTimeUtc,omitzero"`
	CreatedDateTimeUtc     time.Time         `json:"createdDateTimeUtc"`
	LastUpdatedDateTimeUtc time.Time         `json:"lastUpdatedDateTimeUtc"`
	Outcome                DeviceJobOutcome  `json:"outcome"`
	Error                  *DeviceJobFailure `json:"error,omitempty"`
}

// DeviceJobOutcome is a device job's outcome: the method's answer (null
// for twin updates).
type DeviceJobOutcome struct {
	DeviceMethodResponse *MethodResult `json:"deviceMethodResponse"`
}

// DeviceJobFailure is why a device's part of a job failed.
type DeviceJobFailure struct {
	Code        string `json:"code"`
	Description string `json:"description"`
}

// JobRequest is the body of PUT /jobs/v2/{id}.
type JobRequest struct {
	JobID                     string          `json:"jobId"`
	Type                      string          `json:"type"`
	CloudToDeviceMethod       *JobMethod      `json:"cloudToDeviceMethod"`
	UpdateTwin                json.RawMessage `json:"updateTwin"`
	QueryCondition            string          `json:"queryCondition"`
	StartTime                 *string         `json:"startTime"`
	MaxExecutionTimeInSeconds *int64          `json:"maxExecutionTimeInSeconds"`
}

// JobsConfig tunes the job runner; the zero value is berth's default.
type JobsConfig struct {
	// NodeID names this berth node in the leases of the jobs it runs. A
	// node that keeps its ID across restarts resumes its own jobs at once;
	// another node takes a job over when its lease runs out.
	NodeID string
	// Poll is how often the runner looks for due jobs (default 1 s; a
	// new job wakes it at once).
	Poll time.Duration
	// Lease is how long a claim on a running job holds unless renewed
	// (default 30 s).
	Lease time.Duration
	// DeviceBatch is how many devices of a job run at once (default 16):
	// a method job to 10,000 devices keeps at most this many calls open.
	DeviceBatch int
	// JobsAtOnce bounds the jobs one node runs at once (default 4).
	JobsAtOnce int
	// Retention is how long a finished job (with its device jobs, and
	// import and export jobs) is kept after it ended: 0 for IoT Hub's 30
	// days (DefaultJobRetention), negative to keep every job.
	Retention time.Duration
	// RetentionSweep is how often expired jobs are looked for (default
	// one hour; also at start).
	RetentionSweep time.Duration
}

// Jobs schedules and runs IoT Hub jobs: twin updates and direct methods
// applied to every device a query selects, from a start time on. Jobs and
// their per-device records are durable; a job in progress when berth
// stops resumes where it was, without applying anything twice to a
// device (docs/hub-jobs.md).
type Jobs struct {
	store   store.Store
	twins   *Twins
	methods *Methods
	now     func() time.Time
	log     *slog.Logger
	cfg     JobsConfig
	wake    chan struct{}

	mu     sync.Mutex
	active map[string]bool // job keys this node is running
}

// NewJobs returns the job service. Run must be running for jobs to run.
func NewJobs(st store.Store, twins *Twins, methods *Methods, log *slog.Logger) *Jobs {
	if log == nil {
		log = slog.Default()
	}
	j := &Jobs{store: st, twins: twins, methods: methods, now: twins.now, log: log, wake: make(chan struct{}, 1), active: map[string]bool{}}
	j.Configure(JobsConfig{})
	return j
}

// Configure sets the runner's tuning; call it before Run.
func (j *Jobs) Configure(cfg JobsConfig) {
	if cfg.NodeID == "" {
		cfg.NodeID = newKey()[:16]
	}
	if cfg.Poll <= 0 {
		cfg.Poll = defaultJobPoll
	}
	if cfg.Lease <= 0 {
		cfg.Lease = defaultJobLease
	}
	if cfg.DeviceBatch <= 0 {
		cfg.DeviceBatch = defaultJobDeviceBatch
	}
	if cfg.JobsAtOnce <= 0 {
		cfg.JobsAtOnce = defaultJobsAtOnce
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultJobRetention
	}
	if cfg.RetentionSweep <= 0 {
		cfg.RetentionSweep = defaultJobRetentionSweep
	}
	j.cfg = cfg
}

func jobKey(hubName, id string) string { return strings.ToLower(hubName) + "/" + id }

func jobDeviceIndex(hubName, id string) string { return jobKey(hubName, id) }

func jobDeviceKey(hubName, id, deviceID string) string { return jobKey(hubName, id) + "/" + deviceID }

// validJobID is IoT Hub's rule: at most 64 US-ASCII letters, digits and
// dashes (docs/spec/iothub-protocol.md#jobs).
func validJobID(s string) bool {
	if s == "" || len(s) > MaxJobIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// jobQuery is the device query a job's condition stands for.
func jobQuery(cond string) string { return "SELECT deviceId FROM devices WHERE " + cond }

func (r *jobRecord) encode(key string) (store.Record, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return store.Record{}, fmt.Errorf("hub: encode job: %w", err)
	}
	idx := jobRunIndex
	if r.Done {
		idx = ""
	}
	return store.Record{Kind: store.KindJob, Key: key, Index: idx, Data: data}, nil
}

func decodeJobRecord(data []byte) (*jobRecord, error) {
	var r jobRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("hub: decode job: %w", err)
	}
	return &r, nil
}

// view is the job as clients see it, its pending count derived.
func (r *jobRecord) view() *Job {
	j := r.Job
	s := &j.DeviceJobStatistics
	s.PendingCount = max(0, s.DeviceCount-s.SucceededCount-s.FailedCount-s.RunningCount)
	return &j
}

// Create schedules a job (PUT /jobs/v2/{id}). It is answered queued; the
// runner takes it from there.
func (j *Jobs) Create(ctx context.Context, hubName, jobID string, req *JobRequest) (_ *Job, err error) {
	if !validJobID(jobID) {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The job ID '%s' is not valid: at most %d US-ASCII letters, digits and dashes.", clipKey(jobID), MaxJobIDLength)
	}
	if req.JobID != "" && req.JobID != jobID {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The jobId in the body (%s) is not the one in the path (%s).", clipKey(req.JobID), jobID)
	}
	now := j.now().UTC()
	rec := &jobRecord{Job: Job{JobID: jobID, Type: req.Type, CreatedTime: now, StartTime: now, Status: JobQueued,
		MaxExecutionTimeInSeconds: int64(DefaultJobMaxExecution / time.Second)}}
	switch req.Type {
	case JobTypeUpdateTwin:
		if len(bytes.TrimSpace(req.UpdateTwin)) == 0 || string(bytes.TrimSpace(req.UpdateTwin)) == "null" {
			return nil, azerr.Newf(azerr.HubArgumentNull, "A scheduleUpdateTwin job needs updateTwin.")
		}
		if _, err := parseServicePatch(req.UpdateTwin); err != nil {
			return nil, err
		}
		rec.UpdateTwin = req.UpdateTwin
	case JobTypeDeviceMethod:
		m := req.CloudToDeviceMethod
		if m == nil {
			return nil, azerr.Newf(azerr.HubArgumentNull, "A scheduleDeviceMethod job needs cloudToDeviceMethod.")
		}
		if err := checkJobMethod(m); err != nil {
			return nil, err
		}
		rec.CloudToDeviceMethod = m
	case "":
		return nil, azerr.Newf(azerr.HubArgumentNull, "The job type is missing.")
	default:
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The job type '%s' is not supported here: %s or %s.", clipKey(req.Type), JobTypeUpdateTwin, JobTypeDeviceMethod)
	}
	cond := strings.TrimSpace(req.QueryCondition)
	if cond == "" {
		return nil, azerr.Newf(azerr.HubArgumentNull, "The job's queryCondition is missing.")
	}
	if q, err := hubquery.Parse(jobQuery(cond)); err != nil {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid queryCondition (a WHERE clause over devices): %s", err.Error())
	} else if q.Aggregate() {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid queryCondition: it must be a WHERE clause over devices.")
	}
	rec.QueryCondition = cond
	if req.StartTime != nil && strings.TrimSpace(*req.StartTime) != "" {
		t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(*req.StartTime))
		if err != nil {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "The job's startTime is not an ISO 8601 time: %s", clipKey(*req.StartTime))
		}
		rec.StartTime = t.UTC()
	}
	if req.MaxExecutionTimeInSeconds != nil {
		if *req.MaxExecutionTimeInSeconds <= 0 {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "maxExecutionTimeInSeconds must be positive.")
		}
		rec.MaxExecutionTimeInSeconds = *req.MaxExecutionTimeInSeconds
	}
	sr, err := rec.encode(jobKey(hubName, jobID))
	if err != nil {
		return nil, err
	}
	if _, err := j.store.Put(ctx, sr, store.Cond{IfNotExists: true}); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "A job with ID '%s' already exists.", jobID)
		}
		return nil, fmt.Errorf("hub: create job %s: %w", jobID, err)
	}
	j.poke()
	return rec.view(), nil
}

// checkJobMethod applies the direct-method rules (Methods.Invoke) when the
// job is created, so that a job that cannot call anything is refused.
func checkJobMethod(m *JobMethod) error {
	if !validMethodName(m.MethodName) {
		return azerr.Newf(azerr.HubArgumentInvalid, "Method name '%s' is not valid.", clipKey(m.MethodName))
	}
	if m.ResponseTimeoutInSeconds == 0 {
		m.ResponseTimeoutInSeconds = int(DefaultMethodResponseTimeout / time.Second)
	}
	if t := time.Duration(m.ResponseTimeoutInSeconds) * time.Second; t < MinMethodResponseTimeout || t > MaxMethodResponseTimeout {
		return azerr.Newf(azerr.HubArgumentInvalid, "responseTimeoutInSeconds must be between %d and %d.", int(MinMethodResponseTimeout/time.Second), int(MaxMethodResponseTimeout/time.Second))
	}
	if t := time.Duration(m.ConnectTimeoutInSeconds) * time.Second; t < 0 || t > MaxMethodConnectTimeout {
		return azerr.Newf(azerr.HubArgumentInvalid, "connectTimeoutInSeconds must be between 0 and %d.", int(MaxMethodConnectTimeout/time.Second))
	}
	p := bytes.TrimSpace(m.Payload)
	if len(p) == 0 {
		p = []byte("null")
	}
	if !json.Valid(p) {
		return azerr.Newf(azerr.HubArgumentInvalid, "The method payload is not valid JSON.")
	}
	if len(p) > MaxMethodPayload {
		return azerr.Newf(azerr.HubMessageTooLarge, "The method payload of %d bytes is over the %d bytes limit.", len(p), MaxMethodPayload)
	}
	m.Payload = p
	return nil
}

// Get returns a job (GET /jobs/v2/{id}).
func (j *Jobs) Get(ctx context.Context, hubName, jobID string) (*Job, error) {
	r, _, err := j.load(ctx, jobKey(hubName, jobID), jobID)
	if err != nil {
		return nil, err
	}
	return r.view(), nil
}

func (j *Jobs) load(ctx context.Context, key, jobID string) (*jobRecord, string, error) {
	rec, err := j.store.Get(ctx, store.KindJob, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", azerr.Newf(azerr.HubJobNotFound, "Job %s was not found.", clipKey(jobID))
	}
	if err != nil {
		return nil, "", fmt.Errorf("hub: get job %s: %w", jobID, err)
	}
	r, err := decodeJobRecord(rec.Data)
	if err != nil {
		return nil, "", err
	}
	return r, rec.ETag, nil
}

// Cancel cancels a job that has not finished (POST /jobs/v2/{id}/cancel)
// and answers it; a finished job is answered as it is. Devices a running
// job has not reached are marked cancelled by its runner.
func (j *Jobs) Cancel(ctx context.Context, hubName, jobID string) (*Job, error) {
	key := jobKey(hubName, jobID)
	for range 10 {
		r, etag, err := j.load(ctx, key, jobID)
		if err != nil {
			return nil, err
		}
		if r.terminal() {
			return r.view(), nil
		}
		r.Status = JobCancelled
		r.EndTime = j.now().UTC()
		r.DeviceJobStatistics.RunningCount = 0
		// With no device job written yet there is nothing left to do;
		// otherwise the runner marks the devices it did not reach.
		r.Done = r.Phase == ""
		rec, err := r.encode(key)
		if err != nil {
			return nil, err
		}
		_, err = j.store.Put(ctx, rec, store.Cond{IfMatch: etag})
		if errors.Is(err, store.ErrPreconditionFailed) {
			continue // the runner wrote meanwhile
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil, azerr.Newf(azerr.HubJobNotFound, "Job %s was not found.", clipKey(jobID))
		}
		if err != nil {
			return nil, fmt.Errorf("hub: cancel job %s: %w", jobID, err)
		}
		j.poke()
		return r.view(), nil
	}
	return nil, azerr.Newf(azerr.HubServiceUnavailable, "Job %s is changing too often to cancel; try again.", jobID)
}

// JobsPage is one page of GET /jobs/v2/query.
type JobsPage struct {
	Jobs         []*Job
	Continuation string
}

// List answers a page of a hub's jobs in job-ID order, of one type and
// status when they are not "" (GET /jobs/v2/query). The continuation
// token is the last job ID returned; a token is given only when another
// matching job exists.
func (j *Jobs) List(ctx context.Context, hubName, jobType, status string, pageSize int, continuation string) (*JobsPage, error) {
	switch {
	case pageSize <= 0:
		pageSize = DefaultJobsQueryPageSize
	case pageSize > MaxJobsQueryPageSize:
		pageSize = MaxJobsQueryPageSize
	}
	prefix := strings.ToLower(hubName) + "/"
	after := prefix
	if continuation != "" {
		b, err := base64.RawURLEncoding.DecodeString(continuation)
		if err != nil || !validJobID(string(b)) {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid continuation token.")
		}
		after = prefix + string(b)
	}
	page := &JobsPage{Jobs: []*Job{}}
	for {
		recs, err := j.store.List(ctx, store.KindJob, store.ListOptions{After: after, Limit: 256})
		if err != nil {
			return nil, fmt.Errorf("hub: list jobs: %w", err)
		}
		for _, rec := range recs {
			if !strings.HasPrefix(rec.Key, prefix) {
				return page, nil
			}
			after = rec.Key
			r, err := decodeJobRecord(rec.Data)
			if err != nil {
				return nil, err
			}
			if jobType != "" && r.Type != jobType || status != "" && r.Status != status {
				continue
			}
			if len(page.Jobs) == pageSize {
				// One more match exists: the page has a next one.
				page.Continuation = base64.RawURLEncoding.EncodeToString([]byte(page.Jobs[len(page.Jobs)-1].JobID))
				return page, nil
			}
			page.Jobs = append(page.Jobs, r.view())
		}
		if len(recs) < 256 {
			return page, nil
		}
	}
}

// deviceJobSource yields a hub's device jobs (FROM devices.jobs) in key
// order: by job ID, then device ID. A document's key is "jobId/deviceId".
func (j *Jobs) deviceJobSource(hubName string) hubquery.Source {
	return func(ctx context.Context, after string, yield func(string, map[string]any) (bool, error)) error {
		prefix := strings.ToLower(hubName) + "/"
		cur := prefix
		if after != "" {
			cur = prefix + after
		}
		batch := firstScanBatch
		for {
			recs, err := j.store.List(ctx, store.KindJobDevice, store.ListOptions{After: cur, Limit: batch})
			if err != nil {
				return fmt.Errorf("hub: query: list device jobs: %w", err)
			}
			for _, rec := range recs {
				if !strings.HasPrefix(rec.Key, prefix) {
					return nil
				}
				cur = rec.Key
				var doc map[string]any
				if err := json.Unmarshal(rec.Data, &doc); err != nil {
					return fmt.Errorf("hub: query: decode device job %s: %w", rec.Key, err)
				}
				more, err := yield(rec.Key[len(prefix):], doc)
				if err != nil || !more {
					return err
				}
			}
			if len(recs) < batch {
				return nil
			}
			batch = min(2*batch, maxScanBatch)
		}
	}
}

func (j *Jobs) poke() {
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

// Run runs due jobs until ctx ends, then waits for the jobs it started to
// stop (each stops at its next device; a device job in progress is left
// running and resumed, or for a method reported failed, by the next run).
func (j *Jobs) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		j.retentionSweeps(ctx)
	}()
	t := time.NewTicker(j.cfg.Poll)
	defer t.Stop()
	for {
		j.sweep(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-j.wake:
		}
	}
}

// sweep looks at every job not finished: a queued job waiting for its
// start becomes scheduled; a due or running job whose lease is free is
// claimed and run.
func (j *Jobs) sweep(ctx context.Context, wg *sync.WaitGroup) {
	after := ""
	for ctx.Err() == nil {
		recs, err := j.store.List(ctx, store.KindJob, store.ListOptions{Index: jobRunIndex, After: after, Limit: 100})
		if err != nil {
			if ctx.Err() == nil {
				j.log.Error("hub: jobs: list", "error", err.Error())
			}
			return
		}
		for _, rec := range recs {
			after = rec.Key
			if j.isActive(rec.Key) {
				continue
			}
			r, err := decodeJobRecord(rec.Data)
			if err != nil {
				j.log.Error("hub: jobs: decode", "job", rec.Key, "error", err.Error())
				continue
			}
			now := j.now().UTC()
			if !r.terminal() && now.Before(r.StartTime) {
				if r.Status == JobQueued {
					r.Status = JobScheduled
					if nr, err := r.encode(rec.Key); err == nil {
						_, _ = j.store.Put(ctx, nr, store.Cond{IfMatch: rec.ETag}) // a lost race is retried next sweep
					}
				}
				continue
			}
			if r.Owner != "" && r.Owner != j.cfg.NodeID && now.Before(r.LeaseUntil) {
				continue // another node runs it
			}
			if !j.claim(rec.Key) {
				return // this node runs as many jobs as it may
			}
			r.Owner, r.LeaseUntil = j.cfg.NodeID, now.Add(j.cfg.Lease)
			nr, err := r.encode(rec.Key)
			if err == nil {
				nr, err = j.store.Put(ctx, nr, store.Cond{IfMatch: rec.ETag})
			}
			if err != nil {
				j.release(rec.Key) // changed meanwhile: next sweep
				continue
			}
			run := &jobRun{j: j, key: rec.Key, hub: hubOfKey(rec.Key), rec: r, etag: nr.ETag}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer j.release(run.key)
				run.execute(ctx)
			}()
		}
		if len(recs) < 100 {
			return
		}
	}
}

// hubOfKey is the (lower-cased) hub name of a job key.
func hubOfKey(key string) string {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[:i]
	}
	return key
}

func (j *Jobs) isActive(key string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.active[key]
}

func (j *Jobs) claim(key string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.active) >= j.cfg.JobsAtOnce {
		return false
	}
	j.active[key] = true
	return true
}

func (j *Jobs) release(key string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.active, key)
}

// Errors that end a run of a job.
var (
	errJobLost      = errors.New("hub: job: another node holds the job")
	errJobCancelled = errors.New("hub: job: cancelled")
	errJobExpired   = errors.New("hub: job: past its maximum execution time")
)

// jobRun is one node's run of one job. Every write of the job record goes
// through save, under mu, conditional on the ETag last written: a cancel
// (or another node) writing in between is noticed at the next save.
type jobRun struct {
	j    *Jobs
	key  string
	hub  string
	mu   sync.Mutex
	rec  *jobRecord
	etag string
}

// save applies change to the job record and writes it, renewing the
// lease. A record changed by someone else is read again: cancelled is
// errJobCancelled, owned by another node errJobLost; otherwise the change
// is applied to the new record.
func (r *jobRun) save(ctx context.Context, change func(*jobRecord)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for range 5 {
		next := *r.rec
		change(&next)
		next.Owner, next.LeaseUntil = r.j.cfg.NodeID, r.j.now().UTC().Add(r.j.cfg.Lease)
		rec, err := next.encode(r.key)
		if err != nil {
			return err
		}
		rec, err = r.j.store.Put(ctx, rec, store.Cond{IfMatch: r.etag})
		if err == nil {
			r.rec, r.etag = &next, rec.ETag
			return nil
		}
		if !errors.Is(err, store.ErrPreconditionFailed) {
			return fmt.Errorf("hub: job %s: save: %w", r.rec.JobID, err)
		}
		cur, err := r.j.store.Get(ctx, store.KindJob, r.key)
		if err != nil {
			return fmt.Errorf("hub: job %s: reload: %w", r.rec.JobID, err)
		}
		nr, err := decodeJobRecord(cur.Data)
		if err != nil {
			return err
		}
		r.rec, r.etag = nr, cur.ETag
		if nr.Owner != "" && nr.Owner != r.j.cfg.NodeID {
			return errJobLost
		}
		if nr.Status == JobCancelled {
			return errJobCancelled
		}
	}
	return fmt.Errorf("hub: job %s: the record keeps changing", r.rec.JobID)
}

func (r *jobRun) snapshot() jobRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return *r.rec
}

func (r *jobRun) deadline() time.Time {
	rec := r.snapshot()
	return rec.StartTime.Add(time.Duration(rec.MaxExecutionTimeInSeconds) * time.Second)
}

// execute runs the job from wherever its record says it is.
func (r *jobRun) execute(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Renew the lease while devices run: a method may take minutes.
	go func() {
		t := time.NewTicker(r.j.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := r.save(ctx, func(*jobRecord) {}); errors.Is(err, errJobLost) {
					cancel()
					return
				}
			}
		}
	}()
	err := r.steps(ctx)
	log := r.j.log.With("job", r.key)
	switch {
	case err == nil:
		err = r.save(ctx, func(n *jobRecord) {
			n.Status, n.EndTime, n.Done, n.Phase, n.Cursor = JobCompleted, r.j.now().UTC(), true, "", ""
			n.DeviceJobStatistics.RunningCount = 0
		})
		if errors.Is(err, errJobCancelled) {
			err = r.finish(ctx, JobCancelled, "")
		}
	case errors.Is(err, errJobCancelled):
		err = r.finish(ctx, JobCancelled, "")
	case errors.Is(err, errJobExpired):
		err = r.finish(ctx, JobFailed, fmt.Sprintf("The job did not finish within its maximum execution time of %d seconds.", r.snapshot().MaxExecutionTimeInSeconds))
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, errJobLost) {
		log.Error("hub: job run stopped", "error", err.Error())
	}
}

// steps runs the job's phases from its record's position.
func (r *jobRun) steps(ctx context.Context) error {
	rec := r.snapshot()
	if rec.Status == JobCancelled {
		return errJobCancelled
	}
	if rec.Phase == "" {
		if err := r.save(ctx, func(n *jobRecord) { n.Status, n.Phase, n.Cursor = JobRunning, "enumerate", "" }); err != nil {
			return err
		}
	}
	if r.snapshot().Phase == "enumerate" {
		if err := r.enumerate(ctx); err != nil {
			return err
		}
	}
	return r.runDevices(ctx)
}

// enumerate writes a scheduled device job for every device the job's
// query selects, a page at a time, each page in one transaction with the
// job's cursor saved after it: a restart resumes at the page it was on
// (writing a page again changes nothing).
func (r *jobRun) enumerate(ctx context.Context) error {
	hubName := r.hub
	for {
		if r.j.now().After(r.deadline()) {
			return errJobExpired
		}
		rec := r.snapshot()
		page, err := r.j.twins.Query(ctx, hubName, jobQuery(rec.QueryCondition), defaultJobEnumerateBatch, rec.Cursor)
		if err != nil {
			return err
		}
		now := r.j.now().UTC()
		recs := make([]store.Record, 0, len(page.Items))
		for _, it := range page.Items {
			m, _ := it.(map[string]any)
			id, _ := m["deviceId"].(string)
			if id == "" {
				continue
			}
			dj := DeviceJob{DeviceID: id, JobID: rec.JobID, JobType: rec.Type, Status: DeviceJobScheduled,
				StartTimeUtc: rec.StartTime, CreatedDateTimeUtc: rec.CreatedTime, LastUpdatedDateTimeUtc: now}
			data, err := json.Marshal(dj)
			if err != nil {
				return fmt.Errorf("hub: encode device job: %w", err)
			}
			recs = append(recs, store.Record{Kind: store.KindJobDevice, Key: jobDeviceKey(hubName, rec.JobID, id), Index: jobDeviceIndex(hubName, rec.JobID), Data: data})
		}
		if len(recs) > 0 {
			if _, err := r.j.store.Apply(ctx, recs); err != nil {
				return fmt.Errorf("hub: job %s: write device jobs: %w", rec.JobID, err)
			}
		}
		n := len(recs)
		last := page.Continuation == ""
		if err := r.save(ctx, func(x *jobRecord) {
			x.DeviceJobStatistics.DeviceCount += n
			x.Cursor = page.Continuation
			if last {
				x.Phase, x.Cursor = "execute", ""
			}
		}); err != nil {
			return err
		}
		if last {
			return nil
		}
	}
}

// runDevices runs the scheduled device jobs in key order, DeviceBatch at
// once; after each batch the cursor and the statistics are saved. A
// device job found done after the cursor was finished by a run that
// stopped before saving, and is counted now.
func (r *jobRun) runDevices(ctx context.Context) error {
	rec := r.snapshot()
	index := jobDeviceIndex(r.hub, rec.JobID)
	for {
		if r.j.now().After(r.deadline()) {
			return errJobExpired
		}
		cursor := r.snapshot().Cursor
		recs, err := r.j.store.List(ctx, store.KindJobDevice, store.ListOptions{Index: index, After: cursor, Limit: r.j.cfg.DeviceBatch})
		if err != nil {
			return fmt.Errorf("hub: job %s: list device jobs: %w", rec.JobID, err)
		}
		if len(recs) == 0 {
			return nil
		}
		var todo []store.Record
		var ok, failed int
		for _, dr := range recs {
			var dj DeviceJob
			if err := json.Unmarshal(dr.Data, &dj); err != nil {
				return fmt.Errorf("hub: job %s: decode device job: %w", rec.JobID, err)
			}
			switch dj.Status {
			case DeviceJobCompleted:
				ok++
			case DeviceJobFailed:
				failed++
			case DeviceJobCancelled:
			default:
				todo = append(todo, dr)
			}
		}
		if len(todo) > 0 {
			if err := r.save(ctx, func(x *jobRecord) { x.DeviceJobStatistics.RunningCount = len(todo) }); err != nil {
				return err
			}
		}
		results := make([]string, len(todo))
		var wg sync.WaitGroup
		for i, dr := range todo {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = r.runDevice(ctx, dr)
			}()
		}
		wg.Wait()
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, s := range results {
			switch s {
			case DeviceJobCompleted:
				ok++
			case DeviceJobFailed:
				failed++
			}
		}
		last := recs[len(recs)-1].Key
		if err := r.save(ctx, func(x *jobRecord) {
			x.Cursor = last
			x.DeviceJobStatistics.SucceededCount += ok
			x.DeviceJobStatistics.FailedCount += failed
			x.DeviceJobStatistics.RunningCount = 0
		}); err != nil {
			return err
		}
	}
}

// runDevice applies the job to one device and records the outcome; it
// answers the device job's final status ("" when ctx ended first: the
// device job stays as it was, to be resumed).
func (r *jobRun) runDevice(ctx context.Context, dr store.Record) string {
	var dj DeviceJob
	if err := json.Unmarshal(dr.Data, &dj); err != nil {
		return ""
	}
	rec := r.snapshot()
	now := r.j.now().UTC()
	if dj.Status == DeviceJobRunning && rec.Type == JobTypeDeviceMethod {
		// A run stopped while this call was in flight: whether the device
		// got it is unknown, and a method must not be called twice.
		dj.Status, dj.EndTimeUtc, dj.LastUpdatedDateTimeUtc = DeviceJobFailed, now, now
		dj.Error = &DeviceJobFailure{Code: "JobRunInterrupted", Description: interruptedMethodErrorMsg}
		if err := r.putDeviceJob(ctx, dr, &dj); err != nil {
			return ""
		}
		return DeviceJobFailed
	}
	// A twin update interrupted the same way is applied again: a merge
	// patch applied twice leaves the twin as applying it once does.
	dj.Status, dj.LastUpdatedDateTimeUtc = DeviceJobRunning, now
	if dj.StartTimeUtc.IsZero() || dj.StartTimeUtc.Before(rec.StartTime) {
		dj.StartTimeUtc = rec.StartTime
	}
	if err := r.putDeviceJob(ctx, dr, &dj); err != nil {
		return ""
	}
	var opErr error
	switch rec.Type {
	case JobTypeUpdateTwin:
		_, opErr = r.j.twins.Patch(ctx, r.hub, dj.DeviceID, rec.UpdateTwin, twinJobIfMatch(rec.UpdateTwin))
	case JobTypeDeviceMethod:
		m := rec.CloudToDeviceMethod
		resp, conn := m.ResponseTimeoutInSeconds, m.ConnectTimeoutInSeconds
		var res *MethodResult
		res, opErr = r.j.methods.Invoke(ctx, r.hub, dj.DeviceID, &MethodRequest{MethodName: m.MethodName, Payload: m.Payload,
			ResponseTimeoutInSeconds: &resp, ConnectTimeoutInSeconds: &conn})
		dj.Outcome.DeviceMethodResponse = res
	}
	if ctx.Err() != nil {
		return ""
	}
	end := r.j.now().UTC()
	dj.EndTimeUtc, dj.LastUpdatedDateTimeUtc = end, end
	dj.Status = DeviceJobCompleted
	if opErr != nil {
		dj.Status = DeviceJobFailed
		e := azerr.For(opErr, azerr.HubServerError)
		dj.Error = &DeviceJobFailure{Code: e.Code.Name(), Description: e.Message}
	}
	if err := r.putDeviceJob(ctx, dr, &dj); err != nil {
		return ""
	}
	return dj.Status
}

func (r *jobRun) putDeviceJob(ctx context.Context, dr store.Record, dj *DeviceJob) error {
	data, err := json.Marshal(dj)
	if err != nil {
		return err
	}
	dr.Data = data
	if _, err := r.j.store.Put(ctx, dr, store.Cond{}); err != nil {
		if ctx.Err() == nil {
			r.j.log.Error("hub: job: write device job", "key", dr.Key, "error", err.Error())
		}
		return err
	}
	return nil
}

// twinJobIfMatch is the If-Match of a twin job's updateTwin.etag: "*" or
// none applies to every twin.
func twinJobIfMatch(updateTwin json.RawMessage) string {
	var v struct {
		ETag string `json:"etag"`
	}
	_ = json.Unmarshal(updateTwin, &v)
	if e := unquote(v.ETag); e != "*" {
		return e
	}
	return ""
}

// finish ends a cancelled or failed job: the device jobs it did not reach
// are marked cancelled, then the job leaves the runner's index.
func (r *jobRun) finish(ctx context.Context, status, reason string) error {
	rec := r.snapshot()
	index := jobDeviceIndex(r.hub, rec.JobID)
	after := rec.Cursor
	if rec.Phase != "execute" {
		after = ""
	}
	for {
		recs, err := r.j.store.List(ctx, store.KindJobDevice, store.ListOptions{Index: index, After: after, Limit: 256})
		if err != nil {
			return fmt.Errorf("hub: job %s: list device jobs: %w", rec.JobID, err)
		}
		var upd []store.Record
		now := r.j.now().UTC()
		for _, dr := range recs {
			after = dr.Key
			var dj DeviceJob
			if err := json.Unmarshal(dr.Data, &dj); err != nil || dj.Status != DeviceJobScheduled {
				continue
			}
			dj.Status, dj.LastUpdatedDateTimeUtc = DeviceJobCancelled, now
			data, err := json.Marshal(dj)
			if err != nil {
				return err
			}
			dr.Data = data
			upd = append(upd, dr)
		}
		if len(upd) > 0 {
			if _, err := r.j.store.Apply(ctx, upd); err != nil {
				return fmt.Errorf("hub: job %s: cancel device jobs: %w", rec.JobID, err)
			}
		}
		if len(recs) < 256 {
			break
		}
	}
	// The statistics are recounted from the device jobs: a run that
	// stopped mid-batch may have left them behind.
	stats, err := r.recount(ctx, index)
	if err != nil {
		return err
	}
	for {
		err := r.save(ctx, func(n *jobRecord) {
			n.Status, n.Done, n.FailureReason = status, true, reason
			if n.EndTime.IsZero() {
				n.EndTime = r.j.now().UTC()
			}
			n.DeviceJobStatistics = stats
		})
		if !errors.Is(err, errJobCancelled) {
			return err
		}
		// Cancelled while finishing a failed job: cancelled it is.
		status, reason = JobCancelled, ""
	}
}

// recount tallies a job's device jobs.
func (r *jobRun) recount(ctx context.Context, index string) (JobStatistics, error) {
	var s JobStatistics
	after := ""
	for {
		recs, err := r.j.store.List(ctx, store.KindJobDevice, store.ListOptions{Index: index, After: after, Limit: 512})
		if err != nil {
			return s, fmt.Errorf("hub: recount job: %w", err)
		}
		for _, dr := range recs {
			after = dr.Key
			var dj DeviceJob
			if json.Unmarshal(dr.Data, &dj) != nil {
				continue
			}
			s.DeviceCount++
			switch dj.Status {
			case DeviceJobCompleted:
				s.SucceededCount++
			case DeviceJobFailed:
				s.FailedCount++
			}
		}
		if len(recs) < 512 {
			return s, nil
		}
	}
}
