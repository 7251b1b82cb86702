package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/localconf"
)

const (
	hubBJSON   = `{"name":"hub-b.example","allocationWeight":1,"applyAllocationPolicy":true,"createdTime":"2024-05-01T10:00:00Z"}`
	hub404     = `{"errorCode":404000,"trackingId":"t-404","message":"Hub hub-b.example not found."}`
	ownerJSON  = `{"keyName":"iothubowner","primaryKey":"` + policyKey1 + `","secondaryKey":"` + policyKey2 + `","rights":["RegistryWrite"]}`
	hubBOwnerC = "HostName=hub-b.example;SharedAccessKeyName=iothubowner;SharedAccessKey=" + policyKey1
)

// TestHubManageCommands: what each command sends and prints, against a
// fake service.
func TestHubManageCommands(t *testing.T) {
	clearHubEnv(t)
	created := strings.TrimSuffix(hubBJSON, "}") + `,"connectionString":"` + hubBOwnerC + `"}`
	runServiceCases(t, nil, []serviceCase{
		{
			name:     "list",
			args:     []string{"hub", "list"},
			replies:  []reply{{status: 200, body: "[" + hubBJSON + "]"}},
			wantReqs: []string{"GET /hubs"},
			wantOut:  "[" + hubBJSON + "]",
		},
		{
			name:     "list none prints an empty array",
			args:     []string{"hub", "list"},
			replies:  []reply{{status: 200, body: "[]"}},
			wantReqs: []string{"GET /hubs"},
			wantOut:  "[]",
		},
		{
			name:     "show, az's --hub-name",
			args:     []string{"hub", "show", "--hub-name", "hub-b.example"},
			replies:  []reply{{status: 200, body: hubBJSON}},
			wantReqs: []string{"GET /hubs/hub-b.example"},
			wantOut:  hubBJSON,
		},
		{
			name:     "show not found",
			args:     []string{"hub", "show", "-n", "hub-b.example"},
			replies:  []reply{{status: 404, body: hub404}},
			wantReqs: []string{"GET /hubs/hub-b.example"},
			wantErr:  "404 Not Found (errorCode 404000): Hub hub-b.example not found.",
		},
		{
			name:    "create with the defaults prints the owner connection string",
			args:    []string{"hub", "create", "--name", "hub-b.example"},
			replies: []reply{{status: 404, body: hub404}, {status: 201, body: hubBJSON}, {status: 200, body: ownerJSON}},
			wantReqs: []string{"GET /hubs/hub-b.example",
				`PUT /hubs/hub-b.example {"allocationWeight":1,"applyAllocationPolicy":true,"region":""}`,
				"GET /hubs/hub-b.example/policies/iothubowner"},
			wantOut: created,
		},
		{
			name:    "create with every flag",
			args:    []string{"hub", "create", "hub-b.example", "--allocation-weight", "7", "--apply-allocation-policy=false", "--region", "eu"},
			replies: []reply{{status: 404, body: hub404}, {status: 201, body: hubBJSON}, {status: 200, body: ownerJSON}},
			wantReqs: []string{"GET /hubs/hub-b.example",
				`PUT /hubs/hub-b.example {"allocationWeight":7,"applyAllocationPolicy":false,"region":"eu"}`,
				"GET /hubs/hub-b.example/policies/iothubowner"},
			wantOut: created,
		},
		{
			name:     "create refuses to change an existing hub",
			args:     []string{"hub", "create", "hub-b.example"},
			replies:  []reply{{status: 200, body: hubBJSON}},
			wantReqs: []string{"GET /hubs/hub-b.example"},
			wantErr:  "already exists; use `berth hub update`",
		},
		{
			name:     "create refused by the service",
			args:     []string{"hub", "create", "bad_name"},
			replies:  []reply{{status: 404, body: hub404}, {status: 400, body: `{"errorCode":400000,"trackingId":"t","message":"Hub name \"bad_name\" is not a valid host name."}`}},
			wantReqs: []string{"GET /hubs/bad_name", `PUT /hubs/bad_name {"allocationWeight":1,"applyAllocationPolicy":true,"region":""}`},
			wantErr:  "not a valid host name",
		},
		{
			name:     "update sends only what is given",
			args:     []string{"hub", "update", "hub-b.example", "--region", "eu"},
			replies:  []reply{{status: 200, body: hubBJSON}, {status: 200, body: hubBJSON}},
			wantReqs: []string{"GET /hubs/hub-b.example", `PUT /hubs/hub-b.example {"region":"eu"}`},
			wantOut:  hubBJSON,
		},
		{
			name:     "update to zero values",
			args:     []string{"hub", "update", "hub-b.example", "--allocation-weight", "0", "--apply-allocation-policies=false"},
			replies:  []reply{{status: 200, body: hubBJSON}, {status: 200, body: hubBJSON}},
			wantReqs: []string{"GET /hubs/hub-b.example", `PUT /hubs/hub-b.example {"allocationWeight":0,"applyAllocationPolicy":false}`},
			wantOut:  hubBJSON,
		},
		{
			name:     "update never creates",
			args:     []string{"hub", "update", "hub-b.example", "--region", "eu"},
			replies:  []reply{{status: 404, body: hub404}},
			wantReqs: []string{"GET /hubs/hub-b.example"},
			wantErr:  "404",
		},
		{
			name:    "update with nothing to change",
			args:    []string{"hub", "update", "hub-b.example"},
			wantErr: "nothing to update",
		},
		{
			name:     "delete",
			args:     []string{"hub", "delete", "--name", "hub-b.example"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /hubs/hub-b.example"},
			wantOut:  "-",
		},
		{
			name:     "delete the default hub refused",
			args:     []string{"hub", "delete", "hub-a.example"},
			replies:  []reply{{status: 400, body: `{"errorCode":400000,"trackingId":"t","message":"Hub hub-a.example is this berth's default hub (--hub-name) and cannot be deleted."}`}},
			wantReqs: []string{"DELETE /hubs/hub-a.example"},
			wantErr:  "default hub",
		},
		{
			name:    "no name",
			args:    []string{"hub", "show"},
			wantErr: "--name",
		},
		{
			name:    "the name twice",
			args:    []string{"hub", "delete", "a", "--name", "b"},
			wantErr: "given twice",
		},
	})
}

// TestHubManageAgainstBerth: a second hub created on a real berth serves
// its own registry and twins through its own connection string, and its
// name, the default hub's key, or the default hub's commands reach
// nothing of it; deleted, its connection string stops working.
func TestHubManageAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	dir := startBerth(t)
	const hubA, hubB = "hub.berth.test", "hub-b.berth.test" // hubA is startBerth's
	info, err := localconf.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	// berth runs a command on the local berth; hubConnStr, when set, is
	// the hub connection string. hub-b.berth.test does not resolve: the
	// address and CA of client.json are given as they would be for any
	// hub but the one client.json names.
	berth := func(hubConnStr string, args ...string) (string, error) {
		t.Helper()
		pre := []string{"--data-dir", dir}
		if hubConnStr != "" {
			pre = append(pre, "--address", info.HTTPSAddress, "--ca-file", info.CAFile, "hub", "--hub-connection-string", hubConnStr)
		} else {
			pre = append(pre, "hub")
		}
		out, _, err := run(t, append(pre, args...)...)
		if err != nil && out != "" {
			t.Errorf("%v: printed %q on error", args, out)
		}
		return out, err
	}
	must := func(hubConnStr string, args ...string) string {
		t.Helper()
		out, err := berth(hubConnStr, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	fails := func(hubConnStr, want string, args ...string) {
		t.Helper()
		if _, err := berth(hubConnStr, args...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: err %v, want %q", args, err, want)
		}
	}
	names := func(out string) []string {
		t.Helper()
		var list []hub.HubInfo
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("list %q: %v", out, err)
		}
		var ns []string
		for _, h := range list {
			ns = append(ns, h.Name)
		}
		return ns
	}

	if got := names(must("", "list")); strings.Join(got, ",") != hubA {
		t.Errorf("hubs at start: %v", got)
	}
	var b createdHub
	if err := json.Unmarshal([]byte(must("", "create", "--name", hubB, "--allocation-weight", "3", "--region", "eu")), &b); err != nil {
		t.Fatal(err)
	}
	if b.Name != hubB || b.AllocationWeight != 3 || !b.ApplyAllocationPolicy || b.Region != "eu" ||
		!strings.HasPrefix(b.ConnectionString, "HostName="+hubB+";SharedAccessKeyName=iothubowner;SharedAccessKey=") {
		t.Fatalf("created %+v", b)
	}
	fails("", "already exists", "create", hubB)
	if got := names(must("", "list")); strings.Join(got, ",") != hubA+","+hubB {
		t.Errorf("hubs after create: %v", got)
	}
	if out := must("", "update", hubB, "--apply-allocation-policy=false"); !strings.Contains(out, `"allocationWeight": 3`) ||
		!strings.Contains(out, `"applyAllocationPolicy": false`) || !strings.Contains(out, `"region": "eu"`) {
		t.Errorf("update: %s", out)
	}
	if out := must("", "show", strings.ToUpper(hubB)); !strings.Contains(out, `"applyAllocationPolicy": false`) {
		t.Errorf("show: %s", out)
	}

	// B's registry and twins, through B's connection string; the default
	// hub (client.json's connection string) sees none of it.
	must(b.ConnectionString, "device-identity", "create", "d-b")
	if out := must(b.ConnectionString, "device-identity", "list"); !strings.Contains(out, `"d-b"`) {
		t.Errorf("B's devices: %s", out)
	}
	if out := must("", "device-identity", "list"); strings.Contains(out, `"d-b"`) {
		t.Errorf("A lists B's device: %s", out)
	}
	if out := must(b.ConnectionString, "device-twin", "update", "d-b", "--tags", `{"hub":"b"}`); !strings.Contains(out, `"hub": "b"`) {
		t.Errorf("B's twin: %s", out)
	}
	fails("", "404 Not Found (DeviceNotFound)", "device-twin", "show", "d-b")
	// A's owner key under B's name is refused by B.
	aKeyForB := strings.Replace(info.HubConnectionString, "HostName="+hubA, "HostName="+hubB, 1)
	fails(aKeyForB, "401", "device-identity", "list")

	fails("", "default hub", "delete", hubA)
	must("", "delete", hubB)
	fails("", "404", "show", hubB)
	// B's name now reaches the default hub, which does not know B's key.
	fails(b.ConnectionString, "401", "device-identity", "list")
	if got := names(must("", "list")); strings.Join(got, ",") != hubA {
		t.Errorf("hubs after delete: %v", got)
	}
}
