package dps_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

const (
	scope    = "0ne00000A0A"
	hubName  = "hub.berth.test"
	groupKey = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
	indivKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

type fixture struct {
	svc *dps.Service
	st  store.Store
	reg *hub.Registry
	now time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{st: memstore.New(), now: time.Unix(1700000000, 0)}
	f.reg = hub.NewRegistry(f.st, func() time.Time { return f.now })
	svc, err := dps.New(f.st, f.reg, dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
	return f
}

func (f *fixture) token(t *testing.T, regID, key string) string {
	t.Helper()
	tok, err := sas.SignEncoded(scope+"/registrations/"+regID, key, "registration", f.now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func symKey(primary, secondary string) *dps.AttestationMechanism {
	return &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: primary, SecondaryKey: secondary}}
}

func (f *fixture) enroll(t *testing.T, id, deviceID, status string) *dps.IndividualEnrollment {
	t.Helper()
	e := &dps.IndividualEnrollment{RegistrationID: id, DeviceID: deviceID}
	e.Attestation = symKey(indivKey, "")
	e.ProvisioningStatus = status
	out, err := f.svc.PutEnrollment(context.Background(), id, e, "")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) group(t *testing.T, id, status string) *dps.EnrollmentGroup {
	t.Helper()
	g := &dps.EnrollmentGroup{EnrollmentGroupID: id}
	g.Attestation = symKey(groupKey, "")
	g.ProvisioningStatus = status
	out, err := f.svc.PutGroup(context.Background(), id, g, "")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) provision(t *testing.T, regID, token string, body string) (*dps.OperationStatus, error) {
	t.Helper()
	ctx := context.Background()
	op, err := f.svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: token, Body: []byte(body)})
	if err != nil {
		return nil, err
	}
	if op.Status != dps.StatusAssigning || op.OperationID == "" {
		t.Fatalf("register answered %+v, want assigning with an operation id", op)
	}
	return f.svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, Token: token})
}

func code(err error) azerr.Code {
	var ae *azerr.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return azerr.Code{}
}

func TestProvisionIndividualAndGroup(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "Dev-1", "", "")
	f.enroll(t, "dev-2", "custom-id", "")
	f.group(t, "grp", "")
	derived, _ := sas.DeriveKey(groupKey, "member-7")

	tests := []struct {
		name, regID, key, wantDevice, wantGroup string
	}{
		{"individual keeps case", "Dev-1", indivKey, "Dev-1", ""},
		{"individual deviceId", "dev-2", indivKey, "custom-id", ""},
		{"group member", "member-7", derived, "member-7", "grp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := f.provision(t, tt.regID, f.token(t, tt.regID, tt.key), "")
			if err != nil {
				t.Fatal(err)
			}
			rs := st.RegistrationState
			if st.Status != dps.StatusAssigned || rs == nil || rs.AssignedHub != hubName || rs.DeviceID != tt.wantDevice ||
				rs.Substatus != dps.SubstatusInitialAssignment || rs.ETag == "" || rs.RegistrationID != tt.regID {
				t.Fatalf("status = %+v / %+v", st, rs)
			}
			if tt.wantGroup != "" && (rs.SymmetricKey == nil || rs.SymmetricKey.EnrollmentGroupID != tt.wantGroup) {
				t.Errorf("group ref = %+v, want %s", rs.SymmetricKey, tt.wantGroup)
			}
			// The hub can now authenticate the device with the same key.
			d, err := f.reg.Get(context.Background(), hubName, tt.wantDevice)
			if err != nil {
				t.Fatal(err)
			}
			if keys := d.Keys(); len(keys) != 2 || keys[0] != tt.key {
				t.Errorf("device keys = %v, want primary %s", keys, tt.key)
			}
		})
	}
}

func TestReRegisterIsConsistent(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev", "", "")
	tok := f.token(t, "dev", indivKey)
	first, err := f.provision(t, "dev", tok, "")
	if err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(time.Minute)
	second, err := f.provision(t, "dev", tok, `{"registrationId":"DEV","payload":null}`)
	if err != nil {
		t.Fatal(err)
	}
	a, b := first.RegistrationState, second.RegistrationState
	if a.DeviceID != b.DeviceID || a.AssignedHub != b.AssignedHub || !a.CreatedDateTimeUTC.Equal(b.CreatedDateTimeUTC.Time) {
		t.Errorf("re-registration changed identity: %+v vs %+v", a, b)
	}
	if b.LastUpdatedDateTimeUTC.Equal(a.LastUpdatedDateTimeUTC.Time) || a.ETag == b.ETag {
		t.Errorf("re-registration did not update lastUpdated/etag")
	}
	d1, _ := f.reg.Get(context.Background(), hubName, "dev")
	if d1.GenerationID == "" {
		t.Error("no generation id")
	}
}

