package rest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

// hubCall sends a registry request with a token.
func (f *fixture) hubCall(method, path, body, token string, hdr ...string) *httptest.ResponseRecorder {
	r := request(method, path, body, append([]string{"Content-Type", "application/json; charset=utf-8"}, hdr...)...)
	r.Host = hubName
	if token != "" {
		r.Header.Set("Authorization", token)
	}
	return f.do(r)
}

// checkDeviceAnswer asserts a 200 whose body is exactly the registry's
// device as hub.Device marshals it, and returns it.
func (f *fixture) checkDeviceAnswer(t *testing.T, rec *httptest.ResponseRecorder) *hub.Device {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	d := decode[hub.Device](t, rec)
	stored, err := f.reg.Get(context.Background(), hubName, d.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	want, err := encodeJSON(stored)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Body.String() != string(want) {
		t.Errorf("body\n%s\nwant the registry's device\n%s", rec.Body, want)
	}
	if d.ETag == "" || strings.Contains(d.ETag, `"`) {
		t.Errorf("etag %q: want the registry's etag, unquoted", d.ETag)
	}
	*f.secrets = append(*f.secrets, d.Keys()...)
	return &d
}

// TestHubRegistryCRUD: the azure-iothub Registry's create, get, update
// (every If-Match form) and delete, and their refusals.
func TestHubRegistryCRUD(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	path := "/devices/crud-1?api-version=2021-04-12"
	// What Node's Registry.create sends for a device without keys.
	nodeCreate := `{"deviceId":"crud-1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`

	created := f.checkDeviceAnswer(t, f.hubCall(http.MethodPut, path, nodeCreate, tok))
	if created.DeviceID != "crud-1" || created.Status != hub.StatusEnabled || len(created.Keys()) != 2 || created.Keys()[0] == "" || created.GenerationID == "" {
		t.Fatalf("created %+v", created)
	}
	// The wire names of the Device document.
	var fields map[string]json.RawMessage
	rec := f.hubCall(http.MethodGet, path, "", tok)
	if err := json.Unmarshal(rec.Body.Bytes(), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"deviceId", "generationId", "etag", "connectionState", "status", "statusReason", "connectionStateUpdatedTime",
		"statusUpdatedTime", "lastActivityTime", "cloudToDeviceMessageCount", "authentication", "capabilities"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("GET body lacks %q: %s", k, rec.Body)
		}
	}
	got := f.checkDeviceAnswer(t, rec)
	if got.ETag != created.ETag || got.Keys()[0] != created.Keys()[0] {
		t.Errorf("GET %+v, want the created device", got)
	}

	// Create again: 409.
	checkHubError(t, f.hubCall(http.MethodPut, path, nodeCreate, tok), azerr.HubDeviceAlreadyExists)

	// Updates under every If-Match form, each with the previous etag.
	etag := created.ETag
	for _, im := range []struct {
		name string
		make func(etag string) string
	}{
		{"quoted (Node's ensureQuoted)", func(e string) string { return `"` + e + `"` }},
		{"unquoted", func(e string) string { return e }},
		{`quoted star (Node's update)`, func(string) string { return `"*"` }},
		{"star", func(string) string { return "*" }},
	} {
		status := hub.StatusDisabled
		if etag == "" {
			t.Fatal("no etag")
		}
		d := f.checkDeviceAnswer(t, f.hubCall(http.MethodPut, path, `{"deviceId":"crud-1","status":"`+status+`"}`, tok, "If-Match", im.make(etag)))
		if d.ETag == etag || d.Status != status || d.Keys()[0] != created.Keys()[0] {
			t.Errorf("If-Match %s: %+v", im.name, d)
		}
		etag = d.ETag
	}
	// A stale etag: 412, the device unchanged.
	checkHubError(t, f.hubCall(http.MethodPut, path, `{"deviceId":"crud-1","status":"enabled"}`, tok, "If-Match", `"`+created.ETag+`"`), azerr.HubPreconditionFailed)
	if d, _ := f.reg.Get(context.Background(), hubName, "crud-1"); d.ETag != etag || d.Status != hub.StatusDisabled {
		t.Errorf("a refused update changed the device: %+v", d)
	}
	// An update of a device that does not exist: 404.
	checkHubError(t, f.hubCall(http.MethodPut, "/devices/ghost", `{"deviceId":"ghost"}`, tok, "If-Match", `"*"`), azerr.HubDeviceNotFound)

	// Delete: stale 412, then the current etag, then gone.
	checkHubError(t, f.hubCall(http.MethodDelete, path, "", tok, "If-Match", `"`+created.ETag+`"`), azerr.HubPreconditionFailed)
	rec = f.hubCall(http.MethodDelete, path, "", tok, "If-Match", `"`+etag+`"`)
	if rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Fatalf("delete: %d %s", rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	rec = f.hubCall(http.MethodGet, path, "", tok)
	msg := checkHubError(t, rec, azerr.HubDeviceNotFound)
	if code, _, _ := nodeParseErrorBody(rec.Body.String()); code != "DeviceNotFound" || !strings.Contains(msg, "crud-1") {
		t.Errorf("Node reads %q / %q", code, msg)
	}
	checkHubError(t, f.hubCall(http.MethodDelete, path, "", tok, "If-Match", `"*"`), azerr.HubDeviceNotFound)

	// Delete with "*" and with no If-Match at all.
	for _, ifMatch := range []string{`"*"`, "*", ""} {
		f.device(t, "del-me", "")
		var hdr []string
		if ifMatch != "" {
			hdr = []string{"If-Match", ifMatch}
		}
		if rec := f.hubCall(http.MethodDelete, "/devices/del-me", "", tok, hdr...); rec.Code != http.StatusNoContent {
			t.Errorf("delete If-Match %q: %d %s", ifMatch, rec.Code, rec.Body)
		}
	}
}

// TestHubRegistryBodies: what PUT accepts and refuses.
func TestHubRegistryBodies(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	tests := []struct {
		name, path, body string
		code             azerr.Code // 0: 200
		check            func(t *testing.T, d *hub.Device)
	}{
		{"no body fields: id from the URL", "/devices/b-1", `{}`, azerr.Code{}, func(t *testing.T, d *hub.Device) {
			if d.DeviceID != "b-1" || d.Status != hub.StatusEnabled || d.Keys()[0] == "" {
				t.Errorf("%+v", d)
			}
		}},
		{"given keys kept, disabled", "/devices/b-2", `{"deviceId":"b-2","status":"disabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + key + `","secondaryKey":"` + otherKey + `"}}}`, azerr.Code{},
			func(t *testing.T, d *hub.Device) {
				if d.Keys()[0] != key || d.Keys()[1] != otherKey || d.Status != hub.StatusDisabled {
					t.Errorf("%+v", d)
				}
			}},
		{"C# body: read-only fields and zone-less times ignored", "/devices/b-3",
			`{"deviceId":"b-3","generationId":"x","etag":"bogus","connectionState":"Connected","connectionStateUpdatedTime":"0001-01-01T00:00:00","statusUpdatedTime":"0001-01-01T00:00:00","lastActivityTime":"0001-01-01T00:00:00","cloudToDeviceMessageCount":7,"status":"enabled","capabilities":{"iotEdge":false}}`, azerr.Code{},
			func(t *testing.T, d *hub.Device) {
				if d.GenerationID == "x" || d.ConnectionState != "Disconnected" || d.CloudToDeviceMessageCount != 0 {
					t.Errorf("read-only fields taken from the body: %+v", d)
				}
			}},
		{"percent-encoded ID", "/devices/dev%3A1%28a%29", `{"deviceId":"dev:1(a)"}`, azerr.Code{}, func(t *testing.T, d *hub.Device) {
			if d.DeviceID != "dev:1(a)" {
				t.Errorf("%+v", d)
			}
		}},
		{"IDs are case-sensitive", "/devices/B-4", `{"deviceId":"b-4"}`, azerr.HubArgumentInvalid, nil},
		{"ID mismatch", "/devices/b-5", `{"deviceId":"other"}`, azerr.HubArgumentInvalid, nil},
		{"invalid ID", "/devices/bad%23id", `{}`, azerr.HubArgumentInvalid, nil},
		{"invalid status", "/devices/b-6", `{"status":"sleeping"}`, azerr.HubArgumentInvalid, nil},
		{"unsupported auth type", "/devices/b-7", `{"authentication":{"type":"selfSigned"}}`, azerr.HubArgumentInvalid, nil},
		{"not JSON", "/devices/b-8", `{"deviceId":`, azerr.HubFormatError, nil},
		{"empty body", "/devices/b-9", ``, azerr.HubFormatError, nil},
		{"array", "/devices/b-10", `[]`, azerr.HubFormatError, nil},
		{"trailing data", "/devices/b-11", `{}{}`, azerr.HubFormatError, nil},
		{"too large", "/devices/b-12", `{"x":"` + strings.Repeat("a", maxRegistryBody) + `"}`, azerr.HubMessageTooLarge, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := f.hubCall(http.MethodPut, tt.path, tt.body, tok)
			if tt.code != (azerr.Code{}) {
				msg := checkHubError(t, rec, tt.code)
				if strings.Contains(msg, "enrollment") {
					t.Errorf("a DPS message on a hub error: %q", msg)
				}
				return
			}
			tt.check(t, f.checkDeviceAnswer(t, rec))
		})
	}
	// No refused PUT created anything.
	list, err := f.reg.List(context.Background(), hubName, "", 0)
	if err != nil || len(list) != 4 {
		t.Errorf("registry holds %d devices, want the 4 accepted: %v", len(list), err)
	}
}

