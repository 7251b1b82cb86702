package rest

import (
	"net/http"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// moduleInput is what berth takes from a PUT /devices/{id}/modules/{mid}
// body: the fields a client may set. As with devices (deviceInput), the
// read-only fields clients echo are ignored, and the condition travels in
// If-Match, not in the body's etag.
type moduleInput struct {
	ModuleID       string              `json:"moduleId"`
	DeviceID       string              `json:"deviceId"`
	ManagedBy      string              `json:"managedBy"`
	Authentication *hub.Authentication `json:"authentication"`
}

// putModule is PUT /devices/{id}/modules/{mid}: without If-Match it creates
// the module (409 ModuleAlreadyExistsOnDevice when it exists, 404
// DeviceNotFound without its device), with one it updates it under that
// condition (Node's updateModule sends If-Match: "*" or the etag). The
// answer is 200 with the stored module, keys included.
func (h *handler) putModule(x *exchange, args []string) {
	deviceID, moduleID := args[0], args[1]
	body, ok := x.readHubBody(maxRegistryBody)
	if !ok {
		return
	}
	var in moduleInput
	if err := decodeObject(body, &in); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	// IDs are case-sensitive, so are these comparisons.
	if in.DeviceID != "" && in.DeviceID != deviceID {
		x.fail(azerr.Newf(azerr.HubArgumentInvalid, "The deviceId in the body (%s) does not match the one in the URL (%s).", in.DeviceID, deviceID))
		return
	}
	if in.ModuleID != "" && in.ModuleID != moduleID {
		x.fail(azerr.Newf(azerr.HubArgumentInvalid, "The moduleId in the body (%s) does not match the one in the URL (%s).", in.ModuleID, moduleID))
		return
	}
	m := &hub.Module{DeviceID: deviceID, ModuleID: moduleID, ManagedBy: in.ManagedBy, Authentication: in.Authentication}
	reg, name := h.hub.Registry, x.hubName()
	var out *hub.Module
	var err error
	if ifMatch := strings.TrimSpace(x.r.Header.Get(reqIfMatch)); ifMatch == "" {
		out, err = reg.CreateModule(x.r.Context(), name, m)
	} else {
		out, err = reg.UpdateModule(x.r.Context(), name, m, ifMatch)
	}
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, out)
}

// getModule is GET /devices/{id}/modules/{mid}: 200 with the module, 404
// DeviceNotFound or ModuleNotFound.
func (h *handler) getModule(x *exchange, args []string) {
	m, err := h.hub.Registry.GetModule(x.r.Context(), x.hubName(), args[0], args[1])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, m)
}

// listModules is GET /devices/{id}/modules: 200 with every module of the
// device (an array, possibly empty), or 404 DeviceNotFound.
func (h *handler) listModules(x *exchange, args []string) {
	ms, err := h.hub.Registry.ListModules(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, ms)
}

// deleteModule is DELETE /devices/{id}/modules/{mid}: 204, under If-Match
// as received (Node's removeModule sends "*").
func (h *handler) deleteModule(x *exchange, args []string) {
	if err := h.hub.Registry.DeleteModule(x.r.Context(), x.hubName(), args[0], args[1], x.r.Header.Get(reqIfMatch)); err != nil {
		x.fail(err)
		return
	}
	x.noContent()
}
