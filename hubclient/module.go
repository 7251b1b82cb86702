package hubclient

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/berth-iot/berth/hub"
)

// moduleBody is what a module PUT sends: the fields a client may set.
type moduleBody struct {
	DeviceID       string              `json:"deviceId"`
	ModuleID       string              `json:"moduleId"`
	ManagedBy      string              `json:"managedBy,omitempty"`
	Authentication *hub.Authentication `json:"authentication,omitempty"`
}

func modulePath(m *hub.Module) ([]string, error) {
	if m == nil || m.DeviceID == "" || m.ModuleID == "" {
		return nil, errors.New("hubclient: the module needs a deviceId and a moduleId")
	}
	return []string{"devices", m.DeviceID, "modules", m.ModuleID}, nil
}

// CreateModule adds a module identity to an existing device: PUT
// /devices/{id}/modules/{mid} without If-Match. Empty keys are generated.
func (c *Client) CreateModule(ctx context.Context, m *hub.Module) (*hub.Module, error) {
	p, err := modulePath(m)
	if err != nil {
		return nil, err
	}
	body := moduleBody{DeviceID: m.DeviceID, ModuleID: m.ModuleID, ManagedBy: m.ManagedBy, Authentication: m.Authentication}
	return call[hub.Module](ctx, c, request{method: http.MethodPut, path: p, body: body}, "module")
}

// UpdateModule replaces a module's authentication and managedBy: PUT with
// If-Match (an etag or "*"; required, since without it the PUT creates).
func (c *Client) UpdateModule(ctx context.Context, m *hub.Module, ifMatch string) (*hub.Module, error) {
	p, err := modulePath(m)
	if err != nil {
		return nil, err
	}
	if ifMatch == "" {
		return nil, errors.New(`hubclient: UpdateModule: ifMatch is required (an etag, or "*" for any version)`)
	}
	body := moduleBody{DeviceID: m.DeviceID, ModuleID: m.ModuleID, ManagedBy: m.ManagedBy, Authentication: m.Authentication}
	return call[hub.Module](ctx, c, request{method: http.MethodPut, path: p, body: body, ifMatch: ifMatch}, "module")
}

// GetModule reads a module identity, keys included.
func (c *Client) GetModule(ctx context.Context, deviceID, moduleID string) (*hub.Module, error) {
	p, err := modulePath(&hub.Module{DeviceID: deviceID, ModuleID: moduleID})
	if err != nil {
		return nil, err
	}
	return call[hub.Module](ctx, c, request{method: http.MethodGet, path: p}, "module")
}

// ListModules returns every module of a device.
func (c *Client) ListModules(ctx context.Context, deviceID string) ([]*hub.Module, error) {
	if deviceID == "" {
		return nil, errors.New("hubclient: ListModules: empty device ID")
	}
	ms, err := call[[]*hub.Module](ctx, c, request{method: http.MethodGet, path: []string{"devices", deviceID, "modules"}}, "modules")
	if err != nil {
		return nil, err
	}
	return *ms, nil
}

// DeleteModule removes a module identity; ifMatch as for DeleteDevice.
func (c *Client) DeleteModule(ctx context.Context, deviceID, moduleID, ifMatch string) error {
	p, err := modulePath(&hub.Module{DeviceID: deviceID, ModuleID: moduleID})
	if err != nil {
		return err
	}
	_, err = c.do(ctx, request{method: http.MethodDelete, path: p, ifMatch: ifMatch})
	return err
}

// GetModuleTwin reads a module's twin (GET /twins/{id}/modules/{mid}).
func (c *Client) GetModuleTwin(ctx context.Context, deviceID, moduleID string) (*hub.Twin, error) {
	if deviceID == "" || moduleID == "" {
		return nil, errors.New("hubclient: GetModuleTwin: empty device or module ID")
	}
	return call[hub.Twin](ctx, c, request{method: http.MethodGet, path: []string{"twins", deviceID, "modules", moduleID}}, "twin")
}

// UpdateModuleTwin merges patch into a module's twin (PATCH
// /twins/{id}/modules/{mid}), as UpdateTwin does for a device.
func (c *Client) UpdateModuleTwin(ctx context.Context, deviceID, moduleID string, patch json.RawMessage, ifMatch string) (*hub.Twin, error) {
	if deviceID == "" || moduleID == "" {
		return nil, errors.New("hubclient: UpdateModuleTwin: empty device or module ID")
	}
	if !json.Valid(patch) || len(patch) == 0 || patch[0] != '{' {
		return nil, errors.New("hubclient: UpdateModuleTwin: the twin document must be a JSON object")
	}
	return call[hub.Twin](ctx, c, request{method: http.MethodPatch, path: []string{"twins", deviceID, "modules", moduleID}, body: patch, ifMatch: ifMatch}, "twin")
}
