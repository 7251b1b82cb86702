package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

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

// maxCachedQueries bounds stmtCache: the shapes of ListWhere's
// statements (which conditions, of which types, with or without a
// cursor) are few in practice; past the bound a statement is prepared
// for the call and closed.
const maxCachedQueries = 128

// stmtCache holds prepared reader statements by their text.
type stmtCache struct {
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

// query runs text (a reader statement) with args, prepared once; past
// maxCachedQueries statements, prepared for the call.
func (s *Store) query(ctx context.Context, text string, args ...any) (*sql.Rows, error) {
	c := &s.queries
	c.mu.Lock()
	st, ok := c.m[text]
	full := len(c.m) >= maxCachedQueries
	c.mu.Unlock()
	if !ok {
		if full {
			return s.r.QueryContext(ctx, text, args...)
		}
		var err error
		if st, err = s.r.PrepareContext(ctx, text); err != nil {
			return nil, err
		}
		c.mu.Lock()
		if cur, dup := c.m[text]; dup {
			_ = st.Close() // prepared meanwhile by another call
			st = cur
		} else {
			if c.m == nil {
				c.m = map[string]*sql.Stmt{}
			}
			c.m[text] = st
		}
		c.mu.Unlock()
	}
	return st.QueryContext(ctx, args...)
}

func (c *stmtCache) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, st := range c.m {
		errs = append(errs, st.Close())
	}
	c.m = nil
	return errors.Join(errs...)
}

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

