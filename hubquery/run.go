package hubquery

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// MaxGroups bounds the groups an aggregate query keeps: memory is one entry
// per group, whatever the number of documents.
const MaxGroups = 10000

// Source yields the documents of a collection in ascending key order,
// starting after the key after ("" is the beginning), until yield answers
// false or the collection ends. A document may be changed by the query (a
// source hands out documents it does not keep).
type Source func(ctx context.Context, after string, yield func(key string, doc map[string]any) (bool, error)) error

// Options shape one page of a query.
type Options struct {
	// PageSize is the most items a page holds (x-ms-max-item-count).
	PageSize int
	// Continuation is the previous page's token; "" asks for the first.
	Continuation string
	// Complete, when set, is called on every document the page returns
	// whole or projects, before projection: it adds what is too costly to
	// compute for every document scanned (see Query.Uses).
	Complete func(ctx context.Context, key string, doc map[string]any) error
}

// Page is one page of results.
type Page struct {
	Items []any
	// Continuation is the token of the next page; "" when this is the
	// last.
	Continuation string
}

// ErrContinuation is a continuation token this package did not issue.
var ErrContinuation = errors.New("hubquery: invalid continuation token")

// cursor is the continuation token's content. A page of documents resumes
// after the last key it returned, so the next page neither repeats nor
// skips a document that existed throughout, whatever was added, changed
// or deleted meanwhile. Emitted counts the rows returned so far (for
// TOP); Offset is the position in an aggregate query's groups.
type cursor struct {
	After   string `json:"a,omitempty"`
	Emitted int    `json:"n,omitempty"`
	Offset  int    `json:"o,omitempty"`
}

