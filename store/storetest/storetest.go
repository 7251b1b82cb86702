// Package storetest is the conformance suite for store.Store. Every
// implementation runs it from its own tests, so the behaviour the domain
// relies on (conditional writes, ETags, ordering, atomicity, durability) is
// pinned down once rather than re-tested ad hoc per backend.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-iot/berth/store"
)

// Run runs the suite as subtests of t.
//
// open is called with each subtest's *testing.T and must return a store on a
// database private to that subtest. A second call with the same t must open
// the same database again: the suite closes a store and reopens it to check
// that what it acknowledged survived. The suite closes every store it gets
// from open; open should register its own cleanup only for what lies behind
// the store (a temporary directory, a schema to drop).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	h := harness{open: open}
	tests := []struct {
		name string
		fn   func(t *testing.T, h harness)
	}{
		{"GetMissing", testGetMissing},
		{"PutGetRoundTrip", testPutGetRoundTrip},
		{"PutReplaces", testPutReplaces},
		{"ETagChangesOnEveryWrite", testETagChanges},
		{"PutIfMatch", testPutIfMatch},
		{"PutIfNotExists", testPutIfNotExists},
		{"Delete", testDelete},
		{"List", testList},
		{"ListIndex", testListIndex},
		{"KindsIsolated", testKindsIsolated},
		{"Count", testCount},
		{"Apply", testApply},
		{"ApplyDelete", testApplyDelete},
		{"ApplyAtomicForReaders", testApplyAtomicForReaders},
		{"ConcurrentApply", testConcurrentApply},
		{"ConcurrentIfMatch", testConcurrentIfMatch},
		{"ConcurrentIfNotExists", testConcurrentIfNotExists},
		{"ConcurrentIncrements", testConcurrentIncrements},
		{"ConcurrentMixedWriters", testConcurrentMixedWriters},
		{"Reopen", testReopen},
		{"ContextCanceled", testContextCanceled},
		{"ContextCanceledInFlight", testContextCanceledInFlight},
		{"LargeDocument", testLargeDocument},
		{"OddKeys", testOddKeys},
		{"ListWhere", testListWhere}, // filter.go
		{"GetMany", testGetMany},     // filter.go
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

// hangLimit bounds any single call the suite makes where a hang is the
// failure being looked for; it is generous because CI machines are slow and
// fsync-bound.
const hangLimit = 20 * time.Second

type harness struct {
	open func(t *testing.T) store.Store
}

// store opens the subtest's database and arranges for it to be closed.
func (h harness) store(t *testing.T) *closeOnce {
	t.Helper()
	s := h.open(t)
	if s == nil {
		t.Fatal("open returned a nil store")
	}
	c := &closeOnce{Store: s}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// closeOnce lets a test close a store early (to reopen it) while the cleanup
// still closes it on every other path, without asking implementations to
// tolerate a second Close, which the interface does not promise.
type closeOnce struct {
	store.Store
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Store.Close() })
	return c.err
}

func doc(format string, args ...any) []byte {
	return []byte(fmt.Sprintf(format, args...))
}

func mustPut(t *testing.T, s store.Store, rec store.Record, cond store.Cond) store.Record {
	t.Helper()
	got, err := s.Put(t.Context(), rec, cond)
	if err != nil {
		t.Fatalf("Put(%s/%q, %+v): %v", rec.Kind, rec.Key, cond, err)
	}
	return got
}

func mustGet(t *testing.T, s store.Store, kind store.Kind, key string) store.Record {
	t.Helper()
	got, err := s.Get(t.Context(), kind, key)
	if err != nil {
		t.Fatalf("Get(%s/%q): %v", kind, key, err)
	}
	return got
}

func mustList(t *testing.T, s store.Store, kind store.Kind, opts store.ListOptions) []store.Record {
	t.Helper()
	got, err := s.List(t.Context(), kind, opts)
	if err != nil {
		t.Fatalf("List(%s, %+v): %v", kind, opts, err)
	}
	return got
}

func mustCount(t *testing.T, s store.Store, kind store.Kind, index string) int {
	t.Helper()
	n, err := s.Count(t.Context(), kind, index)
	if err != nil {
		t.Fatalf("Count(%s, %q): %v", kind, index, err)
	}
	return n
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func wantMissing(t *testing.T, s store.Store, kind store.Kind, key string) {
	t.Helper()
	_, err := s.Get(t.Context(), kind, key)
	wantErr(t, fmt.Sprintf("Get(%s/%q)", kind, key), err, store.ErrNotFound)
}

// sameRecord compares every field, Data byte for byte.
func sameRecord(t *testing.T, what string, got, want store.Record) {
	t.Helper()
	if got.Kind != want.Kind || got.Key != want.Key || got.Index != want.Index || got.ETag != want.ETag {
		t.Fatalf("%s: got {%s %q idx=%q etag=%q}, want {%s %q idx=%q etag=%q}", what,
			got.Kind, got.Key, got.Index, got.ETag, want.Kind, want.Key, want.Index, want.ETag)
	}
	if !bytes.Equal(got.Data, want.Data) {
		t.Fatalf("%s: data differs: got %d bytes %.80q, want %d bytes %.80q", what,
			len(got.Data), got.Data, len(want.Data), want.Data)
	}
}

func keysOf(recs []store.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Key
	}
	return out
}

func testGetMissing(t *testing.T, h harness) {
	s := h.store(t)
	wantMissing(t, s, store.KindEnrollment, "nobody")
	mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: "somebody", Data: doc(`{}`)}, store.Cond{})
	wantMissing(t, s, store.KindEnrollment, "nobody")
	// A near miss must not match: no prefix or case folding in lookups.
	wantMissing(t, s, store.KindEnrollment, "somebod")
	wantMissing(t, s, store.KindEnrollment, "Somebody")
	wantMissing(t, s, store.KindRegistration, "somebody")
}

func testPutGetRoundTrip(t *testing.T, h harness) {
	s := h.store(t)
	cases := []store.Record{
		{Kind: store.KindEnrollment, Key: "dev-1", Data: doc(`{"registrationId":"dev-1"}`)},
		{Kind: store.KindRegistration, Key: "dev-2", Index: "group-a", Data: doc(`{"b":1,"a":2}`)},
		// A caller-supplied ETag is not what gets stored: the store assigns it.
		{Kind: store.KindDevice, Key: "hub/dev-3", Index: "hub", ETag: "caller-etag", Data: doc(`{ "spaced" :  true }`)},
		{Kind: store.KindConfig, Key: "empty-object", Data: doc(`{}`)},
	}
	for _, in := range cases {
		in := in
		callerData := slices.Clone(in.Data)
		got := mustPut(t, s, in, store.Cond{})
		if got.ETag == "" || got.ETag == "*" || got.ETag == in.ETag {
			t.Fatalf("Put(%q) returned ETag %q; want a fresh store-assigned one", in.Key, got.ETag)
		}
		want := in
		want.ETag = got.ETag
		sameRecord(t, "Put result", got, want)
		// The store must not keep the caller's buffer.
		for i := range in.Data {
			in.Data[i] = 'X'
		}
		want.Data = callerData
		g := mustGet(t, s, in.Kind, in.Key)
		sameRecord(t, "Get after Put", g, want)
		// Nor hand out its own: scribbling on a result changes nothing stored.
		for i := range g.Data {
			g.Data[i] = 'Y'
		}
		sameRecord(t, "second Get", mustGet(t, s, in.Kind, in.Key), want)
	}
}