// TestHubListAndStatistics: GET /devices?top=N bounds and
// /statistics/devices over more devices than one page.
func TestHubListAndStatistics(t *testing.T) {
	f := newFixture(t)
	tok := f.hubOwnerToken(t)
	// Empty registry: [] and zeros.
	rec := f.hubCall(http.MethodGet, "/devices", "", tok)
	if rec.Code != http.StatusOK || rec.Body.String() != "[]" {
		t.Errorf("empty list: %d %s", rec.Code, rec.Body)
	}
	rec = f.hubCall(http.MethodGet, "/statistics/devices?api-version=2021-04-12", "", tok)
	if rec.Code != http.StatusOK || rec.Body.String() != `{"totalDeviceCount":0,"enabledDeviceCount":0,"disabledDeviceCount":0}` {
		t.Errorf("empty statistics: %d %s", rec.Code, rec.Body)
	}

	const enabled, disabled = 1003, 2
	for i := 0; i < enabled+disabled; i++ {
		st := ""
		if i%500 == 7 && i < 1000 {
			st = hub.StatusDisabled
		}
		if _, err := f.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: fmt.Sprintf("d-%04d", i), Status: st}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		query string
		want  int
		code  azerr.Code
	}{
		{"?top=1", 1, azerr.Code{}},
		{"?top=2&api-version=2021-04-12", 2, azerr.Code{}},
		{"?TOP=3", 3, azerr.Code{}},
		{"?top=1000", 1000, azerr.Code{}},
		{"?top=1001", 1000, azerr.Code{}},
		{"?top=0", 1000, azerr.Code{}},
		{"?top=-5", 1000, azerr.Code{}},
		{"?top=99999999999999999999", 1000, azerr.Code{}},
		{"", 1000, azerr.Code{}},
		{"?top=", 1000, azerr.Code{}},
		{"?top=ten", 0, azerr.HubArgumentInvalid},
	}
	for _, tt := range tests {
		t.Run("list"+tt.query, func(t *testing.T) {
			rec := f.hubCall(http.MethodGet, "/devices"+tt.query, "", tok)
			if tt.code != (azerr.Code{}) {
				checkHubError(t, rec, tt.code)
				return
			}
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			checkCommon(t, rec)
			ds := decode[[]hub.Device](t, rec)
			if len(ds) != tt.want || ds[0].DeviceID != "d-0000" || ds[0].ETag == "" || len(ds[0].Keys()) != 2 {
				t.Errorf("%d devices, first %+v", len(ds), ds[0])
			}
		})
	}
	rec = f.hubCall(http.MethodGet, "/statistics/devices", "", f.hubToken(t, hubName, "registryRead"))
	if rec.Code != http.StatusOK {
		t.Fatalf("statistics: %d %s", rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	st := decode[deviceStatistics](t, rec)
	if st.Total != enabled+disabled || st.Enabled != enabled || st.Disabled != disabled {
		t.Errorf("statistics %+v, want %d/%d/%d", st, enabled+disabled, enabled, disabled)
	}
}

// TestHubServiceAuth: service SAS rules and the rights each registry
// operation needs.
func TestHubServiceAuth(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "svc-1", "")
	exp := f.now.Add(time.Hour)
	owner := f.hubPolicy(t, hub.OwnerPolicy)
	tok := func(sr, policy string) string { return f.hubToken(t, sr, policy) }
	// withKey signs with sr placed in the token as given.
	withKey := func(sr, name, key string, expiry time.Time) string {
		tok, err := sas.Sign(sr, key, name, expiry)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	put := `{"deviceId":"svc-2"}`
	tests := []struct {
		name, method, path, body, auth string
		want                           int
	}{
		{"owner GET", "GET", "/devices/svc-1", "", tok(hubName, hub.OwnerPolicy), 200},
		{"registryRead GET", "GET", "/devices/svc-1", "", tok(hubName, "registryRead"), 200},
		{"registryRead list", "GET", "/devices", "", tok(hubName, "registryRead"), 200},
		{"registryRead statistics", "GET", "/statistics/devices", "", tok(hubName, "registryRead"), 200},
		{"registryReadWrite GET (write implies read)", "GET", "/devices/svc-1", "", tok(hubName, "registryReadWrite"), 200},
		{"secondary key", "GET", "/devices/svc-1", "", withKey(hubName, owner.KeyName, owner.SecondaryKey, exp), 200},
		{"sr host upper case", "GET", "/devices/svc-1", "", tok(strings.ToUpper(hubName), hub.OwnerPolicy), 200},
		{"sr with port", "GET", "/devices/svc-1", "", tok(hubName+":8443", hub.OwnerPolicy), 200},
		{"sr segment prefix /devices", "GET", "/devices/svc-1", "", tok(hubName+"/devices", hub.OwnerPolicy), 200},
		{"sr is the whole path", "GET", "/devices/svc-1", "", tok(hubName+"/devices/svc-1", hub.OwnerPolicy), 200},
		{"sr percent-encoded (C#)", "GET", "/devices/svc-1", "", withKey(hubName+"%2Fdevices", owner.KeyName, owner.PrimaryKey, exp), 200},
		{"policy name case-insensitive", "GET", "/devices/svc-1", "", withKey(hubName, "IOTHUBOWNER", owner.PrimaryKey, exp), 200},

		{"registryRead cannot PUT", "PUT", "/devices/svc-2", put, tok(hubName, "registryRead"), 401},
		{"registryRead cannot DELETE", "DELETE", "/devices/svc-1", "", tok(hubName, "registryRead"), 401},
		{"service (ServiceConnect) cannot GET", "GET", "/devices/svc-1", "", tok(hubName, "service"), 401},
		{"service cannot read statistics", "GET", "/statistics/devices", "", tok(hubName, "service"), 401},
		{"device policy cannot GET", "GET", "/devices/svc-1", "", tok(hubName, "device"), 401},
		{"device token", "GET", "/devices/svc-1", "", hubDeviceToken(t, "svc-1", d.Keys()[0], exp), 401},
		{"no token", "GET", "/devices/svc-1", "", "", 401},
		{"garbage token", "GET", "/devices/svc-1", "", "SharedAccessSignature sr=x", 401},
		{"bearer token", "GET", "/devices/svc-1", "", "Bearer abc", 401},
		{"wrong key", "GET", "/devices/svc-1", "", withKey(hubName, owner.KeyName, otherKey, exp), 401},
		{"unknown policy", "GET", "/devices/svc-1", "", withKey(hubName, "nosuch", owner.PrimaryKey, exp), 401},
		{"expired", "GET", "/devices/svc-1", "", withKey(hubName, owner.KeyName, owner.PrimaryKey, f.now.Add(-10*time.Minute)), 401},
		{"other host", "GET", "/devices/svc-1", "", tok("other.hub", hub.OwnerPolicy), 401},
		{"DPS host", "GET", "/devices/svc-1", "", tok(dpsHost, hub.OwnerPolicy), 401},
		{"sr for another device", "GET", "/devices/svc-1", "", tok(hubName+"/devices/svc-9", hub.OwnerPolicy), 401},
		{"sr not a segment prefix", "GET", "/devices/svc-1", "", tok(hubName+"/dev", hub.OwnerPolicy), 401},
		{"sr longer than the path", "GET", "/devices", "", tok(hubName+"/devices/svc-1", hub.OwnerPolicy), 401},
		{"DPS owner token", "GET", "/devices/svc-1", "", f.ownerToken(t), 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := f.hubCall(tt.method, tt.path, tt.body, tt.auth)
			if tt.want == 401 {
				checkHubError(t, rec, azerr.HubUnauthorizedAccess)
				return
			}
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			checkCommon(t, rec)
		})
	}
	// Refused writes wrote nothing.
	if _, err := f.reg.Get(context.Background(), hubName, "svc-2"); err == nil {
		t.Error("a refused PUT created the device")
	}
	if _, err := f.reg.Get(context.Background(), hubName, "svc-1"); err != nil {
		t.Errorf("a refused DELETE deleted the device: %v", err)
	}
	// A hub without policies accepts no service token.
	cfg := *f.hubCfg
	cfg.Settings = nil
	h := NewHandler(Config{Now: func() time.Time { return f.now }, Hub: &cfg, Logger: f.h.(*handler).log}, f.svc, f.settings)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, request(http.MethodGet, "/devices/svc-1", "", "Authorization", f.hubOwnerToken(t)))
	checkHubError(t, rec, azerr.HubUnauthorizedAccess)
}

