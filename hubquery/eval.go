package hubquery

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Values are JSON values as encoding/json decodes them (nil, bool,
// float64 or json.Number, string, []any, map[string]any) plus Undefined:
// what a missing property, or an expression over mismatched types,
// evaluates to. A WHERE that is not true (false or undefined) filters the
// document out, and an undefined projection is left out of its row.
type undefined struct{}

// Undefined is the value of a property a document does not have.
var Undefined any = undefined{}

// Expr is an expression of the language.
type Expr interface {
	eval(doc map[string]any) any
}

type literal struct{ v any }

func (e *literal) eval(map[string]any) any { return e.v }

type arrayExpr struct{ elems []Expr }

func (e *arrayExpr) eval(doc map[string]any) any {
	out := make([]any, 0, len(e.elems))
	for _, x := range e.elems {
		v := x.eval(doc)
		if v == Undefined {
			continue
		}
		out = append(out, v)
	}
	return out
}

type step struct {
	name    string
	index   int
	isIndex bool
}

// path is a property path from the document's root.
type path struct{ steps []step }

func (e *path) eval(doc map[string]any) any {
	var cur any = doc
	for i, s := range e.steps {
		switch c := cur.(type) {
		case map[string]any:
			if s.isIndex {
				return Undefined
			}
			v, ok := c[s.name]
			if !ok && i == 0 {
				// The twin's system properties are named in any case
				// (SELECT DeviceID … in Azure's own examples); tags and
				// properties below them are case-sensitive.
				for k, x := range c {
					if strings.EqualFold(k, s.name) {
						v, ok = x, true
						break
					}
				}
			}
			if !ok {
				return Undefined
			}
			cur = v
		case []any:
			if !s.isIndex || s.index >= len(c) {
				return Undefined
			}
			cur = c[s.index]
		default:
			return Undefined
		}
	}
	return cur
}

// root names the first property of a path, lower-cased.
func (e *path) root() string { return strings.ToLower(e.steps[0].name) }

type logical struct {
	op   string
	l, r Expr
}

// eval is three-valued: false AND undefined is false, true OR undefined
// is true; otherwise undefined spreads.
func (e *logical) eval(doc map[string]any) any {
	l := e.l.eval(doc)
	lb, lok := l.(bool)
	if e.op == "AND" && lok && !lb || e.op == "OR" && lok && lb {
		return lb
	}
	r := e.r.eval(doc)
	rb, rok := r.(bool)
	if e.op == "AND" && rok && !rb || e.op == "OR" && rok && rb {
		return rb
	}
	if lok && rok {
		return lb // both true (AND) or both false (OR)
	}
	return Undefined
}

type notExpr struct{ e Expr }

func (e *notExpr) eval(doc map[string]any) any {
	if b, ok := e.e.eval(doc).(bool); ok {
		return !b
	}
	return Undefined
}

type compare struct {
	op   string
	l, r Expr
}

func (e *compare) eval(doc map[string]any) any {
	l, r := e.l.eval(doc), e.r.eval(doc)
	if e.op == "=" || e.op == "!=" {
		eq, ok := equal(l, r)
		if !ok {
			return Undefined
		}
		return eq == (e.op == "=")
	}
	c, ok := order(l, r)
	if !ok {
		return Undefined
	}
	switch e.op {
	case "<":
		return c < 0
	case ">":
		return c > 0
	case "<=":
		return c <= 0
	}
	return c >= 0
}

// kind is a value's JSON type, the unit of Azure's comparison rules:
// values of different types compare as undefined, never as false.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "bool"
	case float64, json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "undefined"
}

// num converts a number value; ok is false for anything else.
func num(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

// equal compares two defined values of one type.
func equal(l, r any) (eq, ok bool) {
	kl, kr := kind(l), kind(r)
	if kl != kr || kl == "undefined" {
		return false, false
	}
	switch kl {
	case "number":
		a, _ := num(l)
		b, _ := num(r)
		return a == b, true
	case "array", "object":
		return reflect.DeepEqual(normalize(l), normalize(r)), true
	}
	return l == r, true
}

// normalize turns json.Numbers into float64 so that deep equality does not
// depend on how a number was decoded.
func normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		f, _ := x.Float64()
		return f
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	}
	return v
}

// order compares numbers, strings (ordinally) and booleans (false first).
func order(l, r any) (int, bool) {
	kl := kind(l)
	if kl != kind(r) {
		return 0, false
	}
	switch kl {
	case "number":
		a, _ := num(l)
		b, _ := num(r)
		switch {
		case a < b:
			return -1, true
		case a > b:
			return 1, true
		}
		return 0, true
	case "string":
		return strings.Compare(l.(string), r.(string)), true
	case "bool":
		a, b := l.(bool), r.(bool)
		switch {
		case a == b:
			return 0, true
		case !a:
			return -1, true
		}
		return 1, true
	}
	return 0, false
}

