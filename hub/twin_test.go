package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

// fakeLink records what the domain pushes to a device connection.
type fakeLink struct {
	mu         sync.Mutex
	desired    []string // "version:body"
	subscribed bool
	pending    int
	closed     []hub.CloseReason
	invoke     func(ctx context.Context, name string, payload []byte) (int, []byte, error)
}

func (l *fakeLink) DesiredPatch(version int64, body []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.desired = append(l.desired, fmt.Sprintf("%d:%s", version, body))
}
func (l *fakeLink) MethodsSubscribed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.subscribed
}
func (l *fakeLink) InvokeMethod(ctx context.Context, name string, payload []byte) (int, []byte, error) {
	return l.invoke(ctx, name, payload)
}
func (l *fakeLink) Close(r hub.CloseReason) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = append(l.closed, r)
}

func (l *fakeLink) closes() []hub.CloseReason {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]hub.CloseReason(nil), l.closed...)
}

func (l *fakeLink) CloudToDevicePending() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending++
}

var _ hub.DeviceLink = (*fakeLink)(nil)

type twinEnv struct {
	reg   *hub.Registry
	links *hub.Links
	twins *hub.Twins
	now   time.Time
}

func newTwinEnv(t *testing.T) *twinEnv {
	t.Helper()
	e := &twinEnv{now: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	st := memstore.New()
	e.reg = hub.NewRegistry(st, func() time.Time { return e.now })
	e.links = hub.NewLinks()
	e.twins = hub.NewTwins(st, e.reg, e.links)
	if _, err := e.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	return e
}

func decode(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return m
}

func TestTwinFreshDocuments(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	doc, err := e.twins.DeviceDocument(ctx, hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if string(doc) != `{"desired":{"$version":1},"reported":{"$version":1}}` {
		t.Errorf("device GET of a fresh twin = %s", doc)
	}
	tw, err := e.twins.Get(ctx, hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if tw.DeviceID != "dev-1" || tw.ETag == "" || tw.DeviceETag == "" || tw.Version != 1 || tw.Status != hub.StatusEnabled || tw.AuthenticationType != "sas" || string(tw.Tags) != "{}" {
		t.Errorf("fresh twin: %+v", tw)
	}
	d := decode(t, tw.Properties.Desired)
	if d["$version"] != 1.0 || d["$metadata"].(map[string]any)["$lastUpdated"] != "2026-11-23T10:00:00.0000000Z" {
		t.Errorf("fresh desired: %s", tw.Properties.Desired)
	}
	if _, err := e.twins.Get(ctx, hubName, "nobody"); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("twin of unknown device: %v", err)
	}
}

func TestTwinReportedPatch(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	steps := []struct {
		patch   string
		version int64
		want    string // reported without $version
	}{
		{`{"fw":"1.0","battery":55,"net":{"ssid":"a","rssi":-40}}`, 2, `{"battery":55,"fw":"1.0","net":{"rssi":-40,"ssid":"a"}}`},
		{`{"net":{"rssi":null},"big":4503599627370495,"pi":3.10}`, 3, `{"battery":55,"big":4503599627370495,"fw":"1.0","net":{"ssid":"a"},"pi":3.10}`},
		{`{"net":null}`, 4, `{"battery":55,"big":4503599627370495,"fw":"1.0","pi":3.10}`},
		// What a client read back may carry is not a property.
		{`{"$version":99,"fw":"2.0"}`, 5, `{"battery":55,"big":4503599627370495,"fw":"2.0","pi":3.10}`},
	}
	for i, s := range steps {
		v, err := e.twins.PatchReported(ctx, hubName, "dev-1", []byte(s.patch))
		if err != nil || v != s.version {
			t.Fatalf("step %d: version %d, %v", i, v, err)
		}
		doc, _ := e.twins.DeviceDocument(ctx, hubName, "dev-1")
		var got struct{ Reported json.RawMessage }
		_ = json.Unmarshal(doc, &got)
		want := strings.TrimSuffix(s.want, "}") + fmt.Sprintf(`,"$version":%d}`, s.version)
		if string(got.Reported) != want {
			t.Errorf("step %d: reported\n got %s\nwant %s", i, got.Reported, want)
		}
	}
	tw, _ := e.twins.Get(ctx, hubName, "dev-1")
	if tw.Version != 5 {
		t.Errorf("twin version %d after 4 reported patches", tw.Version)
	}
	meta := decode(t, tw.Properties.Reported)["$metadata"].(map[string]any)
	if _, ok := meta["fw"].(map[string]any)["$lastUpdated"]; !ok {
		t.Errorf("reported $metadata lacks fw: %v", meta)
	}
	if _, ok := meta["net"]; ok {
		t.Errorf("deleted property still has metadata: %v", meta)
	}
}

func TestTwinPatchRefused(t *testing.T) {
	deep := `{"l1":{"l2":{"l3":{"l4":{"l5":{"l6":{"l7":{"l8":{"l9":{"l10":{"leaf":1}}}}}}}}}}}`
	tooDeep := `{"l1":{"l2":{"l3":{"l4":{"l5":{"l6":{"l7":{"l8":{"l9":{"l10":{"l11":{}}}}}}}}}}}}`
	big := `{"a":"` + strings.Repeat("x", 4000) + `"`
	for i := 1; i < 9; i++ {
		big += fmt.Sprintf(`,"a%d":"%s"`, i, strings.Repeat("x", 4000))
	}
	big += "}"
	cases := []struct {
		name  string
		patch string
		code  azerr.Code
	}{
		{"ten levels", deep, azerr.Code{}},
		{"eleven levels", tooDeep, azerr.HubArgumentInvalid},
		{"array", `{"a":[1,2]}`, azerr.HubArgumentInvalid},
		{"nested array", `{"a":{"b":[]}}`, azerr.HubArgumentInvalid},
		{"not an object", `[1]`, azerr.HubArgumentInvalid},
		{"not JSON", `{"a":`, azerr.HubArgumentInvalid},
		{"trailing data", `{"a":1} {}`, azerr.HubArgumentInvalid},
		{"lone space (Node GET body)", ` `, azerr.HubArgumentInvalid},
		{"dot in key", `{"a.b":1}`, azerr.HubArgumentInvalid},
		{"dollar in key", `{"a$":1}`, azerr.HubArgumentInvalid},
		{"space in key", `{"a b":1}`, azerr.HubArgumentInvalid},
		{"control in key", "{\"a\\u0001\":1}", azerr.HubArgumentInvalid},
		{"integer too big", `{"a":4503599627370496}`, azerr.HubArgumentInvalid},
		{"integer too small", `{"a":-4503599627370497}`, azerr.HubArgumentInvalid},
		{"string of 4 KB", `{"a":"` + strings.Repeat("x", 4096) + `"}`, azerr.Code{}},
		{"string over 4 KB", `{"a":"` + strings.Repeat("x", 4097) + `"}`, azerr.HubArgumentInvalid},
		{"key of 1 KB", `{"` + strings.Repeat("k", 1024) + `":1}`, azerr.Code{}},
		{"key over 1 KB", `{"` + strings.Repeat("k", 1025) + `":1}`, azerr.HubArgumentInvalid},
		{"section over 32 KB", big, azerr.HubMessageTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newTwinEnv(t)
			v, err := e.twins.PatchReported(context.Background(), hubName, "dev-1", []byte(c.patch))
			if code(err) != c.code || (c.code == (azerr.Code{}) && err != nil) {
				t.Fatalf("PatchReported = %d, %v; want code %d", v, err, c.code)
			}
			if c.code != (azerr.Code{}) {
				// Nothing written.
				doc, _ := e.twins.DeviceDocument(context.Background(), hubName, "dev-1")
				if !strings.Contains(string(doc), `"reported":{"$version":1}`) {
					t.Errorf("refused patch changed the twin: %s", doc)
				}
			}
		})
	}
}

// sizedPatch is a flat patch whose size as IoT Hub counts it (the bytes of
// keys and of string values) is n, no value over 4 KB.
func sizedPatch(n int) string {
	var parts []string
	for i := 0; n > 0; i++ {
		k := fmt.Sprintf("k%d", i)
		v := min(4096, n-len(k))
		parts = append(parts, fmt.Sprintf(`"%s":"%s"`, k, strings.Repeat("x", v)))
		n -= len(k) + v
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// IoT Hub's twin limits, as literals so that a wrong constant fails here:
// tags 8 KB, desired and reported properties 32 KB each; exactly the limit
// is accepted, a byte more refused.
func TestTwinSizeLimits(t *testing.T) {
	for _, c := range []struct {
		section string
		limit   int
	}{{"tags", 8 * 1024}, {"desired", 32 * 1024}, {"reported", 32 * 1024}} {
		for _, n := range []int{c.limit, c.limit + 1} {
			t.Run(fmt.Sprintf("%s %d", c.section, n), func(t *testing.T) {
				e := newTwinEnv(t)
				ctx := context.Background()
				var err error
				switch c.section {
				case "tags":
					_, err = e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"tags":`+sizedPatch(n)+`}`), "")
				case "desired":
					_, err = e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":`+sizedPatch(n)+`}}`), "")
				case "reported":
					_, err = e.twins.PatchReported(ctx, hubName, "dev-1", []byte(sizedPatch(n)))
				}
				switch {
				case n > c.limit && code(err) != azerr.HubMessageTooLarge:
					t.Fatalf("%d bytes: %v, want MessageTooLarge", n, err)
				case n <= c.limit && err != nil:
					t.Fatalf("%d bytes refused: %v", n, err)
				}
			})
		}
	}
}