// TestHubRouting: hub and DPS routes share the table without capturing
// each other's paths, and each renders its own errors.
func TestHubRouting(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev-1", "", "")
	hubTok := f.hubOwnerToken(t)
	dpsTok := f.ownerToken(t)
	tests := []struct {
		name, method, path, auth string
		hubErr                   azerr.Code // hub error expected
		dpsErr                   azerr.Code // DPS error expected
		allow                    string
		want                     int
	}{
		{"hub literal any case", "GET", "/DEVICES", hubTok, azerr.Code{}, azerr.Code{}, "", 200},
		{"unknown path under /devices keeps the DPS 404", "GET", "/devices/d1/twin", hubTok, azerr.Code{}, azerr.DPSNotFound, "", 0},
		{"unknown /statistics path", "GET", "/statistics/service", hubTok, azerr.Code{}, azerr.DPSNotFound, "", 0},
		{"one trailing slash is the list", "GET", "/devices/", hubTok, azerr.Code{}, azerr.Code{}, "", 200},
		{"empty device ID", "GET", "/devices//", hubTok, azerr.Code{}, azerr.DPSNotFound, "", 0},
		{"hub 405 on a device", "PATCH", "/devices/d1", hubTok, azerr.HubMethodNotAllowed, azerr.Code{}, "PUT,GET,DELETE", 0},
		{"hub 405 on telemetry", "GET", "/devices/d1/messages/events", hubTok, azerr.HubMethodNotAllowed, azerr.Code{}, "POST", 0},
		{"hub 405 on statistics", "POST", "/statistics/devices", hubTok, azerr.HubMethodNotAllowed, azerr.Code{}, "GET", 0},
		{"hub 405 on the device list", "PATCH", "/devices", hubTok, azerr.HubMethodNotAllowed, azerr.Code{}, "GET,POST", 0},
		{"DPS service route untouched", "GET", "/enrollments/dev-1", dpsTok, azerr.Code{}, azerr.Code{}, "", 200},
		{"DPS 405 stays DPS", "PATCH", "/enrollments/x", dpsTok, azerr.Code{}, azerr.DPSMethodNotAllowed, "PUT,GET,DELETE", 0},
		{"an ID scope named devices is a DPS device route", "PUT", "/devices/registrations/dev-1/register", "", azerr.Code{}, azerr.DPSUnauthorized, "", 0},
		{"DPS route with a hub token is a DPS 401", "GET", "/enrollments/dev-1", hubTok, azerr.Code{}, azerr.DPSInvalidCredentials, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(tt.method, tt.path, "")
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			rec := f.do(r)
			switch {
			case tt.hubErr != (azerr.Code{}):
				checkHubError(t, rec, tt.hubErr)
			case tt.dpsErr != (azerr.Code{}):
				checkError(t, rec, tt.dpsErr.Number())
			case rec.Code != tt.want:
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if got, _ := raw(rec, "Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
		})
	}

	// Without a HubConfig there are no hub routes: the old DPS 404.
	h := NewHandler(Config{Hosts: []string{dpsHost}, Now: func() time.Time { return f.now }, Logger: f.h.(*handler).log}, f.svc, f.settings)
	for _, p := range []string{"/devices/d1", "/devices/d1/messages/events", "/statistics/devices"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, request(http.MethodPost, p, "x"))
		checkError(t, rec, azerr.DPSNotFound.Number())
	}
	// An incomplete HubConfig is a wiring bug, found at start-up.
	for _, cfg := range []HubConfig{{Services: f.hubCfg.Services}, {Name: hubName}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewHandler accepted %+v", cfg)
				}
			}()
			NewHandler(Config{Hub: &cfg}, f.svc, f.settings)
		}()
	}
}

