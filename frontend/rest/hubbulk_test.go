package rest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

const bulkPath = "/devices?api-version=2021-04-12"

// TestHubBulkRegistry: POST /devices as the azure-iothub Registry's
// addDevices, updateDevices and removeDevices send it (importMode
// "create", "Update"/"UpdateIfMatchETag", "Delete"/"DeleteIfMatchETag",
// the ID as "id", keys normalised to empty strings).
func TestHubBulkRegistry(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	ctx := context.Background()
	entry := func(id, mode, extra string) string {
		return `{"id":"` + id + `","importMode":"` + mode + `","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}` + extra + `}`
	}
	list := func(es ...string) string { return "[" + strings.Join(es, ",") + "]" }

	// addDevices: all three created, disabled as asked, keys generated.
	rec := f.hubCall(http.MethodPost, bulkPath, list(
		entry("b-1", "create", `,"status":"disabled"`), entry("b-2", "create", `,"status":"disabled"`), entry("b-3", "create", "")), tok)
	checkCommon(t, rec)
	if rec.Body.String() != `{"isSuccessful":true,"errors":[],"warnings":[]}` {
		t.Fatalf("add: %d %s", rec.Code, rec.Body)
	}
	for _, id := range []string{"b-1", "b-2", "b-3"} {
		d, err := f.reg.Get(ctx, hubName, id)
		if err != nil || len(d.Keys()) != 2 || d.Keys()[0] == "" {
			t.Fatalf("%s after add: %+v %v", id, d, err)
		}
		*f.secrets = append(*f.secrets, d.Keys()...)
	}
	b1, _ := f.reg.Get(ctx, hubName, "b-1")
	if b1.Status != hub.StatusDisabled {
		t.Errorf("b-1 status %s", b1.Status)
	}

	// updateDevices(force): status changes, keys kept.
	if rec := f.hubCall(http.MethodPost, bulkPath, list(entry("b-1", "Update", `,"status":"enabled"`), entry("b-2", "Update", `,"status":"enabled"`)), tok); rec.Code != 200 {
		t.Fatalf("update: %d %s", rec.Code, rec.Body)
	}
	if d, _ := f.reg.Get(ctx, hubName, "b-1"); d.Status != hub.StatusEnabled || d.Keys()[0] != b1.Keys()[0] {
		t.Errorf("b-1 after update: %+v", d)
	}

	// updateDevices(not forced): b-1 under a stale etag fails, b-3 under
	// its current one ("etag", as a device read with Registry.get carries
	// it) succeeds, b-2 without any etag fails; a partial failure is 400
	// with the result.
	b3, _ := f.reg.Get(ctx, hubName, "b-3")
	rec = f.hubCall(http.MethodPost, bulkPath, list(
		entry("b-1", "UpdateIfMatchETag", `,"status":"disabled","eTag":"`+b1.ETag+`"`),
		entry("b-3", "UpdateIfMatchETag", `,"status":"disabled","etag":"`+b3.ETag+`"`),
		entry("b-2", "UpdateIfMatchETag", `,"status":"disabled"`)), tok)
	checkCommon(t, rec)
	if got, _ := raw(rec, "iothub-errorcode"); rec.Code != 400 || got != "BulkRegistryOperationFailure" {
		t.Fatalf("partial failure: %d %q %s", rec.Code, got, rec.Body)
	}
	res := decode[hub.BulkResult](t, rec)
	if res.IsSuccessful || len(res.Errors) != 2 || res.Errors[0].DeviceID != "b-1" || res.Errors[0].ErrorCode != "PreconditionFailed" ||
		res.Errors[1].DeviceID != "b-2" || res.Errors[1].ErrorCode != "PreconditionFailed" || res.Errors[0].ErrorStatus == "" || res.Warnings == nil {
		t.Errorf("partial failure result %+v", res)
	}
	if d, _ := f.reg.Get(ctx, hubName, "b-3"); d.Status != hub.StatusDisabled {
		t.Errorf("b-3 not updated beside the failures: %+v", d)
	}
	if d, _ := f.reg.Get(ctx, hubName, "b-1"); d.Status != hub.StatusEnabled {
		t.Errorf("b-1 updated under a stale etag: %+v", d)
	}

	// Mixed: create an existing device, update and delete a missing one,
	// an unknown mode, an invalid ID; and one good create among them.
	rec = f.hubCall(http.MethodPost, bulkPath, list(
		entry("b-1", "create", ""), entry("ghost", "Update", ""), entry("ghost2", "Delete", ""),
		entry("b-4", "updateTwin", ""), entry("bad/id", "create", ""), entry("b-5", "create", "")), tok)
	res = decode[hub.BulkResult](t, rec)
	var got []string
	for _, e := range res.Errors {
		got = append(got, e.DeviceID+":"+e.ErrorCode)
	}
	if want := "[b-1:DeviceAlreadyExists ghost:DeviceNotFound ghost2:DeviceNotFound b-4:ArgumentInvalid bad/id:ArgumentInvalid]"; rec.Code != 400 || fmt.Sprint(got) != want {
		t.Errorf("mixed: %d %v, want %s", rec.Code, got, want)
	}
	if _, err := f.reg.Get(ctx, hubName, "b-5"); err != nil {
		t.Errorf("b-5 not created beside the failures: %v", err)
	}

	// removeDevices: not forced with a stale etag fails; forced removes.
	b2, _ := f.reg.Get(ctx, hubName, "b-2")
	rec = f.hubCall(http.MethodPost, bulkPath, list(entry("b-1", "DeleteIfMatchETag", `,"eTag":"`+b1.ETag+`"`), entry("b-2", "DeleteIfMatchETag", `,"eTag":"`+b2.ETag+`"`)), tok)
	if res := decode[hub.BulkResult](t, rec); rec.Code != 400 || len(res.Errors) != 1 || res.Errors[0].DeviceID != "b-1" {
		t.Errorf("delete if match: %d %s", rec.Code, rec.Body)
	}
	if rec := f.hubCall(http.MethodPost, bulkPath, list(entry("b-1", "Delete", ""), entry("b-3", "delete", ""), entry("b-5", "Delete", "")), tok); rec.Code != 200 {
		t.Fatalf("remove: %d %s", rec.Code, rec.Body)
	}
	for _, id := range []string{"b-1", "b-2", "b-3", "b-5"} {
		if _, err := f.reg.Get(ctx, hubName, id); !isCode(err, azerr.HubDeviceNotFound) {
			t.Errorf("%s after remove: %v", id, err)
		}
	}
}

