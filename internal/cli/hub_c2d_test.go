package cli

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
)

const c2dSent = `{"messageId":"m1","sequenceNumber":1704164645000000000,"enqueuedTimeUtc":"2024-01-02T03:04:05.123Z","expiryTimeUtc":"2024-01-02T04:04:05.123Z"}`

func TestHubC2DCommands(t *testing.T) {
	clearHubEnv(t)
	const send = "POST /devices/d1/messages/deviceBound ct=application/vnd.microsoft.iothub.json "
	ok := reply{status: 200, body: c2dSent}
	notFound := reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound"}, body: hubNotFound}
	runHubCases(t, []string{"c2d"}, []hubCase{
		{
			name: "send with every property",
			args: []string{"send", "d1", "--data", "hello", "--message-id", "m1", "--correlation-id", "c1", "--user-id", "u1", "--ack", "FULL",
				"--content-type", "text/plain", "--content-encoding", "utf-8", "--expiry", "2030-01-02T04:04:05+01:00", "--props", "a=1;b=x=y;a=2;"},
			replies: []reply{ok},
			wantReqs: []string{send + `{"body":"aGVsbG8=","base64Encoded":true,"properties":{"iothub-messageid":"m1","iothub-correlationid":"c1",` +
				`"iothub-userid":"u1","iothub-expiry":"2030-01-02T03:04:05Z","iothub-contenttype":"text/plain","iothub-contentencoding":"utf-8",` +
				`"iothub-ack":"full","iothub-app-a":"2","iothub-app-b":"x=y"}}`},
			wantOut: c2dSent,
		},
		{
			name: "send with az's names",
			args: []string{"send", "-d", "d1", "--da", "hi", "--mid", "m2", "--cid", "c2", "--uid", "u2", "--ct", "application/json", "--ce", "utf-8",
				"--expiry-time-utc", "1893553445000", "--properties", "p=1"},
			replies: []reply{ok},
			wantReqs: []string{send + `{"body":"aGk=","base64Encoded":true,"properties":{"iothub-messageid":"m2","iothub-correlationid":"c2",` +
				`"iothub-userid":"u2","iothub-expiry":"2030-01-02T03:04:05Z","iothub-contenttype":"application/json","iothub-contentencoding":"utf-8",` +
				`"iothub-app-p":"1"}}`},
			wantOut: c2dSent,
		},
		{
			name:     "send a binary file",
			args:     []string{"send", "d1", "--data-file", writeTemp(t, "body.bin", []byte{0, 1, 0xff, 'b', 'i', 'n'}), "--ack", "none"},
			replies:  []reply{ok},
			wantReqs: []string{send + `{"body":"AAH/Ymlu","base64Encoded":true,"properties":{"iothub-ack":"none"}}`},
			wantOut:  c2dSent,
		},
		{
			name:     "send an empty message",
			args:     []string{"send", "d1"},
			replies:  []reply{ok},
			wantReqs: []string{send + `{"body":"","base64Encoded":true,"properties":{}}`},
			wantOut:  c2dSent,
		},
		{
			name:     "send to a missing device",
			args:     []string{"send", "nope", "--data", "x"},
			replies:  []reply{notFound},
			wantReqs: []string{`POST /devices/nope/messages/deviceBound ct=application/vnd.microsoft.iothub.json {"body":"eA==","base64Encoded":true,"properties":{}}`},
			wantErr:  "send to device nope: iot hub: 404 Not Found (DeviceNotFound): Device nope not found.",
		},
		{
			name: "send to a full queue",
			args: []string{"send", "d1", "--data", "x"},
			replies: []reply{{status: 403, header: map[string]string{"iothub-errorcode": "DeviceMaximumQueueDepthExceeded"},
				body: `{"Message":"ErrorCode:DeviceMaximumQueueDepthExceeded;Device d1 has 50 messages queued, the maximum.","ExceptionMessage":""}`}},
			wantReqs: []string{send + `{"body":"eA==","base64Encoded":true,"properties":{}}`},
			wantErr:  "403 Forbidden (DeviceMaximumQueueDepthExceeded): Device d1 has 50 messages queued, the maximum.",
		},
		{
			name:    "send with --data and --data-file",
			args:    []string{"send", "d1", "--data", "x", "--data-file", "f"},
			wantErr: "none of the others can be",
		},
		{
			name:    "send with a missing --data-file",
			args:    []string{"send", "d1", "--data-file", "no-such-file"},
			wantErr: "--data-file: open no-such-file",
		},
		{
			name:    "send with a bad --ack",
			args:    []string{"send", "d1", "--ack", "sometimes"},
			wantErr: `--ack "sometimes": use none, positive, negative or full`,
		},
		{
			name:    "send with a bad --expiry",
			args:    []string{"send", "d1", "--expiry", "tomorrow"},
			wantErr: `--expiry "tomorrow"`,
		},
		{
			name:    "send with bad --props",
			args:    []string{"send", "d1", "--props", "a=1;flag"},
			wantErr: `--props "flag": want name=value pairs`,
		},
		{
			name:     "purge",
			args:     []string{"purge", "d1"},
			replies:  []reply{{status: 200, body: `{"totalMessagesPurged":3,"deviceId":"d1","moduleId":null}`}},
			wantReqs: []string{"DELETE /devices/d1/commands"},
			wantOut:  `{"totalMessagesPurged":3,"deviceId":"d1","moduleId":null}`,
		},
		{
			name:     "purge a missing device",
			args:     []string{"purge", "-d", "nope"},
			replies:  []reply{notFound},
			wantReqs: []string{"DELETE /devices/nope/commands"},
			wantErr:  "purge the queue of nope: iot hub: 404 Not Found (DeviceNotFound)",
		},
	})
}

