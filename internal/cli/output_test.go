package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// devices is what a list command hands to print: structs, whose field
// order is the order a table's columns and YAML's keys must keep.
type outDevice struct {
	DeviceID string         `json:"deviceId"`
	Status   string         `json:"status"`
	Count    int64          `json:"cloudToDeviceMessageCount"`
	Enabled  bool           `json:"enabled"`
	Tags     map[string]any `json:"tags,omitempty"`
	Note     *string        `json:"note"`
}

func sampleDevices() []outDevice {
	return []outDevice{
		{DeviceID: "d1", Status: "enabled", Count: 3, Enabled: true, Tags: map[string]any{"floor": 1}},
		{DeviceID: "dev-two", Status: "disabled", Count: 9007199254740993, Enabled: false},
	}
}

func renderString(t *testing.T, v any, format, query string) string {
	t.Helper()
	var b bytes.Buffer
	if err := render(&b, v, format, query); err != nil {
		t.Fatalf("render -o %s --query %q: %v", format, query, err)
	}
	return b.String()
}

func TestOutputFormats(t *testing.T) {
	devs := sampleDevices()
	tests := []struct {
		name, format, query, want string
	}{
		{"table keeps field order, drops nested, az headings", "table", "",
			"DeviceId  Status    CloudToDeviceMessageCount  Enabled  Note\n" +
				"--------  --------  -------------------------  -------  ----\n" +
				"d1        enabled   3                          True\n" +
				"dev-two   disabled  9007199254740993           False\n"},
		{"table of a query's multiselect, in the query's order", "table", "[].{state:status, id:deviceId}",
			"State     Id\n--------  -------\nenabled   d1\ndisabled  dev-two\n"},
		{"table of scalars is a Result column", "table", "[].deviceId",
			"Result\n-------\nd1\ndev-two\n"},
		{"tsv", "tsv", "", "d1\tenabled\t3\tTrue\t\ndev-two\tdisabled\t9007199254740993\tFalse\t\n"},
		{"tsv of one value", "tsv", "[0].deviceId", "d1\n"},
		{"tsv of a list of lists", "tsv", "[].[deviceId, status]", "d1\tenabled\ndev-two\tdisabled\n"},
		{"json after a query", "json", "[?status=='disabled'].{id:deviceId, n:cloudToDeviceMessageCount}",
			"[\n  {\n    \"id\": \"dev-two\",\n    \"n\": 9007199254740992\n  }\n]\n"},
		{"yaml keeps order and precision", "yaml", "",
			"- deviceId: d1\n  status: enabled\n  cloudToDeviceMessageCount: 3\n  enabled: true\n  tags:\n    floor: 1\n  note: null\n" +
				"- deviceId: dev-two\n  status: disabled\n  cloudToDeviceMessageCount: 9007199254740993\n  enabled: false\n  note: null\n"},
		{"none", "none", "", ""},
		{"json without a query is the struct's own encoding", "json", "", mustJSON(t, devs)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := renderString(t, devs, tt.format, tt.query); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	var b bytes.Buffer
	if err := printJSON(&b, v); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// A string that reads as another YAML type stays a string, a
// certificate is a literal block, and jsonc is JSON once its colours go.
func TestOutputYAMLQuotingAndJSONC(t *testing.T) {
	v := map[string]any{"a": "true", "b": "007", "pem": "-----BEGIN-----\nAAA\n-----END-----\n", "c": "x<y&z"}
	y := renderString(t, v, "yaml", "")
	for _, want := range []string{`a: "true"`, `b: "007"`, "pem: |\n  -----BEGIN-----\n  AAA\n"} {
		if !strings.Contains(y, want) {
			t.Errorf("yaml lacks %q:\n%s", want, y)
		}
	}
	c := renderString(t, v, "jsonc", "")
	if !strings.Contains(c, colourKey) || !strings.Contains(c, colourString) {
		t.Errorf("jsonc has no colours: %q", c)
	}
	plain := strings.NewReplacer(colourKey, "", colourString, "", colourOther, "", colourReset, "").Replace(c)
	var back map[string]any
	if err := json.Unmarshal([]byte(plain), &back); err != nil || back["c"] != "x<y&z" || back["a"] != "true" {
		t.Errorf("jsonc without colours is not the value: %v %v\n%s", back, err, plain)
	}
}

// A bad --output or --query is refused before the command runs: nothing
// is created and then left unprinted.
func TestOutputFlagsCheckedFirst(t *testing.T) {
	clearHubEnv(t)
	f := newServiceFake(t) // no replies: any request fails the test
	for _, args := range [][]string{
		{"-o", "xml"},
		{"--query", "[?"},
	} {
		full := append(append(f.flags(), "enrollment-group", "create", "g1"), args...)
		out, _, err := run(t, full...)
		if err == nil || out != "" {
			t.Errorf("%v: err %v, out %q; want an error and no output", args, err, out)
		}
		if reqs := f.requests(); len(reqs) != 0 {
			t.Errorf("%v: requests sent: %v", args, reqs)
		}
	}
}
