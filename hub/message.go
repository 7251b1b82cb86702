package hub

import (
	"context"
	"time"
)

// MaxMessageSize is IoT Hub's device-to-cloud message limit: body, system
// property values and application property names and values together.
const MaxMessageSize = 256 * 1024

// System property names, as IoT Hub's consumers (the Event Hub-compatible
// endpoint, az iot hub monitor-events) show them.
const (
	PropMessageID       = "message-id"
	PropCorrelationID   = "correlation-id"
	PropUserID          = "user-id"
	PropTo              = "to"
	PropExpiry          = "absolute-expiry-time"
	PropContentType     = "content-type"
	PropContentEncoding = "content-encoding"
	PropCreationTime    = "iothub-creation-time-utc"
	PropComponent       = "dt-subject"
	PropInterfaceID     = "iothub-interface-name"
	PropSchema          = "dt-dataschema"
	PropOutputName      = "iothub-outputname"
	// Stamped by the hub on every message.
	PropConnDeviceID     = "iothub-connection-device-id"
	PropConnModuleID     = "iothub-connection-module-id"
	PropConnGenerationID = "iothub-connection-auth-generation-id"
	PropConnAuthMethod   = "iothub-connection-auth-method"
	PropEnqueuedTime     = "iothub-enqueuedtime"
	PropMessageSource    = "iothub-message-source"
)

// Property is one name/value pair; order is kept as the device sent it.
type Property struct {
	Name  string
	Value string
}

// Message is a device-to-cloud message as the hub accepted it.
type Message struct {
	Hub      string
	DeviceID string
	ModuleID string
	// Partition is the hub partition the message is stored in
	// (PartitionOf its device), set by Telemetry.
	Partition int
	// System are the system properties, those the device set and those the
	// hub stamps, by the names in the Prop* constants.
	System []Property
	// App are the application properties.
	App []Property
	// Enqueued is when the hub accepted the message.
	Enqueued time.Time
	Body     []byte
}

// SystemValue returns a system property's value.
func (m *Message) SystemValue(name string) (string, bool) {
	for _, p := range m.System {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// Size is the message size IoT Hub counts against its limit.
func (m *Message) Size() int {
	n := len(m.Body)
	for _, p := range m.System {
		n += len(p.Value)
	}
	for _, p := range m.App {
		n += len(p.Name) + len(p.Value)
	}
	return n
}

// TelemetrySink is where accepted telemetry goes (package stream). Append
// returns only once the message is durable: Telemetry, and so every front
// end's acknowledgement (QoS 1 PUBACK, HTTP 204), waits for it.
type TelemetrySink interface {
	Append(ctx context.Context, m *Message) error
}

// MessageSourceTelemetry is iothub-message-source on device telemetry.
const MessageSourceTelemetry = "Telemetry"

// EnqueuedTimeLayout is how iothub-enqueuedtime is written: RFC 3339 in
// UTC with milliseconds.
const EnqueuedTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Stamp adds what the hub sets on every accepted device-to-cloud message
// (docs/hub-wire.md, "Telemetry"), so that a message is the same whichever
// transport brought it. now is truncated to milliseconds, the precision of
// iothub-enqueuedtime. Telemetry.AcceptBatch stamps every message it
// accepts; this form serves callers that hold an Identity.
func Stamp(m *Message, hubName string, id *Identity, now time.Time) {
	stampSender(m, SenderOf(hubName, id), now)
}

// stampSender stamps m as sent by from, adding dt-dataschema when the
// device named its model.
func stampSender(m *Message, from Sender, now time.Time) {
	now = now.UTC().Truncate(time.Millisecond)
	m.Hub, m.DeviceID, m.ModuleID, m.Enqueued = from.Hub, from.DeviceID, from.ModuleID, now
	m.System = append(m.System, Property{Name: PropConnDeviceID, Value: from.DeviceID})
	if from.ModuleID != "" {
		m.System = append(m.System, Property{Name: PropConnModuleID, Value: from.ModuleID})
	}
	m.System = append(m.System,
		Property{Name: PropConnGenerationID, Value: from.GenerationID},
		Property{Name: PropConnAuthMethod, Value: from.AuthMethod},
		Property{Name: PropEnqueuedTime, Value: now.Format(EnqueuedTimeLayout)},
		Property{Name: PropMessageSource, Value: MessageSourceTelemetry},
	)
	if from.ModelID != "" {
		m.System = append(m.System, Property{Name: PropSchema, Value: from.ModelID})
	}
}
