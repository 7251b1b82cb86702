package hub_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

// TestModuleCRUD: create (keys generated), get, list, update under
// If-Match (keys kept when left empty), delete, and the refusals.
func TestModuleCRUD(t *testing.T) {
	ctx := context.Background()
	reg := hub.NewRegistry(memstore.New(), nil)
	if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "m1"}); code(err) != azerr.HubDeviceNotFound {
		t.Fatalf("module of a missing device: %v", err)
	}
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev"}); err != nil {
		t.Fatal(err)
	}
	m, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "m1", ManagedBy: "IotEdge"})
	if err != nil {
		t.Fatal(err)
	}
	k := m.Authentication.SymmetricKey
	if m.Authentication.Type != hub.AuthSAS || k.PrimaryKey == "" || k.PrimaryKey == k.SecondaryKey || m.GenerationID == "" || m.ETag == "" ||
		m.ManagedBy != "IotEdge" || m.ConnectionState != "Disconnected" {
		t.Fatalf("created %+v", m)
	}
	if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "m1"}); code(err) != azerr.HubModuleAlreadyExists {
		t.Errorf("duplicate: %v", err)
	}
	for _, bad := range []string{"", "a/b", "a b", "a#b"} {
		if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: bad}); code(err) != azerr.HubArgumentInvalid {
			t.Errorf("module ID %q: %v", bad, err)
		}
	}
	if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "$edgeAgent"}); err != nil {
		t.Errorf("$edgeAgent: %v", err)
	}
	// Module IDs are case-sensitive.
	if _, err := reg.GetModule(ctx, hubName, "dev", "M1"); code(err) != azerr.HubModuleNotFound {
		t.Errorf("case-folded module found: %v", err)
	}
	if _, err := reg.GetModule(ctx, hubName, "nodev", "m1"); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("module of a missing device: %v", err)
	}
	got, err := reg.GetModule(ctx, hubName, "dev", "m1")
	if err != nil || got.ETag != m.ETag || got.Authentication.SymmetricKey.PrimaryKey != k.PrimaryKey {
		t.Fatalf("get %+v, %v", got, err)
	}

	// Update with empty keys keeps them; a stale etag is refused.
	upd, err := reg.UpdateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "m1",
		Authentication: &hub.Authentication{Type: hub.AuthSAS, SymmetricKey: &hub.SymmetricKey{}}}, `"`+m.ETag+`"`)
	if err != nil || upd.Authentication.SymmetricKey.PrimaryKey != k.PrimaryKey || upd.ETag == m.ETag || upd.GenerationID != m.GenerationID {
		t.Fatalf("update %+v, %v", upd, err)
	}
	if _, err := reg.UpdateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "m1"}, m.ETag); code(err) != azerr.HubPreconditionFailed {
		t.Errorf("stale etag: %v", err)
	}
	tp := "0123456789abcdef0123456789abcdef01234567"
	x, err := reg.UpdateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "m1",
		Authentication: &hub.Authentication{X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &tp}}}, "*")
	if err != nil || x.Authentication.Type != hub.AuthSelfSigned || x.Authentication.SymmetricKey != nil {
		t.Fatalf("to selfSigned: %+v, %v", x, err)
	}
	if _, err := reg.UpdateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "nope"}, "*"); code(err) != azerr.HubModuleNotFound {
		t.Errorf("update of a missing module: %v", err)
	}

	list, err := reg.ListModules(ctx, hubName, "dev")
	if err != nil || len(list) != 2 || list[0].ModuleID != "$edgeAgent" || list[1].ModuleID != "m1" {
		t.Fatalf("list %v, %v", list, err)
	}
	if _, err := reg.ListModules(ctx, hubName, "nodev"); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("list of a missing device: %v", err)
	}

	if err := reg.DeleteModule(ctx, hubName, "dev", "m1", "stale"); code(err) != azerr.HubPreconditionFailed {
		t.Errorf("delete with a stale etag: %v", err)
	}
	if err := reg.DeleteModule(ctx, hubName, "dev", "m1", `"*"`); err != nil {
		t.Fatal(err)
	}
	if err := reg.DeleteModule(ctx, hubName, "dev", "m1", ""); code(err) != azerr.HubModuleNotFound {
		t.Errorf("second delete: %v", err)
	}
}

// TestDeleteDeviceDeletesModules: a device deleted and created again has
// no modules; another device's modules stay.
func TestDeleteDeviceDeletesModules(t *testing.T) {
	ctx := context.Background()
	reg := hub.NewRegistry(memstore.New(), nil)
	for _, d := range []string{"a", "ab"} {
		if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: d}); err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"m1", "m2"} {
			if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: d, ModuleID: m}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := reg.Delete(ctx, hubName, "a", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "a"}); err != nil {
		t.Fatal(err)
	}
	if list, err := reg.ListModules(ctx, hubName, "a"); err != nil || len(list) != 0 {
		t.Errorf("modules of the recreated device: %v, %v", list, err)
	}
	if list, err := reg.ListModules(ctx, hubName, "ab"); err != nil || len(list) != 2 {
		t.Errorf("modules of the other device: %v, %v", list, err)
	}
}

// TestQueryLeavesModuleTwinsOut: module twins share the twin records'
// key space (hub/device/module); a query over devices answers devices only,
// with their own twins, including when pages end between a device and its
// modules.
func TestQueryLeavesModuleTwinsOut(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	twins := hub.NewTwins(st, reg, nil)
	for _, d := range []string{"a", "a-1", "b"} {
		if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: d}); err != nil {
			t.Fatal(err)
		}
		if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: d, ModuleID: "m"}); err != nil {
			t.Fatal(err)
		}
		if _, err := twins.Patch(ctx, hubName, hub.TwinID(d, "m"), []byte(`{"tags":{"module":true}}`), ""); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	cont := ""
	for {
		page, err := twins.Query(ctx, hubName, "SELECT deviceId, tags FROM devices", 1, cont)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Items {
			b, _ := json.Marshal(it)
			got = append(got, string(b))
		}
		if cont = page.Continuation; cont == "" {
			break
		}
	}
	want := []string{`{"deviceId":"a","tags":{}}`, `{"deviceId":"a-1","tags":{}}`, `{"deviceId":"b","tags":{}}`}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("query rows %v, want %v", got, want)
	}
}
