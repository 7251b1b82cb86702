package hubquery

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"testing"
)

// twins are device twins shaped as hub.twinDocument builds them, after the
// example twin of Azure's query language documentation.
const twinsJSON = `[
 {"deviceId":"myDeviceId","status":"enabled","connectionState":"Connected","lastActivityTime":"2024-05-01T10:00:00Z",
  "capabilities":{"iotEdge":false},"version":3,
  "tags":{"location":{"region":"US","plant":"Redmond43"}},
  "properties":{"desired":{"telemetryConfig":{"configId":"db00","sendFrequencyInSecs":300},"$version":4},
   "reported":{"connectivity":{"type":"cellular"},"telemetryConfig":{"configId":"db00","sendFrequencyInSecs":300,"status":"Success"},
    "fw":"1.4","battery":55,"$metadata":{"fw":{"$lastUpdated":"2024-05-01T09:00:00Z"}},"$version":7}}},
 {"deviceId":"d2","status":"disabled","connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z",
  "capabilities":{"iotEdge":true},"version":1,
  "tags":{"location":{"region":"EU","plant":"Berlin1"},"floor":2},
  "properties":{"desired":{"$version":1},
   "reported":{"connectivity":{"type":"wired"},"telemetryConfig":{"status":"Pending"},"fw":"2.1","battery":-10,"$version":2}}},
 {"deviceId":"d3","status":"enabled","connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z",
  "capabilities":{"iotEdge":false},"version":1,
  "tags":{"location":{"region":"US","plant":"Redmond43"},"floor":"2","nil":null,"list":[1,2]},
  "properties":{"desired":{"$version":1},"reported":{"connectivity":{"type":"wifi"},"telemetryConfig":{"status":"Success"},"battery":80,"$version":1}}},
 {"deviceId":"e4","status":"enabled","connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z",
  "capabilities":{"iotEdge":false},"version":1,"tags":{},
  "properties":{"desired":{"$version":1},"reported":{"$version":1}}}
]`

// memSource is a Source over docs in key (deviceId) order.
func memSource(t testing.TB, src string) Source {
	var docs []map[string]any
	dec := json.NewDecoder(strings.NewReader(src))
	dec.UseNumber()
	if err := dec.Decode(&docs); err != nil {
		t.Fatal(err)
	}
	sort.Slice(docs, func(i, j int) bool { return docs[i]["deviceId"].(string) < docs[j]["deviceId"].(string) })
	return func(ctx context.Context, after string, yield func(string, map[string]any) (bool, error)) error {
		for _, d := range docs {
			k := d["deviceId"].(string)
			if k <= after {
				continue
			}
			if more, err := yield(k, d); err != nil || !more {
				return err
			}
		}
		return nil
	}
}

// all runs a query to its last page, pageSize items at a time.
func all(t *testing.T, src Source, query string, pageSize int) ([]any, int, error) {
	t.Helper()
	q, err := Parse(query)
	if err != nil {
		return nil, 0, err
	}
	var out []any
	cont, pages := "", 0
	for {
		p, err := q.Run(context.Background(), src, Options{PageSize: pageSize, Continuation: cont})
		if err != nil {
			return nil, pages, err
		}
		pages++
		out = append(out, p.Items...)
		if cont = p.Continuation; cont == "" {
			return out, pages, nil
		}
		if pages > 100 {
			t.Fatal("no last page")
		}
	}
}

func ids(items []any) string {
	var s []string
	for _, it := range items {
		s = append(s, it.(map[string]any)["deviceId"].(string))
	}
	return strings.Join(s, ",")
}

