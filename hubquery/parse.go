// Package hubquery is the IoT Hub query language: a parser and an
// evaluator over JSON documents (device twins, module twins, jobs). It
// knows neither the store nor any wire: package hub feeds it documents in
// key order and front ends carry its pages. The language is described in
// docs/hub-query.md.
package hubquery

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxQueryLength bounds a query's text. IoT Hub refuses queries longer than
// about 8 KB; the bound also keeps a hostile query from costing more than
// its parse.
const MaxQueryLength = 8192

// maxDepth bounds the nesting of expressions, so that a query of ten
// thousand parentheses is an error and not a deep recursion.
const maxDepth = 64

// Collection is what a query's FROM names.
type Collection int

// The collections of IoT Hub's query language.
const (
	Devices Collection = iota // FROM devices: device twins
	Modules                   // FROM devices.modules: module twins
	Jobs                      // FROM devices.jobs: device jobs
)

func (c Collection) String() string {
	switch c {
	case Modules:
		return "devices.modules"
	case Jobs:
		return "devices.jobs"
	}
	return "devices"
}

// Query is a parsed query.
type Query struct {
	Top     int // -1 without TOP
	Star    bool
	Items   []Item
	From    Collection
	Where   Expr   // nil without WHERE
	GroupBy []Expr // empty without GROUP BY
	// aggregate is set when the SELECT list has an aggregate (COUNT()):
	// the query yields one row per group (one group without GROUP BY).
	aggregate bool
}

// Item is one projection of the SELECT list.
type Item struct {
	Expr  Expr
	Alias string
}

// Error is a malformed query: Pos is the 1-based character position where
// it was found.
type Error struct {
	Pos int
	Msg string
}

func (e *Error) Error() string {
	return fmt.Sprintf("Syntax error at position %d: %s", e.Pos, e.Msg)
}

// tokKind is a lexical token's kind.
type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tOp // punctuation and operators
)

type token struct {
	kind tokKind
	text string // identifier or operator as written; string literal decoded
	num  float64
	pos  int // 1-based character position
}

// lex splits a query into tokens.
func lex(src string) ([]token, error) {
	var toks []token
	// pos is the 1-based character position of byte i; calls come in
	// increasing i, so it counts each byte once.
	runeAt, byteAt := 1, 0
	pos := func(i int) int {
		runeAt += utf8.RuneCountInString(src[byteAt:i])
		byteAt = i
		return runeAt
	}
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '[' && strings.HasPrefix(src[i:], "[[") && len(toks) > 0 && toks[len(toks)-1].kind == tOp && toks[len(toks)-1].text == ".":
			// IoT Hub's quoting of a member name that is not a plain
			// name, as its configuration metrics write a configuration
			// ID: configurations.[[fw-1.0]].status.
			end := strings.Index(src[i+2:], "]]")
			if end <= 0 {
				return nil, &Error{pos(i), "unterminated [[name]]"}
			}
			toks = append(toks, token{kind: tIdent, text: src[i+2 : i+2+end], pos: pos(i)})
			i += 2 + end + 2
		case isIdentStart(c):
			j := i + 1
			for j < len(src) && isIdentPart(src[j]) {
				j++
			}
			toks = append(toks, token{kind: tIdent, text: src[i:j], pos: pos(i)})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(src) && src[i+1] >= '0' && src[i+1] <= '9':
			j := i
			for j < len(src) && (src[j] >= '0' && src[j] <= '9' || src[j] == '.') {
				j++
			}
			if j < len(src) && (src[j] == 'e' || src[j] == 'E') {
				k := j + 1
				if k < len(src) && (src[k] == '+' || src[k] == '-') {
					k++
				}
				if k < len(src) && src[k] >= '0' && src[k] <= '9' {
					for k < len(src) && src[k] >= '0' && src[k] <= '9' {
						k++
					}
					j = k
				}
			}
			f, err := strconv.ParseFloat(src[i:j], 64)
			if err != nil {
				return nil, &Error{pos(i), fmt.Sprintf("invalid number %q", src[i:j])}
			}
			toks = append(toks, token{kind: tNumber, text: src[i:j], num: f, pos: pos(i)})
			i = j
		case c == '\'' || c == '"':
			s, n, err := lexString(src[i:])
			if err != "" {
				return nil, &Error{pos(i), err}
			}
			toks = append(toks, token{kind: tString, text: s, pos: pos(i)})
			i += n
		default:
			op := ""
			for _, o := range []string{"<=", ">=", "<>", "!=", "=", "<", ">", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",", "."} {
				if strings.HasPrefix(src[i:], o) {
					op = o
					break
				}
			}
			if op == "" {
				r, _ := utf8.DecodeRuneInString(src[i:])
				return nil, &Error{pos(i), fmt.Sprintf("unexpected character %q", r)}
			}
			toks = append(toks, token{kind: tOp, text: op, pos: pos(i)})
			i += len(op)
		}
	}
	return append(toks, token{kind: tEOF, pos: pos(len(src))}), nil
}

