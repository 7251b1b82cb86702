package rest

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/policy"
)

// policyScopes are the two policy sets the routes manage, each under every
// spelling of its prefix a client may use.
var policyScopes = []struct {
	name   string
	prefix string
	rights []string // two valid rights of the set
	other  string   // a right of the other set, invalid here
}{
	{"dps", "/policies", []string{dps.RightEnrollmentRead, dps.RightEnrollmentWrite}, hub.RightDeviceConnect},
	{"hub", "/hubs/" + hubName + "/policies", []string{hub.RightRegistryRead, hub.RightDeviceConnect}, dps.RightEnrollmentRead},
	{"hub, other case", "/HUBS/Hub.Berth.TEST/Policies", []string{hub.RightServiceConnect, hub.RightDeviceConnect}, dps.RightServiceConfig},
}

// call sends an owner-authorised request with a JSON body.
func (f *fixture) policyCall(t *testing.T, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	return f.do(request(method, target, body, "Authorization", f.ownerToken(t), "Content-Type", "application/json"))
}

// wantPolicy checks a success answer and decodes the policy; its keys are
// added to the secrets the logs must not hold.
func (f *fixture) wantPolicy(t *testing.T, rec *httptest.ResponseRecorder, status int) policy.Policy {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d: %s", rec.Code, status, rec.Body)
	}
	checkCommon(t, rec)
	p := decode[policy.Policy](t, rec)
	*f.secrets = append(*f.secrets, p.PrimaryKey, p.SecondaryKey)
	return p
}

func TestPolicyLifecycle(t *testing.T) {
	for _, sc := range policyScopes {
		t.Run(sc.name, func(t *testing.T) {
			f := newFixture(t)
			base := sc.prefix + "/ops?api-version=2021-10-01"

			// Create: 201, keys generated, rights normalised.
			body := `{"rights":["` + strings.ToLower(sc.rights[0]) + `"],"unknownField":true}`
			created := f.wantPolicy(t, f.policyCall(t, http.MethodPut, base, body), http.StatusCreated)
			if created.KeyName != "ops" || len(created.PrimaryKey) != 44 || created.SecondaryKey == "" ||
				!slices.Equal(created.Rights, sc.rights[:1]) {
				t.Fatalf("created %+v", created)
			}
			// Update: 200, rights replaced, keys kept; the body may carry the
			// policy's own name, in any case.
			body = `{"keyName":"OPS","rights":["` + sc.rights[0] + `","` + sc.rights[1] + `"]}`
			updated := f.wantPolicy(t, f.policyCall(t, http.MethodPut, base, body), http.StatusOK)
			if updated.PrimaryKey != created.PrimaryKey || updated.SecondaryKey != created.SecondaryKey || !slices.Equal(updated.Rights, sc.rights) {
				t.Errorf("updated %+v", updated)
			}
			// Keys given are stored as given.
			body = `{"rights":["` + sc.rights[0] + `"],"primaryKey":"` + indivKey + `","secondaryKey":"` + otherKey + `"}`
			if p := f.wantPolicy(t, f.policyCall(t, http.MethodPut, base, body), http.StatusOK); p.PrimaryKey != indivKey || p.SecondaryKey != otherKey {
				t.Errorf("keys given: %+v", p)
			}

			// Read one, and the list.
			got := f.wantPolicy(t, f.policyCall(t, http.MethodGet, sc.prefix+"/OPS", ""), http.StatusOK)
			if got.KeyName != "ops" || got.PrimaryKey != indivKey {
				t.Errorf("GET %+v", got)
			}
			list := f.policyCall(t, http.MethodGet, sc.prefix, "")
			if list.Code != http.StatusOK {
				t.Fatalf("list %d %s", list.Code, list.Body)
			}
			names := []string{}
			for _, p := range decode[[]policy.Policy](t, list) {
				names = append(names, p.KeyName)
			}
			if !slices.Contains(names, "ops") || len(names) < 2 {
				t.Errorf("list names %v", names)
			}

			// Renew: each kind changes what it says and nothing else.
			renew := func(keyType string) policy.Policy {
				t.Helper()
				return f.wantPolicy(t, f.policyCall(t, http.MethodPost, sc.prefix+"/ops/renewKey?keyType="+keyType, ""), http.StatusOK)
			}
			p := renew("primary")
			if p.PrimaryKey == indivKey || len(p.PrimaryKey) != 44 || p.SecondaryKey != otherKey {
				t.Errorf("renew primary: %+v", p)
			}
			q := renew("Secondary")
			if q.PrimaryKey != p.PrimaryKey || q.SecondaryKey == otherKey {
				t.Errorf("renew secondary: %+v", q)
			}
			s := renew("swap")
			if s.PrimaryKey != q.SecondaryKey || s.SecondaryKey != q.PrimaryKey {
				t.Errorf("swap: %+v after %+v", s, q)
			}
			if stored := f.wantPolicy(t, f.policyCall(t, http.MethodGet, sc.prefix+"/ops", ""), http.StatusOK); stored.PrimaryKey != s.PrimaryKey {
				t.Errorf("renewed keys not stored: %+v", stored)
			}

			// Delete: 204 without a body, then gone.
			del := f.policyCall(t, http.MethodDelete, sc.prefix+"/ops", "")
			if del.Code != http.StatusNoContent || del.Body.Len() != 0 {
				t.Fatalf("delete %d %q", del.Code, del.Body)
			}
			checkError(t, f.policyCall(t, http.MethodGet, sc.prefix+"/ops", ""), 404000)
			checkError(t, f.policyCall(t, http.MethodDelete, sc.prefix+"/ops", ""), 404000)
		})
	}
}

