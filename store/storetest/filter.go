package storetest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/berth-iot/berth/store"
)

// testListWhere holds a store.Filterer to the Pred semantics: IoT Hub's
// type rules (a value of another type never matches; strings by bytes,
// numbers as numbers, false < true), key order, After, Index and Limit,
// and an index that follows every write path.
func testListWhere(t *testing.T, h harness) {
	s := h.store(t)
	f, ok := s.Store.(store.Filterer)
	if !ok {
		t.Skip("the store has no ListWhere")
	}
	ctx := t.Context()
	k := store.KindTwin
	put := func(key, idx, data string) {
		mustPut(t, s, store.Record{Kind: k, Key: key, Index: idx, Data: []byte(data)}, store.Cond{})
	}
	put("h/a", "x", `{"tags":{"loc":"p3","floor":5,"on":true},"reported":{"props":{"b":40}}}`)
	put("h/b", "x", `{"tags":{"loc":"p3","floor":"5","on":false},"reported":{"props":{"b":41.5}}}`)
	put("h/c", "x", `{"tags":{"loc":"p1","floor":5.0},"reported":{"props":{"b":"40"}}}`)
	put("h/d", "x", `{"tags":{"loc":"P3"}}`)
	put("h/e", "x", `{"tags":{"loc":{"x":1}}}`)
	put("h/f", "x", `{"tags":{"loc":null}}`)
	put("h/g", "x", `not JSON`)
	put("h/i", "y", `{"tags":{"loc":"p3","floor":5},"meta":{"$lastUpdated":"p3"}}`)
	// Same documents in another kind: never listed.
	mustPut(t, s, store.Record{Kind: store.KindDevice, Key: "h/a", Data: []byte(`{"tags":{"loc":"p3"}}`)}, store.Cond{})

	p := func(op store.Op, v any, path ...string) store.Pred { return store.Pred{Path: path, Op: op, Value: v} }
	list := func(opts store.ListOptions, preds ...store.Pred) []string {
		t.Helper()
		recs, err := f.ListWhere(ctx, k, opts, preds)
		if err != nil {
			t.Fatalf("ListWhere %v: %v", preds, err)
		}
		for _, r := range recs {
			if r.Kind != k || r.ETag == "" || len(r.Data) == 0 {
				t.Errorf("ListWhere %v: record %+v lacks its kind, etag or data", preds, r)
			}
		}
		return keysOf(recs)
	}
	cases := []struct {
		preds []store.Pred
		want  []string
	}{
		{[]store.Pred{p(store.OpEq, "p3", "tags", "loc")}, []string{"h/a", "h/b", "h/i"}},
		{[]store.Pred{p(store.OpEq, 5.0, "tags", "floor")}, []string{"h/a", "h/c", "h/i"}},
		{[]store.Pred{p(store.OpEq, "5", "tags", "floor")}, []string{"h/b"}},
		{[]store.Pred{p(store.OpEq, true, "tags", "on")}, []string{"h/a"}},
		{[]store.Pred{p(store.OpLt, true, "tags", "on")}, []string{"h/b"}},
		{[]store.Pred{p(store.OpGe, 40.0, "reported", "props", "b"), p(store.OpLt, 41.0, "reported", "props", "b")}, []string{"h/a"}},
		{[]store.Pred{p(store.OpGt, 40.0, "reported", "props", "b")}, []string{"h/b"}},
		{[]store.Pred{p(store.OpLe, "40", "reported", "props", "b")}, []string{"h/c"}},
		{[]store.Pred{p(store.OpLt, "p2", "tags", "loc")}, []string{"h/c", "h/d"}}, // bytes: "P3" < "p1" < "p2"
		{[]store.Pred{p(store.OpEq, "p3", "tags", "loc"), p(store.OpEq, 5.0, "tags", "floor")}, []string{"h/a", "h/i"}},
		{[]store.Pred{p(store.OpEq, "p3", "tags", "loc"), p(store.OpEq, "p1", "tags", "loc")}, nil},
		{[]store.Pred{p(store.OpEq, 1.0, "tags", "loc", "x")}, []string{"h/e"}},
		{[]store.Pred{p(store.OpEq, "p3", "tags", "loc"), p(store.OpGt, 4.0, "tags", "floor")}, []string{"h/a", "h/i"}},
		{[]store.Pred{p(store.OpEq, "p3", "tags", "nope")}, nil},
		{[]store.Pred{p(store.OpEq, "p3", "tags")}, nil}, // an object is not a string
	}
	for _, c := range cases {
		if got := list(store.ListOptions{}, c.preds...); !slices.Equal(got, c.want) {
			t.Errorf("ListWhere %v = %v, want %v", c.preds, got, c.want)
		}
	}
	loc := p(store.OpEq, "p3", "tags", "loc")
	if got := list(store.ListOptions{After: "h/a", Limit: 1}, loc); !slices.Equal(got, []string{"h/b"}) {
		t.Errorf("After h/a, Limit 1: %v, want [h/b]", got)
	}
	if got := list(store.ListOptions{Index: "y"}, loc); !slices.Equal(got, []string{"h/i"}) {
		t.Errorf("Index y: %v, want [h/i]", got)
	}
	if got := list(store.ListOptions{After: "h/a"}, p(store.OpGe, 40.0, "reported", "props", "b")); !slices.Equal(got, []string{"h/b"}) {
		t.Errorf("a range After h/a: %v, want [h/b]", got)
	}

	// The index follows every write: replace, conditional put, Apply,
	// delete.
	put("h/a", "x", `{"tags":{"loc":"p1"}}`)
	cur := mustGet(t, s, k, "h/b")
	mustPut(t, s, store.Record{Kind: k, Key: "h/b", Index: "x", Data: []byte(`{"tags":{"loc":"p2"}}`)}, store.Cond{IfMatch: cur.ETag})
	if _, err := s.Apply(ctx, []store.Record{{Kind: k, Key: "h/j", Data: []byte(`{"tags":{"loc":"p3"}}`)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, k, "h/i", ""); err != nil {
		t.Fatal(err)
	}
	if got := list(store.ListOptions{}, loc); !slices.Equal(got, []string{"h/j"}) {
		t.Errorf("after the writes: %v, want [h/j]", got)
	}
	// Many matches, paged as a scan pages them.
	var recs []store.Record
	for i := range 300 {
		recs = append(recs, store.Record{Kind: k, Key: fmt.Sprintf("m/%04d", i), Data: []byte(fmt.Sprintf(`{"tags":{"even":%v,"n":%d}}`, i%2 == 0, i))})
	}
	if _, err := s.Apply(ctx, recs); err != nil {
		t.Fatal(err)
	}
	var all []string
	after := "m/"
	for {
		got := list(store.ListOptions{After: after, Limit: 64}, p(store.OpEq, true, "tags", "even"), p(store.OpGe, 100.0, "tags", "n"))
		all = append(all, got...)
		if len(got) < 64 {
			break
		}
		after = got[len(got)-1]
	}
	if len(all) != 100 || all[0] != "m/0100" || all[99] != "m/0298" {
		t.Errorf("paged: %d keys, %v … %v; want the 100 even ones from m/0100", len(all), all[:min(1, len(all))], all[max(0, len(all)-1):])
	}
	// Only filterable kinds and paths.
	if _, err := f.ListWhere(ctx, store.KindDevice, store.ListOptions{}, []store.Pred{loc}); err == nil {
		t.Error("ListWhere on an unindexed kind succeeded")
	}
	if _, err := f.ListWhere(ctx, k, store.ListOptions{}, []store.Pred{p(store.OpEq, "x", "tags", "a b")}); err == nil {
		t.Error("ListWhere on a path it cannot spell succeeded")
	}
}

// testGetMany holds a store.Batcher to List's record shape: the records
// named, in key order, missing keys and other kinds left out; counts per
// index with empty indexes absent.
func testGetMany(t *testing.T, h harness) {
	s := h.store(t)
	b, ok := s.Store.(store.Batcher)
	if !ok {
		t.Skip("the store has no GetMany")
	}
	ctx := t.Context()
	for _, k := range []string{"h/c", "h/a", "h/b"} {
		mustPut(t, s, store.Record{Kind: store.KindDevice, Key: k, Index: "i-" + k[2:], Data: []byte(`{"id":"` + k + `"}`)}, store.Cond{})
	}
	mustPut(t, s, store.Record{Kind: store.KindTwin, Key: "h/d", Data: []byte(`{}`)}, store.Cond{})
	mustPut(t, s, store.Record{Kind: store.KindC2D, Key: "q/1", Index: "h/a", Data: []byte(`{}`)}, store.Cond{})
	mustPut(t, s, store.Record{Kind: store.KindC2D, Key: "q/2", Index: "h/a", Data: []byte(`{}`)}, store.Cond{})
	mustPut(t, s, store.Record{Kind: store.KindC2D, Key: "q/3", Index: "h/c", Data: []byte(`{}`)}, store.Cond{})

	recs, err := b.GetMany(ctx, store.KindDevice, []string{"h/c", "h/x", "h/a", "h/d"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s %s %s %s", r.Key, r.Index, r.Data, r.Kind))
		if r.ETag == "" {
			t.Errorf("%s: no etag", r.Key)
		}
	}
	want := []string{`h/a i-a {"id":"h/a"} device`, `h/c i-c {"id":"h/c"} device`}
	if !slices.Equal(got, want) {
		t.Errorf("GetMany = %q, want %q", got, want)
	}
	if recs, err := b.GetMany(ctx, store.KindDevice, nil); err != nil || len(recs) != 0 {
		t.Errorf("GetMany(nil) = %v, %v", recs, err)
	}
	counts, err := b.CountMany(ctx, store.KindC2D, []string{"h/a", "h/b", "h/c"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(counts) != "map[h/a:2 h/c:1]" {
		t.Errorf("CountMany = %v, want map[h/a:2 h/c:1]", counts)
	}
}
