package hub_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/store/postgres"
	"github.com/berth-iot/berth/store/sqlite"
)

// configStores are the stores the configuration tests run on: what a
// configuration and a twin's configuration state are must survive each.
func configStores(t *testing.T) map[string]func(t *testing.T) store.Store {
	return map[string]func(t *testing.T) store.Store{
		"memstore": func(*testing.T) store.Store { return memstore.New() },
		"sqlite": func(t *testing.T) store.Store {
			st, err := sqlite.Open(filepath.Join(t.TempDir(), "c.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close() })
			return st
		},
		"postgres": func(t *testing.T) store.Store {
			dsn := os.Getenv("BERTH_TEST_POSTGRES")
			if dsn == "" {
				dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
			}
			ctx := context.Background()
			var rnd [6]byte
			_, _ = rand.Read(rnd[:])
			schema := "berth_cfg_" + hex.EncodeToString(rnd[:])
			st, err := postgres.Open(ctx, dsn, postgres.WithSchema(schema))
			if err != nil {
				if os.Getenv("BERTH_REQUIRE_SERVICES") != "" {
					t.Fatalf("PostgreSQL: %v", err)
				}
				t.Skipf("PostgreSQL at BERTH_TEST_POSTGRES or the local test database: %v", err)
			}
			t.Cleanup(func() {
				_ = st.Close()
				if conn, err := pgx.Connect(ctx, dsn); err == nil {
					_, _ = conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
					_ = conn.Close(ctx)
				}
			})
			return st
		},
	}
}

type configFixture struct {
	t   *testing.T
	ctx context.Context
	svc *hub.Services
}

func (f configFixture) device(id string, tags string) {
	f.t.Helper()
	if _, err := f.svc.Registry.Create(f.ctx, hubName, &hub.Device{DeviceID: id}); err != nil {
		f.t.Fatal(err)
	}
	if tags != "" {
		f.tags(id, tags)
	}
}

func (f configFixture) tags(id, tags string) {
	f.t.Helper()
	if _, err := f.svc.Twins.Patch(f.ctx, hubName, id, []byte(`{"tags":`+tags+`}`), ""); err != nil {
		f.t.Fatal(err)
	}
}

func (f configFixture) put(id string, priority int, target, content string) *hub.Configuration {
	f.t.Helper()
	c := &hub.Configuration{ID: id, Priority: priority, TargetCondition: target}
	if err := json.Unmarshal([]byte(content), &c.Content.DeviceContent); err != nil {
		f.t.Fatal(err)
	}
	out, err := f.svc.Configurations.Put(f.ctx, hubName, c, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// desired is the device's desired properties (without $metadata) and its
// configurations section, after everything queued has been applied.
func (f configFixture) desired(id string) (map[string]any, map[string]hub.TwinConfiguration) {
	f.t.Helper()
	f.svc.Configurations.Settle(f.ctx)
	tw, err := f.svc.Twins.Get(f.ctx, hubName, id)
	if err != nil {
		f.t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(tw.Properties.Desired, &d); err != nil {
		f.t.Fatal(err)
	}
	delete(d, "$metadata")
	delete(d, "$version")
	return d, tw.Configurations
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestConfigurationsApplyToMatchingTwins(t *testing.T) {
	for name, open := range configStores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := open(t)
			f := configFixture{t: t, ctx: ctx, svc: hub.NewServices(st, hub.NewRegistry(st, nil), nil, nil, nil)}
			f.device("a", `{"site":"north"}`)
			f.device("b", `{"site":"south"}`)

			f.put("low", 1, "tags.site = 'north'", `{"properties.desired.fw":{"v":"1"},"properties.desired.mode":"eco"}`)
			d, cs := f.desired("a")
			if got := jsonOf(t, d); got != `{"fw":{"v":"1"},"mode":"eco"}` {
				t.Errorf("a's desired: %s", got)
			}
			if got := jsonOf(t, cs); got != `{"low":{"status":"Applied"}}` {
				t.Errorf("a's configurations: %s", got)
			}
			if d, cs := f.desired("b"); len(d) != 0 || cs != nil {
				t.Errorf("b does not match but has %v %v", d, cs)
			}

			// b matches later, after a tag change.
			f.tags("b", `{"site":"north"}`)
			if d, _ := f.desired("b"); jsonOf(t, d) != `{"fw":{"v":"1"},"mode":"eco"}` {
				t.Errorf("b after its tag change: %v", d)
			}
			// A device created later that matches through its device ID.
			f.put("byid", 0, "deviceId = 'c'", `{"properties.desired":{"hello":"c"}}`)
			f.device("c", "")
			if d, _ := f.desired("c"); jsonOf(t, d) != `{"hello":"c"}` {
				t.Errorf("c created after its configuration: %v", d)
			}

			// Both apply; on the path both set, the highest priority wins.
			f.put("high", 5, "tags.site = 'north' AND deviceId = 'a'", `{"properties.desired.fw":{"v":"2"}}`)
			d, cs = f.desired("a")
			if jsonOf(t, d) != `{"fw":{"v":"2"},"mode":"eco"}` || jsonOf(t, cs) != `{"high":{"status":"Applied"},"low":{"status":"Applied"}}` {
				t.Errorf("a under high: %v %v", d, cs)
			}
			c, err := f.svc.Configurations.Get(ctx, hubName, "low")
			if err != nil {
				t.Fatal(err)
			}
			if r := c.SystemMetrics.Results; r["targetedCount"] != 2 || r["appliedCount"] != 2 {
				t.Errorf("low's metrics: %v", r)
			}
			// Raising low above high gives low the path.
			lowNow, err := f.svc.Configurations.Get(ctx, hubName, "low")
			if err != nil {
				t.Fatal(err)
			}
			lowNow.Priority = 9
			if _, err := f.svc.Configurations.Put(ctx, hubName, lowNow, "*"); err != nil {
				t.Fatal(err)
			}
			if d, _ := f.desired("a"); jsonOf(t, d) != `{"fw":{"v":"1"},"mode":"eco"}` {
				t.Errorf("a with low above high: %v", d)
			}
			lowNow.Priority = 1
			if _, err := f.svc.Configurations.Put(ctx, hubName, lowNow, "*"); err != nil {
				t.Fatal(err)
			}
			if d, _ := f.desired("a"); jsonOf(t, d) != `{"fw":{"v":"2"},"mode":"eco"}` {
				t.Errorf("a with low back below high: %v", d)
			}

			// Deleting high gives the path back to low.
			if err := f.svc.Configurations.Delete(ctx, hubName, "high", ""); err != nil {
				t.Fatal(err)
			}
			if d, cs := f.desired("a"); jsonOf(t, d) != `{"fw":{"v":"1"},"mode":"eco"}` || jsonOf(t, cs) != `{"low":{"status":"Applied"}}` {
				t.Errorf("a after high is deleted: %v %v", d, cs)
			}

			// A device that stops matching loses the content (IoT Hub:
			// "the settings from the configuration will be removed"); a
			// service write beside it stays.
			if _, err := f.svc.Twins.Patch(ctx, hubName, "a", []byte(`{"properties":{"desired":{"mine":1}}}`), ""); err != nil {
				t.Fatal(err)
			}
			f.tags("a", `{"site":"east"}`)
			if d, cs := f.desired("a"); jsonOf(t, d) != `{"mine":1}` || cs != nil {
				t.Errorf("a after it stops matching: %v %v", d, cs)
			}

			// Changing the target condition moves the configuration.
			cur, err := f.svc.Configurations.Get(ctx, hubName, "low")
			if err != nil {
				t.Fatal(err)
			}
			cur.TargetCondition = "tags.site = 'east'"
			if _, err := f.svc.Configurations.Put(ctx, hubName, cur, cur.ETag); err != nil {
				t.Fatal(err)
			}
			if d, _ := f.desired("a"); jsonOf(t, d) != `{"fw":{"v":"1"},"mine":1,"mode":"eco"}` {
				t.Errorf("a under the new condition: %v", d)
			}
			if d, cs := f.desired("b"); len(d) != 0 || cs != nil {
				t.Errorf("b out of the new condition: %v %v", d, cs)
			}
		})
	}
}

func TestConfigurationWrites(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	svc := hub.NewServices(st, hub.NewRegistry(st, nil), nil, nil, nil)
	cfgs := svc.Configurations
	content := hub.ConfigurationContent{DeviceContent: map[string]json.RawMessage{"properties.desired.x": json.RawMessage(`1`)}}
	c, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "c1", Content: content, Priority: 2,
		Labels: map[string]string{"k": "v"}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.SchemaVersion != "1.0" || c.ETag == "" || c.CreatedTimeUTC.IsZero() || c.Labels["k"] != "v" {
		t.Fatalf("created: %+v", c)
	}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "c1", Content: content}, ""); code(err) != azerr.HubConfigurationAlreadyExists {
		t.Errorf("create again: %v", err)
	}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "c1", Content: content, Priority: 3}, `"stale"`); code(err) != azerr.HubPreconditionFailed {
		t.Errorf("stale etag: %v", err)
	}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "nope", Content: content}, "*"); code(err) != azerr.HubConfigurationNotFound {
		t.Errorf("update of a missing one: %v", err)
	}
	other := hub.ConfigurationContent{DeviceContent: map[string]json.RawMessage{"properties.desired.x": json.RawMessage(`2`)}}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "c1", Content: other}, "*"); code(err) != azerr.HubArgumentInvalid {
		t.Errorf("content change: %v", err)
	}
	up, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "c1", Content: content, Priority: 4}, `"`+c.ETag+`"`)
	if err != nil || up.Priority != 4 || up.ETag == c.ETag || !up.CreatedTimeUTC.Equal(c.CreatedTimeUTC) {
		t.Fatalf("update: %+v %v", up, err)
	}
	for _, bad := range []*hub.Configuration{
		{ID: "UPPER", Content: content},
		{ID: strings.Repeat("a", 129), Content: content},
		{ID: "c2", Content: content, Priority: -1},
		{ID: "c2", Content: content, SchemaVersion: "2.0"},
		{ID: "c2", Content: content, TargetCondition: "tags.a = = 1"},
		{ID: "c2"},
		{ID: "c2", Content: hub.ConfigurationContent{DeviceContent: map[string]json.RawMessage{"properties.reported.x": json.RawMessage(`1`)}}},
		{ID: "c2", Content: hub.ConfigurationContent{DeviceContent: map[string]json.RawMessage{"properties.desired": json.RawMessage(`1`)}}},
		{ID: "c2", Content: hub.ConfigurationContent{DeviceContent: map[string]json.RawMessage{"properties.desired.a..b": json.RawMessage(`1`)}}},
		{ID: "c2", Content: content, Metrics: hub.ConfigurationMetrics{Queries: map[string]string{"m": "SELECT FROM"}}},
		{ID: "c2", Content: content, Metrics: hub.ConfigurationMetrics{Queries: map[string]string{"1": "SELECT * FROM devices", "2": "SELECT * FROM devices",
			"3": "SELECT * FROM devices", "4": "SELECT * FROM devices", "5": "SELECT * FROM devices", "6": "SELECT * FROM devices"}}},
		{ID: "with space", Content: content},
		{ID: "a/b", Content: content},
	} {
		if _, err := cfgs.Put(ctx, hubName, bad, ""); code(err) != azerr.HubArgumentInvalid {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if err := cfgs.Delete(ctx, hubName, "c1", `"stale"`); code(err) != azerr.HubPreconditionFailed {
		t.Errorf("delete under a stale etag: %v", err)
	}
	if err := cfgs.Delete(ctx, hubName, "c1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := cfgs.Get(ctx, hubName, "c1"); code(err) != azerr.HubConfigurationNotFound {
		t.Errorf("get after delete: %v", err)
	}
	if err := cfgs.Delete(ctx, hubName, "c1", ""); code(err) != azerr.HubConfigurationNotFound {
		t.Errorf("delete again: %v", err)
	}
	// A module configuration's condition selects modules, as IoT Hub
	// requires ("FROM devices.modules WHERE …").
	modContent := hub.ConfigurationContent{ModuleContent: map[string]json.RawMessage{"properties.desired": json.RawMessage(`{"a":1}`)}}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "m0", TargetCondition: "tags.a = 1", Content: modContent}, ""); code(err) != azerr.HubArgumentInvalid {
		t.Errorf("module configuration selecting devices: %v", err)
	}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "m1", TargetCondition: "FROM devices.modules WHERE moduleId = 'x'", Content: modContent}, ""); err != nil {
		t.Fatal(err)
	}
	list, err := cfgs.List(ctx, hubName, 0)
	if err != nil || len(list) != 1 || list[0].ID != "m1" {
		t.Fatalf("list: %v %v", list, err)
	}
	r, err := cfgs.TestQueries(hubName, &hub.ConfigurationQueriesTest{TargetCondition: "tags.a = ", CustomMetricQueries: map[string]string{"ok": "SELECT deviceId FROM devices", "bad": "SELECT"}})
	if err != nil || r.TargetConditionError == "" || r.CustomMetricQueryErrors["bad"] == "" || r.CustomMetricQueryErrors["ok"] != "" {
		t.Errorf("test queries: %+v", r)
	}
}

