// Package eventhubs is the domain of a hub's Event Hubs-compatible endpoint
// (docs/telemetry-stream.md, docs/spec/amqp-protocol.md "Event
// Hubs-compatible endpoint"): how the entity and its connection string are
// named, where a partition receiver starts (the selector filter), and which
// receivers may read a consumer group's partition at once (epochs, Azure's
// limit of five). It knows no wire: frontend/amqp translates links and
// messages, package stream stores the partitions.
package eventhubs

import (
	"net"
	"strconv"
	"strings"

	"github.com/berth-iot/berth/hub"
)

// DefaultConsumerGroup is the group every Event Hub has.
const DefaultConsumerGroup = hub.DefaultConsumerGroup

// MaxReceivers is how many receivers Azure lets read one partition of a
// consumer group at once.
const MaxReceivers = 5

// EntityName is the Event Hub a hub's telemetry is served as: the first
// label of the hub's host name, as IoT Hub names its built-in endpoint
// (the SDKs take it from the redirect's address).
func EntityName(hubHost string) string {
	h := hubHost
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	if net.ParseIP(strings.Trim(h, "[]")) != nil {
		// An IP address has no first label worth the name.
		return strings.NewReplacer(".", "-", ":", "-", "[", "", "]", "").Replace(h)
	}
	name, _, _ := strings.Cut(h, ".")
	return name
}

// Namespace is the host name (with a port other than 5671) the Event
// Hubs clients connect to: the hub's own host, whose TLS certificate and
// AMQP listener berth already has.
func Namespace(hubHost string, amqpPort int) string {
	if amqpPort == 0 || amqpPort == 5671 {
		return hubHost
	}
	return net.JoinHostPort(hubHost, strconv.Itoa(amqpPort))
}

// ConnectionString is the Event Hubs connection string of a hub policy:
// what an Event Hubs consumer needs to read the hub's telemetry.
func ConnectionString(hubHost string, amqpPort int, p *hub.Policy) string {
	return "Endpoint=sb://" + Namespace(hubHost, amqpPort) + "/;SharedAccessKeyName=" + p.KeyName +
		";SharedAccessKey=" + p.PrimaryKey + ";EntityPath=" + EntityName(hubHost)
}
