package topics

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/berth-iot/berth/hub"
)

const (
	// PropMessageSchema is where a device's own message schema goes: not
	// dt-dataschema, which is the hub's (the CONNECT model-id), but the
	// application property the HTTPS front end files iothub-messageschema
	// under, and Azure IoT Explorer reads.
	PropMessageSchema = "iothub-message-schema"
)

// Telemetry topic parts (docs/spec/iothub-protocol.md#telemetry-topics).
const (
	// DevicesPrefix starts every device-scoped topic.
	DevicesPrefix  = "devices/"
	modulesSegment = "modules/"
	eventsSegment  = "messages/events"
)

// ParseTelemetry splits a telemetry topic,
//
//	devices/{deviceId}/messages/events[/[{bag}[/]]]
//	devices/{deviceId}/modules/{moduleId}/messages/events[/[{bag}[/]]]
//
// into its IDs and property bag. The bag is everything after
// "messages/events/" (it may contain unencoded '/': the C SDK sends
// "%24.ct=application/json"), less one trailing '/' (C# and Node's output
// events append one). ok is false for any other topic.
func ParseTelemetry(topic string) (deviceID, moduleID, bag string, ok bool) {
	rest, ok := strings.CutPrefix(topic, DevicesPrefix)
	if !ok {
		return "", "", "", false
	}
	deviceID, rest, ok = strings.Cut(rest, "/")
	if !ok {
		return "", "", "", false
	}
	if r, isModule := strings.CutPrefix(rest, modulesSegment); isModule {
		moduleID, rest, ok = strings.Cut(r, "/")
		if !ok || moduleID == "" {
			return "", "", "", false
		}
	}
	after, ok := strings.CutPrefix(rest, eventsSegment)
	switch {
	case !ok:
		return "", "", "", false
	case after == "":
	case after[0] == '/':
		bag = strings.TrimSuffix(after[1:], "/")
	default:
		// messages/eventsX
		return "", "", "", false
	}
	return deviceID, moduleID, bag, true
}

// ParsePropertyBag parses the property bag of a telemetry topic
// (docs/spec/iothub-protocol.md#property-bags, #system-properties-on-mqtt)
// into system and application properties.
//
// The bag is split on '&' and each pair at its first '='. Empty pairs
// ("&&", a trailing '&') are skipped. Keys and values are percent-decoded
// (hex in either case) without turning '+' into a space, as every SDK's
// decoder does; an invalid escape, a key that decodes to nothing, and
// anything that does not decode to UTF-8 are errors (property names and
// values are strings for every consumer). A key without '=' is a property
// whose value is null; hub.Property has no null, so it is recorded with
// an empty value, the same as "key=".
//
// Keys starting with "$." ("%24." as the SDKs send it) are system
// properties: $.mid message-id, $.cid correlation-id, $.uid user-id, $.to
// to, $.exp absolute-expiry-time, $.ct content-type, $.ce
// content-encoding, $.ctime iothub-creation-time-utc, $.sub dt-subject,
// $.ifid iothub-interface-name and $.on iothub-outputname. $.schema, the
// device's message schema, becomes the application property
// iothub-message-schema, as iothub-messageschema does over HTTPS. Other
// "$." keys ($.diagid, $.diagctx, …) are kept as application properties
// under their decoded names, as IoT Edge does: dropping them would lose
// what the device sent, and as application properties they cannot pass
// for anything the hub stamps. Values are taken as sent (times are not
// validated, as over HTTPS).
//
// Everything else is an application property, in the order sent. A
// repeated name keeps its first position and takes the last value (a
// consumer's property map holds one value per name; the HTTPS front end
// does the same).
func ParsePropertyBag(bag string) (system, app []hub.Property, err error) {
	var sys, ap propList
	for pair := range strings.SplitSeq(bag, "&") {
		if pair == "" {
			continue
		}
		rawKey, rawValue, _ := strings.Cut(pair, "=")
		key, err := decodeBagPart(rawKey)
		if err != nil {
			return nil, nil, fmt.Errorf("key %q: %w", clip(rawKey), err)
		}
		if key == "" {
			return nil, nil, fmt.Errorf("property %q has no name", clip(pair))
		}
		value, err := decodeBagPart(rawValue)
		if err != nil {
			return nil, nil, fmt.Errorf("value of %q: %w", clip(key), err)
		}
		if name, ok := systemPropertyName(key); ok {
			sys.set(name, value)
		} else if key == "$.schema" {
			ap.set(PropMessageSchema, value)
		} else {
			ap.set(key, value)
		}
	}
	return sys.list, ap.list, nil
}

// decodeBagPart percent-decodes one key or value of a property bag.
func decodeBagPart(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		if !utf8.ValidString(s) {
			return "", errors.New("not UTF-8")
		}
		return s, nil
	}
	dec, err := url.PathUnescape(s)
	if err != nil {
		return "", fmt.Errorf("bad percent-encoding: %w", err)
	}
	if !utf8.ValidString(dec) {
		return "", errors.New("does not decode to UTF-8")
	}
	return dec, nil
}

// systemPropertyName maps a decoded "$." key to its system property.
func systemPropertyName(key string) (string, bool) {
	switch key {
	case "$.mid":
		return hub.PropMessageID, true
	case "$.cid":
		return hub.PropCorrelationID, true
	case "$.uid":
		return hub.PropUserID, true
	case "$.to":
		return hub.PropTo, true
	case "$.exp":
		return hub.PropExpiry, true
	case "$.ct":
		return hub.PropContentType, true
	case "$.ce":
		return hub.PropContentEncoding, true
	case "$.ctime":
		return hub.PropCreationTime, true
	case "$.sub":
		return hub.PropComponent, true
	case "$.ifid":
		// That $.ifid becomes this name is not documented
		// (docs/spec/iothub-protocol.md#system-properties-on-mqtt); the
		// HTTPS front end maps iothub-interface-id to the same name.
		return hub.PropInterfaceID, true
	case "$.on":
		return hub.PropOutputName, true
	}
	return "", false
}

// propIndexThreshold is the list length from which propList looks names up
// in a map: a bag of thousands of distinct names must not cost a scan per
// name.
const propIndexThreshold = 16

// propList is a property list in first-seen order where a repeated name
// replaces the earlier value.
type propList struct {
	list  []hub.Property
	index map[string]int
}

func (l *propList) set(name, value string) {
	if l.index == nil && len(l.list) >= propIndexThreshold {
		l.index = make(map[string]int, 2*len(l.list))
		for i, p := range l.list {
			l.index[p.Name] = i
		}
	}
	if l.index != nil {
		if i, ok := l.index[name]; ok {
			l.list[i].Value = value
			return
		}
		l.index[name] = len(l.list)
		l.list = append(l.list, hub.Property{Name: name, Value: value})
		return
	}
	SetProperty(&l.list, name, value)
}

// SetProperty sets name in a short property list, replacing an earlier
// value.
func SetProperty(list *[]hub.Property, name, value string) {
	for i := range *list {
		if (*list)[i].Name == name {
			(*list)[i].Value = value
			return
		}
	}
	*list = append(*list, hub.Property{Name: name, Value: value})
}

// clip bounds client-chosen text quoted in an error.
func clip(s string) string {
	const limit = 256
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "…"
}