func TestTwinDesiredNotifiesInOrder(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	l := &fakeLink{}
	detach := attachLink(e.links, hubName, "dev-1", l)
	defer detach()

	tw, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"tags":{"site":"lab"},"properties":{"desired":{"rate":5,"cfg":{"a":1}}}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if tw.Version != 2 || string(tw.Tags) != `{"site":"lab"}` {
		t.Errorf("after patch: version %d tags %s", tw.Version, tw.Tags)
	}
	desired := decode(t, tw.Properties.Desired)
	if desired["$version"] != 2.0 {
		t.Errorf("desired version: %v", desired["$version"])
	}
	meta := desired["$metadata"].(map[string]any)
	if meta["rate"].(map[string]any)["$lastUpdatedVersion"] != 2.0 || meta["cfg"].(map[string]any)["a"].(map[string]any)["$lastUpdatedVersion"] != 2.0 {
		t.Errorf("desired metadata: %v", meta)
	}
	// Stale etag, then the right one.
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":{"rate":6}}}`), `"nope"`); code(err) != azerr.HubPreconditionFailed {
		t.Errorf("stale If-Match: %v", err)
	}
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":{"rate":6,"cfg":null}}}`), `"`+tw.ETag+`"`); err != nil {
		t.Fatal(err)
	}
	// Tags only: no notification, no desired version.
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"tags":{"site":null}}`), `"*"`); err != nil {
		t.Fatal(err)
	}
	// Replace: the device gets a patch that turns its document into the new one.
	tw, err = e.twins.Replace(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":{"mode":"eco"}}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if string(tw.Tags) != "{}" {
		t.Errorf("replace kept tags: %s", tw.Tags)
	}
	want := []string{
		`2:{"cfg":{"a":1},"rate":5,"$version":2}`,
		`3:{"cfg":null,"rate":6,"$version":3}`,
		`4:{"mode":"eco","rate":null,"$version":4}`,
	}
	if strings.Join(l.desired, "\n") != strings.Join(want, "\n") {
		t.Errorf("notifications:\n%s\nwant\n%s", strings.Join(l.desired, "\n"), strings.Join(want, "\n"))
	}
	doc, _ := e.twins.DeviceDocument(ctx, hubName, "dev-1")
	if string(doc) != `{"desired":{"mode":"eco","$version":4},"reported":{"$version":1}}` {
		t.Errorf("device document after replace: %s", doc)
	}
	// Reported properties are the device's: a service patch naming them
	// changes nothing there.
	tw, err = e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"reported":{"x":1}}}`), "")
	if err != nil || strings.Contains(string(tw.Properties.Reported), `"x"`) {
		t.Errorf("service wrote reported: %s, %v", tw.Properties.Reported, err)
	}
}

