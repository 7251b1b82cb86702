// Package stream is berth's device-to-cloud telemetry store: a NATS
// JetStream stream that every accepted message is appended to before the
// device gets its QoS 1 PUBACK or HTTP 204, in a layout any NATS client can
// consume. It plays the part of IoT Hub's built-in Event Hub-compatible
// endpoint.
//
// # Where it lives
//
// With Config.URL empty, berth runs nats-server in-process (berth connects
// through an in-process pipe; Config.ListenAddr optionally opens a
// token-protected port for local readers) with JetStream file storage in
// Config.StoreDir. With a URL, berth connects to an external NATS
// server or cluster and creates the stream there; that is how other programs
// consume the telemetry.
//
// The stream (default BERTH_TELEMETRY) captures {prefix}.> (default prefix
// berth.telemetry), file storage, limits retention: MaxAge (default 7 days,
// IoT Hub's maximum; its default is 1 day), MaxBytes (default unlimited),
// oldest messages discarded first. No Nats-Msg-Id is set: IoT Hub does not
// de-duplicate by message-id, and a QoS 1 redelivery can be stored twice
// here as there.
//
// # Subjects
//
//	{prefix}.{hub}.{deviceId}
//
// hub is the hub's host name, deviceId the sending device (a module's
// messages go to its device's subject; see iothub-connection-module-id).
// Each is encoded to be exactly one literal subject token by EncodeToken:
// '.', '*', '>', '%', space, control bytes, DEL and non-ASCII bytes become
// %XX (upper-case hex of each byte); everything else is kept. So device
// "my.dev" on hub "hub.example.lan" is
//
//	berth.telemetry.hub%2Eexample%2Elan.my%2Edev
//
// and a consumer filters one device with that subject, one hub with
// berth.telemetry.hub%2Eexample%2Elan.* and everything with
// berth.telemetry.>. Subject and ParseSubject convert.
//
// # Messages
//
// The body is the device's payload, byte for byte. The headers are:
//
//   - each system property under its IoT Hub name, as consumers of the
//     built-in endpoint see them: message-id, correlation-id, user-id, to,
//     absolute-expiry-time, content-type, content-encoding,
//     iothub-creation-time-utc, dt-subject, dt-dataschema,
//     iothub-interface-name, iothub-outputname,
//     iothub-connection-device-id, iothub-connection-module-id,
//     iothub-connection-auth-generation-id, iothub-connection-auth-method,
//     iothub-enqueuedtime, iothub-message-source — those the message has.
//     iothub-connection-device-id and iothub-enqueuedtime are always
//     present (Append stamps them if the hub did not), as is
//     iothub-connection-module-id for module messages.
//   - iothub-enqueuedtime is RFC 3339 in UTC with exactly seven fractional
//     digits (EnqueuedLayout, e.g. 2024-05-06T07:08:09.1234567Z), .NET's
//     round-trip format; Message.Enqueued is its source.
//   - each application property as iothub-app-{name} (AppPrefix; the same
//     convention as IoT Hub's HTTPS API), so no device property can collide
//     with a system or NATS header. Names keep their case (nats.go does not
//     canonicalise header keys); a name repeated by the device becomes a
//     repeated header.
//   - berth-hub: the hub host name.
//   - berth-app-order: when there are two or more application properties,
//     the header-name suffixes after iothub-app- in the device's order,
//     comma-separated, because NATS headers are unordered maps in every
//     client.
//
// Header names: characters not allowed in NATS header keys (anything but
// printable ASCII, and `"(),/:;<=>?@[\]{}`) and '%' are %XX-encoded;
// iothub-app-a%2Fb is property "a/b". Header values: '%', control bytes,
// DEL, non-ASCII bytes and a space at either end are %XX-encoded, because
// NATS trims values, cannot carry CR/LF and ADR-4 wants ASCII; every value
// berth writes is encoded this way, so a reader percent-decodes every value
// once (a URL path unescape: '+' stays '+'). Typical values (JSON content
// types, IDs, times) contain none of these and read as is. berth-app-order
// holds header-name suffixes, already ASCII, and is not value-encoded.
//
// When decoding (Subscribe), system properties come back in the order of
// hub's Prop constants (IoT Hub presents them as a dictionary; their order
// is not stored), application properties in the device's order. Headers
// starting with Nats- (the server's, e.g. Nats-Batch-Id on batched
// messages) and berth- are not properties.
//
// # Durability
//
// Append returns after JetStream's PubAck and, on the embedded server,
// after berth's own fsync of the stream's message blocks (blocksync.go):
// an acknowledged message survives a power cut. Concurrent Appends are
// group-committed: one goroutine publishes what queued up meanwhile. On the
// embedded server the group goes out as pipelined publishes that the
// server writes to the OS, then one fsync covers the group (and overlaps
// the publishing of the next). On an external server a group of 16 or more
// is one JetStream atomic batch (nats-server ≥ 2.12), stored all or nothing
// with one fsync; servers or streams without atomic batches get one publish
// per message (see commit.go). On an external server the
// guarantee is that server's: with one replica and default settings the
// message is written to the OS but fsynced only every 2 minutes, so set
// `jetstream { sync_interval: always }` there (recent nats-server; 2.9 lacks
// it) or use three replicas. Measurements and the trade-offs are in
// docs/telemetry-stream.md.
//
// AppendBatch stores messages a device sent together (an HTTPS batch) as
// one atomic batch of their own: all or none (batch.go). Every publish is
// retried through a NATS leader election, 2 s a try and 10 s in all, and
// then fails with an error whose Unavailable() is true, so front ends
// answer 503 or close without PUBACK (retry.go).
//
// # Reading
//
// Subscribe and ReadPartition read through ephemeral pull consumers that
// berth creates with a fresh name and a bounded wait on every try, and
// replaces (from the message after the last one handed over) when their
// heartbeats stop or their delivery skips, so that readers go on by
// themselves after a NATS server of a cluster is lost (reader.go).
package stream