func testPutReplaces(t *testing.T, h harness) {
	s := h.store(t)
	first := mustPut(t, s, store.Record{Kind: store.KindRegistration, Key: "r", Index: "g1", Data: doc(`{"v":1}`)}, store.Cond{})
	second := mustPut(t, s, store.Record{Kind: store.KindRegistration, Key: "r", Index: "g2", Data: doc(`{"v":2,"longer":true}`)}, store.Cond{})
	if second.ETag == first.ETag {
		t.Fatalf("replacing Put kept ETag %q", first.ETag)
	}
	sameRecord(t, "Get after replace", mustGet(t, s, store.KindRegistration, "r"), second)
	// Replacing with a shorter document must not leave a tail of the old one.
	third := mustPut(t, s, store.Record{Kind: store.KindRegistration, Key: "r", Data: doc(`{}`)}, store.Cond{})
	sameRecord(t, "Get after shrink", mustGet(t, s, store.KindRegistration, "r"), third)
	if n := mustCount(t, s, store.KindRegistration, ""); n != 1 {
		t.Fatalf("Count after replacing one key = %d, want 1", n)
	}
}

func testETagChanges(t *testing.T, h harness) {
	s := h.store(t)
	const kind, key = store.KindDevice, "hub/etag"
	seen := map[string]string{}
	note := func(how, etag string) {
		t.Helper()
		if etag == "" || etag == "*" {
			t.Fatalf("%s: ETag %q", how, etag)
		}
		if prev, dup := seen[etag]; dup {
			t.Fatalf("%s: ETag %q was already returned by %s", how, etag, prev)
		}
		seen[etag] = how
		if cur := mustGet(t, s, kind, key); cur.ETag != etag {
			t.Fatalf("%s returned ETag %q but Get sees %q", how, etag, cur.ETag)
		}
	}
	rec := store.Record{Kind: kind, Key: key, Index: "hub"}
	for i := range 10 {
		// Identical data on purpose: the ETag versions the write, not the content.
		rec.Data = doc(`{"same":true}`)
		note(fmt.Sprintf("Put #%d", i), mustPut(t, s, rec, store.Cond{}).ETag)
	}
	cur := mustGet(t, s, kind, key)
	note("Put IfMatch", mustPut(t, s, rec, store.Cond{IfMatch: cur.ETag}).ETag)
	note("Put IfMatch *", mustPut(t, s, rec, store.Cond{IfMatch: "*"}).ETag)
	out, err := s.Apply(t.Context(), []store.Record{rec})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	note("Apply", out[0].ETag)
	// A record deleted and created again must not reuse an old ETag, or a
	// stale IfMatch would succeed against the new incarnation.
	if err := s.Delete(t.Context(), kind, key, ""); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	note("Put after Delete", mustPut(t, s, rec, store.Cond{IfNotExists: true}).ETag)
}

func testPutIfMatch(t *testing.T, h harness) {
	s := h.store(t)
	const kind = store.KindEnrollment
	cases := []struct {
		name    string
		exists  bool
		ifMatch func(t *testing.T, cur store.Record) string
		want    error // nil: the write happens
	}{
		{"current etag", true, func(_ *testing.T, cur store.Record) string { return cur.ETag }, nil},
		{"star on existing", true, func(*testing.T, store.Record) string { return "*" }, nil},
		{"stale etag", true, func(t *testing.T, cur store.Record) string {
			stale := cur.ETag
			mustPut(t, s, store.Record{Kind: kind, Key: cur.Key, Data: doc(`{"bumped":true}`)}, store.Cond{})
			return stale
		}, store.ErrPreconditionFailed},
		{"made-up etag", true, func(*testing.T, store.Record) string { return "not-an-etag" }, store.ErrPreconditionFailed},
		{"etag of another record", true, func(t *testing.T, cur store.Record) string {
			return mustPut(t, s, store.Record{Kind: kind, Key: cur.Key + "-other", Data: doc(`{}`)}, store.Cond{}).ETag
		}, store.ErrPreconditionFailed},
		{"etag of a previous incarnation", true, func(t *testing.T, cur store.Record) string {
			if err := s.Delete(t.Context(), kind, cur.Key, ""); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			mustPut(t, s, store.Record{Kind: kind, Key: cur.Key, Data: doc(`{"reborn":true}`)}, store.Cond{})
			return cur.ETag
		}, store.ErrPreconditionFailed},
		{"star on missing", false, func(*testing.T, store.Record) string { return "*" }, store.ErrNotFound},
		{"etag on missing", false, func(t *testing.T, cur store.Record) string {
			// An ETag that once was valid for this very key.
			r := mustPut(t, s, store.Record{Kind: kind, Key: cur.Key, Data: doc(`{}`)}, store.Cond{})
			if err := s.Delete(t.Context(), kind, cur.Key, ""); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			return r.ETag
		}, store.ErrNotFound},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("ifmatch-%d", i)
			cur := store.Record{Kind: kind, Key: key}
			if tc.exists {
				cur = mustPut(t, s, store.Record{Kind: kind, Key: key, Index: "old", Data: doc(`{"v":"old"}`)}, store.Cond{})
			}
			ifMatch := tc.ifMatch(t, cur)
			var before *store.Record
			if r, err := s.Get(t.Context(), kind, key); err == nil {
				before = &r
			}
			in := store.Record{Kind: kind, Key: key, Index: "new", Data: doc(`{"v":"new"}`)}
			got, err := s.Put(t.Context(), in, store.Cond{IfMatch: ifMatch})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Put IfMatch %q: %v", ifMatch, err)
				}
				if before != nil && got.ETag == before.ETag {
					t.Fatalf("conditional Put kept ETag %q", got.ETag)
				}
				in.ETag = got.ETag
				sameRecord(t, "Get after conditional Put", mustGet(t, s, kind, key), in)
				return
			}
			wantErr(t, fmt.Sprintf("Put IfMatch %q", ifMatch), err, tc.want)
			// A failed precondition writes nothing.
			if before == nil {
				wantMissing(t, s, kind, key)
			} else {
				sameRecord(t, "Get after failed Put", mustGet(t, s, kind, key), *before)
			}
		})
	}
}