func TestIndividualWinsOverGroup(t *testing.T) {
	f := newFixture(t)
	f.group(t, "grp", "")
	f.enroll(t, "both", "", "")
	derived, _ := sas.DeriveKey(groupKey, "both")
	// The group's derived key must not be accepted: the individual
	// enrollment decides.
	if _, err := f.provision(t, "both", f.token(t, "both", derived), ""); code(err) != azerr.DPSInvalidCredentials {
		t.Fatalf("group key for an individually enrolled ID: err = %v", err)
	}
	st, err := f.provision(t, "both", f.token(t, "both", indivKey), "")
	if err != nil || st.RegistrationState.SymmetricKey != nil {
		t.Fatalf("individual: %+v, %v", st, err)
	}
}

func TestDisabled(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "off", "", dps.ProvisioningDisabled)
	f.group(t, "offgrp", dps.ProvisioningDisabled)
	derived, _ := sas.DeriveKey(groupKey, "g-off")
	for _, c := range []struct{ id, key string }{{"off", indivKey}, {"g-off", derived}} {
		st, err := f.provision(t, c.id, f.token(t, c.id, c.key), "")
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != dps.StatusDisabled || st.RegistrationState.Status != dps.StatusDisabled {
			t.Errorf("%s: %+v", c.id, st)
		}
		if _, err := f.reg.Get(context.Background(), hubName, c.id); code(err) != azerr.HubDeviceNotFound {
			t.Errorf("%s: disabled enrollment created a device: %v", c.id, err)
		}
	}
}

func TestRegisterErrors(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev", "", "")
	good := f.token(t, "dev", indivKey)
	expired, _ := sas.SignEncoded(scope+"/registrations/dev", indivKey, "", f.now.Add(-sas.MaxClockSkew-time.Second))
	otherRes, _ := sas.Sign(scope+"/registrations/other", indivKey, "", f.now.Add(time.Hour))
	otherScope, _ := sas.Sign("0neFFFFFFFF/registrations/dev", indivKey, "", f.now.Add(time.Hour))
	badSkn, _ := sas.Sign(scope+"/registrations/dev", indivKey, "iothubowner", f.now.Add(time.Hour))
	tests := []struct {
		name, scope, regID, token, body string
		want                            azerr.Code
	}{
		{"no token", scope, "dev", "", "", azerr.DPSUnauthorized},
		{"garbage token", scope, "dev", "Bearer x", "", azerr.DPSUnauthorized},
		{"wrong key", scope, "dev", f.token(t, "dev", groupKey), "", azerr.DPSInvalidCredentials},
		{"expired", scope, "dev", expired, "", azerr.DPSInvalidCredentials},
		{"token for another id", scope, "dev", otherRes, "", azerr.DPSInvalidCredentials},
		{"unknown scope", "0neFFFFFFFF", "dev", otherScope, "", azerr.DPSInvalidCredentials},
		{"skn not registration", scope, "dev", badSkn, "", azerr.DPSInvalidCredentials},
		{"unknown device", scope, "nobody", f.token(t, "nobody", indivKey), "", azerr.DPSInvalidCredentials},
		{"invalid id", scope, "bad/id", good, "", azerr.DPSInvalidRegistration},
		{"id ends with dot", scope, "dev.", good, "", azerr.DPSInvalidRegistration},
		{"not json", scope, "dev", good, "hello", azerr.DPSInvalidBody},
		{"json array", scope, "dev", good, "[1]", azerr.DPSInvalidBody},
		{"trailing garbage", scope, "dev", good, "{} {}", azerr.DPSInvalidBody},
		{"stray brace", scope, "dev", good, `{"registrationId":"dev"}}`, azerr.DPSInvalidBody},
		{"stray bracket", scope, "dev", good, `{}]`, azerr.DPSInvalidBody},
		{"payload not object", scope, "dev", good, `{"payload":3}`, azerr.DPSInvalidBody},
		{"id mismatch", scope, "dev", good, `{"registrationId":"other"}`, azerr.DPSRegistrationIDMatch},
		{"oversize", scope, "dev", good, `{"payload":{"x":"` + strings.Repeat("a", 96*1024) + `"}}`, azerr.DPSTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := f.st.Count(context.Background(), store.KindOperation, "")
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.svc.Register(context.Background(), dps.RegisterRequest{IDScope: tt.scope, RegistrationID: tt.regID, Token: tt.token, Body: []byte(tt.body)})
			if got := code(err); got != tt.want {
				t.Fatalf("err = %v (code %d), want %d", err, got, tt.want)
			}
			after, err := f.st.Count(context.Background(), store.KindOperation, "")
			if err != nil || after != before {
				t.Errorf("a refused register wrote an operation: %d before, %d after (%v)", before, after, err)
			}
		})
	}
}

