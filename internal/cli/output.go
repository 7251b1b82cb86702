package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/jmespath-community/go-jmespath"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// Every command that prints a resource prints it through globals.print, so
// `-o/--output` and `--query` behave the same on all of them, as az's
// global arguments do: the value is turned into JSON (the service's own
// field names), the JMESPath query, if any, picks from it, and the format
// renders what is left.
//
// JSON objects decoded in Go are maps and lose their key order, which az
// keeps (a table's columns, a YAML document's keys). keyOrder brings it
// back: a key named in the query (`{id:deviceId}`) comes in the query's
// order, any other in the order it first appears in the JSON the command
// produced, which is its struct's field order.

// outputFormats are the values of --output, az's set.
var outputFormats = []string{"json", "jsonc", "table", "tsv", "yaml", "none"}

// addOutputFlags adds -o/--output and --query to the root's persistent
// flags. BERTH_OUTPUT sets the default format, as AZURE_CORE_OUTPUT does
// for az.
func addOutputFlags(root *cobra.Command, g *globals) {
	def := "json"
	if v := strings.ToLower(strings.TrimSpace(os.Getenv("BERTH_OUTPUT"))); v != "" {
		def = v
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&g.output, "output", "o", def, "output format: "+strings.Join(outputFormats, ", ")+" (env BERTH_OUTPUT)")
	pf.StringVar(&g.query, "query", "", "JMESPath query applied to the output, as az's --query (jmespath.org), e.g. \"[].{id:deviceId, status:status}\"")
}

// checkOutputFlags refuses a bad format or query before the command runs:
// a create must not happen and then fail to print.
func (g *globals) checkOutputFlags() error {
	g.output = strings.ToLower(g.output)
	ok := false
	for _, f := range outputFormats {
		ok = ok || f == g.output
	}
	if !ok {
		return fmt.Errorf("--output %q: use one of %s", g.output, strings.Join(outputFormats, ", "))
	}
	if g.query != "" {
		if _, err := jmespath.Compile(g.query); err != nil {
			return fmt.Errorf("--query %q: %w", g.query, err)
		}
	}
	return nil
}

// print writes v to stdout in the chosen format, after the query.
func (g *globals) print(v any) error {
	return render(g.stdout, v, g.output, g.query)
}

// render is print without globals, for tests.
func render(w io.Writer, v any, format, query string) error {
	if format == "" {
		format = "json"
	}
	if format == "none" {
		return nil
	}
	if format == "json" && query == "" {
		return printJSON(w, v) // the struct's own order and number forms
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("print: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if query == "" {
		dec.UseNumber() // keep numbers as the service sent them
	}
	var data any
	if err := dec.Decode(&data); err != nil {
		return fmt.Errorf("print: %w", err)
	}
	if query != "" {
		// JMESPath compares and computes on float64, so the query runs on
		// the plain decoding.
		if data, err = jmespath.Search(query, data); err != nil {
			return fmt.Errorf("--query %q: %w", query, err)
		}
	}
	ko := newKeyOrder(raw, query)
	var buf bytes.Buffer
	switch format {
	case "json", "jsonc":
		writeJSON(&buf, data, ko, format == "jsonc", "")
		buf.WriteByte('\n')
	case "table":
		writeTable(&buf, data, ko)
	case "tsv":
		writeTSV(&buf, data, ko)
	case "yaml":
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(yamlNode(data, ko)); err != nil {
			return fmt.Errorf("print: %w", err)
		}
		if err := enc.Close(); err != nil {
			return fmt.Errorf("print: %w", err)
		}
	default:
		return fmt.Errorf("--output %q: use one of %s", format, strings.Join(outputFormats, ", "))
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("print: %w", err)
	}
	return nil
}

// ---- key order ----

type keyOrder struct {
	query string
	json  map[string]int // key → rank of its first appearance in the JSON
}

func newKeyOrder(raw []byte, query string) keyOrder {
	ko := keyOrder{query: query, json: map[string]int{}}
	// Walk the tokens, telling keys from values with a stack of
	// containers: in an object, a key and a value alternate.
	type frame struct{ object, wantKey bool }
	var stack []frame
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantKey = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if n := len(stack); n > 0 && stack[n-1].object {
					stack[n-1].wantKey = true // the container is the value
				}
				stack = append(stack, frame{object: t == '{', wantKey: t == '{'})
			default:
				stack = stack[:len(stack)-1]
			}
		case string:
			if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
				if _, seen := ko.json[t]; !seen {
					ko.json[t] = len(ko.json)
				}
				stack[n-1].wantKey = false
				continue
			}
			valueDone()
		default:
			valueDone()
		}
	}
	return ko
}

