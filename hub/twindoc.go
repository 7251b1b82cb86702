package hub

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/berth-iot/berth/azerr"
)

// Twin document limits (docs/spec/iothub-protocol.md#twin-documents, Azure's
// quotas page).
const (
	MaxTwinDepth        = 10        // nested objects below a section
	MaxTagsSize         = 8 * 1024  // bytes, as IoT Hub counts them
	MaxDesiredSize      = 32 * 1024 // bytes
	MaxReportedSize     = 32 * 1024 // bytes
	MaxTwinKeyLength    = 1024      // bytes of UTF-8
	MaxTwinStringLength = 4 * 1024  // bytes of UTF-8 (one property's value)
	// Integers IoT Hub keeps exactly: ±2^52.
	minTwinInt = -4503599627370496
	maxTwinInt = 4503599627370495
)

// twinInvalid is the error for a twin document IoT Hub would refuse: 400
// ArgumentInvalid over REST, status 400 on the MQTT twin response topic.
func twinInvalid(format string, args ...any) error {
	return azerr.Newf(azerr.HubArgumentInvalid, format, args...)
}

// decodeTwinObject parses one JSON object keeping numbers as written
// (json.Number), so that 1.0 stays 1.0 and large integers are not rounded.
// Empty input and a lone space (the Node SDK's GET body) are not objects.
func decodeTwinObject(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, twinInvalid("The request body is not valid JSON: %v", err)
	}
	if dec.More() {
		return nil, twinInvalid("The request body has data after its JSON value.")
	}
	if _, err := dec.Token(); err == nil {
		return nil, twinInvalid("The request body has data after its JSON value.")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, twinInvalid("The request body is not a JSON object.")
	}
	return obj, nil
}

// stripTwinSystemKeys removes the read-only members a client may send back
// from a document it read ($version, $metadata, $etag) at the top of a
// section: they are not properties.
func stripTwinSystemKeys(obj map[string]any) {
	delete(obj, "$version")
	delete(obj, "$metadata")
	delete(obj, "$etag")
}

// validateTwinPatch checks a tags, desired or reported patch against IoT
// Hub's rules: keys are non-empty UTF-8 of at most 1 KB without '.', '$',
// ' ' or control characters; values are null, booleans, numbers (integers
// within ±2^52), strings of at most 4 KB or objects nested at most 10 deep;
// arrays are refused.
func validateTwinPatch(obj map[string]any, section string) error {
	return validateTwinObject(obj, section, section, 1)
}

func validateTwinObject(obj map[string]any, section, path string, depth int) error {
	for k, v := range obj {
		p := path + "." + k
		if err := validateTwinKey(k); err != nil {
			return twinInvalid("Twin %s: key %q: %v.", section, clipKey(k), err)
		}
		switch v := v.(type) {
		case nil, bool:
		case json.Number:
			if err := validateTwinNumber(v); err != nil {
				return twinInvalid("Twin %s: %s: %v.", section, clipKey(p), err)
			}
		case string:
			if len(v) > MaxTwinStringLength {
				return twinInvalid("Twin %s: %s: string value of %d bytes is over the %d bytes limit.", section, clipKey(p), len(v), MaxTwinStringLength)
			}
		case map[string]any:
			if depth >= MaxTwinDepth+1 {
				return twinInvalid("Twin %s: %s: nesting is deeper than the maximum of %d levels.", section, clipKey(p), MaxTwinDepth)
			}
			if err := validateTwinObject(v, section, p, depth+1); err != nil {
				return err
			}
		case []any:
			return twinInvalid("Provided json is not a valid '%s' object: arrays are not supported (%s).", section, clipKey(p))
		default:
			return twinInvalid("Twin %s: %s: unsupported value.", section, clipKey(p))
		}
	}
	return nil
}

func validateTwinKey(k string) error {
	switch {
	case k == "":
		return fmt.Errorf("empty")
	case len(k) > MaxTwinKeyLength:
		return fmt.Errorf("longer than %d bytes", MaxTwinKeyLength)
	case !utf8.ValidString(k):
		return fmt.Errorf("not valid UTF-8")
	}
	for _, r := range k {
		if r < 0x20 || r == 0x7f || r == '.' || r == '$' || r == ' ' {
			return fmt.Errorf("contains %q, which twin keys may not", r)
		}
	}
	return nil
}

func validateTwinNumber(n json.Number) error {
	s := n.String()
	if strings.ContainsAny(s, ".eE") {
		f, err := n.Float64()
		if err != nil {
			return fmt.Errorf("number %s out of range", s)
		}
		_ = f
		return nil
	}
	i, err := strconv.ParseInt(s, 10, 64)
	if err != nil || i < minTwinInt || i > maxTwinInt {
		return fmt.Errorf("integer %s is outside [%d, %d]", s, int64(minTwinInt), int64(maxTwinInt))
	}
	return nil
}