func testPutIfNotExists(t *testing.T, h harness) {
	s := h.store(t)
	const kind = store.KindRegistration
	in := store.Record{Kind: kind, Key: "ine", Index: "g", Data: doc(`{"first":true}`)}
	first := mustPut(t, s, in, store.Cond{IfNotExists: true})
	in.ETag = first.ETag
	sameRecord(t, "Get after create", mustGet(t, s, kind, "ine"), in)

	_, err := s.Put(t.Context(), store.Record{Kind: kind, Key: "ine", Data: doc(`{"second":true}`)}, store.Cond{IfNotExists: true})
	wantErr(t, "second IfNotExists Put", err, store.ErrExists)
	sameRecord(t, "Get after refused create", mustGet(t, s, kind, "ine"), first)

	// The same key in another kind is another record.
	mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: "ine", Data: doc(`{}`)}, store.Cond{IfNotExists: true})

	// Both conditions at once: each documented rule applies on its own.
	_, err = s.Put(t.Context(), store.Record{Kind: kind, Key: "ine", Data: doc(`{}`)}, store.Cond{IfNotExists: true, IfMatch: first.ETag})
	wantErr(t, "IfNotExists+IfMatch on existing", err, store.ErrExists)
	sameRecord(t, "Get after refused IfNotExists+IfMatch", mustGet(t, s, kind, "ine"), first)
	_, err = s.Put(t.Context(), store.Record{Kind: kind, Key: "absent", Data: doc(`{}`)}, store.Cond{IfNotExists: true, IfMatch: "*"})
	wantErr(t, "IfNotExists+IfMatch on missing", err, store.ErrNotFound)
	wantMissing(t, s, kind, "absent")

	if err := s.Delete(t.Context(), kind, "ine", ""); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	again := mustPut(t, s, store.Record{Kind: kind, Key: "ine", Data: doc(`{"again":true}`)}, store.Cond{IfNotExists: true})
	if again.ETag == first.ETag {
		t.Fatalf("recreated record reused ETag %q", again.ETag)
	}
}

func testDelete(t *testing.T, h harness) {
	s := h.store(t)
	const kind = store.KindDevice
	cases := []struct {
		name    string
		exists  bool
		ifMatch func(cur store.Record) string
		want    error
	}{
		{"unconditional", true, func(store.Record) string { return "" }, nil},
		{"star", true, func(store.Record) string { return "*" }, nil},
		{"matching etag", true, func(cur store.Record) string { return cur.ETag }, nil},
		{"mismatching etag", true, func(store.Record) string { return "0123456789abcdef" }, store.ErrPreconditionFailed},
		{"missing unconditional", false, func(store.Record) string { return "" }, store.ErrNotFound},
		{"missing star", false, func(store.Record) string { return "*" }, store.ErrNotFound},
		{"missing with etag", false, func(store.Record) string { return "0123456789abcdef" }, store.ErrNotFound},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("hub/del-%d", i)
			var cur store.Record
			if tc.exists {
				cur = mustPut(t, s, store.Record{Kind: kind, Key: key, Index: "hub", Data: doc(`{"i":%d}`, i)}, store.Cond{})
			}
			// A neighbour in the same kind and the same key in another kind
			// must both survive whatever happens here.
			neighbour := mustPut(t, s, store.Record{Kind: kind, Key: key + "x", Index: "hub", Data: doc(`{}`)}, store.Cond{})
			twin := mustPut(t, s, store.Record{Kind: store.KindConfig, Key: key, Data: doc(`{}`)}, store.Cond{})

			err := s.Delete(t.Context(), kind, key, tc.ifMatch(cur))
			switch {
			case tc.want == nil:
				if err != nil {
					t.Fatalf("Delete: %v", err)
				}
				wantMissing(t, s, kind, key)
				err = s.Delete(t.Context(), kind, key, "")
				wantErr(t, "second Delete", err, store.ErrNotFound)
			case tc.exists:
				wantErr(t, "Delete", err, tc.want)
				sameRecord(t, "Get after refused Delete", mustGet(t, s, kind, key), cur)
			default:
				wantErr(t, "Delete", err, tc.want)
			}
			sameRecord(t, "neighbour", mustGet(t, s, kind, key+"x"), neighbour)
			sameRecord(t, "same key, other kind", mustGet(t, s, store.KindConfig, key), twin)
		})
	}
}

// listKeys are chosen so that byte order differs from most locale orders
// (case, punctuation, accents), which is the order List must use: Key order
// is Go's string order.
var listKeys = []string{
	"b", "B", "a", "A", "a-1", "a_1", "a1", "a10", "a2", "aa", "Z", "_x", "~tilde",
	"é", "e", "f", "日本", "0", "00", "9", " space", "a/b", "a:b",
}

func testList(t *testing.T, h harness) {
	s := h.store(t)
	const kind = store.KindEnrollment
	if got := mustList(t, s, kind, store.ListOptions{}); len(got) != 0 {
		t.Fatalf("List on empty kind = %v, want none", keysOf(got))
	}
	want := map[string]store.Record{}
	// Insert in a scrambled order so that insertion order is not mistaken
	// for key order.
	perm := rand.New(rand.NewPCG(1, 2)).Perm(len(listKeys))
	for _, i := range perm {
		k := listKeys[i]
		want[k] = mustPut(t, s, store.Record{Kind: kind, Key: k, Index: "i" + k, Data: doc(`{"k":%q}`, k)}, store.Cond{})
	}
	sorted := slices.Clone(listKeys)
	sort.Strings(sorted)

	all := mustList(t, s, kind, store.ListOptions{})
	if got := keysOf(all); !slices.Equal(got, sorted) {
		t.Fatalf("List order:\n got %q\nwant %q", got, sorted)
	}
	for _, r := range all {
		sameRecord(t, "List entry", r, want[r.Key])
	}

	at := func(after string) []string {
		i, _ := slices.BinarySearch(sorted, after)
		for i < len(sorted) && sorted[i] <= after {
			i++
		}
		return sorted[i:]
	}
	type listCase struct {
		name string
		opts store.ListOptions
		want []string
	}
	cases := []listCase{
		{"limit 0 is unlimited", store.ListOptions{Limit: 0}, sorted},
		{"negative limit is unlimited", store.ListOptions{Limit: -1}, sorted},
		{"limit 1", store.ListOptions{Limit: 1}, sorted[:1]},
		{"limit 5", store.ListOptions{Limit: 5}, sorted[:5]},
		{"limit exactly all", store.ListOptions{Limit: len(sorted)}, sorted},
		{"limit beyond all", store.ListOptions{Limit: len(sorted) + 10}, sorted},
		{"after existing key", store.ListOptions{After: "a1"}, at("a1")},
		{"after key between keys", store.ListOptions{After: "a10a"}, at("a10a")},
		{"after key before all", store.ListOptions{After: "\x01"}, sorted},
		{"after last key", store.ListOptions{After: sorted[len(sorted)-1]}, nil},
		{"after beyond all", store.ListOptions{After: "\U0010FFFF"}, nil},
		{"after with limit", store.ListOptions{After: "B", Limit: 3}, at("B")[:3]},
		{"index", store.ListOptions{Index: "ia"}, []string{"a"}},
		{"unknown index", store.ListOptions{Index: "nope"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := keysOf(mustList(t, s, kind, tc.opts))
			if len(got) != len(tc.want) || (len(got) > 0 && !slices.Equal(got, tc.want)) {
				t.Fatalf("List(%+v):\n got %q\nwant %q", tc.opts, got, tc.want)
			}
		})
	}

	for _, limit := range []int{1, 2, 3, 7, len(sorted) - 1} {
		t.Run(fmt.Sprintf("paging by %d", limit), func(t *testing.T) {
			var got []string
			after := ""
			for pages := 0; ; pages++ {
				if pages > len(sorted)+1 {
					t.Fatalf("paging by %d does not end; so far %q", limit, got)
				}
				page := mustList(t, s, kind, store.ListOptions{After: after, Limit: limit})
				if len(page) > limit {
					t.Fatalf("page of %d with Limit %d", len(page), limit)
				}
				if len(page) == 0 {
					break
				}
				got = append(got, keysOf(page)...)
				after = page[len(page)-1].Key
			}
			if !slices.Equal(got, sorted) {
				t.Fatalf("paged keys:\n got %q\nwant %q", got, sorted)
			}
		})
	}

	// Deleted records leave the listing.
	if err := s.Delete(t.Context(), kind, "a1", ""); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got := keysOf(mustList(t, s, kind, store.ListOptions{})); slices.Contains(got, "a1") || len(got) != len(sorted)-1 {
		t.Fatalf("List after Delete(a1) = %q", got)
	}
}