// ListWhere implements store.Filterer. Its plan depends on the
// equalities among preds (planEqualities):
//
//   - two or more of about the same frequency: the sorted key lists of
//     their index entries are intersected by a merge (SQLite's MERGE
//     (INTERSECT) of two ordered index walks), one step per entry and no
//     seek per candidate, and the other conditions are probed by key on
//     the records in the intersection;
//   - one, or one much rarer than the rest: that value's index entries,
//     which are in key order, are walked, and the other conditions are
//     probed on each record's value rows;
//   - none: the index range of the first range's path is walked (with the
//     other ranges on that path), its matches sorted by key.
func (s *Store) ListWhere(ctx context.Context, kind store.Kind, opts store.ListOptions, preds []store.Pred) ([]store.Record, error) {
	if !store.Filterable(kind) {
		return nil, fmt.Errorf("sqlite: list where: %s documents are not indexed", kind)
	}
	if len(preds) == 0 {
		return s.List(ctx, kind, opts)
	}
	drive, merge, err := s.planEqualities(ctx, kind, opts.After, preds)
	if err != nil {
		return nil, err
	}
	var (
		q    strings.Builder
		args []any
	)
	// driving says which preds the walk itself evaluates; the others are
	// probed per candidate. key is the candidate's key column.
	driving := map[int]bool{}
	key := "v0.key"
	if merge {
		// A compound SELECT with an ORDER BY is evaluated by merging its
		// arms, each an index range in key order (INDEXED BY: an
		// equality's range, never a walk of every value after the
		// cursor); the outer query reads it as a co-routine, in that
		// order, so its ORDER BY needs no sort and its LIMIT stops the
		// merge early.
		key = "k.key"
		q.WriteString(`SELECT r.key, r.idx, r.etag, r.data FROM (`)
		n := 0
		for i, p := range preds {
			if p.Op != store.OpEq {
				continue
			}
			driving[i] = true
			v := fmt.Sprintf("v%d", n)
			if n > 0 {
				q.WriteString(` INTERSECT `)
			}
			n++
			cond, a, err := predSQL(v, p)
			if err != nil {
				return nil, err
			}
			q.WriteString(`SELECT ` + v + `.key FROM record_values ` + v + ` INDEXED BY record_values_lookup WHERE ` + v + `.kind = ? AND ` + cond)
			args = append(args, string(kind))
			args = append(args, a...)
			if opts.After != "" {
				q.WriteString(` AND ` + v + `.key > ?`)
				args = append(args, opts.After)
			}
		}
		q.WriteString(` ORDER BY 1) k CROSS JOIN records r ON r.kind = ? AND r.key = k.key WHERE 1`)
		args = append(args, string(kind))
	} else {
		// The driving condition: an equality (its index range is in key
		// order) or else a range, with the other ranges on its path
		// folded in (one index range, whose matches are then sorted by
		// key).
		driving[drive] = true
		if preds[drive].Op != store.OpEq {
			for i, p := range preds {
				if p.Op != store.OpEq && slices.Equal(p.Path, preds[drive].Path) && sameType(p.Value, preds[drive].Value) {
					driving[i] = true
				}
			}
		}
		// CROSS JOIN keeps v0 the outer loop; INDEXED BY makes it walk
		// the condition's values, not every value after the cursor.
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
		// On the candidate's key, not r: the probe runs before the
		// record is read. INDEXED BY: left to itself SQLite may probe a
		// range by (path, atom) instead of by key, scanning every value
		// in the range for each record. An equality is probed at (path,
		// atom, key): the candidates come in key order, so successive
		// probes land on the same few pages of that value's entries
		// instead of across every record's values.
		idx := "record_values_key"
		if p.Op == store.OpEq {
			idx = "record_values_lookup"
		}
		q.WriteString(` AND EXISTS (SELECT 1 FROM record_values v INDEXED BY ` + idx + `
			WHERE v.kind = ? AND v.key = ` + key + ` AND ` + cond + `)`)
		args = append(args, string(kind))
		args = append(args, a...)
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = -1
	}
	q.WriteString(` ORDER BY ` + key + ` LIMIT ?`)
	args = append(args, limit)
	if s.explain != nil {
		s.explainPlan(ctx, q.String(), args)
	}
	rows, err := s.query(ctx, q.String(), args...)
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

// countCap bounds how many index entries planEqualities counts per
// equality, and probeRatio how much rarer than another equality one must
// be for ListWhere to walk it and probe the rest rather than merge them
// all: a probe is an index seek per candidate, a merge one step per entry
// of every list, and a step costs about a tenth of a seek (measured on
// 100k twins: docs/benchmarks.md, "Device queries"). Each batch of a
// query is a call, so the counting must stay cheap.
const (
	countCap   = 256
	probeRatio = 8
)

// planEqualities picks how ListWhere evaluates preds' equalities. With
// one, it drives (drive). With several, the first countCap index entries
// of each after the cursor are counted, up to the key of the last one
// counted: the rarest is the one with the fewest, or, all at the cap, the
// one whose entries reach furthest (the sparsest). No match lies after
// the rarest's last key counted (when under the cap) or the matches up to
// it are a fair sample (at the cap), so the others are counted up to that
// key, each to probeRatio times the rarest's count: if one reaches it, a
// merge would step through many more entries than a probe of the
// rarest's candidates costs, and the rarest drives; otherwise merge is
// true and the equalities are intersected. Without an equality drive is
// 0 (ranges are handled by the caller).
func (s *Store) planEqualities(ctx context.Context, kind store.Kind, after string, preds []store.Pred) (drive int, merge bool, err error) {
	var eqs []int
	for i, p := range preds {
		if p.Op == store.OpEq {
			eqs = append(eqs, i)
		}
	}
	switch len(eqs) {
	case 0:
		return 0, false, nil
	case 1:
		return eqs[0], false, nil
	}
	// count counts pred i's entries in (after, upTo] ("": no bound), up
	// to limit, and answers the last key counted.
	count := func(i int, upTo string, limit int) (n int, last string, err error) {
		cond, args, err := predSQL("v", preds[i])
		if err != nil {
			return 0, "", err
		}
		q := `SELECT count(*), coalesce(max(key), '') FROM (SELECT v.key FROM record_values v INDEXED BY record_values_lookup WHERE v.kind = ? AND ` + cond
		args = append([]any{string(kind)}, args...)
		if after != "" {
			q += ` AND v.key > ?`
			args = append(args, after)
		}
		if upTo != "" {
			q += ` AND v.key <= ?`
			args = append(args, upTo)
		}
		q += ` ORDER BY v.key LIMIT ?)`
		args = append(args, limit)
		rows, err := s.query(ctx, q, args...)
		if err != nil {
			return 0, "", fail(ctx, "list where", kind, "", err)
		}
		defer rows.Close()
		if !rows.Next() {
			return 0, "", fail(ctx, "list where", kind, "", errors.Join(rows.Err(), sql.ErrNoRows))
		}
		if err := rows.Scan(&n, &last); err != nil {
			return 0, "", fail(ctx, "list where", kind, "", err)
		}
		return n, last, nil
	}
	// The rarest (ties keep the first).
	best, bestN, bestLast := -1, 0, ""
	for _, i := range eqs {
		n, last, err := count(i, "", countCap)
		if err != nil {
			return 0, false, err
		}
		if n == 0 {
			return i, false, nil // nothing matches: nothing to walk
		}
		if best < 0 || n < bestN || n == bestN && last > bestLast {
			best, bestN, bestLast = i, n, last
		}
	}
	for _, i := range eqs {
		if i == best {
			continue
		}
		n, _, err := count(i, bestLast, probeRatio*bestN)
		if err != nil {
			return 0, false, err
		}
		if n >= probeRatio*bestN {
			return best, false, nil
		}
	}
	return best, true, nil
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

// inList is the IN list of strs: "(SELECT value FROM json_each(?))" with
// strs as one JSON array, so that every call is the same statement
// (prepared once), or, should one not be UTF-8 (JSON would replace its
// bytes), a parameter each.
func inList(strs []string) (string, []any) {
	if !slices.ContainsFunc(strs, func(s string) bool { return !utf8.ValidString(s) }) {
		if list, err := json.Marshal(strs); err == nil {
			return `(SELECT value FROM json_each(?))`, []any{string(list)}
		}
	}
	args := make([]any, len(strs))
	for i, s := range strs {
		args[i] = s
	}
	return `(?` + strings.Repeat(`, ?`, len(strs)-1) + `)`, args
}

// The statements of GetMany and CountMany, given their IN list.
func sqlGetMany(in string) string {
	return `SELECT key, idx, etag, data FROM records WHERE kind = ? AND key IN ` + in + ` ORDER BY key`
}

func sqlCountMany(in string) string {
	return `SELECT idx, count(*) FROM records WHERE kind = ? AND idx IN ` + in + ` GROUP BY idx`
}

// GetMany implements store.Batcher: one IN query.
func (s *Store) GetMany(ctx context.Context, kind store.Kind, keys []string) ([]store.Record, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	in, args := inList(keys)
	rows, err := s.query(ctx, sqlGetMany(in), append([]any{string(kind)}, args...)...)
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
	in, args := inList(indexes)
	rows, err := s.query(ctx, sqlCountMany(in), append([]any{string(kind)}, args...)...)
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
