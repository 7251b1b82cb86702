package rest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
)

// doc is the part of an enrollment or group document the tests look at.
type doc struct {
	RegistrationID    string `json:"registrationId"`
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	ETag              string `json:"etag"`
	Attestation       struct {
		Type         string          `json:"type"`
		SymmetricKey *map[string]any `json:"symmetricKey"`
	} `json:"attestation"`
	ProvisioningStatus string `json:"provisioningStatus"`
}

func (d doc) primaryKey() string {
	if d.Attestation.SymmetricKey == nil {
		return ""
	}
	k, _ := (*d.Attestation.SymmetricKey)["primaryKey"].(string)
	return k
}

// TestEnrollmentCRUD runs create, read, attestation, conditional update
// and delete for both kinds of enrollment, through every path spelling the
// SDKs use.
func TestEnrollmentCRUD(t *testing.T) {
	tests := []struct {
		name, collection, idField string
	}{
		{"individual", "enrollments", "registrationId"},
		{"group", "enrollmentGroups", "enrollmentGroupId"},
		{"group, Node's lower-case path", "enrollmentgroups", "enrollmentGroupId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tok := f.ownerToken(t)
			path := "/" + tt.collection + "/Crud-1?api-version=2021-10-01"
			body := func(status string) string {
				return fmt.Sprintf(`{%q:"Crud-1","attestation":{"type":"symmetricKey"},"provisioningStatus":%q}`, tt.idField, status)
			}
			call := func(method, body string, hdr ...string) *httptest.ResponseRecorder {
				t.Helper()
				return f.do(request(method, path, body, append([]string{"Authorization", tok, "Content-Type", "application/json; charset=utf-8"}, hdr...)...))
			}
			call2 := func(method, p string) *httptest.ResponseRecorder {
				t.Helper()
				return f.do(request(method, p, "", "Authorization", tok))
			}
			ok := func(rec *httptest.ResponseRecorder, want int) doc {
				t.Helper()
				if rec.Code != want {
					t.Fatalf("status %d, want %d: %s", rec.Code, want, rec.Body)
				}
				checkCommon(t, rec)
				if _, has := raw(rec, "ETag"); has {
					t.Error("ETag header written; Azure puts the etag in the body only")
				}
				if want == http.StatusNoContent {
					if rec.Body.Len() != 0 {
						t.Errorf("204 with a body: %s", rec.Body)
					}
					return doc{}
				}
				return decode[doc](t, rec)
			}

			// Create: keys generated and shown, etag quoted.
			created := ok(call(http.MethodPut, body("enabled")), http.StatusOK)
			if created.primaryKey() == "" || created.ETag == "" || created.ETag[0] != '"' {
				t.Fatalf("created %+v", created)
			}
			// Read: keys hidden, same etag.
			got := ok(call2(http.MethodGet, path), http.StatusOK)
			if got.primaryKey() != "" || got.ETag != created.ETag || got.Attestation.Type != dps.AttestationSymmetricKey {
				t.Errorf("GET %+v, want keys hidden and etag %s", got, created.ETag)
			}
			// Attestation mechanism: keys shown.
			att := call2(http.MethodPost, "/"+tt.collection+"/Crud-1/attestationmechanism")
			if att.Code != http.StatusOK {
				t.Fatalf("attestationmechanism %d %s", att.Code, att.Body)
			}
			mech := decode[dps.AttestationMechanism](t, att)
			if mech.SymmetricKey == nil || mech.SymmetricKey.PrimaryKey != created.primaryKey() || mech.SymmetricKey.SecondaryKey == "" {
				t.Errorf("attestationmechanism %s", att.Body)
			}

			// Conditional updates: every If-Match form the SDKs send, each
			// with the etag of the previous write.
			etag := created.ETag
			for _, im := range []struct {
				name string
				make func(etag string) string
			}{
				{"quoted (Node sends the body etag verbatim)", func(e string) string { return e }},
				{"unquoted", func(e string) string { return strings.Trim(e, `"`) }},
				{"star", func(string) string { return "*" }},
				{"quoted star", func(string) string { return `"*"` }},
			} {
				d := ok(call(http.MethodPut, body("disabled"), "If-Match", im.make(etag)), http.StatusOK)
				if d.ETag == etag || d.ProvisioningStatus != "disabled" {
					t.Errorf("If-Match %s: %+v", im.name, d)
				}
				if d.primaryKey() != created.primaryKey() {
					t.Errorf("If-Match %s: an update without keys rotated them", im.name)
				}
				etag = d.ETag
			}
			// Stale etag: 412, document unchanged.
			checkError(t, call(http.MethodPut, body("enabled"), "If-Match", created.ETag), azerr.DPSPreconditionFailed.Number())
			if d := ok(call2(http.MethodGet, path), http.StatusOK); d.ETag != etag {
				t.Errorf("a refused PUT changed the etag: %s → %s", etag, d.ETag)
			}
			checkError(t, call(http.MethodDelete, "", "If-Match", created.ETag), azerr.DPSPreconditionFailed.Number())

			// Bad bodies.
			checkError(t, call(http.MethodPut, `{"attestation":`), azerr.DPSInvalidBody.Number())
			checkError(t, call(http.MethodPut, ``), azerr.DPSInvalidBody.Number())
			checkError(t, call(http.MethodPut, `{}{}`), azerr.DPSInvalidBody.Number())
			checkError(t, call(http.MethodPut, `{"attestation":{"type":"symmetricKey"}}}`), azerr.DPSInvalidBody.Number())
			checkError(t, call(http.MethodPut, fmt.Sprintf(`{%q:"other","attestation":{"type":"symmetricKey"}}`, tt.idField)), azerr.DPSInvalidEnrollment.Number())
			checkError(t, call(http.MethodPut, `{"attestation":{"type":"symmetricKey"}}`, "Content-Type", "text/plain"), azerr.DPSUnsupportedMedia.Number())

			// Delete with the current etag, then it is gone.
			ok(call(http.MethodDelete, "", "If-Match", etag), http.StatusNoContent)
			checkError(t, call2(http.MethodGet, path), azerr.DPSEnrollmentNotFound.Number())
			checkError(t, call2(http.MethodPost, "/"+tt.collection+"/Crud-1/attestationmechanism"), azerr.DPSEnrollmentNotFound.Number())
			checkError(t, call(http.MethodDelete, ""), azerr.DPSEnrollmentNotFound.Number())
		})
	}
}

