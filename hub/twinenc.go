package hub

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"sync"
)

// A small patch into a large twin must cost what the patch costs, not what
// the twin costs (docs/benchmarks.md, "Twins"). Three things make it so:
//
//   - twinCache keeps the decoded record of recently written twins, keyed
//     by the store's ETag, so an update does not decode the stored JSON
//     again. Every store gives every write a new ETag, even of identical
//     data (the conformance suite's ETagChangesOnEveryWrite), so an entry
//     is used only while the stored record is exactly the one it was made
//     from; a write by another node or by the registry simply misses.
//   - a cached record is never modified: mergeTwin copies the objects on
//     the patch's path and shares every other subtree with the previous
//     version (copy on write), so readers need no lock and a failed
//     update leaves nothing to undo.
//   - encMemo keeps the JSON of the record's larger objects by their
//     identity. As an unchanged subtree is the very same map in the next
//     version, encoding the next version copies its bytes instead of
//     walking it; only the objects on the patch's path are encoded again.
//     Rendering a twin (GET, the answer of a service PATCH) uses it too.

// memoMinBytes is the smallest object whose JSON is kept: below it,
// encoding the object again costs about what a memo entry costs.
const memoMinBytes = 256

// encMemo maps an object's identity to its JSON.
type encMemo map[uintptr]memoEntry

type memoEntry struct {
	// obj keeps the object alive while the entry exists, so that its
	// address cannot be reused by another object that would then find
	// this JSON.
	obj map[string]any
	enc []byte
}

func objectID(m map[string]any) uintptr { return reflect.ValueOf(m).Pointer() }

// twinEncoder writes a decoded twin's JSON exactly as encoding/json does
// (keys sorted, the same string escaping), reusing from the JSON of
// unchanged objects and recording the JSON of large objects in next.
type twinEncoder struct {
	prev encMemo // read only; nil for none
	next encMemo // filled; nil not to record

	// The same for the compact $metadata's bodies (compactBody): a
	// $metadata node's compact form is not its JSON, so it has its own.
	cprev, cnext encMemo
}

func (e *twinEncoder) value(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case string:
		return appendJSONString(b, v), nil
	case json.Number:
		if v == "" {
			return append(b, '0'), nil
		}
		return append(b, v...), nil
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case int:
		return strconv.AppendInt(b, int64(v), 10), nil
	case map[string]any:
		return e.object(b, v)
	default:
		j, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("hub: encode twin value: %w", err)
		}
		return append(b, j...), nil
	}
}

func (e *twinEncoder) object(b []byte, m map[string]any) ([]byte, error) {
	if m == nil {
		return append(b, "null"...), nil
	}
	var id uintptr
	if e.prev != nil || e.next != nil {
		id = objectID(m)
		if ent, ok := e.prev[id]; ok {
			start := len(b)
			b = append(b, ent.enc...)
			e.keep(id, m, b, start)
			return b, nil
		}
		if ent, ok := e.next[id]; ok { // shared twice in one document
			return append(b, ent.enc...), nil
		}
	}
	start := len(b)
	b = append(b, '{')
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		var err error
		if b, err = e.value(b, m[k]); err != nil {
			return nil, err
		}
	}
	b = append(b, '}')
	if id != 0 && len(b)-start >= memoMinBytes {
		e.keep(id, m, b, start)
	}
	return b, nil
}

// keep records b[start:] as m's JSON in next. The entry points into b
// (capped, so appending to it cannot write into b): the record's JSON is
// never modified once written, and sharing it keeps no second copy.
func (e *twinEncoder) keep(id uintptr, m map[string]any, b []byte, start int) {
	if e.next != nil {
		e.next[id] = memoEntry{obj: m, enc: b[start:len(b):len(b)]}
	}
}

