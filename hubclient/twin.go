package hubclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/berth-iot/berth/hub"
)

// GetTwin reads a device's twin (GET /twins/{id},
// docs/spec/iothub-protocol.md#twins-service-side): tags, desired and
// reported properties with their $metadata and $version, and the etag
// UpdateTwin and ReplaceTwin can be made conditional on.
func (c *Client) GetTwin(ctx context.Context, id string) (*hub.Twin, error) {
	if id == "" {
		return nil, errors.New("hubclient: GetTwin: empty device ID")
	}
	return call[hub.Twin](ctx, c, request{method: http.MethodGet, path: []string{"twins", id}}, "twin")
}

// UpdateTwin merges patch, {"tags":{…},"properties":{"desired":{…}}}, into
// a device's twin (PATCH /twins/{id}): members set to null are deleted,
// members not named are kept; reported properties are the device's and
// the hub ignores them. ifMatch is the twin etag the update is conditional
// on, "*" for any version, or "" to send no If-Match. The answer is the
// whole twin after the update.
func (c *Client) UpdateTwin(ctx context.Context, id string, patch json.RawMessage, ifMatch string) (*hub.Twin, error) {
	return c.writeTwin(ctx, http.MethodPatch, "UpdateTwin", id, patch, ifMatch)
}

// ReplaceTwin replaces a device's tags and desired properties with those
// of twin, same shape as UpdateTwin's patch (PUT /twins/{id}): a section
// the document leaves out becomes empty. ifMatch is as for UpdateTwin.
func (c *Client) ReplaceTwin(ctx context.Context, id string, twin json.RawMessage, ifMatch string) (*hub.Twin, error) {
	return c.writeTwin(ctx, http.MethodPut, "ReplaceTwin", id, twin, ifMatch)
}

func (c *Client) writeTwin(ctx context.Context, method, op, id string, doc json.RawMessage, ifMatch string) (*hub.Twin, error) {
	if id == "" {
		return nil, fmt.Errorf("hubclient: %s: empty device ID", op)
	}
	// Refused here rather than by the hub: json.Marshal would fail on
	// invalid JSON with a message that names no operation, and anything
	// but an object is a 400 anyway.
	if t := bytes.TrimSpace(doc); len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return nil, fmt.Errorf("hubclient: %s: the twin document must be a JSON object", op)
	}
	return call[hub.Twin](ctx, c, request{method: method, path: []string{"twins", id}, body: doc, ifMatch: ifMatch}, "twin")
}

// methodTimeoutMargin is added to a direct method's connect and response
// timeouts for the HTTP call: the hub answers 504 GatewayTimeout (or 404
// DeviceNotOnline) only when they have run out, and that answer still has
// to arrive.
const methodTimeoutMargin = 10 * time.Second

// methodHTTPTimeout is how long the HTTP call of an invocation may take: the
// connect timeout plus the response timeout, as the Node SDK sets its
// client's (docs/spec/iothub-protocol.md#direct-method-invocation), plus
// methodTimeoutMargin. Unset timeouts count with the hub's defaults (30 s to
// respond, 0 to connect); negative ones count as 0 (the hub refuses them with
// 400).
func methodHTTPTimeout(req *hub.MethodRequest) time.Duration {
	d := hub.DefaultMethodResponseTimeout
	if req.ResponseTimeoutInSeconds != nil {
		d = time.Duration(max(*req.ResponseTimeoutInSeconds, 0)) * time.Second
	}
	if req.ConnectTimeoutInSeconds != nil {
		d += time.Duration(max(*req.ConnectTimeoutInSeconds, 0)) * time.Second
	}
	return d + methodTimeoutMargin
}

// InvokeMethod calls a direct method on a device (POST /twins/{id}/methods,
// docs/spec/iothub-protocol.md#direct-method-invocation) and returns what the
// device answered: its status, whatever it is, and its JSON payload. An empty
// req.Payload is sent as null. Errors are the hub's: 404 DeviceNotFound, 404
// DeviceNotOnline (not connected within the connect timeout), 504
// GatewayTimeout (no answer within the response timeout), 400 for a bad name,
// payload or timeout.
//
// The HTTP call may take methodHTTPTimeout, whatever the client's usual
// limit; ctx can still end it sooner.
func (c *Client) InvokeMethod(ctx context.Context, id string, req *hub.MethodRequest) (*hub.MethodResult, error) {
	if id == "" {
		return nil, errors.New("hubclient: InvokeMethod: empty device ID")
	}
	if req == nil || req.MethodName == "" {
		return nil, errors.New("hubclient: InvokeMethod: the request needs a method name")
	}
	body := *req
	if len(bytes.TrimSpace(body.Payload)) == 0 {
		body.Payload = json.RawMessage("null")
	}
	return call[hub.MethodResult](ctx, c, request{method: http.MethodPost, path: []string{"twins", id, "methods"}, body: &body,
		timeout: methodHTTPTimeout(req)}, "method result")
}