// query posts one query page request.
func (f *fixture) query(t *testing.T, path, body, maxItems, continuation string) *httptest.ResponseRecorder {
	t.Helper()
	r := request(http.MethodPost, path, body, "Authorization", f.ownerToken(t), "Content-Type", "application/json; charset=utf-8")
	if maxItems != "" {
		r.Header.Set("x-ms-max-item-count", maxItems)
	}
	if continuation != "" {
		r.Header.Set("x-ms-continuation", continuation)
	}
	return f.do(r)
}

// TestQueryPaging: 25 enrollments, pages of 10 → 10, 10, 5, continuation
// on all but the last, x-ms-item-type on every page.
func TestQueryPaging(t *testing.T) {
	f := newFixture(t)
	for i := range 25 {
		f.enroll(t, fmt.Sprintf("page-%02d", i), "", "")
	}
	var sizes []int
	seen := map[string]bool{}
	cont := ""
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatal("paging does not end")
		}
		rec := f.query(t, "/enrollments/query?api-version=2021-10-01", `{"query":"SELECT * FROM enrollments"}`, "10", cont)
		if rec.Code != http.StatusOK {
			t.Fatalf("page %d: %d %s", page, rec.Code, rec.Body)
		}
		checkCommon(t, rec)
		if it, ok := raw(rec, "x-ms-item-type"); it != "Enrollment" || !ok {
			t.Errorf("page %d: x-ms-item-type = %q", page, it)
		}
		if m, _ := raw(rec, "x-ms-max-item-count"); m != "10" {
			t.Errorf("page %d: x-ms-max-item-count = %q", page, m)
		}
		items := decode[[]doc](t, rec)
		sizes = append(sizes, len(items))
		for _, it := range items {
			if seen[it.RegistrationID] {
				t.Errorf("%s returned twice", it.RegistrationID)
			}
			seen[it.RegistrationID] = true
			if it.primaryKey() != "" {
				t.Errorf("%s: query shows keys", it.RegistrationID)
			}
		}
		next, has := raw(rec, "x-ms-continuation")
		if !has {
			break
		}
		if next == "" {
			t.Fatalf("page %d: empty x-ms-continuation", page)
		}
		cont = next
	}
	if fmt.Sprint(sizes) != "[10 10 5]" || len(seen) != 25 {
		t.Errorf("page sizes %v, %d distinct, want [10 10 5] and 25", sizes, len(seen))
	}

	// Without a page size: one page, nothing echoed.
	rec := f.query(t, "/enrollments/query", `{"query":"SELECT * FROM enrollments"}`, "", "")
	if _, has := raw(rec, "x-ms-max-item-count"); has || rec.Code != http.StatusOK || len(decode[[]doc](t, rec)) != 25 {
		t.Errorf("unpaged query: %d, headers %v", rec.Code, rec.Header())
	}
	if _, has := raw(rec, "x-ms-continuation"); has {
		t.Error("continuation on the only page")
	}
}