func TestOperationBelongsToItsDevice(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "a", "", "")
	f.enroll(t, "b", "", "")
	op, err := f.svc.Register(context.Background(), dps.RegisterRequest{IDScope: scope, RegistrationID: "a", Token: f.token(t, "a", indivKey)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.OperationStatus(context.Background(), dps.OperationRequest{IDScope: scope, RegistrationID: "b", OperationID: op.OperationID, Token: f.token(t, "b", indivKey)})
	if code(err) != azerr.DPSOperationNotFound {
		t.Fatalf("b read a's operation: %v", err)
	}
	_, err = f.svc.OperationStatus(context.Background(), dps.OperationRequest{IDScope: scope, RegistrationID: "a", OperationID: "5.nope", Token: f.token(t, "a", indivKey)})
	if code(err) != azerr.DPSOperationNotFound {
		t.Fatalf("unknown operation: %v", err)
	}
}

func TestEnrollmentCRUD(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	e := &dps.IndividualEnrollment{RegistrationID: "crud"}
	e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}
	created, err := f.svc.PutEnrollment(ctx, "crud", e, "")
	if err != nil {
		t.Fatal(err)
	}
	keys := created.Attestation.SymmetricKey
	if keys.PrimaryKey == "" || keys.SecondaryKey == "" || keys.PrimaryKey == keys.SecondaryKey {
		t.Fatalf("keys not generated: %+v", keys)
	}
	if created.ProvisioningStatus != "enabled" || !strings.HasPrefix(created.ETag, `"`) || created.ReprovisionPolicy == nil {
		t.Errorf("defaults: %+v", created)
	}
	got, err := f.svc.GetEnrollment(ctx, "CRUD", false)
	if err != nil {
		t.Fatal(err)
	}
	if got.Attestation.SymmetricKey.PrimaryKey != "" {
		t.Error("GET revealed keys")
	}
	// Read-modify-write without keys keeps them.
	got.ProvisioningStatus = dps.ProvisioningDisabled
	upd, err := f.svc.PutEnrollment(ctx, "crud", got, got.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if upd.Attestation.SymmetricKey.PrimaryKey != keys.PrimaryKey || upd.ETag == got.ETag || !upd.CreatedDateTimeUTC.Equal(created.CreatedDateTimeUTC.Time) {
		t.Errorf("update: %+v", upd)
	}
	// A stale etag fails.
	if _, err := f.svc.PutEnrollment(ctx, "crud", got, got.ETag); code(err) != azerr.DPSPreconditionFailed {
		t.Errorf("stale etag: %v", err)
	}
	if err := f.svc.DeleteEnrollment(ctx, "crud", got.ETag); code(err) != azerr.DPSPreconditionFailed {
		t.Errorf("delete stale: %v", err)
	}
	if err := f.svc.DeleteEnrollment(ctx, "crud", `"*"`); err != nil {
		t.Errorf("delete *: %v", err)
	}
	if _, err := f.svc.GetEnrollment(ctx, "crud", false); code(err) != azerr.DPSEnrollmentNotFound {
		t.Errorf("after delete: %v", err)
	}
	// If-Match on a missing enrollment is a failed precondition.
	for _, m := range []string{"*", got.ETag} {
		if _, err := f.svc.PutEnrollment(ctx, "crud", got, m); code(err) != azerr.DPSPreconditionFailed {
			t.Errorf("If-Match %s on missing: %v", m, err)
		}
	}
	bad := []struct {
		name string
		e    dps.IndividualEnrollment
	}{
		{"no attestation", dps.IndividualEnrollment{RegistrationID: "x"}},
		{"id mismatch", dps.IndividualEnrollment{RegistrationID: "y", Common: dps.Common{Attestation: symKey("", "")}}},
		{"short key", dps.IndividualEnrollment{RegistrationID: "x", Common: dps.Common{Attestation: symKey("AAAA", "")}}},
		{"bad status", dps.IndividualEnrollment{RegistrationID: "x", Common: dps.Common{Attestation: symKey("", ""), ProvisioningStatus: "maybe"}}},
		{"unlinked hub", dps.IndividualEnrollment{RegistrationID: "x", Common: dps.Common{Attestation: symKey("", ""), IoTHubHostName: "elsewhere.example"}}},
		{"x509 not yet", dps.IndividualEnrollment{RegistrationID: "x", Common: dps.Common{Attestation: &dps.AttestationMechanism{Type: "x509"}}}},
	}
	for _, b := range bad {
		if _, err := f.svc.PutEnrollment(ctx, "x", &b.e, ""); code(err) != azerr.DPSInvalidEnrollment {
			t.Errorf("%s: err = %v", b.name, err)
		}
	}
}

func TestQueryPaging(t *testing.T) {
	f := newFixture(t)
	for i := range 25 {
		f.enroll(t, fmt.Sprintf("dev-%02d", i), "", "")
	}
	var ids []string
	cont, pages := "", 0
	for {
		page, err := f.svc.QueryEnrollments(context.Background(), cont, 10)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range page.Items {
			ids = append(ids, e.RegistrationID)
		}
		if page.Continuation == "" {
			break
		}
		cont = page.Continuation
	}
	if pages != 3 || len(ids) != 25 || ids[0] != "dev-00" || ids[24] != "dev-24" {
		t.Fatalf("pages = %d, ids = %v", pages, ids)
	}
	if _, err := f.svc.QueryEnrollments(context.Background(), "!!", 10); code(err) != azerr.DPSBadRequest {
		t.Errorf("bad continuation: %v", err)
	}
}

func TestRegistrationRecords(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.group(t, "grp", "")
	for _, id := range []string{"m1", "m2"} {
		k, _ := sas.DeriveKey(groupKey, id)
		if _, err := f.provision(t, id, f.token(t, id, k), ""); err != nil {
			t.Fatal(err)
		}
	}
	page, err := f.svc.QueryRegistrations(ctx, "grp", "", 0)
	if err != nil || len(page.Items) != 2 {
		t.Fatalf("group registrations: %+v, %v", page, err)
	}
	reg, err := f.svc.GetRegistration(ctx, "M1")
	if err != nil || reg.DeviceID != "m1" {
		t.Fatalf("get: %+v, %v", reg, err)
	}
	if err := f.svc.DeleteRegistration(ctx, "m1", "wrong"); code(err) != azerr.DPSPreconditionFailed {
		t.Errorf("delete wrong etag: %v", err)
	}
	if err := f.svc.DeleteRegistration(ctx, "m1", reg.ETag); err != nil {
		t.Errorf("delete with base64 etag: %v", err)
	}
	if _, err := f.svc.GetRegistration(ctx, "m1"); code(err) != azerr.DPSRegistrationMissing {
		t.Errorf("after delete: %v", err)
	}
}

func TestRegistrationStatusLookup(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "look", "", "")
	tok := f.token(t, "look", indivKey)
	ctx := context.Background()
	req := dps.StatusRequest{IDScope: scope, RegistrationID: "look", Token: tok}
	if _, err := f.svc.RegistrationStatus(ctx, req); code(err) != azerr.DPSRegistrationMissing {
		t.Fatalf("before registering: %v", err)
	}
	if _, err := f.provision(t, "look", tok, ""); err != nil {
		t.Fatal(err)
	}
	st, err := f.svc.RegistrationStatus(ctx, req)
	if err != nil || st.Status != dps.StatusAssigned || st.AssignedHub != hubName {
		t.Fatalf("lookup: %+v, %v", st, err)
	}
	req.Body = []byte(`{"registrationId":"look","csr":"MIIB"}`)
	if _, err := f.svc.RegistrationStatus(ctx, req); code(err) != azerr.DPSInvalidBody {
		t.Errorf("csr in lookup: %v", err)
	}
	req.Body, req.Token = nil, f.token(t, "look", groupKey)
	if _, err := f.svc.RegistrationStatus(ctx, req); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("wrong key lookup: %v", err)
	}
}