// TestHubC2DSendFromStdin: --data-file - reads the body from stdin.
func TestHubC2DSendFromStdin(t *testing.T) {
	clearHubEnv(t)
	f := newHubFake(t, reply{status: 200, body: c2dSent})
	out, err := runStdin(t, "from stdin\n", append([]string{"hub", "c2d", "send", "d1", "--data-file", "-"}, f.flags()...)...)
	checkRun(t, f, err, out, "", c2dSent,
		[]string{`POST /devices/d1/messages/deviceBound ct=application/vnd.microsoft.iothub.json {"body":"ZnJvbSBzdGRpbgo=","base64Encoded":true,"properties":{}}`})
}

func TestParseExpiry(t *testing.T) {
	now := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"10m", now.Add(10 * time.Minute), ""},
		{" 1h30m ", now.Add(90 * time.Minute), ""},
		{"2030-01-02T03:04:05Z", time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), ""},
		{"2030-01-02T04:04:05.5+01:00", time.Date(2030, 1, 2, 3, 4, 5, 5e8, time.UTC), ""},
		{"1893553445000", time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), ""},
		{"0s", time.Time{}, "must be positive"},
		{"-5m", time.Time{}, "must be positive"},
		{"-1", time.Time{}, "want a lifetime"},
		{"2030-01-02", time.Time{}, "want a lifetime"},
		{"", time.Time{}, "want a lifetime"},
	} {
		got, err := parseExpiry(tt.in, now)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseExpiry(%q): err %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseExpiry(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseAppProps(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    []hub.Property
		wantErr bool
	}{
		{"a=1;b=2", []hub.Property{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}}, false},
		{"z=1; a=2 ;", []hub.Property{{Name: "z", Value: "1"}, {Name: "a", Value: "2 "}}, false},
		{"k=v=w;e=", []hub.Property{{Name: "k", Value: "v=w"}, {Name: "e", Value: ""}}, false},
		{"a=1;b=2;a=3", []hub.Property{{Name: "a", Value: "3"}, {Name: "b", Value: "2"}}, false},
		{"", nil, false},
		{"a", nil, true},
		{"=1", nil, true},
	} {
		got, err := parseAppProps(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseAppProps(%q): err %v", tt.in, err)
			continue
		}
		if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseAppProps(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
