package rest

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// maxC2DJSONRequest bounds the raw JSON of a C2D send in the JSON form.
// The 64 KB limit applies to the message (hub.CloudToDevice checks it);
// its JSON is bigger for the reasons maxBatchRequest gives.
const maxC2DJSONRequest = 8 * hub.MaxC2DMessageSize

// maxLockTimeout bounds iothub-messagelocktimeout. IoT Hub documents only the
// 1-minute default (docs/spec/iothub-protocol.md#cloud-to-device-queue);
// berth allows up to five minutes, Service Bus's longest lock, because a
// longer lock only delays redelivery after a device that died holding it.
const maxLockTimeout = 5 * time.Minute

// contentTypeOctets is the Content-Type of a received C2D message's body
// (docs/spec/iothub-protocol.md#cloud-to-device-over-https: not documented;
// no SDK reads it: the message's own content type is in ContentType and
// iothub-contenttype).
const contentTypeOctets = "application/octet-stream"

// sendCloudToDevice is POST /devices/{id}/messages/deviceBound, berth's
// extension for sending a cloud-to-device message over HTTPS (IoT Hub offers
// it over AMQP only; docs/spec/iothub-protocol.md#sending-cloud-to-device),
// so that curl and scripts can reach a device. Two body forms:
//
//   - any Content-Type but the one below: the body is the message, its
//     properties are request headers (see cloudHeaderProperties);
//   - Content-Type application/vnd.microsoft.iothub.json: ONE object in
//     the shape of a D2C batch element, {"body","base64Encoded",
//     "properties"}, whose property names keep their case.
//
// The answer is 200 with what the hub assigned, only once the message is
// durable: 404 DeviceNotFound, 403 DeviceMaximumQueueDepthExceeded (50
// queued), 413 MessageTooLarge (64 KB), 400 ArgumentInvalid otherwise.
func (h *handler) sendCloudToDevice(x *exchange, args []string) {
	q := h.hub.CloudToDevice
	if q == nil {
		x.fail(unavailable("Cloud-to-device messaging is"))
		return
	}
	var m *hub.CloudMessage
	if isBatch(x.r.Header.Get(reqContentType)) {
		body, ok := x.readHubBody(maxC2DJSONRequest)
		if !ok {
			return
		}
		var err error
		if m, err = jsonCloudMessage(body); err != nil {
			x.fail(err)
			return
		}
	} else {
		body, ok := x.readHubBody(hub.MaxC2DMessageSize)
		if !ok {
			return
		}
		m = &hub.CloudMessage{Body: body}
		if err := cloudHeaderProperties(m, x.r.Header); err != nil {
			x.fail(err)
			return
		}
	}
	sent, err := q.Send(x.r.Context(), x.hubName(), args[0], m)
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, c2dSendResult{
		MessageID:       sent.MessageID,
		SequenceNumber:  sent.SequenceNumber,
		EnqueuedTimeUTC: formatHubTime(sent.Enqueued),
		ExpiryTimeUTC:   formatHubTime(sent.Expiry),
	})
}

// c2dSendResult is the answer to a C2D send.
type c2dSendResult struct {
	MessageID       string `json:"messageId"`
	SequenceNumber  int64  `json:"sequenceNumber"`
	EnqueuedTimeUTC string `json:"enqueuedTimeUtc"`
	ExpiryTimeUTC   string `json:"expiryTimeUtc"`
}

// formatHubTime writes a time as the hub stamps iothub-enqueuedtime, in
// UTC: ISO 8601, which C#'s DateTime.TryParse and JavaScript's Date read.
func formatHubTime(t time.Time) string { return t.UTC().Format(hub.EnqueuedTimeLayout) }