func TestPolicyErrors(t *testing.T) {
	big := `{"rights":["EnrollmentRead"],"pad":"` + strings.Repeat("x", 96*1024) + `"}`
	tests := []struct {
		name, method, target, body string
		code                       int
		msg                        string // in the message when not ""
	}{
		{"bad JSON", http.MethodPut, "/policies/p", `{"rights":`, 400101, ""},
		{"not an object", http.MethodPut, "/policies/p", `["EnrollmentRead"]`, 400101, ""},
		{"rights of the wrong type", http.MethodPut, "/policies/p", `{"rights":"EnrollmentRead"}`, 400101, ""},
		{"no body", http.MethodPut, "/policies/p", ``, 400101, ""},
		{"too large", http.MethodPut, "/policies/p", big, 413000, ""},
		{"no rights", http.MethodPut, "/policies/p", `{"rights":[]}`, 400000, "at least one right"},
		{"unknown right", http.MethodPut, "/policies/p", `{"rights":["Everything"]}`, 400000, "Everything"},
		{"hub right on the DPS", http.MethodPut, "/policies/p", `{"rights":["DeviceConnect"]}`, 400000, "DeviceConnect"},
		{"DPS right on the hub", http.MethodPut, "/hubs/" + hubName + "/policies/p", `{"rights":["ServiceConfig"]}`, 400000, "ServiceConfig"},
		{"invalid name", http.MethodPut, "/policies/a%20b", `{"rights":["EnrollmentRead"]}`, 400000, "not valid"},
		{"body names another policy", http.MethodPut, "/policies/p", `{"keyName":"q","rights":["EnrollmentRead"]}`, 400000, `"q"`},
		{"key not base64", http.MethodPut, "/policies/p", `{"rights":["EnrollmentRead"],"primaryKey":"not*base64"}`, 400000, "base64"},
		{"key too short", http.MethodPut, "/policies/p", `{"rights":["EnrollmentRead"],"secondaryKey":"c2hvcnQ="}`, 400000, "16 to 64"},
		{"last ServiceConfig policy deleted", http.MethodDelete, "/policies/" + dps.OwnerPolicy, ``, 400000, "ServiceConfig"},
		{"last ServiceConfig right removed", http.MethodPut, "/policies/" + dps.OwnerPolicy, `{"rights":["EnrollmentRead"]}`, 400000, "ServiceConfig"},
		{"renew without keyType", http.MethodPost, "/policies/" + dps.OwnerPolicy + "/renewKey", ``, 400000, "keyType"},
		{"renew with a bad keyType", http.MethodPost, "/policies/" + dps.OwnerPolicy + "/renewKey?keyType=tertiary", ``, 400000, "tertiary"},
		{"renew an unknown policy", http.MethodPost, "/policies/nope/renewKey?keyType=primary", ``, 404000, "nope"},
		{"get an unknown policy", http.MethodGet, "/hubs/" + hubName + "/policies/nope", ``, 404000, "nope"},
		{"unknown hub", http.MethodGet, "/hubs/other.hub/policies", ``, 404000, "other.hub"},
		{"unknown hub, policy route", http.MethodPut, "/hubs/other.hub/policies/p", `{"rights":["DeviceConnect"]}`, 404000, "other.hub"},
		{"method not allowed", http.MethodPatch, "/policies/p", `{}`, 405000, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			e := checkError(t, f.policyCall(t, tt.method, tt.target, tt.body), tt.code)
			if tt.msg != "" && !strings.Contains(e.Message, tt.msg) {
				t.Errorf("message %q, want it to mention %q", e.Message, tt.msg)
			}
			// A refused change leaves the sets as they were.
			if _, ok := f.settings.Policy("p"); ok {
				t.Error("policy p was created")
			}
			if _, ok := f.settings.Policy(dps.OwnerPolicy); !ok {
				t.Error("the owner policy is gone")
			}
		})
	}
}

