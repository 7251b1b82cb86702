package hubclient

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"

	"github.com/berth-iot/berth/hub"
)

// Automatic device configurations (docs/configurations.md), as the Node
// SDK's Registry calls them.

// configurationBody is what a configuration PUT sends: the fields a client
// may set (the read-only ones are left out; the etag travels in If-Match).
type configurationBody struct {
	ID              string                   `json:"id"`
	SchemaVersion   string                   `json:"schemaVersion"`
	Labels          map[string]string        `json:"labels,omitempty"`
	Content         hub.ConfigurationContent `json:"content"`
	TargetCondition string                   `json:"targetCondition"`
	Priority        int                      `json:"priority"`
	Metrics         *configurationQueries    `json:"metrics,omitempty"`
}

type configurationQueries struct {
	Queries map[string]string `json:"queries"`
}

func configurationRequest(c *hub.Configuration) (request, error) {
	if c == nil || c.ID == "" {
		return request{}, errors.New("hubclient: the configuration needs an id")
	}
	b := configurationBody{ID: c.ID, SchemaVersion: c.SchemaVersion, Labels: c.Labels, Content: c.Content,
		TargetCondition: c.TargetCondition, Priority: c.Priority}
	if b.SchemaVersion == "" {
		b.SchemaVersion = hub.ConfigurationSchemaVersion
	}
	if len(c.Metrics.Queries) > 0 {
		b.Metrics = &configurationQueries{Queries: c.Metrics.Queries}
	}
	return request{method: http.MethodPut, path: []string{"configurations", c.ID}, body: b}, nil
}

// CreateConfiguration adds a configuration: PUT /configurations/{id}
// without If-Match (409 ConfigurationAlreadyExists when it exists).
func (c *Client) CreateConfiguration(ctx context.Context, cfg *hub.Configuration) (*hub.Configuration, error) {
	r, err := configurationRequest(cfg)
	if err != nil {
		return nil, err
	}
	return call[hub.Configuration](ctx, c, r, "configuration")
}

// UpdateConfiguration replaces a configuration's labels, target
// condition, priority and metrics under ifMatch (an etag, or "*").
func (c *Client) UpdateConfiguration(ctx context.Context, cfg *hub.Configuration, ifMatch string) (*hub.Configuration, error) {
	r, err := configurationRequest(cfg)
	if err != nil {
		return nil, err
	}
	if ifMatch == "" {
		return nil, errors.New(`hubclient: UpdateConfiguration: ifMatch is required (an etag, or "*" for any version)`)
	}
	r.ifMatch = ifMatch
	return call[hub.Configuration](ctx, c, r, "configuration")
}

// GetConfiguration reads a configuration with its metrics.
func (c *Client) GetConfiguration(ctx context.Context, id string) (*hub.Configuration, error) {
	if id == "" {
		return nil, errors.New("hubclient: GetConfiguration: empty id")
	}
	return call[hub.Configuration](ctx, c, request{method: http.MethodGet, path: []string{"configurations", id}}, "configuration")
}

// ListConfigurations returns the hub's configurations (at most top when
// top > 0).
func (c *Client) ListConfigurations(ctx context.Context, top int) ([]*hub.Configuration, error) {
	r := request{method: http.MethodGet, path: []string{"configurations"}}
	if top > 0 {
		r.query = url.Values{"top": {strconv.Itoa(top)}}
	}
	cs, err := call[[]*hub.Configuration](ctx, c, r, "configurations")
	if err != nil {
		return nil, err
	}
	return *cs, nil
}

// DeleteConfiguration removes a configuration; ifMatch "" deletes whatever
// version is there.
func (c *Client) DeleteConfiguration(ctx context.Context, id, ifMatch string) error {
	if id == "" {
		return errors.New("hubclient: DeleteConfiguration: empty id")
	}
	_, err := c.do(ctx, request{method: http.MethodDelete, path: []string{"configurations", id}, ifMatch: ifMatch})
	return err
}