// TestHubErrorRendering: how errors reach hub clients, whatever their
// origin.
func TestHubErrorRendering(t *testing.T) {
	f := newFixture(t)
	h := f.h.(*handler)
	base := h.routes[:len(h.routes):len(h.routes)]
	tests := []struct {
		name     string
		err      error
		wantCode azerr.Code
		wantMsg  string
	}{
		{"domain error", azerr.Newf(azerr.HubDeviceNotFound, "Device %s not found.", "x"), azerr.HubDeviceNotFound, "Device x not found."},
		{"default message is the hub's, not DPS's same-numbered one", azerr.New(azerr.HubArgumentInvalid), azerr.HubArgumentInvalid, "The request is not valid."},
		{"wrapped", fmt.Errorf("ctx: %w", azerr.New(azerr.HubPreconditionFailed)), azerr.HubPreconditionFailed, "Precondition failed."},
		{"plain error", fmt.Errorf("boom"), azerr.HubServerError, "Internal server error."},
		{"DPS internal", azerr.Wrap(azerr.DPSInternal, fmt.Errorf("x")), azerr.HubServerError, "Internal server error."},
		{"DPS 404 without a hub name", azerr.New(azerr.DPSEnrollmentNotFound), azerr.HubServerError, "Internal server error."},
		{"DPS 400 of the same number space", azerr.Newf(azerr.DPSBadRequest, "bad"), azerr.HubServerError, "Internal server error."},
		{"DPS 412 of the same number", azerr.New(azerr.DPSPreconditionFailed), azerr.HubServerError, "Internal server error."},
		{"no entry", &azerr.Error{Message: "ok?"}, azerr.HubServerError, "Internal server error."},
		{"semicolons cannot cut the message for Node", azerr.Newf(azerr.HubArgumentInvalid, "a;b;c"), azerr.HubArgumentInvalid, "a,b,c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.routes = append(base, newHubRoute(http.MethodGet, "err", func(x *exchange, _ []string) {
				x.w.Header()[hdrLocation] = []string{"https://half.written/"}
				x.fail(tt.err)
			}))
			rec := f.do(request(http.MethodGet, "/err", ""))
			if msg := checkHubError(t, rec, tt.wantCode); msg != tt.wantMsg {
				t.Errorf("message %q, want %q", msg, tt.wantMsg)
			}
			if _, has := raw(rec, "Location"); has {
				t.Error("a success header survived into the error answer")
			}
		})
	}
	// A panic in a hub route is a hub 500.
	h.routes = append(base, newHubRoute(http.MethodGet, "boom", func(*exchange, []string) { panic("boom") }))
	checkHubError(t, f.do(request(http.MethodGet, "/boom", "")), azerr.HubServerError)
}

// TestHubInternalError: a registry store failure is a hub 500; the cause
// goes to the logs, not the client.
func TestHubInternalError(t *testing.T) {
	f := newFixtureStore(t, &failingStore{Store: memstore.New(), kind: store.KindDevice})
	for _, r := range []*http.Request{
		request(http.MethodGet, "/devices/x", "", "Authorization", f.hubOwnerToken(t)),
		request(http.MethodPost, devicePath("x"), "m", "Authorization", hubDeviceToken(t, "x", otherKey, f.now.Add(time.Hour))),
	} {
		rec := f.do(r)
		checkHubError(t, rec, azerr.HubServerError)
		if strings.Contains(rec.Body.String(), errDiskOnFire.Error()) {
			t.Errorf("the cause reached the client: %s", rec.Body)
		}
	}
	if logs := f.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, errDiskOnFire.Error()) {
		t.Errorf("internal error not logged with its cause:\n%s", logs)
	}
	if n := len(f.sink.messages()); n != 0 {
		t.Errorf("%d messages appended", n)
	}
}