func testListIndex(t *testing.T, h harness) {
	s := h.store(t)
	const kind = store.KindRegistration
	groups := map[string][]string{}
	for i := range 30 {
		key := fmt.Sprintf("reg-%02d", (i*7)%30) // scrambled insertion order
		group := []string{"g-a", "g-b", "g-c", ""}[i%4]
		mustPut(t, s, store.Record{Kind: kind, Key: key, Index: group, Data: doc(`{"i":%d}`, i)}, store.Cond{})
		groups[group] = append(groups[group], key)
	}
	// Another kind with the same index values must not leak in.
	mustPut(t, s, store.Record{Kind: store.KindOperation, Key: "op", Index: "g-a", Data: doc(`{}`)}, store.Cond{})
	for g := range groups {
		sort.Strings(groups[g])
	}
	for _, g := range []string{"g-a", "g-b", "g-c"} {
		got := mustList(t, s, kind, store.ListOptions{Index: g})
		if !slices.Equal(keysOf(got), groups[g]) {
			t.Fatalf("List(Index %q) = %q, want %q", g, keysOf(got), groups[g])
		}
		for _, r := range got {
			if r.Index != g || r.Kind != kind {
				t.Fatalf("List(Index %q) returned %s/%q with index %q", g, r.Kind, r.Key, r.Index)
			}
		}
		// Paging within an index.
		var paged []string
		after := ""
		for range len(groups[g]) + 1 {
			page := mustList(t, s, kind, store.ListOptions{Index: g, After: after, Limit: 2})
			if len(page) == 0 {
				break
			}
			paged = append(paged, keysOf(page)...)
			after = page[len(page)-1].Key
		}
		if !slices.Equal(paged, groups[g]) {
			t.Fatalf("paged List(Index %q) = %q, want %q", g, paged, groups[g])
		}
	}
	// Changing a record's index moves it between listings.
	moved := groups["g-a"][0]
	mustPut(t, s, store.Record{Kind: kind, Key: moved, Index: "g-b", Data: doc(`{}`)}, store.Cond{})
	if got := keysOf(mustList(t, s, kind, store.ListOptions{Index: "g-a"})); slices.Contains(got, moved) {
		t.Fatalf("%q still listed under its old index: %q", moved, got)
	}
	if got := keysOf(mustList(t, s, kind, store.ListOptions{Index: "g-b"})); !slices.Contains(got, moved) {
		t.Fatalf("%q not listed under its new index: %q", moved, got)
	}
}

func testKindsIsolated(t *testing.T, h harness) {
	s := h.store(t)
	kinds := []store.Kind{store.KindEnrollment, store.KindGroup, store.KindRegistration, store.KindOperation, store.KindDevice, store.KindConfig}
	recs := map[store.Kind]store.Record{}
	for i, k := range kinds {
		recs[k] = mustPut(t, s, store.Record{Kind: k, Key: "shared", Index: "same", Data: doc(`{"kind":%q}`, k)}, store.Cond{})
		for j := range i { // a different number of records per kind
			mustPut(t, s, store.Record{Kind: k, Key: fmt.Sprintf("only-%s-%d", k, j), Data: doc(`{}`)}, store.Cond{})
		}
	}
	for i, k := range kinds {
		sameRecord(t, "Get "+string(k), mustGet(t, s, k, "shared"), recs[k])
		list := mustList(t, s, k, store.ListOptions{})
		if len(list) != i+1 {
			t.Fatalf("List(%s) has %d records, want %d: %q", k, len(list), i+1, keysOf(list))
		}
		for _, r := range list {
			if r.Kind != k {
				t.Fatalf("List(%s) returned a %s record", k, r.Kind)
			}
		}
		if n := mustCount(t, s, k, ""); n != i+1 {
			t.Fatalf("Count(%s) = %d, want %d", k, n, i+1)
		}
		if n := mustCount(t, s, k, "same"); n != 1 {
			t.Fatalf("Count(%s, same) = %d, want 1", k, n)
		}
	}
	// A custom kind is a collection like any other.
	mustPut(t, s, store.Record{Kind: "custom", Key: "shared", Data: doc(`{}`)}, store.Cond{IfNotExists: true})
	if err := s.Delete(t.Context(), store.KindEnrollment, "shared", recs[store.KindEnrollment].ETag); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantMissing(t, s, store.KindEnrollment, "shared")
	for _, k := range kinds[1:] {
		sameRecord(t, "Get after deleting another kind's twin", mustGet(t, s, k, "shared"), recs[k])
	}
	// An ETag from one kind means nothing for the same key in another.
	_, err := s.Put(t.Context(), store.Record{Kind: store.KindConfig, Key: "shared", Data: doc(`{}`)}, store.Cond{IfMatch: recs[store.KindGroup].ETag})
	wantErr(t, "Put with another kind's ETag", err, store.ErrPreconditionFailed)
}

func testCount(t *testing.T, h harness) {
	s := h.store(t)
	const kind = store.KindOperation
	if n := mustCount(t, s, kind, ""); n != 0 {
		t.Fatalf("Count on empty = %d", n)
	}
	for i := range 12 {
		mustPut(t, s, store.Record{Kind: kind, Key: fmt.Sprintf("op-%d", i), Index: fmt.Sprintf("reg-%d", i%3), Data: doc(`{}`)}, store.Cond{})
	}
	mustPut(t, s, store.Record{Kind: store.KindRegistration, Key: "x", Index: "reg-0", Data: doc(`{}`)}, store.Cond{})
	cases := []struct {
		index string
		want  int
	}{{"", 12}, {"reg-0", 4}, {"reg-1", 4}, {"reg-2", 4}, {"reg-3", 0}, {"reg", 0}}
	for _, tc := range cases {
		if n := mustCount(t, s, kind, tc.index); n != tc.want {
			t.Fatalf("Count(%s, %q) = %d, want %d", kind, tc.index, n, tc.want)
		}
	}
	if err := s.Delete(t.Context(), kind, "op-0", ""); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	mustPut(t, s, store.Record{Kind: kind, Key: "op-1", Index: "reg-0", Data: doc(`{}`)}, store.Cond{})
	for _, tc := range []struct {
		index string
		want  int
	}{{"", 11}, {"reg-0", 4}, {"reg-1", 3}} {
		if n := mustCount(t, s, kind, tc.index); n != tc.want {
			t.Fatalf("after changes: Count(%s, %q) = %d, want %d", kind, tc.index, n, tc.want)
		}
	}
}