func TestStatusJSONShape(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "shape", "", "")
	st, err := f.provision(t, "shape", f.token(t, "shape", indivKey), "")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(st)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	rs := m["registrationState"].(map[string]any)
	for _, k := range []string{"registrationId", "createdDateTimeUtc", "assignedHub", "deviceId", "status", "substatus", "lastUpdatedDateTimeUtc", "etag"} {
		if _, ok := rs[k]; !ok {
			t.Errorf("registrationState lacks %s: %s", k, b)
		}
	}
	created := rs["createdDateTimeUtc"].(string)
	if len(created) != len("2020-04-10T03:11:13.0276997Z") || !strings.HasSuffix(created, "Z") {
		t.Errorf("time format %q", created)
	}
	if u, err := url.QueryUnescape(st.OperationID); err != nil || u != st.OperationID || strings.ContainsAny(st.OperationID, "&=?#/+ ") {
		t.Errorf("operation id %q is not topic-safe", st.OperationID)
	}
}

func TestBulkEnrollments(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.enroll(t, "exists", "", "")
	mk := func(id string) *dps.IndividualEnrollment {
		e := &dps.IndividualEnrollment{RegistrationID: id}
		e.Attestation = symKey("", "")
		return e
	}
	res, err := f.svc.BulkEnrollments(ctx, dps.BulkCreate, []*dps.IndividualEnrollment{mk("b1"), mk("exists"), mk("bad/id")})
	if err != nil {
		t.Fatal(err)
	}
	if res.IsSuccessful || len(res.Errors) != 2 || res.Errors[0].RegistrationID != "exists" || res.Errors[0].ErrorCode != azerr.DPSConflict.Number() ||
		res.Errors[1].ErrorCode != azerr.DPSInvalidRegistration.Number() {
		t.Fatalf("create result %+v", res)
	}
	if _, err := f.svc.GetEnrollment(ctx, "b1", false); err != nil {
		t.Fatalf("b1 not created: %v", err)
	}
	stale := mk("b1")
	stale.ETag = `"nope"`
	res, err = f.svc.BulkEnrollments(ctx, dps.BulkUpdateIfMatchETag, []*dps.IndividualEnrollment{stale})
	if err != nil || res.IsSuccessful || res.Errors[0].ErrorCode != azerr.DPSPreconditionFailed.Number() {
		t.Fatalf("stale update: %+v %v", res, err)
	}
	res, err = f.svc.BulkEnrollments(ctx, dps.BulkDelete, []*dps.IndividualEnrollment{mk("b1"), mk("exists")})
	if err != nil || !res.IsSuccessful || len(res.Errors) != 0 {
		t.Fatalf("delete: %+v %v", res, err)
	}
	if _, err := f.svc.BulkEnrollments(ctx, "upsert", []*dps.IndividualEnrollment{mk("x")}); code(err) != azerr.DPSInvalidBody {
		t.Errorf("bad mode: %v", err)
	}
	many := make([]*dps.IndividualEnrollment, 11) // DPS takes at most 10 per bulk operation
	for i := range many {
		many[i] = mk(fmt.Sprintf("m%d", i))
	}
	if _, err := f.svc.BulkEnrollments(ctx, dps.BulkCreate, many); code(err) != azerr.DPSInvalidBody {
		t.Errorf("11 items: %v", err)
	}
}