func clipKey(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// twinSize is a document's size as IoT Hub counts it: the lengths of all
// keys and string values, 8 bytes per number and 4 per boolean.
func twinSize(obj map[string]any) int {
	n := 0
	for k, v := range obj {
		n += len(k)
		switch v := v.(type) {
		case string:
			n += len(v)
		case json.Number:
			n += 8
		case bool:
			n += 4
		case map[string]any:
			n += twinSize(v)
		}
	}
	return n
}

// sizeDelta is how much mergeTwin(props, _, patch, _) changes
// twinSize(props): it walks the patch and what the patch replaces or
// removes, not the rest of the section.
func sizeDelta(props, patch map[string]any) int {
	d := 0
	for k, v := range patch {
		old, had := props[k]
		if pv, ok := v.(map[string]any); ok {
			if om, ok := old.(map[string]any); ok {
				d += sizeDelta(om, pv)
				continue
			}
			if had {
				d -= len(k) + valueSize(old)
			}
			d += len(k) + sizeDelta(nil, pv) // merged into a new object
			continue
		}
		if had {
			d -= len(k) + valueSize(old)
		}
		if v != nil {
			d += len(k) + valueSize(v)
		}
	}
	return d
}

// valueSize is a value's part of twinSize, its key aside.
func valueSize(v any) int {
	switch v := v.(type) {
	case string:
		return len(v)
	case json.Number:
		return 8
	case bool:
		return 4
	case map[string]any:
		return twinSize(v)
	}
	return 0
}

// twinTooLarge is the error for a section over its limit. berth answers 413
// MessageTooLarge (docs/spec/iothub-protocol.md#twin-status-codes leaves 400
// or 413 open).
func twinTooLarge(section string, size, limit int) error {
	return azerr.Newf(azerr.HubMessageTooLarge, "Twin %s would be %d bytes, over the %d bytes limit.", section, size, limit)
}

// metaStamp is what a change writes into $metadata.
type metaStamp struct {
	lastUpdated string // "2006-01-02T15:04:05.0000000Z"
	version     int64  // $lastUpdatedVersion; 0 to leave it out (reported)
}

func (s metaStamp) node() map[string]any {
	m := map[string]any{"$lastUpdated": s.lastUpdated}
	if s.version != 0 {
		m["$lastUpdatedVersion"] = s.version
	}
	return m
}

func (s metaStamp) stamp(m map[string]any) {
	m["$lastUpdated"] = s.lastUpdated
	if s.version != 0 {
		m["$lastUpdatedVersion"] = s.version
	} else {
		delete(m, "$lastUpdatedVersion")
	}
}

// mergeTwin applies patch to props as IoT Hub does: objects merge
// recursively, null deletes a member, anything else replaces it. meta (nil
// for tags) mirrors props and gets st on every node the patch touched, and
// on every object above them. It returns the new props and meta and
// modifies neither argument: the objects on the patch's path are copied,
// every other subtree is shared with the previous version (the cached
// twin, which readers use without a lock; docs/benchmarks.md, "Twins").
func mergeTwin(props, meta, patch map[string]any, st metaStamp) (map[string]any, map[string]any) {
	props = maps.Clone(props)
	if props == nil {
		props = map[string]any{}
	}
	if meta != nil {
		meta = maps.Clone(meta)
	}
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(props, k)
			if meta != nil {
				delete(meta, k)
			}
		case map[string]any:
			cur, ok := props[k].(map[string]any)
			if !ok {
				cur = map[string]any{}
			}
			var cm map[string]any
			if meta != nil {
				cm, ok = meta[k].(map[string]any)
				if !ok || !isMetaObject(cm, cur) {
					cm = map[string]any{}
				}
			}
			cur, cm = mergeTwin(cur, cm, pv, st)
			props[k] = cur
			if meta != nil {
				meta[k] = cm
			}
		default:
			props[k] = v
			if meta != nil {
				meta[k] = st.node()
			}
		}
	}
	if meta != nil {
		st.stamp(meta)
	}
	return props, meta
}

// isMetaObject reports whether m can stay the metadata of the object cur
// (it was not a leaf's metadata that the patch turns into an object).
func isMetaObject(m, cur map[string]any) bool {
	for k := range m {
		if !strings.HasPrefix(k, "$") {
			return true
		}
	}
	return len(cur) == 0
}

// cloneTwin deep-copies a decoded document so that a failed update leaves
// the original untouched.
func cloneTwin(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		if o, ok := v.(map[string]any); ok {
			out[k] = cloneTwin(o)
		} else {
			out[k] = v
		}
	}
	return out
}

// ValidateInitialTwin checks the tags and desired properties an enrollment
// (or a custom allocation webhook) gives a new device's twin, so that an
// enrollment is refused when it is written rather than at assignment.
func ValidateInitialTwin(tags, desired json.RawMessage) error {
	for _, s := range []struct {
		name  string
		raw   json.RawMessage
		limit int
	}{{"tags", tags, MaxTagsSize}, {"desired", desired, MaxDesiredSize}} {
		if len(bytes.TrimSpace(s.raw)) == 0 || string(bytes.TrimSpace(s.raw)) == "null" {
			continue
		}
		obj, err := decodeTwinObject(s.raw)
		if err != nil {
			return err
		}
		stripTwinSystemKeys(obj)
		if err := validateTwinPatch(obj, s.name); err != nil {
			return err
		}
		if n := twinSize(obj); n > s.limit {
			return twinTooLarge(s.name, n, s.limit)
		}
	}
	return nil
}
