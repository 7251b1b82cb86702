package hubclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/berth-iot/berth/hub"
)

// CreateJob schedules a job (PUT /jobs/v2/{id}, docs/hub-jobs.md): a
// scheduleUpdateTwin or scheduleDeviceMethod over req's query condition.
// The answer is the job, queued.
func (c *Client) CreateJob(ctx context.Context, id string, req *hub.JobRequest) (*hub.Job, error) {
	if id == "" {
		return nil, errors.New("hubclient: CreateJob: empty job ID")
	}
	return call[hub.Job](ctx, c, request{method: http.MethodPut, path: []string{"jobs", "v2", id}, body: req}, "job")
}

// GetJob reads a job with its deviceJobStatistics (GET /jobs/v2/{id}).
func (c *Client) GetJob(ctx context.Context, id string) (*hub.Job, error) {
	if id == "" {
		return nil, errors.New("hubclient: GetJob: empty job ID")
	}
	return call[hub.Job](ctx, c, request{method: http.MethodGet, path: []string{"jobs", "v2", id}}, "job")
}

// CancelJob cancels a job that has not finished (POST
// /jobs/v2/{id}/cancel) and returns it.
func (c *Client) CancelJob(ctx context.Context, id string) (*hub.Job, error) {
	if id == "" {
		return nil, errors.New("hubclient: CancelJob: empty job ID")
	}
	return call[hub.Job](ctx, c, request{method: http.MethodPost, path: []string{"jobs", "v2", id, "cancel"}}, "job")
}

// JobsPage is one page of ListJobs.
type JobsPage struct {
	Jobs         []hub.Job
	Continuation string // "" on the last page
}

// ListJobs reads one page of the hub's jobs (GET /jobs/v2/query), of one
// type and status when they are not "", as the Node SDK's
// JobClient.createQuery does.
func (c *Client) ListJobs(ctx context.Context, jobType, status string, pageSize int, continuation string) (*JobsPage, error) {
	q := url.Values{}
	if jobType != "" {
		q.Set("jobType", jobType)
	}
	if status != "" {
		q.Set("jobStatus", status)
	}
	h := http.Header{}
	if pageSize > 0 {
		h.Set("x-ms-max-item-count", strconv.Itoa(pageSize))
	}
	if continuation != "" {
		h.Set("x-ms-continuation", continuation)
	}
	var resp http.Header
	data, err := c.do(ctx, request{method: http.MethodGet, path: []string{"jobs", "v2", "query"}, query: q, header: h, respHeader: &resp})
	if err != nil {
		return nil, err
	}
	page := &JobsPage{Continuation: resp.Get("x-ms-continuation")}
	if err := json.Unmarshal(data, &page.Jobs); err != nil {
		return nil, fmt.Errorf("hubclient: decode jobs page: %w", err)
	}
	return page, nil
}
