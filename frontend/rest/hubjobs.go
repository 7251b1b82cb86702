package rest

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// maxJobBody bounds a PUT /jobs/v2/{id} body: a twin patch or a method
// payload (128 KB) and the job's few other members.
const maxJobBody = 2*hub.MaxMethodPayload + 8192

// jobsAvailable answers 503 when the hub has no job service.
func (h *handler) jobsAvailable(x *exchange) bool {
	if h.hub.Jobs == nil {
		x.fail(unavailable("Jobs are"))
		return false
	}
	return true
}

// putJob is PUT /jobs/v2/{id} (docs/hub-jobs.md): a JobRequest of type
// scheduleUpdateTwin or scheduleDeviceMethod; 200 with the job, queued.
func (h *handler) putJob(x *exchange, args []string) {
	if !h.jobsAvailable(x) {
		return
	}
	body, ok := x.readHubBody(maxJobBody)
	if !ok {
		return
	}
	var req hub.JobRequest
	if err := decodeObject(body, &req); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	job, err := h.hub.Jobs.Create(x.r.Context(), x.hubName(), args[0], &req)
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, job)
}

// getJob is GET /jobs/v2/{id}: the job with its deviceJobStatistics.
func (h *handler) getJob(x *exchange, args []string) {
	if !h.jobsAvailable(x) {
		return
	}
	job, err := h.hub.Jobs.Get(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, job)
}

// cancelJob is POST /jobs/v2/{id}/cancel: the job, cancelled unless it had
// already finished.
func (h *handler) cancelJob(x *exchange, args []string) {
	if !h.jobsAvailable(x) {
		return
	}
	job, err := h.hub.Jobs.Cancel(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, job)
}

// queryJobs is GET /jobs/v2/query?jobType=…&jobStatus=…: a JSON array of
// jobs, x-ms-max-item-count the page size, x-ms-continuation the page to
// resume, answered only when another page exists (as for device queries).
func (h *handler) queryJobs(x *exchange, _ []string) {
	if !h.jobsAvailable(x) {
		return
	}
	size := 0
	if v := strings.TrimSpace(x.r.Header.Get(reqMaxItemCount)); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			x.fail(azerr.Newf(azerr.HubArgumentInvalid, "The x-ms-max-item-count header must be a non-negative integer."))
			return
		}
		size = n
	}
	q := x.r.URL.Query()
	page, err := h.hub.Jobs.List(x.r.Context(), x.hubName(), q.Get("jobType"), q.Get("jobStatus"), size, x.r.Header.Get(reqContinuation))
	if err != nil {
		x.fail(err)
		return
	}
	if page.Continuation != "" {
		x.w.Header()[hdrContinuation] = []string{page.Continuation}
	}
	x.writeJSON(http.StatusOK, page.Jobs)
}

// importExportAvailable answers 503 when the hub has no import/export
// service.
func (h *handler) importExportAvailable(x *exchange) bool {
	if h.hub.ImportExport == nil {
		x.fail(unavailable("Import and export jobs are"))
		return false
	}
	return true
}

// createImportExport is POST /jobs/create (docs/hub-jobs.md#import-and-export):
// an export or import job over blob containers; 200 with its
// JobProperties, enqueued.
func (h *handler) createImportExport(x *exchange, _ []string) {
	if !h.importExportAvailable(x) {
		return
	}
	body, ok := x.readHubBody(64 << 10)
	if !ok {
		return
	}
	var req hub.ImportExportRequest
	if err := decodeObject(body, &req); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	job, err := h.hub.ImportExport.Create(x.r.Context(), x.hubName(), &req)
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, job)
}

// getImportExport is GET /jobs/{id}.
func (h *handler) getImportExport(x *exchange, args []string) {
	if !h.importExportAvailable(x) {
		return
	}
	job, err := h.hub.ImportExport.Get(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, job)
}

// listImportExport is GET /jobs: the hub's import and export jobs.
func (h *handler) listImportExport(x *exchange, _ []string) {
	if !h.importExportAvailable(x) {
		return
	}
	jobs, err := h.hub.ImportExport.List(x.r.Context(), x.hubName())
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, jobs)
}

// cancelImportExport is DELETE /jobs/{id}: the job, cancelled unless it
// had finished.
func (h *handler) cancelImportExport(x *exchange, args []string) {
	if !h.importExportAvailable(x) {
		return
	}
	job, err := h.hub.ImportExport.Cancel(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, job)
}
