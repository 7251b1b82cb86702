package hub_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

// FuzzTwinPatch: any reported patch either is refused with an
// azerr (400/413) and leaves the twin as it was, or is accepted and leaves
// a twin whose device document is valid JSON with a reported $version one
// higher. Never a panic. The twin read back from the store is the one the
// node holds in its cache.
func FuzzTwinPatch(f *testing.F) {
	for _, seed := range []string{
		`{"a":1}`, `{"a":{"b":{"c":null}}}`, `{"a":[1]}`, `{"$version":3,"x":"y"}`, ` `, `null`, `{"a.b":1}`,
		`{"n":4503599627370496}`, `{"f":1e308}`, `{"s":"\u0000"}`, `{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{"k":1}}}}}}}}}}}`,
		`{"a":1}{}`, `{"a":"` + string(make([]byte, 10)) + `"}`,
	} {
		f.Add([]byte(seed), []byte(`{"properties":{"desired":{"k":1}},"tags":{"t":1}}`))
	}
	f.Fuzz(func(t *testing.T, reported, service []byte) {
		ctx := context.Background()
		st := memstore.New()
		reg := hub.NewRegistry(st, func() time.Time { return time.Unix(1700000000, 0) })
		if _, err := reg.Create(ctx, "h.example", &hub.Device{DeviceID: "d"}); err != nil {
			t.Fatal(err)
		}
		twins := hub.NewTwins(st, reg, hub.NewLinks())
		before, err := twins.DeviceDocument(ctx, "h.example", "d")
		if err != nil {
			t.Fatal(err)
		}
		v, err := twins.PatchReported(ctx, "h.example", "d", reported)
		after, derr := twins.DeviceDocument(ctx, "h.example", "d")
		if derr != nil {
			t.Fatal(derr)
		}
		var doc struct {
			Reported map[string]any `json:"reported"`
		}
		if jerr := json.Unmarshal(after, &doc); jerr != nil {
			t.Fatalf("device document is not JSON: %s", after)
		}
		if err != nil {
			if code(err) == (azerr.Code{}) {
				t.Fatalf("refusal without an Azure code: %v", err)
			}
			if string(after) != string(before) {
				t.Fatalf("refused patch changed the twin:\n%s\n%s", before, after)
			}
		} else if v != 2 || doc.Reported["$version"] != 2.0 {
			t.Fatalf("accepted patch: version %d, document %s", v, after)
		}
		// The service side too: refusal or a valid twin, never a panic.
		if tw, err := twins.Patch(ctx, "h.example", "d", service, ""); err == nil {
			if _, err := json.Marshal(tw); err != nil {
				t.Fatalf("twin does not encode: %v", err)
			}
		} else if code(err) == (azerr.Code{}) {
			t.Fatalf("service patch refusal without an Azure code: %v", err)
		}
		// Once more through the cached twin, then: what this node shows
		// (cached, rendered from reused JSON) must be what a node that
		// reads the stored record (compact $metadata, expanded) shows.
		_, _ = twins.PatchReported(ctx, "h.example", "d", reported)
		fresh := hub.NewTwins(st, reg, nil)
		var shown [2][]byte
		for i, tw := range []*hub.Twins{twins, fresh} {
			got, err := tw.Get(ctx, "h.example", "d")
			if err != nil {
				t.Fatal(err)
			}
			if shown[i], err = json.Marshal(got); err != nil {
				t.Fatal(err)
			}
		}
		if string(shown[0]) != string(shown[1]) {
			t.Fatalf("cached twin and stored twin differ:\n%s\n%s", shown[0], shown[1])
		}
	})
}
