package sqlite

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/berth-iot/berth/store"
)

// The value index: every scalar of a filterable kind's documents (a twin's
// tags and properties, store.Filterable) is a row of record_values — its
// JSON path as SQLite's json_tree spells it ($.tags.location), its JSON
// type and its value — kept by triggers on records, so every write path
// (Put, Apply, Delete) keeps it without Go code. Paths holding a '$' after
// the root ($metadata) are left out. ListWhere drives a query from this
// index: an equality is an index range in key order. Both indexes cover
// every column a condition reads: neither the walk nor a probe reads the
// table.
//
// The triggers name the filterable kinds literally (SQL cannot call
// store.Filterable); a kind added there needs a schema version here.
var valueIndexSchema = []string{
	`CREATE TABLE IF NOT EXISTS record_values (
		kind TEXT NOT NULL,
		key  TEXT NOT NULL,
		path TEXT NOT NULL,
		type TEXT NOT NULL,
		atom
	)`,
	`CREATE INDEX IF NOT EXISTS record_values_lookup ON record_values (kind, path, atom, key, type)`,
	`CREATE INDEX IF NOT EXISTS record_values_key ON record_values (kind, key, path, type, atom)`,
	`CREATE TRIGGER IF NOT EXISTS record_values_insert AFTER INSERT ON records
		WHEN new.kind IN ('twin') AND json_valid(CAST(new.data AS TEXT)) BEGIN
		` + valueRowsOf("new") + `;
	END`,
	`CREATE TRIGGER IF NOT EXISTS record_values_update AFTER UPDATE OF data ON records
		WHEN new.kind IN ('twin') BEGIN
		DELETE FROM record_values WHERE kind = old.kind AND key = old.key;
		` + valueRowsOf("new") + ` AND json_valid(CAST(new.data AS TEXT));
	END`,
	`CREATE TRIGGER IF NOT EXISTS record_values_delete AFTER DELETE ON records
		WHEN old.kind IN ('twin') BEGIN
		DELETE FROM record_values WHERE kind = old.kind AND key = old.key;
	END`,
	// Records written before version 2.
	`INSERT INTO record_values (kind, key, path, type, atom)
		SELECT r.kind, r.key, t.fullkey, t.type, t.atom
		FROM records r, json_tree(CAST(r.data AS TEXT)) t
		WHERE r.kind IN ('twin') AND json_valid(CAST(r.data AS TEXT))
		AND t.type NOT IN ('object', 'array') AND instr(substr(t.fullkey, 2), '$') = 0
		AND NOT EXISTS (SELECT 1 FROM record_values v WHERE v.kind = r.kind AND v.key = r.key)`,
}

// valueRowsOf is the INSERT of a record's value rows, row being "new".
func valueRowsOf(row string) string {
	return `INSERT INTO record_values (kind, key, path, type, atom)
		SELECT ` + row + `.kind, ` + row + `.key, fullkey, type, atom FROM json_tree(CAST(` + row + `.data AS TEXT))
		WHERE type NOT IN ('object', 'array') AND instr(substr(fullkey, 2), '$') = 0`
}

var _ store.Filterer = (*Store)(nil)

// predSQL is a pred's condition on the value row v: the JSON type its
// value must have and the comparison. Integers and reals are both
// numbers; true and false are types of their own in json_tree (their atom
// is 1 or 0, which orders false < true).
func predSQL(v string, p store.Pred) (cond string, args []any, err error) {
	var types string
	var val any
	switch x := p.Value.(type) {
	case string:
		types, val = `'text'`, x
	case float64:
		types, val = `'integer', 'real'`, x
	case bool:
		types, val = `'true', 'false'`, 0
		if x {
			val = 1
		}
	default:
		return "", nil, fmt.Errorf("sqlite: list where: value %T is not a string, number or boolean", p.Value)
	}
	switch p.Op {
	case store.OpEq, store.OpLt, store.OpLe, store.OpGt, store.OpGe:
	default:
		return "", nil, fmt.Errorf("sqlite: list where: unknown comparison %q", p.Op)
	}
	if !store.FilterablePath(p.Path) {
		return "", nil, fmt.Errorf("sqlite: list where: path %q is not filterable", p.Path)
	}
	return fmt.Sprintf(`%[1]s.path = ? AND %[1]s.type IN (%[2]s) AND %[1]s.atom %[3]s ?`, v, types, p.Op),
		[]any{"$." + strings.Join(p.Path, "."), val}, nil
}