func TestQueriesSelectDevices(t *testing.T) {
	src := memSource(t, twinsJSON)
	for _, c := range []struct{ q, want string }{
		// Azure's documented examples.
		{"SELECT * FROM devices", "d2,d3,e4,myDeviceId"},
		{"SELECT * FROM devices WHERE tags.location.region = 'US'", "d3,myDeviceId"},
		{"SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60", "myDeviceId"},
		{"SELECT * FROM devices WHERE properties.reported.connectivity.type IN ['wired', 'wifi']", "d2,d3"},
		{"SELECT * FROM devices WHERE properties.reported.connectivity.type NIN ['wired', 'wifi']", "myDeviceId"},
		{"SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)", "d2,d3,myDeviceId"},
		{"SELECT * FROM devices WHERE NOT is_defined(properties.reported.connectivity)", "e4"},
		{"SELECT * FROM devices WHERE capabilities.iotEdge = true", "d2"},
		{"SELECT * FROM devices WHERE status = 'enabled'", "d3,e4,myDeviceId"},
		{"SELECT * FROM devices WHERE connectionState = 'Connected'", "myDeviceId"},
		// Comparisons between types are undefined, hence false: 2 is not '2'.
		{"SELECT * FROM devices WHERE tags.floor = 2", "d2"},
		{"SELECT * FROM devices WHERE tags.floor = '2'", "d3"},
		{"SELECT * FROM devices WHERE tags.floor != 2", ""},
		{"SELECT * FROM devices WHERE NOT (tags.floor = 2)", ""},
		{"SELECT * FROM devices WHERE NOT (tags.floor = 2) OR deviceId = 'e4'", "e4"},
		{"SELECT * FROM devices WHERE tags.floor <> 3 OR deviceId = 'e4'", "d2,e4"},
		{"SELECT * FROM devices WHERE properties.reported.fw < '2.0'", "myDeviceId"},
		{"SELECT * FROM devices WHERE properties.reported.fw >= '2.0'", "d2"},
		{"SELECT * FROM devices WHERE properties.reported.battery > 50 AND properties.reported.battery <= 80", "d3,myDeviceId"},
		{"SELECT * FROM devices WHERE ABS(properties.reported.battery) = 10", "d2"},
		{"SELECT * FROM devices WHERE properties.reported.battery * 2 + 1 = 161", "d3"},
		{"SELECT * FROM devices WHERE properties.reported.battery % 2 = 1", "myDeviceId"},
		{"SELECT * FROM devices WHERE properties.reported.battery / 0 = 1 OR deviceId = 'e4'", "e4"},
		{"SELECT * FROM devices WHERE -properties.reported.battery > 0", "d2"},
		{"SELECT * FROM devices WHERE STARTSWITH(deviceId, 'd')", "d2,d3"},
		{"SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'd') AND ENDS_WITH(deviceId, '3')", "d3"},
		{"SELECT * FROM devices WHERE ENDSWITH(tags.location.plant, '43')", "d3,myDeviceId"},
		{"SELECT * FROM devices WHERE CONTAINS(LOWER(tags.location.plant), 'berlin')", "d2"},
		{"SELECT * FROM devices WHERE UPPER(deviceId) = 'E4'", "e4"},
		{"SELECT * FROM devices WHERE LENGTH(deviceId) > 2", "myDeviceId"},
		{"SELECT * FROM devices WHERE CONCAT(tags.location.region, '-', tags.location.plant) = 'EU-Berlin1'", "d2"},
		{"SELECT * FROM devices WHERE SUBSTRING(deviceId, 0, 2) = 'my'", "myDeviceId"},
		{"SELECT * FROM devices WHERE INDEX_OF(deviceId, 'Dev') = 2", "myDeviceId"},
		{"SELECT * FROM devices WHERE IS_NULL(tags.nil)", "d3"},
		{"SELECT * FROM devices WHERE IS_NUMBER(tags.floor)", "d2"},
		{"SELECT * FROM devices WHERE IS_STRING(tags.floor)", "d3"},
		{"SELECT * FROM devices WHERE IS_BOOL(capabilities.iotEdge) AND IS_OBJECT(tags.location) AND deviceId = 'd2'", "d2"},
		{"SELECT * FROM devices WHERE IS_ARRAY(tags.list) AND tags.list = [1, 2]", "d3"},
		{"SELECT * FROM devices WHERE IS_PRIMITIVE(tags.location)", ""},
		{"SELECT * FROM devices WHERE IS_PRIMITIVE(tags.nil) AND tags.list[1] = 2", "d3"},
		{"SELECT * FROM devices WHERE tags['location']['plant'] = 'Berlin1'", "d2"},
		{"SELECT * FROM devices WHERE properties.reported.$metadata.fw.$lastUpdated > '2024'", "myDeviceId"},
		{"SELECT * FROM devices WHERE properties.reported.$version = 7", "myDeviceId"},
		{"SELECT * FROM devices WHERE properties.reported.battery = null", ""},
		{"SELECT * FROM devices WHERE tags.nil = null", "d3"},
		{"SELECT * FROM devices WHERE lastActivityTime > '2024-01-01'", "myDeviceId"},
		// System properties in any case, as in Azure's examples; tags are case-sensitive.
		{"SELECT * FROM devices WHERE DeviceId = 'd2' OR TAGS.location.region = 'US'", "d2,d3,myDeviceId"},
		{"SELECT * FROM devices WHERE tags.Location.region = 'US'", ""},
		{"select * from DEVICES where deviceId in ['d2', 'e4'] and not status = 'disabled'", "e4"},
		{"SELECT * FROM devices WHERE deviceId NOT IN ['d2', 'e4']", "d3,myDeviceId"},
		{"SELECT TOP 2 * FROM devices", "d2,d3"},
		{"SELECT TOP 0 * FROM devices", ""},
		{`SELECT * FROM devices WHERE deviceId = "d2"`, "d2"},
		{`SELECT * FROM devices WHERE 'it''s' = 'it\'s' AND deviceId = 'd2'`, "d2"},
	} {
		for _, size := range []int{1, 2, 100} {
			got, _, err := all(t, src, c.q, size)
			if err != nil {
				t.Errorf("%s: %v", c.q, err)
				continue
			}
			if ids(got) != c.want {
				t.Errorf("%s (pages of %d): %q, want %q", c.q, size, ids(got), c.want)
			}
		}
	}
}

