package hub

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// Import and export jobs (POST /jobs/create, docs/hub-jobs.md#import-and-export):
// the registry written to, or read from, a blob container.
const (
	ImportExportExport = "export"
	ImportExportImport = "import"

	// Their statuses, as IoT Hub's JobProperties shows them.
	IEEnqueued  = "enqueued"
	IERunning   = "running"
	IECompleted = "completed"
	IEFailed    = "failed"
	IECancelled = "cancelled"

	// The blobs, named as IoT Hub names them.
	DevicesBlob      = "devices.txt"
	ImportErrorsBlob = "importErrors.log"

	// MaxImportLine bounds one line of devices.txt.
	MaxImportLine = 1 << 20
)

// BlobContainer is a blob container of an import or export job.
type BlobContainer interface {
	Read(ctx context.Context, name string) (io.ReadCloser, error)
	Write(ctx context.Context, name string, data []byte) error
}

// BlobOpener opens a container URI, or says why berth does not take it.
type BlobOpener func(uri string) (BlobContainer, error)

// ImportExportJob is IoT Hub's JobProperties.
type ImportExportJob struct {
	JobID                     string    `json:"jobId"`
	Type                      string    `json:"type"`
	Status                    string    `json:"status"`
	Progress                  int       `json:"progress"`
	StartTimeUtc              time.Time `json:"startTimeUtc"`
	EndTimeUtc                time.Time `json:"endTimeUtc,omitzero"`
	InputBlobContainerURI     string    `json:"inputBlobContainerUri,omitempty"`
	OutputBlobContainerURI    string    `json:"outputBlobContainerUri"`
	ExcludeKeysInExport       bool      `json:"excludeKeysInExport"`
	StorageAuthenticationType string    `json:"storageAuthenticationType,omitempty"`
	FailureReason             string    `json:"failureReason,omitempty"`
}

// ImportExportRequest is the body of POST /jobs/create.
type ImportExportRequest struct {
	Type                      string `json:"type"`
	InputBlobContainerURI     string `json:"inputBlobContainerUri"`
	OutputBlobContainerURI    string `json:"outputBlobContainerUri"`
	ExcludeKeysInExport       bool   `json:"excludeKeysInExport"`
	StorageAuthenticationType string `json:"storageAuthenticationType"`
}

