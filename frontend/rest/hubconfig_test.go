package rest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// TestHubConfigurationRoutes: the azure-iothub Registry's addConfiguration,
// getConfiguration, getConfigurations, updateConfiguration (under an etag
// and forced) and removeConfiguration as Node sends them, the answers'
// shapes, and the refusals with IoT Hub's error codes.
func TestHubConfigurationRoutes(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	const q = "?api-version=2021-04-12"
	path := "/configurations/node_e2e_device_1" + q
	// What Node's addConfiguration sends (schemaVersion filled in by it).
	add := `{"id":"node_e2e_device_1","content":{"deviceContent":{"properties.desired":{"prop1":"foo"}}},"targetCondition":"","priority":20,"schemaVersion":"1.0"}`

	rec := f.hubCall(http.MethodPut, path, add, tok)
	if rec.Code != http.StatusOK {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "schemaVersion", "labels", "content", "targetCondition", "createdTimeUtc",
		"lastUpdatedTimeUtc", "priority", "systemMetrics", "metrics", "etag"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("configuration lacks %q: %s", k, rec.Body)
		}
	}
	if got := string(fields["content"]); got != `{"deviceContent":{"properties.desired":{"prop1":"foo"}}}` {
		t.Errorf("content echoed as %s", got)
	}
	created := decode[hub.Configuration](t, rec)
	checkHubError(t, f.hubCall(http.MethodPut, path, add, tok), azerr.HubConfigurationAlreadyExists)

	got := decode[hub.Configuration](t, f.hubCall(http.MethodGet, path, "", tok))
	if got.ETag != created.ETag || got.Priority != 20 {
		t.Errorf("get: %+v", got)
	}
	list := decode[[]hub.Configuration](t, f.hubCall(http.MethodGet, "/configurations"+q, "", tok))
	if len(list) != 1 || list[0].ID != "node_e2e_device_1" {
		t.Errorf("list: %+v", list)
	}

	// updateConfiguration echoes what it read, with If-Match the quoted etag.
	got.Priority = 99
	body, _ := json.Marshal(got)
	upd := f.hubCall(http.MethodPut, path, string(body), tok, "If-Match", `"`+got.ETag+`"`)
	if upd.Code != http.StatusOK || decode[hub.Configuration](t, upd).Priority != 99 {
		t.Fatalf("update: %d %s", upd.Code, upd.Body)
	}
	checkHubError(t, f.hubCall(http.MethodPut, path, string(body), tok, "If-Match", `"`+got.ETag+`"`), azerr.HubPreconditionFailed)
	forced := f.hubCall(http.MethodPut, path, strings.Replace(add, `"priority":20`, `"priority":5`, 1), tok, "If-Match", `"*"`)
	if forced.Code != http.StatusOK || decode[hub.Configuration](t, forced).Priority != 5 {
		t.Fatalf("forced update: %d %s", forced.Code, forced.Body)
	}

	checkHubError(t, f.hubCall(http.MethodPut, "/configurations/other"+q, add, tok), azerr.HubArgumentInvalid) // ids differ
	checkHubError(t, f.hubCall(http.MethodPut, "/configurations/x"+q, `[1]`, tok), azerr.HubFormatError)
	checkHubError(t, f.hubCall(http.MethodPut, "/configurations/x"+q, `{"content":{"deviceContent":{"properties.desired.a":1}},"targetCondition":"tags.a ="}`, tok), azerr.HubArgumentInvalid)

	// testQueries reports, stores nothing.
	tq := f.hubCall(http.MethodPost, "/configurations/testQueries"+q, `{"targetCondition":"tags.a =","customMetricQueries":{"ok":"SELECT deviceId FROM devices"}}`, tok)
	if tq.Code != http.StatusOK {
		t.Fatalf("testQueries: %d %s", tq.Code, tq.Body)
	}
	res := decode[hub.ConfigurationQueriesResult](t, tq)
	if res.TargetConditionError == "" || res.CustomMetricQueryErrors["ok"] != "" {
		t.Errorf("testQueries: %s", tq.Body)
	}

	// applyConfigurationContent.
	f.device(t, "cfg-dev", hub.StatusEnabled)
	ap := f.hubCall(http.MethodPost, "/devices/cfg-dev/applyConfigurationContent"+q, `{"deviceContent":{"properties.desired.level":3}}`, tok)
	if ap.Code != http.StatusOK {
		t.Fatalf("apply: %d %s", ap.Code, ap.Body)
	}
	tw := decode[hub.Twin](t, f.hubCall(http.MethodGet, "/twins/cfg-dev"+q, "", tok))
	if !strings.Contains(string(tw.Properties.Desired), `"level":3`) {
		t.Errorf("applied content not in the twin: %s", tw.Properties.Desired)
	}
	checkHubError(t, f.hubCall(http.MethodPost, "/devices/nodev/applyConfigurationContent"+q, `{"deviceContent":{"properties.desired.level":3}}`, tok), azerr.HubDeviceNotFound)

	// Node's removeConfiguration sends no If-Match.
	if rec := f.hubCall(http.MethodDelete, path, "", tok); rec.Code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", rec.Code, rec.Body)
	}
	checkHubError(t, f.hubCall(http.MethodGet, path, "", tok), azerr.HubConfigurationNotFound)
	checkHubError(t, f.hubCall(http.MethodDelete, path, "", tok), azerr.HubConfigurationNotFound)

	// Rights: a registry reader reads, never writes.
	read := f.hubToken(t, hubName, "registryRead")
	if rec := f.hubCall(http.MethodGet, "/configurations"+q, "", read); rec.Code != http.StatusOK {
		t.Errorf("list as registryRead: %d", rec.Code)
	}
	checkHubError(t, f.hubCall(http.MethodPut, path, add, read), azerr.HubUnauthorizedAccess)
}