type inExpr struct {
	x, set Expr
	negate bool
}

func (e *inExpr) eval(doc map[string]any) any {
	x := e.x.eval(doc)
	set, ok := e.set.eval(doc).([]any)
	if x == Undefined || !ok {
		return Undefined
	}
	for _, v := range set {
		if eq, ok := equal(x, v); ok && eq {
			return !e.negate
		}
	}
	return e.negate
}

type arith struct {
	op   byte
	l, r Expr
}

func (e *arith) eval(doc map[string]any) any {
	a, ok1 := num(e.l.eval(doc))
	b, ok2 := num(e.r.eval(doc))
	if !ok1 || !ok2 {
		return Undefined
	}
	var v float64
	switch e.op {
	case '+':
		v = a + b
	case '-':
		v = a - b
	case '*':
		v = a * b
	case '/':
		if b == 0 {
			return Undefined
		}
		v = a / b
	case '%':
		if b == 0 {
			return Undefined
		}
		v = math.Mod(a, b)
	}
	return finite(v)
}

// finite keeps infinities and NaN, which JSON cannot carry, out of results.
func finite(v float64) any {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return Undefined
	}
	return v
}

type callExpr struct {
	name string
	fn   func(args []any) any
	args []Expr
}

func (e *callExpr) eval(doc map[string]any) any {
	args := make([]any, len(e.args))
	for i, a := range e.args {
		args[i] = a.eval(doc)
	}
	return e.fn(args)
}

// aggregate is COUNT(), SUM, AVG, MIN or MAX. It is evaluated per group
// by the executor, never per document.
type aggregate struct {
	fn  string
	arg Expr
}

func (e *aggregate) eval(map[string]any) any { return Undefined }

func hasAggregate(e Expr) bool {
	switch x := e.(type) {
	case *aggregate:
		return true
	case *logical:
		return hasAggregate(x.l) || hasAggregate(x.r)
	case *notExpr:
		return hasAggregate(x.e)
	case *compare:
		return hasAggregate(x.l) || hasAggregate(x.r)
	case *arith:
		return hasAggregate(x.l) || hasAggregate(x.r)
	case *inExpr:
		return hasAggregate(x.x) || hasAggregate(x.set)
	case *callExpr:
		for _, a := range x.args {
			if hasAggregate(a) {
				return true
			}
		}
	case *arrayExpr:
		for _, a := range x.elems {
			if hasAggregate(a) {
				return true
			}
		}
	}
	return false
}