func testApply(t *testing.T, h harness) {
	s := h.store(t)
	ctx := t.Context()

	out, err := s.Apply(ctx, nil)
	if err != nil || len(out) != 0 {
		t.Fatalf("Apply(nil) = %v, %v; want no records, no error", out, err)
	}

	old := mustPut(t, s, store.Record{Kind: store.KindRegistration, Key: "dev", Index: "g-old", Data: doc(`{"old":true}`)}, store.Cond{})
	// What a device assignment writes: the registration, its operation and
	// the hub identity, across three kinds.
	in := []store.Record{
		{Kind: store.KindRegistration, Key: "dev", Index: "g", Data: doc(`{"status":"assigned"}`)},
		{Kind: store.KindOperation, Key: "op-1", Index: "dev", Data: doc(`{"operationId":"op-1"}`)},
		{Kind: store.KindDevice, Key: "hub/dev", Index: "hub", ETag: "ignored", Data: doc(`{"deviceId":"dev"}`)},
	}
	out, err = s.Apply(ctx, in)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(out) != len(in) {
		t.Fatalf("Apply returned %d records for %d", len(out), len(in))
	}
	for i := range in {
		if out[i].ETag == "" || out[i].ETag == "ignored" {
			t.Fatalf("Apply result %d has ETag %q", i, out[i].ETag)
		}
		want := in[i]
		want.ETag = out[i].ETag
		sameRecord(t, fmt.Sprintf("Apply result %d", i), out[i], want)
		sameRecord(t, fmt.Sprintf("Get after Apply %d", i), mustGet(t, s, in[i].Kind, in[i].Key), want)
	}
	if out[0].ETag == old.ETag {
		t.Fatal("Apply overwrote a record but kept its ETag")
	}
	_, err = s.Put(ctx, store.Record{Kind: store.KindRegistration, Key: "dev", Data: doc(`{}`)}, store.Cond{IfMatch: old.ETag})
	wantErr(t, "Put with ETag from before Apply", err, store.ErrPreconditionFailed)
	if n := mustCount(t, s, store.KindRegistration, "g-old"); n != 0 {
		t.Fatalf("old index still counted after Apply: %d", n)
	}

	// The same key twice in one batch: writes apply in order, last one wins.
	out, err = s.Apply(ctx, []store.Record{
		{Kind: store.KindConfig, Key: "dup", Data: doc(`{"n":1}`)},
		{Kind: store.KindConfig, Key: "dup", Data: doc(`{"n":2}`)},
	})
	if err != nil {
		t.Fatalf("Apply with duplicate key: %v", err)
	}
	if out[0].ETag == out[1].ETag {
		t.Fatalf("two writes in one Apply share ETag %q", out[0].ETag)
	}
	sameRecord(t, "Get after duplicate Apply", mustGet(t, s, store.KindConfig, "dup"), out[1])

	// A larger batch commits as one.
	var batch []store.Record
	for i := range 200 {
		batch = append(batch, store.Record{Kind: store.KindOperation, Key: fmt.Sprintf("bulk-%03d", i), Index: "bulk", Data: doc(`{"i":%d}`, i)})
	}
	if _, err := s.Apply(ctx, batch); err != nil {
		t.Fatalf("Apply 200: %v", err)
	}
	if n := mustCount(t, s, store.KindOperation, "bulk"); n != 200 {
		t.Fatalf("Count after Apply of 200 = %d", n)
	}
}

// testApplyDelete: records marked Delete are removed in the same
// transaction as the writes beside them (what a batch of C2D completions
// with their feedback records commits), a missing one is no error, and
// writes and deletes of one key apply in the order given.
func testApplyDelete(t *testing.T, h harness) {
	s := h.store(t)
	ctx := t.Context()
	for i := range 3 {
		mustPut(t, s, store.Record{Kind: store.KindC2D, Key: fmt.Sprintf("hub/dev/%d", i), Index: "hub/dev", Data: doc(`{"i":%d}`, i)}, store.Cond{})
	}
	mustPut(t, s, store.Record{Kind: store.KindConfig, Key: "gone-then-back", Data: doc(`{"n":1}`)}, store.Cond{})
	out, err := s.Apply(ctx, []store.Record{
		{Kind: store.KindC2D, Key: "hub/dev/0", Delete: true},
		{Kind: store.KindFeedback, Key: "hub/0/dev", Index: "hub", Data: doc(`{"status":"Success"}`)},
		{Kind: store.KindC2D, Key: "hub/dev/2", Index: "ignored", Data: doc(`{"ignored":true}`), Delete: true},
		{Kind: store.KindC2D, Key: "hub/dev/never-there", Delete: true},
		{Kind: store.KindConfig, Key: "gone-then-back", Delete: true},
		{Kind: store.KindConfig, Key: "gone-then-back", Data: doc(`{"n":2}`)},
		{Kind: store.KindConfig, Key: "written-then-gone", Data: doc(`{}`)},
		{Kind: store.KindConfig, Key: "written-then-gone", Delete: true},
	})
	if err != nil {
		t.Fatalf("Apply with deletes: %v", err)
	}
	if len(out) != 8 {
		t.Fatalf("Apply returned %d records for 8", len(out))
	}
	if !out[0].Delete || out[0].ETag != "" || out[0].Key != "hub/dev/0" {
		t.Fatalf("result of a delete = %+v; want Delete set, no ETag", out[0])
	}
	if out[1].ETag == "" {
		t.Fatal("a write beside deletes got no ETag")
	}
	for _, k := range []string{"hub/dev/0", "hub/dev/2", "hub/dev/never-there"} {
		_, err := s.Get(ctx, store.KindC2D, k)
		wantErr(t, "Get of "+k+" after Apply deleted it", err, store.ErrNotFound)
	}
	mustGet(t, s, store.KindC2D, "hub/dev/1")
	if n := mustCount(t, s, store.KindC2D, "hub/dev"); n != 1 {
		t.Fatalf("Count after deleting 2 of 3 = %d", n)
	}
	sameRecord(t, "the feedback written beside the deletes", mustGet(t, s, store.KindFeedback, "hub/0/dev"), out[1])
	sameRecord(t, "a key deleted then written", mustGet(t, s, store.KindConfig, "gone-then-back"), out[5])
	_, err = s.Get(ctx, store.KindConfig, "written-then-gone")
	wantErr(t, "Get of a key written then deleted", err, store.ErrNotFound)

	// A batch of deletes alone.
	if _, err := s.Apply(ctx, []store.Record{{Kind: store.KindC2D, Key: "hub/dev/1", Delete: true}}); err != nil {
		t.Fatalf("Apply of one delete: %v", err)
	}
	if n := mustCount(t, s, store.KindC2D, "hub/dev"); n != 0 {
		t.Fatalf("Count after deleting all = %d", n)
	}
}