// appendJSONString appends s quoted as encoding/json quotes it; strings
// it would escape take its own path, so the output cannot differ.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			j, _ := json.Marshal(s) // a string always encodes
			return append(b, j...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// encodeTwinRecord writes tw as the stored twin: the same JSON as
// json.Marshal(tw), reusing prev and returning the memo of the result.
func encodeTwinRecord(tw *twinRecord, prev *twinMemo, sizeHint int) ([]byte, *twinMemo, error) {
	e := &twinEncoder{next: encMemo{}, cnext: encMemo{}}
	if prev != nil {
		e.prev, e.cprev = prev.json, prev.compact
	}
	// Room for the whole record up front: the memo's entries point into
	// this buffer, and a reallocation would leave them on an old copy.
	b := make([]byte, 0, sizeHint+sizeHint/4+512)
	b = append(b, `{"generationId":`...)
	b = appendJSONString(b, tw.GenerationID)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, tw.Version, 10)
	b = append(b, `,"tags":`...)
	var err error
	if b, err = e.object(b, tw.Tags); err != nil {
		return nil, nil, err
	}
	for _, s := range []struct {
		name string
		sec  *twinSection
	}{{`,"desired":`, &tw.Desired}, {`,"reported":`, &tw.Reported}} {
		b = append(b, s.name...)
		b = append(b, `{"props":`...)
		if b, err = e.object(b, s.sec.Props); err != nil {
			return nil, nil, err
		}
		at := len(b)
		b = append(b, `,"cmeta":`...)
		b, err = e.compactMeta(b, s.sec.Meta, nil)
		if errors.Is(err, errNotCompact) {
			b = append(b[:at], `,"meta":`...)
			b, err = e.object(b, s.sec.Meta)
		}
		if err != nil {
			return nil, nil, err
		}
		b = append(b, `,"version":`...)
		b = strconv.AppendInt(b, s.sec.Version, 10)
		b = append(b, '}')
	}
	// The automatic configurations' state is small (an entry per
	// targeting configuration); plain encoding/json suffices.
	for _, f := range []struct {
		name  string
		value any
		set   bool
	}{
		{`,"configurations":`, tw.Configs, len(tw.Configs) > 0},
		{`,"configPaths":`, tw.ConfigPaths, len(tw.ConfigPaths) > 0},
		{`,"configDigest":`, tw.ConfigDigest, tw.ConfigDigest != ""},
	} {
		if !f.set {
			continue
		}
		c, err := json.Marshal(f.value)
		if err != nil {
			return nil, nil, err
		}
		b = append(b, f.name...)
		b = append(b, c...)
	}
	b = append(b, '}')
	return b, &twinMemo{json: e.next, compact: e.cnext}, nil
}

// twinMemo is what encoding a twin record leaves for the next one.
type twinMemo struct {
	json    encMemo // objects' JSON, by identity (also used to render)
	compact encMemo // $metadata nodes' compact bodies
}

// twinCache holds the decoded twins of recently written devices, bounded
// by an estimate of their memory.
type twinCache struct {
	mu      sync.Mutex
	entries map[string]*cachedTwin
	weight  int
	limit   int
}

// cachedTwin is one device's twin as the store holds it under etag. tw
// and memo are never modified.
type cachedTwin struct {
	etag string
	tw   *twinRecord
	memo *twinMemo // nil until the record was encoded here
	size int       // bytes of the stored JSON
}

// twinCacheLimit bounds the cache: a decoded twin takes many times its
// stored JSON in maps (the benchmark's 15 KB record, compact $metadata
// expanded, is 450 KB of heap), so an entry counts cachedTwinWeight times
// its JSON.
const (
	twinCacheLimit   = 64 << 20
	cachedTwinWeight = 32
)

func newTwinCache(limit int) *twinCache {
	return &twinCache{entries: map[string]*cachedTwin{}, limit: limit}
}

// get returns the cached twin of key if it is the stored version etag.
func (c *twinCache) get(key, etag string) *cachedTwin {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[key]; e != nil && e.etag == etag {
		return e
	}
	return nil
}

// put makes e key's cached twin, evicting arbitrary others over the limit
// (map order: which device goes matters less than that memory is bounded).
func (c *twinCache) put(key string, e *cachedTwin) {
	w := e.size * cachedTwinWeight
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[key]; old != nil {
		c.weight -= old.size * cachedTwinWeight
		delete(c.entries, key)
	}
	if w > c.limit {
		return
	}
	for k, o := range c.entries {
		if c.weight+w <= c.limit {
			break
		}
		c.weight -= o.size * cachedTwinWeight
		delete(c.entries, k)
	}
	c.entries[key] = e
	c.weight += w
}

// Compact $metadata. In the full form every node of a section has a
// $metadata node with "$lastUpdated" (and, in desired, "$lastUpdatedVersion"):
// for a twin of many small values that is about four times the values
// themselves, and every update writes it all again. Almost every node
// carries the stamp of the object above it (a patch stamps what it sets
// and every object above), so the stored form ("cmeta") keeps a node's
// stamp only where it differs from its parent's, and a node only when it
// or something below it differs. Reading expands it against the
// properties; the twin in memory, what GET shows and what queries see are
// the full form. A record written before keeps its full "meta" and is read
// as it was.

// metaMark is a $metadata node's stamp: "$lastUpdated" and
// "$lastUpdatedVersion" ("" when the node has none).
type metaMark struct{ lu, ver string }

