package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-iot/berth/store"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "odd ?#% name.db")
	s, err := Open(p)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, p
}

func pragma(t *testing.T, db *sql.DB, name string) string {
	t.Helper()
	var v string
	if err := db.QueryRowContext(t.Context(), "PRAGMA "+name).Scan(&v); err != nil {
		t.Fatalf("PRAGMA %s: %v", name, err)
	}
	return v
}

// The durability promise rests on these settings, and the read pool must not
// be able to write behind the single writer's back.
func TestPragmas(t *testing.T) {
	s, _ := openTemp(t)
	for _, tc := range []struct {
		db         *sql.DB
		name, want string
	}{
		{s.w, "journal_mode", "wal"},
		{s.w, "synchronous", "2"}, // FULL
		{s.w, "busy_timeout", "10000"},
		{s.w, "user_version", strconv.Itoa(schemaVersion)},
		{s.w, "query_only", "0"},
		{s.r, "journal_mode", "wal"},
		{s.r, "busy_timeout", "10000"},
		{s.r, "query_only", "1"},
	} {
		if got := pragma(t, tc.db, tc.name); got != tc.want {
			t.Errorf("PRAGMA %s = %q, want %q", tc.name, got, tc.want)
		}
	}
	if _, err := s.r.ExecContext(t.Context(), `DELETE FROM records`); err == nil {
		t.Error("the read pool accepted a write")
	}
}

func TestReopenIsIdempotent(t *testing.T) {
	s, p := openTemp(t)
	if _, err := s.Put(t.Context(), store.Record{Kind: store.KindConfig, Key: "k", Data: []byte(`{}`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s2, err := Open(p)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		if n, err := s2.Count(t.Context(), store.KindConfig, ""); err != nil || n != 1 {
			t.Fatalf("Count after reopen = %d, %v", n, err)
		}
		if err := s2.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	s, p := openTemp(t)
	if _, err := s.w.ExecContext(t.Context(), `PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(p)
	if err == nil {
		_ = s2.Close()
		t.Fatal("Open accepted a database with a newer schema version")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Fatalf("unexpected error: %v", err)
	}
}

// Hot paths must stay index lookups, or latency grows with the table; the
// plan is checked on a store with statistics that make a scan tempting.
func TestQueryPlansUseIndexes(t *testing.T) {
	s, _ := openTemp(t)
	recs := make([]store.Record, 500)
	for i := range recs {
		recs[i] = store.Record{Kind: store.KindRegistration, Key: strings.Repeat("k", i%7) + string(rune('a'+i%26)) + string(rune('0'+i%10)) + strings.Repeat("x", i/260), Index: "g", Data: []byte(`{}`)}
	}
	if _, err := s.Apply(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(t.Context(), `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		text string
		args []any
	}{
		{sqlUpsert, []any{"k", "k", "", "e", []byte{}}},
		{sqlInsertNew, []any{"k", "k", "", "e", []byte{}}},
		{sqlUpdate, []any{"", "e", []byte{}, "k", "k", "*", "*"}},
		{sqlDelete, []any{"k", "k", "", ""}},
		{sqlGet, []any{"k", "k"}},
		{sqlExists, []any{"k", "k"}},
		{sqlCount, []any{"k"}},
		{sqlCountIdx, []any{"k", "g"}},
		{sqlListAll, []any{"k", 10}},
		{sqlListAfter, []any{"k", "a", 10}},
		{sqlListIdx, []any{"k", "g", 10}},
		{sqlListIdxAfter, []any{"k", "g", "a", 10}},
	} {
		plan := explain(t.Context(), t, s.w, q.text, q.args)
		lookup := !strings.HasPrefix(q.text, "INSERT")
		if strings.Contains(plan, "SCAN records") || strings.Contains(plan, "TEMP B-TREE") || (lookup && !strings.Contains(plan, "SEARCH records USING")) {
			t.Errorf("query %q\nhas plan:\n%s", q.text, plan)
		}
	}
}

func explain(ctx context.Context, t *testing.T, db *sql.DB, q string, args []any) string {
	t.Helper()
	rows, err := db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatalf("explain %q: %v", q, err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		b.WriteString(detail + "\n")
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