func TestInitialTwinAppliedAtAssignment(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g := &dps.EnrollmentGroup{EnrollmentGroupID: "twin-grp"}
	g.Attestation = symKey(groupKey, "")
	g.InitialTwin = &dps.InitialTwin{Tags: json.RawMessage(`{"site":"lab"}`),
		Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`{"rate":5}`)}}
	if _, err := f.svc.PutGroup(ctx, g.EnrollmentGroupID, g, ""); err != nil {
		t.Fatal(err)
	}
	derived, _ := sas.DeriveKey(groupKey, "twin-dev")
	if st, err := f.provision(t, "twin-dev", f.token(t, "twin-dev", derived), ""); err != nil || st.Status != dps.StatusAssigned {
		t.Fatalf("provision: %+v, %v", st, err)
	}
	twins := hub.NewTwins(f.st, f.reg, nil)
	tw, err := twins.Get(ctx, hubName, "twin-dev")
	if err != nil {
		t.Fatal(err)
	}
	if string(tw.Tags) != `{"site":"lab"}` || !strings.Contains(string(tw.Properties.Desired), `"rate":5`) {
		t.Errorf("twin after assignment: tags %s desired %s", tw.Tags, tw.Properties.Desired)
	}
	// The device changes its twin; registering again keeps it.
	if _, err := twins.PatchReported(ctx, hubName, "twin-dev", []byte(`{"fw":"1"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.provision(t, "twin-dev", f.token(t, "twin-dev", derived), ""); err != nil {
		t.Fatal(err)
	}
	if doc, _ := twins.DeviceDocument(ctx, hubName, "twin-dev"); !strings.Contains(string(doc), `"fw":"1"`) {
		t.Errorf("re-registration reset the twin: %s", doc)
	}

	for _, bad := range []*dps.InitialTwin{
		{Tags: json.RawMessage(`{"a":[1]}`)},
		{Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`{"a.b":1}`)}},
		{Tags: json.RawMessage(`"not an object"`)},
	} {
		b := &dps.EnrollmentGroup{EnrollmentGroupID: "bad-twin"}
		b.Attestation = symKey(groupKey, "")
		b.InitialTwin = bad
		if _, err := f.svc.PutGroup(ctx, b.EnrollmentGroupID, b, ""); code(err) != azerr.DPSInvalidEnrollment {
			t.Errorf("initial twin %+v accepted: %v", bad, err)
		}
	}
}

// A registration ID is case-insensitive and a hub device ID is not: a
// re-registration that spells the ID in another case is the same
// registration, and must stay the same hub device (the one first
// assigned), with the credentials of the latest attestation. Individual
// enrollments and group members alike.
func TestCaseVariantKeepsTheFirstDevice(t *testing.T) {
	ctx := context.Background()
	for _, individual := range []bool{true, false} {
		t.Run(fmt.Sprintf("individual=%v", individual), func(t *testing.T) {
			f := newFixture(t)
			key := func(regID string) string {
				if individual {
					return indivKey
				}
				k, err := sas.DeriveKey(groupKey, regID)
				if err != nil {
					t.Fatal(err)
				}
				return k
			}
			if individual {
				f.enroll(t, "Abuse-UPPER", "", "")
			} else {
				f.group(t, "grp", "")
			}
			first, err := f.provision(t, "Abuse-UPPER", f.token(t, "Abuse-UPPER", key("Abuse-UPPER")), "")
			if err != nil {
				t.Fatal(err)
			}
			if first.RegistrationState.DeviceID != "Abuse-UPPER" {
				t.Fatalf("first device ID %q", first.RegistrationState.DeviceID)
			}
			f.now = f.now.Add(time.Minute)
			second, err := f.provision(t, "ABUSE-UPPER", f.token(t, "ABUSE-UPPER", key("ABUSE-UPPER")), "")
			if err != nil {
				t.Fatal(err)
			}
			st := second.RegistrationState
			if st.Status != dps.StatusAssigned || st.DeviceID != "Abuse-UPPER" || st.RegistrationID != "ABUSE-UPPER" {
				t.Errorf("variant's registration: status %q, deviceId %q, registrationId %q; want assigned, Abuse-UPPER (first assigned), ABUSE-UPPER (as presented)",
					st.Status, st.DeviceID, st.RegistrationID)
			}
			rec, err := f.svc.GetRegistration(ctx, "abuse-upper")
			if err != nil || rec.DeviceID != "Abuse-UPPER" {
				t.Errorf("registration record: %+v, %v; want deviceId Abuse-UPPER", rec, err)
			}
			if _, err := f.reg.Get(ctx, hubName, "ABUSE-UPPER"); code(err) != azerr.HubDeviceNotFound {
				t.Errorf("hub device ABUSE-UPPER: %v, want none (an orphan)", err)
			}
			devTok := func(deviceID, k string) string {
				tok, err := sas.Sign(hubName+"/devices/"+deviceID, k, "", f.now.Add(time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			if _, err := f.reg.AuthenticateDevice(ctx, nil, hubName, "Abuse-UPPER", devTok("Abuse-UPPER", key("ABUSE-UPPER"))); err != nil {
				t.Errorf("the variant's key on the one device: %v", err)
			}
			if _, err := f.reg.AuthenticateDevice(ctx, nil, hubName, "ABUSE-UPPER", devTok("ABUSE-UPPER", key("ABUSE-UPPER"))); err == nil {
				t.Error("the variant's key opened a second device")
			}
			if !individual {
				// The group member's key is derived from the ID as
				// presented: the latest attestation's key replaced the
				// first one on the device.
				if _, err := f.reg.AuthenticateDevice(ctx, nil, hubName, "Abuse-UPPER", devTok("Abuse-UPPER", key("Abuse-UPPER"))); err == nil {
					t.Error("the replaced key still opens the device")
				}
			}
		})
	}
}