func TestProjectionsAndAggregates(t *testing.T) {
	src := memSource(t, twinsJSON)
	for _, c := range []struct{ q, want string }{
		{"SELECT deviceId, tags.location.region FROM devices WHERE tags.floor = 2",
			`[{"deviceId":"d2","region":"EU"}]`},
		{"SELECT deviceId AS id, properties.reported.battery AS b, properties.reported.battery * 2 FROM devices WHERE deviceId = 'd3'",
			`[{"$1":160,"b":80,"id":"d3"}]`},
		{"SELECT DeviceID, LastActivityTime FROM devices WHERE connectionState = 'Connected'",
			`[{"DeviceID":"myDeviceId","LastActivityTime":"2024-05-01T10:00:00Z"}]`},
		// Undefined projections are left out of the row.
		{"SELECT deviceId, properties.reported.fw FROM devices WHERE STARTSWITH(deviceId, 'd')",
			`[{"deviceId":"d2","fw":"2.1"},{"deviceId":"d3"}]`},
		{"SELECT COUNT() AS total FROM devices", `[{"total":4}]`},
		{"SELECT COUNT() AS total FROM devices WHERE status = 'nope'", `[{"total":0}]`},
		{"SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices FROM devices GROUP BY properties.reported.telemetryConfig.status",
			`[{"numberOfDevices":1,"status":"Pending"},{"numberOfDevices":2,"status":"Success"},{"numberOfDevices":1}]`},
		{"SELECT tags.location.region, COUNT() AS n, SUM(properties.reported.battery) AS s, AVG(properties.reported.battery) AS a, MIN(deviceId) AS lo, MAX(properties.reported.battery) AS hi FROM devices WHERE is_defined(tags.location) GROUP BY tags.location.region",
			`[{"a":-10,"hi":-10,"lo":"d2","n":1,"region":"EU","s":-10},{"a":67.5,"hi":80,"lo":"d3","n":2,"region":"US","s":135}]`},
		{"SELECT TOP 1 status, COUNT() AS n FROM devices GROUP BY status", `[{"n":1,"status":"disabled"}]`},
		{"SELECT COUNT() AS n FROM devices.modules", `[{"n":0}]`},
	} {
		for _, size := range []int{1, 100} {
			q, err := Parse(c.q)
			if err != nil {
				t.Fatalf("%s: %v", c.q, err)
			}
			var s Source = src
			if q.From != Devices {
				s = func(context.Context, string, func(string, map[string]any) (bool, error)) error { return nil }
			}
			got, _, err := all(t, s, c.q, size)
			if err != nil {
				t.Errorf("%s: %v", c.q, err)
				continue
			}
			b, _ := json.Marshal(got)
			if string(b) != c.want {
				t.Errorf("%s (pages of %d):\n got %s\nwant %s", c.q, size, b, c.want)
			}
		}
	}
}