// testApplyAtomicForReaders has a writer Apply batches stamped with a
// generation while a reader lists them: a single List must never see two
// generations at once, which it would if Apply's writes became visible one
// by one. The writer goes on until the reader has looked often enough to
// have had a fair chance of landing mid-batch, however fast the store is.
func testApplyAtomicForReaders(t *testing.T, h harness) {
	s := h.store(t)
	const (
		kind              = store.KindGroup
		n                 = 8
		minGens, minReads = 40, 300
		maxDuration       = 5 * time.Second
	)
	batch := func(gen int) []store.Record {
		recs := make([]store.Record, n)
		for i := range recs {
			recs[i] = store.Record{Kind: kind, Key: fmt.Sprintf("k%d", i), Data: doc(`{"gen":%06d}`, gen)}
		}
		return recs
	}
	if _, err := s.Apply(t.Context(), batch(0)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	var reads atomic.Int64
	done := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		deadline := time.Now().Add(maxDuration)
		for g := 1; g <= minGens || (reads.Load() < minReads && time.Now().Before(deadline)); g++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := s.Apply(t.Context(), batch(g)); err != nil {
				done <- fmt.Errorf("Apply gen %d: %w", g, err)
				return
			}
		}
		done <- nil
	}()
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d reads during the writes", reads.Load())
			return
		default:
		}
		recs := mustList(t, s, kind, store.ListOptions{})
		reads.Add(1)
		if len(recs) != n {
			t.Fatalf("List saw %d records mid-Apply, want %d", len(recs), n)
		}
		for _, r := range recs[1:] {
			if !bytes.Equal(r.Data, recs[0].Data) {
				t.Fatalf("List saw a half-applied batch: %s=%s but %s=%s", recs[0].Key, recs[0].Data, r.Key, r.Data)
			}
		}
	}
}

// testConcurrentApply runs Applies over the same keys in different orders
// at once. Apply is unconditional, so none may fail: a backend that locks
// rows in the caller's order would deadlock here and abort one of them.
func testConcurrentApply(t *testing.T, h harness) {
	s := h.store(t)
	const writers, rounds = 6, 8
	keys := []store.Record{
		{Kind: store.KindRegistration, Key: "dev"},
		{Kind: store.KindOperation, Key: "op"},
		{Kind: store.KindDevice, Key: "hub/dev"},
		{Kind: store.KindRegistration, Key: "dev2"},
	}
	var wg sync.WaitGroup
	errs := make([]error, writers)
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			<-start
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for r := range rounds {
				batch := slices.Clone(keys)
				rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
				for i := range batch {
					batch[i].Data = doc(`{"w":%d,"r":%d}`, w, r)
				}
				if _, err := s.Apply(t.Context(), batch); err != nil {
					errs[w] = fmt.Errorf("writer %d round %d: %w", w, r, err)
					return
				}
			}
		})
	}
	close(start)
	within(t, "concurrent Applies", wg.Wait)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Each batch was written whole, so the last one to commit left the
	// same stamp on every key.
	first := mustGet(t, s, keys[0].Kind, keys[0].Key)
	for _, k := range keys[1:] {
		if got := mustGet(t, s, k.Kind, k.Key); !bytes.Equal(got.Data, first.Data) {
			t.Fatalf("after concurrent Applies %s/%s=%s but %s/%s=%s", k.Kind, k.Key, got.Data, first.Kind, first.Key, first.Data)
		}
	}
}

func testConcurrentIfMatch(t *testing.T, h harness) {
	s := h.store(t)
	const kind, key, writers, rounds = store.KindRegistration, "contended", 16, 5
	cur := mustPut(t, s, store.Record{Kind: kind, Key: key, Data: doc(`{"round":-1}`)}, store.Cond{})
	for round := range rounds {
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			results = make([]store.Record, writers)
			errs    = make([]error, writers)
		)
		for w := range writers {
			wg.Go(func() {
				<-start
				results[w], errs[w] = s.Put(t.Context(), store.Record{Kind: kind, Key: key, Data: doc(`{"round":%d,"writer":%d}`, round, w)}, store.Cond{IfMatch: cur.ETag})
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for w, err := range errs {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Fatalf("round %d: writers %d and %d both won with IfMatch %q", round, winner, w, cur.ETag)
				}
				winner = w
			case !errors.Is(err, store.ErrPreconditionFailed):
				t.Fatalf("round %d: writer %d: got %v, want %v", round, w, err, store.ErrPreconditionFailed)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no writer won with the current ETag", round)
		}
		got := mustGet(t, s, kind, key)
		sameRecord(t, fmt.Sprintf("round %d winner", round), got, results[winner])
		cur = got
	}
}

func testConcurrentIfNotExists(t *testing.T, h harness) {
	s := h.store(t)
	const kind, writers = store.KindEnrollment, 16
	for round := range 3 {
		key := fmt.Sprintf("race-%d", round)
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			results = make([]store.Record, writers)
			errs    = make([]error, writers)
		)
		for w := range writers {
			wg.Go(func() {
				<-start
				results[w], errs[w] = s.Put(t.Context(), store.Record{Kind: kind, Key: key, Data: doc(`{"writer":%d}`, w)}, store.Cond{IfNotExists: true})
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for w, err := range errs {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Fatalf("%s: writers %d and %d both created it", key, winner, w)
				}
				winner = w
			case !errors.Is(err, store.ErrExists):
				t.Fatalf("%s: writer %d: got %v, want %v", key, w, err, store.ErrExists)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: nobody created it", key)
		}
		sameRecord(t, key, mustGet(t, s, kind, key), results[winner])
	}
}

// testConcurrentIncrements is the read-modify-write loop the domain uses
// (for example to bump a device's generation): with optimistic concurrency
// holding, no increment is lost.
func testConcurrentIncrements(t *testing.T, h harness) {
	s := h.store(t)
	const kind, key, workers, each = store.KindConfig, "counter", 6, 8
	mustPut(t, s, store.Record{Kind: kind, Key: key, Data: doc(`{"n":0}`)}, store.Cond{})
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for done := 0; done < each; {
				cur, err := s.Get(t.Context(), kind, key)
				if err != nil {
					errc <- err
					return
				}
				var n int
				if _, err := fmt.Sscanf(string(cur.Data), `{"n":%d}`, &n); err != nil {
					errc <- fmt.Errorf("parse %q: %w", cur.Data, err)
					return
				}
				_, err = s.Put(t.Context(), store.Record{Kind: kind, Key: key, Data: doc(`{"n":%d}`, n+1)}, store.Cond{IfMatch: cur.ETag})
				switch {
				case err == nil:
					done++
				case errors.Is(err, store.ErrPreconditionFailed):
					// Lost the race: read again and retry.
				default:
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	want := doc(`{"n":%d}`, workers*each)
	if got := mustGet(t, s, kind, key); !bytes.Equal(got.Data, want) {
		t.Fatalf("counter = %s, want %s: an increment was lost", got.Data, want)
	}
}

// testConcurrentMixedWriters has many writers at once, each making a
// different kind of call, some of which must fail: a store that gathers
// concurrent calls into one transaction (SQLite's group commit) must still
// give each its own answer, fail none for another's failed condition, and
// keep every acknowledged write across a reopen.
func testConcurrentMixedWriters(t *testing.T, h harness) {
	s := h.store(t)
	ctx := t.Context()
	const writers, rounds = 32, 4
	contended := mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: "contended", Data: doc(`{"v":0}`)}, store.Cond{})
	type result struct {
		recs []store.Record // acknowledged writes
		gone []store.Record // acknowledged deletes
	}
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]result, writers)
		errs    = make([]error, writers)
	)
	for w := range writers {
		wg.Go(func() {
			<-start
			res := &results[w]
			for r := range rounds {
				key := fmt.Sprintf("w%02d-r%d", w, r)
				check := func(what string, err, want error) bool {
					if !errors.Is(err, want) && !(want == nil && err == nil) {
						errs[w] = fmt.Errorf("writer %d round %d: %s: got %v, want %v", w, r, what, err, want)
						return false
					}
					return true
				}
				// Every writer creates its own record, then makes one more call.
				rec, err := s.Put(ctx, store.Record{Kind: store.KindEnrollment, Key: key, Index: "mixed", Data: doc(`{"w":%d,"r":%d}`, w, r)}, store.Cond{IfNotExists: true})
				if !check("Put IfNotExists of a new key", err, nil) {
					return
				}
				switch (w + r) % 6 {
				case 0:
					_, err = s.Put(ctx, store.Record{Kind: store.KindEnrollment, Key: "contended", Data: doc(`{"w":%d}`, w)}, store.Cond{IfMatch: "0123456789abcdef"})
					if !check("Put with a stale ETag", err, store.ErrPreconditionFailed) {
						return
					}
				case 1:
					_, err = s.Put(ctx, store.Record{Kind: store.KindEnrollment, Key: "contended", Data: doc(`{"w":%d}`, w)}, store.Cond{IfNotExists: true})
					if !check("Put IfNotExists of an existing key", err, store.ErrExists) {
						return
					}
				case 2:
					err = s.Delete(ctx, store.KindEnrollment, key+"-missing", "")
					if !check("Delete of a missing key", err, store.ErrNotFound) {
						return
					}
				case 3:
					applied, err := s.Apply(ctx, []store.Record{
						{Kind: store.KindRegistration, Key: key, Index: "mixed", Data: doc(`{"a":%d}`, w)},
						{Kind: store.KindOperation, Key: key, Index: key, Data: doc(`{"b":%d}`, w)},
					})
					if !check("Apply", err, nil) {
						return
					}
					res.recs = append(res.recs, applied...)
				case 4:
					rec2, err := s.Put(ctx, store.Record{Kind: store.KindEnrollment, Key: key, Index: "mixed", Data: doc(`{"w":%d,"r":%d,"again":true}`, w, r)}, store.Cond{IfMatch: rec.ETag})
					if !check("Put IfMatch of its own record", err, nil) {
						return
					}
					rec = rec2
				case 5:
					err = s.Delete(ctx, store.KindEnrollment, key, rec.ETag)
					if !check("Delete IfMatch of its own record", err, nil) {
						return
					}
					res.gone = append(res.gone, rec)
					continue
				}
				res.recs = append(res.recs, rec)
			}
		})
	}
	close(start)
	within(t, "concurrent mixed writers", wg.Wait)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	verify := func(s store.Store, when string) {
		for _, res := range results {
			for _, r := range res.recs {
				sameRecord(t, when, mustGet(t, s, r.Kind, r.Key), r)
			}
			for _, r := range res.gone {
				wantMissing(t, s, r.Kind, r.Key)
			}
		}
		sameRecord(t, when+": the contended record", mustGet(t, s, contended.Kind, contended.Key), contended)
	}
	verify(s, "after the writers")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	verify(h.store(t), "after reopen")
}

