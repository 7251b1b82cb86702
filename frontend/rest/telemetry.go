package rest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// batchContentType marks a batch of events
// (docs/spec/iothub-protocol.md#batches-over-https).
const batchContentType = "application/vnd.microsoft.iothub.json"

// maxBatchRequest bounds the raw JSON of a batch. The 256 KB limit applies
// to the messages it carries (see sendEvent), but their JSON is bigger:
// base64 adds a third, a text body's escapes up to six times (\u0000), and
// every property name carries "iothub-app-". Eight times the message limit
// leaves room for all of that while bounding what a client makes the
// server hold.
const maxBatchRequest = 8 * hub.MaxMessageSize

// appPropertyPrefix marks an application property among the HTTP headers
// and the batch "properties" keys; it is stripped on ingestion.
const appPropertyPrefix = "iothub-app-"

// sendEvent is POST /devices/{deviceId}/messages/events
// (docs/spec/iothub-protocol.md#telemetry-over-https, #batches-over-https):
// one event whose body is the request body, or, with Content-Type
// application/vnd.microsoft.iothub.json, a batch of events. The answer is 204
// only after the sink has made every message durable.
//
// The device authenticates (see authenticateDevice: a SAS token, or its
// TLS client certificate when it sends no Authorization) before a byte of
// the body is read.
func (h *handler) sendEvent(x *exchange, args []string) {
	id, ok := h.authenticate(x, args[0], moduleArg(args))
	if !ok {
		return
	}
	tel := h.hub.Telemetry
	if !tel.Enabled() {
		// Before reading the body: nothing would take it.
		x.fail(azerr.Newf(azerr.HubServiceUnavailable, "Telemetry is not enabled on this hub."))
		return
	}

	var msgs []*hub.Message
	if isBatch(x.r.Header.Get(reqContentType)) {
		// The request's own property headers are not applied to the
		// batch's messages: each message carries its properties in the
		// JSON, and the SDKs send none on the request.
		body, ok := x.readHubBody(maxBatchRequest)
		if !ok {
			return
		}
		var err error
		if msgs, err = batchMessages(body); err != nil {
			x.fail(err)
			return
		}
	} else {
		// Any other Content-Type, or none, is a single event whose body
		// is the raw request body (Node sends none, the C SDK
		// application/octet-stream). The HTTP Content-Type is not the
		// message's content-type: that is iothub-contenttype.
		body, ok := x.readHubBody(hub.MaxMessageSize)
		if !ok {
			return
		}
		m := &hub.Message{Body: body}
		headerProperties(m, x.r.Header)
		msgs = []*hub.Message{m}
	}
	// hub.Telemetry holds the batch to the size limit as a whole, stamps
	// it, makes it durable and marks the device active (HTTP devices never
	// show as Connected, as on IoT Hub, but they are active).
	if err := tel.AcceptBatch(x.r.Context(), hub.SenderOf(x.hubName(), id), msgs); err != nil {
		x.fail(fmt.Errorf("rest: telemetry from %s: %w", id.Device.DeviceID, err))
		return
	}
	x.noContent()
}

// authenticateDevice checks the device's credential for deviceID before a
// byte of the body is read: its SAS token (a token for itself, or a policy
// token with DeviceConnect), or, when the request has no Authorization
// header, the TLS client certificate it presented
// (docs/spec/iothub-protocol.md#x509-device-authentication: a selfSigned
// device's thumbprint, a certificateAuthority device's chain to a trusted
// CA). Both are checked against the hub the Host header picked. The registry
// refuses credentials for another device and disabled devices with 401
// IotHubUnauthorizedAccess. On failure it has answered and ok is false.
func (h *handler) authenticateDevice(x *exchange, deviceID string) (id *hub.Identity, ok bool) {
	return h.authenticate(x, deviceID, "")
}

// authenticate is authenticateDevice for a device or, with moduleID, one
// of its modules.
func (h *handler) authenticate(x *exchange, deviceID, moduleID string) (id *hub.Identity, ok bool) {
	ctx := x.r.Context()
	var err error
	chain := x.clientCerts()
	if moduleID != "" && chain != nil {
		id, err = h.hub.Registry.AuthenticateModuleCert(ctx, x.hubName(), deviceID, moduleID, chain)
	} else if moduleID != "" {
		id, err = h.hub.Registry.AuthenticateModule(ctx, x.target.Settings, x.hubName(), deviceID, moduleID, x.r.Header.Get(reqAuthorization))
	} else if chain != nil {
		id, err = h.hub.Registry.AuthenticateDeviceCert(ctx, x.hubName(), deviceID, chain)
	} else {
		id, err = h.hub.Registry.AuthenticateDevice(ctx, x.target.Settings, x.hubName(), deviceID, x.r.Header.Get(reqAuthorization))
	}
	if err != nil {
		x.fail(err)
		return nil, false
	}
	return id, true
}