func TestPagingIsStableWhileDocumentsChange(t *testing.T) {
	var docs []string
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		docs = append(docs, `{"deviceId":"`+id+`","tags":{}}`)
	}
	live := memSource(t, "["+strings.Join(docs, ",")+"]")
	q, _ := Parse("SELECT * FROM devices")
	p1, err := q.Run(context.Background(), live, Options{PageSize: 2})
	if err != nil || ids(p1.Items) != "a,b" || p1.Continuation == "" {
		t.Fatalf("page 1: %q %q %v", ids(p1.Items), p1.Continuation, err)
	}
	// "a" and "c" go, "bb" comes: the next page resumes after "b".
	changed := memSource(t, `[{"deviceId":"b"},{"deviceId":"bb"},{"deviceId":"d"},{"deviceId":"e"},{"deviceId":"f"}]`)
	p2, err := q.Run(context.Background(), changed, Options{PageSize: 2, Continuation: p1.Continuation})
	if err != nil || ids(p2.Items) != "bb,d" {
		t.Fatalf("page 2: %q %v", ids(p2.Items), err)
	}
	p3, _ := q.Run(context.Background(), changed, Options{PageSize: 2, Continuation: p2.Continuation})
	if ids(p3.Items) != "e,f" || p3.Continuation != "" {
		t.Fatalf("page 3: %q %q", ids(p3.Items), p3.Continuation)
	}
	// TOP counts across pages.
	q, _ = Parse("SELECT TOP 3 * FROM devices")
	got, pages, _ := all(t, live, "SELECT TOP 3 * FROM devices", 2)
	if ids(got) != "a,b,c" || pages != 2 {
		t.Fatalf("TOP 3 by 2: %q in %d pages", ids(got), pages)
	}
	for _, bad := range []string{"x", "!!!", "eyJ6IjoxfQ", "eyJuIjotMX0"} {
		if _, err := q.Run(context.Background(), live, Options{Continuation: bad}); !errors.Is(err, ErrContinuation) {
			t.Errorf("continuation %q: %v", bad, err)
		}
	}
}

func TestMalformedQueries(t *testing.T) {
	for _, c := range []struct {
		q   string
		pos int
	}{
		{"", 1},
		{"SELEC * FROM devices", 1},
		{"SELECT * FROM things", 15},
		{"SELECT * FROM devices WHERE", 28},
		{"SELECT * FROM devices WHERE deviceId = 'x", 40},
		{"SELECT * FROM devices WHERE deviceId == 'x'", 39},
		{"SELECT * FROM devices WHERE FOO(deviceId)", 29},
		{"SELECT * FROM devices WHERE STARTSWITH(deviceId)", 29},
		{"SELECT * FROM devices WHERE (deviceId = 'x'", 44},
		{"SELECT * FROM devices GROUP BY status", 1},
		{"SELECT status FROM devices GROUP BY status", 1},
		{"SELECT deviceId, COUNT() AS n FROM devices GROUP BY status", 1},
		{"SELECT * FROM devices WHERE COUNT() > 1", 1},
		{"SELECT TOP -1 * FROM devices", 12},
		{"SELECT TOP 1.5 * FROM devices", 12},
		{"SELECT * FROM devices WHERE deviceId = 'x' extra", 44},
		{"SELECT * FROM devices WHERE deviceId = 'x' ^", 44},
		{"SELECT * FROM devices WHERE " + strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100) + " = 1", 0},
		{"SELECT * FROM devices WHERE " + strings.Repeat("x", MaxQueryLength), 1},
	} {
		_, err := Parse(c.q)
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("%q: %v, want a syntax error", c.q, err)
			continue
		}
		if c.pos != 0 && e.Pos != c.pos {
			t.Errorf("%q: position %d (%s), want %d", c.q, e.Pos, e.Msg, c.pos)
		}
		if !strings.Contains(e.Error(), "position") {
			t.Errorf("%q: %q names no position", c.q, e.Error())
		}
	}
}