// jsonCloudMessage parses the JSON form of a C2D send: one batch element
// (see batchItem; base64Encoded defaults to true), decoded as a batch
// element is. Anything else is 400 ArgumentInvalid.
func jsonCloudMessage(b []byte) (*hub.CloudMessage, error) {
	var it batchItem
	if err := decodeObject(b, &it); err != nil {
		return nil, &azerr.Error{Code: azerr.HubArgumentInvalid, Err: err,
			Message: `The body is not one JSON object {"body":…,"base64Encoded":…,"properties":{…}}.`}
	}
	body, err := it.body("The body of the message")
	if err != nil {
		return nil, err
	}
	m := &hub.CloudMessage{Body: body}
	for _, p := range it.Properties {
		if err := cloudProperty(m, p.Name, p.Value); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// cloudHeaderProperties takes a C2D message's properties from the request
// headers: iothub-messageid, iothub-correlationid, iothub-userid,
// iothub-expiry, iothub-ack, iothub-contenttype, iothub-contentencoding
// and iothub-app-{name}; other headers are ignored. Go's HTTP server
// canonicalises received header names and keeps no raw form, so
// application property names arrive lower-cased whatever the client sent
// (see headerProperties); the JSON form keeps their case.
func cloudHeaderProperties(m *hub.CloudMessage, hdr http.Header) error {
	return eachHeader(hdr, func(name, value string) error { return cloudProperty(m, name, value) })
}

// cloudProperty sets one property of a C2D message, named as a header
// (compared case-insensitively). Names the hub sets itself (iothub-to,
// the sequence number, the enqueued time) are ignored, as is anything
// unknown. The domain validates the values (ack, property charsets, the
// size); this only parses iothub-expiry, an RFC 3339 time.
func cloudProperty(m *hub.CloudMessage, name, value string) error {
	if app, ok := appPropertyName(name); ok {
		setProperty(&m.App, app, value)
		return nil
	}
	lower := strings.ToLower(name)
	fields := map[string]*string{
		"iothub-messageid":       &m.MessageID,
		"iothub-correlationid":   &m.CorrelationID,
		"iothub-userid":          &m.UserID,
		"iothub-ack":             &m.Ack,
		"iothub-contenttype":     &m.ContentType,
		"iothub-contentencoding": &m.ContentEncoding,
	}
	if f, ok := fields[lower]; ok {
		*f = value
		return nil
	}
	if lower == "iothub-expiry" {
		t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(value))
		if err != nil {
			return &azerr.Error{Code: azerr.HubArgumentInvalid, Err: err,
				Message: "iothub-expiry must be an RFC 3339 time, e.g. 2030-01-02T15:04:05Z."}
		}
		m.Expiry = t.UTC()
	}
	return nil
}

// purgeResult is IoT Hub's PurgeMessageQueueResult.
type purgeResult struct {
	TotalMessagesPurged int     `json:"totalMessagesPurged"`
	DeviceID            string  `json:"deviceId"`
	ModuleID            *string `json:"moduleId"` // null: no module queues yet
}

// purgeCloudToDevice is DELETE /devices/{id}/commands: 200 with how many
// messages were deleted, 404 DeviceNotFound.
func (h *handler) purgeCloudToDevice(x *exchange, args []string) {
	q := h.hub.CloudToDevice
	if q == nil {
		x.fail(unavailable("Cloud-to-device messaging is"))
		return
	}
	n, err := q.Purge(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, purgeResult{TotalMessagesPurged: n, DeviceID: args[0]})
}

// deviceCloudToDevice authenticates a device on one of its C2D endpoints
// (as sendEvent does) and returns its queue service.
func (h *handler) deviceCloudToDevice(x *exchange, deviceID string) (*hub.Identity, *hub.CloudToDevice, bool) {
	id, ok := h.authenticateDevice(x, deviceID)
	if !ok {
		return nil, nil, false
	}
	q := h.hub.CloudToDevice
	if q == nil {
		x.fail(unavailable("Cloud-to-device messaging is"))
		return nil, nil, false
	}
	return id, q, true
}

// receiveCloudToDevice is GET /devices/{deviceId}/messages/deviceBound
// (docs/spec/iothub-protocol.md#cloud-to-device-over-https): the oldest
// deliverable message, locked for iothub-messagelocktimeout seconds, as 200
// with its body and properties in headers; 204 when there is none.
func (h *handler) receiveCloudToDevice(x *exchange, args []string) {
	id, q, ok := h.deviceCloudToDevice(x, args[0])
	if !ok {
		return
	}
	lockFor, err := lockTimeout(x.r)
	if err != nil {
		x.fail(err)
		return
	}
	deviceID := id.Device.DeviceID
	msgs, err := q.Poll(x.r.Context(), x.hubName(), deviceID, 1, lockFor)
	if err != nil {
		x.fail(err)
		return
	}
	h.hub.Registry.Active(x.hubName(), deviceID)
	if len(msgs) == 0 {
		x.noContent()
		return
	}
	x.writeCloudMessage(msgs[0])
}

// lockTimeout reads the query parameter iothub-messagelocktimeout (C#
// sends 60): whole seconds. Absent, empty or below one second means
// hub.DefaultLockTimeout; above maxLockTimeout is clamped to it; a value
// that is not an integer is 400, as listTop refuses one.
func lockTimeout(r *http.Request) (time.Duration, error) {
	v, _ := queryValue(r.URL, "iothub-messagelocktimeout")
	if v == "" {
		return hub.DefaultLockTimeout, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		if !errors.Is(err, strconv.ErrRange) {
			return 0, azerr.Newf(azerr.HubArgumentInvalid, "iothub-messagelocktimeout must be a whole number of seconds.")
		}
		// Out of int range is still an integer: the sign says which end.
		n = math.MaxInt
		if strings.HasPrefix(v, "-") {
			n = 0
		}
	}
	switch {
	case n < 1:
		return hub.DefaultLockTimeout, nil
	case n > int(maxLockTimeout/time.Second):
		return maxLockTimeout, nil
	}
	return time.Duration(n) * time.Second, nil
}

// writeCloudMessage answers 200 with a locked C2D message: the body as
// sent, the properties in headers named exactly as the SDKs look them up
// (assigned to the header map directly: the C SDK compares names
// case-sensitively, and Go's canonical "Etag" or "Iothub-Messageid" would
// not be found):
//
//   - ETag: the lock token, quoted (Node drops the first and last
//     character, C# trims quotes, the C SDK requires them);
//   - iothub-messageid, iothub-correlationid, iothub-to, iothub-userid,
//     iothub-expiry, iothub-ack, iothub-enqueuedtime,
//     iothub-deliverycount, iothub-sequencenumber (C#
//     s_mapHttpHeadersToMessageProperties), those without a value left
//     out;
//   - iothub-app-{name} per application property (the C SDK strips the
//     lower-case prefix case-sensitively);
//   - the content type and encoding under both ContentType /
//     ContentEncoding (what the C SDK reads) and iothub-contenttype /
//     iothub-contentencoding (the D2C names): which one IoT Hub sends is
//     not documented, so berth sends both
//     (docs/spec/iothub-protocol.md#cloud-to-device-over-https).
func (x *exchange) writeCloudMessage(m *hub.CloudMessage) {
	h := x.w.Header()
	set := func(name, value string) {
		if value != "" {
			h[name] = []string{value}
		}
	}
	set(hdrETag, `"`+m.LockToken+`"`)
	set("iothub-messageid", m.MessageID)
	set("iothub-correlationid", m.CorrelationID)
	set("iothub-to", m.To)
	set("iothub-userid", m.UserID)
	set("iothub-expiry", formatHubTime(m.Expiry))
	set("iothub-ack", m.Ack)
	set("iothub-enqueuedtime", formatHubTime(m.Enqueued))
	set("iothub-deliverycount", strconv.Itoa(m.DeliveryCount))
	set("iothub-sequencenumber", strconv.FormatInt(m.SequenceNumber, 10))
	set("ContentType", m.ContentType)
	set("iothub-contenttype", m.ContentType)
	set("ContentEncoding", m.ContentEncoding)
	set("iothub-contentencoding", m.ContentEncoding)
	for _, p := range m.App {
		h[appPropertyPrefix+p.Name] = []string{p.Value}
	}
	h[hdrContentType] = []string{contentTypeOctets}
	h[hdrRequestID] = []string{x.id}
	x.status = http.StatusOK
	x.w.WriteHeader(http.StatusOK)
	_, _ = x.w.Write(m.Body)
}

// completeCloudToDevice is DELETE
// /devices/{deviceId}/messages/deviceBound/{lockToken}: complete, or reject
// when the query has a reject parameter with any value or none (C# sends
// "&reject", the docs "a query parameter named reject"). 204; 412
// DeviceMessageLockLost when the lock is not (any more) the message's.
// If-Match is not looked at: the SDKs disagree on its quoting and the path's
// lock token is authoritative
// (docs/spec/iothub-protocol.md#cloud-to-device-over-https).
func (h *handler) completeCloudToDevice(x *exchange, args []string) {
	id, q, ok := h.deviceCloudToDevice(x, args[0])
	if !ok {
		return
	}
	settle := q.Complete
	if _, reject := queryValue(x.r.URL, "reject"); reject {
		settle = q.Reject
	}
	h.settleCloudToDevice(x, id, args[1], settle)
}

// abandonCloudToDevice is POST
// /devices/{deviceId}/messages/deviceBound/{lockToken}/abandon: 204, the
// message visible again with its delivery counted.
func (h *handler) abandonCloudToDevice(x *exchange, args []string) {
	id, q, ok := h.deviceCloudToDevice(x, args[0])
	if !ok {
		return
	}
	h.settleCloudToDevice(x, id, args[1], q.Abandon)
}

func (h *handler) settleCloudToDevice(x *exchange, id *hub.Identity, lockToken string, settle func(ctx context.Context, hubName, deviceID, token string) error) {
	deviceID := id.Device.DeviceID
	if err := settle(x.r.Context(), x.hubName(), deviceID, lockToken); err != nil {
		x.fail(err)
		return
	}
	h.hub.Registry.Active(x.hubName(), deviceID)
	x.noContent()
}
