package sqlite

import (
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
	if strings.Contains(p, "TEMP B-TREE") || !strings.Contains(p, "record_values_lookup") || !strings.Contains(p, "EXISTS USING INDEX record_values_key") {
		t.Errorf("equality and range:\n%s", p)
	}
	if p := plan(ge, lt); !strings.Contains(p, "record_values_lookup (kind=? AND path=? AND atom>? AND atom<?)") {
		t.Errorf("two ranges on one path, one index range:\n%s", p)
	}
}
