package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const hubTwinJSON = `{"deviceId":"d1","etag":"AAAAAAAAAAI=","deviceEtag":"AAAAAAAAAAE=","status":"enabled","statusReason":null,` +
	`"statusUpdateTime":"0001-01-01T00:00:00Z","connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z",` +
	`"cloudToDeviceMessageCount":0,"authenticationType":"sas","x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},` +
	`"capabilities":{"iotEdge":false},"version":3,"tags":{"floor":3},` +
	`"properties":{"desired":{"rate":5,"$metadata":{"$lastUpdated":"2024-01-02T03:04:05.0000000Z"},"$version":2},` +
	`"reported":{"$metadata":{"$lastUpdated":"2024-01-02T03:04:05.0000000Z"},"$version":1}}}`

// runStdin is run with stdin.
func runStdin(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := NewRoot(&out, &errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// writeTemp writes a file for a command to read.
func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHubDeviceTwinCommands(t *testing.T) {
	clearHubEnv(t)
	ok := reply{status: 200, body: hubTwinJSON}
	notFound := reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound"}, body: hubNotFound}
	stale := reply{status: 412, header: map[string]string{"iothub-errorcode": "PreconditionFailed"},
		body: `{"Message":"ErrorCode:PreconditionFailed;The twin's etag does not match If-Match."}`}
	shown := writeTemp(t, "twin.json", []byte(hubTwinJSON))
	runHubCases(t, []string{"device-twin"}, []hubCase{
		{
			name:     "show by argument",
			args:     []string{"show", "d1"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /twins/d1"},
			wantOut:  hubTwinJSON,
		},
		{
			name:     "show by --device-id, escaped as one segment",
			args:     []string{"show", "-d", "a/b c"},
			replies:  []reply{ok},
			wantReqs: []string{"GET /twins/a%2Fb%20c"},
			wantOut:  hubTwinJSON,
		},
		{
			name:     "show not found",
			args:     []string{"show", "nope"},
			replies:  []reply{notFound},
			wantReqs: []string{"GET /twins/nope"},
			wantErr:  "show twin of nope: iot hub: 404 Not Found (DeviceNotFound): Device nope not found. [trackingId t-404]",
		},
		{
			name:    "show needs an ID",
			args:    []string{"show"},
			wantErr: "give the ID",
		},
		{
			name:     "update tags and desired, unconditionally",
			args:     []string{"update", "d1", "--tags", `{"floor":3}`, "--desired", `{"rate":5,"old":null}`},
			replies:  []reply{ok},
			wantReqs: []string{`PATCH /twins/d1 {"tags":{"floor":3},"properties":{"desired":{"rate":5,"old":null}}}`},
			wantOut:  hubTwinJSON,
		},
		{
			name:     "update desired only, under an etag",
			args:     []string{"update", "-d", "d1", "--desired", `{"rate":6}`, "--etag", "AAAAAAAAAAI="},
			replies:  []reply{ok},
			wantReqs: []string{`PATCH /twins/d1 if-match="AAAAAAAAAAI=" {"properties":{"desired":{"rate":6}}}`},
			wantOut:  hubTwinJSON,
		},
		{
			name:     "update tags only, the etag lost the race",
			args:     []string{"update", "d1", "--tags", `{"floor":4}`, "--etag", "old"},
			replies:  []reply{stale},
			wantReqs: []string{`PATCH /twins/d1 if-match="old" {"tags":{"floor":4}}`},
			wantErr:  "update twin of d1: iot hub: 412 Precondition Failed (PreconditionFailed): The twin's etag does not match If-Match.",
		},
		{
			name:    "update with nothing to update",
			args:    []string{"update", "d1"},
			wantErr: "give --tags, --desired or both",
		},
		{
			name:    "update with tags that are not an object",
			args:    []string{"update", "d1", "--tags", `[1]`},
			wantErr: "--tags must be a JSON object",
		},
		{
			name:     "replace with inline JSON: what it leaves out is emptied",
			args:     []string{"replace", "d1", "--json", `{"tags":{"room":"a"}}`},
			replies:  []reply{ok},
			wantReqs: []string{`PUT /twins/d1 {"tags":{"room":"a"},"properties":{"desired":{}}}`},
			wantOut:  hubTwinJSON,
		},
		{
			name:    "replace with the output of show, under its etag",
			args:    []string{"replace", "-d", "d1", "--json", shown, "--etag", "AAAAAAAAAAI="},
			replies: []reply{ok},
			wantReqs: []string{`PUT /twins/d1 if-match="AAAAAAAAAAI=" {"tags":{"floor":3},` +
				`"properties":{"desired":{"rate":5,"$metadata":{"$lastUpdated":"2024-01-02T03:04:05.0000000Z"},"$version":2}}}`},
			wantOut: hubTwinJSON,
		},
		{
			name:     "replace of a missing device",
			args:     []string{"replace", "nope", "--json", `{}`},
			replies:  []reply{notFound},
			wantReqs: []string{`PUT /twins/nope {"tags":{},"properties":{"desired":{}}}`},
			wantErr:  "replace twin of nope: iot hub: 404 Not Found (DeviceNotFound)",
		},
		{
			name:    "replace needs --json",
			args:    []string{"replace", "d1"},
			wantErr: "give the twin with --json",
		},
		{
			name:    "replace with neither JSON nor a file",
			args:    []string{"replace", "d1", "--json", "no-such-file.json"},
			wantErr: "--json is neither JSON nor a file",
		},
		{
			name:    "replace with a file that is not JSON",
			args:    []string{"replace", "d1", "--json", writeTemp(t, "bad.json", []byte("{tags"))},
			wantErr: "is not valid JSON",
		},
		{
			name:    "replace with an array",
			args:    []string{"replace", "d1", "--json", `[{"tags":{}}]`},
			wantErr: "--json must be a JSON object",
		},
		{
			name:    "replace with tags that are not an object",
			args:    []string{"replace", "d1", "--json", `{"tags":"x"}`},
			wantErr: "tags must be a JSON object",
		},
	})
}

// TestHubDeviceTwinReplaceFromStdin: --json - reads the twin from stdin.
func TestHubDeviceTwinReplaceFromStdin(t *testing.T) {
	clearHubEnv(t)
	f := newHubFake(t, reply{status: 200, body: hubTwinJSON})
	out, err := runStdin(t, `{"tags":null,"properties":{"desired":{"mode":"eco"}}}`,
		append([]string{"hub", "device-twin", "replace", "d1", "--json", "-"}, f.flags()...)...)
	checkRun(t, f, err, out, "", hubTwinJSON, []string{`PUT /twins/d1 {"tags":{},"properties":{"desired":{"mode":"eco"}}}`})
}

func TestHubInvokeMethodCommand(t *testing.T) {
	clearHubEnv(t)
	hubErr := func(status int, name, msg string) reply {
		return reply{status: status, header: map[string]string{"iothub-errorcode": name},
			body: `{"Message":"ErrorCode:` + name + `;` + msg + `","ExceptionMessage":"Tracking ID:t-1-TimeStamp:01/02/2024 03:04:05"}`}
	}
	answer := `{"status":200,"payload":{"rebooting":true}}`
	runHubCases(t, []string{"invoke-device-method"}, []hubCase{
		{
			name:     "az's defaults: payload {}, 30 s to answer, already connected",
			args:     []string{"d1", "--method-name", "reboot"},
			replies:  []reply{{status: 200, body: answer}},
			wantReqs: []string{`POST /twins/d1/methods {"methodName":"reboot","payload":{},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`},
			wantOut:  answer,
		},
		{
			name:     "az's short names",
			args:     []string{"-d", "d1", "--mn", "reboot", "--mp", `{"delay": 5}`, "--to", "10", "--connect-timeout", "20"},
			replies:  []reply{{status: 200, body: answer}},
			wantReqs: []string{`POST /twins/d1/methods {"methodName":"reboot","payload":{"delay":5},"responseTimeoutInSeconds":10,"connectTimeoutInSeconds":20}`},
			wantOut:  answer,
		},
		{
			name:     "payload from a file; the device's error status is an answer",
			args:     []string{"d1", "--mn", "set", "--method-payload", writeTemp(t, "p.json", []byte(` ["a", 1] `))},
			replies:  []reply{{status: 200, body: `{"status":500,"payload":{"error":"busy"}}`}},
			wantReqs: []string{`POST /twins/d1/methods {"methodName":"set","payload":["a",1],"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`},
			wantOut:  `{"status":500,"payload":{"error":"busy"}}`,
		},
		{
			name:     "a scalar payload",
			args:     []string{"d1", "--mn", "set", "--mp", "42"},
			replies:  []reply{{status: 200, body: `{"status":200,"payload":null}`}},
			wantReqs: []string{`POST /twins/d1/methods {"methodName":"set","payload":42,"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`},
			wantOut:  `{"status":200,"payload":null}`,
		},
		{
			name:     "device not online",
			args:     []string{"d1", "--mn", "reboot"},
			replies:  []reply{hubErr(404, "DeviceNotOnline", "Timed out waiting for device d1 to connect.")},
			wantReqs: []string{`POST /twins/d1/methods {"methodName":"reboot","payload":{},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`},
			wantErr:  "invoke method reboot on device d1: iot hub: 404 Not Found (DeviceNotOnline): Timed out waiting for device d1 to connect. [trackingId t-1]",
		},
		{
			name:     "device did not answer",
			args:     []string{"d1", "--mn", "reboot", "--to", "5"},
			replies:  []reply{hubErr(504, "GatewayTimeout", "Timed out waiting for the response from device d1.")},
			wantReqs: []string{`POST /twins/d1/methods {"methodName":"reboot","payload":{},"responseTimeoutInSeconds":5,"connectTimeoutInSeconds":0}`},
			wantErr:  "504 Gateway Timeout (GatewayTimeout): Timed out waiting for the response from device d1.",
		},
		{
			name:     "the hub checks the timeouts",
			args:     []string{"d1", "--mn", "reboot", "--timeout", "1"},
			replies:  []reply{hubErr(400, "ArgumentInvalid", "responseTimeoutInSeconds must be between 5 and 300.")},
			wantReqs: []string{`POST /twins/d1/methods {"methodName":"reboot","payload":{},"responseTimeoutInSeconds":1,"connectTimeoutInSeconds":0}`},
			wantErr:  "400 Bad Request (ArgumentInvalid): responseTimeoutInSeconds must be between 5 and 300.",
		},
		{
			name:     "device not found",
			args:     []string{"nope", "--mn", "reboot"},
			replies:  []reply{{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound"}, body: hubNotFound}},
			wantReqs: []string{`POST /twins/nope/methods {"methodName":"reboot","payload":{},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`},
			wantErr:  "404 Not Found (DeviceNotFound)",
		},
		{
			name:    "needs a method name",
			args:    []string{"d1"},
			wantErr: "give the method with --method-name",
		},
		{
			name:    "a payload that is neither JSON nor a file",
			args:    []string{"d1", "--mn", "m", "--mp", "{oops"},
			wantErr: "--method-payload is neither JSON nor a file",
		},
	})
}