// TestQueryKinds: every query answers an array (never null) with its item
// type, and the query body is optional.
func TestQueryKinds(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name, path, body, itemType string
		setup                      func()
		wantLen                    int
	}{
		{"enrollments, empty", "/enrollments/query", `{"query":"SELECT * FROM enrollments"}`, "Enrollment", nil, 0},
		{"groups, empty", "/enrollmentGroups/query", `{"query":"SELECT * FROM enrollmentGroups"}`, "EnrollmentGroup", nil, 0},
		{"groups, Node path", "/enrollmentgroups/query", `{"query":"select * from enrollmentGroups"}`, "EnrollmentGroup", func() { f.group(t, "g1", "") }, 1},
		{"registrations of a group, empty", "/registrations/g1/query", "", "DeviceRegistration", nil, 0},
		{"registrations of a group", "/registrations/G1/query", `{"query":"*"}`, "DeviceRegistration", func() {
			derived, _ := sas.DeriveKey(groupKey, "member-1")
			f.provision(t, "member-1", f.devToken(t, "member-1", derived), "")
		}, 1},
		{"empty object body", "/enrollments/query", `{}`, "Enrollment", nil, 0},
		{"no body", "/enrollments/query", ``, "Enrollment", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			rec := f.query(t, tt.path, tt.body, "", "")
			if rec.Code != http.StatusOK {
				t.Fatalf("%d %s", rec.Code, rec.Body)
			}
			if it, _ := raw(rec, "x-ms-item-type"); it != tt.itemType {
				t.Errorf("x-ms-item-type = %q, want %q", it, tt.itemType)
			}
			if !strings.HasPrefix(rec.Body.String(), "[") {
				t.Errorf("body %s is not an array", rec.Body)
			}
			if n := len(decode[[]map[string]any](t, rec)); n != tt.wantLen {
				t.Errorf("%d items, want %d: %s", n, tt.wantLen, rec.Body)
			}
		})
	}
}

// TestQueryErrors: what a query refuses.
func TestQueryErrors(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name, path, body, maxItems, continuation string
		code                                     azerr.Code
		inMessage                                string
	}{
		{"WHERE clause", "/enrollments/query", `{"query":"SELECT * FROM enrollments WHERE provisioningStatus = 'enabled'"}`, "", "", azerr.DPSBadRequest, "WHERE"},
		{"lower-case where", "/enrollmentGroups/query", `{"query":"select * from enrollmentGroups where x=1"}`, "", "", azerr.DPSBadRequest, "WHERE"},
		{"unparseable body", "/enrollments/query", `{"query":`, "", "", azerr.DPSInvalidBody, ""},
		{"query not a string", "/enrollments/query", `{"query":5}`, "", "", azerr.DPSInvalidBody, ""},
		{"bad continuation", "/enrollments/query", ``, "", "!!not-a-token!!", azerr.DPSBadRequest, "continuation"},
		{"bad max-item-count", "/enrollments/query", ``, "ten", "", azerr.DPSBadRequest, "x-ms-max-item-count"},
		{"negative max-item-count", "/enrollments/query", ``, "-1", "", azerr.DPSBadRequest, "x-ms-max-item-count"},
		{"registrations of an unknown group", "/registrations/nope/query", ``, "", "", azerr.DPSEnrollmentNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := f.query(t, tt.path, tt.body, tt.maxItems, tt.continuation)
			e := checkError(t, rec, tt.code.Number())
			if !strings.Contains(e.Message, tt.inMessage) {
				t.Errorf("message %q does not mention %q", e.Message, tt.inMessage)
			}
			for _, h := range []string{"x-ms-item-type", "x-ms-continuation"} {
				if _, has := raw(rec, h); has {
					t.Errorf("%s on an error answer", h)
				}
			}
		})
	}
}

