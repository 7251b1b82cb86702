package hubquery

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParse: any text either fails with an *Error whose position lies in
// the text (or just past its end), or parses into a query that runs over
// the example twins without a panic and yields JSON-encodable rows.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"SELECT * FROM devices",
		"SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.battery >= 60",
		"SELECT deviceId AS id, COUNT() AS n FROM devices GROUP BY deviceId",
		"SELECT TOP 3 tags['a'][0], -x * (2 + y) % 3 FROM devices.modules WHERE NOT a IN [1, 'b', null, true] OR b NIN []",
		"select status, count() as n, min(x) as lo from devices where is_defined(x) and startswith(lower(x), \"a\\u0041\") group by status",
		"SELECT * FROM devices WHERE CONCAT(a, b, 'c') = SUBSTRING(d, 1, 2) OR INDEX_OF(e, 'f') > POWER(2, 3)",
		"SELECT * FROM devices WHERE 'it''s' = 1e3",
		"SELECT",
		"(((",
	} {
		f.Add(seed)
	}
	src := func(t *testing.T) Source { return memSource(t, twinsJSON) }
	f.Fuzz(func(t *testing.T, query string) {
		q, err := Parse(query)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%q: %T %v, want *Error", query, err, err)
			}
			if e.Pos < 1 || e.Pos > len([]rune(query))+1 {
				t.Fatalf("%q: position %d outside the text", query, e.Pos)
			}
			return
		}
		p, err := q.Run(context.Background(), src(t), Options{PageSize: 3})
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("%q: %v", query, err)
		}
		if _, err := json.Marshal(p.Items); err != nil {
			t.Fatalf("%q: rows not JSON: %v", query, err)
		}
	})
}