// TestPolicyHubNotServed: without a hub, the hub routes answer 404.
func TestPolicyHubNotServed(t *testing.T) {
	f := newFixture(t)
	f.h = NewHandler(Config{Hosts: []string{dpsHost}, Now: func() time.Time { return f.now }}, f.svc, f.settings)
	e := checkError(t, f.policyCall(t, http.MethodGet, "/hubs/"+hubName+"/policies", ""), 404000)
	if !strings.Contains(e.Message, "no IoT hub") {
		t.Errorf("message %q", e.Message)
	}
}

// TestPolicyAuthorization: every route needs a DPS token with
// ServiceConfig, checked before the hub name and the body.
func TestPolicyAuthorization(t *testing.T) {
	f := newFixture(t)
	routes := []struct{ method, target, body string }{
		{http.MethodGet, "/policies", ""},
		{http.MethodGet, "/policies/" + dps.OwnerPolicy, ""},
		{http.MethodPut, "/policies/p", `{"rights":["EnrollmentRead"]}`},
		{http.MethodDelete, "/policies/" + readOnly, ""},
		{http.MethodPost, "/policies/" + dps.OwnerPolicy + "/renewKey?keyType=primary", ""},
		{http.MethodGet, "/hubs/" + hubName + "/policies", ""},
		{http.MethodPut, "/hubs/" + hubName + "/policies/p", `{"rights":["DeviceConnect"]}`},
		{http.MethodPost, "/hubs/" + hubName + "/policies/" + hub.OwnerPolicy + "/renewKey?keyType=swap", ""},
		{http.MethodDelete, "/hubs/" + hubName + "/policies/service", ""},
		// An unknown hub is not revealed to an unauthorised caller.
		{http.MethodGet, "/hubs/other.hub/policies", ""},
		// Nor is a bad body looked at.
		{http.MethodPut, "/policies/p", `{`},
	}
	// A policy with every right but ServiceConfig.
	noConfig, _, err := f.settings.PolicySet().Put(t.Context(), dps.Policy{KeyName: "almost",
		Rights: []string{dps.RightEnrollmentRead, dps.RightEnrollmentWrite, dps.RightRegistrationStatusRead, dps.RightRegistrationStatusWrite}})
	if err != nil {
		t.Fatal(err)
	}
	*f.secrets = append(*f.secrets, noConfig.PrimaryKey, noConfig.SecondaryKey)
	exp := f.now.Add(time.Hour)
	tokens := []struct {
		name, token string
		code        int
	}{
		{"no token", "", 401000},
		{"garbage", "Bearer abc", 401000},
		{"enrollment reader", serviceToken(t, dpsHost, f.reader, exp), 401002},
		{"every right but ServiceConfig", serviceToken(t, dpsHost, noConfig, exp), 401002},
		{"the hub's owner (not a DPS policy)", serviceToken(t, hubName, f.hubPolicy(t, hub.OwnerPolicy), exp), 401002},
		{"owner, expired", serviceToken(t, dpsHost, f.owner, f.now.Add(-time.Hour)), 401002},
		{"owner, other host", serviceToken(t, "elsewhere.test", f.owner, exp), 401002},
	}
	for _, tok := range tokens {
		for _, rt := range routes {
			t.Run(tok.name+" "+rt.method+" "+rt.target, func(t *testing.T) {
				hdr := []string{"Content-Type", "application/json"}
				if tok.token != "" {
					hdr = append(hdr, "Authorization", tok.token)
				}
				checkError(t, f.do(request(rt.method, rt.target, rt.body, hdr...)), tok.code)
			})
		}
	}
	// Nothing changed.
	if _, ok := f.settings.Policy("p"); ok {
		t.Error("policy p was created")
	}
	if _, ok := f.hubSettings.Policy("service"); !ok {
		t.Error("hub policy service was deleted")
	}
	if p, _ := f.settings.Policy(dps.OwnerPolicy); p.PrimaryKey != f.owner.PrimaryKey {
		t.Error("the owner's key was renewed")
	}
}

