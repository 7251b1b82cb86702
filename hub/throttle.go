package hub

import (
	"context"
	"fmt"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/throttle"
)

// SetThrottle installs the operator's throttles (berth serve --throttle;
// nil for none). Every service of the bundle checks them through the
// registry, so every front end gets the same limits. Call it before the
// registry serves: the checks read it without a lock.
func (r *Registry) SetThrottle(t *throttle.Throttler) { r.throttle = t }

// throttled checks op on hubName against the throttles, cost being the
// operation's weight (1, or a method's 4 KB meters), and returns IoT
// Hub's answer when it is over its rate: 429001 ThrottlingException, the
// wait in RetryAfter. IoT Hub first queues ("traffic shaping") and then
// refuses; berth refuses at once (docs/operations.md, "Throttling as
// Azure does it").
func (r *Registry) throttled(hubName string, op throttle.Op, cost float64) error {
	if r == nil || r.throttle == nil {
		return nil
	}
	d := r.throttle.Allow(op, hubName, "", cost)
	if d.Allowed {
		return nil
	}
	return azerr.Throttled(azerr.HubThrottled, d.RetryAfter,
		fmt.Sprintf("The request has been throttled: the hub's %s limit of %s is reached. Retry after %d seconds.",
			op, d.Limit, throttle.Seconds(d.RetryAfter, 1)))
}

// The identity registry operations of the service API, each one
// throttled operation (HubRegistry). The domain's own callers (a bulk
// operation's entries, a deleted hub's devices) use the unexported forms,
// which are not throttled: a bulk operation is one operation.

// Show returns a device as the service API shows it (show).
func (r *Registry) Show(ctx context.Context, hubName, id string) (*Device, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.show(ctx, hubName, id)
}

// List returns up to limit devices of a hub after the given device ID.
func (r *Registry) List(ctx context.Context, hubName, after string, limit int) ([]*Device, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.list(ctx, hubName, after, limit)
}

// Create adds a device; it fails with DeviceAlreadyExists if it exists
// (create).
func (r *Registry) Create(ctx context.Context, hubName string, d *Device) (*Device, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.create(ctx, hubName, d)
}

// Update replaces the mutable fields of an existing device (update).
func (r *Registry) Update(ctx context.Context, hubName string, d *Device, ifMatch string) (*Device, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.update(ctx, hubName, d, ifMatch)
}

// Delete removes a device under an optional If-Match (remove).
func (r *Registry) Delete(ctx context.Context, hubName, id, ifMatch string) error {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return err
	}
	return r.remove(ctx, hubName, id, ifMatch)
}

// GetModule returns a module, DeviceNotFound when its device does not
// exist, or ModuleNotFound (getModule).
func (r *Registry) GetModule(ctx context.Context, hubName, deviceID, moduleID string) (*Module, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.getModule(ctx, hubName, deviceID, moduleID)
}

// ListModules returns the modules of a device (listModules).
func (r *Registry) ListModules(ctx context.Context, hubName, deviceID string) ([]*Module, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.listModules(ctx, hubName, deviceID)
}

// CreateModule adds a module to an existing device (createModule).
func (r *Registry) CreateModule(ctx context.Context, hubName string, m *Module) (*Module, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.createModule(ctx, hubName, m)
}

// UpdateModule replaces a module's authentication and managedBy
// (updateModule).
func (r *Registry) UpdateModule(ctx context.Context, hubName string, m *Module, ifMatch string) (*Module, error) {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	return r.updateModule(ctx, hubName, m, ifMatch)
}

// DeleteModule removes a module under an optional If-Match
// (deleteModule).
func (r *Registry) DeleteModule(ctx context.Context, hubName, deviceID, moduleID, ifMatch string) error {
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return err
	}
	return r.deleteModule(ctx, hubName, deviceID, moduleID, ifMatch)
}

// Poll is a device's own request for its next cloud-to-device message
// (HTTPS devices poll; MQTT and AMQP sessions are woken instead and use
// Receive). IoT Hub throttles these polls (HubC2DReceive), not the
// deliveries it pushes.
func (q *CloudToDevice) Poll(ctx context.Context, hubName, deviceID string, max int, lockFor time.Duration) ([]*CloudMessage, error) {
	if err := q.reg.throttled(hubName, throttle.HubC2DReceive, 1); err != nil {
		return nil, err
	}
	return q.Receive(ctx, hubName, deviceID, max, lockFor)
}
