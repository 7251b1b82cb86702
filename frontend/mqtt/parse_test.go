package mqtt

import (
	"net/url"
	"reflect"
	"testing"
)

func TestParseDPSUsername(t *testing.T) {
	tests := []struct {
		name     string
		username string
		scope    string
		regID    string
		query    url.Values
		wantErr  bool
	}{
		{
			name:     "vector 1 no UA",
			username: "0neFEEDC0DE/registrations/myRegistrationId/api-version=2019-03-31",
			scope:    "0neFEEDC0DE", regID: "myRegistrationId",
			query: url.Values{"api-version": {"2019-03-31"}},
		},
		{
			name:     "vector 2 raw UA with slash",
			username: "0neFEEDC0DE/registrations/myRegistrationId/api-version=2019-03-31&ClientVersion=c/1.2.3",
			scope:    "0neFEEDC0DE", regID: "myRegistrationId",
			query: url.Values{"api-version": {"2019-03-31"}, "ClientVersion": {"c/1.2.3"}},
		},
		{
			name:     "vector 23 python encoded UA",
			username: "0ne00000A0A/registrations/my-device/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11.4%3BLinux%20%231%20SMP%3Bx86_64%29",
			scope:    "0ne00000A0A", regID: "my-device",
			query: url.Values{"api-version": {"2019-03-31"}, "ClientVersion": {"azure-iot-device-provisioning-py/2.14.0(3.11.4;Linux #1 SMP;x86_64)"}},
		},
		{
			name:     "node encodeURIComponent UA",
			username: "0ne00000A0A/registrations/my-device/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.2",
			scope:    "0ne00000A0A", regID: "my-device",
			query: url.Values{"api-version": {"2019-03-31"}, "ClientVersion": {"azure-iot-provisioning-device/1.9.2"}},
		},
		{
			name:     "c sdk",
			username: "0ne00000A0A/registrations/dev.1:a_b/api-version=2021-06-01&ClientVersion=1.15.0",
			scope:    "0ne00000A0A", regID: "dev.1:a_b",
			query: url.Values{"api-version": {"2021-06-01"}, "ClientVersion": {"1.15.0"}},
		},
		{
			name:     "csr preview api-version",
			username: "0ne00000A0A/registrations/my-device/api-version=2025-07-01-preview",
			scope:    "0ne00000A0A", regID: "my-device",
			query: url.Values{"api-version": {"2025-07-01-preview"}},
		},
		{
			name:     "bare",
			username: "0ne00000A0A/registrations/my-device",
			scope:    "0ne00000A0A", regID: "my-device", query: url.Values{},
		},
		{
			name:     "bare with trailing slash",
			username: "0ne00000A0A/registrations/my-device/",
			scope:    "0ne00000A0A", regID: "my-device", query: url.Values{},
		},
		{
			name:     "unknown keys kept, empty pairs skipped, key without value",
			username: "s/registrations/d/foo=bar&&api-version=2021-10-01&flag&",
			scope:    "s", regID: "d",
			query: url.Values{"foo": {"bar"}, "api-version": {"2021-10-01"}, "flag": {""}},
		},
		{
			name:     "plus is not a space",
			username: "s/registrations/d/api-version=1&ClientVersion=a+b",
			scope:    "s", regID: "d",
			query: url.Values{"api-version": {"1"}, "ClientVersion": {"a+b"}},
		},
		{
			name:     "invalid escape kept raw",
			username: "s/registrations/d/ClientVersion=100%&api-version=%zz",
			scope:    "s", regID: "d",
			query: url.Values{"ClientVersion": {"100%"}, "api-version": {"%zz"}},
		},
		{
			name:     "duplicate key keeps both, first wins in Get",
			username: "s/registrations/d/api-version=first&api-version=second",
			scope:    "s", regID: "d",
			query: url.Values{"api-version": {"first", "second"}},
		},
		{
			name:     "keys are case-sensitive",
			username: "s/registrations/d/clientVersion=x",
			scope:    "s", regID: "d",
			query: url.Values{"clientVersion": {"x"}},
		},
		{name: "empty", username: "", wantErr: true},
		{name: "scope only", username: "0ne00000A0A", wantErr: true},
		{name: "empty scope", username: "/registrations/d/api-version=1", wantErr: true},
		{name: "wrong second segment", username: "0ne/registration/d/api-version=1", wantErr: true},
		{name: "second segment case", username: "0ne/Registrations/d/api-version=1", wantErr: true},
		{name: "no registration ID", username: "0ne/registrations", wantErr: true},
		{name: "empty registration ID", username: "0ne/registrations/", wantErr: true},
		{name: "empty registration ID with query", username: "0ne/registrations//api-version=1", wantErr: true},
		{name: "missing slash before query", username: "0ne/registrations/d?api-version=1", wantErr: true},
		{name: "missing slash, no question mark", username: "0ne/registrations/dapi-version=1", wantErr: true},
		{name: "hub device form", username: "hub.azure-devices.net/dev1/?api-version=2021-04-12", wantErr: true},
		{name: "hub device named registrations", username: "hub.azure-devices.net/registrations/?api-version=2021-04-12", wantErr: true},
		{name: "hub module of device registrations", username: "hub.azure-devices.net/registrations/mod1/?api-version=2021-04-12", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scope, regID, query, err := ParseDPSUsername(tt.username)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseDPSUsername(%q) = %q, %q, %v; want an error", tt.username, scope, regID, query)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseDPSUsername(%q): %v", tt.username, err)
			}
			if scope != tt.scope || regID != tt.regID {
				t.Errorf("scope, regID = %q, %q; want %q, %q", scope, regID, tt.scope, tt.regID)
			}
			if !reflect.DeepEqual(query, tt.query) {
				t.Errorf("query = %#v; want %#v", query, tt.query)
			}
		})
	}
	// Get returns the first of duplicate keys.
	_, _, q, err := ParseDPSUsername("s/registrations/d/api-version=first&api-version=second")
	if err != nil || q.Get("api-version") != "first" {
		t.Errorf("api-version = %q, %v; want first", q.Get("api-version"), err)
	}
}