func TestTwinConcurrentPatchesLoseNothing(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	l := &fakeLink{}
	defer attachLink(e.links, hubName, "dev-1", l)()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := e.twins.Patch(ctx, hubName, "dev-1", fmt.Appendf(nil, `{"properties":{"desired":{"k%d":%d}}}`, i, i), ""); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := e.twins.PatchReported(ctx, hubName, "dev-1", fmt.Appendf(nil, `{"r%d":%d}`, i, i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	tw, _ := e.twins.Get(ctx, hubName, "dev-1")
	d, r := decode(t, tw.Properties.Desired), decode(t, tw.Properties.Reported)
	if len(d) != 22 || len(r) != 22 || d["$version"] != 21.0 || r["$version"] != 21.0 || tw.Version != 41 {
		t.Errorf("after 20+20 concurrent patches: desired %d keys v%v, reported %d keys v%v, twin v%d", len(d), d["$version"], len(r), r["$version"], tw.Version)
	}
	for i, n := range l.desired {
		if !strings.HasPrefix(n, fmt.Sprintf("%d:", i+2)) {
			t.Fatalf("notification %d out of order: %s", i, n)
		}
	}
}

func TestTwinGoesWithTheDevice(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	if _, err := e.twins.PatchReported(ctx, hubName, "dev-1", []byte(`{"old":true}`)); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Delete(ctx, hubName, "dev-1", ""); err != nil {
		t.Fatal(err)
	}
	e.now = e.now.Add(time.Second) // a new generation
	if _, err := e.reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	doc, _ := e.twins.DeviceDocument(ctx, hubName, "dev-1")
	if strings.Contains(string(doc), "old") {
		t.Errorf("a recreated device inherited its predecessor's twin: %s", doc)
	}
}

func TestInitialTwin(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	recs, _, err := e.reg.ProvisionRecords(ctx, hubName, "dps-1", hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: "a", SecondaryKey: "b"}},
		hub.ProvisionTwin{Initial: &hub.InitialTwin{Tags: json.RawMessage(`{"site":"lab"}`), Desired: json.RawMessage(`{"rate":5,"$version":7}`)}})
	if err != nil || len(recs) != 2 {
		t.Fatalf("ProvisionRecords = %d records, %v", len(recs), err)
	}
	st := memstore.New()
	if _, err := st.Apply(ctx, recs); err != nil {
		t.Fatal(err)
	}
	reg := hub.NewRegistry(st, nil)
	tw, err := hub.NewTwins(st, reg, nil).Get(ctx, hubName, "dps-1")
	if err != nil {
		t.Fatal(err)
	}
	if string(tw.Tags) != `{"site":"lab"}` || !strings.Contains(string(tw.Properties.Desired), `"rate":5`) || !strings.Contains(string(tw.Properties.Desired), `"$version":1`) {
		t.Errorf("initial twin: tags %s desired %s", tw.Tags, tw.Properties.Desired)
	}
	// An existing device keeps its twin: no twin record.
	recs, _, err = reg.ProvisionRecords(ctx, hubName, "dps-1", hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: "a", SecondaryKey: "b"}},
		hub.ProvisionTwin{Initial: &hub.InitialTwin{Tags: json.RawMessage(`{"site":"other"}`)}})
	if err != nil || len(recs) != 1 {
		t.Errorf("re-provisioning an existing device: %d records, %v", len(recs), err)
	}
	for _, bad := range []hub.InitialTwin{{Tags: json.RawMessage(`{"a":[1]}`)}, {Desired: json.RawMessage(`"x"`)}} {
		if err := hub.ValidateInitialTwin(bad.Tags, bad.Desired); code(err) != azerr.HubArgumentInvalid {
			t.Errorf("ValidateInitialTwin(%s, %s) = %v", bad.Tags, bad.Desired, err)
		}
	}
	if err := hub.ValidateInitialTwin(nil, json.RawMessage(`null`)); err != nil {
		t.Errorf("empty initial twin refused: %v", err)
	}
}

