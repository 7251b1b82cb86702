package hub

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// randomTwinObject builds a twin object with every value kind the decoder
// yields and strings that encoding/json escapes.
func randomTwinObject(r *rand.Rand, depth int) map[string]any {
	strs := []string{"plain", `quote"d`, `back\slash`, "<html>&", "ünïcødé", "line\nbreak", "\u2028sep", "\x01ctl", ""}
	m := map[string]any{}
	for i := range r.IntN(6) + 1 {
		k := fmt.Sprintf("k%d%s", i, strs[r.IntN(len(strs))])
		switch r.IntN(7) {
		case 0:
			m[k] = nil
		case 1:
			m[k] = r.IntN(2) == 0
		case 2:
			m[k] = json.Number(fmt.Sprint(r.IntN(1000) - 500))
		case 3:
			m[k] = json.Number("1.50")
		case 4:
			m[k] = int64(r.IntN(100))
		case 5:
			m[k] = strs[r.IntN(len(strs))]
		default:
			if depth < 4 {
				m[k] = randomTwinObject(r, depth+1)
			} else {
				m[k] = "leaf"
			}
		}
	}
	return m
}

// TestEncodeTwinRecordRoundTrip: the stored twin (compact $metadata,
// objects' JSON reused from the previous version) must read back as the
// twin that was written, a record in the full form written before must
// read as it did, and rendered sections must be byte for byte what
// encoding/json wrote before.
func TestEncodeTwinRecordRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	tw := newTwinRecord("gen-1", now)
	var memo *twinMemo
	for i := range 300 {
		st := metaStamp{lastUpdated: now.Add(time.Duration(i) * time.Second).Format(twinTimeLayout)}
		patch := randomTwinObject(r, 0)
		if i%5 == 0 { // a leaf becomes an object and back
			patch["k1plain"] = map[string]any{"x": "y"}
		} else if i%5 == 1 {
			patch["k1plain"] = "flat"
		}
		switch i % 3 {
		case 0:
			tw.Tags, _ = mergeTwin(tw.Tags, nil, patch, metaStamp{})
		case 1:
			st.version = tw.Desired.Version + 1
			tw.Desired.Props, tw.Desired.Meta = mergeTwin(tw.Desired.Props, tw.Desired.Meta, patch, st)
			tw.Desired.Version++
		default:
			tw.Reported.Props, tw.Reported.Meta = mergeTwin(tw.Reported.Props, tw.Reported.Meta, patch, st)
			tw.Reported.Version++
		}
		tw.Version++
		full, err := json.Marshal(tw)
		if err != nil {
			t.Fatal(err)
		}
		got, next, err := encodeTwinRecord(tw, memo, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(got), `"cmeta"`) || strings.Contains(string(got), `"meta"`) {
			t.Fatalf("step %d: not stored compact: %s", i, got)
		}
		for _, stored := range [][]byte{got, full} {
			back, err := decodeTwinRecord(stored)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := json.Marshal(back)
			if string(again) != string(full) {
				t.Fatalf("step %d: stored\n%s\nreads back as\n%s\nwant\n%s", i, stored, again, full)
			}
		}
		if i > 20 && len(next.json) == 0 {
			t.Fatalf("step %d: nothing memoised in a %d-byte record", i, len(got))
		}
		props, _ := json.Marshal(tw.Reported.Props)
		meta, _ := json.Marshal(tw.Reported.Meta)
		wantSec := string(props[:len(props)-1])
		if len(props) > 2 {
			wantSec += ","
		}
		wantSec += `"$metadata":` + string(meta) + fmt.Sprintf(`,"$version":%d}`, tw.Reported.Version)
		sec, err := sectionJSON(tw.Reported.Props, tw.Reported.Version, tw.Reported.Meta, next.jsonMemo())
		if err != nil {
			t.Fatal(err)
		}
		if string(sec) != wantSec {
			t.Fatalf("step %d: section\n got %s\nwant %s", i, sec, wantSec)
		}
		memo = next
	}
}

// TestMergeTwinLeavesItsInputs: the cached twin is shared with readers, so
// a merge must not modify the maps it is given.
func TestMergeTwinLeavesItsInputs(t *testing.T) {
	props := map[string]any{"a": map[string]any{"b": json.Number("1"), "c": "x"}, "d": true}
	meta := map[string]any{"$lastUpdated": "t0", "a": map[string]any{"$lastUpdated": "t0", "b": map[string]any{"$lastUpdated": "t0"}}}
	before, _ := json.Marshal([]any{props, meta})
	np, nm := mergeTwin(props, meta, map[string]any{"a": map[string]any{"b": nil, "e": json.Number("2")}, "d": nil, "f": "new"}, metaStamp{lastUpdated: "t1"})
	after, _ := json.Marshal([]any{props, meta})
	if string(before) != string(after) {
		t.Fatalf("inputs changed:\n%s\n%s", before, after)
	}
	got, _ := json.Marshal([]any{np, nm})
	want := `[{"a":{"c":"x","e":2},"f":"new"},{"$lastUpdated":"t1","a":{"$lastUpdated":"t1","e":{"$lastUpdated":"t1"}},"f":{"$lastUpdated":"t1"}}]`
	if string(got) != want {
		t.Fatalf("merge:\n got %s\nwant %s", got, want)
	}
}

// TestSizeDeltaIsTwinSize: the size a patch leaves, computed from the
// patch alone, is what walking the whole merged section gives.
func TestSizeDeltaIsTwinSize(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	props, size := map[string]any{}, 0
	for i := range 500 {
		patch := randomTwinObject(r, 0)
		for k := range patch {
			if _, ok := patch[k].(int64); ok {
				patch[k] = json.Number("7") // patches hold decoded numbers
			}
		}
		if i%7 == 0 { // change a leaf into an object and back
			patch["k1plain"] = map[string]any{"x": "y"}
		} else if i%7 == 1 {
			patch["k1plain"] = "flat"
		}
		size += sizeDelta(props, patch)
		props, _ = mergeTwin(props, nil, patch, metaStamp{})
		if want := twinSize(props); size != want {
			t.Fatalf("step %d: incremental size %d, twinSize %d", i, size, want)
		}
	}
}

// TestTwinCacheIsBounded: the cache never counts more than its limit, keeps
// the entry just written, and refuses one larger than the whole limit.
func TestTwinCacheIsBounded(t *testing.T) {
	c := newTwinCache(10 * 100 * cachedTwinWeight) // ten 100-byte twins
	for i := range 50 {
		key := fmt.Sprint("hub/dev-", i)
		c.put(key, &cachedTwin{etag: "e", size: 100})
		if c.get(key, "e") == nil {
			t.Fatalf("entry %d not kept", i)
		}
		if c.weight > c.limit || len(c.entries) > 10 {
			t.Fatalf("after %d puts: weight %d of %d, %d entries", i+1, c.weight, c.limit, len(c.entries))
		}
	}
	c.put("hub/dev-1", &cachedTwin{etag: "f", size: 100}) // replaces, not adds
	if got := c.weight; got != 10*100*cachedTwinWeight {
		t.Fatalf("weight after a replacement: %d", got)
	}
	c.put("hub/big", &cachedTwin{etag: "e", size: 11 * 100})
	if c.get("hub/big", "e") != nil {
		t.Fatal("an entry over the whole limit was kept")
	}
}