// TestPolicyChangesTakeEffect: a change is seen by the very next request,
// DPS and hub alike; a renewed key refuses the old token at once.
func TestPolicyChangesTakeEffect(t *testing.T) {
	f := newFixture(t)
	exp := f.now.Add(time.Hour)

	// DPS: an enrollment reader may query but not write.
	p := f.wantPolicy(t, f.policyCall(t, http.MethodPut, "/policies/reader2", `{"rights":["EnrollmentRead"]}`), http.StatusCreated)
	queryWith := func(tok string) *httptest.ResponseRecorder {
		return f.do(request(http.MethodPost, "/enrollments/query", `{"query":"SELECT * FROM enrollments"}`, "Authorization", tok))
	}
	oldTok := serviceToken(t, dpsHost, &p, exp)
	if rec := queryWith(oldTok); rec.Code != http.StatusOK {
		t.Fatalf("query with EnrollmentRead: %d %s", rec.Code, rec.Body)
	}
	checkError(t, f.do(request(http.MethodPut, "/enrollments/e1", `{"registrationId":"e1","attestation":{"type":"symmetricKey"}}`, "Authorization", oldTok)), 401002)
	// Granting the right makes the write pass with the same token.
	f.wantPolicy(t, f.policyCall(t, http.MethodPut, "/policies/reader2", `{"rights":["EnrollmentRead","EnrollmentWrite"]}`), http.StatusOK)
	if rec := f.do(request(http.MethodPut, "/enrollments/e1", `{"registrationId":"e1","attestation":{"type":"symmetricKey"}}`, "Authorization", oldTok)); rec.Code != http.StatusOK {
		t.Fatalf("write after the grant: %d %s", rec.Code, rec.Body)
	}
	*f.secrets = append(*f.secrets, decode[doc](t, f.do(request(http.MethodPost, "/enrollments/e1/attestationmechanism", "", "Authorization", oldTok))).primaryKey())
	// Renewing the primary key refuses its tokens; the new key's work.
	renewed := f.wantPolicy(t, f.policyCall(t, http.MethodPost, "/policies/reader2/renewKey?keyType=primary", ""), http.StatusOK)
	checkError(t, queryWith(oldTok), 401002)
	if rec := queryWith(serviceToken(t, dpsHost, &renewed, exp)); rec.Code != http.StatusOK {
		t.Fatalf("query with the renewed key: %d %s", rec.Code, rec.Body)
	}

	// Hub: a registry reader may list devices until its key is renewed.
	hp := f.wantPolicy(t, f.policyCall(t, http.MethodPut, "/hubs/"+hubName+"/policies/lister", `{"rights":["RegistryRead"]}`), http.StatusCreated)
	listWith := func(pol *policy.Policy) int {
		tok := serviceToken(t, hubName, pol, exp)
		return f.do(request(http.MethodGet, "/devices", "", "Authorization", tok)).Code
	}
	if code := listWith(&hp); code != http.StatusOK {
		t.Fatalf("hub list with RegistryRead: %d", code)
	}
	hr := f.wantPolicy(t, f.policyCall(t, http.MethodPost, "/hubs/"+hubName+"/policies/lister/renewKey?keyType=secondary", ""), http.StatusOK)
	if code := listWith(&hp); code != http.StatusOK {
		t.Errorf("hub list after renewing the other key: %d", code)
	}
	hr = f.wantPolicy(t, f.policyCall(t, http.MethodPost, "/hubs/"+hubName+"/policies/lister/renewKey?keyType=primary", ""), http.StatusOK)
	if code := listWith(&hp); code != http.StatusUnauthorized {
		t.Errorf("hub list with the renewed-away key: %d, want 401", code)
	}
	if code := listWith(&hr); code != http.StatusOK {
		t.Errorf("hub list with the new key: %d", code)
	}
	if rec := f.policyCall(t, http.MethodDelete, "/hubs/"+hubName+"/policies/lister", ""); rec.Code != http.StatusNoContent {
		t.Fatalf("hub delete: %d %s", rec.Code, rec.Body)
	}
	if code := listWith(&hr); code != http.StatusUnauthorized {
		t.Errorf("hub list with a deleted policy: %d, want 401", code)
	}
}

