package hub

import "context"

// FaultPoint names a place in the hub domain where a test server may make
// the hub misbehave (Faults).
type FaultPoint int

const (
	// FaultConnect: a device connection (MQTT CONNECT, an HTTPS device
	// request, any front end) is being authenticated. An error refuses it
	// with the error's code; a wait delays it.
	FaultConnect FaultPoint = iota + 1
	// FaultTelemetry: a device-to-cloud message is about to be accepted.
	// An error refuses it, unacknowledged.
	FaultTelemetry
	// FaultTwin: a device's twin GET or reported-properties PATCH is about
	// to be answered. A wait delays the answer.
	FaultTwin
	// FaultMethod: a device's direct-method answer is about to be returned
	// to the caller. A wait delays it; past the call's response timeout
	// the caller gets 504 GatewayTimeout, as when the device answers late.
	FaultMethod
)

// Faults injects failures at the domain's fault points, so that every
// front end gets them. Only test servers (hubtest) set one; without one
// each point costs a nil check.
type Faults interface {
	// Fault runs at point for the device hubName/deviceID and returns nil
	// to carry on. It may block until ctx ends.
	Fault(ctx context.Context, point FaultPoint, hubName, deviceID string) error
}

// SetFaults installs f (nil for none). Call it before the registry serves:
// the fault points read it without a lock, to cost nothing in production.
func (r *Registry) SetFaults(f Faults) { r.faults = f }

// fault runs the installed Faults at point, if any.
func (r *Registry) fault(ctx context.Context, point FaultPoint, hubName, deviceID string) error {
	if r == nil || r.faults == nil {
		return nil
	}
	return r.faults.Fault(ctx, point, hubName, deviceID)
}
