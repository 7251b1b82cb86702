package topics

import (
	"strings"

	"github.com/berth-iot/berth/hub"
)

// c2dTopicSegment follows devices/{deviceId} in a delivery topic.
const c2dTopicSegment = "/messages/devicebound/"

// C2D is the topic a C2D message is delivered on,
// devices/{deviceId}/messages/devicebound/{bag}
// (docs/spec/iothub-protocol.md#cloud-to-device-over-mqtt). The bag holds, in
// the order berth chose there, $.mid, $.cid, $.uid, $.to, $.exp, $.ct, $.ce
// and iothub-ack (unless none), then the application properties. Keys and
// values are percent-encoded leaving only RFC 3986 unreserved characters as
// they are: Node reads the bag as the fifth '/'-segment, splits it on '&' and
// each pair on '=', then decodeURIComponent's both, so a raw '/', '&', '=' or
// '%' would corrupt it. An empty value is written "key=" (a bare key would
// reach Node as the string "undefined").
func C2D(deviceID string, m *hub.CloudMessage) string {
	var b strings.Builder
	b.Grow(len(DevicesPrefix) + len(deviceID) + len(c2dTopicSegment) + 128)
	b.WriteString(DevicesPrefix)
	b.WriteString(deviceID)
	b.WriteString(c2dTopicSegment)
	first := true
	add := func(key, value string) {
		if !first {
			b.WriteByte('&')
		}
		first = false
		escapeBagPart(&b, key)
		b.WriteByte('=')
		escapeBagPart(&b, value)
	}
	addSet := func(key, value string) {
		if value != "" {
			add(key, value)
		}
	}
	addSet("$.mid", m.MessageID)
	addSet("$.cid", m.CorrelationID)
	addSet("$.uid", m.UserID)
	addSet("$.to", m.To)
	if !m.Expiry.IsZero() {
		add("$.exp", m.Expiry.UTC().Format(hub.EnqueuedTimeLayout))
	}
	addSet("$.ct", m.ContentType)
	addSet("$.ce", m.ContentEncoding)
	if m.Ack != "" && m.Ack != hub.AckNone {
		add("iothub-ack", m.Ack)
	}
	for _, p := range m.App {
		add(p.Name, p.Value)
	}
	return b.String()
}

// escapeBagPart percent-encodes every byte but RFC 3986's unreserved
// characters, with upper-case hex.
func escapeBagPart(b *strings.Builder, s string) {
	const hexDigits = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
}