func TestParseDPSTopic(t *testing.T) {
	const opID = "4.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d"
	tests := []struct {
		name  string
		topic string
		kind  string
		rid   string
		opID  string
		ok    bool
	}{
		{name: "vector 3 register", topic: "$dps/registrations/PUT/iotdps-register/?$rid=1", kind: TopicRegister, rid: "1", ok: true},
		{name: "vector 4 poll", topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=" + opID, kind: TopicOperationStatus, rid: "1", opID: opID, ok: true},
		{name: "vector 13 encoded rid kept raw", topic: "$dps/registrations/PUT/iotdps-register/?$rid=invalid%24request%3Fid", kind: TopicRegister, rid: "invalid%24request%3Fid", ok: true},
		{name: "vector 13 encoded spaces", topic: "$dps/registrations/PUT/iotdps-register/?$rid=invalid%20request%20id", kind: TopicRegister, rid: "invalid%20request%20id", ok: true},
		{name: "vector 13 encoded slashes", topic: "$dps/registrations/PUT/iotdps-register/?$rid=invalid%2Frequest%2Fid", kind: TopicRegister, rid: "invalid%2Frequest%2Fid", ok: true},
		{name: "vector 14 plus kept", topic: "$dps/registrations/PUT/iotdps-register/?$rid=request+id", kind: TopicRegister, rid: "request+id", ok: true},
		{name: "vector 15 rid without dollar echoes empty", topic: "$dps/registrations/PUT/iotdps-register/?rid=1", kind: TopicRegister, rid: "", ok: true},
		{name: "vector 15 poll rid without dollar", topic: "$dps/registrations/GET/iotdps-get-operationstatus/?rid=2&operationId=" + opID, kind: TopicOperationStatus, rid: "", opID: opID, ok: true},
		{name: "uuid rid", topic: "$dps/registrations/PUT/iotdps-register/?$rid=3226c2f7-3d30-425c-b83b-0c34335f8220", kind: TopicRegister, rid: "3226c2f7-3d30-425c-b83b-0c34335f8220", ok: true},
		{name: "empty rid", topic: "$dps/registrations/PUT/iotdps-register/?$rid=", kind: TopicRegister, rid: "", ok: true},
		{name: "no query", topic: "$dps/registrations/PUT/iotdps-register/", kind: TopicRegister, rid: "", ok: true},
		{name: "first rid wins", topic: "$dps/registrations/PUT/iotdps-register/?$rid=a&$rid=b", kind: TopicRegister, rid: "a", ok: true},
		{name: "extra keys ignored", topic: "$dps/registrations/PUT/iotdps-register/?foo=1&$rid=7&bar", kind: TopicRegister, rid: "7", ok: true},
		{name: "operationId ignored on register", topic: "$dps/registrations/PUT/iotdps-register/?$rid=1&operationId=x", kind: TopicRegister, rid: "1", ok: true},
		{name: "operationId before rid", topic: "$dps/registrations/GET/iotdps-get-operationstatus/?operationId=" + opID + "&$rid=9", kind: TopicOperationStatus, rid: "9", opID: opID, ok: true},
		{name: "python-encoded operationId decoded", topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=x&operationId=5.ab%2Ecd%3Aef", kind: TopicOperationStatus, rid: "x", opID: "5.ab.cd:ef", ok: true},
		{name: "bad operationId escape kept raw", topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=x&operationId=a%zz", kind: TopicOperationStatus, rid: "x", opID: "a%zz", ok: true},
		{name: "poll without operationId", topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=x", kind: TopicOperationStatus, rid: "x", ok: true},
		{name: "unknown dps topic with rid", topic: "$dps/registrations/POST/iotdps-foo/?$rid=9", kind: TopicUnknown, rid: "9", ok: true},
		{name: "register without trailing slash is unknown", topic: "$dps/registrations/PUT/iotdps-register?$rid=1", kind: TopicUnknown, rid: "1", ok: true},
		{name: "register with extra segment is unknown", topic: "$dps/registrations/PUT/iotdps-register/x/?$rid=1", kind: TopicUnknown, rid: "1", ok: true},
		{name: "wrong method is unknown", topic: "$dps/registrations/GET/iotdps-register/?$rid=1", kind: TopicUnknown, rid: "1", ok: true},
		{name: "unknown dps topic without rid", topic: "$dps/registrations/PUT/iotdps-foo/?rid=1", ok: false},
		{name: "unknown dps topic without query", topic: "$dps/whatever", ok: false},
		{name: "upper-case prefix", topic: "$DPS/registrations/PUT/iotdps-register/?$rid=1", ok: false},
		{name: "hub twin topic", topic: "$iothub/twin/GET/?$rid=1", ok: false},
		{name: "telemetry", topic: "devices/d/messages/events/", ok: false},
		{name: "empty", topic: "", ok: false},
		{name: "garbage", topic: "\x00\xff?$rid=1", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, rid, op, ok := ParseDPSTopic(tt.topic)
			if kind != tt.kind || rid != tt.rid || op != tt.opID || ok != tt.ok {
				t.Errorf("ParseDPSTopic(%q) = %q, %q, %q, %v; want %q, %q, %q, %v", tt.topic, kind, rid, op, ok, tt.kind, tt.rid, tt.opID, tt.ok)
			}
		})
	}
}

func TestResponseTopic(t *testing.T) {
	tests := []struct {
		status int
		rid    string
		want   string
	}{
		// docs/spec/dps-protocol.md#test-vectors, vectors 5, 7, 8 and the
		// MicrochipTech trace (vector 15).
		{202, "1", "$dps/registrations/res/202/?$rid=1&retry-after=3"},
		{200, "1", "$dps/registrations/res/200/?$rid=1"},
		{401, "1", "$dps/registrations/res/401/?$rid=1"},
		{202, "", "$dps/registrations/res/202/?$rid=&retry-after=3"},
		{429, "x", "$dps/registrations/res/429/?$rid=x&retry-after=3"},
		{503, "x", "$dps/registrations/res/503/?$rid=x&retry-after=3"},
		{500, "x", "$dps/registrations/res/500/?$rid=x"},
		{404, "invalid%24request%3Fid", "$dps/registrations/res/404/?$rid=invalid%24request%3Fid"},
	}
	for _, tt := range tests {
		if got := responseTopic(tt.status, tt.rid, 3); got != tt.want {
			t.Errorf("responseTopic(%d, %q) = %q; want %q", tt.status, tt.rid, got, tt.want)
		}
	}
}