// TestHubBulkRegistryRefusals: lists refused whole, before anything is
// written, and the right a bulk operation needs.
func TestHubBulkRegistryRefusals(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	many := make([]string, 101) // IoT Hub takes at most 100 devices per bulk operation
	for i := range many {
		many[i] = fmt.Sprintf(`{"id":"m-%d","importMode":"create"}`, i)
	}
	checkHubError(t, f.hubCall(http.MethodPost, bulkPath, "["+strings.Join(many, ",")+"]", tok), azerr.HubTooManyDevices)
	checkHubError(t, f.hubCall(http.MethodPost, bulkPath, "[]", tok), azerr.HubArgumentInvalid)
	checkHubError(t, f.hubCall(http.MethodPost, bulkPath, `[{"id":"d-1","importMode":"create"},{"id":"d-1","importMode":"delete"}]`, tok), azerr.HubDeviceDefinedMultipleTimes)
	checkHubError(t, f.hubCall(http.MethodPost, bulkPath, `[{"importMode":"create"}]`, tok), azerr.HubArgumentInvalid)
	for _, body := range []string{`{"id":"x","importMode":"create"}`, `[1]`, `[{"id":"x"}] x`, ``} {
		checkHubError(t, f.hubCall(http.MethodPost, bulkPath, body, tok), azerr.HubFormatError)
	}
	if ds, err := f.reg.List(context.Background(), hubName, "", 1000); err != nil || len(ds) != 0 {
		t.Errorf("a refused list wrote %d devices (%v)", len(ds), err)
	}
	// Exactly 100 is fine.
	rec := f.hubCall(http.MethodPost, bulkPath, "["+strings.Join(many[:100], ",")+"]", tok)
	if rec.Code != 200 {
		t.Fatalf("100 devices: %d %s", rec.Code, rec.Body)
	}
	for _, d := range mustList(t, f) {
		*f.secrets = append(*f.secrets, d.Keys()...)
	}
	// RegistryWrite is needed; RegistryRead is not enough.
	checkHubError(t, f.hubCall(http.MethodPost, bulkPath, `[{"id":"r-1","importMode":"create"}]`, f.hubToken(t, hubName, "registryRead")), azerr.HubUnauthorizedAccess)
	if rec := f.hubCall(http.MethodPost, bulkPath, `[{"id":"r-1","importMode":"delete"}]`, f.hubToken(t, hubName, "registryReadWrite")); rec.Code != 400 {
		t.Errorf("registryReadWrite: %d %s", rec.Code, rec.Body)
	}
}

func mustList(t *testing.T, f *fixture) []*hub.Device {
	t.Helper()
	ds, err := f.reg.List(context.Background(), hubName, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}
