package dps_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
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
	hubA = "hub-a.berth.test"
	hubB = "hub-b.berth.test"
	hubC = "hub-c.berth.test"
)

// newLinkedFixture is a DPS with three linked hubs: a (weight 1), b
// (weight 3), c (weight 0, not applying allocation policy, region west).
func newLinkedFixture(t *testing.T, cfg dps.Config) *fixture {
	t.Helper()
	f := &fixture{st: memstore.New(), now: time.Unix(1700000000, 0)}
	f.reg = hub.NewRegistry(f.st, func() time.Time { return f.now })
	cfg.IDScope = scope
	cfg.Now = func() time.Time { return f.now }
	cfg.LinkedHubs = []dps.LinkedHub{
		{Name: hubA, AllocationWeight: 1, ApplyAllocationPolicy: true, Region: "east"},
		{Name: hubB, AllocationWeight: 3, ApplyAllocationPolicy: true, Region: "north"},
		{Name: hubC, AllocationWeight: 0, ApplyAllocationPolicy: false, Region: "west"},
	}
	svc, err := dps.New(f.st, f.reg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
	return f
}

func (f *fixture) putGroup(t *testing.T, g *dps.EnrollmentGroup) {
	t.Helper()
	if g.Attestation == nil {
		g.Attestation = symKey(groupKey, "")
	}
	if _, err := f.svc.PutGroup(context.Background(), g.EnrollmentGroupID, g, "*"); err != nil && code(err) != (azerr.Code{}) {
		if _, err := f.svc.PutGroup(context.Background(), g.EnrollmentGroupID, g, ""); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) registerMember(t *testing.T, regID, body string) *dps.OperationStatus {
	t.Helper()
	key, _ := sas.DeriveKey(groupKey, regID)
	st, err := f.provision(t, regID, f.token(t, regID, key), body)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestHashedAllocationFollowsWeights(t *testing.T) {
	f := newLinkedFixture(t, dps.Config{})
	f.putGroup(t, &dps.EnrollmentGroup{EnrollmentGroupID: "g"})
	counts := map[string]int{}
	first := map[string]string{}
	for i := range 200 {
		id := fmt.Sprintf("dev-%03d", i)
		st := f.registerMember(t, id, "")
		counts[st.RegistrationState.AssignedHub]++
		first[id] = st.RegistrationState.AssignedHub
	}
	// c applies no allocation policy; a:b is 1:3.
	if counts[hubC] != 0 || counts[hubA] < 25 || counts[hubA] > 75 || counts[hubA]+counts[hubB] != 200 {
		t.Errorf("hashed allocation over 200 devices: %v (want about 50 a, 150 b, 0 c)", counts)
	}
	// Deterministic: registering again does not move anyone.
	for _, id := range []string{"dev-000", "dev-077", "dev-199"} {
		if st := f.registerMember(t, id, ""); st.RegistrationState.AssignedHub != first[id] || st.RegistrationState.Substatus != dps.SubstatusInitialAssignment {
			t.Errorf("%s moved from %s to %s (%s)", id, first[id], st.RegistrationState.AssignedHub, st.RegistrationState.Substatus)
		}
	}
}

func TestStaticAndGeoLatencyAllocation(t *testing.T) {
	f := newLinkedFixture(t, dps.Config{Region: "west"})
	// Static names a hub that applies no policy: enrollments may still use it.
	f.putGroup(t, &dps.EnrollmentGroup{EnrollmentGroupID: "static", Common: dps.Common{AllocationPolicy: dps.AllocationStatic, IoTHubs: []string{hubC}}})
	if st := f.registerMember(t, "s-1", ""); st.RegistrationState.AssignedHub != hubC {
		t.Errorf("static: %s", st.RegistrationState.AssignedHub)
	}
	// geoLatency: the hub in the DPS's region among the candidates.
	f.putGroup(t, &dps.EnrollmentGroup{EnrollmentGroupID: "static", Common: dps.Common{AllocationPolicy: dps.AllocationGeoLatency, IoTHubs: []string{hubA, hubC}}})
	for i := range 10 {
		if st := f.registerMember(t, fmt.Sprintf("geo-%d", i), ""); st.RegistrationState.AssignedHub != hubC {
			t.Errorf("geoLatency picked %s, want the west hub", st.RegistrationState.AssignedHub)
		}
	}
	bad := []dps.Common{
		{AllocationPolicy: dps.AllocationStatic, IoTHubs: []string{hubA, hubB}},
		{AllocationPolicy: dps.AllocationCustom},
		{AllocationPolicy: dps.AllocationCustom, CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "ftp://x"}},
		{IoTHubs: []string{"not-linked.example"}},
	}
	for _, c := range bad {
		g := &dps.EnrollmentGroup{EnrollmentGroupID: "bad", Common: c}
		g.Attestation = symKey(groupKey, "")
		if _, err := f.svc.PutGroup(context.Background(), "bad", g, ""); code(err) != azerr.DPSInvalidEnrollment {
			t.Errorf("enrollment %+v accepted: %v", c, err)
		}
	}
}

// webhook is a custom allocation function for tests.
type webhook struct {
	mu     sync.Mutex
	seen   []map[string]any
	answer func(req map[string]any) (int, string)
}

func (w *webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req map[string]any
	_ = json.Unmarshal(body, &req)
	w.mu.Lock()
	w.seen = append(w.seen, req)
	answer := w.answer
	w.mu.Unlock()
	status, out := answer(req)
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	_, _ = io.WriteString(rw, out)
}

func TestCustomAllocationWebhook(t *testing.T) {
	wh := &webhook{}
	srv := httptest.NewServer(wh)
	defer srv.Close()
	f := newLinkedFixture(t, dps.Config{WebhookTimeout: 500 * time.Millisecond})
	f.putGroup(t, &dps.EnrollmentGroup{EnrollmentGroupID: "custom", Common: dps.Common{
		AllocationPolicy:           dps.AllocationCustom,
		IoTHubs:                    []string{hubA, hubB},
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: srv.URL + "/alloc?code=secret", APIVersion: "2021-10-01"},
	}})

	wh.answer = func(req map[string]any) (int, string) {
		// A registration without a payload (the re-registration below)
		// has none in its context: answer it all the same.
		ctx, _ := req["deviceRuntimeContext"].(map[string]any)
		payload, _ := ctx["payload"].(map[string]any)
		model, _ := payload["modelId"].(string)
		return 200, `{"iotHubHostName":"` + hubB + `","initialTwin":{"tags":{"model":"` + model + `"},"properties":{"desired":{"rate":7}}},"payload":{"welcome":true}}`
	}
	st := f.registerMember(t, "cust-1", `{"registrationId":"cust-1","payload":{"modelId":"dtmi:x;1"}}`)
	rs := st.RegistrationState
	if st.Status != dps.StatusAssigned || rs.AssignedHub != hubB || string(rs.Payload) != `{"welcome":true}` {
		t.Fatalf("custom allocation: %+v / %+v", st, rs)
	}
	req := wh.seen[0]
	grp := req["enrollmentGroup"].(map[string]any)
	if fmt.Sprint(req["linkedHubs"]) != fmt.Sprint([]any{hubA, hubB}) || grp["enrollmentGroupId"] != "custom" ||
		fmt.Sprint(grp["attestation"]) != "map[type:symmetricKey]" {
		t.Errorf("webhook request: %v", req)
	}
	if raw, _ := json.Marshal(req); strings.Contains(string(raw), groupKey) {
		t.Errorf("the webhook was sent the group key: %s", raw)
	}
	tw, err := hub.NewTwins(f.st, f.reg, nil).Get(context.Background(), hubB, "cust-1")
	if err != nil || string(tw.Tags) != `{"model":"dtmi:x;1"}` || !strings.Contains(string(tw.Properties.Desired), `"rate":7`) {
		t.Errorf("webhook twin: %+v, %v", tw, err)
	}
	// Re-registration tells the webhook where the device is, and is
	// assigned where the webhook says.
	st = f.registerMember(t, "cust-1", "")
	if rs := st.RegistrationState; st.Status != dps.StatusAssigned || rs == nil || rs.AssignedHub != hubB || rs.DeviceID != "cust-1" ||
		rs.Substatus != dps.SubstatusInitialAssignment {
		t.Fatalf("re-registration: %+v / %+v", st, rs)
	}
	if ctx := wh.seen[1]["deviceRuntimeContext"].(map[string]any); ctx["currentIotHubHostName"] != hubB || ctx["currentDeviceId"] != "cust-1" {
		t.Errorf("re-registration context: %v", ctx)
	}

	failures := []struct {
		name   string
		answer func(map[string]any) (int, string)
		code   int
		msg    string
	}{
		{"status 400", func(map[string]any) (int, string) { return 400, `{}` }, 400207, "Custom allocation failed with status code: 400"},
		{"status 500", func(map[string]any) (int, string) { return 500, `` }, 400207, "Custom allocation failed with status code: 500"},
		{"hub not linked", func(map[string]any) (int, string) { return 200, `{"iotHubHostName":"elsewhere.example"}` }, 400208, "not one of the linked hubs"},
		{"hub linked but not the enrollment's", func(map[string]any) (int, string) { return 200, `{"iotHubHostName":"` + hubC + `"}` }, 400208, "not one of the linked hubs"},
		{"no hub", func(map[string]any) (int, string) { return 200, `{}` }, 400208, "no iotHubHostName"},
		{"not JSON", func(map[string]any) (int, string) { return 200, `<html>` }, 400208, "not an AllocationResponse"},
		{"bad twin", func(map[string]any) (int, string) {
			return 200, `{"iotHubHostName":"` + hubA + `","initialTwin":{"tags":{"a":[1]}}}`
		}, 400208, "initialTwin"},
		{"payload not an object", func(map[string]any) (int, string) { return 200, `{"iotHubHostName":"` + hubA + `","payload":5}` }, 400208, "payload"},
		{"timeout", func(map[string]any) (int, string) { time.Sleep(2 * time.Second); return 200, `{}` }, 400207, "did not answer within"},
	}
	for i, c := range failures {
		t.Run(c.name, func(t *testing.T) {
			wh.mu.Lock()
			wh.answer = c.answer
			wh.mu.Unlock()
			regID := fmt.Sprintf("fail-%d", i)
			st := f.registerMember(t, regID, "")
			rs := st.RegistrationState
			if st.Status != dps.StatusFailed || rs == nil || rs.ErrorCode != c.code || !strings.Contains(rs.ErrorMessage, c.msg) {
				t.Errorf("got %+v / %+v; want failed %d %q", st, rs, c.code, c.msg)
			}
			// The service API's registration record says so too.
			rec, err := f.svc.GetRegistration(context.Background(), regID)
			if err != nil || rec.Status != dps.StatusFailed || rec.ErrorCode != c.code || rec.AssignedHub != "" || rec.SymmetricKey == nil {
				t.Errorf("registration record: %+v, %v", rec, err)
			}
		})
	}
	// A failed attempt does not make the device forget its hub: the next
	// call still tells the webhook where the device is.
	wh.mu.Lock()
	wh.answer = func(map[string]any) (int, string) { return 500, `` }
	wh.mu.Unlock()
	if st := f.registerMember(t, "cust-1", ""); st.Status != dps.StatusFailed {
		t.Fatalf("failing webhook: %+v", st)
	}
	wh.mu.Lock()
	wh.answer = func(map[string]any) (int, string) { return 200, `{"iotHubHostName":"` + hubB + `"}` }
	wh.mu.Unlock()
	if st := f.registerMember(t, "cust-1", ""); st.Status != dps.StatusAssigned || st.RegistrationState.Substatus != dps.SubstatusInitialAssignment {
		t.Errorf("after a failed attempt: %+v", st.RegistrationState)
	}
	wh.mu.Lock()
	last := wh.seen[len(wh.seen)-1]
	wh.mu.Unlock()
	if ctx := last["deviceRuntimeContext"].(map[string]any); ctx["currentIotHubHostName"] != hubB {
		t.Errorf("after a failed attempt the webhook was not told the current hub: %v", ctx)
	}

	// Webhook down.
	srv.Close()
	if st := f.registerMember(t, "down-1", ""); st.Status != dps.StatusFailed || st.RegistrationState.ErrorCode != 400207 {
		t.Errorf("webhook down: %+v / %+v", st, st.RegistrationState)
	}
}

func TestReprovisionPolicies(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name      string
		policy    *dps.ReprovisionPolicy
		wantHub   string
		substatus string
		twinHas   string // in the device twin on the hub it ends on
		twinLacks string
	}{
		{"migrate (default)", nil, hubB, dps.SubstatusDataMigrated, `"fw":"1"`, ""},
		{"reset", &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: false}, hubB, dps.SubstatusDataReset, `"rate":5`, `"fw"`},
		{"never", &dps.ReprovisionPolicy{UpdateHubAssignment: false}, hubA, dps.SubstatusInitialAssignment, `"fw":"1"`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newLinkedFixture(t, dps.Config{})
			twins := hub.NewTwins(f.st, f.reg, nil)
			g := &dps.EnrollmentGroup{EnrollmentGroupID: "rp", Common: dps.Common{
				AllocationPolicy: dps.AllocationStatic, IoTHubs: []string{hubA}, ReprovisionPolicy: c.policy,
				InitialTwin: &dps.InitialTwin{Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`{"rate":5}`)}},
			}}
			f.putGroup(t, g)
			if st := f.registerMember(t, "mover", ""); st.RegistrationState.AssignedHub != hubA || st.RegistrationState.Substatus != dps.SubstatusInitialAssignment {
				t.Fatalf("first: %+v", st.RegistrationState)
			}
			if _, err := twins.PatchReported(ctx, hubA, "mover", []byte(`{"fw":"1"}`)); err != nil {
				t.Fatal(err)
			}
			if _, err := f.reg.AuthenticateDevice(ctx, nil, hubA, "mover", memberHubToken(t, f, hubA, "mover")); err != nil {
				t.Fatalf("the device's key does not open hub A: %v", err)
			}
			c2d := hub.NewCloudToDevice(f.st, f.reg, nil, nil)
			if _, err := c2d.Send(ctx, hubA, "mover", &hub.CloudMessage{Body: []byte("queued on A")}); err != nil {
				t.Fatal(err)
			}
			g.IoTHubs = []string{hubB}
			f.putGroup(t, g)
			st := f.registerMember(t, "mover", "")
			if st.RegistrationState.AssignedHub != c.wantHub || st.RegistrationState.Substatus != c.substatus {
				t.Fatalf("after moving the enrollment: %s %s, want %s %s", st.RegistrationState.AssignedHub, st.RegistrationState.Substatus, c.wantHub, c.substatus)
			}
			doc, err := twins.DeviceDocument(ctx, c.wantHub, "mover")
			if err != nil || !strings.Contains(string(doc), c.twinHas) || (c.twinLacks != "" && strings.Contains(string(doc), c.twinLacks)) {
				t.Errorf("twin on %s: %s, %v (want %s, not %q)", c.wantHub, doc, err, c.twinHas, c.twinLacks)
			}
			if c.wantHub == hubA {
				// never: the device stays where it is, queue and all.
				if d, err := f.reg.Show(ctx, hubA, "mover"); err != nil || d.Status != hub.StatusEnabled || d.CloudToDeviceMessageCount != 1 {
					t.Errorf("never: device on hub A: %+v, %v", d, err)
				}
				if _, err := f.reg.Get(ctx, hubB, "mover"); code(err) != azerr.HubDeviceNotFound {
					t.Errorf("never: device on hub B: %v", err)
				}
				return
			}
			// The device left hub A: identity, twin and queue are gone
			// there, so its key no longer opens a session on A.
			assertGone(t, f, hubA, "mover")
			if _, err := f.reg.Get(ctx, hubB, "mover"); err != nil {
				t.Errorf("device on hub B: %v", err)
			}
			// Back to the first hub: now hub B lets it go.
			g.IoTHubs = []string{hubA}
			f.putGroup(t, g)
			if st := f.registerMember(t, "mover", ""); st.RegistrationState.AssignedHub != hubA || st.RegistrationState.Substatus != dps.SubstatusReprovisioned {
				t.Errorf("back home: %+v", st.RegistrationState)
			}
			assertGone(t, f, hubB, "mover")
			if d, err := f.reg.Get(ctx, hubA, "mover"); err != nil || d.Status != hub.StatusEnabled {
				t.Errorf("device back on hub A: %+v, %v", d, err)
			}
		})
	}
}