// TestRegistrationRecords: read, list and delete the records devices
// create.
func TestRegistrationRecords(t *testing.T) {
	f := newFixture(t)
	f.group(t, "grp", "")
	derived, err := sas.DeriveKey(groupKey, "rec-1")
	if err != nil {
		t.Fatal(err)
	}
	f.provision(t, "rec-1", f.devToken(t, "rec-1", derived), "")
	tok := f.ownerToken(t)
	get := func() *httptest.ResponseRecorder {
		return f.do(request(http.MethodGet, "/registrations/REC-1?api-version=2021-10-01", "", "Authorization", tok))
	}
	rec := get()
	if rec.Code != http.StatusOK {
		t.Fatalf("GET: %d %s", rec.Code, rec.Body)
	}
	state := decode[dps.RegistrationState](t, rec)
	if state.Status != dps.StatusAssigned || state.ETag == "" || state.AssignedHub != hubName {
		t.Fatalf("GET %s", rec.Body)
	}
	del := func(ifMatch string) *httptest.ResponseRecorder {
		return f.do(request(http.MethodDelete, "/registrations/rec-1", "", "Authorization", tok, "If-Match", ifMatch))
	}
	checkError(t, del(`"stale"`), azerr.DPSPreconditionFailed.Number())
	if rec := del(state.ETag); rec.Code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", rec.Code, rec.Body)
	}
	checkError(t, get(), azerr.DPSRegistrationMissing.Number())
	checkError(t, del(""), azerr.DPSRegistrationMissing.Number())
}

// TestServiceAuth: the service SAS rules
// (docs/spec/dps-protocol.md#service-tokens) and the right each operation
// needs.
func TestServiceAuth(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "auth-1", "", "")
	exp := f.now.Add(time.Hour)
	owner, reader := f.owner, f.reader
	wrongKey := &dps.Policy{KeyName: owner.KeyName, PrimaryKey: otherKey}
	unknown := &dps.Policy{KeyName: "nosuchpolicy", PrimaryKey: owner.PrimaryKey}
	secondary := &dps.Policy{KeyName: owner.KeyName, PrimaryKey: owner.SecondaryKey}
	putBody := `{"attestation":{"type":"symmetricKey"}}`

	tests := []struct {
		name, method, path, body, host, auth string
		want                                 int
		code                                 azerr.Code
	}{
		{"no token", "GET", "/enrollments/auth-1", "", dpsHost, "", 401, azerr.DPSUnauthorized},
		{"bearer token", "GET", "/enrollments/auth-1", "", dpsHost, "Bearer eyJ0eXAi", 401, azerr.DPSUnauthorized},
		{"garbage token", "GET", "/enrollments/auth-1", "", dpsHost, "SharedAccessSignature sr=x", 401, azerr.DPSUnauthorized},
		{"wrong key", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost, wrongKey, exp), 401, azerr.DPSInvalidCredentials},
		{"unknown policy", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost, unknown, exp), 401, azerr.DPSInvalidCredentials},
		{"wrong host in sr", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, "other.azure-devices-provisioning.net", owner, exp), 401, azerr.DPSInvalidCredentials},
		{"expired", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost, owner, f.now.Add(-10*time.Minute)), 401, azerr.DPSInvalidCredentials},
		{"read-only policy cannot PUT", "PUT", "/enrollments/auth-2", putBody, dpsHost, serviceToken(t, dpsHost, reader, exp), 401, azerr.DPSInvalidCredentials},
		{"read-only policy cannot DELETE", "DELETE", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost, reader, exp), 401, azerr.DPSInvalidCredentials},
		{"read-only policy cannot read registrations", "GET", "/registrations/auth-1", "", dpsHost, serviceToken(t, dpsHost, reader, exp), 401, azerr.DPSInvalidCredentials},
		{"read-only policy cannot delete registrations", "DELETE", "/registrations/auth-1", "", dpsHost, serviceToken(t, dpsHost, reader, exp), 401, azerr.DPSInvalidCredentials},
		{"device token on the service API", "GET", "/enrollments/auth-1", "", dpsHost, f.devToken(t, "auth-1", indivKey), 401, azerr.DPSInvalidCredentials},

		{"read-only policy can GET", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost, reader, exp), 200, azerr.Code{}},
		{"read-only policy can query", "POST", "/enrollments/query", "", dpsHost, serviceToken(t, dpsHost, reader, exp), 200, azerr.Code{}},
		{"read-only policy can read attestation", "POST", "/enrollments/auth-1/attestationmechanism", "", dpsHost, serviceToken(t, dpsHost, reader, exp), 200, azerr.Code{}},
		{"secondary key", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost, secondary, exp), 200, azerr.Code{}},
		{"sr host case-insensitive", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, strings.ToUpper(dpsHost), owner, exp), 200, azerr.Code{}},
		{"sr with a path prefix", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost+"/enrollments", owner, exp), 200, azerr.Code{}},
		{"sr url-encoded as C# does", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, "dps.berth.test%2Fenrollments", owner, exp), 200, azerr.Code{}},
		// The audience binds to the DPS's configured host names, never to
		// the Host header the client chose.
		{"sr names the request host, not configured (forged audience)", "GET", "/enrollments/auth-1", "", "evil.example.com", serviceToken(t, "evil.example.com", owner, exp), 401, azerr.DPSInvalidCredentials},
		{"sr names the request host and port, not configured", "GET", "/enrollments/auth-1", "", "10.1.2.3:8443", serviceToken(t, "10.1.2.3:8443", owner, exp), 401, azerr.DPSInvalidCredentials},
		{"sr is a configured host with port", "GET", "/enrollments/auth-1", "", dpsHost + ":8443", serviceToken(t, dpsHost+":8443", owner, exp), 200, azerr.Code{}},
		{"sr is a configured host, Host another", "GET", "/enrollments/auth-1", "", "10.1.2.3", serviceToken(t, dpsHost, owner, exp), 200, azerr.Code{}},
		{"sr path is not a prefix of the request's", "GET", "/enrollments/auth-1", "", dpsHost, serviceToken(t, dpsHost+"/registrations", owner, exp), 401, azerr.DPSInvalidCredentials},
		{"sr is another host than the request's", "GET", "/enrollments/auth-1", "", "10.1.2.3", serviceToken(t, "10.9.9.9", owner, exp), 401, azerr.DPSInvalidCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(tt.method, tt.path, tt.body)
			r.Host = tt.host
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			rec := f.do(r)
			if tt.code != (azerr.Code{}) {
				checkError(t, rec, tt.code.Number())
				return
			}
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			checkCommon(t, rec)
		})
	}
	// A refused PUT wrote nothing.
	if _, err := f.svc.GetEnrollment(context.Background(), "auth-2", false); !isCode(err, azerr.DPSEnrollmentNotFound) {
		t.Errorf("refused PUT created the enrollment: %v", err)
	}
}