// isIdentStart accepts any byte of a multi-byte UTF-8 character too: twin
// property names may be any UTF-8 text.
func isIdentStart(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isIdentPart(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// lexString decodes a quoted string at the start of s; it returns the
// value, the bytes consumed, or an error message. A quote is escaped by a
// backslash or by doubling it, as in SQL.
func lexString(s string) (string, int, string) {
	q := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == q && i+1 < len(s) && s[i+1] == q:
			b.WriteByte(q)
			i++
		case c == q:
			return b.String(), i + 1, ""
		case c == '\\':
			if i+1 >= len(s) {
				return "", 0, "unterminated string"
			}
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'u':
				if i+4 >= len(s) {
					return "", 0, "invalid \\u escape"
				}
				n, err := strconv.ParseUint(s[i+1:i+5], 16, 32)
				if err != nil {
					return "", 0, "invalid \\u escape"
				}
				b.WriteRune(rune(n))
				i += 4
			default:
				b.WriteByte(s[i]) // \' \" \\ \/
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, "unterminated string"
}

// parser is a recursive-descent parser over the tokens.
type parser struct {
	toks  []token
	i     int
	depth int
	anon  int // unnamed projections so far ($1, $2, …)
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

// keyword reports whether the next token is the keyword kw (any case) and
// consumes it if so.
func (p *parser) keyword(kw string) bool {
	t := p.peek()
	if t.kind == tIdent && strings.EqualFold(t.text, kw) {
		p.i++
		return true
	}
	return false
}

func (p *parser) op(o string) bool {
	t := p.peek()
	if t.kind == tOp && t.text == o {
		p.i++
		return true
	}
	return false
}

func (p *parser) errf(t token, format string, args ...any) error {
	return &Error{Pos: t.pos, Msg: fmt.Sprintf(format, args...)}
}

func describe(t token) string {
	switch t.kind {
	case tEOF:
		return "end of query"
	case tString:
		return strconv.Quote(t.text)
	}
	return "'" + t.text + "'"
}

func (p *parser) expectKeyword(kw string) error {
	if !p.keyword(kw) {
		return p.errf(p.peek(), "expected %s, found %s", kw, describe(p.peek()))
	}
	return nil
}

func (p *parser) expectOp(o string) error {
	if !p.op(o) {
		return p.errf(p.peek(), "expected '%s', found %s", o, describe(p.peek()))
	}
	return nil
}

// reserved words cannot name a property without brackets.
var reserved = map[string]bool{
	"select": true, "from": true, "where": true, "group": true, "by": true, "as": true, "top": true,
	"and": true, "or": true, "not": true, "in": true, "nin": true,
}

// Parse parses a query.
func Parse(src string) (*Query, error) {
	if len(src) > MaxQueryLength {
		return nil, &Error{Pos: 1, Msg: fmt.Sprintf("the query is longer than %d bytes", MaxQueryLength)}
	}
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	q, err := p.query()
	if err != nil {
		return nil, err
	}
	return q, nil
}

func (p *parser) query() (*Query, error) {
	q := &Query{Top: -1}
	if err := p.expectKeyword("SELECT"); err != nil {
		return nil, err
	}
	if p.keyword("TOP") {
		t := p.next()
		if t.kind != tNumber || t.num != float64(int(t.num)) || t.num < 0 || t.num > 1<<31 {
			return nil, p.errf(t, "TOP needs a non-negative integer, found %s", describe(t))
		}
		q.Top = int(t.num)
	}
	if p.op("*") {
		q.Star = true
	} else {
		for {
			it, err := p.item()
			if err != nil {
				return nil, err
			}
			q.Items = append(q.Items, it)
			if !p.op(",") {
				break
			}
		}
	}
	if err := p.expectKeyword("FROM"); err != nil {
		return nil, err
	}
	from := p.peek()
	if !p.keyword("devices") {
		return nil, p.errf(from, "FROM must name devices, devices.modules or devices.jobs, found %s", describe(from))
	}
	if p.op(".") {
		t := p.next()
		switch {
		case t.kind == tIdent && strings.EqualFold(t.text, "modules"):
			q.From = Modules
		case t.kind == tIdent && strings.EqualFold(t.text, "jobs"):
			q.From = Jobs
		default:
			return nil, p.errf(t, "FROM must name devices, devices.modules or devices.jobs, found %s", describe(t))
		}
	}
	if p.keyword("WHERE") {
		e, err := p.expr()
		if err != nil {
			return nil, err
		}
		q.Where = e
	}
	if p.keyword("GROUP") {
		if err := p.expectKeyword("BY"); err != nil {
			return nil, err
		}
		for {
			e, err := p.expr()
			if err != nil {
				return nil, err
			}
			if hasAggregate(e) {
				return nil, p.errf(p.toks[p.i-1], "GROUP BY cannot use an aggregate")
			}
			q.GroupBy = append(q.GroupBy, e)
			if !p.op(",") {
				break
			}
		}
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, p.errf(t, "unexpected %s", describe(t))
	}
	q.stripCollection()
	return q, q.check()
}

// stripCollection lets a query over devices.jobs or devices.modules name
// its documents' properties with the collection in front, as Azure's own
// examples do (SELECT * FROM devices.jobs WHERE devices.jobs.deviceId =
// 'd1'): the prefix is dropped from every path that has more after it.
func (q *Query) stripCollection() {
	if q.From == Devices {
		return
	}
	coll := strings.TrimPrefix(q.From.String(), "devices.")
	strip := func(e *path) {
		if len(e.steps) > 2 && !e.steps[0].isIndex && !e.steps[1].isIndex &&
			strings.EqualFold(e.steps[0].name, "devices") && strings.EqualFold(e.steps[1].name, coll) {
			e.steps = e.steps[2:]
		}
	}
	if q.Where != nil {
		walkPathExprs(q.Where, strip)
	}
	for i := range q.Items {
		walkPathExprs(q.Items[i].Expr, strip)
	}
	for _, g := range q.GroupBy {
		walkPathExprs(g, strip)
	}
}

// check enforces the rules between clauses: where aggregates may be, and
// that an aggregate query projects only what it groups by.
func (q *Query) check() error {
	if q.Where != nil && hasAggregate(q.Where) {
		return &Error{Pos: 1, Msg: "WHERE cannot use an aggregate"}
	}
	for _, it := range q.Items {
		if hasAggregate(it.Expr) {
			q.aggregate = true
		}
	}
	if len(q.GroupBy) > 0 && !q.aggregate {
		return &Error{Pos: 1, Msg: "a query with GROUP BY must select an aggregate such as COUNT()"}
	}
	if !q.aggregate {
		return nil
	}
	if q.Star {
		return &Error{Pos: 1, Msg: "SELECT * cannot be used with GROUP BY"}
	}
	for _, it := range q.Items {
		if hasAggregate(it.Expr) {
			if _, ok := it.Expr.(*aggregate); !ok {
				return &Error{Pos: 1, Msg: fmt.Sprintf("%s: an aggregate must be a projection of its own", it.Alias)}
			}
			continue
		}
		grouped := false
		for _, g := range q.GroupBy {
			if exprString(g) == exprString(it.Expr) {
				grouped = true
			}
		}
		if !grouped {
			return &Error{Pos: 1, Msg: fmt.Sprintf("%s is neither an aggregate nor in GROUP BY", exprString(it.Expr))}
		}
	}
	return nil
}

func (p *parser) item() (Item, error) {
	e, err := p.expr()
	if err != nil {
		return Item{}, err
	}
	it := Item{Expr: e}
	if p.keyword("AS") {
		t := p.next()
		if t.kind != tIdent {
			return Item{}, p.errf(t, "expected an alias after AS, found %s", describe(t))
		}
		it.Alias = t.text
		return it, nil
	}
	if t := p.peek(); t.kind == tIdent && !reserved[strings.ToLower(t.text)] {
		p.next() // SELECT x alias
		it.Alias = t.text
		return it, nil
	}
	if e, ok := e.(*path); ok {
		if last := e.steps[len(e.steps)-1]; !last.isIndex {
			it.Alias = last.name
			return it, nil
		}
	}
	p.anon++
	it.Alias = "$" + strconv.Itoa(p.anon)
	return it, nil
}

// Expressions, lowest precedence first: OR, AND, NOT, comparison and
// IN/NIN, + -, * / %, unary minus, primary.

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return p.errf(p.peek(), "the expression nests deeper than %d", maxDepth)
	}
	return nil
}

func (p *parser) expr() (Expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.keyword("OR") {
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = &logical{op: "OR", l: l, r: r}
	}
	return l, nil
}

func (p *parser) and() (Expr, error) {
	l, err := p.not()
	if err != nil {
		return nil, err
	}
	for p.keyword("AND") {
		r, err := p.not()
		if err != nil {
			return nil, err
		}
		l = &logical{op: "AND", l: l, r: r}
	}
	return l, nil
}

func (p *parser) not() (Expr, error) {
	if p.keyword("NOT") {
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		e, err := p.not()
		if err != nil {
			return nil, err
		}
		return &notExpr{e: e}, nil
	}
	return p.comparison()
}

func (p *parser) comparison() (Expr, error) {
	l, err := p.additive()
	if err != nil {
		return nil, err
	}
	t := p.peek()
	if t.kind == tOp {
		switch t.text {
		case "=", "!=", "<>", "<", ">", "<=", ">=":
			p.next()
			r, err := p.additive()
			if err != nil {
				return nil, err
			}
			op := t.text
			if op == "<>" {
				op = "!="
			}
			return &compare{op: op, l: l, r: r}, nil
		}
	}
	negate := false
	switch {
	case p.keyword("IN"):
	case p.keyword("NIN"):
		negate = true
	case t.kind == tIdent && strings.EqualFold(t.text, "NOT") && p.toks[p.i+1].kind == tIdent && strings.EqualFold(p.toks[p.i+1].text, "IN"):
		p.i += 2
		negate = true
	default:
		return l, nil
	}
	r, err := p.additive()
	if err != nil {
		return nil, err
	}
	return &inExpr{x: l, set: r, negate: negate}, nil
}

func (p *parser) additive() (Expr, error) {
	l, err := p.multiplicative()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		if t.kind != tOp || t.text != "+" && t.text != "-" {
			return l, nil
		}
		p.next()
		r, err := p.multiplicative()
		if err != nil {
			return nil, err
		}
		l = &arith{op: t.text[0], l: l, r: r}
	}
}