// isBatch reports whether a Content-Type names the batch format; the
// comparison ignores case and parameters.
func isBatch(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt, _, _ = strings.Cut(ct, ";")
	}
	return strings.EqualFold(strings.TrimSpace(mt), batchContentType)
}

// headerProperties takes the properties of a single event from its HTTP
// headers (docs/spec/iothub-protocol.md#telemetry-over-https).
//
// Application property names are lower-cased. Go's HTTP server
// canonicalises every received header name ("iothub-app-myKey" arrives as
// "Iothub-App-Mykey") and net/http keeps no raw form of the request
// headers, so the device's spelling is lost before this code runs. Lower
// case is the one spelling that does not depend on Go: it is what HTTP/2
// and Node's HTTP stack deliver, and HTTP field names are case-insensitive
// anyway. Devices that need case-sensitive application property names
// send them in a batch (JSON keys keep their case) or over MQTT.
//
// Header order is not kept either (a header map has none): properties are
// added in name order, so the result is deterministic. When a header is
// repeated, its first value counts, as Header.Get reads it.
func headerProperties(m *hub.Message, hdr http.Header) {
	_ = eachHeader(hdr, func(name, value string) error {
		addProperty(m, name, value)
		return nil
	})
}

// eachHeader calls fn with every header, its name lower-cased, in name
// order, with its first value (see headerProperties for why), and stops at
// the first error.
func eachHeader(hdr http.Header, fn func(lowerName, value string) error) error {
	names := make([]string, 0, len(hdr))
	for k := range hdr {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if vs := hdr[k]; len(vs) > 0 {
			if err := fn(strings.ToLower(k), vs[0]); err != nil {
				return err
			}
		}
	}
	return nil
}

// addProperty adds one device-supplied property to m, named as an HTTP
// header or a batch "properties" key (compared case-insensitively; SDKs
// differ: Node sends IoTHub-MessageId). A name that is neither an
// application property nor a mapped system property (Authorization,
// User-Agent, iothub-to, …) is ignored; so is anything naming a property
// the hub stamps itself, which a device must not be able to forge. A
// repeated name replaces the earlier value.
func addProperty(m *hub.Message, name, value string) {
	if app, ok := appPropertyName(name); ok {
		setProperty(&m.App, app, value)
		return
	}
	lower := strings.ToLower(name)
	if sys, ok := systemProperty(lower); ok {
		setProperty(&m.System, sys, value)
		return
	}
	if lower == "iothub-messageschema" {
		// The message schema a device sets is not dt-dataschema: that one is
		// the hub's, the model ID from the MQTT CONNECT
		// (docs/spec/iothub-protocol.md#properties-the-hub-stamps). Consumers
		// see the device's schema as the application property
		// "iothub-message-schema" (Azure IoT Explorer reads it from the
		// event's application properties).
		setProperty(&m.App, "iothub-message-schema", value)
	}
}

// appPropertyName returns the application property a header or batch
// property name sets: the name without its iothub-app- prefix (matched
// case-insensitively), or ok false when it is not one.
func appPropertyName(name string) (app string, ok bool) {
	if len(name) > len(appPropertyPrefix) && strings.EqualFold(name[:len(appPropertyPrefix)], appPropertyPrefix) {
		return name[len(appPropertyPrefix):], true
	}
	return "", false
}

