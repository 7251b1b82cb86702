package amqp

import (
	engine "github.com/berth-iot/berth/amqp"
)

// attachModuleEvents serves /devices/{d}/modules/{m}/messages/events. A
// module's sender brings its telemetry, accepted as a device's
// (attachTelemetry: the module's grant, its sender stamps). A module's
// receiver on the same address asks for input messages — what IoT Edge
// routes between modules (docs/spec/amqp-protocol.md#link-addresses) —
// which IoT Hub itself never sends: refused as not implemented.
func (c *conn) attachModuleEvents(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	if l.Role() == engine.RoleSender {
		return nil, linkError(engine.ErrCondNotImplemented, "Module input messages (IoT Edge routing) are not served by berth: module %q of device %q.", clip(m.moduleID), clip(m.deviceID))
	}
	return c.attachTelemetry(l, m)
}