func TestTwinServiceBodyMustBeAnObject(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"tags":{"keep":1}}`), ""); err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"null", "", " ", "[]", `"x"`} {
		if _, err := e.twins.Replace(ctx, hubName, "dev-1", []byte(body), ""); code(err) != azerr.HubArgumentInvalid {
			t.Errorf("Replace(%q) = %v", body, err)
		}
	}
	if tw, _ := e.twins.Get(ctx, hubName, "dev-1"); string(tw.Tags) != `{"keep":1}` {
		t.Errorf("tags after refused replaces: %s", tw.Tags)
	}
}

func TestTwinReplacePatchIsADeepDiff(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	l := &fakeLink{}
	defer attachLink(e.links, hubName, "dev-1", l)()
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":{"a":1,"b":{"c":2,"d":{"e":3}},"k":{"same":1}}}}`), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.twins.Replace(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":{"b":{"d":{"f":5},"x":4},"k":{"same":1}}}}`), ""); err != nil {
		t.Fatal(err)
	}
	want := `3:{"a":null,"b":{"c":null,"d":{"e":null,"f":5},"x":4},"k":{"same":1},"$version":3}`
	if got := l.desired[len(l.desired)-1]; got != want {
		t.Errorf("replacement notification\n got %s\nwant %s", got, want)
	}
}

