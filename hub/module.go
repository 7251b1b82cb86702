package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// Module is IoT Hub's Module document: an independently authenticated part
// of a device. Unlike a device it has no status (IoT Hub's Module has none:
// a module is disabled by disabling its device) and adds managedBy, a label
// the service writes (IoT Edge sets "IotEdge") and berth only keeps.
type Module struct {
	ModuleID                   string          `json:"moduleId"`
	ManagedBy                  string          `json:"managedBy"`
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId"`
	ETag                       string          `json:"etag"`
	ConnectionState            string          `json:"connectionState"`
	ConnectionStateUpdatedTime time.Time       `json:"connectionStateUpdatedTime"`
	LastActivityTime           time.Time       `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount"`
	Authentication             *Authentication `json:"authentication"`
}

// maxModulesPerDevice bounds the modules of one device, so listing them
// (and deleting them with their device) is one bounded read. IoT Hub
// counts modules against the hub's identity quota only; an IoT Edge
// device runs a handful, and 1000 is also the device list's page size.
const maxModulesPerDevice = 1000

// moduleKey is the store key of a module: its device's key, then the module
// ID (case-sensitive like device IDs; neither may contain "/").
func moduleKey(hubName, deviceID, moduleID string) string {
	return deviceKey(hubName, deviceID) + "/" + moduleID
}

// presenceID is the ID a module's connections are counted under in the
// registry's presence (Connected, Active): "/" cannot occur in a device
// ID, so it never collides with one.
func presenceID(deviceID, moduleID string) string { return deviceID + "/" + moduleID }

func moduleNotFound(deviceID, moduleID string) error {
	return azerr.Newf(azerr.HubModuleNotFound, "Module %s on device %s not found.", moduleID, deviceID)
}

// getModule returns a module, DeviceNotFound when its device does not
// exist, or ModuleNotFound.
func (r *Registry) getModule(ctx context.Context, hubName, deviceID, moduleID string) (*Module, error) {
	rec, err := r.store.Get(ctx, store.KindModule, moduleKey(hubName, deviceID, moduleID))
	if errors.Is(err, store.ErrNotFound) {
		if _, err := r.Get(ctx, hubName, deviceID); err != nil {
			return nil, err
		}
		return nil, moduleNotFound(deviceID, moduleID)
	}
	if err != nil {
		return nil, fmt.Errorf("hub: get module %s/%s: %w", deviceID, moduleID, err)
	}
	m, err := decodeModule(rec)
	if err != nil {
		return nil, err
	}
	r.overlayModule(hubName, m)
	return m, nil
}

// listModules returns the modules of a device in module ID order, or
// DeviceNotFound. The query language's devices.modules walks every
// device's modules in the same key order in batches instead
// (moduleScan).
func (r *Registry) listModules(ctx context.Context, hubName, deviceID string) ([]*Module, error) {
	if _, err := r.Get(ctx, hubName, deviceID); err != nil {
		return nil, err
	}
	recs, err := r.listModuleRecords(ctx, hubName, deviceID)
	if err != nil {
		return nil, err
	}
	out := make([]*Module, 0, len(recs))
	for _, rec := range recs {
		m, err := decodeModule(rec)
		if err != nil {
			return nil, err
		}
		r.overlayModule(hubName, m)
		out = append(out, m)
	}
	return out, nil
}

func (r *Registry) listModuleRecords(ctx context.Context, hubName, deviceID string) ([]store.Record, error) {
	recs, err := r.store.List(ctx, store.KindModule, store.ListOptions{Index: deviceKey(hubName, deviceID), Limit: maxModulesPerDevice})
	if err != nil {
		return nil, fmt.Errorf("hub: list modules of %s: %w", deviceID, err)
	}
	return recs, nil
}