// TestRouting: unknown paths are 404 and known paths with another method
// 405, both as DPS errors; literals match in any case.
func TestRouting(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "query", "", "")
	tok := f.ownerToken(t)
	tests := []struct {
		method, path string
		want         int
		code         azerr.Code
		allow        string
	}{
		{"GET", "/", 404, azerr.DPSNotFound, ""},
		{"GET", "/favicon.ico", 404, azerr.DPSNotFound, ""},
		// POST /enrollments is the bulk operation: no body is a bad body.
		{"POST", "/enrollments", 400, azerr.DPSInvalidBody, ""},
		// One trailing slash is tolerated (Node posts bulk to /enrollments/).
		{"GET", "/enrollments/", 405, azerr.DPSMethodNotAllowed, "POST"},
		{"GET", "/enrollments//", 404, azerr.DPSNotFound, ""},
		{"GET", "/enrollments//attestationmechanism", 404, azerr.DPSNotFound, ""},
		{"GET", "/enrollments/a/b/c", 404, azerr.DPSNotFound, ""},
		{"GET", "/a/b/c/d/e/f/g/h/i/j", 404, azerr.DPSNotFound, ""},
		// Unknown paths under the hub's /devices/ keep the DPS 404 (hub
		// routes are tested in TestHubRouting).
		{"GET", "/devices/d1/twin", 404, azerr.DPSNotFound, ""},
		{"PATCH", "/enrollments/x", 405, azerr.DPSMethodNotAllowed, "PUT,GET,DELETE"},
		{"GET", "/enrollments/x/attestationmechanism", 405, azerr.DPSMethodNotAllowed, "POST"},
		{"DELETE", "/registrations/g/query", 405, azerr.DPSMethodNotAllowed, "POST"},
		{"HEAD", "/enrollmentGroups/x", 405, azerr.DPSMethodNotAllowed, "PUT,GET,DELETE"},
		{"OPTIONS", "/0ne00000A0A/registrations/d/register", 405, azerr.DPSMethodNotAllowed, "PUT"},
		// "query" is a valid registration ID: GET reads that enrollment,
		// POST runs the query.
		{"GET", "/enrollments/query", 200, azerr.Code{}, ""},
		{"GET", "/ENROLLMENTS/Query", 200, azerr.Code{}, ""},
		{"POST", "/Enrollments/QUERY", 200, azerr.Code{}, ""},
		{"POST", "/enrollments/q%75ery", 200, azerr.Code{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			rec := f.do(request(tt.method, tt.path, "", "Authorization", tok))
			if tt.code != (azerr.Code{}) {
				checkError(t, rec, tt.code.Number())
			} else if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if got, _ := raw(rec, "Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
		})
	}
}