// A PATCH whose desired (or tags) section is null clears the whole section,
// as IoT Hub does: desired $version and the twin version go up and the
// device hears a patch that sets every removed member to null. Nulling an
// already empty section still counts as a write and notifies.
func TestTwinPatchNullClearsSection(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	l := &fakeLink{}
	defer attachLink(e.links, hubName, "dev-1", l)()
	tw, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"tags":{"site":"lab","t":{"u":1}},"properties":{"desired":{"foo":1,"bar":{"baz":2}}}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	before := tw.Version
	tw, err = e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":null}}`), `"*"`)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(tw.Properties.Desired); !strings.HasPrefix(got, `{"$metadata":`) || !strings.HasSuffix(got, `"$version":3}`) {
		t.Errorf("desired after null = %s; want no properties, $version 3", got)
	}
	if tw.Version != before+1 {
		t.Errorf("twin version = %d; want %d", tw.Version, before+1)
	}
	if string(tw.Tags) != `{"site":"lab","t":{"u":1}}` {
		t.Errorf("tags = %s; a desired-only PATCH must leave them", tw.Tags)
	}
	want := []string{`2:{"bar":{"baz":2},"foo":1,"$version":2}`, `3:{"bar":null,"foo":null,"$version":3}`}
	if fmt.Sprint(l.desired) != fmt.Sprint(want) {
		t.Errorf("notifications\n got %v\nwant %v", l.desired, want)
	}
	doc, err := e.twins.DeviceDocument(ctx, hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := decode(t, doc)["desired"]; fmt.Sprint(got) != "map[$version:3]" {
		t.Errorf("device document desired = %v", got)
	}

	// Again, on an empty section: still a write, still heard.
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":null}}`), ""); err != nil {
		t.Fatal(err)
	}
	if got := l.desired[len(l.desired)-1]; got != `4:{"$version":4}` {
		t.Errorf("notification on an empty section = %s", got)
	}

	// Tags: null clears them all; desired is not touched (no notification).
	tw, err = e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"tags":null}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if string(tw.Tags) != `{}` {
		t.Errorf("tags after null = %s", tw.Tags)
	}
	if len(l.desired) != 3 {
		t.Errorf("a tags-only PATCH notified the device: %v", l.desired)
	}

	// PUT with desired null replaces desired with nothing, the same way.
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"properties":{"desired":{"x":1}}}`), ""); err != nil {
		t.Fatal(err)
	}
	tw, err = e.twins.Replace(ctx, hubName, "dev-1", []byte(`{"tags":{"k":1},"properties":{"desired":null}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.desired[len(l.desired)-1]; got != `6:{"x":null,"$version":6}` {
		t.Errorf("replace with null desired notified %s", got)
	}
	if string(tw.Tags) != `{"k":1}` {
		t.Errorf("tags after replace = %s", tw.Tags)
	}
}

// attachLink attaches l as the device's link (with no credential: nothing
// revokes it unless its device is disabled or deleted) and returns its
// detach.
func attachLink(ls *hub.Links, hubName, deviceID string, l hub.DeviceLink) func() {
	_, detach := ls.Attach(hubName, deviceID, "", l)
	return detach
}

// TestTwinCacheFollowsTheStore: a node keeps the decoded twin of its last
// write; a write by another node (another Twins on the same store) must be
// seen by its next read and kept by its next write, and a refused update
// must leave nothing of itself behind.
func TestTwinCacheFollowsTheStore(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	now := func() time.Time { return time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC) }
	reg := hub.NewRegistry(st, now)
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	e := &twinEnv{reg: reg, twins: hub.NewTwins(st, reg, nil)}
	other := hub.NewTwins(st, hub.NewRegistry(st, now), nil)
	if _, err := e.twins.PatchReported(ctx, hubName, "dev-1", []byte(`{"a":1,"o":{"x":1}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := other.PatchReported(ctx, hubName, "dev-1", []byte(`{"b":2,"o":{"y":2}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.twins.PatchReported(ctx, hubName, "dev-1", []byte(`{"c":3}`)); err != nil {
		t.Fatal(err)
	}
	// Over the reported limit: refused, and the cached twin untouched.
	if _, err := e.twins.PatchReported(ctx, hubName, "dev-1", []byte(sizedPatch(32*1024+1))); code(err) != azerr.HubMessageTooLarge {
		t.Fatalf("oversized patch: %v", err)
	}
	for _, tw := range []*hub.Twins{e.twins, other} {
		got, err := tw.Get(ctx, hubName, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		rep := decode(t, got.Properties.Reported)
		delete(rep, "$metadata")
		b, _ := json.Marshal(rep)
		if want := `{"$version":4,"a":1,"b":2,"c":3,"o":{"x":1,"y":2}}`; string(b) != want {
			t.Fatalf("reported = %s, want %s", b, want)
		}
	}
}