// systemProperty maps a lower-cased HTTP header name to the system
// property it sets (C# s_mapMessagePropertiesToHttpHeaders, plus Node's
// unprefixed dt-subject). The values are taken as sent; like the MQTT
// front end, berth does not validate the times in iothub-expiry and
// iothub-creationtimeutc.
//
// Not mapped: iothub-to (the path already says where the message goes),
// iothub-ack (feedback is for cloud-to-device messages) and
// iothub-operation (legacy, ignored by the SDKs themselves).
func systemProperty(lower string) (string, bool) {
	switch lower {
	case "iothub-messageid":
		return hub.PropMessageID, true
	case "iothub-correlationid":
		return hub.PropCorrelationID, true
	case "iothub-userid":
		return hub.PropUserID, true
	case "iothub-expiry":
		return hub.PropExpiry, true
	case "iothub-contenttype":
		return hub.PropContentType, true
	case "iothub-contentencoding":
		return hub.PropContentEncoding, true
	case "iothub-creationtimeutc":
		return hub.PropCreationTime, true
	case "iothub-interface-id":
		// That mapping is not documented
		// (docs/spec/iothub-protocol.md#system-properties-on-mqtt); it is
		// the one MQTT's $.ifid uses, so both transports agree.
		return hub.PropInterfaceID, true
	case "dt-subject":
		return hub.PropComponent, true
	}
	return "", false
}

// setProperty sets name in a property list, replacing an earlier value.
func setProperty(list *[]hub.Property, name, value string) {
	for i := range *list {
		if (*list)[i].Name == name {
			(*list)[i].Value = value
			return
		}
	}
	*list = append(*list, hub.Property{Name: name, Value: value})
}

// batchItem is one message of a batch.
type batchItem struct {
	Body string `json:"body"`
	// Base64Encoded defaults to true: C# and Node send base64 bodies
	// without the field; the C SDK sets it false for text bodies.
	Base64Encoded *bool           `json:"base64Encoded"`
	Properties    batchProperties `json:"properties"`
}

// body returns the element's body bytes: base64-decoded unless
// base64Encoded is false. what names the body in the error, which is 400
// ArgumentInvalid.
func (it *batchItem) body(what string) ([]byte, error) {
	if it.Base64Encoded != nil && !*it.Base64Encoded {
		return []byte(it.Body), nil
	}
	b, err := base64.StdEncoding.DecodeString(it.Body)
	if err != nil {
		return nil, &azerr.Error{Code: azerr.HubArgumentInvalid, Err: err,
			Message: what + ` is not base64 (send "base64Encoded":false with a text body).`}
	}
	return b, nil
}

// batchProperties are a batch message's properties in document order
// (a map would lose the order the device gave its application
// properties). Keys are HTTP header names, mapped as headers are; unlike
// headers they keep their case.
type batchProperties []hub.Property

// UnmarshalJSON reads a JSON object of strings; null is no properties.
func (p *batchProperties) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("properties: %w", err)
	}
	if tok == nil {
		*p = nil
		return nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("properties is not a JSON object")
	}
	var out batchProperties
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return fmt.Errorf("properties: %w", err)
		}
		key, _ := kt.(string) // an object key is always a string
		var v *string
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("property %q: %w", key, err)
		}
		if v == nil {
			return fmt.Errorf("property %q is null", key)
		}
		out = append(out, hub.Property{Name: key, Value: *v})
	}
	*p = out
	return nil
}

// batchMessages parses a batch body
// (docs/spec/iothub-protocol.md#batches-over-https): a non-empty JSON array
// of {"body","base64Encoded","properties"}. A body that is not JSON of that
// shape is 400 IotHubFormatError; a batch that is JSON but unusable (empty, a
// null element, bad base64) is 400 ArgumentInvalid. Unknown members are
// ignored.
func batchMessages(b []byte) ([]*hub.Message, error) {
	items, err := decodeBatch(b)
	if err != nil {
		return nil, azerr.Wrap(azerr.HubFormatError, err)
	}
	if len(items) == 0 {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The batch contains no messages.")
	}
	msgs := make([]*hub.Message, 0, len(items))
	for i, it := range items {
		if it == nil {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "Message %d of the batch is null.", i)
		}
		body, err := it.body(fmt.Sprintf("The body of message %d of the batch", i))
		if err != nil {
			return nil, err
		}
		m := &hub.Message{Body: body}
		for _, p := range it.Properties {
			addProperty(m, p.Name, p.Value)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// decodeBatch decodes the JSON array, refusing anything else and trailing
// data.
func decodeBatch(b []byte) ([]*batchItem, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '[' {
		return nil, errors.New("the batch is not a JSON array")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var items []*batchItem
	if err := dec.Decode(&items); err != nil {
		return nil, fmt.Errorf("decode batch: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after the batch")
	}
	return items, nil
}