func testReopen(t *testing.T, h harness) {
	s := h.store(t)
	ctx := t.Context()
	want := map[string]store.Record{}
	etags := map[string]bool{}
	remember := func(r store.Record) {
		want[string(r.Kind)+"\x00"+r.Key] = r
		etags[r.ETag] = true
	}
	for i := range 20 {
		remember(mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: fmt.Sprintf("e-%02d", i), Index: fmt.Sprintf("i%d", i%2), Data: doc(`{"i":%d}`, i)}, store.Cond{IfNotExists: true}))
	}
	applied, err := s.Apply(ctx, []store.Record{
		{Kind: store.KindRegistration, Key: "r", Index: "g", Data: doc(`{"r":1}`)},
		{Kind: store.KindDevice, Key: "hub/r", Index: "hub", Data: doc(`{"d":1}`)},
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, r := range applied {
		remember(r)
	}
	gone := want[string(store.KindEnrollment)+"\x00e-07"]
	if err := s.Delete(ctx, gone.Kind, gone.Key, gone.ETag); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	delete(want, string(gone.Kind)+"\x00"+gone.Key)
	replaced := mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: "e-03", Index: "moved", Data: doc(`{"replaced":true}`)}, store.Cond{IfMatch: want[string(store.KindEnrollment)+"\x00e-03"].ETag})
	remember(replaced)

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = h.store(t)

	for _, r := range want {
		sameRecord(t, "Get after reopen", mustGet(t, s, r.Kind, r.Key), r)
	}
	wantMissing(t, s, gone.Kind, gone.Key)
	if n := mustCount(t, s, store.KindEnrollment, ""); n != 19 {
		t.Fatalf("Count after reopen = %d, want 19", n)
	}
	if n := mustCount(t, s, store.KindEnrollment, "moved"); n != 1 {
		t.Fatalf("Count(moved) after reopen = %d, want 1", n)
	}
	// ETags acknowledged before the restart still work as preconditions, and
	// new ones do not repeat old ones (a counter that restarts would).
	for i := range 5 {
		r := mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: "e-03", Data: doc(`{"after":%d}`, i)}, store.Cond{IfMatch: replaced.ETag})
		if etags[r.ETag] {
			t.Fatalf("ETag %q after reopen repeats one from before", r.ETag)
		}
		etags[r.ETag] = true
		replaced = r
	}
	fresh := mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: "e-99", Data: doc(`{}`)}, store.Cond{IfNotExists: true})
	if etags[fresh.ETag] {
		t.Fatalf("ETag %q after reopen repeats one from before", fresh.ETag)
	}
}

// within fails the test if fn has not returned after hangLimit.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(hangLimit):
		t.Fatalf("%s did not return within %v", what, hangLimit)
	}
}

func testContextCanceled(t *testing.T, h harness) {
	s := h.store(t)
	orig := mustPut(t, s, store.Record{Kind: store.KindEnrollment, Key: "c", Index: "i", Data: doc(`{"orig":true}`)}, store.Cond{})

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	ctxs := []struct {
		name string
		ctx  context.Context
		want error
	}{{"canceled", canceled, context.Canceled}, {"deadline exceeded", expired, context.DeadlineExceeded}}

	newRec := store.Record{Kind: store.KindEnrollment, Key: "c", Data: doc(`{"orig":false}`)}
	newKey := store.Record{Kind: store.KindEnrollment, Key: "c-new", Data: doc(`{}`)}
	ops := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Get", func(ctx context.Context) error { _, err := s.Get(ctx, store.KindEnrollment, "c"); return err }},
		{"Put", func(ctx context.Context) error { _, err := s.Put(ctx, newRec, store.Cond{}); return err }},
		{"Put IfMatch", func(ctx context.Context) error {
			_, err := s.Put(ctx, newRec, store.Cond{IfMatch: orig.ETag})
			return err
		}},
		{"Put IfNotExists", func(ctx context.Context) error {
			_, err := s.Put(ctx, newKey, store.Cond{IfNotExists: true})
			return err
		}},
		{"Delete", func(ctx context.Context) error { return s.Delete(ctx, store.KindEnrollment, "c", "") }},
		{"List", func(ctx context.Context) error {
			_, err := s.List(ctx, store.KindEnrollment, store.ListOptions{})
			return err
		}},
		{"Count", func(ctx context.Context) error { _, err := s.Count(ctx, store.KindEnrollment, ""); return err }},
		{"Apply", func(ctx context.Context) error { _, err := s.Apply(ctx, []store.Record{newRec, newKey}); return err }},
	}
	for _, c := range ctxs {
		for _, op := range ops {
			t.Run(c.name+"/"+op.name, func(t *testing.T) {
				var err error
				within(t, op.name, func() { err = op.call(c.ctx) })
				wantErr(t, op.name, err, c.want)
				// A call refused for its context must not have written.
				sameRecord(t, "record after refused call", mustGet(t, s, store.KindEnrollment, "c"), orig)
				wantMissing(t, s, store.KindEnrollment, "c-new")
			})
		}
	}
}

