package deviceclient

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/sas"
)

// Vectors are docs/spec/dps-protocol.md#test-vectors; the number is given
// with each.

func TestUsername(t *testing.T) {
	tests := []struct {
		scope, id, ua, want string
	}{
		// 1: no client version.
		{"0neFEEDC0DE", "myRegistrationId", "", "0neFEEDC0DE/registrations/myRegistrationId/api-version=2019-03-31"},
		// 23: the Node SDK's encodeURIComponent of its user agent.
		{"0ne00000A0A", "my-device", "azure-iot-provisioning-device/1.9.2",
			"0ne00000A0A/registrations/my-device/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.2"},
		// berth's own, as the brief requires.
		{"0ne00000A0A", "dev-1", DefaultClientVersion, "0ne00000A0A/registrations/dev-1/api-version=2019-03-31&ClientVersion=berth%2F0.1"},
		// Reserved characters and spaces are escaped, unreserved kept.
		{"s", "d", "a b(c);d!~*'", "s/registrations/d/api-version=2019-03-31&ClientVersion=a%20b(c)%3Bd!~*'"},
	}
	for _, tt := range tests {
		if got := Username(tt.scope, tt.id, tt.ua); got != tt.want {
			t.Errorf("Username(%q, %q, %q)\n got %s\nwant %s", tt.scope, tt.id, tt.ua, got, tt.want)
		}
	}
}

func TestTopics(t *testing.T) {
	// 3
	if got, want := RegisterTopic("1"), "$dps/registrations/PUT/iotdps-register/?$rid=1"; got != want {
		t.Errorf("RegisterTopic = %s, want %s", got, want)
	}
	// 4
	if got, want := PollTopic("1", "4.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d"),
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=4.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d"; got != want {
		t.Errorf("PollTopic = %s, want %s", got, want)
	}
	// An operation ID that is not topic safe cannot break the query.
	if got := PollTopic("2", "a&b=c"); !strings.HasSuffix(got, "&operationId=a%26b%3Dc") {
		t.Errorf("PollTopic escapes badly: %s", got)
	}
}

func TestParseResponseTopic(t *testing.T) {
	tests := []struct {
		topic   string
		want    Response
		wantErr bool
	}{
		// 5
		{topic: "$dps/registrations/res/202/?$rid=1&retry-after=3", want: Response{Status: 202, RID: "1", RetryAfter: 3 * time.Second, HasRetryAfter: true}},
		// 6: retry-after first.
		{topic: "$dps/registrations/res/202/?retry-after=120&$rid=1", want: Response{Status: 202, RID: "1", RetryAfter: 120 * time.Second, HasRetryAfter: true}},
		// 7
		{topic: "$dps/registrations/res/200/?$rid=1", want: Response{Status: 200, RID: "1"}},
		// 8
		{topic: "$dps/registrations/res/401/?$rid=1", want: Response{Status: 401, RID: "1"}},
		// 14: extra keys ignored, rid kept raw (+ not decoded).
		{topic: "$dps/registrations/res/200/?$rid=3226c2f7-3d30-425c-b83b-0c34335f8220&foo=value1&bar=value2&buzz=value3",
			want: Response{Status: 200, RID: "3226c2f7-3d30-425c-b83b-0c34335f8220"}},
		{topic: "$dps/registrations/res/200/?$rid=request+id", want: Response{Status: 200, RID: "request+id"}},
		// 15: Azure echoes a missing rid empty.
		{topic: "$dps/registrations/res/202/?$rid=&retry-after=3", want: Response{Status: 202, RID: "", RetryAfter: 3 * time.Second, HasRetryAfter: true}},
		// C# reads Retry-After case-insensitively.
		{topic: "$dps/registrations/res/429/?$rid=7&Retry-After=5", want: Response{Status: 429, RID: "7", RetryAfter: 5 * time.Second, HasRetryAfter: true}},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=1", wantErr: true},
		{topic: "$dps/registrations/res/abc/?$rid=1", wantErr: true},
		{topic: "$dps/registrations/res/200", wantErr: true},
		{topic: "$dps/registrations/res/202/?$rid=1&retry-after=soon", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseResponseTopic(tt.topic)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err %v, wantErr %v", tt.topic, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && got != tt.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.topic, got, tt.want)
		}
	}
}

