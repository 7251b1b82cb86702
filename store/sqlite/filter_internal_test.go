package sqlite

import (
	"database/sql"
	"fmt"
	"path/filepath"
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
			Data: []byte(fmt.Sprintf(`{"tags":{"a":"p%d"},"reported":{"props":{"b":%d}}}`, i%10, i%100))})
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
		if d, err := s.rarestEquality(t.Context(), store.KindTwin, "h/", preds); err != nil || preds[d].Value != 13.0 {
			t.Errorf("drives from %v (%v), want b = 13", preds[d], err)
		}
		recs, err := s.ListWhere(t.Context(), store.KindTwin, store.ListOptions{After: "h/"}, preds)
		if err != nil || len(recs) != 5 {
			t.Errorf("a = 'p3' AND b = 13: %d records, %v; want 5", len(recs), err)
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
