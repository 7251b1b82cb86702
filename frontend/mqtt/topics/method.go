package topics

import (
	"strconv"
	"strings"
)

// Direct-method topics (docs/spec/iothub-protocol.md#direct-methods-over-mqtt).
const (
	MethodRequestPrefix  = "$iothub/methods/POST/"
	MethodResponsePrefix = "$iothub/methods/res/"
)

// ParseMethodResponse parses a device's direct-method response topic
// (docs/spec/iothub-protocol.md#direct-methods-over-mqtt, #test-vectors T-11,
// T-26):
//
//	$iothub/methods/res/{status}/?$rid={rid}[&anything]
//
// The status is any decimal integer the device chose (a sign allowed,
// 32 bits); the '/' before '?' is optional. ridRaw is the first $rid value
// as sent ("" when there is none: it matches no invocation). Other keys
// are ignored, as IoT Edge ignores them. ok is false for anything else.
func ParseMethodResponse(topic string) (status int, ridRaw string, ok bool) {
	rest, ok := strings.CutPrefix(topic, MethodResponsePrefix)
	if !ok {
		return 0, "", false
	}
	st, query, _ := strings.Cut(rest, "?")
	st = strings.TrimSuffix(st, "/")
	if st == "" || strings.HasPrefix(st, "+") {
		return 0, "", false
	}
	n, err := strconv.ParseInt(st, 10, 32)
	if err != nil {
		return 0, "", false
	}
	ridRaw, _ = queryValue(query, twinRidKey)
	return int(n), ridRaw, true
}

// MethodRequest is $iothub/methods/POST/{name}/?$rid={rid} with nothing
// after the rid: C# strips the first six characters of the fifth segment and
// Embedded C takes all that follows "/?$rid="
// (docs/spec/iothub-protocol.md#direct-methods-over-mqtt).
func MethodRequest(name, rid string) string {
	return MethodRequestPrefix + name + "/?" + twinRidKey + "=" + rid
}