func (p *parser) multiplicative() (Expr, error) {
	l, err := p.unary()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		if t.kind != tOp || t.text != "*" && t.text != "/" && t.text != "%" {
			return l, nil
		}
		p.next()
		r, err := p.unary()
		if err != nil {
			return nil, err
		}
		l = &arith{op: t.text[0], l: l, r: r}
	}
}

func (p *parser) unary() (Expr, error) {
	if t := p.peek(); t.kind == tOp && (t.text == "-" || t.text == "+") {
		p.next()
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		e, err := p.unary()
		if err != nil {
			return nil, err
		}
		if t.text == "+" {
			return &arith{op: '+', l: &literal{v: 0.0}, r: e}, nil
		}
		if l, ok := e.(*literal); ok {
			if f, ok := l.v.(float64); ok {
				return &literal{v: -f}, nil
			}
		}
		return &arith{op: '-', l: &literal{v: 0.0}, r: e}, nil
	}
	return p.primary()
}

func (p *parser) primary() (Expr, error) {
	t := p.next()
	switch t.kind {
	case tNumber:
		return &literal{v: t.num}, nil
	case tString:
		return &literal{v: t.text}, nil
	case tOp:
		switch t.text {
		case "(":
			e, err := p.expr()
			if err != nil {
				return nil, err
			}
			return e, p.expectOp(")")
		case "[":
			return p.array()
		}
	case tIdent:
		switch strings.ToLower(t.text) {
		case "true":
			return &literal{v: true}, nil
		case "false":
			return &literal{v: false}, nil
		case "null":
			return &literal{v: nil}, nil
		}
		if p.op("(") {
			return p.call(t)
		}
		if reserved[strings.ToLower(t.text)] {
			return nil, p.errf(t, "unexpected %s", describe(t))
		}
		return p.path(t)
	}
	return nil, p.errf(t, "expected an expression, found %s", describe(t))
}