// createModule adds a module to an existing device; it fails with
// DeviceNotFound, ModuleAlreadyExistsOnDevice, or ArgumentInvalid for a
// bad ID or authentication. sas keys not given are generated.
func (r *Registry) createModule(ctx context.Context, hubName string, m *Module) (*Module, error) {
	if err := validModuleIDs(m); err != nil {
		return nil, err
	}
	if _, err := r.Get(ctx, hubName, m.DeviceID); err != nil {
		return nil, err
	}
	n, err := r.store.Count(ctx, store.KindModule, deviceKey(hubName, m.DeviceID))
	if err != nil {
		return nil, fmt.Errorf("hub: count modules of %s: %w", m.DeviceID, err)
	}
	if n >= maxModulesPerDevice {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Device %s already has %d modules, berth's limit.", m.DeviceID, maxModulesPerDevice)
	}
	auth, err := mergeAuthentication(nil, m.Authentication)
	if err != nil {
		return nil, err
	}
	now := r.now().UTC()
	nm := &Module{
		ModuleID:        m.ModuleID,
		DeviceID:        m.DeviceID,
		ManagedBy:       m.ManagedBy,
		GenerationID:    newDevice(m.DeviceID, now).GenerationID,
		ConnectionState: "Disconnected",
		Authentication:  auth,
	}
	rec, err := encodeModule(hubName, nm)
	if err != nil {
		return nil, err
	}
	rec, err = r.store.Put(ctx, rec, store.Cond{IfNotExists: true})
	if errors.Is(err, store.ErrExists) {
		return nil, azerr.Newf(azerr.HubModuleAlreadyExists, "A module with ID '%s' is already registered on device '%s'.", m.ModuleID, m.DeviceID)
	}
	if err != nil {
		return nil, fmt.Errorf("hub: create module %s/%s: %w", m.DeviceID, m.ModuleID, err)
	}
	// The device may have been deleted between the check and the write:
	// then this module would outlive it. Take it back.
	if _, err := r.Get(ctx, hubName, m.DeviceID); err != nil {
		_ = r.store.Delete(ctx, store.KindModule, rec.Key, "")
		return nil, err
	}
	out, err := decodeModule(rec)
	if err != nil {
		return nil, err
	}
	r.revokeModule(hubName, out.DeviceID, out.ModuleID, out)
	// Module configurations may target it (docs/configurations.md).
	r.deviceChanged(hubName, TwinID(out.DeviceID, out.ModuleID))
	return out, nil
}

// updateModule replaces a module's authentication and managedBy under an
// optional If-Match (an etag, * or "*"); sas keys left empty are kept.
func (r *Registry) updateModule(ctx context.Context, hubName string, m *Module, ifMatch string) (*Module, error) {
	if err := validModuleIDs(m); err != nil {
		return nil, err
	}
	cur, err := r.getModule(ctx, hubName, m.DeviceID, m.ModuleID)
	if err != nil {
		return nil, err
	}
	auth, err := mergeAuthentication(cur.Authentication, m.Authentication)
	if err != nil {
		return nil, err
	}
	cur.Authentication = auth
	cur.ManagedBy = m.ManagedBy
	rec, err := encodeModule(hubName, cur)
	if err != nil {
		return nil, err
	}
	rec, err = r.store.Put(ctx, rec, store.Cond{IfMatch: etagOrAny(ifMatch, cur.ETag)})
	switch {
	case errors.Is(err, store.ErrPreconditionFailed):
		return nil, azerr.NewHub(azerr.HubPreconditionFailed)
	case errors.Is(err, store.ErrNotFound):
		return nil, moduleNotFound(m.DeviceID, m.ModuleID)
	case err != nil:
		return nil, fmt.Errorf("hub: update module %s/%s: %w", m.DeviceID, m.ModuleID, err)
	}
	out, err := decodeModule(rec)
	if err != nil {
		return nil, err
	}
	r.revokeModule(hubName, out.DeviceID, out.ModuleID, out)
	// Module configurations may target it (docs/configurations.md).
	r.deviceChanged(hubName, TwinID(out.DeviceID, out.ModuleID))
	return out, nil
}

// deleteModule removes a module under an optional If-Match.
func (r *Registry) deleteModule(ctx context.Context, hubName, deviceID, moduleID, ifMatch string) error {
	err := r.store.Delete(ctx, store.KindModule, moduleKey(hubName, deviceID, moduleID), unquote(ifMatch))
	switch {
	case errors.Is(err, store.ErrNotFound):
		if _, err := r.Get(ctx, hubName, deviceID); err != nil {
			return err
		}
		return moduleNotFound(deviceID, moduleID)
	case errors.Is(err, store.ErrPreconditionFailed):
		return azerr.NewHub(azerr.HubPreconditionFailed)
	case err != nil:
		return fmt.Errorf("hub: delete module %s/%s: %w", deviceID, moduleID, err)
	}
	r.revokeModule(hubName, deviceID, moduleID, nil)
	return nil
}

// revokeModules closes the sessions of every module of a device that was
// disabled.
func (r *Registry) revokeModules(ctx context.Context, hubName, deviceID string) error {
	recs, err := r.listModuleRecords(ctx, hubName, deviceID)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		m, err := decodeModule(rec)
		if err != nil {
			return err
		}
		r.revokeModule(hubName, deviceID, m.ModuleID, nil)
	}
	return nil
}