// queryRank is where key is named as a multiselect key (`key:`) in the
// query, or -1.
func (ko keyOrder) queryRank(key string) int {
	q := ko.query
	for from := 0; ; {
		i := strings.Index(q[from:], key)
		if i < 0 {
			return -1
		}
		i += from
		from = i + len(key)
		if i > 0 {
			if r, _ := utf8.DecodeLastRuneInString(q[:i]); isIdent(r) {
				continue
			}
		}
		rest := strings.TrimLeft(q[from:], " \t")
		if strings.HasPrefix(rest, ":") {
			return i
		}
	}
}

func isIdent(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

// sorted returns m's keys in display order.
func (ko keyOrder) sorted(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	ko.sort(keys)
	return keys
}

func (ko keyOrder) sort(keys []string) {
	const none = int(^uint(0) >> 1)
	rank := func(k string) (int, int) {
		q := ko.queryRank(k)
		if q < 0 {
			q = none
		}
		j, ok := ko.json[k]
		if !ok {
			j = none
		}
		return q, j
	}
	sort.SliceStable(keys, func(a, b int) bool {
		qa, ja := rank(keys[a])
		qb, jb := rank(keys[b])
		if qa != qb {
			return qa < qb
		}
		if ja != jb {
			return ja < jb
		}
		return keys[a] < keys[b]
	})
}

// ---- json and jsonc ----

// ANSI colours of jsonc, close to az's: keys, strings, other scalars.
const (
	colourKey    = "\x1b[94m"
	colourString = "\x1b[32m"
	colourOther  = "\x1b[33m"
	colourReset  = "\x1b[0m"
)

func writeJSON(b *bytes.Buffer, v any, ko keyOrder, colour bool, indent string) {
	paint := func(c, s string) {
		if colour {
			b.WriteString(c + s + colourReset)
		} else {
			b.WriteString(s)
		}
	}
	switch t := v.(type) {
	case map[string]any:
		if len(t) == 0 {
			b.WriteString("{}")
			return
		}
		b.WriteString("{\n")
		keys := ko.sorted(t)
		for i, k := range keys {
			b.WriteString(indent + "  ")
			paint(colourKey, jsonQuote(k))
			b.WriteString(": ")
			writeJSON(b, t[k], ko, colour, indent+"  ")
			if i < len(keys)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "}")
	case []any:
		if len(t) == 0 {
			b.WriteString("[]")
			return
		}
		b.WriteString("[\n")
		for i, e := range t {
			b.WriteString(indent + "  ")
			writeJSON(b, e, ko, colour, indent+"  ")
			if i < len(t)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "]")
	case string:
		paint(colourString, jsonQuote(t))
	default:
		raw, _ := json.Marshal(t) // scalars: numbers, bools, null
		paint(colourOther, string(raw))
	}
}

// jsonQuote quotes s as JSON without HTML escaping.
func jsonQuote(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}

// ---- table and tsv ----

// scalar reports whether v is printed in a table cell, and how. Nested
// objects and arrays are left out of tables and tsv, as az leaves them.
func scalar(v any) (string, bool) {
	switch t := v.(type) {
	case nil:
		return "", true
	case string:
		return t, true
	case bool:
		if t { // az prints Python's spelling
			return "True", true
		}
		return "False", true
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64), true
	case json.Number:
		return t.String(), true
	}
	return "", false
}

// rows turns the data into table rows: a list's items, or the one object
// or value. A scalar row is a map with the one key "Result", as az names it.
func rows(data any) []map[string]any {
	var items []any
	if l, ok := data.([]any); ok {
		items = l
	} else {
		items = []any{data}
	}
	out := make([]map[string]any, 0, len(items))
	for _, it := range items {
		if m, ok := it.(map[string]any); ok {
			out = append(out, m)
			continue
		}
		out = append(out, map[string]any{"Result": it})
	}
	return out
}

