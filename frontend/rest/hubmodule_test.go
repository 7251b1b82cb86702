package rest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// TestHubModuleCRUD: the azure-iothub Registry's addModule, getModule,
// getModulesOnDevice, updateModule and removeModule as Node sends them,
// and their refusals.
func TestHubModuleCRUD(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	const q = "?api-version=2021-04-12"
	path := "/devices/mod-dev/modules/" + "%24edgeHub" + q
	// What Node's addModule sends for a module without keys.
	nodeCreate := `{"deviceId":"mod-dev","moduleId":"$edgeHub","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`

	checkHubError(t, f.hubCall(http.MethodPut, path, nodeCreate, tok), azerr.HubDeviceNotFound)
	f.device(t, "mod-dev", hub.StatusEnabled)

	rec := f.hubCall(http.MethodPut, path, nodeCreate, tok)
	if rec.Code != http.StatusOK {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"moduleId", "managedBy", "deviceId", "generationId", "etag", "connectionState",
		"connectionStateUpdatedTime", "lastActivityTime", "cloudToDeviceMessageCount", "authentication"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("module body lacks %q: %s", k, rec.Body)
		}
	}
	if _, ok := fields["status"]; ok {
		t.Errorf("a module has no status: %s", rec.Body)
	}
	created := decode[hub.Module](t, rec)
	keys := created.Authentication.SymmetricKey
	*f.secrets = append(*f.secrets, keys.PrimaryKey, keys.SecondaryKey)
	if created.ModuleID != "$edgeHub" || created.DeviceID != "mod-dev" || keys.PrimaryKey == "" {
		t.Fatalf("created %+v", created)
	}
	checkHubError(t, f.hubCall(http.MethodPut, path, nodeCreate, tok), azerr.HubModuleAlreadyExists)

	got := decode[hub.Module](t, f.hubCall(http.MethodGet, path, "", tok))
	if got.ETag != created.ETag || got.Authentication.SymmetricKey.PrimaryKey != keys.PrimaryKey {
		t.Errorf("get %+v", got)
	}
	checkHubError(t, f.hubCall(http.MethodGet, "/devices/mod-dev/modules/nope"+q, "", tok), azerr.HubModuleNotFound)
	checkHubError(t, f.hubCall(http.MethodGet, "/devices/nodev/modules/nope"+q, "", tok), azerr.HubDeviceNotFound)

	// updateModule: If-Match the etag, quoted; a stale one is refused.
	upd := `{"deviceId":"mod-dev","moduleId":"$edgeHub","managedBy":"IotEdge","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`
	rec = f.hubCall(http.MethodPut, path, upd, tok, "If-Match", `"`+created.ETag+`"`)
	if rec.Code != http.StatusOK {
		t.Fatalf("update: %d %s", rec.Code, rec.Body)
	}
	updated := decode[hub.Module](t, rec)
	if updated.ManagedBy != "IotEdge" || updated.Authentication.SymmetricKey.PrimaryKey != keys.PrimaryKey || updated.ETag == created.ETag {
		t.Errorf("updated %+v", updated)
	}
	checkHubError(t, f.hubCall(http.MethodPut, path, upd, tok, "If-Match", `"`+created.ETag+`"`), azerr.HubPreconditionFailed)
	checkHubError(t, f.hubCall(http.MethodPut, path, `{"moduleId":"other"}`, tok, "If-Match", `"*"`), azerr.HubArgumentInvalid)
	checkHubError(t, f.hubCall(http.MethodPut, path, `{"deviceId":"other"}`, tok, "If-Match", `"*"`), azerr.HubArgumentInvalid)
	checkHubError(t, f.hubCall(http.MethodPut, path, `[`, tok), azerr.HubFormatError)

	// getModulesOnDevice.
	if rec := f.hubCall(http.MethodPut, "/devices/mod-dev/modules/m2"+q, `{}`, tok); rec.Code != http.StatusOK {
		t.Fatalf("create m2: %d %s", rec.Code, rec.Body)
	}
	list := decode[[]hub.Module](t, f.hubCall(http.MethodGet, "/devices/mod-dev/modules"+q, "", tok))
	if len(list) != 2 || list[0].ModuleID != "$edgeHub" || list[1].ModuleID != "m2" {
		t.Errorf("list %+v", list)
	}
	checkHubError(t, f.hubCall(http.MethodGet, "/devices/nodev/modules"+q, "", tok), azerr.HubDeviceNotFound)

	// The module twin: its own, with its moduleId; a method on the module
	// finds it offline.
	twinPath := "/twins/mod-dev/modules/m2" + q
	tw := decode[hub.Twin](t, f.hubCall(http.MethodGet, twinPath, "", tok))
	if tw.DeviceID != "mod-dev" || tw.ModuleID != "m2" || tw.ETag == "" {
		t.Errorf("module twin %+v", tw)
	}
	rec = f.hubCall(http.MethodPatch, twinPath, `{"tags":{"role":"edge"},"properties":{"desired":{"rate":5}}}`, tok, "If-Match", `"`+tw.ETag+`"`)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"moduleId":"m2"`) || !strings.Contains(rec.Body.String(), `"rate":5`) {
		t.Errorf("module twin PATCH: %d %s", rec.Code, rec.Body)
	}
	if dt := decode[hub.Twin](t, f.hubCall(http.MethodGet, "/twins/mod-dev"+q, "", tok)); dt.ModuleID != "" || strings.Contains(string(dt.Tags), "edge") {
		t.Errorf("device twin %+v", dt)
	}
	checkHubError(t, f.hubCall(http.MethodPost, "/twins/mod-dev/modules/m2/methods"+q, `{"methodName":"x"}`, tok), azerr.HubDeviceNotOnline)

	// The registry rights: a read policy reads, does not write.
	read := f.hubToken(t, hubName, "registryRead")
	if rec := f.hubCall(http.MethodGet, path, "", read); rec.Code != http.StatusOK {
		t.Errorf("registryRead get: %d", rec.Code)
	}
	checkHubError(t, f.hubCall(http.MethodDelete, path, "", read), azerr.HubUnauthorizedAccess)

	// removeModule sends If-Match "*".
	if rec := f.hubCall(http.MethodDelete, path, "", tok, "If-Match", `"*"`); rec.Code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", rec.Code, rec.Body)
	}
	checkHubError(t, f.hubCall(http.MethodDelete, path, "", tok), azerr.HubModuleNotFound)

	// Deleting the device deletes its modules.
	if rec := f.hubCall(http.MethodDelete, "/devices/mod-dev"+q, "", tok); rec.Code != http.StatusNoContent {
		t.Fatalf("delete device: %d %s", rec.Code, rec.Body)
	}
	f.device(t, "mod-dev", hub.StatusEnabled)
	if list := decode[[]hub.Module](t, f.hubCall(http.MethodGet, "/devices/mod-dev/modules"+q, "", tok)); len(list) != 0 {
		t.Errorf("modules outlived their device: %+v", list)
	}
}
