package rest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// hubB is the second hub of the directory fixture; hubName is its default.
const hubB = "hub-b.berth.test"

// dirFixture is the REST fixture serving a directory of two hubs, hubName
// (the default) and hubB, as server.go wires it.
type dirFixture struct {
	*fixture
	dir *hub.Directory
}

func newDirFixture(t *testing.T) *dirFixture {
	t.Helper()
	f := newFixture(t)
	dir, err := hub.LoadDirectory(context.Background(), f.st, f.reg, hubName, f.now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dir.Create(context.Background(), hub.HubInfo{Name: hubB, AllocationWeight: 1, ApplyAllocationPolicy: true}, f.now); err != nil {
		t.Fatal(err)
	}
	f.hubCfg.Hubs = dir
	f.h = NewHandler(Config{Hosts: []string{dpsHost}, Logger: f.logger, Now: func() time.Time { return f.now }, Hub: f.hubCfg}, f.svc, f.settings)
	// Registered after newFixture's log check, so it runs before it: the
	// keys of every hub served at the end (renewed ones included, the
	// tests add the others) must stay out of the logs too.
	t.Cleanup(func() {
		for _, info := range dir.List() {
			if s, ok := dir.Lookup(info.Name); ok {
				for _, p := range s.Settings.Policies {
					*f.secrets = append(*f.secrets, p.PrimaryKey, p.SecondaryKey)
				}
			}
		}
	})
	return &dirFixture{fixture: f, dir: dir}
}

// served is a hub of the directory.
func (f *dirFixture) served(t *testing.T, name string) *hub.Served {
	t.Helper()
	s, ok := f.dir.Lookup(name)
	if !ok {
		t.Fatalf("no hub %s", name)
	}
	return s
}

// ownerOf is an iothubowner token of the hub name, as the SDKs sign it
// from that hub's connection string.
func (f *dirFixture) ownerOf(t *testing.T, name string) string {
	t.Helper()
	p, _ := f.served(t, name).Settings.Policy(hub.OwnerPolicy)
	*f.secrets = append(*f.secrets, p.PrimaryKey, p.SecondaryKey)
	tok, err := sas.Sign(name, p.PrimaryKey, p.KeyName, f.now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// at sends a request to host, as a client whose connection string names
// it does.
func (f *dirFixture) at(host, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	r := request(method, target, body, hdr...)
	r.Host = host
	return f.do(r)
}

// createOn creates a device on a hub directly in the registry.
func (f *dirFixture) createOn(t *testing.T, hubName, id string) *hub.Device {
	t.Helper()
	d, err := f.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	*f.secrets = append(*f.secrets, d.Keys()...)
	return d
}

// deviceTokenOn signs a device token for hubName/devices/id.
func deviceTokenOn(t *testing.T, hubName, id, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.SignEncoded(hubName+"/devices/"+id, key, "", expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestHubsIsolateRegistries: a device created on hub B (Host: hub B) is
// B's alone, and each hub takes only its own policies' tokens, whatever
// the Host's spelling; a Host that names no hub reaches the default hub.
func TestHubsIsolateRegistries(t *testing.T) {
	f := newDirFixture(t)
	ownerA, ownerB := f.ownerOf(t, hubName), f.ownerOf(t, hubB)
	rec := f.at(hubB, http.MethodPut, "/devices/d1", `{"deviceId":"d1"}`, "Authorization", ownerB)
	if rec.Code != http.StatusOK {
		t.Fatalf("create on B: %d %s", rec.Code, rec.Body)
	}
	*f.secrets = append(*f.secrets, decode[*hub.Device](t, rec).Keys()...)

	// A token signed with A's owner key for B's name: right audience,
	// wrong hub's key.
	pA, _ := f.served(t, hubName).Settings.Policy(hub.OwnerPolicy)
	aKeyForB, err := sas.Sign(hubB, pA.PrimaryKey, pA.KeyName, f.now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// And B's own key signed for A's name: the right key, but a token
	// for another hub.
	pB, _ := f.served(t, hubB).Settings.Policy(hub.OwnerPolicy)
	bKeyForA, err := sas.Sign(hubName, pB.PrimaryKey, pB.KeyName, f.now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, host, token string
		want              int
		code              azerr.Code // for errors
	}{
		{"B on B", hubB, ownerB, http.StatusOK, azerr.Code{}},
		{"B on B, Host with a port", hubB + ":443", ownerB, http.StatusOK, azerr.Code{}},
		{"B on B, Host in upper case", strings.ToUpper(hubB), ownerB, http.StatusOK, azerr.Code{}},
		{"A on A", hubName, ownerA, http.StatusNotFound, azerr.HubDeviceNotFound},
		{"A on the DPS host (the default hub)", dpsHost, ownerA, http.StatusNotFound, azerr.HubDeviceNotFound},
		{"A on an address that is no hub (the default hub)", "10.1.2.3:443", ownerA, http.StatusNotFound, azerr.HubDeviceNotFound},
		{"A's token on B", hubB, ownerA, http.StatusUnauthorized, azerr.HubUnauthorizedAccess},
		{"B's token on A", hubName, ownerB, http.StatusUnauthorized, azerr.HubUnauthorizedAccess},
		{"A's key for B's name on B", hubB, aKeyForB, http.StatusUnauthorized, azerr.HubUnauthorizedAccess},
		{"B's key for A's name on B", hubB, bKeyForA, http.StatusUnauthorized, azerr.HubUnauthorizedAccess},
		{"B's token on the DPS host (the default hub)", dpsHost, ownerB, http.StatusUnauthorized, azerr.HubUnauthorizedAccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := f.at(tt.host, http.MethodGet, "/devices/d1", "", "Authorization", tt.token)
			if tt.want != http.StatusOK {
				checkHubError(t, rec, tt.code)
				return
			}
			if rec.Code != http.StatusOK || decode[*hub.Device](t, rec).DeviceID != "d1" {
				t.Errorf("%d %s", rec.Code, rec.Body)
			}
		})
	}

	// The lists and statistics are per hub too.
	for _, tt := range []struct {
		host, token string
		want        []string
	}{
		{hubName, ownerA, []string{}},
		{hubB, ownerB, []string{"d1"}},
	} {
		rec := f.at(tt.host, http.MethodGet, "/devices", "", "Authorization", tt.token)
		ids := []string{}
		for _, d := range decode[[]*hub.Device](t, rec) {
			ids = append(ids, d.DeviceID)
			*f.secrets = append(*f.secrets, d.Keys()...)
		}
		if rec.Code != http.StatusOK || !slices.Equal(ids, tt.want) {
			t.Errorf("list on %s: %d %v, want %v", tt.host, rec.Code, ids, tt.want)
		}
		rec = f.at(tt.host, http.MethodGet, "/statistics/devices", "", "Authorization", tt.token)
		if st := decode[deviceStatistics](t, rec); st.Total != len(tt.want) {
			t.Errorf("statistics on %s: %+v, want %d devices", tt.host, st, len(tt.want))
		}
	}
}

// TestHubsRoutesActOnTheHostsHub: telemetry, twins, C2D and methods act on
// the hub the Host names, with that hub's name. A device of the same ID on
// each hub proves the two are never mixed up.
func TestHubsRoutesActOnTheHostsHub(t *testing.T) {
	f := newDirFixture(t)
	ownerA, ownerB := f.ownerOf(t, hubName), f.ownerOf(t, hubB)
	devA, devB := f.createOn(t, hubName, "d1"), f.createOn(t, hubB, "d1")
	tokA := deviceTokenOn(t, hubName, "d1", devA.Keys()[0], f.now.Add(time.Hour))
	tokB := deviceTokenOn(t, hubB, "d1", devB.Keys()[0], f.now.Add(time.Hour))

	// Telemetry: stamped with the Host's hub, which is the stream subject's.
	for _, tt := range []struct{ host, token, want string }{{hubB, tokB, hubB}, {hubName, tokA, hubName}} {
		f.sink.reset()
		rec := f.at(tt.host, http.MethodPost, devicePath("d1"), "x", "Authorization", tt.token)
		if msgs := f.sink.messages(); rec.Code != http.StatusNoContent || len(msgs) != 1 || msgs[0].Hub != tt.want {
			t.Errorf("telemetry on %s: %d %s, messages %v", tt.host, rec.Code, rec.Body, msgs)
		}
	}
	// A device token for B's d1 is B's alone.
	checkHubError(t, f.at(hubName, http.MethodPost, devicePath("d1"), "x", "Authorization", tokB), azerr.HubUnauthorizedAccess)
	checkHubError(t, f.at(dpsHost, http.MethodPost, devicePath("d1"), "x", "Authorization", tokB), azerr.HubUnauthorizedAccess)

	// Twins: a tag set through B is on B's twin only.
	rec := f.at(hubB, http.MethodPatch, "/twins/d1", `{"tags":{"hub":"b"}}`, "Authorization", ownerB)
	if rec.Code != http.StatusOK {
		t.Fatalf("patch on B: %d %s", rec.Code, rec.Body)
	}
	for _, tt := range []struct{ host, token, want string }{{hubB, ownerB, `"hub":"b"`}, {hubName, ownerA, `"tags":{}`}} {
		rec := f.at(tt.host, http.MethodGet, "/twins/d1", "", "Authorization", tt.token)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), tt.want) {
			t.Errorf("twin on %s: %d %s, want %s", tt.host, rec.Code, rec.Body, tt.want)
		}
	}

	// C2D: sent through B, received by B's d1 only.
	rec = f.at(hubB, http.MethodPost, "/devices/d1/messages/deviceBound", "for b", "Authorization", ownerB)
	if rec.Code != http.StatusOK {
		t.Fatalf("send on B: %d %s", rec.Code, rec.Body)
	}
	if rec := f.at(hubName, http.MethodGet, "/devices/d1/messages/deviceBound", "", "Authorization", tokA); rec.Code != http.StatusNoContent {
		t.Errorf("A's d1 received %d %q", rec.Code, rec.Body)
	}
	rec = f.at(hubB, http.MethodGet, "/devices/d1/messages/deviceBound", "", "Authorization", tokB)
	if rec.Code != http.StatusOK || rec.Body.String() != "for b" {
		t.Fatalf("B's d1 received %d %q", rec.Code, rec.Body)
	}
	etag, _ := raw(rec, "ETag")
	lock := strings.Trim(etag, `"`)
	if lock == "" {
		t.Fatalf("no lock token: %v", rec.Header())
	}
	// Settling B's message through A fails: the lock is not A's d1's.
	checkHubError(t, f.at(hubName, http.MethodDelete, "/devices/d1/messages/deviceBound/"+url.PathEscape(lock), "", "Authorization", tokA), azerr.HubMessageLockLost)
	if rec := f.at(hubB, http.MethodDelete, "/devices/d1/messages/deviceBound/"+url.PathEscape(lock), "", "Authorization", tokB); rec.Code != http.StatusNoContent {
		t.Errorf("complete on B: %d %s", rec.Code, rec.Body)
	}
	// A purge through A leaves B's queue alone.
	f.at(hubB, http.MethodPost, "/devices/d1/messages/deviceBound", "again", "Authorization", ownerB)
	if rec := f.at(hubName, http.MethodDelete, "/devices/d1/commands", "", "Authorization", ownerA); !strings.Contains(rec.Body.String(), `"totalMessagesPurged":0`) {
		t.Errorf("purge on A: %d %s", rec.Code, rec.Body)
	}
	if rec := f.at(hubB, http.MethodDelete, "/devices/d1/commands", "", "Authorization", ownerB); !strings.Contains(rec.Body.String(), `"totalMessagesPurged":1`) {
		t.Errorf("purge on B: %d %s", rec.Code, rec.Body)
	}

	// Methods: a device only B has is offline there and unknown on A.
	f.createOn(t, hubB, "only-b")
	body := `{"methodName":"m","responseTimeoutInSeconds":5}`
	checkHubError(t, f.at(hubB, http.MethodPost, "/twins/only-b/methods", body, "Authorization", ownerB), azerr.HubDeviceNotOnline)
	checkHubError(t, f.at(hubName, http.MethodPost, "/twins/only-b/methods", body, "Authorization", ownerA), azerr.HubDeviceNotFound)
}

// TestHubsPoliciesFollowTheDirectory: /hubs/{hub}/policies manages the
// policies the hub's routes authenticate with, hub by hub.
func TestHubsPoliciesFollowTheDirectory(t *testing.T) {
	f := newDirFixture(t)
	oldB := f.ownerOf(t, hubB)
	rec := f.policyCall(t, http.MethodGet, "/hubs/"+strings.ToUpper(hubB)+"/policies/iothubowner", "")
	got := f.wantPolicy(t, rec, http.StatusOK)
	if p, _ := f.served(t, hubB).Settings.Policy(hub.OwnerPolicy); got.PrimaryKey != p.PrimaryKey {
		t.Errorf("B's owner key through the policy route is not B's")
	}
	if pA, _ := f.served(t, hubName).Settings.Policy(hub.OwnerPolicy); got.PrimaryKey == pA.PrimaryKey {
		t.Errorf("B shares A's owner key")
	}
	f.wantPolicy(t, f.policyCall(t, http.MethodPost, "/hubs/"+hubB+"/policies/iothubowner/renewKey?keyType=primary", ""), http.StatusOK)
	checkHubError(t, f.at(hubB, http.MethodGet, "/devices", "", "Authorization", oldB), azerr.HubUnauthorizedAccess)
	if rec := f.at(hubB, http.MethodGet, "/devices", "", "Authorization", f.ownerOf(t, hubB)); rec.Code != http.StatusOK {
		t.Errorf("renewed key on B: %d %s", rec.Code, rec.Body)
	}
	// A's key is untouched.
	if rec := f.at(hubName, http.MethodGet, "/devices", "", "Authorization", f.ownerOf(t, hubName)); rec.Code != http.StatusOK {
		t.Errorf("A after renewing B: %d %s", rec.Code, rec.Body)
	}
	for _, name := range []string{"other.hub", hubB + ":443"} {
		checkError(t, f.policyCall(t, http.MethodGet, "/hubs/"+name+"/policies", ""), 404000)
	}
}

// wantHub checks a hub answer.
func wantHub(t *testing.T, rec *httptest.ResponseRecorder, status int, want hubWire) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d: %s", rec.Code, status, rec.Body)
	}
	checkCommon(t, rec)
	if got := decode[hubWire](t, rec); got != want {
		t.Errorf("hub\n got %+v\nwant %+v", got, want)
	}
}

// TestHubManagementLifecycle: create, read, update field by field, list,
// delete, with each change live on the hub routes, and a deleted hub's
// devices and policies gone with it.
func TestHubManagementLifecycle(t *testing.T) {
	f := newDirFixture(t)
	const hubC = "hub-c.berth.test"
	created := f.now.UTC()

	rec := f.policyCall(t, http.MethodGet, "/hubs?api-version=2021-10-01", "")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"region":""`) {
		t.Fatalf("list: %d %s", rec.Code, rec.Body)
	}
	if got := decode[[]hubWire](t, rec); len(got) != 2 || got[0].Name != hubName || got[1].Name != hubB {
		t.Errorf("list %+v", got)
	}

	// Created with the defaults from an empty body, then changed one field
	// at a time: what a body leaves out stays.
	c := hubWire{Name: hubC, AllocationWeight: 1, ApplyAllocationPolicy: true, CreatedTime: created, PartitionCount: hub.DefaultPartitionCount}
	wantHub(t, f.policyCall(t, http.MethodPut, "/hubs/"+hubC+"?api-version=2021-10-01", ""), http.StatusCreated, c)
	f.now = f.now.Add(time.Minute) // an update keeps createdTime
	c.AllocationWeight, c.Region = 5, "eu"
	wantHub(t, f.policyCall(t, http.MethodPut, "/hubs/"+hubC, `{"allocationWeight":5,"region":"eu"}`), http.StatusOK, c)
	c.ApplyAllocationPolicy = false
	wantHub(t, f.policyCall(t, http.MethodPut, "/hubs/"+strings.ToUpper(hubC), `{"applyAllocationPolicy":false}`), http.StatusOK, c)
	// A hub read and written back, zero values included.
	c.AllocationWeight, c.Region = 0, ""
	wantHub(t, f.policyCall(t, http.MethodPut, "/hubs/"+hubC, `{"name":"Hub-C.berth.test","allocationWeight":0,"applyAllocationPolicy":false,"region":"","createdTime":"2000-01-01T00:00:00Z"}`), http.StatusOK, c)
	wantHub(t, f.policyCall(t, http.MethodGet, "/hubs/HUB-C.berth.test", ""), http.StatusOK, c)
	if info := f.served(t, hubC).Info; info.AllocationWeight != 0 || info.ApplyAllocationPolicy || info.Region != "" {
		t.Errorf("directory holds %+v", info)
	}

	// The new hub serves at once, with its own policies.
	oldC := f.ownerOf(t, hubC)
	if rec := f.at(hubC, http.MethodPut, "/devices/dc", `{}`, "Authorization", oldC); rec.Code != http.StatusOK {
		t.Fatalf("device on C: %d %s", rec.Code, rec.Body)
	} else {
		*f.secrets = append(*f.secrets, decode[*hub.Device](t, rec).Keys()...)
	}

	rec = f.policyCall(t, http.MethodDelete, "/hubs/"+hubC, "")
	if rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Fatalf("delete: %d %q", rec.Code, rec.Body)
	}
	checkError(t, f.policyCall(t, http.MethodGet, "/hubs/"+hubC, ""), 404000)
	checkError(t, f.policyCall(t, http.MethodDelete, "/hubs/"+hubC, ""), 404000)
	checkError(t, f.policyCall(t, http.MethodGet, "/hubs/"+hubC+"/policies", ""), 404000)
	if got := decode[[]hubWire](t, f.policyCall(t, http.MethodGet, "/hubs", "")); len(got) != 2 {
		t.Errorf("list after delete: %+v", got)
	}
	// Its name now reaches the default hub, where C's token is refused.
	checkHubError(t, f.at(hubC, http.MethodGet, "/devices/dc", "", "Authorization", oldC), azerr.HubUnauthorizedAccess)

	// Recreated, it starts empty, with new keys.
	wantHub(t, f.policyCall(t, http.MethodPut, "/hubs/"+hubC, `{}`), http.StatusCreated,
		hubWire{Name: hubC, AllocationWeight: 1, ApplyAllocationPolicy: true, CreatedTime: f.now.UTC(), PartitionCount: hub.DefaultPartitionCount})
	checkHubError(t, f.at(hubC, http.MethodGet, "/devices/dc", "", "Authorization", oldC), azerr.HubUnauthorizedAccess)
	checkHubError(t, f.at(hubC, http.MethodGet, "/devices/dc", "", "Authorization", f.ownerOf(t, hubC)), azerr.HubDeviceNotFound)
}

// TestHubManagementErrors: refusals in the DPS format, and nothing
// changed by them.
func TestHubManagementErrors(t *testing.T) {
	f := newDirFixture(t)
	exp := f.now.Add(time.Hour)
	tests := []struct {
		name, method, target, body, token string
		code                              int
	}{
		{"no token", http.MethodGet, "/hubs", "", "-", 401000},
		{"enrollment reader", http.MethodGet, "/hubs", "", serviceToken(t, dpsHost, f.reader, exp), 401002},
		{"a hub's owner", http.MethodPut, "/hubs/x.test", "{}", f.ownerOf(t, hubName), 401002},
		{"unauthorised, bad body not looked at", http.MethodPut, "/hubs/x.test", "{", "-", 401000},
		{"unauthorised, unknown hub not revealed", http.MethodDelete, "/hubs/nope.test", "", serviceToken(t, dpsHost, f.reader, exp), 401002},
		{"not a host name", http.MethodPut, "/hubs/bad_name", "{}", "", 400000},
		{"weight out of range", http.MethodPut, "/hubs/x.test", `{"allocationWeight":1001}`, "", 400000},
		{"weight out of range on update", http.MethodPut, "/hubs/" + hubB, `{"allocationWeight":-1}`, "", 400000},
		{"body names another hub", http.MethodPut, "/hubs/x.test", `{"name":"y.test"}`, "", 400000},
		{"body not an object", http.MethodPut, "/hubs/x.test", `[1]`, "", 400101},
		{"body of the wrong type", http.MethodPut, "/hubs/x.test", `{"allocationWeight":"many"}`, "", 400101},
		{"the default hub", http.MethodDelete, "/hubs/" + strings.ToUpper(hubName), "", "", 400000},
		{"unknown hub", http.MethodGet, "/hubs/nope.test", "", "", 404000},
		{"unknown hub deleted", http.MethodDelete, "/hubs/nope.test", "", "", 404000},
		{"a name with a port", http.MethodGet, "/hubs/" + hubB + ":443", "", "", 404000},
		{"method not allowed", http.MethodPost, "/hubs/" + hubB, "{}", "", 405000},
		{"method not allowed on the list", http.MethodDelete, "/hubs", "", "", 405000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := []string{"Content-Type", "application/json"}
			switch tt.token {
			case "":
				hdr = append(hdr, "Authorization", f.ownerToken(t))
			case "-":
			default:
				hdr = append(hdr, "Authorization", tt.token)
			}
			checkError(t, f.do(request(tt.method, tt.target, tt.body, hdr...)), tt.code)
		})
	}
	want := []hub.HubInfo{{Name: hubName, AllocationWeight: 1, ApplyAllocationPolicy: true, Created: f.now.UTC()},
		{Name: hubB, AllocationWeight: 1, ApplyAllocationPolicy: true, Created: f.now.UTC()}}
	if got := f.dir.List(); !reflect.DeepEqual(got, want) {
		t.Errorf("hubs after the refusals\n got %+v\nwant %+v", got, want)
	}
}

// TestHubManagementWithoutDirectory: a handler built without a directory
// (one fixed hub) has no hub management, and says so.
func TestHubManagementWithoutDirectory(t *testing.T) {
	f := newFixture(t)
	for _, r := range []struct{ method, target, body string }{
		{http.MethodGet, "/hubs", ""},
		{http.MethodGet, "/hubs/" + hubName, ""},
		{http.MethodPut, "/hubs/x.test", "{}"},
		{http.MethodDelete, "/hubs/" + hubName, ""},
	} {
		e := checkError(t, f.policyCall(t, r.method, r.target, r.body), 404000)
		if !strings.Contains(e.Message, "not enabled") {
			t.Errorf("%s %s: %q", r.method, r.target, e.Message)
		}
	}
	// Its one hub's policies are still managed.
	if rec := f.policyCall(t, http.MethodGet, "/hubs/"+hubName+"/policies", ""); rec.Code != http.StatusOK {
		t.Errorf("policies of the fixed hub: %d %s", rec.Code, rec.Body)
	}
}

// Consumer groups under ARM's path, and the Event Hubs settings of a hub:
// partitions fixed at creation, retention changeable.
func TestHubConsumerGroupsAndPartitions(t *testing.T) {
	f := newDirFixture(t)
	const hubC = "hub-c.berth.test"
	base := "/hubs/" + hubB + "/eventHubEndpoints/events/ConsumerGroups"
	rec := f.policyCall(t, http.MethodGet, base, "")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"name":"$Default"`) {
		t.Fatalf("list: %d %s", rec.Code, rec.Body)
	}
	if rec := f.policyCall(t, http.MethodPut, base+"/analytics", `{"properties":{"name":"analytics"}}`); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"name":"analytics"`) {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	if !f.served(t, hubB).Info.HasConsumerGroup("ANALYTICS") {
		t.Error("the directory has no group analytics")
	}
	if rec := f.policyCall(t, http.MethodGet, base+"/analytics", ""); rec.Code != http.StatusOK {
		t.Errorf("get: %d %s", rec.Code, rec.Body)
	}
	if rec := f.policyCall(t, http.MethodPut, base+"/bad%20name", ""); rec.Code != http.StatusBadRequest {
		t.Errorf("bad name: %d %s", rec.Code, rec.Body)
	}
	if rec := f.policyCall(t, http.MethodDelete, base+"/$Default", ""); rec.Code != http.StatusBadRequest {
		t.Errorf("delete $Default: %d %s", rec.Code, rec.Body)
	}
	if rec := f.policyCall(t, http.MethodDelete, base+"/analytics", ""); rec.Code != http.StatusNoContent {
		t.Errorf("delete: %d %s", rec.Code, rec.Body)
	}
	if rec := f.policyCall(t, http.MethodDelete, base+"/analytics", ""); rec.Code != http.StatusNotFound {
		t.Errorf("delete again: %d %s", rec.Code, rec.Body)
	}

	rec = f.policyCall(t, http.MethodPut, "/hubs/"+hubC, `{"partitionCount":8,"retentionDays":2}`)
	if got := decode[hubWire](t, rec); rec.Code != http.StatusCreated || got.PartitionCount != 8 || got.RetentionDays != 2 {
		t.Fatalf("create with partitions: %d %+v", rec.Code, got)
	}
	if rec := f.policyCall(t, http.MethodPut, "/hubs/"+hubC, `{"partitionCount":4}`); rec.Code != http.StatusBadRequest {
		t.Errorf("changing the partition count: %d %s", rec.Code, rec.Body)
	}
	if rec := f.policyCall(t, http.MethodPut, "/hubs/"+hubC, `{"retentionDays":9}`); rec.Code != http.StatusBadRequest {
		t.Errorf("retention 9 days: %d %s", rec.Code, rec.Body)
	}
	rec = f.policyCall(t, http.MethodPut, "/hubs/"+hubC, `{"retentionDays":1}`)
	if got := decode[hubWire](t, rec); rec.Code != http.StatusOK || got.PartitionCount != 8 || got.RetentionDays != 1 {
		t.Errorf("update retention: %d %+v", rec.Code, got)
	}
}