// errNotCompact says a $metadata tree has a shape the compact form does
// not describe (it is then stored in full).
var errNotCompact = errors.New("hub: $metadata not in the compact form's shape")

func markOf(m map[string]any) (metaMark, bool) {
	lu, ok := m["$lastUpdated"].(string)
	if !ok {
		return metaMark{}, false
	}
	switch v := m["$lastUpdatedVersion"].(type) {
	case nil:
		if _, has := m["$lastUpdatedVersion"]; has {
			return metaMark{}, false
		}
		return metaMark{lu: lu}, true
	case json.Number:
		return metaMark{lu: lu, ver: string(v)}, v != ""
	case int64:
		return metaMark{lu: lu, ver: strconv.FormatInt(v, 10)}, true
	case int:
		return metaMark{lu: lu, ver: strconv.Itoa(v)}, true
	}
	return metaMark{}, false
}

// compactMeta appends the compact form of the $metadata node m under a
// parent stamped parent (nil for a section's root, whose stamp is always
// written). It appends nothing when the whole node is its parent's stamp.
func (e *twinEncoder) compactMeta(b []byte, m map[string]any, parent *metaMark) ([]byte, error) {
	mk, ok := markOf(m)
	if !ok {
		return nil, errNotCompact
	}
	body, err := e.compactBody(m, mk)
	if err != nil {
		return nil, err
	}
	differs := parent == nil || mk != *parent
	if !differs && len(body) == 0 {
		return b, nil
	}
	b = append(b, '{')
	if differs {
		b = append(b, `"$lastUpdated":`...)
		b = appendJSONString(b, mk.lu)
		switch {
		case mk.ver != "":
			b = append(append(b, `,"$lastUpdatedVersion":`...), mk.ver...)
		case parent != nil && parent.ver != "":
			b = append(b, `,"$lastUpdatedVersion":null`...)
		}
		if len(body) > 0 {
			b = append(b, ',')
		}
	}
	b = append(b, body...)
	return append(b, '}'), nil
}

// compactBody is the compact form of m's children, relative to m's own
// stamp mk: it depends on m alone, so it is kept by m's identity.
func (e *twinEncoder) compactBody(m map[string]any, mk metaMark) ([]byte, error) {
	if len(m) <= 2 && !hasChildren(m) {
		return nil, nil // a leaf's (or an empty object's) node: its stamp alone
	}
	id := objectID(m)
	if ent, ok := e.cprev[id]; ok {
		e.cnext[id] = ent
		return ent.enc, nil
	}
	if ent, ok := e.cnext[id]; ok {
		return ent.enc, nil
	}
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if k == "$lastUpdated" || k == "$lastUpdatedVersion" {
			continue
		}
		c, ok := m[k].(map[string]any)
		if !ok || len(k) == 0 || k[0] == '$' {
			return nil, errNotCompact
		}
		n := len(b)
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		at := len(b)
		var err error
		if b, err = e.compactMeta(b, c, &mk); err != nil {
			return nil, err
		}
		if len(b) == at { // same as m: nothing to keep
			b = b[:n]
		}
	}
	// Kept whatever its length: an empty body still stands for a walk of
	// every node below m.
	if e.cnext != nil {
		e.cnext[id] = memoEntry{obj: m, enc: b}
	}
	return b, nil
}

func hasChildren(m map[string]any) bool {
	for k := range m {
		if k != "$lastUpdated" && k != "$lastUpdatedVersion" {
			return true
		}
	}
	return false
}

// expandMeta returns the full $metadata of the properties props from its
// compact form cm (nil: everything as the parent) under parent.
func expandMeta(cm, props map[string]any, parent metaMark) map[string]any {
	mk := parent
	if lu, ok := cm["$lastUpdated"].(string); ok {
		mk.lu = lu
		if v, has := cm["$lastUpdatedVersion"]; has {
			mk.ver = ""
			if n, ok := v.(json.Number); ok {
				mk.ver = string(n)
			}
		}
	}
	out := make(map[string]any, len(props)+2)
	out["$lastUpdated"] = mk.lu
	if mk.ver != "" {
		out["$lastUpdatedVersion"] = json.Number(mk.ver)
	}
	for k, v := range props {
		sub, _ := cm[k].(map[string]any)
		if obj, ok := v.(map[string]any); ok {
			out[k] = expandMeta(sub, obj, mk)
			continue
		}
		out[k] = expandMeta(sub, nil, mk)
	}
	return out
}

func (m *twinMemo) jsonMemo() encMemo {
	if m == nil {
		return nil
	}
	return m.json
}
