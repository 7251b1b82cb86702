package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/berth-iot/berth/policy"
)

const (
	policyKey1 = "cHJpbWFyeWtleXByaW1hcnlrZXk="
	policyKey2 = "c2Vjb25kYXJ5a2V5c2Vjb25kYXI="
	opsJSON    = `{"keyName":"ops","primaryKey":"` + policyKey1 + `","secondaryKey":"` + policyKey2 + `","rights":["EnrollmentRead"]}`
	policy404  = `{"errorCode":404000,"trackingId":"t-404","message":"Policy ops not found."}`
)

// opsWithConnStrings is opsJSON as create prints it for host.
func opsWithConnStrings(host string) string {
	cs := "HostName=" + host + ";SharedAccessKeyName=ops;SharedAccessKey="
	return strings.TrimSuffix(opsJSON, "}") + `,"primaryConnectionString":"` + cs + policyKey1 + `","secondaryConnectionString":"` + cs + policyKey2 + `"}`
}

// TestPolicyCommands: what each command sends and prints, against a fake
// service. (renew-key is covered against a real berth below: the fake
// accepts no query parameter but api-version.)
func TestPolicyCommands(t *testing.T) {
	clearEnv(t)
	runServiceCases(t, nil, []serviceCase{
		{
			name:     "list the DPS's",
			args:     []string{"policy", "list"},
			replies:  []reply{{status: 200, body: "[" + opsJSON + "]"}},
			wantReqs: []string{"GET /policies"},
			wantOut:  "[" + opsJSON + "]",
		},
		{
			name:     "list a hub's, az's --hub-name",
			args:     []string{"policy", "list", "--hub-name", "hub.example"},
			replies:  []reply{{status: 200, body: "[]"}},
			wantReqs: []string{"GET /hubs/hub.example/policies"},
			wantOut:  "[]",
		},
		{
			name:     "show by argument",
			args:     []string{"policy", "show", "ops"},
			replies:  []reply{{status: 200, body: opsJSON}},
			wantReqs: []string{"GET /policies/ops"},
			wantOut:  opsJSON,
		},
		{
			name:     "show a hub's with -n",
			args:     []string{"policy", "show", "-n", "ops", "--hub", "hub.example"},
			replies:  []reply{{status: 200, body: opsJSON}},
			wantReqs: []string{"GET /hubs/hub.example/policies/ops"},
			wantOut:  opsJSON,
		},
		{
			name:    "show not found",
			args:    []string{"policy", "show", "--name", "ops"},
			replies: []reply{{status: 404, body: policy404}},
			wantErr: "404 Not Found (errorCode 404000): Policy ops not found.", wantReqs: []string{"GET /policies/ops"},
		},
		{
			name:     "create prints the connection strings",
			args:     []string{"policy", "create", "--name", "ops", "--rights", "EnrollmentRead, EnrollmentWrite", "--rights", "RegistrationStatusRead"},
			replies:  []reply{{status: 404, body: policy404}, {status: 201, body: opsJSON}},
			wantReqs: []string{"GET /policies/ops", `PUT /policies/ops {"rights":["EnrollmentRead","EnrollmentWrite","RegistrationStatusRead"]}`},
			wantOut:  opsWithConnStrings(fakeHost),
		},
		{
			name: "create a hub's with keys",
			args: []string{"policy", "create", "--policy-name", "ops", "--hub", "hub.example", "--permissions", "DeviceConnect",
				"--primary-key", policyKey1, "--secondary-key", policyKey2},
			replies:  []reply{{status: 404, body: policy404}, {status: 201, body: opsJSON}},
			wantReqs: []string{"GET /hubs/hub.example/policies/ops", `PUT /hubs/hub.example/policies/ops {"rights":["DeviceConnect"],"primaryKey":"` + policyKey1 + `","secondaryKey":"` + policyKey2 + `"}`},
			wantOut:  opsWithConnStrings("hub.example"),
		},
		{
			name:     "create refuses to change an existing policy",
			args:     []string{"policy", "create", "ops", "--rights", "ServiceConfig"},
			replies:  []reply{{status: 200, body: opsJSON}},
			wantReqs: []string{"GET /policies/ops"},
			wantErr:  "already exists; use `berth policy update`",
		},
		{
			name:    "create needs rights",
			args:    []string{"policy", "create", "ops"},
			wantErr: "--rights",
		},
		{
			name:     "update the rights",
			args:     []string{"policy", "update", "ops", "--rights", "EnrollmentWrite"},
			replies:  []reply{{status: 200, body: opsJSON}, {status: 200, body: opsJSON}},
			wantReqs: []string{"GET /policies/ops", `PUT /policies/ops {"rights":["EnrollmentWrite"]}`},
			wantOut:  opsJSON,
		},
		{
			name:     "update a key keeps the rights",
			args:     []string{"policy", "update", "ops", "--hub", "hub.example", "--secondary-key", policyKey2},
			replies:  []reply{{status: 200, body: opsJSON}, {status: 200, body: opsJSON}},
			wantReqs: []string{"GET /hubs/hub.example/policies/ops", `PUT /hubs/hub.example/policies/ops {"rights":["EnrollmentRead"],"secondaryKey":"` + policyKey2 + `"}`},
			wantOut:  opsJSON,
		},
		{
			name:     "update never creates",
			args:     []string{"policy", "update", "ops", "--rights", "EnrollmentWrite"},
			replies:  []reply{{status: 404, body: policy404}},
			wantReqs: []string{"GET /policies/ops"},
			wantErr:  "404",
		},
		{
			name:    "update with nothing to change",
			args:    []string{"policy", "update", "ops"},
			wantErr: "nothing to update",
		},
		{
			name:    "update with empty rights",
			args:    []string{"policy", "update", "ops", "--rights", ""},
			wantErr: "at least one right",
		},
		{
			name:     "delete",
			args:     []string{"policy", "delete", "--name", "ops"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /policies/ops"},
			wantOut:  "-",
		},
		{
			name:     "delete a hub's",
			args:     []string{"policy", "delete", "ops", "--hub", "hub.example"},
			replies:  []reply{{status: 204}},
			wantReqs: []string{"DELETE /hubs/hub.example/policies/ops"},
			wantOut:  "-",
		},
		{
			name:     "delete refused",
			args:     []string{"policy", "delete", "provisioningserviceowner"},
			replies:  []reply{{status: 400, body: `{"errorCode":400000,"trackingId":"t","message":"At least one policy must keep the ServiceConfig right."}`}},
			wantReqs: []string{"DELETE /policies/provisioningserviceowner"},
			wantErr:  "ServiceConfig",
		},
		{
			name:    "renew-key needs a known key",
			args:    []string{"policy", "renew-key", "ops", "--renew-key", "tertiary"},
			wantErr: "--renew-key \"tertiary\": use primary, secondary or swap",
		},
		{
			name:    "renew-key needs --renew-key",
			args:    []string{"policy", "renew-key", "ops"},
			wantErr: "--renew-key",
		},
		{
			name:    "no name",
			args:    []string{"policy", "show"},
			wantErr: "--name",
		},
		{
			name:    "the name twice",
			args:    []string{"policy", "delete", "a", "--name", "b"},
			wantErr: "given twice",
		},
	})
}

// printedPolicy is a policy as create and renew-key print it.
type printedPolicy struct {
	policy.Policy
	Primary   string `json:"primaryConnectionString"`
	Secondary string `json:"secondaryConnectionString"`
}

// TestPolicyAgainstBerth: the commands against a real berth, proving that
// rights and keys take effect at once: a policy with EnrollmentRead only
// can list enrollments but not create one, a renewed key refuses the
// connection strings of the old one, a swap keeps both working, and the
// last ServiceConfig policy cannot go.
func TestPolicyAgainstBerth(t *testing.T) {
	clearEnv(t)
	clearHubEnv(t)
	dir := startBerth(t)
	const hubName = "hub.berth.test" // startBerth's
	// berth runs a command on the local berth as the owner, or with
	// connStr (its CA and address still come from client.json).
	berth := func(connStr string, args ...string) (string, error) {
		t.Helper()
		pre := []string{"--data-dir", dir}
		if connStr != "" {
			pre = append(pre, "--connection-string", connStr)
		}
		out, _, err := run(t, append(pre, args...)...)
		if err != nil && out != "" {
			t.Errorf("%v: printed %q on error", args, out)
		}
		return out, err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := berth("", args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	printed := func(args ...string) printedPolicy {
		t.Helper()
		var p printedPolicy
		if err := json.Unmarshal([]byte(must(args...)), &p); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return p
	}
	fails := func(connStr, want string, args ...string) {
		t.Helper()
		if _, err := berth(connStr, args...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: err %v, want %q", args, err, want)
		}
	}
	works := func(connStr string, args ...string) {
		t.Helper()
		if _, err := berth(connStr, args...); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	const refused = "401 Unauthorized (errorCode 401002)"

	if out := must("policy", "list"); !strings.Contains(out, `"keyName": "provisioningserviceowner"`) {
		t.Errorf("list: %s", out)
	}

	// A reader: it may list enrollments, not create one, nor manage
	// policies.
	reader := printed("policy", "create", "--name", "reader", "--rights", "EnrollmentRead")
	wantCS := "HostName=127.0.0.1;SharedAccessKeyName=reader;SharedAccessKey="
	if reader.Primary != wantCS+reader.PrimaryKey || reader.Secondary != wantCS+reader.SecondaryKey || strings.Join(reader.Rights, ",") != "EnrollmentRead" {
		t.Fatalf("created %+v", reader)
	}
	works(reader.Primary, "enrollment", "list")
	fails(reader.Primary, refused, "enrollment", "create", "e1")
	fails(reader.Primary, refused, "policy", "list")
	fails("", "already exists", "policy", "create", "--name", "reader", "--rights", "ServiceConfig")

	// Granting EnrollmentWrite lets the same connection string write.
	if out := must("policy", "update", "reader", "--rights", "EnrollmentRead,EnrollmentWrite"); !strings.Contains(out, "EnrollmentWrite") {
		t.Errorf("update: %s", out)
	}
	works(reader.Primary, "enrollment", "create", "e1")
	works(reader.Primary, "enrollment", "delete", "e1")

	// Renewing the primary key refuses the old one at once; the secondary
	// is untouched.
	renewed := printed("policy", "renew-key", "--name", "reader", "--renew-key", "primary")
	if renewed.PrimaryKey == reader.PrimaryKey || renewed.SecondaryKey != reader.SecondaryKey || renewed.Secondary != reader.Secondary {
		t.Fatalf("renewed %+v after %+v", renewed, reader)
	}
	fails(reader.Primary, refused, "enrollment", "list")
	works(renewed.Primary, "enrollment", "list")
	works(renewed.Secondary, "enrollment", "list")

	// Swapping exchanges the keys: both connection strings keep working.
	swapped := printed("policy", "renew-key", "reader", "--rk", "Swap")
	if swapped.Primary != renewed.Secondary || swapped.Secondary != renewed.Primary {
		t.Fatalf("swapped %+v after %+v", swapped, renewed)
	}
	works(swapped.Primary, "enrollment", "list")
	works(swapped.Secondary, "enrollment", "list")

	// The last ServiceConfig policy cannot go, nor lose the right.
	fails("", "At least one policy must keep the ServiceConfig right", "policy", "delete", "provisioningserviceowner")
	fails("", "ServiceConfig", "policy", "update", "provisioningserviceowner", "--rights", "EnrollmentRead")
	works("", "policy", "show", "provisioningserviceowner")

	must("policy", "delete", "--name", "reader")
	fails("", "404", "policy", "show", "reader")
	fails(swapped.Primary, refused, "enrollment", "list")

	// A hub policy with DeviceConnect only: its connection strings name
	// the hub, and it grants no registry access.
	gw := printed("policy", "create", "--hub", hubName, "--name", "gateway", "--rights", "DeviceConnect")
	if gw.Primary != "HostName="+hubName+";SharedAccessKeyName=gateway;SharedAccessKey="+gw.PrimaryKey || strings.Join(gw.Rights, ",") != "DeviceConnect" {
		t.Fatalf("hub policy %+v", gw)
	}
	if _, _, err := run(t, "--data-dir", dir, "hub", "--hub-connection-string", gw.Primary, "device-identity", "list"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("hub registry with DeviceConnect only: %v, want 401", err)
	}
	gw2 := printed("policy", "renew-key", "--hub", hubName, "--name", "gateway", "--renew-key", "secondary")
	if gw2.PrimaryKey != gw.PrimaryKey || gw2.SecondaryKey == gw.SecondaryKey || !strings.HasPrefix(gw2.Secondary, "HostName="+hubName+";") {
		t.Errorf("hub renew %+v after %+v", gw2, gw)
	}
	if out := must("policy", "list", "--hub", strings.ToUpper(hubName)); !strings.Contains(out, gw2.SecondaryKey) || !strings.Contains(out, `"iothubowner"`) {
		t.Errorf("hub list: %s", out)
	}
	must("policy", "delete", "--hub", hubName, "gateway")
	fails("", "404", "policy", "show", "--hub", hubName, "gateway")
	fails("", "other.hub", "policy", "list", "--hub", "other.hub")
}
