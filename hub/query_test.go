package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

// TestQueryJoinsDevicesAndTwins: a query sees each device of its hub once,
// with its twin (one written, one never touched, which the query creates
// as GET would), not the devices of another hub whose keys sort between
// them, and pages resume where they stopped.
func TestQueryJoinsDevicesAndTwins(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	reg := hub.NewRegistry(st, func() time.Time { return time.Unix(1700000000, 0) })
	twins := hub.NewTwins(st, reg, nil)
	for _, h := range []string{"a.example", "b.example", "A.example"} {
		for _, id := range []string{"d1", "d2", "d3"} {
			if h == "A.example" {
				continue // same hub as a.example: names are case-insensitive
			}
			if _, err := reg.Create(ctx, h, &hub.Device{DeviceID: id}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := twins.Patch(ctx, "b.example", "d2", []byte(`{"tags":{"site":"x"}}`), "*"); err != nil {
		t.Fatal(err)
	}
	if _, err := twins.Patch(ctx, "a.example", "d2", []byte(`{"tags":{"site":"y"}}`), "*"); err != nil {
		t.Fatal(err)
	}
	page, err := twins.Query(ctx, "A.example", "SELECT * FROM devices", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 3 || page.Continuation != "" || page.ItemType != hub.QueryItemTwin {
		t.Fatalf("page: %+v", page)
	}
	for _, it := range page.Items {
		b, _ := json.Marshal(it)
		var tw hub.Twin
		if err := json.Unmarshal(b, &tw); err != nil {
			t.Fatal(err)
		}
		if tw.ETag == "" || tw.Version < 1 {
			t.Errorf("%s: etag %q version %d", tw.DeviceID, tw.ETag, tw.Version)
		}
		// The twin the query answered is the twin GET answers.
		got, err := twins.Get(ctx, "a.example", tw.DeviceID)
		if err != nil || got.ETag != tw.ETag {
			t.Errorf("%s: GET etag %q, query %q (%v)", tw.DeviceID, got.ETag, tw.ETag, err)
		}
	}
	page, err = twins.Query(ctx, "a.example", "SELECT deviceId, tags.site FROM devices WHERE IS_DEFINED(tags.site)", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(page.Items); string(b) != `[{"deviceId":"d2","site":"y"}]` || page.ItemType != hub.QueryItemRaw {
		t.Fatalf("projection: %s %s", b, page.ItemType)
	}
	// A tag equality skips twins without the text; the one with it matches.
	page, err = twins.Query(ctx, "a.example", "SELECT deviceId FROM devices WHERE tags.site = 'y' AND deviceId != 'x'", 0, "")
	if b, _ := json.Marshal(page.Items); err != nil || string(b) != `[{"deviceId":"d2"}]` {
		t.Fatalf("tag equality: %s %v", b, err)
	}
	var seen []string
	cont := ""
	for {
		p, err := twins.Query(ctx, "b.example", "SELECT deviceId FROM devices", 1, cont)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range p.Items {
			seen = append(seen, it.(map[string]any)["deviceId"].(string))
		}
		if cont = p.Continuation; cont == "" {
			break
		}
	}
	if strings.Join(seen, ",") != "d1,d2,d3" {
		t.Fatalf("pages of 1: %v", seen)
	}
}

func TestQueryErrorsAreArgumentInvalid(t *testing.T) {
	st := memstore.New()
	twins := hub.NewTwins(st, hub.NewRegistry(st, nil), nil)
	for _, c := range []struct{ q, cont, want string }{
		{"SELECT * FROM devices WHERE", "", "position 28"},
		{"SELECT * FROM devices", "bm9wZQ", "continuation"},
	} {
		_, err := twins.Query(context.Background(), "h.example", c.q, 0, c.cont)
		var ae *azerr.Error
		if !errors.As(err, &ae) || ae.Code != azerr.HubArgumentInvalid || !strings.Contains(ae.Message, c.want) {
			t.Errorf("%q %q: %v", c.q, c.cont, err)
		}
	}
}

// TestQueryTwinOfAnEarlierDevice: a twin left by a deleted device of the
// same ID is not the new device's, whether or not the query reads the
// device record for every device (a query on twin members only reads it
// for the rows returned, which still carry the device's members).
func TestQueryTwinOfAnEarlierDevice(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	twins := hub.NewTwins(st, reg, nil)
	const h = "h.example"
	for _, id := range []string{"old", "kept"} {
		if _, err := reg.Create(ctx, h, &hub.Device{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := twins.Patch(ctx, h, id, []byte(`{"tags":{"site":"x"}}`), "*"); err != nil {
			t.Fatal(err)
		}
	}
	// The device record goes, its twin stays (a delete that failed half way).
	if err := st.Delete(ctx, store.KindDevice, "h.example/old", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Create(ctx, h, &hub.Device{DeviceID: "old", Status: "disabled"}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"SELECT deviceId, status, tags.site FROM devices WHERE tags.site = 'x'",
		"SELECT deviceId, status, tags.site FROM devices WHERE IS_DEFINED(tags.site)",
		"SELECT deviceId, status, tags.site FROM devices WHERE IS_DEFINED(tags.site) AND status != 'x'",
	} {
		page, err := twins.Query(ctx, h, q, 0, "")
		if b, _ := json.Marshal(page.Items); err != nil || string(b) != `[{"deviceId":"kept","site":"x","status":"enabled"}]` {
			t.Errorf("%s: %s %v", q, b, err)
		}
	}
	page, err := twins.Query(ctx, h, "SELECT deviceId, status, tags FROM devices WHERE deviceId = 'old'", 0, "")
	if b, _ := json.Marshal(page.Items); err != nil || string(b) != `[{"deviceId":"old","status":"disabled","tags":{}}]` {
		t.Errorf("the new device: %s %v", b, err)
	}
}

// TestQueryModules holds FROM devices.modules to IoT Hub's module twins:
// one per module of the hub (not another hub's, not a deleted device's),
// in device then module ID order, each as GET /twins/{d}/modules/{m}
// answers it, with paging by continuation token.
func TestQueryModules(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	now := func() time.Time { return time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC) }
	reg := hub.NewRegistry(st, now)
	twins := hub.NewTwins(st, reg, nil)
	for _, h := range []string{"a.example", "b.example"} {
		for _, id := range []string{"d1", "d2", "d3"} {
			if _, err := reg.Create(ctx, h, &hub.Device{DeviceID: id}); err != nil {
				t.Fatal(err)
			}
			for _, mid := range []string{"m2", "$edgeHub", "m1"} {
				if _, err := reg.CreateModule(ctx, h, &hub.Module{DeviceID: id, ModuleID: mid}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := reg.Delete(ctx, "a.example", "d3", "*"); err != nil {
		t.Fatal(err)
	}
	if _, err := twins.Patch(ctx, "a.example", hub.TwinID("d2", "m1"), []byte(`{"tags":{"site":"x"},"properties":{"desired":{"rate":5}}}`), "*"); err != nil {
		t.Fatal(err)
	}
	ids := func(q string, size int) []string {
		t.Helper()
		var out []string
		cont := ""
		for range 20 {
			p, err := twins.Query(ctx, "a.example", q, size, cont)
			if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			for _, it := range p.Items {
				m := it.(map[string]any)
				out = append(out, m["deviceId"].(string)+"/"+m["moduleId"].(string))
			}
			if cont = p.Continuation; cont == "" {
				return out
			}
		}
		t.Fatalf("%s: no last page", q)
		return nil
	}
	all := []string{"d1/$edgeHub", "d1/m1", "d1/m2", "d2/$edgeHub", "d2/m1", "d2/m2"}
	for _, size := range []int{0, 2, 4} {
		if got := ids("SELECT * FROM devices.modules", size); strings.Join(got, " ") != strings.Join(all, " ") {
			t.Errorf("page size %d: %v, want %v", size, got, all)
		}
	}
	if got := ids("SELECT deviceId, moduleId FROM devices.modules WHERE devices.modules.tags.site = 'x' AND properties.desired.rate = 5", 0); strings.Join(got, " ") != "d2/m1" {
		t.Errorf("tags and desired: %v", got)
	}
	p, err := twins.Query(ctx, "a.example", "SELECT COUNT() AS n FROM devices.modules WHERE deviceId = 'd1'", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(p.Items); string(b) != `[{"n":3}]` {
		t.Errorf("count: %s", b)
	}

	// Each row is the module twin GET answers, a never-read one included
	// (the query creates it, so its etag is real).
	p, err = twins.Query(ctx, "a.example", "SELECT * FROM devices.modules WHERE moduleId IN ['m1', 'm2'] AND deviceId = 'd2'", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if p.ItemType != hub.QueryItemTwin || len(p.Items) != 2 {
		t.Fatalf("%s %d items", p.ItemType, len(p.Items))
	}
	for _, it := range p.Items {
		row := it.(map[string]any)
		got, _ := json.Marshal(row)
		tw, err := twins.Get(ctx, "a.example", hub.TwinID("d2", row["moduleId"].(string)))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(tw)
		var a, b any
		_ = json.Unmarshal(got, &a)
		_ = json.Unmarshal(want, &b)
		ga, _ := json.Marshal(a)
		gb, _ := json.Marshal(b)
		if string(ga) != string(gb) {
			t.Errorf("query row:\n%s\nGET:\n%s", ga, gb)
		}
	}
}