func TestUses(t *testing.T) {
	q, _ := Parse("SELECT * FROM devices WHERE CloudToDeviceMessageCount > 0")
	if !q.Uses("cloudToDeviceMessageCount") || q.Uses("tags") {
		t.Fatal("Uses of WHERE")
	}
	q, _ = Parse("SELECT cloudToDeviceMessageCount FROM devices")
	if q.Uses("cloudToDeviceMessageCount") {
		t.Fatal("a projection is completed per row, not used per scan")
	}
	q, _ = Parse("SELECT cloudToDeviceMessageCount AS c, COUNT() AS n FROM devices GROUP BY cloudToDeviceMessageCount")
	if !q.Uses("cloudToDeviceMessageCount") {
		t.Fatal("Uses of GROUP BY")
	}
}

func TestNeedles(t *testing.T) {
	q, _ := Parse("SELECT * FROM devices WHERE tags.a = 'x' AND ('y' = properties.reported.b AND status = 'enabled') AND tags.c = '<' AND (tags.d = 'z' OR tags.e = 'w')")
	got := q.Needles("tags", "properties")
	if len(got) != 2 || string(got[0]) != `"x"` || string(got[1]) != `"y"` {
		t.Fatalf("needles %q", got)
	}
	q, _ = Parse("SELECT * FROM devices WHERE NOT tags.a = 'x'")
	if got := q.Needles("tags"); len(got) != 0 {
		t.Fatalf("needles under NOT: %q", got)
	}
}

func TestPositionsCountCharacters(t *testing.T) {
	_, err := Parse("SELECT * FROM devices WHERE tags.été = 'ü' AND ^")
	var e *Error
	if !errors.As(err, &e) || e.Pos != 48 {
		t.Fatalf("%v, want position 48", err)
	}
	q, err := Parse("SELECT * FROM devices WHERE tags.été = 'ü'")
	if err != nil || !q.Matches(map[string]any{"tags": map[string]any{"été": "ü"}}) {
		t.Fatalf("a non-ASCII name: %v", err)
	}
}

// TestConditions: only conjuncts of the top-level AND chain comparing a
// path with a string, number or boolean literal, either way round (the
// operator flipped), are offered to the store.
func TestConditions(t *testing.T) {
	q, err := Parse("SELECT * FROM devices WHERE TAGS.a = 'x' AND 3 < tags.b AND properties.reported.c >= true " +
		"AND (tags.d = 1 OR tags.e = 2) AND NOT tags.f = 1 AND tags.g != 'y' AND tags.h IN ['z'] AND tags.i = null " +
		"AND tags.j[0] = 1 AND tags.k = tags.l AND LOWER(tags.m) = 'n' AND tags.o <= -2.5")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(q.Conditions())
	want := `[{"Path":["tags","a"],"Op":"=","Value":"x"},{"Path":["tags","b"],"Op":"\u003e","Value":3},` +
		`{"Path":["properties","reported","c"],"Op":"\u003e=","Value":true},{"Path":["tags","o"],"Op":"\u003c=","Value":-2.5}]`
	if string(got) != want {
		t.Errorf("Conditions:\n got %s\nwant %s", got, want)
	}
}

// TestCollectionPrefix: over devices.jobs (and devices.modules) a path may
// start with the collection, as in Azure's examples; over devices it may
// not be stripped.
func TestCollectionPrefix(t *testing.T) {
	docs := []map[string]any{{"deviceId": "a", "jobId": "j1"}, {"deviceId": "b", "jobId": "j2"}}
	src := func(_ context.Context, after string, yield func(string, map[string]any) (bool, error)) error {
		for _, d := range docs {
			if k := d["deviceId"].(string); k > after {
				if more, err := yield(k, d); err != nil || !more {
					return err
				}
			}
		}
		return nil
	}
	q, err := Parse("SELECT devices.jobs.jobId FROM devices.jobs WHERE devices.jobs.deviceId = 'b'")
	if err != nil {
		t.Fatal(err)
	}
	page, err := q.Run(context.Background(), src, Options{PageSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(page.Items); string(got) != `[{"jobId":"j2"}]` {
		t.Errorf("devices.jobs: %s", got)
	}
	q, err = Parse("SELECT * FROM devices WHERE devices.jobs.deviceId = 'b'")
	if err != nil {
		t.Fatal(err)
	}
	if page, err = q.Run(context.Background(), src, Options{PageSize: 10}); err != nil || len(page.Items) != 0 {
		t.Errorf("over devices the prefix is a path like any: %v %v", page.Items, err)
	}
}