func writeTable(b *bytes.Buffer, data any, ko keyOrder) {
	rs := rows(data)
	seen := map[string]bool{}
	var cols []string
	for _, r := range rs {
		for k, v := range r {
			if _, ok := scalar(v); ok && !seen[k] {
				seen[k] = true
				cols = append(cols, k)
			}
		}
	}
	if len(cols) == 0 {
		return
	}
	ko.sort(cols)
	header := make([]string, len(cols))
	width := make([]int, len(cols))
	for i, c := range cols {
		header[i] = capitalize(c)
		width[i] = utf8.RuneCountInString(header[i])
	}
	cells := make([][]string, len(rs))
	for r, row := range rs {
		cells[r] = make([]string, len(cols))
		for i, c := range cols {
			s, _ := scalar(row[c])
			s = strings.NewReplacer("\r", " ", "\n", " ", "\t", " ").Replace(s)
			cells[r][i] = s
			width[i] = max(width[i], utf8.RuneCountInString(s))
		}
	}
	line := func(vals []string) {
		var sb strings.Builder
		for i, v := range vals {
			sb.WriteString(v)
			if i < len(vals)-1 {
				sb.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(v)+2))
			}
		}
		b.WriteString(strings.TrimRight(sb.String(), " ") + "\n")
	}
	line(header)
	dashes := make([]string, len(cols))
	for i := range cols {
		dashes[i] = strings.Repeat("-", width[i])
	}
	line(dashes)
	for _, r := range cells {
		line(r)
	}
}

// capitalize is az's column heading: the key with its first letter upper.
func capitalize(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + s[n:]
}

func writeTSV(b *bytes.Buffer, data any, ko keyOrder) {
	var items []any
	if l, ok := data.([]any); ok {
		items = l
	} else {
		items = []any{data}
	}
	for _, it := range items {
		var vals []string
		switch t := it.(type) {
		case map[string]any:
			for _, k := range ko.sorted(t) {
				if s, ok := scalar(t[k]); ok {
					vals = append(vals, s)
				}
			}
		case []any:
			for _, e := range t {
				if s, ok := scalar(e); ok {
					vals = append(vals, s)
				}
			}
		default:
			s, _ := scalar(t)
			vals = append(vals, s)
		}
		for i := range vals {
			vals[i] = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(vals[i])
		}
		b.WriteString(strings.Join(vals, "\t") + "\n")
	}
}

// ---- yaml ----

// yamlNode builds the document as nodes, so that keys keep their order
// and a string that reads as another type ("true", "1") stays quoted.
func yamlNode(v any, ko keyOrder) *yaml.Node {
	switch t := v.(type) {
	case map[string]any:
		n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		for _, k := range ko.sorted(t) {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k}, yamlNode(t[k], ko))
		}
		return n
	case []any:
		n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		for _, e := range t {
			n.Content = append(n.Content, yamlNode(e, ko))
		}
		return n
	case string:
		n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: t}
		if strings.Contains(t, "\n") {
			n.Style = yaml.LiteralStyle // certificates read as PEM
		}
		return n
	case bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(t)}
	case float64:
		tag := "!!float"
		if t == float64(int64(t)) {
			tag = "!!int"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: strconv.FormatFloat(t, 'f', -1, 64)}
	case json.Number:
		tag := "!!float"
		if _, err := t.Int64(); err == nil {
			tag = "!!int"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: t.String()}
	default:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}
	}
}

// eventPrinter prints monitor-events' events as they come: by default one
// JSON line each (az's shape, writeEvent); with another -o or a --query,
// each event is rendered on its own (YAML as a document each) and flushed
// at once, so a pipe sees it. A table is refused: it cannot align rows it
// has not seen; tsv is the streaming form.
func (g *globals) eventPrinter() (func(monitorEvent) error, error) {
	if g.output == "json" && g.query == "" {
		return func(ev monitorEvent) error { return writeEvent(g.stdout, ev) }, nil
	}
	if g.output == "table" {
		return nil, errors.New("monitor-events prints events as they come: use -o tsv (or json, jsonc, yaml) instead of table")
	}
	return func(ev monitorEvent) error {
		var buf bytes.Buffer
		if g.output == "yaml" {
			buf.WriteString("---\n")
		}
		if err := render(&buf, ev, g.output, g.query); err != nil {
			return err
		}
		if _, err := g.stdout.Write(buf.Bytes()); err != nil {
			return fmt.Errorf("print event: %w", err)
		}
		if f, ok := g.stdout.(interface{ Flush() error }); ok {
			if err := f.Flush(); err != nil {
				return fmt.Errorf("print event: %w", err)
			}
		}
		return nil
	}, nil
}