func (p *parser) array() (Expr, error) {
	a := &arrayExpr{}
	if p.op("]") {
		return a, nil
	}
	for {
		e, err := p.expr()
		if err != nil {
			return nil, err
		}
		a.elems = append(a.elems, e)
		if p.op("]") {
			return a, nil
		}
		if err := p.expectOp(","); err != nil {
			return nil, err
		}
	}
}

// path parses a property path: a.b.c, a['b'], a[0].
func (p *parser) path(first token) (Expr, error) {
	e := &path{steps: []step{{name: first.text}}}
	for {
		switch {
		case p.op("."):
			t := p.next()
			if t.kind != tIdent {
				return nil, p.errf(t, "expected a property name after '.', found %s", describe(t))
			}
			e.steps = append(e.steps, step{name: t.text})
		case p.op("["):
			t := p.next()
			switch {
			case t.kind == tString:
				e.steps = append(e.steps, step{name: t.text})
			case t.kind == tNumber && t.num >= 0 && t.num == float64(int(t.num)):
				e.steps = append(e.steps, step{index: int(t.num), isIndex: true})
			default:
				return nil, p.errf(t, "expected a property name or an array index in brackets, found %s", describe(t))
			}
			if err := p.expectOp("]"); err != nil {
				return nil, err
			}
		default:
			return e, nil
		}
	}
}

func (p *parser) call(name token) (Expr, error) {
	fn := strings.ToUpper(name.text)
	var args []Expr
	if !p.op(")") {
		for {
			e, err := p.expr()
			if err != nil {
				return nil, err
			}
			args = append(args, e)
			if p.op(")") {
				break
			}
			if err := p.expectOp(","); err != nil {
				return nil, err
			}
		}
	}
	if fn == "COUNT" {
		if len(args) != 0 {
			return nil, p.errf(name, "COUNT takes no argument")
		}
		return &aggregate{fn: fn}, nil
	}
	if fn == "SUM" || fn == "AVG" || fn == "MIN" || fn == "MAX" {
		if len(args) != 1 {
			return nil, p.errf(name, "%s takes one argument", fn)
		}
		if hasAggregate(args[0]) {
			return nil, p.errf(name, "aggregates cannot nest")
		}
		return &aggregate{fn: fn, arg: args[0]}, nil
	}
	f, ok := functions[fn]
	if !ok {
		return nil, p.errf(name, "unknown function %s", name.text)
	}
	if len(args) < f.min || len(args) > f.max {
		return nil, p.errf(name, "%s takes %s", fn, f.arity())
	}
	return &callExpr{name: fn, fn: f.fn, args: args}, nil
}
