package sqlite

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-iot/berth/store"
)

// TestListWherePlans holds ListWhere's query plans to what makes it fast:
// an equality walks the value index in key order (no sort), the other
// conditions are probed by key, never by scanning a range of values for
// each record (which made a range query over 10k twins take seconds).
func TestListWherePlans(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var recs []store.Record
	for i := range 500 {
		recs = append(recs, store.Record{Kind: store.KindTwin, Key: fmt.Sprintf("h/d%05d", i),
			Data: []byte(fmt.Sprintf(`{"tags":{"a":"p%d","c":%d},"reported":{"props":{"b":%d}}}`, i%10, i%7, i%100))})
	}
	if _, err := s.Apply(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	plan := func(preds ...store.Pred) string {
		t.Helper()
		var got []string
		s.explain = func(line string) { got = append(got, line) }
		defer func() { s.explain = nil }()
		if _, err := s.ListWhere(t.Context(), store.KindTwin, store.ListOptions{After: "h/", Limit: 32}, preds); err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, "\n")
	}
	eq := store.Pred{Path: []string{"tags", "a"}, Op: store.OpEq, Value: "p3"}
	ge := store.Pred{Path: []string{"reported", "props", "b"}, Op: store.OpGe, Value: 40.0}
	lt := store.Pred{Path: []string{"reported", "props", "b"}, Op: store.OpLt, Value: 42.0}
	p := plan(eq, ge)
	if strings.Contains(p, "TEMP B-TREE") || !strings.Contains(p, "record_values_lookup") || !strings.Contains(p, "EXISTS USING COVERING INDEX record_values_key") {
		t.Errorf("equality and range:\n%s", p)
	}
	if p := plan(ge, lt); !strings.Contains(p, "record_values_lookup (kind=? AND path=? AND atom>? AND atom<?)") {
		t.Errorf("two ranges on one path, one index range:\n%s", p)
	}

	// Of two equalities the rarer drives, whichever comes first: b = 13
	// has 5 entries, a = 'p3' 50.
	if p := plan(eq, store.Pred{Path: []string{"reported", "props", "b"}, Op: store.OpEq, Value: 3.0}); !strings.Contains(p, "EXISTS USING COVERING INDEX record_values_lookup (kind=? AND path=? AND atom=? AND key=?") {
		t.Errorf("two equalities, the second probed at its value's entries:\n%s", p)
	}
	rare := store.Pred{Path: []string{"reported", "props", "b"}, Op: store.OpEq, Value: 13.0}
	for _, preds := range [][]store.Pred{{eq, rare}, {rare, eq}} {
		if d, merge, err := s.planEqualities(t.Context(), store.KindTwin, "h/", preds); err != nil || merge || preds[d].Value != 13.0 {
			t.Errorf("drives from %v, merge %v (%v); want b = 13 driving", preds[d], merge, err)
		}
		recs, err := s.ListWhere(t.Context(), store.KindTwin, store.ListOptions{After: "h/"}, preds)
		if err != nil || len(recs) != 5 {
			t.Errorf("a = 'p3' AND b = 13: %d records, %v; want 5", len(recs), err)
		}
	}

	// Equalities of about the same frequency (a = 'p3' 50 entries, c = 5
	// 71) are intersected by merging their index walks: no seek per
	// candidate, no sort; a range is probed by key on the intersection.
	c5 := store.Pred{Path: []string{"tags", "c"}, Op: store.OpEq, Value: 5.0}
	if p := plan(eq, c5); strings.Contains(p, "TEMP B-TREE") || strings.Contains(p, "SCAN record_values") ||
		!strings.Contains(p, "MERGE (INTERSECT)") || strings.Count(p, "COVERING INDEX record_values_lookup (kind=? AND path=? AND atom=? AND key>?)") != 2 {
		t.Errorf("two equalities of about the same frequency:\n%s", p)
	}
	if p := plan(c5, ge, eq); strings.Contains(p, "TEMP B-TREE") || !strings.Contains(p, "MERGE (INTERSECT)") ||
		!strings.Contains(p, "EXISTS USING COVERING INDEX record_values_key (kind=? AND key=? AND path=?") {
		t.Errorf("two equalities and a range:\n%s", p)
	}
	var want []string
	for i := range 500 {
		if i%10 == 3 && i%7 == 5 && i%100 >= 40 {
			want = append(want, fmt.Sprintf("h/d%05d", i))
		}
	}
	for _, preds := range [][]store.Pred{{eq, c5, ge}, {ge, c5, eq}, {c5, eq, ge, eq}} {
		var got []string
		for after := "h/"; ; {
			recs, err := s.ListWhere(t.Context(), store.KindTwin, store.ListOptions{After: after, Limit: 2}, preds)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				got = append(got, r.Key)
			}
			if len(recs) < 2 {
				break
			}
			after = recs[1].Key
		}
		if !slices.Equal(got, want) {
			t.Errorf("%v, 2 a page: %v, want %v", preds, got, want)
		}
	}
}

// TestGetManyPlans: GetMany and CountMany find each key by an index,
// whichever form their IN list takes.
func TestGetManyPlans(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, keys := range [][]string{{"h/a", "h/b"}, {"h/a", "h/\xff"}} {
		in, args := inList(keys)
		for _, q := range []string{sqlGetMany(in), sqlCountMany(in)} {
			var got []string
			s.explain = func(line string) { got = append(got, line) }
			s.explainPlan(t.Context(), q, append([]any{"twin"}, args...))
			p := strings.Join(got, "\n")
			if !strings.Contains(p, "SEARCH records USING") || strings.Contains(p, "SCAN records") || strings.Contains(p, "error") {
				t.Errorf("%s:\n%s", q, p)
			}
		}
	}
}

// TestMigrateFromVersion1: a database written by a berth before the value
// index gets it at the next start, for the twins it already holds.
func TestMigrateFromVersion1(t *testing.T) {
	p := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", dsn(p))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, idx TEXT NOT NULL DEFAULT '', etag TEXT NOT NULL, data BLOB, PRIMARY KEY (kind, key))`,
		`CREATE INDEX records_kind_idx_key ON records (kind, idx, key)`,
		`INSERT INTO records VALUES ('twin', 'h/old', '', 'e1', CAST('{"tags":{"a":"p3"}}' AS BLOB))`,
		`INSERT INTO records VALUES ('twin', 'h/bad', '', 'e2', CAST('not JSON' AS BLOB))`,
		`PRAGMA user_version = 1`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	_ = db.Close()
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.ListWhere(t.Context(), store.KindTwin, store.ListOptions{}, []store.Pred{{Path: []string{"tags", "a"}, Op: store.OpEq, Value: "p3"}})
	if err != nil || len(got) != 1 || got[0].Key != "h/old" {
		t.Fatalf("after the migration: %v, %v; want h/old", got, err)
	}
}
