package topics

import (
	"strconv"
	"strings"
)

// Twin topics (docs/spec/iothub-protocol.md#twins-over-mqtt).
const (
	TwinPrefix           = "$iothub/twin/"
	twinGetPath          = "$iothub/twin/GET/"
	twinReportedPath     = "$iothub/twin/PATCH/properties/reported/"
	TwinResponsePrefix   = "$iothub/twin/res/"
	twinRidKey           = "$rid"
	twinVersionKey       = "$version"
	twinVersionParameter = "&" + twinVersionKey + "="
)

// Kinds of twin request returned by ParseTwin.
const (
	// TwinGet is $iothub/twin/GET/?$rid={rid}.
	TwinGet = "GET"
	// TwinPatchReported is
	// $iothub/twin/PATCH/properties/reported/?$rid={rid}[&$version={n}].
	TwinPatchReported = "PATCH reported"
	// TwinUnknown is any other $iothub/twin/ topic that carries a $rid:
	// it is answered with status 400.
	TwinUnknown = "unknown"
)

// ParseTwin classifies a device PUBLISH under $iothub/twin/
// (docs/spec/iothub-protocol.md#twins-over-mqtt). The path must be exactly
// the GET or reported-PATCH path, upper case as the SDKs send it (IoT Edge
// compares ordinally); the query after the first '?' is '&'-separated pairs
// split at their first '=', and ridRaw is the first $rid value exactly as
// sent, for echoing byte for byte. Other keys (the optional $version of a
// reported PATCH, anything a client adds) are ignored. A GET or PATCH without
// $rid is answered with an empty rid, as DPS answers one.
//
// ok is false when the topic cannot be answered at all: not under
// $iothub/twin/, or an unknown path without a $rid. An unknown path with
// a $rid is TwinUnknown.
func ParseTwin(topic string) (kind, ridRaw string, ok bool) {
	if !strings.HasPrefix(topic, TwinPrefix) {
		return "", "", false
	}
	path, query, _ := strings.Cut(topic, "?")
	ridRaw, haveRid := queryValue(query, twinRidKey)
	switch path {
	case twinGetPath:
		return TwinGet, ridRaw, true
	case twinReportedPath:
		return TwinPatchReported, ridRaw, true
	}
	if haveRid {
		return TwinUnknown, ridRaw, true
	}
	return "", "", false
}

// queryValue returns the raw value of the first key in a topic query
// ('&'-separated, each pair split at its first '=').
func queryValue(query, key string) (string, bool) {
	for pair := range strings.SplitSeq(query, "&") {
		if k, v, _ := strings.Cut(pair, "="); k == key {
			return v, true
		}
	}
	return "", false
}

// TwinResponse is $iothub/twin/res/{status}/?$rid={rid}, with
// &$version={n} when version > 0: $rid first and $version second, as
// Embedded C's fixture has it (docs/spec/iothub-protocol.md#twins-over-mqtt).
func TwinResponse(status int, rid string, version int64) string {
	var b strings.Builder
	b.Grow(len(TwinResponsePrefix) + len(rid) + 40)
	b.WriteString(TwinResponsePrefix)
	b.WriteString(strconv.Itoa(status))
	b.WriteString("/?" + twinRidKey + "=")
	b.WriteString(rid)
	if version > 0 {
		b.WriteString(twinVersionParameter)
		b.WriteString(strconv.FormatInt(version, 10))
	}
	return b.String()
}
