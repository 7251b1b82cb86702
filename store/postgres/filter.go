package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/store"
)

// docSchema is schema version 2: the documents of filterable kinds
// (store.Filterable: twins) are also kept as jsonb in records.doc, filled
// by a trigger on every write path, with a GIN index (jsonb_path_ops)
// that serves containment: ListWhere turns its equalities into one
// doc @> '{…}' and evaluates ranges on doc. A document that is not JSON
// gets no doc (the write still succeeds). The trigger names the kinds
// literally (SQL cannot call store.Filterable); a kind added there needs a
// schema version here.
func docSchema(ident func(string) string) []string {
	fn := ident("berth_records_doc")
	return []string{
		`ALTER TABLE ` + ident("records") + ` ADD COLUMN doc jsonb`,
		`CREATE FUNCTION ` + fn + `() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			NEW.doc := NULL;
			IF NEW.kind IN ('twin') THEN
				BEGIN
					NEW.doc := convert_from(NEW.data, 'UTF8')::jsonb;
				EXCEPTION WHEN others THEN
					NEW.doc := NULL;
				END;
			END IF;
			RETURN NEW;
		END $$`,
		`CREATE TRIGGER berth_records_doc BEFORE INSERT OR UPDATE OF data ON ` + ident("records") +
			` FOR EACH ROW EXECUTE FUNCTION ` + fn + `()`,
		// Records written before version 2 go through the trigger.
		`UPDATE ` + ident("records") + ` SET data = data WHERE kind IN ('twin')`,
		`CREATE INDEX ` + pgx.Identifier{"records_doc"}.Sanitize() + ` ON ` + ident("records") + ` USING gin (doc jsonb_path_ops)`,
	}
}

var _ store.Filterer = (*Store)(nil)

// ListWhere implements store.Filterer.
func (s *Store) ListWhere(ctx context.Context, kind store.Kind, opts store.ListOptions, preds []store.Pred) ([]store.Record, error) {
	if !store.Filterable(kind) {
		return nil, fmt.Errorf("postgres: list where: %s documents are not indexed", kind)
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(ctx, "list where", kind, "", err)
	}
	if len(preds) == 0 {
		return s.List(ctx, kind, opts)
	}
	var (
		q    strings.Builder
		args []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	// The kind is a literal so that the planner knows it at plan time.
	q.WriteString(`SELECT key, idx, etag, data FROM ` + s.records + ` WHERE kind = '` + string(kind) + `'`)
	contain := map[string]any{}
	for _, p := range preds {
		if !store.FilterablePath(p.Path) {
			return nil, fmt.Errorf("postgres: list where: path %q is not filterable", p.Path)
		}
		var typ string
		switch p.Value.(type) {
		case string:
			typ = "string"
		case float64:
			typ = "number"
		case bool:
			typ = "boolean"
		default:
			return nil, fmt.Errorf("postgres: list where: value %T is not a string, number or boolean", p.Value)
		}
		switch p.Op {
		case store.OpEq:
			if !nest(contain, p.Path, p.Value) {
				return nil, nil // contradictory equalities: nothing matches
			}
			continue
		case store.OpLt, store.OpLe, store.OpGt, store.OpGe:
		default:
			return nil, fmt.Errorf("postgres: list where: unknown comparison %q", p.Op)
		}
		path := arg(p.Path)
		// CASE, not AND: only CASE promises the type test runs before
		// the cast, which fails the whole query on a value of another
		// type.
		q.WriteString(` AND CASE WHEN jsonb_typeof(doc #> ` + path + `::text[]) = '` + typ + `' THEN `)
		switch typ {
		case "string":
			q.WriteString(`(doc #>> ` + path + `::text[]) COLLATE "C" ` + string(p.Op) + ` ` + arg(p.Value) + `::text`)
		case "number":
			q.WriteString(`(doc #> ` + path + `::text[])::numeric ` + string(p.Op) + ` ` + arg(p.Value) + `::numeric`)
		default:
			q.WriteString(`(doc #> ` + path + `::text[])::boolean ` + string(p.Op) + ` ` + arg(p.Value) + `::boolean`)
		}
		q.WriteString(` ELSE false END`)
	}
	if len(contain) > 0 {
		b, err := json.Marshal(contain)
		if err != nil {
			return nil, fmt.Errorf("postgres: list where: %w", err)
		}
		q.WriteString(` AND doc @> ` + arg(string(b)) + `::jsonb`)
	}
	if opts.After != "" {
		q.WriteString(` AND key > ` + arg(opts.After))
	}
	if opts.Index != "" {
		q.WriteString(` AND idx = ` + arg(opts.Index))
	}
	if len(contain) > 0 {
		// Ordered by an expression, not the column: otherwise the planner
		// (with a generic plan, blind to how few documents match) walks
		// the primary key in order and tests every record, where the GIN
		// index finds the matches and a sort of those is cheap.
		q.WriteString(` ORDER BY (key || '') COLLATE "C"`)
	} else {
		q.WriteString(` ORDER BY key`)
	}
	if opts.Limit > 0 {
		q.WriteString(` LIMIT ` + arg(int64(opts.Limit)))
	}
	rows, err := s.pool.Query(ctx, q.String(), args...)
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

// nest sets value at path in m, making the objects on the way. It
// answers false when the path already holds something else: two
// equalities no document can satisfy together.
func nest(m map[string]any, path []string, value any) bool {
	for i, k := range path {
		cur, taken := m[k]
		if i == len(path)-1 {
			if taken {
				return cur == value
			}
			m[k] = value
			return true
		}
		next, ok := cur.(map[string]any)
		if !ok {
			if taken {
				return false
			}
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	return true
}

var _ store.Batcher = (*Store)(nil)

// GetMany implements store.Batcher: one query over the keys as an array.
func (s *Store) GetMany(ctx context.Context, kind store.Kind, keys []string) ([]store.Record, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return retryRead(ctx, func() ([]store.Record, error) {
		rows, err := s.pool.Query(ctx, `SELECT key, idx, etag, data FROM `+s.records+` WHERE kind = $1 AND key = ANY($2) ORDER BY key`, string(kind), keys)
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
	})
}

// CountMany implements store.Batcher with one grouped count.
func (s *Store) CountMany(ctx context.Context, kind store.Kind, indexes []string) (map[string]int, error) {
	if len(indexes) == 0 {
		return map[string]int{}, nil
	}
	return retryRead(ctx, func() (map[string]int, error) {
		rows, err := s.pool.Query(ctx, `SELECT idx, count(*) FROM `+s.records+` WHERE kind = $1 AND idx = ANY($2) GROUP BY idx`, string(kind), indexes)
		if err != nil {
			return nil, fail(ctx, "count many", kind, "", err)
		}
		defer rows.Close()
		out := map[string]int{}
		for rows.Next() {
			var idx string
			var n int64
			if err := rows.Scan(&idx, &n); err != nil {
				return nil, fail(ctx, "count many", kind, "", err)
			}
			out[idx] = int(n)
		}
		if err := rows.Err(); err != nil {
			return nil, fail(ctx, "count many", kind, "", err)
		}
		return out, nil
	})
}