// deleteModules removes every module of a deleted device.
func (r *Registry) deleteModules(ctx context.Context, hubName, deviceID string) error {
	recs, err := r.listModuleRecords(ctx, hubName, deviceID)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if err := r.store.Delete(ctx, store.KindModule, rec.Key, ""); err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("hub: delete module %s: %w", rec.Key, err)
		}
		var m Module
		if json.Unmarshal(rec.Data, &m) == nil {
			r.revokeModule(hubName, deviceID, m.ModuleID, nil)
		}
	}
	return nil
}

// revokeModule closes the module's sessions that m (its stored state after
// a change; nil once deleted) no longer admits. A module's sessions are
// Links entries under its presence ID ("device/module").
func (r *Registry) revokeModule(hubName, deviceID, moduleID string, m *Module) {
	r.mu.Lock()
	l := r.links
	r.mu.Unlock()
	if l == nil {
		return
	}
	keep := ""
	if m != nil {
		keep = Credential(&Device{Authentication: m.Authentication})
	}
	l.Revoke(hubName, presenceID(deviceID, moduleID), keep)
}

// overlayModule applies this node's presence of the module's connections.
func (r *Registry) overlayModule(hubName string, m *Module) {
	d := Device{DeviceID: presenceID(m.DeviceID, m.ModuleID), ConnectionState: m.ConnectionState}
	r.overlay(hubName, &d)
	m.ConnectionState, m.ConnectionStateUpdatedTime, m.LastActivityTime = d.ConnectionState, d.ConnectionStateUpdatedTime, d.LastActivityTime
}

// validModuleIDs checks both IDs of a module: IoT Hub's module IDs follow
// the device ID rules (up to 128 ASCII letters, digits and - . % _ * ? ! (
// ) , : = @ $ '; the $ is how IoT Edge's $edgeAgent and $edgeHub are
// spelled).
func validModuleIDs(m *Module) error {
	if !validDeviceID(m.DeviceID) {
		return azerr.Newf(azerr.HubArgumentInvalid, "Device ID '%s' is not valid.", m.DeviceID)
	}
	if !validDeviceID(m.ModuleID) {
		return azerr.Newf(azerr.HubArgumentInvalid, "Module ID '%s' is not valid.", m.ModuleID)
	}
	return nil
}

func encodeModule(hubName string, m *Module) (store.Record, error) {
	c := *m
	c.ConnectionState = "Disconnected"
	c.ConnectionStateUpdatedTime, c.LastActivityTime, c.CloudToDeviceMessageCount = time.Time{}, time.Time{}, 0
	data, err := json.Marshal(&c)
	if err != nil {
		return store.Record{}, fmt.Errorf("hub: encode module: %w", err)
	}
	return store.Record{
		Kind:  store.KindModule,
		Key:   moduleKey(hubName, m.DeviceID, m.ModuleID),
		Index: deviceKey(hubName, m.DeviceID),
		Data:  data,
	}, nil
}

func decodeModule(rec store.Record) (*Module, error) {
	var m Module
	if err := json.Unmarshal(rec.Data, &m); err != nil {
		return nil, fmt.Errorf("hub: decode module %s: %w", rec.Key, err)
	}
	m.ETag = rec.ETag
	return &m, nil
}

// TwinID names the twin (and live session) of a device, or of one of its
// modules: "device" or "device/module". "/" cannot occur in an ID, so the
// two never collide; Twins, Methods and Links take either.
func TwinID(deviceID, moduleID string) string {
	if moduleID == "" {
		return deviceID
	}
	return presenceID(deviceID, moduleID)
}

// identity returns the device a TwinID names, or for a module a device
// view of it: the module's generation, etag, authentication and presence
// under its device's ID and status (a module is enabled with its device).
func (r *Registry) identity(ctx context.Context, hubName, id string) (*Device, error) {
	deviceID, moduleID, isModule := strings.Cut(id, "/")
	if !isModule {
		return r.Get(ctx, hubName, id)
	}
	d, err := r.Get(ctx, hubName, deviceID)
	if err != nil {
		return nil, err
	}
	m, err := r.getModule(ctx, hubName, deviceID, moduleID)
	if err != nil {
		return nil, err
	}
	return moduleView(d, m), nil
}

// ModuleID is the module a device view (Registry.identity) stands for; ""
// for a device.
func (d *Device) ModuleID() string { return d.moduleID }