// assertGone checks that a hub holds nothing of a device: no identity (so
// no authentication), no twin, no queued cloud-to-device message.
func assertGone(t *testing.T, f *fixture, hubName, deviceID string) {
	t.Helper()
	ctx := context.Background()
	if d, err := f.reg.Get(ctx, hubName, deviceID); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("device %s still on %s: %+v, %v", deviceID, hubName, d, err)
	}
	if _, err := f.st.Get(ctx, store.KindTwin, strings.ToLower(hubName)+"/"+deviceID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("twin of %s still on %s: %v", deviceID, hubName, err)
	}
	if n, err := f.st.Count(ctx, store.KindC2D, strings.ToLower(hubName)+"/"+deviceID); err != nil || n != 0 {
		t.Errorf("C2D queue of %s on %s: %d messages, %v", deviceID, hubName, n, err)
	}
	if _, err := f.reg.AuthenticateDevice(ctx, nil, hubName, deviceID, memberHubToken(t, f, hubName, deviceID)); err == nil {
		t.Errorf("device %s still authenticates on %s", deviceID, hubName)
	}
}

// memberHubToken is the hub SAS token of a member of the test group.
func memberHubToken(t *testing.T, f *fixture, hubName, deviceID string) string {
	t.Helper()
	key, err := sas.DeriveKey(groupKey, deviceID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.SignEncoded(hubName+"/devices/"+deviceID, key, "", f.now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// flakyRegistry is a hub registry whose deletes fail while fail is set, as
// when the store behind the hub the device leaves cannot be written.
type flakyRegistry struct {
	*hub.Registry
	fail atomic.Bool
}

func (r *flakyRegistry) Delete(ctx context.Context, hubName, id, ifMatch string) error {
	if r.fail.Load() {
		return errors.New("store unavailable")
	}
	return r.Registry.Delete(ctx, hubName, id, ifMatch)
}

// pendingRemovals returns the removal intents in the store.
func pendingRemovals(t *testing.T, f *fixture) []map[string]any {
	t.Helper()
	recs, err := f.st.List(context.Background(), store.KindHubRemoval, store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, rec := range recs {
		var m map[string]any
		if err := json.Unmarshal(rec.Data, &m); err != nil {
			t.Fatal(err)
		}
		m["index"] = rec.Index
		out = append(out, m)
	}
	return out
}

func TestReprovisionRemovalRetriedAndRecovered(t *testing.T) {
	ctx := context.Background()
	f := newLinkedFixture(t, dps.Config{})
	flaky := &flakyRegistry{Registry: f.reg}
	cfg := dps.Config{IDScope: scope, Now: func() time.Time { return f.now }, LinkedHubs: f.svc.LinkedHubs()}
	svc, err := dps.New(f.st, flaky, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
	g := &dps.EnrollmentGroup{EnrollmentGroupID: "rp", Common: dps.Common{AllocationPolicy: dps.AllocationStatic, IoTHubs: []string{hubA}}}
	f.putGroup(t, g)
	for _, id := range []string{"mover-1", "mover-2"} {
		f.registerMember(t, id, "")
	}
	g.IoTHubs = []string{hubB}
	f.putGroup(t, g)

	// The old hub cannot be written: the assignment to B stands, the
	// device is still on A and the removal is recorded on the
	// registration, with the attempt and its error.
	flaky.fail.Store(true)
	for _, id := range []string{"mover-1", "mover-2"} {
		if st := f.registerMember(t, id, ""); st.Status != dps.StatusAssigned || st.RegistrationState.AssignedHub != hubB {
			t.Fatalf("%s: %+v", id, st.RegistrationState)
		}
		if _, err := f.reg.Get(ctx, hubA, id); err != nil {
			t.Fatalf("%s left hub A although the delete failed: %v", id, err)
		}
	}
	pending := pendingRemovals(t, f)
	if len(pending) != 2 || pending[0]["hub"] != hubA || pending[0]["index"] != "mover-1" ||
		pending[0]["attempts"] != float64(1) || !strings.Contains(fmt.Sprint(pending[0]["lastError"]), "store unavailable") {
		t.Fatalf("pending removals: %v", pending)
	}
	// Not before its backoff.
	flaky.fail.Store(false)
	next, err := svc.RetryRemovals(ctx)
	if err != nil || !next.Equal(f.now.Add(time.Second)) {
		t.Errorf("RetryRemovals before the backoff: next %v, %v", next, err)
	}
	if _, err := f.reg.Get(ctx, hubA, "mover-1"); err != nil {
		t.Errorf("removed before its backoff: %v", err)
	}

	// berth restarts: a new service on the same store finishes mover-2's
	// removal (mover-1's too: both are due).
	f.now = f.now.Add(2 * time.Second)
	restarted, err := dps.New(f.st, f.reg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if next, err := restarted.RetryRemovals(ctx); err != nil || !next.IsZero() {
		t.Errorf("RetryRemovals after the restart: next %v, %v", next, err)
	}
	for _, id := range []string{"mover-1", "mover-2"} {
		assertGone(t, f, hubA, id)
	}
	if p := pendingRemovals(t, f); len(p) != 0 {
		t.Errorf("removals left: %v", p)
	}

	// Away and straight back while the removal from the first hub is
	// still pending: the returning device is assigned afresh, and the old
	// intent does not delete it afterwards.
	flaky.fail.Store(true)
	g.IoTHubs = []string{hubA}
	f.putGroup(t, g)
	f.registerMember(t, "mover-1", "") // B → A; B's delete fails
	g.IoTHubs = []string{hubB}
	f.putGroup(t, g)
	flaky.fail.Store(false)
	if st := f.registerMember(t, "mover-1", ""); st.RegistrationState.AssignedHub != hubB {
		t.Fatalf("A → B: %+v", st.RegistrationState)
	}
	f.now = f.now.Add(time.Hour)
	if _, err := svc.RetryRemovals(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Get(ctx, hubB, "mover-1"); err != nil {
		t.Errorf("the returning device was removed by the old intent: %v", err)
	}
	assertGone(t, f, hubA, "mover-1")
	if p := pendingRemovals(t, f); len(p) != 0 {
		t.Errorf("removals left: %v", p)
	}
}

// Static allocation without a hub list (Microsoft's e2e suite writes such
// enrollments) goes to the DPS's single linked hub, or with several to its
// default hub, whatever the weights and applyAllocationPolicy say.
func TestStaticAllocationWithoutHubList(t *testing.T) {
	ctx := context.Background()
	static := dps.Common{AllocationPolicy: dps.AllocationStatic}

	// One linked hub.
	f := newFixture(t)
	e := &dps.IndividualEnrollment{RegistrationID: "static-1", Common: static}
	e.Attestation = symKey(indivKey, "")
	if _, err := f.svc.PutEnrollment(ctx, "static-1", e, ""); err != nil {
		t.Fatalf("static enrollment without iotHubs refused: %v", err)
	}
	st, err := f.provision(t, "static-1", f.token(t, "static-1", indivKey), "")
	if err != nil || st.Status != dps.StatusAssigned || st.RegistrationState.AssignedHub != hubName {
		t.Fatalf("static, one linked hub: %+v, %v", st, err)
	}

	// Several: the default hub (c: weight 0, applies no allocation policy).
	f = newLinkedFixture(t, dps.Config{DefaultHub: hubC})
	f.putGroup(t, &dps.EnrollmentGroup{EnrollmentGroupID: "static", Common: static})
	for i := range 20 {
		if st := f.registerMember(t, fmt.Sprintf("pinned-%d", i), ""); st.Status != dps.StatusAssigned || st.RegistrationState.AssignedHub != hubC {
			t.Fatalf("static, several hubs: %+v", st.RegistrationState)
		}
	}
	// Without a named default, the first linked hub is the default.
	f = newLinkedFixture(t, dps.Config{})
	f.putGroup(t, &dps.EnrollmentGroup{EnrollmentGroupID: "static", Common: static})
	if st := f.registerMember(t, "pinned-x", ""); st.RegistrationState.AssignedHub != hubA {
		t.Errorf("static, no named default: %+v", st.RegistrationState)
	}
}
