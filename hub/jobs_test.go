package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

// jobEnv is a hub domain on one store whose job runner can be stopped and
// started again, as a berth restart does.
type jobEnv struct {
	st   store.Store
	svc  *hub.Services
	stop func()
}

func newJobEnv(t *testing.T, devices ...string) *jobEnv {
	t.Helper()
	e := &jobEnv{st: memstore.New()}
	// Created before the domain that links devices exists: a device just
	// created revokes any session of its ID for a while, which would close
	// the test's links.
	reg := hub.NewRegistry(e.st, nil)
	for _, id := range devices {
		if _, err := reg.Create(context.Background(), hubName, &hub.Device{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	e.boot(t, hub.JobsConfig{NodeID: "node-a", Poll: 20 * time.Millisecond})
	t.Cleanup(func() { e.stop() })
	return e
}

// boot builds the domain on the env's store and starts its job runner
// (after stopping the previous one, if any).
// before runs once the domain exists and before the runner starts (to
// connect devices to it).
func (e *jobEnv) boot(t *testing.T, cfg hub.JobsConfig, before ...func()) {
	t.Helper()
	if e.stop != nil {
		e.stop()
	}
	e.svc = hub.NewServices(e.st, hub.NewRegistry(e.st, nil), nil, nil, nil)
	e.svc.Jobs.Configure(cfg)
	for _, f := range before {
		f()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.svc.Jobs.Run(ctx)
	}()
	var once sync.Once
	e.stop = func() { once.Do(func() { cancel(); <-done }) }
}

func str(s string) *string { return &s }
func i64(n int64) *int64   { return &n }

// waitJob polls the job until cond holds; the wait is long because the
// machine may be busy, and the test asserts only the state reached.
func waitJob(t *testing.T, j *hub.Jobs, id string, cond func(*hub.Job) bool) *hub.Job {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		job, err := j.Get(context.Background(), hubName, id)
		if err != nil {
			t.Fatal(err)
		}
		if cond(job) {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s never reached the state wanted; last %+v", id, job)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func status(s string) func(*hub.Job) bool { return func(j *hub.Job) bool { return j.Status == s } }

func deviceJobs(t *testing.T, e *jobEnv, where string) map[string]map[string]any {
	t.Helper()
	page, err := e.svc.Twins.Query(context.Background(), hubName, "SELECT * FROM devices.jobs "+where, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]any{}
	for _, it := range page.Items {
		m := it.(map[string]any)
		out[m["deviceId"].(string)] = m
	}
	return out
}

func TestJobTwinUpdate(t *testing.T) {
	e := newJobEnv(t, "d1", "d2", "d3")
	ctx := context.Background()
	for _, id := range []string{"d1", "d3"} {
		if _, err := e.svc.Twins.Patch(ctx, hubName, id, []byte(`{"tags":{"floor":2}}`), "*"); err != nil {
			t.Fatal(err)
		}
	}
	job, err := e.svc.Jobs.Create(ctx, hubName, "job-1", &hub.JobRequest{
		Type: hub.JobTypeUpdateTwin, QueryCondition: "tags.floor = 2",
		UpdateTwin: json.RawMessage(`{"etag":"*","tags":{"done":true},"properties":{"desired":{"fw":"2.0"},"reported":{}}}`),
		StartTime:  str(time.Now().UTC().Format(time.RFC3339Nano)), MaxExecutionTimeInSeconds: i64(120),
	})
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != hub.JobQueued || job.Type != hub.JobTypeUpdateTwin || job.JobID != "job-1" {
		t.Fatalf("created job = %+v, want queued", job)
	}
	job = waitJob(t, e.svc.Jobs, "job-1", status(hub.JobCompleted))
	want := hub.JobStatistics{DeviceCount: 2, SucceededCount: 2}
	if job.DeviceJobStatistics != want || job.EndTime.IsZero() {
		t.Fatalf("completed job = %+v, want statistics %+v and an end time", job, want)
	}
	for id, updated := range map[string]bool{"d1": true, "d2": false, "d3": true} {
		tw, err := e.svc.Twins.Get(ctx, hubName, id)
		if err != nil {
			t.Fatal(err)
		}
		got := string(tw.Properties.Desired)
		if has := tw.Tags != nil && string(tw.Tags) != "{}" && json.Valid(tw.Tags) && containsJSON(tw.Tags, `"done":true`); has != updated {
			t.Errorf("%s tags %s: updated %v, want %v", id, tw.Tags, has, updated)
		}
		if has := containsJSON(tw.Properties.Desired, `"fw":"2.0"`); has != updated {
			t.Errorf("%s desired %s: updated %v, want %v", id, got, has, updated)
		}
	}
	dj := deviceJobs(t, e, "WHERE devices.jobs.jobId = 'job-1'")
	if len(dj) != 2 || dj["d1"]["status"] != "completed" || dj["d3"]["status"] != "completed" || dj["d1"]["jobType"] != hub.JobTypeUpdateTwin {
		t.Fatalf("devices.jobs = %v", dj)
	}
	if o, ok := dj["d1"]["outcome"].(map[string]any); !ok || o["deviceMethodResponse"] != nil {
		t.Errorf("twin job outcome = %v, want {deviceMethodResponse: null}", dj["d1"]["outcome"])
	}
}

func containsJSON(raw json.RawMessage, s string) bool {
	return json.Valid(raw) && len(raw) > 0 && contains(string(raw), s)
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// methodDevice attaches a device link that answers methods with fn and
// counts the calls.
type methodDevice struct {
	mu    sync.Mutex
	calls int
}

func (m *methodDevice) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls
}

func attachMethodDevice(t *testing.T, e *jobEnv, id string, fn func(ctx context.Context, payload []byte) (int, []byte, error)) *methodDevice {
	t.Helper()
	md := &methodDevice{}
	l := &fakeLink{subscribed: true, invoke: func(ctx context.Context, _ string, payload []byte) (int, []byte, error) {
		md.mu.Lock()
		md.calls++
		md.mu.Unlock()
		return fn(ctx, payload)
	}}
	t.Cleanup(attachLink(e.svc.Links, hubName, id, l))
	return md
}

func TestJobDeviceMethod(t *testing.T) {
	e := newJobEnv(t, "m1", "m2", "m3")
	ctx := context.Background()
	a := attachMethodDevice(t, e, "m1", func(_ context.Context, p []byte) (int, []byte, error) {
		return 200, []byte(fmt.Sprintf(`{"echo":%s}`, p)), nil
	})
	b := attachMethodDevice(t, e, "m2", func(context.Context, []byte) (int, []byte, error) {
		return 500, []byte(`{"error":"no"}`), nil
	})
	// m3 is not connected: its part fails with DeviceNotOnline.
	_, err := e.svc.Jobs.Create(ctx, hubName, "reboot-all", &hub.JobRequest{
		Type: hub.JobTypeDeviceMethod, QueryCondition: "STARTSWITH(deviceId, 'm')",
		CloudToDeviceMethod: &hub.JobMethod{MethodName: "reboot", Payload: json.RawMessage(`{"delay":1}`), ResponseTimeoutInSeconds: 10},
	})
	if err != nil {
		t.Fatal(err)
	}
	job := waitJob(t, e.svc.Jobs, "reboot-all", status(hub.JobCompleted))
	want := hub.JobStatistics{DeviceCount: 3, SucceededCount: 2, FailedCount: 1}
	if job.DeviceJobStatistics != want {
		t.Fatalf("statistics %+v, want %+v", job.DeviceJobStatistics, want)
	}
	if a.count() != 1 || b.count() != 1 {
		t.Errorf("calls m1 %d m2 %d, want one each", a.count(), b.count())
	}
	dj := deviceJobs(t, e, "")
	resp := dj["m1"]["outcome"].(map[string]any)["deviceMethodResponse"].(map[string]any)
	if resp["status"] != float64(200) || resp["payload"].(map[string]any)["echo"].(map[string]any)["delay"] != float64(1) {
		t.Errorf("m1 outcome = %v", resp)
	}
	if dj["m2"]["status"] != "completed" {
		t.Errorf("m2 (device answered 500) = %v, want completed: the call succeeded", dj["m2"])
	}
	if dj["m3"]["status"] != "failed" || dj["m3"]["error"].(map[string]any)["code"] != "DeviceNotOnline" {
		t.Errorf("m3 = %v, want failed DeviceNotOnline", dj["m3"])
	}
	// Job queries: type and status filters.
	page, err := e.svc.Jobs.List(ctx, hubName, hub.JobTypeDeviceMethod, hub.JobCompleted, 0, "")
	if err != nil || len(page.Jobs) != 1 || page.Jobs[0].JobID != "reboot-all" {
		t.Fatalf("List = %+v, %v", page, err)
	}
	page, err = e.svc.Jobs.List(ctx, hubName, hub.JobTypeUpdateTwin, "", 0, "")
	if err != nil || len(page.Jobs) != 0 {
		t.Fatalf("List of twin jobs = %+v, %v", page, err)
	}
}

func TestJobScheduledThenCancelled(t *testing.T) {
	e := newJobEnv(t, "s1")
	ctx := context.Background()
	start := time.Now().Add(time.Hour).UTC()
	job, err := e.svc.Jobs.Create(ctx, hubName, "later", &hub.JobRequest{
		Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 's1'", UpdateTwin: json.RawMessage(`{"tags":{"x":1}}`),
		StartTime: str(start.Format(time.RFC3339Nano)),
	})
	if err != nil || job.Status != hub.JobQueued || !job.StartTime.Equal(start) {
		t.Fatalf("create = %+v, %v", job, err)
	}
	waitJob(t, e.svc.Jobs, "later", status(hub.JobScheduled))
	job, err = e.svc.Jobs.Cancel(ctx, hubName, "later")
	if err != nil || job.Status != hub.JobCancelled {
		t.Fatalf("cancel = %+v, %v", job, err)
	}
	// Cancelling again answers the job as it is.
	if job, err = e.svc.Jobs.Cancel(ctx, hubName, "later"); err != nil || job.Status != hub.JobCancelled {
		t.Fatalf("second cancel = %+v, %v", job, err)
	}
	tw, err := e.svc.Twins.Get(ctx, hubName, "s1")
	if err != nil || containsJSON(tw.Tags, `"x"`) {
		t.Fatalf("a cancelled job touched the twin: %s, %v", tw.Tags, err)
	}
	if _, err := e.svc.Jobs.Cancel(ctx, hubName, "nope"); code(err) != azerr.HubJobNotFound {
		t.Errorf("cancel of an unknown job: %v, want JobNotFound", err)
	}
	if _, err := e.svc.Jobs.Get(ctx, hubName, "nope"); code(err) != azerr.HubJobNotFound {
		t.Errorf("get of an unknown job: %v, want JobNotFound", err)
	}
}

func TestJobRefused(t *testing.T) {
	e := newJobEnv(t)
	ctx := context.Background()
	twin := json.RawMessage(`{"tags":{"a":1}}`)
	cases := []struct {
		name string
		id   string
		req  hub.JobRequest
		want azerr.Code
	}{
		{"bad id", "no/slash", hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'", UpdateTwin: twin}, azerr.HubArgumentInvalid},
		{"long id", string(make([]byte, 65)), hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'", UpdateTwin: twin}, azerr.HubArgumentInvalid},
		{"unknown type", "j", hub.JobRequest{Type: "export", QueryCondition: "deviceId = 'a'"}, azerr.HubArgumentInvalid},
		{"no type", "j", hub.JobRequest{QueryCondition: "deviceId = 'a'"}, azerr.HubArgumentNull},
		{"no condition", "j", hub.JobRequest{Type: hub.JobTypeUpdateTwin, UpdateTwin: twin}, azerr.HubArgumentNull},
		{"bad condition", "j", hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId =", UpdateTwin: twin}, azerr.HubArgumentInvalid},
		{"no patch", "j", hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'"}, azerr.HubArgumentNull},
		{"patch not an object", "j", hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'", UpdateTwin: json.RawMessage(`[1]`)}, azerr.HubArgumentInvalid},
		{"no method", "j", hub.JobRequest{Type: hub.JobTypeDeviceMethod, QueryCondition: "deviceId = 'a'"}, azerr.HubArgumentNull},
		{"bad method name", "j", hub.JobRequest{Type: hub.JobTypeDeviceMethod, QueryCondition: "deviceId = 'a'", CloudToDeviceMethod: &hub.JobMethod{MethodName: "a$b"}}, azerr.HubArgumentInvalid},
		{"method timeout", "j", hub.JobRequest{Type: hub.JobTypeDeviceMethod, QueryCondition: "deviceId = 'a'", CloudToDeviceMethod: &hub.JobMethod{MethodName: "m", ResponseTimeoutInSeconds: 301}}, azerr.HubArgumentInvalid},
		{"bad start", "j", hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'", UpdateTwin: twin, StartTime: str("tomorrow")}, azerr.HubArgumentInvalid},
		{"bad max time", "j", hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'", UpdateTwin: twin, MaxExecutionTimeInSeconds: i64(0)}, azerr.HubArgumentInvalid},
		{"id mismatch", "j", hub.JobRequest{JobID: "k", Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'", UpdateTwin: twin}, azerr.HubArgumentInvalid},
	}
	for _, c := range cases {
		if _, err := e.svc.Jobs.Create(ctx, hubName, c.id, &c.req); code(err) != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	ok := hub.JobRequest{Type: hub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'", UpdateTwin: twin}
	if _, err := e.svc.Jobs.Create(ctx, hubName, "twice", &ok); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Jobs.Create(ctx, hubName, "twice", &ok); code(err) != azerr.HubArgumentInvalid {
		t.Errorf("a second job of one ID: %v, want ArgumentInvalid", err)
	}
}

// TestJobResumesWithoutCallingTwice stops the runner while a method call
// is in flight, as a berth stopping does, and starts it again: the device
// whose call was interrupted is reported failed and never called again,
// the devices already done are not called again, and the rest run.
func TestJobResumesWithoutCallingTwice(t *testing.T) {
	e := newJobEnv(t, "r1", "r2", "r3")
	e.boot(t, hub.JobsConfig{NodeID: "node-a", Poll: 20 * time.Millisecond, DeviceBatch: 1})
	ctx := context.Background()
	inFlight := make(chan struct{}, 1)
	answer := func(context.Context, []byte) (int, []byte, error) { return 200, []byte(`{}`), nil }
	r1 := attachMethodDevice(t, e, "r1", answer)
	r2 := attachMethodDevice(t, e, "r2", func(ctx context.Context, _ []byte) (int, []byte, error) {
		inFlight <- struct{}{}
		<-ctx.Done() // never answers before the stop
		return 0, nil, ctx.Err()
	})
	r3 := attachMethodDevice(t, e, "r3", answer)
	if _, err := e.svc.Jobs.Create(ctx, hubName, "resume", &hub.JobRequest{
		Type: hub.JobTypeDeviceMethod, QueryCondition: "deviceId IN ['r1', 'r2', 'r3']",
		CloudToDeviceMethod: &hub.JobMethod{MethodName: "m", ResponseTimeoutInSeconds: 60},
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inFlight:
	case <-time.After(30 * time.Second):
		t.Fatal("r2's call never started")
	}
	e.stop() // berth stops with r2's call in flight
	// The devices connect again to the restarted berth.
	var r1b, r2b, r3b *methodDevice
	e.boot(t, hub.JobsConfig{NodeID: "node-a", Poll: 20 * time.Millisecond, DeviceBatch: 1}, func() {
		r1b, r2b, r3b = attachMethodDevice(t, e, "r1", answer), attachMethodDevice(t, e, "r2", answer), attachMethodDevice(t, e, "r3", answer)
	})
	job := waitJob(t, e.svc.Jobs, "resume", status(hub.JobCompleted))
	want := hub.JobStatistics{DeviceCount: 3, SucceededCount: 2, FailedCount: 1}
	if job.DeviceJobStatistics != want {
		t.Fatalf("statistics %+v, want %+v", job.DeviceJobStatistics, want)
	}
	if n := r1.count() + r1b.count(); n != 1 {
		t.Errorf("r1 called %d times, want 1", n)
	}
	if n := r2.count() + r2b.count(); n != 1 {
		t.Errorf("r2 called %d times, want 1 (the interrupted call is not repeated)", n)
	}
	if n := r3.count() + r3b.count(); n != 1 {
		t.Errorf("r3 called %d times, want 1", n)
	}
	dj := deviceJobs(t, e, "")
	if dj["r2"]["status"] != "failed" || dj["r2"]["error"].(map[string]any)["code"] != "JobRunInterrupted" {
		t.Errorf("r2 = %v, want failed JobRunInterrupted", dj["r2"])
	}
}

// TestJobLeaseHeldByAnotherNode: a job whose node stopped mid-call is
// taken over by another node once its lease runs out.
func TestJobLeaseHeldByAnotherNode(t *testing.T) {
	e := newJobEnv(t, "l1")
	ctx := context.Background()
	// Node b claims the job and dies at once (its lease: 300 ms).
	e.boot(t, hub.JobsConfig{NodeID: "node-b", Poll: 10 * time.Millisecond, Lease: 300 * time.Millisecond})
	block := make(chan struct{})
	started := make(chan struct{}, 1)
	attachMethodDevice(t, e, "l1", func(ctx context.Context, _ []byte) (int, []byte, error) {
		started <- struct{}{}
		select {
		case <-block:
		case <-ctx.Done():
		}
		return 200, []byte(`{}`), nil
	})
	if _, err := e.svc.Jobs.Create(ctx, hubName, "lease", &hub.JobRequest{
		Type: hub.JobTypeDeviceMethod, QueryCondition: "deviceId = 'l1'",
		CloudToDeviceMethod: &hub.JobMethod{MethodName: "m", ResponseTimeoutInSeconds: 60},
	}); err != nil {
		t.Fatal(err)
	}
	<-started
	e.stop()
	close(block)
	// Node a takes over after the lease: the interrupted call is failed.
	e.boot(t, hub.JobsConfig{NodeID: "node-a", Poll: 10 * time.Millisecond, Lease: 300 * time.Millisecond})
	job := waitJob(t, e.svc.Jobs, "lease", status(hub.JobCompleted))
	if job.DeviceJobStatistics.FailedCount != 1 {
		t.Fatalf("statistics %+v, want the interrupted device failed", job.DeviceJobStatistics)
	}
}

// TestJobPastItsMaximumTime: a job still running at its start time plus
// its maximum execution time fails; the devices it did not reach are
// cancelled.
func TestJobPastItsMaximumTime(t *testing.T) {
	e := newJobEnv(t, "x1", "x2")
	e.boot(t, hub.JobsConfig{NodeID: "node-a", Poll: 20 * time.Millisecond, DeviceBatch: 1})
	ctx := context.Background()
	slow := func(ctx context.Context, _ []byte) (int, []byte, error) {
		select {
		case <-time.After(1500 * time.Millisecond):
		case <-ctx.Done():
		}
		return 200, []byte(`{}`), nil
	}
	attachMethodDevice(t, e, "x1", slow)
	attachMethodDevice(t, e, "x2", slow)
	if _, err := e.svc.Jobs.Create(ctx, hubName, "short", &hub.JobRequest{
		Type: hub.JobTypeDeviceMethod, QueryCondition: "STARTSWITH(deviceId, 'x')", MaxExecutionTimeInSeconds: i64(1),
		CloudToDeviceMethod: &hub.JobMethod{MethodName: "m", ResponseTimeoutInSeconds: 60},
	}); err != nil {
		t.Fatal(err)
	}
	job := waitJob(t, e.svc.Jobs, "short", func(j *hub.Job) bool { return j.Status == hub.JobFailed || j.Status == hub.JobCompleted })
	if job.Status != hub.JobFailed || job.FailureReason == "" {
		t.Fatalf("job = %+v, want failed with a reason", job)
	}
	dj := deviceJobs(t, e, "")
	if dj["x1"]["status"] != "completed" || dj["x2"]["status"] != "cancelled" {
		t.Errorf("device jobs x1 %v x2 %v, want completed and cancelled", dj["x1"]["status"], dj["x2"]["status"])
	}
}

// Finished jobs are deleted, with their device jobs, once they ended
// longer ago than the retention (IoT Hub's 30 days by default); a job
// not finished, a job that ended within it, and an import or export job
// that ended within it stay. A job ID is free again once its job is
// gone. Only the node holding the sweep's lease sweeps.
func TestJobRetention(t *testing.T) {
	ctx := context.Background()
	var (
		mu     sync.Mutex
		offset time.Duration
	)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return time.Now().Add(offset)
	}
	advance := func(d time.Duration) {
		mu.Lock()
		offset += d
		mu.Unlock()
	}
	st := memstore.New()
	reg := hub.NewRegistry(st, clock)
	for _, id := range []string{"d1", "d2"} {
		if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	svc := hub.NewServices(st, reg, nil, clock, nil)
	svc.Jobs.Configure(hub.JobsConfig{NodeID: "node-a", Poll: 20 * time.Millisecond})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); svc.Jobs.Run(rctx) }()
	defer func() { cancel(); <-done }()

	twinJob := func(id string, start time.Time) {
		t.Helper()
		if _, err := svc.Jobs.Create(ctx, hubName, id, &hub.JobRequest{
			Type: hub.JobTypeUpdateTwin, QueryCondition: "status = 'enabled'",
			UpdateTwin: json.RawMessage(`{"etag":"*","tags":{"job":"` + id + `"}}`),
			StartTime:  str(start.UTC().Format(time.RFC3339Nano)),
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Export job records that end 30.5 and 10 days before the last sweep.
	ie := func(id string, ended time.Time) {
		data := fmt.Sprintf(`{"jobId":%q,"type":"export","status":"completed","startTimeUtc":%q,"endTimeUtc":%q,"outputBlobContainerUri":"file:///x","hub":%q}`,
			id, ended.Format(time.RFC3339Nano), ended.Format(time.RFC3339Nano), hubName)
		if _, err := st.Put(ctx, store.Record{Kind: store.KindImportExport, Key: strings.ToLower(hubName) + "/" + id, Data: []byte(data)}, store.Cond{}); err != nil {
			t.Fatal(err)
		}
	}
	ie("export-old", clock().Add(12*time.Hour))
	ie("export-new", clock().Add(21*24*time.Hour))

	twinJob("old", clock())
	waitJob(t, svc.Jobs, "old", status(hub.JobCompleted))
	twinJob("later", clock().Add(100*24*time.Hour)) // scheduled, not finished
	waitJob(t, svc.Jobs, "later", status(hub.JobScheduled))

	advance(29 * 24 * time.Hour)
	if n, err := svc.Jobs.ExpireJobs(ctx); err != nil || n != 0 {
		t.Fatalf("after 29 days: expired %d, %v; want none", n, err)
	}
	twinJob("recent", clock())
	waitJob(t, svc.Jobs, "recent", status(hub.JobCompleted))

	// Another node holds the sweep: this one leaves it to it.
	lease := store.Record{Kind: store.KindConfig, Key: "jobs/retention-lease",
		Data: []byte(fmt.Sprintf(`{"owner":"node-b","until":%q}`, clock().Add(49*time.Hour).Format(time.RFC3339Nano)))}
	if _, err := st.Put(ctx, lease, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	advance(2 * 24 * time.Hour) // "old" ended 31 days ago
	if n, err := svc.Jobs.ExpireJobs(ctx); err != nil || n != 0 {
		t.Fatalf("while node-b holds the sweep: expired %d, %v; want none", n, err)
	}
	advance(2 * time.Hour) // node-b's lease has run out
	if n, err := svc.Jobs.ExpireJobs(ctx); err != nil || n != 2 {
		t.Fatalf("after 31 days: expired %d, %v; want the old job and the old export job", n, err)
	}
	if _, err := svc.Jobs.Get(ctx, hubName, "old"); code(err) != azerr.HubJobNotFound {
		t.Errorf("old job: %v; want JobNotFound", err)
	}
	if _, err := svc.ImportExport.Get(ctx, hubName, "export-old"); err == nil {
		t.Errorf("the old export job is still there")
	}
	for _, id := range []string{"recent", "later"} {
		if _, err := svc.Jobs.Get(ctx, hubName, id); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	if _, err := svc.ImportExport.Get(ctx, hubName, "export-new"); err != nil {
		t.Errorf("export-new: %v", err)
	}
	env := &jobEnv{st: st, svc: svc}
	if dj := deviceJobs(t, env, "WHERE devices.jobs.jobId = 'old'"); len(dj) != 0 {
		t.Errorf("devices.jobs of the deleted job: %v", dj)
	}
	if dj := deviceJobs(t, env, "WHERE devices.jobs.jobId = 'recent'"); len(dj) != 2 {
		t.Errorf("devices.jobs of the recent job: %v", dj)
	}
	twinJob("old", clock()) // the ID is free again
	waitJob(t, svc.Jobs, "old", status(hub.JobCompleted))

	// Kept for ever with a negative retention (configured, as always,
	// before the runner runs).
	cancel()
	<-done
	svc.Jobs.Configure(hub.JobsConfig{NodeID: "node-a", Retention: -1})
	advance(365 * 24 * time.Hour)
	if n, err := svc.Jobs.ExpireJobs(ctx); err != nil || n != 0 {
		t.Fatalf("retention off: expired %d, %v", n, err)
	}
}