func TestApplyConfigurationContent(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	svc := hub.NewServices(st, hub.NewRegistry(st, nil), nil, nil, nil)
	if _, err := svc.Registry.Create(ctx, hubName, &hub.Device{DeviceID: "edge", Capabilities: &hub.Capabilities{IoTEdge: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Registry.CreateModule(ctx, hubName, &hub.Module{DeviceID: "edge", ModuleID: "$edgeAgent"}); err != nil {
		t.Fatal(err)
	}
	content := &hub.ConfigurationContent{
		DeviceContent:  map[string]json.RawMessage{"properties.desired.a": json.RawMessage(`{"b":1}`)},
		ModulesContent: map[string]json.RawMessage{"$edgeAgent": json.RawMessage(`{"properties.desired":{"schemaVersion":"1.1"}}`)},
	}
	if err := svc.Configurations.ApplyContent(ctx, hubName, "edge", content); err != nil {
		t.Fatal(err)
	}
	tw, err := svc.Twins.Get(ctx, hubName, "edge")
	if err != nil || !strings.Contains(string(tw.Properties.Desired), `"a":{"b":1}`) {
		t.Fatalf("device twin: %s %v", tw.Properties.Desired, err)
	}
	mt, err := svc.Twins.Get(ctx, hubName, "edge/$edgeAgent")
	if err != nil || !strings.Contains(string(mt.Properties.Desired), `"schemaVersion":"1.1"`) {
		t.Fatalf("module twin: %v", err)
	}
	// A missing module fails the whole request before anything is written.
	content.DeviceContent = map[string]json.RawMessage{"properties.desired.z": json.RawMessage(`1`)}
	content.ModulesContent = map[string]json.RawMessage{"$edgeHub": json.RawMessage(`{"properties.desired":{"x":1}}`)}
	if err := svc.Configurations.ApplyContent(ctx, hubName, "edge", content); code(err) != azerr.HubModuleNotFound {
		t.Errorf("missing module: %v", err)
	}
	if tw, _ := svc.Twins.Get(ctx, hubName, "edge"); strings.Contains(string(tw.Properties.Desired), `"z"`) {
		t.Error("the device content was written although a module was missing")
	}
	if err := svc.Configurations.ApplyContent(ctx, hubName, "ghost", content); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("missing device: %v", err)
	}
}

// TestConfigurationsApplyToProvisionedDevices: a device DPS creates (its
// records written in DPS's transaction, then Provisioned) gets the content
// of a configuration it matches, on top of its enrollment's initial twin.
func TestConfigurationsApplyToProvisionedDevices(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	f := configFixture{t: t, ctx: ctx, svc: hub.NewServices(st, reg, nil, nil, nil)}
	f.put("fleet", 1, "tags.fleet = 'x'", `{"properties.desired.rate":5}`)
	auth := hub.Authentication{Type: hub.AuthSAS, SymmetricKey: &hub.SymmetricKey{PrimaryKey: "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=", SecondaryKey: "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="}}
	recs, revoke, err := reg.ProvisionRecords(ctx, hubName, "p1", auth,
		hub.ProvisionTwin{Initial: &hub.InitialTwin{Tags: json.RawMessage(`{"fleet":"x"}`), Desired: json.RawMessage(`{"initial":true}`)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(ctx, recs); err != nil {
		t.Fatal(err)
	}
	reg.Provisioned(ctx, hubName, "p1", auth, revoke)
	if d, cs := f.desired("p1"); jsonOf(t, d) != `{"initial":true,"rate":5}` || jsonOf(t, cs) != `{"fleet":{"status":"Applied"}}` {
		t.Errorf("provisioned device: %v %v", d, cs)
	}
}

// TestConfigurationsThrottled: every configuration call of the service
// API is one configuration operation; the background application of a
// configuration to twins is not counted.
func TestConfigurationsThrottled(t *testing.T) {
	ctx := context.Background()
	e := throttledEnv(t, "configuration=3/min")
	svc := hub.NewServices(e.st, e.reg, nil, nil, nil)
	content := hub.ConfigurationContent{DeviceContent: map[string]json.RawMessage{"properties.desired.x": json.RawMessage(`1`)}}
	if _, err := svc.Configurations.Put(ctx, hubName, &hub.Configuration{ID: "c", Content: content, TargetCondition: "deviceId = 'dev-1'"}, ""); err != nil {
		t.Fatal(err)
	}
	svc.Configurations.Settle(ctx) // applies to dev-1: not an operation
	if _, err := svc.Configurations.Get(ctx, hubName, "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Configurations.List(ctx, hubName, 0); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Configurations.TestQueries(hubName, &hub.ConfigurationQueriesTest{TargetCondition: "tags.a = 1"})
	wantThrottled(t, "the fourth configuration call", err)
	wantThrottled(t, "apply content", svc.Configurations.ApplyContent(ctx, hubName, "dev-1", &content))
	wantThrottled(t, "delete", svc.Configurations.Delete(ctx, hubName, "c", ""))
}

// TestConfigurationsRunSweepsAtStart: a berth that starts on a store whose
// twins do not reflect its configurations (changed while it was down)
// applies them at once, not after its first interval.
func TestConfigurationsRunSweepsAtStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := memstore.New()
	first := configFixture{t: t, ctx: ctx, svc: hub.NewServices(st, hub.NewRegistry(st, nil), nil, nil, nil)}
	first.put("c", 1, "tags.k = 1", `{"properties.desired.x":1}`)
	first.device("d", `{"k":1}`) // queued on the first node, never applied: it "stopped"

	svc := hub.NewServices(st, hub.NewRegistry(st, nil), nil, nil, nil)
	done := make(chan struct{})
	go func() {
		svc.Configurations.Run(ctx, time.Hour)
		close(done)
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		tw, err := svc.Twins.Get(ctx, hubName, "d")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(tw.Properties.Desired), `"x":1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not applied at start: %s", tw.Properties.Desired)
		}
	}
	cancel()
	<-done
}

// TestConfigurationTargetsAndTies: "*" targets every device, an empty
// condition none; of two configurations of one priority setting one path,
// the one created last wins, as IoT Hub documents.
func TestConfigurationTargetsAndTies(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	f := configFixture{t: t, ctx: ctx, svc: hub.NewServices(st, hub.NewRegistry(st, func() time.Time { return now }), nil, nil, nil)}
	f.device("d1", "")
	f.device("d2", `{"x":1}`)
	f.put("none", 0, "", `{"properties.desired.none":1}`)
	f.put("older", 2, "*", `{"properties.desired.who":"older","properties.desired.all":1}`)
	now = now.Add(time.Second)
	f.put("newer", 2, "tags.x = 1", `{"properties.desired.who":"newer"}`)
	if d, _ := f.desired("d1"); jsonOf(t, d) != `{"all":1,"who":"older"}` {
		t.Errorf("d1: %v", d)
	}
	if d, cs := f.desired("d2"); jsonOf(t, d) != `{"all":1,"who":"newer"}` || len(cs) != 2 {
		t.Errorf("d2: %v %v", d, cs)
	}
}

// Module configurations (moduleContent, a FROM devices.modules condition)
// are applied to the module twins they select, as device configurations
// to device twins: the content merged into the desired properties, the
// twin's configurations section, the metrics counted over modules; a
// device twin is not touched by them, nor a module twin by a device
// configuration; deleting the configuration removes what it wrote.
func TestModuleConfigurationsApplyToModuleTwins(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	svc := hub.NewServices(st, hub.NewRegistry(st, nil), nil, nil, nil)
	f := configFixture{t: t, ctx: ctx, svc: svc}
	f.device("d1", "")
	f.device("d2", "")
	for _, m := range []struct{ dev, mod string }{{"d1", "sensor"}, {"d1", "other"}, {"d2", "sensor"}} {
		if _, err := svc.Registry.CreateModule(ctx, hubName, &hub.Module{DeviceID: m.dev, ModuleID: m.mod}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.Twins.Patch(ctx, hubName, "d2/sensor", []byte(`{"tags":{"ring":"canary"}}`), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Configurations.Put(ctx, hubName, &hub.Configuration{ID: "sensors", Priority: 1,
		TargetCondition: "FROM devices.modules WHERE moduleId = 'sensor'",
		Content:         hub.ConfigurationContent{ModuleContent: map[string]json.RawMessage{"properties.desired.rate": json.RawMessage(`5`)}},
		Metrics:         hub.ConfigurationMetrics{Queries: map[string]string{"canary": "SELECT deviceId FROM devices.modules WHERE tags.ring = 'canary'"}},
	}, ""); err != nil {
		t.Fatal(err)
	}
	f.put("devices", 1, "*", `{"properties.desired.dev": 1}`)

	for id, want := range map[string]string{
		"d1/sensor": `{"rate":5}`, "d2/sensor": `{"rate":5}`, "d1/other": `{}`,
		"d1": `{"dev":1}`, "d2": `{"dev":1}`,
	} {
		d, confs := f.desired(id)
		if got := jsonOf(t, d); got != want {
			t.Errorf("%s desired %s; want %s", id, got, want)
		}
		_, mod := confs["sensors"]
		_, dev := confs["devices"]
		if mod != (want == `{"rate":5}`) || dev != strings.Contains(want, "dev") {
			t.Errorf("%s configurations %+v", id, confs)
		}
	}
	c, err := svc.Configurations.Get(ctx, hubName, "sensors")
	if err != nil {
		t.Fatal(err)
	}
	if r := c.SystemMetrics.Results; r["targetedCount"] != 2 || r["appliedCount"] != 2 || c.Metrics.Results["canary"] != 1 {
		t.Errorf("metrics %+v %+v", c.SystemMetrics, c.Metrics)
	}
	// A module created later is applied as soon as it exists.
	f.device("d3", "")
	if _, err := svc.Registry.CreateModule(ctx, hubName, &hub.Module{DeviceID: "d3", ModuleID: "sensor"}); err != nil {
		t.Fatal(err)
	}
	if d, _ := f.desired("d3/sensor"); jsonOf(t, d) != `{"rate":5}` {
		t.Errorf("a module created later: %v", d)
	}
	if err := svc.Configurations.Delete(ctx, hubName, "sensors", ""); err != nil {
		t.Fatal(err)
	}
	if d, confs := f.desired("d1/sensor"); jsonOf(t, d) != `{}` || len(confs) != 0 {
		t.Errorf("after delete: %v %+v", d, confs)
	}
}

// A hub has at most 100 device and module configurations, and apart from
// them 100 IoT Edge deployments; the 101st is IoT Hub's 413101
// ConfigurationCountLimitExceeded. Updating one at the limit is fine, and
// a delete makes room.
func TestConfigurationCountLimit(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	svc := hub.NewServices(st, hub.NewRegistry(st, nil), nil, nil, nil)
	cfgs := svc.Configurations
	dev := hub.ConfigurationContent{DeviceContent: map[string]json.RawMessage{"properties.desired.x": json.RawMessage(`1`)}}
	mod := hub.ConfigurationContent{ModuleContent: map[string]json.RawMessage{"properties.desired.x": json.RawMessage(`1`)}}
	edge := hub.ConfigurationContent{ModulesContent: map[string]json.RawMessage{"$edgeAgent": json.RawMessage(`{"properties.desired":{}}`)}}
	for i := range 100 { // IoT Hub's figure, not the constant: a wrong constant must fail
		content := dev
		if i%2 == 1 {
			content = mod
		}
		if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: fmt.Sprintf("c%d", i), Content: content}, ""); err != nil {
			t.Fatal(err)
		}
	}
	_, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "one-more", Content: dev}, "")
	if code(err) != azerr.HubConfigurationCountLimitExceeded {
		t.Fatalf("the 101st: %v", err)
	}
	var ae *azerr.Error
	if errors.As(err, &ae); ae.Code.Status() != 413 || ae.Code.Number() != 413101 {
		t.Errorf("status %d code %d", ae.Code.Status(), ae.Code.Number())
	}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "c0", Content: dev, Priority: 9}, "*"); err != nil {
		t.Errorf("update at the limit: %v", err)
	}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "deploy-1", Content: edge}, ""); err != nil {
		t.Errorf("an IoT Edge deployment is counted apart: %v", err)
	}
	if err := cfgs.Delete(ctx, hubName, "c5", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := cfgs.Put(ctx, hubName, &hub.Configuration{ID: "one-more", Content: dev}, ""); err != nil {
		t.Errorf("after a delete: %v", err)
	}
}
