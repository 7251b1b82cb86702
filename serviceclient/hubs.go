package serviceclient

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/berth-iot/berth/hub"
)

// The hub calls are a berth extension of the DPS service API, like the
// policy calls: the IoT hubs one berth serves and how its DPS links them
// (Azure does this through Azure Resource Manager). They need a
// connection string whose policy has ServiceConfig. A hub's name is its
// host name, as its connection strings give it.

// HubSpec is what PutHub sends. Nil fields take the service's default on
// create (weight 1, applyAllocationPolicy true, no region) and keep the
// hub's value on update, so an update changes only what it sets.
type HubSpec struct {
	Name                  string  `json:"-"` // in the path
	AllocationWeight      *int    `json:"allocationWeight,omitempty"`
	ApplyAllocationPolicy *bool   `json:"applyAllocationPolicy,omitempty"`
	Region                *string `json:"region,omitempty"`
	// PartitionCount is set at creation only; RetentionDays (1 to 7, 0
	// for the telemetry stream's) at any time.
	PartitionCount *int `json:"partitionCount,omitempty"`
	RetentionDays  *int `json:"retentionDays,omitempty"`
}

// hubPath is the path of the hub collection, or of one hub.
func hubPath(name ...string) []string { return append([]string{"hubs"}, name...) }

// ListHubs returns the hubs berth serves, in creation order.
func (c *Client) ListHubs(ctx context.Context) ([]hub.HubInfo, error) {
	list, err := call[[]hub.HubInfo](ctx, c, request{method: http.MethodGet, path: hubPath()}, "hubs")
	if err != nil {
		return nil, err
	}
	return *list, nil
}

// GetHub reads one hub.
func (c *Client) GetHub(ctx context.Context, name string) (*hub.HubInfo, error) {
	return call[hub.HubInfo](ctx, c, request{method: http.MethodGet, path: hubPath(name)}, "hub")
}

// PutHub creates the hub s.Name, with IoT Hub's default policies, or
// changes the fields s sets. created reports a new hub (201).
func (c *Client) PutHub(ctx context.Context, s HubSpec) (out *hub.HubInfo, created bool, err error) {
	if s.Name == "" {
		return nil, false, errors.New("serviceclient: PutHub: the hub needs a name")
	}
	return put[hub.HubInfo](ctx, c, request{method: http.MethodPut, path: hubPath(s.Name), body: s}, "hub")
}

// DeleteHub deletes a hub with its devices, twins, queues and policies.
// The service refuses to delete its default hub.
func (c *Client) DeleteHub(ctx context.Context, name string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: hubPath(name)})
	return err
}

// ConsumerGroup is a consumer group of a hub's Event Hubs-compatible
// endpoint, as ARM and berth answer it.
type ConsumerGroup struct {
	Name       string `json:"name"`
	Properties struct {
		Created time.Time `json:"created"`
	} `json:"properties"`
}

func groupPath(hubName string, group ...string) []string {
	return append(hubPath(hubName, "eventHubEndpoints", "events", "ConsumerGroups"), group...)
}

// ListConsumerGroups returns a hub's consumer groups, $Default first.
func (c *Client) ListConsumerGroups(ctx context.Context, hubName string) ([]ConsumerGroup, error) {
	out, err := call[struct {
		Value []ConsumerGroup `json:"value"`
	}](ctx, c, request{method: http.MethodGet, path: groupPath(hubName)}, "consumer groups")
	if err != nil {
		return nil, err
	}
	return out.Value, nil
}

// PutConsumerGroup creates a consumer group (an existing one is returned
// as it is).
func (c *Client) PutConsumerGroup(ctx context.Context, hubName, group string) (*ConsumerGroup, error) {
	out, _, err := put[ConsumerGroup](ctx, c, request{method: http.MethodPut, path: groupPath(hubName, group), body: map[string]any{"properties": map[string]any{"name": group}}}, "consumer group")
	return out, err
}

// DeleteConsumerGroup deletes a consumer group ($Default cannot be).
func (c *Client) DeleteConsumerGroup(ctx context.Context, hubName, group string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: groupPath(hubName, group)})
	return err
}
