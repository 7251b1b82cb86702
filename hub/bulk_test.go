package hub_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

// A bulk delete is the registry's delete: the twin goes with the device,
// and a device created again under the ID starts with a fresh one. Modes
// are matched in any case; an IfMatchETag mode without an etag fails.
func TestBulkDeleteIsTheRegistryDelete(t *testing.T) {
	e := newTwinEnv(t)
	ctx := context.Background()
	if _, err := e.twins.Patch(ctx, hubName, "dev-1", []byte(`{"tags":{"a":1},"properties":{"desired":{"x":1}}}`), ""); err != nil {
		t.Fatal(err)
	}
	op := func(mode, id, etag string) hub.BulkOperation {
		return hub.BulkOperation{ImportMode: mode, ETag: etag, Device: &hub.Device{DeviceID: id}}
	}
	res, err := e.reg.Bulk(ctx, hubName, []hub.BulkOperation{op("DELETEIFMATCHETAG", "dev-1", ""), op("UpdateIfMatchETag", "dev-1x", "")})
	if err != nil || res.IsSuccessful || len(res.Errors) != 2 || res.Errors[0].ErrorCode != "PreconditionFailed" {
		t.Fatalf("without etags: %+v %v", res, err)
	}
	if res, err := e.reg.Bulk(ctx, hubName, []hub.BulkOperation{op("Delete", "dev-1", "")}); err != nil || !res.IsSuccessful {
		t.Fatalf("delete: %+v %v", res, err)
	}
	if _, err := e.reg.Get(ctx, hubName, "dev-1"); code(err) != azerr.HubDeviceNotFound {
		t.Fatalf("after bulk delete: %v", err)
	}
	if res, err := e.reg.Bulk(ctx, hubName, []hub.BulkOperation{op("CREATE", "dev-1", "")}); err != nil || !res.IsSuccessful {
		t.Fatalf("create: %+v %v", res, err)
	}
	tw, err := e.twins.Get(ctx, hubName, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if string(tw.Tags) != `{}` || tw.Version != 1 {
		t.Errorf("twin of the recreated device: tags %s version %d", tw.Tags, tw.Version)
	}
}

// An edge device stored before berth gave scopes shows its scope when read.
func TestEdgeDeviceStoredWithoutScope(t *testing.T) {
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	ctx := context.Background()
	d, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "old-gw", Capabilities: &hub.Capabilities{IoTEdge: true}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.Get(ctx, store.KindDevice, strings.ToLower(hubName)+"/old-gw")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Data, &doc); err != nil {
		t.Fatal(err)
	}
	delete(doc, "deviceScope")
	delete(doc, "parentScopes")
	rec.Data, _ = json.Marshal(doc)
	if _, err := st.Put(ctx, rec, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Get(ctx, hubName, "old-gw")
	if err != nil {
		t.Fatal(err)
	}
	if got.DeviceScope == nil || *got.DeviceScope != hub.EdgeScope(d) || got.ParentScopes == nil {
		t.Errorf("old edge device read back: scope %v parents %v", got.DeviceScope, got.ParentScopes)
	}
}