// TestPolicyRoutesLeaveDeviceRoutes: the DPS device routes, whose first
// segment is a parameter, still serve paths whose ID scope happens to
// spell a policy literal, except where a policy route fits the same
// method and path (the literal wins). Every request carries the owner's
// service token: a policy route accepts it, a device route does not (it is
// no device credential), so the status tells which route answered.
func TestPolicyRoutesLeaveDeviceRoutes(t *testing.T) {
	f := newFixture(t)
	tok := f.ownerToken(t)
	tests := []struct {
		name, method, target string
		status               int
	}{
		// No policy route has four segments.
		{"register, scope policies", http.MethodPut, "/policies/registrations/dev/register", http.StatusUnauthorized},
		{"register, scope hubs", http.MethodPut, "/hubs/registrations/dev/register", http.StatusUnauthorized},
		// The hub's policy list is a GET, registration status a POST.
		{"status, scope hubs", http.MethodPost, "/hubs/registrations/policies", http.StatusUnauthorized},
		{"operation, scope hubs", http.MethodGet, "/hubs/registrations/policies/operations/op", http.StatusUnauthorized},
		// Only a policy route fits.
		{"get policy registrations", http.MethodGet, "/policies/registrations", http.StatusNotFound},
		// Both fit: the policy route answers (404: no policy
		// "registrations"; a device route would have said 401).
		{"renew policy registrations", http.MethodPost, "/policies/registrations/renewKey?keyType=swap", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := f.do(request(tt.method, tt.target, `{}`, "Authorization", tok, "Content-Type", "application/json"))
			if rec.Code != tt.status {
				t.Errorf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
		})
	}
}