// sameType says two pred values are of one JSON type.
func sameType(a, b any) bool { return fmt.Sprintf("%T", a) == fmt.Sprintf("%T", b) }

// ListWhere implements store.Filterer. With an equality among preds the
// query walks that value's index entries, which are in key order, and
// checks the others on each record's value rows; with only ranges it
// walks the index range of the first one's path (with the other ranges
// on that path), sorted by key.
func (s *Store) ListWhere(ctx context.Context, kind store.Kind, opts store.ListOptions, preds []store.Pred) ([]store.Record, error) {
	if !store.Filterable(kind) {
		return nil, fmt.Errorf("sqlite: list where: %s documents are not indexed", kind)
	}
	if len(preds) == 0 {
		return s.List(ctx, kind, opts)
	}
	// The driving condition: an equality (its index range is in key
	// order) or else a range, with the other ranges on its path folded
	// in (one index range, whose matches are then sorted by key).
	drive, err := s.rarestEquality(ctx, kind, opts.After, preds)
	if err != nil {
		return nil, err
	}
	driving := map[int]bool{drive: true}
	if preds[drive].Op != store.OpEq {
		for i, p := range preds {
			if p.Op != store.OpEq && slices.Equal(p.Path, preds[drive].Path) && sameType(p.Value, preds[drive].Value) {
				driving[i] = true
			}
		}
	}
	var (
		q    strings.Builder
		args []any
	)
	// CROSS JOIN keeps v0 the outer loop; INDEXED BY makes it walk the
	// condition's values, not every value after the cursor.
	q.WriteString(`SELECT r.key, r.idx, r.etag, r.data FROM record_values v0 INDEXED BY record_values_lookup CROSS JOIN records r
		ON r.kind = v0.kind AND r.key = v0.key WHERE v0.kind = ?`)
	args = append(args, string(kind))
	for i := range preds {
		if !driving[i] {
			continue
		}
		cond, a, err := predSQL("v0", preds[i])
		if err != nil {
			return nil, err
		}
		q.WriteString(` AND ` + cond)
		args = append(args, a...)
	}
	if opts.After != "" {
		q.WriteString(` AND v0.key > ?`)
		args = append(args, opts.After)
	}
	if opts.Index != "" {
		q.WriteString(` AND r.idx = ?`)
		args = append(args, opts.Index)
	}
	for i, p := range preds {
		if driving[i] {
			continue
		}
		cond, a, err := predSQL("v", p)
		if err != nil {
			return nil, err
		}
		// On v0, not r: the probe runs before the record is read.
		// INDEXED BY: left to itself SQLite may probe a range by (path,
		// atom) instead of by key, scanning every value in the range for
		// each record. An equality is probed at (path, atom, key): the
		// candidates come in key order, so successive probes land on
		// the same few pages of that value's entries instead of across
		// every record's values.
		idx := "record_values_key"
		if p.Op == store.OpEq {
			idx = "record_values_lookup"
		}
		q.WriteString(` AND EXISTS (SELECT 1 FROM record_values v INDEXED BY ` + idx + `
			WHERE v.kind = v0.kind AND v.key = v0.key AND ` + cond + `)`)
		args = append(args, a...)
	}
	keyCol := "v0.key"
	limit := opts.Limit
	if limit <= 0 {
		limit = -1
	}
	q.WriteString(` ORDER BY ` + keyCol + ` LIMIT ?`)
	args = append(args, limit)
	if s.explain != nil {
		s.explainPlan(ctx, q.String(), args)
	}
	rows, err := s.r.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, fail(ctx, "list where", kind, "", err)
	}
	defer rows.Close()
	var out []store.Record
	for rows.Next() {
		rec := store.Record{Kind: kind}
		if err := rows.Scan(&rec.Key, &rec.Index, &rec.ETag, &rec.Data); err != nil {
			return nil, fail(ctx, "list where", kind, "", err)
		}
		rec.Data = nonNil(rec.Data)
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fail(ctx, "list where", kind, "", err)
	}
	return out, nil
}