func TestRouteTable(t *testing.T) {
	rs := routes{
		newRoute("POST", "things/query", nil),
		newRoute("GET", "things/{id}", nil),
		newRoute("POST", "{scope}/things/{id}", nil),
	}
	tests := []struct {
		method, path string
		wantIdx      int // -1: none
		wantArgs     string
		wantAllow    string
	}{
		{"POST", "/things/query", 0, "[]", "[]"},
		{"GET", "/things/query", 1, "[query]", "[]"},
		{"GET", "/THINGS/a%2Fb", 1, "[a/b]", "[]"},
		{"POST", "/things/things/x", 2, "[things x]", "[]"},
		{"PUT", "/things/x", -1, "[]", "[GET]"},
		{"GET", "/nothing", -1, "[]", "[]"},
		{"GET", "/things/", -1, "[]", "[]"},
	}
	for _, tt := range tests {
		segs, ok, err := splitPath(tt.path)
		if err != nil || !ok {
			t.Fatalf("%s: %v %v", tt.path, ok, err)
		}
		rt, args, allow := rs.lookup(tt.method, segs)
		idx := -1
		for i := range rs {
			if rt == &rs[i] {
				idx = i
			}
		}
		if idx != tt.wantIdx || fmt.Sprint(args) != tt.wantArgs || fmt.Sprint(allow) != tt.wantAllow {
			t.Errorf("%s %s: route %d args %v allow %v, want %d %s %s", tt.method, tt.path, idx, args, allow, tt.wantIdx, tt.wantArgs, tt.wantAllow)
		}
	}
	if _, ok, err := splitPath("/a/%zz"); ok || err == nil {
		t.Error("bad escape accepted")
	}
	if _, ok, _ := splitPath("*"); ok {
		t.Error("non-path accepted")
	}
}

// Bulk operations as the Node service SDK sends them: POST /enrollments/
// with a trailing slash; per-item errors in a 200.
func TestBulkOperations(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "taken", "", "")
	tok := f.ownerToken(t)
	body := `{"mode":"create","enrollments":[` +
		`{"registrationId":"bulk-1","attestation":{"type":"symmetricKey"}},` +
		`{"registrationId":"taken","attestation":{"type":"symmetricKey"}}]}`
	rec := f.do(request("POST", "/enrollments/?api-version=2021-10-01", body, "Authorization", tok))
	checkCommon(t, rec)
	if rec.Code != 200 {
		t.Fatalf("bulk: %d %s", rec.Code, rec.Body)
	}
	res := decode[dps.BulkResult](t, rec)
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].RegistrationID != "taken" || res.Errors[0].ErrorCode != azerr.DPSConflict.Number() {
		t.Fatalf("bulk result %+v", res)
	}
	if rec := f.do(request("GET", "/enrollments/bulk-1", "", "Authorization", tok)); rec.Code != 200 {
		t.Fatalf("bulk-1 not created: %d", rec.Code)
	}
	gbody := `{"mode":"delete","enrollmentGroups":[{"enrollmentGroupId":"nope","attestation":{"type":"symmetricKey"}}]}`
	rec = f.do(request("POST", "/enrollmentGroups", gbody, "Authorization", tok))
	res = decode[dps.BulkResult](t, rec)
	if rec.Code != 200 || res.IsSuccessful || res.Errors[0].EnrollmentGroupID != "nope" || res.Errors[0].ErrorCode != azerr.DPSEnrollmentNotFound.Number() {
		t.Fatalf("group bulk: %d %+v", rec.Code, res)
	}
	rec = f.do(request("POST", "/enrollments", `{"mode":"merge","enrollments":[{}]}`, "Authorization", tok))
	checkError(t, rec, azerr.DPSInvalidBody.Number())
}
