package serviceclient

import (
	"context"
	"errors"
	"net/http"
	"net/url"

	"github.com/berth-iot/berth/policy"
)

// The shared access policy calls are a berth extension of the DPS service
// API (Azure manages policies through Azure Resource Manager): the DPS's
// own policies under /policies, a hub's under /hubs/{hub}/policies. They
// need a connection string whose policy has ServiceConfig. hub "" means
// the DPS's policies; otherwise it is the hub's host name, as its
// connection strings give it.

// policyPath is the path of the policy collection of hub (the DPS's when
// ""), followed by more segments.
func policyPath(hub string, more ...string) []string {
	p := []string{"policies"}
	if hub != "" {
		p = []string{"hubs", hub, "policies"}
	}
	return append(p, more...)
}

// policyBody is what PutPolicy sends: keys left empty are generated for a
// new policy and kept for an existing one, so they are not sent at all.
type policyBody struct {
	Rights       []string `json:"rights"`
	PrimaryKey   string   `json:"primaryKey,omitempty"`
	SecondaryKey string   `json:"secondaryKey,omitempty"`
}

// ListPolicies returns every policy of the DPS (hub "") or of a hub, keys
// included.
func (c *Client) ListPolicies(ctx context.Context, hub string) ([]policy.Policy, error) {
	list, err := call[[]policy.Policy](ctx, c, request{method: http.MethodGet, path: policyPath(hub)}, "policies")
	if err != nil {
		return nil, err
	}
	return *list, nil
}

// GetPolicy reads one policy, keys included.
func (c *Client) GetPolicy(ctx context.Context, hub, name string) (*policy.Policy, error) {
	return call[policy.Policy](ctx, c, request{method: http.MethodGet, path: policyPath(hub, name)}, "policy")
}

// PutPolicy creates the policy p.KeyName or replaces its rights (and its
// keys, those that are not empty). created reports a new policy (201).
func (c *Client) PutPolicy(ctx context.Context, hub string, p policy.Policy) (out *policy.Policy, created bool, err error) {
	if p.KeyName == "" {
		return nil, false, errors.New("serviceclient: PutPolicy: the policy needs a keyName")
	}
	return put[policy.Policy](ctx, c, request{method: http.MethodPut, path: policyPath(hub, p.KeyName),
		body: policyBody{Rights: p.Rights, PrimaryKey: p.PrimaryKey, SecondaryKey: p.SecondaryKey}}, "policy")
}

// DeletePolicy deletes a policy. The service refuses to delete the DPS's
// last policy with ServiceConfig.
func (c *Client) DeletePolicy(ctx context.Context, hub, name string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: policyPath(hub, name)})
	return err
}

// RenewPolicyKey replaces the policy's primary or secondary key with a new
// one, or swaps them (keyType policy.RenewPrimary, RenewSecondary or
// RenewSwap), and returns the policy with its keys. Tokens signed with a
// replaced key are refused from then on.
func (c *Client) RenewPolicyKey(ctx context.Context, hub, name, keyType string) (*policy.Policy, error) {
	return call[policy.Policy](ctx, c, request{method: http.MethodPost, path: policyPath(hub, name, "renewKey"),
		query: url.Values{"keyType": {keyType}}}, "policy")
}