// rarestCap bounds how many index entries rarestEquality counts per
// condition: enough to tell a rare value from a common one, cheap enough
// to ask on every call (each batch of a query is a call).
const rarestCap = 2048

// rarestEquality picks the condition ListWhere drives from: of the
// equalities, the one with the fewest index entries after the cursor
// (each counted up to rarestCap; ties, and all at the cap, keep the
// first), since every entry walked is a record whose other conditions
// are probed. Without an equality it answers 0 (ranges are handled by
// the caller).
func (s *Store) rarestEquality(ctx context.Context, kind store.Kind, after string, preds []store.Pred) (int, error) {
	var eqs []int
	for i, p := range preds {
		if p.Op == store.OpEq {
			eqs = append(eqs, i)
		}
	}
	if len(eqs) == 0 {
		return 0, nil
	}
	if len(eqs) == 1 {
		return eqs[0], nil
	}
	best, bestN := eqs[0], rarestCap+1
	for _, i := range eqs {
		cond, args, err := predSQL("v", preds[i])
		if err != nil {
			return 0, err
		}
		q := `SELECT count(*) FROM (SELECT 1 FROM record_values v INDEXED BY record_values_lookup WHERE v.kind = ? AND ` + cond
		args = append([]any{string(kind)}, args...)
		if after != "" {
			q += ` AND v.key > ?`
			args = append(args, after)
		}
		q += ` LIMIT ?)`
		args = append(args, rarestCap)
		var n int
		if err := s.r.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
			return 0, fail(ctx, "list where", kind, "", err)
		}
		if n < bestN {
			best, bestN = i, n
		}
	}
	return best, nil
}

// explainPlan hands each line of the query's plan to s.explain (tests).
func (s *Store) explainPlan(ctx context.Context, query string, args []any) {
	rows, err := s.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		s.explain("error: " + err.Error())
		return
	}
	defer rows.Close()
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if rows.Scan(&id, &parent, &unused, &detail) == nil {
			s.explain(detail)
		}
	}
}

var _ store.Batcher = (*Store)(nil)

// GetMany implements store.Batcher: one IN query (a batch is at most a
// query page's worth of keys, far below SQLite's parameter limit).
func (s *Store) GetMany(ctx context.Context, kind store.Kind, keys []string) ([]store.Record, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	args := make([]any, 0, len(keys)+1)
	args = append(args, string(kind))
	for _, k := range keys {
		args = append(args, k)
	}
	q := `SELECT key, idx, etag, data FROM records WHERE kind = ? AND key IN (?` + strings.Repeat(`, ?`, len(keys)-1) + `) ORDER BY key`
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fail(ctx, "get many", kind, "", err)
	}
	defer rows.Close()
	var out []store.Record
	for rows.Next() {
		rec := store.Record{Kind: kind}
		if err := rows.Scan(&rec.Key, &rec.Index, &rec.ETag, &rec.Data); err != nil {
			return nil, fail(ctx, "get many", kind, "", err)
		}
		rec.Data = nonNil(rec.Data)
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fail(ctx, "get many", kind, "", err)
	}
	return out, nil
}

// CountMany implements store.Batcher with one grouped count.
func (s *Store) CountMany(ctx context.Context, kind store.Kind, indexes []string) (map[string]int, error) {
	out := map[string]int{}
	if len(indexes) == 0 {
		return out, nil
	}
	args := make([]any, 0, len(indexes)+1)
	args = append(args, string(kind))
	for _, k := range indexes {
		args = append(args, k)
	}
	q := `SELECT idx, count(*) FROM records WHERE kind = ? AND idx IN (?` + strings.Repeat(`, ?`, len(indexes)-1) + `) GROUP BY idx`
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fail(ctx, "count many", kind, "", err)
	}
	defer rows.Close()
	for rows.Next() {
		var idx string
		var n int
		if err := rows.Scan(&idx, &n); err != nil {
			return nil, fail(ctx, "count many", kind, "", err)
		}
		out[idx] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fail(ctx, "count many", kind, "", err)
	}
	return out, nil
}