func decodeCursor(s string) (cursor, error) {
	var c cursor
	if s == "" {
		return c, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return c, ErrContinuation
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil || c.Emitted < 0 || c.Offset < 0 {
		return cursor{}, ErrContinuation
	}
	return c, nil
}

func (c cursor) encode() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Uses reports whether the query needs a root property of every document
// it scans (to filter or group), as opposed to only those it returns.
// SELECT * and projections need only the returned documents.
func (q *Query) Uses(root string) bool {
	root = strings.ToLower(root)
	found := false
	see := func(r string) {
		if r == root {
			found = true
		}
	}
	if q.Where != nil {
		walkPaths(q.Where, see)
	}
	for _, g := range q.GroupBy {
		walkPaths(g, see)
	}
	if q.aggregate {
		for _, it := range q.Items {
			walkPaths(it.Expr, see)
		}
	}
	return found
}

// Selects reports whether a row the query returns can carry the member
// root: SELECT * returns every member, else a projection must name it.
func (q *Query) Selects(root string) bool {
	if q.Star {
		return true
	}
	root = strings.ToLower(root)
	found := false
	for _, it := range q.Items {
		walkPaths(it.Expr, func(r string) {
			if r == root {
				found = true
			}
		})
	}
	return found
}

// Aggregate reports whether the query returns one row per group (it
// selects COUNT() or another aggregate) rather than one per document.
func (q *Query) Aggregate() bool { return q.aggregate }

// Projected reports whether the query returns projections rather than
// whole documents.
func (q *Query) Projected() bool { return !q.Star }

// Matches reports whether a document satisfies the WHERE clause.
func (q *Query) Matches(doc map[string]any) bool {
	if q.Where == nil {
		return true
	}
	b, ok := q.Where.eval(doc).(bool)
	return ok && b
}

// Run answers one page of the query over src.
func (q *Query) Run(ctx context.Context, src Source, opts Options) (Page, error) {
	cur, err := decodeCursor(opts.Continuation)
	if err != nil {
		return Page{}, err
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 100
	}
	if q.aggregate {
		return q.runAggregate(ctx, src, opts, cur)
	}
	limit := opts.PageSize
	if q.Top >= 0 {
		limit = min(limit, q.Top-cur.Emitted)
	}
	if limit <= 0 {
		return Page{Items: []any{}}, nil
	}
	page := Page{Items: []any{}}
	last, more := "", false
	err = src(ctx, cur.After, func(key string, doc map[string]any) (bool, error) {
		if !q.Matches(doc) {
			return true, nil
		}
		if len(page.Items) == limit {
			// One more match exists: only then is there a next page, so a
			// client never fetches an empty last page.
			more = true
			return false, nil
		}
		if opts.Complete != nil {
			if err := opts.Complete(ctx, key, doc); err != nil {
				return false, err
			}
		}
		page.Items = append(page.Items, q.project(doc))
		last = key
		return true, nil
	})
	if err != nil {
		return Page{}, err
	}
	emitted := cur.Emitted + len(page.Items)
	if more && (q.Top < 0 || emitted < q.Top) {
		page.Continuation = cursor{After: last, Emitted: emitted}.encode()
	}
	return page, nil
}

// project builds a row: the document itself for SELECT *, else an object
// of the projections that are defined.
func (q *Query) project(doc map[string]any) any {
	if q.Star {
		return doc
	}
	row := make(map[string]any, len(q.Items))
	for _, it := range q.Items {
		if v := it.Expr.eval(doc); v != Undefined {
			row[it.Alias] = v
		}
	}
	return row
}

// group is one GROUP BY group: its key values and its aggregates' state.
type group struct {
	keys []any
	aggs []aggState
}

type aggState struct {
	n        int
	sum      float64
	best     any // MIN or MAX so far
	hasValue bool
}

func (q *Query) runAggregate(ctx context.Context, src Source, opts Options, cur cursor) (Page, error) {
	groups := map[string]*group{}
	var order []string
	err := src(ctx, "", func(key string, doc map[string]any) (bool, error) {
		if !q.Matches(doc) {
			return true, nil
		}
		keys := make([]any, len(q.GroupBy))
		for i, g := range q.GroupBy {
			keys[i] = g.eval(doc)
		}
		id := groupID(keys)
		g := groups[id]
		if g == nil {
			if len(groups) == MaxGroups {
				return false, &Error{Pos: 1, Msg: fmt.Sprintf("the query makes more than %d groups", MaxGroups)}
			}
			g = &group{keys: keys, aggs: make([]aggState, len(q.Items))}
			groups[id] = g
			order = append(order, id)
		}
		for i, it := range q.Items {
			if a, ok := it.Expr.(*aggregate); ok {
				g.aggs[i].add(a, doc)
			}
		}
		return true, nil
	})
	if err != nil {
		return Page{}, err
	}
	// Without GROUP BY an aggregate has one row even over no documents
	// (SELECT COUNT() … answers 0).
	if len(q.GroupBy) == 0 && len(groups) == 0 {
		groups[""] = &group{aggs: make([]aggState, len(q.Items))}
		order = append(order, "")
	}
	sort.Strings(order) // a stable order across pages
	if q.Top >= 0 && len(order) > q.Top {
		order = order[:q.Top]
	}
	page := Page{Items: []any{}}
	if cur.Offset > len(order) {
		return page, nil
	}
	end := min(len(order), cur.Offset+opts.PageSize)
	for _, id := range order[cur.Offset:end] {
		page.Items = append(page.Items, q.groupRow(groups[id]))
	}
	if end < len(order) {
		page.Continuation = cursor{Offset: end}.encode()
	}
	return page, nil
}

func groupID(keys []any) string {
	var b strings.Builder
	for _, k := range keys {
		if k == Undefined {
			b.WriteString("u;")
			continue
		}
		j, _ := json.Marshal(normalize(k))
		b.Write(j)
		b.WriteByte(';')
	}
	return b.String()
}

func (s *aggState) add(a *aggregate, doc map[string]any) {
	if a.fn == "COUNT" {
		s.n++
		return
	}
	v := a.arg.eval(doc)
	switch a.fn {
	case "SUM", "AVG":
		if f, ok := num(v); ok {
			s.sum += f
			s.n++
		}
	case "MIN", "MAX":
		if k := kind(v); k != "number" && k != "string" && k != "bool" {
			return
		}
		if !s.hasValue {
			s.best, s.hasValue = v, true
			return
		}
		c, ok := order(v, s.best)
		if !ok { // mixed types: keep the first type seen
			return
		}
		if a.fn == "MIN" && c < 0 || a.fn == "MAX" && c > 0 {
			s.best = v
		}
	}
}

func (s *aggState) value(a *aggregate) any {
	switch a.fn {
	case "COUNT":
		return float64(s.n)
	case "SUM":
		return s.sum
	case "AVG":
		if s.n == 0 {
			return Undefined
		}
		return s.sum / float64(s.n)
	}
	if !s.hasValue {
		return Undefined
	}
	return s.best
}

func (q *Query) groupRow(g *group) map[string]any {
	row := make(map[string]any, len(q.Items))
	for i, it := range q.Items {
		var v any
		if a, ok := it.Expr.(*aggregate); ok {
			v = g.aggs[i].value(a)
		} else {
			for j, ge := range q.GroupBy {
				if exprString(ge) == exprString(it.Expr) {
					v = g.keys[j]
				}
			}
		}
		if v != Undefined {
			row[it.Alias] = v
		}
	}
	return row
}

// Needles returns byte strings that the JSON of any document the WHERE
// clause accepts must contain: for each conjunct of its top-level AND
// chain of the form path = 'text' whose path starts at one of roots, the
// text as JSON encodes it, quotes included. A source may skip, without
// decoding it, a document whose stored JSON lacks one. Only plain
// printable ASCII texts are given, which every JSON encoder writes the
// same way.
func (q *Query) Needles(roots ...string) [][]byte {
	var out [][]byte
	var walk func(e Expr)
	walk = func(e Expr) {
		switch x := e.(type) {
		case *logical:
			if x.op == "AND" {
				walk(x.l)
				walk(x.r)
			}
		case *compare:
			if x.op != "=" {
				return
			}
			p, ok := x.l.(*path)
			l, ok2 := x.r.(*literal)
			if !ok || !ok2 {
				p, ok = x.r.(*path)
				l, ok2 = x.l.(*literal)
			}
			if !ok || !ok2 {
				return
			}
			s, ok := l.v.(string)
			if !ok || !plainASCII(s) {
				return
			}
			for _, r := range roots {
				if p.root() == strings.ToLower(r) {
					out = append(out, []byte(`"`+s+`"`))
					return
				}
			}
		}
	}
	if q.Where != nil {
		walk(q.Where)
	}
	return out
}

func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// Cond is a condition a store may evaluate natively: Path (its root
// lower-cased, the rest as written) compared by Op (=, <, <=, >, >=) with
// Value, a string, a float64 or a bool.
type Cond struct {
	Path  []string
	Op    string
	Value any
}

// Conditions returns the conjuncts of the WHERE clause's top-level AND
// chain of the form path op literal (either way round) over a string,
// number or boolean, with op one of = < <= > >=. Every document the query
// accepts satisfies each of them under the query's type rules (a value of
// another type, or none, never does), so a source may skip a document
// that fails one; the query still evaluates the whole clause.
func (q *Query) Conditions() []Cond {
	var out []Cond
	flip := map[string]string{"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
	var walk func(e Expr)
	walk = func(e Expr) {
		switch x := e.(type) {
		case *logical:
			if x.op == "AND" {
				walk(x.l)
				walk(x.r)
			}
		case *compare:
			op, ok := flip[x.op]
			if !ok {
				return
			}
			p, okp := x.l.(*path)
			l, okl := x.r.(*literal)
			if okp && okl {
				op = x.op
			} else if p, okp = x.r.(*path); okp {
				l, okl = x.l.(*literal)
			}
			if !okp || !okl {
				return
			}
			switch l.v.(type) {
			case string, float64, bool:
			default:
				return
			}
			c := Cond{Op: op, Value: l.v}
			for i, s := range p.steps {
				if s.isIndex {
					return
				}
				if i == 0 {
					c.Path = append(c.Path, strings.ToLower(s.name))
				} else {
					c.Path = append(c.Path, s.name)
				}
			}
			out = append(out, c)
		}
	}
	if q.Where != nil {
		walk(q.Where)
	}
	return out
}