// TestDecodeAnswer runs the bodies of vectors 5 and 7–10 through the answer
// decoder.
func TestDecodeAnswer(t *testing.T) {
	const opID = "4.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d"
	// 5
	res, err := decodeAnswer(202, 3*time.Second, true, []byte(`{"operationId":"`+opID+`","status":"assigning"}`), "")
	if err != nil || res.Operation.Status != "assigning" || res.Operation.OperationID != opID || res.RetryAfter != 3*time.Second {
		t.Errorf("vector 5: %+v, %v", res, err)
	}
	// 7
	res, err = decodeAnswer(200, 0, false, []byte(`{"operationId":"`+opID+`","status":"assigned","registrationState":{"x509":{},"registrationId":"myRegistrationId","createdDateTimeUtc":"2020-04-10T03:11:13.0276997Z","assignedHub":"contoso.azure-devices.net","deviceId":"my-device-id1","status":"assigned","substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2020-04-10T03:11:13.2096201Z","etag":"IjYxMDA4ZDQ2LTAwMDAtMDEwMC0wMDAwLTVlOGZlM2QxMDAwMCI="}}`), "")
	if err != nil || !res.Operation.Terminal() || res.Operation.RegistrationState.AssignedHub != "contoso.azure-devices.net" ||
		res.Operation.RegistrationState.DeviceID != "my-device-id1" || res.HasRetryAfter {
		t.Errorf("vector 7: %+v, %v", res, err)
	}
	// 8
	_, err = decodeAnswer(401, 0, false, []byte(`{"errorCode":401002,"trackingId":"8ad0463c-6427-4479-9dfa-3e8bb7003e9b","message":"Invalid certificate.","timestampUtc":"2020-04-10T05:24:22.4718526Z"}`), "")
	var e *Error
	if !errors.As(err, &e) || *e != (Error{Status: 401, Code: 401002, Message: "Invalid certificate.", TrackingID: "8ad0463c-6427-4479-9dfa-3e8bb7003e9b"}) || e.Temporary() {
		t.Errorf("vector 8: %#v", err)
	}
	// 9
	res, err = decodeAnswer(200, 0, false, []byte(`{"operationId":"`+opID+`","status":"failed","registrationState":{"registrationId":"myRegistrationId","createdDateTimeUtc":"2020-04-10T03:11:13.0276997Z","status":"failed","errorCode":400207,"errorMessage":"Custom allocation failed with status code: 400","lastUpdatedDateTimeUtc":"2020-04-10T05:24:22.4718526Z","etag":"IjYxMDA4ZDQ2LTAwMDAtMDEwMC0wMDAwLTVlOGZlM2QxMDAwMCI="}}`), "")
	if err != nil || res.Operation.Status != "failed" || res.Operation.RegistrationState.ErrorCode != 400207 {
		t.Errorf("vector 9: %+v, %v", res, err)
	}
	if _, ferr := finish(res.Operation); !errors.Is(ferr, ErrNotAssigned) || !strings.Contains(ferr.Error(), "400207") {
		t.Errorf("vector 9 finish: %v", ferr)
	}
	// 10
	res, err = decodeAnswer(200, 0, false, []byte(`{"operationId":"","status":"disabled","registrationState":{"registrationId":"myRegistrationId","status":"disabled"}}`), "")
	if err != nil || !res.Operation.Terminal() {
		t.Errorf("vector 10: %+v, %v", res, err)
	}
	// A throttling answer keeps its hint and is temporary; a body that is
	// not JSON still makes an error.
	_, err = decodeAnswer(429, 4*time.Second, true, []byte(`{"errorCode":429001,"trackingId":"t","message":"Too many requests."}`), "")
	if !errors.As(err, &e) || !e.Temporary() || e.RetryAfter != 4*time.Second || e.Code != 429001 {
		t.Errorf("429: %#v", err)
	}
	_, err = decodeAnswer(503, 0, false, []byte(`<html>`), "req-1")
	if !errors.As(err, &e) || !e.Temporary() || e.Message != "<html>" || e.TrackingID != "req-1" {
		t.Errorf("503: %#v", err)
	}
	if _, err = decodeAnswer(202, 0, false, []byte(`{}`), ""); err == nil {
		t.Error("an answer without status was accepted")
	}
	if _, err = decodeAnswer(204, 0, false, nil, ""); err == nil {
		t.Error("a 204 was accepted")
	}
}

func TestToken(t *testing.T) {
	// 20: group key of vector 19, registration ID my-device.
	const groupKey = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
	key, err := sas.DeriveKey(groupKey, "my-device")
	if err != nil || key != "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc=" {
		t.Fatalf("derived key %q, %v", key, err)
	}
	got, err := Token("0ne00000A0A", "my-device", key, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	// The Python/C# form; C# appends skn=registration, which is not signed.
	want := "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fmy-device&sig=VpZcGceBJhbdSsM6WFvbMF8PQf1guRNXsgfoLwRAqeQ%3D&se=1700000000&skn=registration"
	if got != want {
		t.Errorf("token\n got %s\nwant %s", got, want)
	}
	if _, err := Token("s", "d", "not base64!", time.Now()); err == nil {
		t.Error("a bad key made a token")
	}
}

func TestRegisterBody(t *testing.T) {
	tests := []struct {
		payload string
		want    string
		wantErr bool
	}{
		// 11
		{"", `{"registrationId":"myRegistrationId"}`, false},
		{`{"testData":1, "testData2":{"a":"b"}}`, `{"registrationId":"myRegistrationId","payload":{"testData":1, "testData2":{"a":"b"}}}`, false},
		{"  \n", `{"registrationId":"myRegistrationId"}`, false},
		{`[1]`, "", true},
		{`null`, "", true},
		{`{"a":`, "", true},
	}
	for _, tt := range tests {
		got, err := RegisterBody("myRegistrationId", json.RawMessage(tt.payload))
		if (err != nil) != tt.wantErr || string(got) != tt.want {
			t.Errorf("payload %q: %s, %v; want %s", tt.payload, got, err, tt.want)
		}
	}
}
