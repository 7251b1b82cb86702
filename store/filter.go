package store

import "context"

// Op is the comparison of a Pred.
type Op string

// The comparisons a store evaluates natively.
const (
	OpEq Op = "="
	OpLt Op = "<"
	OpLe Op = "<="
	OpGt Op = ">"
	OpGe Op = ">="
)

// Pred is a condition on a record's JSON document: the value at Path (a
// member name per element, from the document's root) compared by Op with
// Value, a string, a float64 or a bool. As in IoT Hub's query language,
// only a value of Value's type can satisfy it: strings compare by their
// bytes, numbers as numbers, false < true; a missing member, null, an
// object or a value of another type never does.
type Pred struct {
	Path  []string
	Op    Op
	Value any
}

// Filterer is implemented by the stores that can select records by their
// documents' values (SQLite and PostgreSQL, held to it by the conformance
// suite), with an index where one serves: the device query pushes its
// conditions down with it instead of reading every twin.
type Filterer interface {
	// ListWhere is List of the records whose documents satisfy every
	// pred. Only kinds for which Filterable is true may be asked, and only
	// paths for which FilterablePath is true.
	ListWhere(ctx context.Context, kind Kind, opts ListOptions, preds []Pred) ([]Record, error)
}

// Filterable reports whether ListWhere serves kind: the stores keep an
// index of the values of these kinds' documents.
func Filterable(kind Kind) bool { return kind == KindTwin }

// FilterablePath reports whether ListWhere accepts path: one or more
// member names, each an ASCII letter followed by letters and digits, the
// names every store's JSON functions spell the same way.
func FilterablePath(path []string) bool {
	if len(path) == 0 {
		return false
	}
	for _, s := range path {
		if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
			return false
		}
		for i := 1; i < len(s); i++ {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
				return false
			}
		}
	}
	return true
}