// ieRecord is an import or export job as stored: the job and the node
// running it, whose claim holds until LeaseUntil unless renewed.
type ieRecord struct {
	ImportExportJob
	Hub        string    `json:"hub"`
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"leaseUntil,omitzero"`
}

func (r *ieRecord) done() bool {
	return r.Status == IECompleted || r.Status == IEFailed || r.Status == IECancelled
}

func (r *ieRecord) encode(key string) (store.Record, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return store.Record{}, fmt.Errorf("hub: encode import/export job: %w", err)
	}
	idx := ""
	if !r.done() {
		idx = jobRunIndex
	}
	return store.Record{Kind: store.KindImportExport, Key: key, Index: idx, Data: data}, nil
}

// ImportExport runs import and export jobs, one at a time per node, as IoT
// Hub runs one per hub. A job is not resumed after a restart: one found
// running with its lease run out is failed, and can be created again.
type ImportExport struct {
	store  store.Store
	reg    *Registry
	twins  *Twins
	now    func() time.Time
	log    *slog.Logger
	node   string
	lease  time.Duration
	poll   time.Duration
	wake   chan struct{}
	mu     sync.Mutex
	blobs  BlobOpener
	active bool
}

// NewImportExport returns the import/export job service; SetBlobs must
// name where containers are before a job can be created.
func NewImportExport(st store.Store, reg *Registry, twins *Twins, log *slog.Logger) *ImportExport {
	if log == nil {
		log = slog.Default()
	}
	return &ImportExport{store: st, reg: reg, twins: twins, now: reg.now, log: log, node: newKey()[:16],
		lease: defaultJobLease, poll: defaultJobPoll, wake: make(chan struct{}, 1)}
}

// SetBlobs sets how container URIs are opened, and this node's ID (as
// JobsConfig.NodeID); call it before Run.
func (ie *ImportExport) SetBlobs(open BlobOpener, nodeID string) {
	ie.mu.Lock()
	defer ie.mu.Unlock()
	ie.blobs = open
	if nodeID != "" {
		ie.node = nodeID
	}
}

func (ie *ImportExport) opener() BlobOpener {
	ie.mu.Lock()
	defer ie.mu.Unlock()
	return ie.blobs
}

func ieKey(hubName, id string) string { return strings.ToLower(hubName) + "/" + id }

// Create accepts an import or export job (POST /jobs/create): its
// containers must open; the job is answered enqueued and runs in Run.
func (ie *ImportExport) Create(ctx context.Context, hubName string, req *ImportExportRequest) (*ImportExportJob, error) {
	open := ie.opener()
	if open == nil {
		return nil, azerr.Newf(azerr.HubServiceUnavailable, "Import and export jobs are not enabled on this berth.")
	}
	if a := req.StorageAuthenticationType; a != "" && !strings.EqualFold(a, "keyBased") {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "storageAuthenticationType %q is not supported: berth reaches containers by their URI (keyBased).", clipKey(a))
	}
	check := func(what, uri string) error {
		if strings.TrimSpace(uri) == "" {
			return azerr.Newf(azerr.HubArgumentNull, "%s is missing.", what)
		}
		if _, err := open(uri); err != nil {
			return azerr.Newf(azerr.HubArgumentInvalid, "%s: %v", what, err)
		}
		return nil
	}
	switch req.Type {
	case ImportExportExport:
		if err := check("outputBlobContainerUri", req.OutputBlobContainerURI); err != nil {
			return nil, err
		}
	case ImportExportImport:
		if err := check("inputBlobContainerUri", req.InputBlobContainerURI); err != nil {
			return nil, err
		}
		if err := check("outputBlobContainerUri", req.OutputBlobContainerURI); err != nil {
			return nil, err
		}
	case "":
		return nil, azerr.Newf(azerr.HubArgumentNull, "The job type is missing.")
	default:
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The job type '%s' is not an import or export job; %s and %s jobs are created with PUT /jobs/v2/{id}.", clipKey(req.Type), JobTypeUpdateTwin, JobTypeDeviceMethod)
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	h := hex.EncodeToString(id[:])
	rec := &ieRecord{Hub: strings.ToLower(hubName), ImportExportJob: ImportExportJob{
		JobID: h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], Type: req.Type, Status: IEEnqueued,
		StartTimeUtc: ie.now().UTC(), InputBlobContainerURI: req.InputBlobContainerURI, OutputBlobContainerURI: req.OutputBlobContainerURI,
		ExcludeKeysInExport: req.ExcludeKeysInExport, StorageAuthenticationType: req.StorageAuthenticationType,
	}}
	sr, err := rec.encode(ieKey(hubName, rec.JobID))
	if err != nil {
		return nil, err
	}
	if _, err := ie.store.Put(ctx, sr, store.Cond{IfNotExists: true}); err != nil {
		return nil, fmt.Errorf("hub: create import/export job: %w", err)
	}
	select {
	case ie.wake <- struct{}{}:
	default:
	}
	job := rec.ImportExportJob
	return &job, nil
}

func (ie *ImportExport) load(ctx context.Context, hubName, id string) (*ieRecord, string, error) {
	rec, err := ie.store.Get(ctx, store.KindImportExport, ieKey(hubName, id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", azerr.Newf(azerr.HubJobNotFound, "Job %s was not found.", clipKey(id))
	}
	if err != nil {
		return nil, "", fmt.Errorf("hub: get import/export job: %w", err)
	}
	var r ieRecord
	if err := json.Unmarshal(rec.Data, &r); err != nil {
		return nil, "", fmt.Errorf("hub: decode import/export job: %w", err)
	}
	return &r, rec.ETag, nil
}

// Get answers an import or export job (GET /jobs/{id}).
func (ie *ImportExport) Get(ctx context.Context, hubName, id string) (*ImportExportJob, error) {
	r, _, err := ie.load(ctx, hubName, id)
	if err != nil {
		return nil, err
	}
	return &r.ImportExportJob, nil
}

// List answers the hub's import and export jobs (GET /jobs).
func (ie *ImportExport) List(ctx context.Context, hubName string) ([]ImportExportJob, error) {
	prefix := strings.ToLower(hubName) + "/"
	out := []ImportExportJob{}
	after := prefix
	for {
		recs, err := ie.store.List(ctx, store.KindImportExport, store.ListOptions{After: after, Limit: 256})
		if err != nil {
			return nil, fmt.Errorf("hub: list import/export jobs: %w", err)
		}
		for _, rec := range recs {
			if !strings.HasPrefix(rec.Key, prefix) {
				return out, nil
			}
			after = rec.Key
			var r ieRecord
			if err := json.Unmarshal(rec.Data, &r); err != nil {
				return nil, fmt.Errorf("hub: decode import/export job: %w", err)
			}
			out = append(out, r.ImportExportJob)
		}
		if len(recs) < 256 {
			return out, nil
		}
	}
}

// Cancel cancels an import or export job that has not finished (DELETE
// /jobs/{id}); a running one stops at its next device.
func (ie *ImportExport) Cancel(ctx context.Context, hubName, id string) (*ImportExportJob, error) {
	for range 10 {
		r, etag, err := ie.load(ctx, hubName, id)
		if err != nil {
			return nil, err
		}
		if r.done() {
			return &r.ImportExportJob, nil
		}
		r.Status, r.EndTimeUtc = IECancelled, ie.now().UTC()
		rec, err := r.encode(ieKey(hubName, id))
		if err != nil {
			return nil, err
		}
		if _, err := ie.store.Put(ctx, rec, store.Cond{IfMatch: etag}); errors.Is(err, store.ErrPreconditionFailed) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("hub: cancel import/export job: %w", err)
		}
		return &r.ImportExportJob, nil
	}
	return nil, azerr.Newf(azerr.HubServiceUnavailable, "Job %s is changing too often to cancel; try again.", id)
}

// Run runs enqueued import and export jobs until ctx ends.
func (ie *ImportExport) Run(ctx context.Context) {
	t := time.NewTicker(ie.poll)
	defer t.Stop()
	for {
		ie.sweep(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-ie.wake:
		}
	}
}

// sweep runs the first enqueued job (to its end), and fails a running
// job whose node let its lease run out.
func (ie *ImportExport) sweep(ctx context.Context) {
	recs, err := ie.store.List(ctx, store.KindImportExport, store.ListOptions{Index: jobRunIndex, Limit: 100})
	if err != nil {
		if ctx.Err() == nil {
			ie.log.Error("hub: import/export jobs: list", "error", err.Error())
		}
		return
	}
	for _, rec := range recs {
		var r ieRecord
		if err := json.Unmarshal(rec.Data, &r); err != nil {
			continue
		}
		now := ie.now().UTC()
		if r.Status == IERunning && (r.Owner == ie.node || now.After(r.LeaseUntil)) {
			// This node restarted during it, or its node is gone.
			r.Status, r.EndTimeUtc, r.FailureReason = IEFailed, now, "berth stopped while the job ran; create it again."
			if nr, err := r.encode(rec.Key); err == nil {
				_, _ = ie.store.Put(ctx, nr, store.Cond{IfMatch: rec.ETag})
			}
			continue
		}
		if r.Status != IEEnqueued {
			continue
		}
		r.Status, r.Owner, r.LeaseUntil = IERunning, ie.node, now.Add(ie.lease)
		nr, err := r.encode(rec.Key)
		if err != nil {
			continue
		}
		if nr, err = ie.store.Put(ctx, nr, store.Cond{IfMatch: rec.ETag}); err != nil {
			continue // another node took it, or it was cancelled
		}
		run := &ieRun{ie: ie, key: rec.Key, rec: &r, etag: nr.ETag}
		run.execute(ctx)
		return // one at a time
	}
}

var errIECancelled = errors.New("hub: import/export job cancelled")

type ieRun struct {
	ie   *ImportExport
	key  string
	rec  *ieRecord
	etag string
	last time.Time // of the last save
}

// save writes the job with change applied, renewing the lease; a job
// cancelled meanwhile is errIECancelled.
func (r *ieRun) save(ctx context.Context, change func(*ieRecord)) error {
	next := *r.rec
	change(&next)
	now := r.ie.now().UTC()
	next.LeaseUntil = now.Add(r.ie.lease)
	rec, err := next.encode(r.key)
	if err != nil {
		return err
	}
	rec, err = r.ie.store.Put(ctx, rec, store.Cond{IfMatch: r.etag})
	if errors.Is(err, store.ErrPreconditionFailed) {
		return errIECancelled // only a cancel writes a running job
	}
	if err != nil {
		return fmt.Errorf("hub: import/export job: save: %w", err)
	}
	r.rec, r.etag, r.last = &next, rec.ETag, now
	return nil
}

// progress saves the progress now and then (each save renews the lease).
func (r *ieRun) progress(ctx context.Context, pct int) error {
	if r.ie.now().Sub(r.last) < r.ie.lease/3 {
		return nil
	}
	return r.save(ctx, func(n *ieRecord) { n.Progress = min(pct, 99) })
}

func (r *ieRun) execute(ctx context.Context) {
	r.last = r.ie.now()
	var err error
	switch r.rec.Type {
	case ImportExportExport:
		err = r.export(ctx)
	case ImportExportImport:
		err = r.importDevices(ctx)
	default:
		err = fmt.Errorf("unknown job type %q", r.rec.Type)
	}
	if ctx.Err() != nil || errors.Is(err, errIECancelled) {
		return // a restart fails it; a cancel already ended it
	}
	end := r.ie.now().UTC()
	if err != nil {
		r.ie.log.Warn("hub: import/export job failed", "job", r.rec.JobID, "error", err.Error())
		_ = r.save(ctx, func(n *ieRecord) { n.Status, n.EndTimeUtc, n.FailureReason = IEFailed, end, err.Error() })
		return
	}
	_ = r.save(ctx, func(n *ieRecord) { n.Status, n.EndTimeUtc, n.Progress = IECompleted, end, 100 })
}

func (r *ieRun) container(uri string) (BlobContainer, error) {
	open := r.ie.opener()
	if open == nil {
		return nil, errors.New("import and export jobs are not enabled")
	}
	return open(uri)
}

// exportDevice is one line of devices.txt: IoT Hub's ExportImportDevice.
type exportDevice struct {
	ID             string          `json:"id"`
	ETag           string          `json:"eTag"`
	Status         string          `json:"status"`
	StatusReason   *string         `json:"statusReason"`
	Authentication *Authentication `json:"authentication"`
	TwinETag       string          `json:"twinETag,omitempty"`
	Tags           json.RawMessage `json:"tags,omitempty"`
	Properties     *struct {
		Desired  json.RawMessage `json:"desired,omitempty"`
		Reported json.RawMessage `json:"reported,omitempty"`
	} `json:"properties,omitempty"`
	Capabilities *Capabilities `json:"capabilities,omitempty"`
	DeviceScope  *string       `json:"deviceScope,omitempty"`
	ParentScopes []string      `json:"parentScopes,omitempty"`
}

// export writes every device of the hub, with its twin, to devices.txt in
// the output container, in one write (a reader never sees a partial
// export).
func (r *ieRun) export(ctx context.Context) error {
	c, err := r.container(r.rec.OutputBlobContainerURI)
	if err != nil {
		return err
	}
	total, err := r.ie.store.Count(ctx, store.KindDevice, r.rec.Hub)
	if err != nil {
		return fmt.Errorf("count devices: %w", err)
	}
	var buf bytes.Buffer
	after, n := "", 0
	for {
		devs, err := r.ie.reg.List(ctx, r.rec.Hub, after, 256)
		if err != nil {
			return err
		}
		for _, d := range devs {
			after = d.DeviceID
			line := exportDevice{ID: d.DeviceID, ETag: d.ETag, Status: d.Status, StatusReason: d.StatusReason,
				Authentication: d.Authentication, Capabilities: d.Capabilities, DeviceScope: d.DeviceScope, ParentScopes: d.ParentScopes}
			if r.rec.ExcludeKeysInExport && d.Authentication != nil && d.Authentication.SymmetricKey != nil {
				a := *d.Authentication
				a.SymmetricKey = &SymmetricKey{}
				line.Authentication = &a
			}
			if tw, err := r.ie.twins.Get(ctx, r.rec.Hub, d.DeviceID); err == nil {
				line.TwinETag, line.Tags = tw.ETag, tw.Tags
				line.Properties = &struct {
					Desired  json.RawMessage `json:"desired,omitempty"`
					Reported json.RawMessage `json:"reported,omitempty"`
				}{tw.Properties.Desired, tw.Properties.Reported}
			}
			b, err := json.Marshal(line)
			if err != nil {
				return err
			}
			buf.Write(b)
			buf.WriteByte('\n')
			n++
		}
		if err := r.progress(ctx, n*100/max(total, 1)); err != nil {
			return err
		}
		if len(devs) < 256 {
			break
		}
	}
	if err := c.Write(ctx, DevicesBlob, buf.Bytes()); err != nil {
		return fmt.Errorf("write %s: %w", DevicesBlob, err)
	}
	return nil
}

// importLine is one line of an import's devices.txt.
type importLine struct {
	exportDevice
	ImportMode string `json:"importMode"`
}

// Import modes only import jobs know (with the bulk registry operation's).
const (
	ImportCreateOrUpdate        = "createOrUpdate"
	ImportUpdateTwin            = "updateTwin"
	ImportUpdateTwinIfMatchETag = "updateTwinIfMatchETag"
)

// importDevices applies devices.txt of the input container line by line,
// as the bulk registry operation applies its entries (plus createOrUpdate,
// the default, and the twin modes), and writes every line's failure to
// importErrors.log in the output container.
func (r *ieRun) importDevices(ctx context.Context) error {
	in, err := r.container(r.rec.InputBlobContainerURI)
	if err != nil {
		return err
	}
	out, err := r.container(r.rec.OutputBlobContainerURI)
	if err != nil {
		return err
	}
	blob, err := in.Read(ctx, DevicesBlob)
	if err != nil {
		return fmt.Errorf("read %s: %w", DevicesBlob, err)
	}
	defer blob.Close()
	sc := bufio.NewScanner(blob)
	sc.Buffer(make([]byte, 64<<10), MaxImportLine)
	var errs bytes.Buffer
	fail := func(line int, id string, err error) {
		e := azerr.For(err, azerr.HubArgumentInvalid)
		b, _ := json.Marshal(map[string]any{"deviceId": id, "errorCode": e.Code.Name(), "errorStatus": fmt.Sprintf("line %d: %s", line, e.Message)})
		errs.Write(b)
		errs.WriteByte('\n')
	}
	for n := 1; sc.Scan(); n++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		var l importLine
		if err := json.Unmarshal(text, &l); err != nil {
			fail(n, "", azerr.Newf(azerr.HubFormatError, "not an ExportImportDevice: %v", err))
			continue
		}
		if err := r.importOne(ctx, &l); err != nil {
			var ae *azerr.Error
			if !errors.As(err, &ae) || ae.Code.Status() >= 500 {
				return fmt.Errorf("line %d (%s): %w", n, l.ID, err)
			}
			fail(n, l.ID, err)
		}
		if n%100 == 0 {
			if err := r.progress(ctx, 50); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", DevicesBlob, err)
	}
	if err := out.Write(ctx, ImportErrorsBlob, errs.Bytes()); err != nil {
		return fmt.Errorf("write %s: %w", ImportErrorsBlob, err)
	}
	return nil
}

func (r *ieRun) importOne(ctx context.Context, l *importLine) error {
	if l.ID == "" {
		return azerr.Newf(azerr.HubArgumentInvalid, "A line has no id.")
	}
	hubName := r.rec.Hub
	d := &Device{DeviceID: l.ID, Status: l.Status, StatusReason: l.StatusReason, Authentication: l.Authentication,
		Capabilities: l.Capabilities, DeviceScope: l.DeviceScope, ParentScopes: l.ParentScopes}
	mode := l.ImportMode
	if mode == "" {
		mode = ImportCreateOrUpdate
	}
	twinIfMatch := "*"
	switch {
	case strings.EqualFold(mode, ImportCreateOrUpdate):
		_, err := r.ie.reg.Get(ctx, hubName, l.ID)
		var ae *azerr.Error
		switch {
		case err == nil:
			_, err = r.ie.reg.Update(ctx, hubName, d, "")
		case errors.As(err, &ae) && ae.Code == azerr.HubDeviceNotFound:
			_, err = r.ie.reg.Create(ctx, hubName, d)
		}
		if err != nil {
			return err
		}
	case strings.EqualFold(mode, ImportUpdateTwin):
	case strings.EqualFold(mode, ImportUpdateTwinIfMatchETag):
		if strings.TrimSpace(l.TwinETag) == "" {
			return azerr.Newf(azerr.HubArgumentInvalid, "Device %s: updateTwinIfMatchETag needs twinETag.", l.ID)
		}
		twinIfMatch = l.TwinETag
	default:
		if err := r.ie.reg.bulkOne(ctx, hubName, BulkOperation{ImportMode: mode, ETag: l.ETag, Device: d}); err != nil {
			return err
		}
		if strings.HasPrefix(strings.ToLower(mode), "delete") {
			return nil
		}
	}
	var desired json.RawMessage
	if l.Properties != nil {
		desired = l.Properties.Desired
	}
	if len(l.Tags) == 0 && len(desired) == 0 {
		return nil
	}
	patch := map[string]json.RawMessage{}
	if len(l.Tags) > 0 {
		patch["tags"] = l.Tags
	}
	if len(desired) > 0 {
		p, _ := json.Marshal(map[string]json.RawMessage{"desired": desired})
		patch["properties"] = p
	}
	body, _ := json.Marshal(patch)
	_, err := r.ie.twins.Patch(ctx, hubName, l.ID, body, twinIfMatch)
	return err
}
