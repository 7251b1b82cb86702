package rest

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/berth-iot/berth/azerr"
)

// TestHubDeviceScopes: the nested-edge relation on PUT/GET /devices, as the
// azure-iothub Registry drives it: an edge device gets its own scope, a
// child takes it as deviceScope and parentScopes, a scope that names no
// edge device is refused, and every device shows both keys.
func TestHubDeviceScopes(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	put := func(id, body string, hdr ...string) map[string]any {
		t.Helper()
		rec := f.hubCall(http.MethodPut, "/devices/"+id+"?api-version=2021-04-12", body, tok, hdr...)
		f.checkDeviceAnswer(t, rec)
		var m map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}

	plain := put("plain", `{"deviceId":"plain"}`)
	if v, ok := plain["deviceScope"]; !ok || v != nil {
		t.Errorf("a plain device: deviceScope %v (present %v), want null", v, ok)
	}
	if v, ok := plain["parentScopes"].([]any); !ok || len(v) != 0 {
		t.Errorf("a plain device: parentScopes %v, want []", plain["parentScopes"])
	}

	edge := put("gw-1", `{"deviceId":"gw-1","capabilities":{"iotEdge":true}}`)
	scope, _ := edge["deviceScope"].(string)
	if want := "ms-azure-iot-edge://gw-1-" + edge["generationId"].(string); scope != want {
		t.Fatalf("edge deviceScope %q, want %q", scope, want)
	}

	// A child names its parent's scope; the hub fills in parentScopes.
	child := put("leaf-1", `{"deviceId":"leaf-1","deviceScope":"`+scope+`"}`)
	if child["deviceScope"] != scope || len(child["parentScopes"].([]any)) != 1 || child["parentScopes"].([]any)[0] != scope {
		t.Errorf("child: deviceScope %v parentScopes %v, want %s twice", child["deviceScope"], child["parentScopes"], scope)
	}
	rec := f.hubCall(http.MethodGet, "/devices/leaf-1", "", tok)
	if got := f.checkDeviceAnswer(t, rec); got.DeviceScope == nil || *got.DeviceScope != scope {
		t.Errorf("GET child: %+v", got)
	}

	// Refusals: a scope that names no edge device (Node's e2e sets a
	// random UUID), a plain device's ID in scope form, a parentScopes that
	// is not the deviceScope, an edge device told another scope.
	for _, c := range []struct{ id, body string }{
		{"leaf-1", `{"deviceId":"leaf-1","deviceScope":"6f1f3c9e-8a55-4b7e-9a55-2f7d1a7c9d10"}`},
		{"leaf-1", `{"deviceId":"leaf-1","deviceScope":"ms-azure-iot-edge://plain-` + plain["generationId"].(string) + `"}`},
		{"leaf-1", `{"deviceId":"leaf-1","deviceScope":"ms-azure-iot-edge://gw-1-1"}`},
		{"leaf-1", `{"deviceId":"leaf-1","deviceScope":"` + scope + `","parentScopes":["ms-azure-iot-edge://x-1"]}`},
		{"gw-1", `{"deviceId":"gw-1","capabilities":{"iotEdge":true},"deviceScope":"ms-azure-iot-edge://other-1"}`},
		{"gw-1", `{"deviceId":"gw-1","capabilities":{"iotEdge":true},"parentScopes":["` + scope + `"]}`},
	} {
		checkHubError(t, f.hubCall(http.MethodPut, "/devices/"+c.id, c.body, tok, "If-Match", `"*"`), azerr.HubArgumentInvalid)
	}
	checkHubError(t, f.hubCall(http.MethodPut, "/devices/leaf-2", `{"deviceId":"leaf-2","deviceScope":"nope"}`, tok), azerr.HubArgumentInvalid)

	// An update that leaves the scope out keeps it; "" detaches the child.
	if got := put("leaf-1", `{"deviceId":"leaf-1","status":"disabled"}`, "If-Match", `"*"`); got["deviceScope"] != scope {
		t.Errorf("update without deviceScope: %v", got["deviceScope"])
	}
	if got := put("leaf-1", `{"deviceId":"leaf-1","deviceScope":""}`, "If-Match", `"*"`); got["deviceScope"] != nil || len(got["parentScopes"].([]any)) != 0 {
		t.Errorf("detached child: %v %v", got["deviceScope"], got["parentScopes"])
	}

	// Nested edge: gw-2 below gw-1; gw-1 below gw-2 would be a cycle.
	gw2 := put("gw-2", `{"deviceId":"gw-2","capabilities":{"iotEdge":true},"parentScopes":["`+scope+`"]}`)
	scope2 := gw2["deviceScope"].(string)
	if ps := gw2["parentScopes"].([]any); len(ps) != 1 || ps[0] != scope || scope2 == scope {
		t.Errorf("nested edge: deviceScope %v parentScopes %v", scope2, ps)
	}
	checkHubError(t, f.hubCall(http.MethodPut, "/devices/gw-1", `{"deviceId":"gw-1","capabilities":{"iotEdge":true},"parentScopes":["`+scope2+`"]}`, tok, "If-Match", `"*"`), azerr.HubArgumentInvalid)

	// An edge device that stops being one loses its own scope.
	if got := put("gw-2", `{"deviceId":"gw-2","capabilities":{"iotEdge":false},"deviceScope":"`+scope2+`"}`, "If-Match", `"*"`); got["deviceScope"] != nil {
		t.Errorf("former edge device: deviceScope %v", got["deviceScope"])
	}

	// The twin shows the scope too.
	rec = f.hubCall(http.MethodGet, "/twins/gw-1", "", tok)
	var tw map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &tw); err != nil || tw["deviceScope"] != scope {
		t.Errorf("twin of gw-1: %v %s", err, rec.Body)
	}
}