// testContextCanceledInFlight ends writes' contexts while they queue and
// run, with staggered deadlines so that some finish and some do not: every
// call must return promptly, and any that reported success must be durable
// and visible (nil means the write happened, whatever the context did later).
func testContextCanceledInFlight(t *testing.T, h harness) {
	s := h.store(t)
	const writers = 24
	big := bytes.Repeat([]byte("x"), 256<<10)
	// Warm up first, so the deadlines race the writes rather than a
	// connection being set up.
	mustPut(t, s, store.Record{Kind: store.KindOperation, Key: "warm-up", Data: big}, store.Cond{})
	var (
		wg      sync.WaitGroup
		results = make([]store.Record, writers)
		errs    = make([]error, writers)
	)
	for w := range writers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), time.Duration(w)*2*time.Millisecond)
			defer cancel()
			rec := store.Record{Kind: store.KindOperation, Key: fmt.Sprintf("op-%02d", w), Data: append(doc(`{"w":%d,"pad":"`, w), append(big, '"', '}')...)}
			if w%3 == 0 {
				var out []store.Record
				out, errs[w] = s.Apply(ctx, []store.Record{rec})
				if errs[w] == nil {
					results[w] = out[0]
				}
				return
			}
			results[w], errs[w] = s.Put(ctx, rec, store.Cond{IfNotExists: true})
		})
	}
	within(t, "canceled writers", wg.Wait)
	ok := 0
	for w, err := range errs {
		key := fmt.Sprintf("op-%02d", w)
		if err != nil {
			for _, sentinel := range []error{store.ErrExists, store.ErrNotFound, store.ErrPreconditionFailed} {
				if errors.Is(err, sentinel) {
					t.Fatalf("writer %d: cancellation reported as %v", w, err)
				}
			}
			continue
		}
		ok++
		sameRecord(t, "acknowledged write", mustGet(t, s, store.KindOperation, key), results[w])
	}
	t.Logf("%d of %d writes completed before cancellation", ok, writers)
	// The store is still usable after a storm of cancellations.
	mustPut(t, s, store.Record{Kind: store.KindOperation, Key: "after", Data: doc(`{}`)}, store.Cond{})
}

func testLargeDocument(t *testing.T, h harness) {
	s := h.store(t)
	// Non-canonical JSON (key order, whitespace, escapes) that a store
	// re-encoding its documents would change.
	var b strings.Builder
	b.WriteString("{ \"z\" : 1,\n\t\"a\":\"\\u00e9\\n\", \"pad\": \"")
	rng := rand.New(rand.NewPCG(3, 4))
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 é日🚀"
	for b.Len() < 1<<20 {
		b.WriteString(string([]rune(alphabet)[rng.IntN(len([]rune(alphabet)))]))
	}
	b.WriteString("\" ,\"z\":2 }")
	big := []byte(b.String())
	if len(big) < 1<<20 {
		t.Fatalf("test document is only %d bytes", len(big))
	}
	// Byte-exact storage, not a text column: NUL, invalid UTF-8, every byte.
	binary := make([]byte, 1<<20)
	for i := range binary {
		binary[i] = byte(i*7 + i>>8)
	}

	for _, tc := range []struct {
		name string
		data []byte
	}{{"json", big}, {"bytes", binary}} {
		t.Run(tc.name, func(t *testing.T) {
			in := store.Record{Kind: store.KindConfig, Key: "big-" + tc.name, Index: "big", Data: tc.data}
			put := mustPut(t, s, in, store.Cond{})
			in.ETag = put.ETag
			sameRecord(t, "Get", mustGet(t, s, in.Kind, in.Key), in)
			list := mustList(t, s, store.KindConfig, store.ListOptions{After: "big-" + tc.name[:len(tc.name)-1], Limit: 1})
			if len(list) != 1 {
				t.Fatalf("List returned %d records", len(list))
			}
			sameRecord(t, "List", list[0], in)
			out, err := s.Apply(t.Context(), []store.Record{{Kind: in.Kind, Key: in.Key + "-applied", Data: tc.data}})
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			sameRecord(t, "Get after Apply", mustGet(t, s, in.Kind, in.Key+"-applied"), out[0])
		})
	}
}

func testOddKeys(t *testing.T, h harness) {
	s := h.store(t)
	const kind = store.KindDevice
	keys := []string{
		"hub:1/device:1", "a/b/c", "/leading", "trailing/", "100%", "%41%", "%", "_", "a_c", "abc",
		`it's`, `"quoted"`, `back\slash`, "semi;colon -- comment", "sp ace", " ", "tab\there", "line\nbreak",
		"unicodé", "ÜNICODE", "日本語のキー", "emoji 🚀 key", "zero\u200bwidth", "?query=1&x=2", "#frag",
		"*", "select * from records", "{\"json\":1}", "\u00e9", "e\u0301", // precomposed vs combining: distinct keys
	}
	recs := map[string]store.Record{}
	for i, k := range keys {
		idx := "idx:" + k // odd index values too
		recs[k] = mustPut(t, s, store.Record{Kind: kind, Key: k, Index: idx, Data: doc(`{"i":%d}`, i)}, store.Cond{IfNotExists: true})
	}
	for _, k := range keys {
		sameRecord(t, fmt.Sprintf("Get(%q)", k), mustGet(t, s, kind, k), recs[k])
		got := mustList(t, s, kind, store.ListOptions{Index: "idx:" + k})
		if len(got) != 1 || got[0].Key != k {
			t.Fatalf("List(Index %q) = %q, want [%q]", "idx:"+k, keysOf(got), k)
		}
	}
	// Wildcard-looking keys are literal.
	wantMissing(t, s, kind, "a%")
	wantMissing(t, s, kind, "a_")
	sorted := slices.Clone(keys)
	sort.Strings(sorted)
	if got := keysOf(mustList(t, s, kind, store.ListOptions{})); !slices.Equal(got, sorted) {
		t.Fatalf("List order:\n got %q\nwant %q", got, sorted)
	}
	for _, k := range keys {
		if err := s.Delete(t.Context(), kind, k, recs[k].ETag); err != nil {
			t.Fatalf("Delete(%q): %v", k, err)
		}
	}
	if n := mustCount(t, s, kind, ""); n != 0 {
		t.Fatalf("Count after deleting every odd key = %d", n)
	}
}