// exprString is a canonical rendering, to match a projection with its
// GROUP BY expression.
func exprString(e Expr) string {
	switch x := e.(type) {
	case *literal:
		b, _ := json.Marshal(x.v)
		return string(b)
	case *path:
		var b strings.Builder
		for i, s := range x.steps {
			switch {
			case s.isIndex:
				fmt.Fprintf(&b, "[%d]", s.index)
			case i == 0:
				b.WriteString(strings.ToLower(s.name))
			default:
				b.WriteString("." + strconv.Quote(s.name))
			}
		}
		return b.String()
	case *logical:
		return "(" + exprString(x.l) + " " + x.op + " " + exprString(x.r) + ")"
	case *notExpr:
		return "NOT " + exprString(x.e)
	case *compare:
		return "(" + exprString(x.l) + x.op + exprString(x.r) + ")"
	case *arith:
		return "(" + exprString(x.l) + string(x.op) + exprString(x.r) + ")"
	case *inExpr:
		op := " IN "
		if x.negate {
			op = " NIN "
		}
		return "(" + exprString(x.x) + op + exprString(x.set) + ")"
	case *callExpr:
		parts := make([]string, len(x.args))
		for i, a := range x.args {
			parts[i] = exprString(a)
		}
		return x.name + "(" + strings.Join(parts, ",") + ")"
	case *arrayExpr:
		parts := make([]string, len(x.elems))
		for i, a := range x.elems {
			parts[i] = exprString(a)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case *aggregate:
		if x.arg == nil {
			return x.fn + "()"
		}
		return x.fn + "(" + exprString(x.arg) + ")"
	}
	return "?"
}

// walkPaths calls fn with the root of every property path in e.
func walkPaths(e Expr, fn func(root string)) {
	walkPathExprs(e, func(p *path) { fn(p.root()) })
}

// walkPathExprs calls fn with every property path in e.
func walkPathExprs(e Expr, fn func(*path)) {
	switch x := e.(type) {
	case *path:
		fn(x)
	case *logical:
		walkPathExprs(x.l, fn)
		walkPathExprs(x.r, fn)
	case *notExpr:
		walkPathExprs(x.e, fn)
	case *compare:
		walkPathExprs(x.l, fn)
		walkPathExprs(x.r, fn)
	case *arith:
		walkPathExprs(x.l, fn)
		walkPathExprs(x.r, fn)
	case *inExpr:
		walkPathExprs(x.x, fn)
		walkPathExprs(x.set, fn)
	case *callExpr:
		for _, a := range x.args {
			walkPathExprs(a, fn)
		}
	case *arrayExpr:
		for _, a := range x.elems {
			walkPathExprs(a, fn)
		}
	case *aggregate:
		if x.arg != nil {
			walkPathExprs(x.arg, fn)
		}
	}
}

// function is a built-in scalar function: its arity and its body, which
// answers Undefined for arguments of the wrong type.
type function struct {
	min, max int
	fn       func(args []any) any
}

func (f function) arity() string {
	switch {
	case f.min == f.max && f.min == 1:
		return "one argument"
	case f.min == f.max:
		return fmt.Sprintf("%d arguments", f.min)
	}
	return fmt.Sprintf("%d to %d arguments", f.min, f.max)
}

func isKind(k string) function {
	return function{1, 1, func(a []any) any { return kind(a[0]) == k }}
}

func math1(f func(float64) float64) function {
	return function{1, 1, func(a []any) any {
		x, ok := num(a[0])
		if !ok {
			return Undefined
		}
		return finite(f(x))
	}}
}

func str1(f func(string) any) function {
	return function{1, 1, func(a []any) any {
		s, ok := a[0].(string)
		if !ok {
			return Undefined
		}
		return f(s)
	}}
}

func str2(f func(a, b string) any) function {
	return function{2, 2, func(a []any) any {
		x, ok1 := a[0].(string)
		y, ok2 := a[1].(string)
		if !ok1 || !ok2 {
			return Undefined
		}
		return f(x, y)
	}}
}

// functions are the scalar functions IoT Hub documents for its query and
// routing languages; STARTSWITH and ENDSWITH are also accepted as spelled
// in Cosmos DB, whose SQL IoT Hub's is modelled on.
var functions = map[string]function{
	"IS_DEFINED": {1, 1, func(a []any) any { return a[0] != Undefined }},
	"IS_NULL":    isKind("null"),
	"IS_BOOL":    isKind("bool"),
	"IS_NUMBER":  isKind("number"),
	"IS_STRING":  isKind("string"),
	"IS_ARRAY":   isKind("array"),
	"IS_OBJECT":  isKind("object"),
	"IS_PRIMITIVE": {1, 1, func(a []any) any {
		switch kind(a[0]) {
		case "null", "bool", "number", "string":
			return true
		}
		return false
	}},
	"ABS":     math1(math.Abs),
	"CEILING": math1(math.Ceil),
	"FLOOR":   math1(math.Floor),
	"EXP":     math1(math.Exp),
	"SQUARE":  math1(func(x float64) float64 { return x * x }),
	"POWER": {2, 2, func(a []any) any {
		x, ok1 := num(a[0])
		y, ok2 := num(a[1])
		if !ok1 || !ok2 {
			return Undefined
		}
		return finite(math.Pow(x, y))
	}},
	"LOWER":       str1(func(s string) any { return strings.ToLower(s) }),
	"UPPER":       str1(func(s string) any { return strings.ToUpper(s) }),
	"LENGTH":      str1(func(s string) any { return float64(utf8.RuneCountInString(s)) }),
	"STARTS_WITH": str2(func(s, p string) any { return strings.HasPrefix(s, p) }),
	"STARTSWITH":  str2(func(s, p string) any { return strings.HasPrefix(s, p) }),
	"ENDS_WITH":   str2(func(s, p string) any { return strings.HasSuffix(s, p) }),
	"ENDSWITH":    str2(func(s, p string) any { return strings.HasSuffix(s, p) }),
	"CONTAINS":    str2(func(s, p string) any { return strings.Contains(s, p) }),
	"INDEX_OF": str2(func(s, p string) any {
		i := strings.Index(s, p)
		if i < 0 {
			return float64(-1)
		}
		return float64(utf8.RuneCountInString(s[:i]))
	}),
	"CONCAT": {2, 16, func(a []any) any {
		var b strings.Builder
		for _, x := range a {
			s, ok := x.(string)
			if !ok {
				return Undefined
			}
			b.WriteString(s)
		}
		return b.String()
	}},
	"SUBSTRING": {2, 3, func(a []any) any {
		s, ok := a[0].(string)
		start, ok2 := num(a[1])
		if !ok || !ok2 {
			return Undefined
		}
		r := []rune(s)
		from := clamp(start, len(r))
		to := len(r)
		if len(a) == 3 {
			n, ok := num(a[2])
			if !ok {
				return Undefined
			}
			to = clamp(start+math.Max(n, 0), len(r))
		}
		return string(r[from:to])
	}},
}

func clamp(f float64, n int) int {
	switch {
	case f < 0 || math.IsNaN(f):
		return 0
	case f > float64(n):
		return n
	}
	return int(f)
}
