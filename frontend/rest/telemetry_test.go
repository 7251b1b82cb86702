package rest

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// TestHubCurlTelemetry replays the doc's curl telemetry step over a real
// listener:
//
//	curl -X POST -H "authorization: $SAS" -H 'iothub-app-temp: 21' --data '{"t":1}' \
//	  https://host/devices/d/messages/events?api-version=2021-04-12
//
// curl --data adds Content-Type: application/x-www-form-urlencoded; the
// body must still be stored as sent.
func TestHubCurlTelemetry(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "d", "")
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	sasTok := hubDeviceToken(t, "d", d.Keys()[0], f.now.Add(time.Hour))

	resp := rawRoundTrip(t, addr, "POST", "/devices/d/messages/events?api-version=2021-04-12", hubName,
		[]string{"authorization", sasTok, "iothub-app-temp", "21", "Content-Type", "application/x-www-form-urlencoded", "User-Agent", "curl/8.5.0", "Accept", "*/*"},
		`{"t":1}`)
	if resp.status != http.StatusNoContent || resp.body != "" {
		t.Fatalf("curl: %d %q", resp.status, resp.body)
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages appended", len(msgs))
	}
	m := msgs[0]
	if string(m.Body) != `{"t":1}` {
		t.Errorf("body %q", m.Body)
	}
	if !reflect.DeepEqual(m.App, kv("temp", "21")) {
		t.Errorf("app properties %v", m.App)
	}
	if set := deviceSet(m); len(set) != 0 {
		t.Errorf("system properties the device did not set: %v", set)
	}
	f.checkStamped(t, m, d, "device")

	// An error on the wire: iothub-errorcode spelled exactly, the body
	// Node parses.
	bad := rawRoundTrip(t, addr, "POST", "/devices/d/messages/events?api-version=2021-04-12", hubName,
		[]string{"authorization", hubDeviceToken(t, "d", otherKey, f.now.Add(time.Hour))}, `{"t":2}`)
	if bad.status != http.StatusUnauthorized || bad.headers["iothub-errorcode"] != "IotHubUnauthorizedAccess" {
		t.Errorf("wrong key: %d %v %s", bad.status, bad.headers, bad.body)
	}
	if code, _, ok := nodeParseErrorBody(bad.body); !ok || code != "IotHubUnauthorizedAccess" {
		t.Errorf("error body %s", bad.body)
	}
	if len(f.sink.messages()) != 1 {
		t.Error("a refused message was appended")
	}
}

// TestTelemetryHeaderMapping: every property header, in the spellings
// the SDKs use, lands where consumers look for it.
func TestTelemetryHeaderMapping(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "map-1", "")
	tok := hubDeviceToken(t, "map-1", d.Keys()[0], f.now.Add(time.Hour))
	tests := []struct {
		name      string
		hdr       []string
		sys, app  []hub.Property
		rawHeader bool // set the header map entry as spelled (an HTTP/2 or non-Go client's lower case)
	}{
		{"message id", []string{"iothub-messageid", "mid-1"}, kv(hub.PropMessageID, "mid-1"), nil, false},
		{"message id, Node's spelling", []string{"IoTHub-MessageId", "mid-2"}, kv(hub.PropMessageID, "mid-2"), nil, false},
		{"message id, lower-case map key", []string{"iothub-messageid", "mid-3"}, kv(hub.PropMessageID, "mid-3"), nil, true},
		{"correlation id", []string{"iothub-correlationid", "cid"}, kv(hub.PropCorrelationID, "cid"), nil, false},
		{"user id", []string{"iothub-userid", "uid"}, kv(hub.PropUserID, "uid"), nil, false},
		{"expiry", []string{"iothub-expiry", "2030-01-01T00:00:00Z"}, kv(hub.PropExpiry, "2030-01-01T00:00:00Z"), nil, false},
		{"content type", []string{"iothub-contenttype", "application/json"}, kv(hub.PropContentType, "application/json"), nil, false},
		{"content encoding", []string{"iothub-contentencoding", "utf-8"}, kv(hub.PropContentEncoding, "utf-8"), nil, false},
		{"creation time", []string{"iothub-creationtimeutc", "2023-11-14T21:00:00Z"}, kv(hub.PropCreationTime, "2023-11-14T21:00:00Z"), nil, false},
		{"interface id", []string{"iothub-interface-id", "urn:azureiot:Security:SecurityAgent:1"}, kv(hub.PropInterfaceID, "urn:azureiot:Security:SecurityAgent:1"), nil, false},
		{"component (Node's unprefixed dt-subject)", []string{"dt-subject", "thermostat1"}, kv(hub.PropComponent, "thermostat1"), nil, false},
		{"message schema is an application property", []string{"iothub-messageschema", "temp-v1"}, nil, kv("iothub-message-schema", "temp-v1"), false},
		{"app property", []string{"iothub-app-temp", "21"}, nil, kv("temp", "21"), false},
		{"app property name lower-cased", []string{"iothub-app-MyKey", "v"}, nil, kv("mykey", "v"), false},
		{"app property, upper-case prefix", []string{"IOTHUB-APP-X", "y"}, nil, kv("x", "y"), false},
		{"app property, raw map key keeps nothing of its case", []string{"iothub-app-CamelCase", "v"}, nil, kv("camelcase", "v"), true},
		{"app property with empty value", []string{"iothub-app-empty", ""}, nil, kv("empty", ""), false},
		{"app property without a name is ignored", []string{"iothub-app-", "v"}, nil, nil, false},
		{"iothub-to is the path, ignored", []string{"iothub-to", "/devices/map-1/messages/events"}, nil, nil, false},
		{"iothub-ack is for C2D, ignored", []string{"iothub-ack", "full"}, nil, nil, false},
		{"iothub-operation ignored", []string{"iothub-operation", "x"}, nil, nil, false},
		{"unprefixed header is not a property", []string{"temp", "21"}, nil, nil, false},
		{"HTTP Content-Type is not the message content-type", []string{"Content-Type", "application/json"}, nil, nil, false},
		{"stamps cannot be forged", []string{"iothub-connection-device-id", "someone-else", "iothub-enqueuedtime", "1999", "iothub-message-source", "twinChangeEvents"}, nil, nil, false},
		{"everything at once, in name order", []string{
			"iothub-app-b", "2", "iothub-messageid", "m", "iothub-app-a", "1", "dt-subject", "c", "iothub-correlationid", "x",
		}, kv(hub.PropComponent, "c", hub.PropCorrelationID, "x", hub.PropMessageID, "m"), kv("a", "1", "b", "2"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.sink.reset()
			r := request(http.MethodPost, devicePath("map-1"), "payload", "Authorization", tok)
			for i := 0; i+1 < len(tt.hdr); i += 2 {
				if tt.rawHeader {
					r.Header[tt.hdr[i]] = []string{tt.hdr[i+1]}
				} else {
					r.Header.Set(tt.hdr[i], tt.hdr[i+1])
				}
			}
			rec := f.do(r)
			if rec.Code != http.StatusNoContent {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			checkCommon(t, rec)
			msgs := f.sink.messages()
			if len(msgs) != 1 {
				t.Fatalf("%d messages", len(msgs))
			}
			m := msgs[0]
			if got := deviceSet(m); !reflect.DeepEqual(got, tt.sys) {
				t.Errorf("system %v, want %v", got, tt.sys)
			}
			if !reflect.DeepEqual(m.App, tt.app) {
				t.Errorf("app %v, want %v", m.App, tt.app)
			}
			f.checkStamped(t, m, d, "device")
		})
	}
}

// TestTelemetryBodies: the body is stored byte for byte whatever the
// Content-Type, including none and an empty body.
func TestTelemetryBodies(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "body-1", "")
	tok := hubDeviceToken(t, "body-1", d.Keys()[1], f.now.Add(time.Hour)) // the secondary key works too
	tests := []struct{ name, contentType, body string }{
		{"no content type (Node)", "", `{"temperature":21.5}`},
		{"octet-stream (C SDK)", "application/octet-stream", "\x00\x01\xfe\xff binary"},
		{"json", "application/json; charset=utf-8", `{"a":[1,2,3]}`},
		{"text", "text/plain", "hello"},
		{"malformed content type", "/;;", "x"},
		{"empty body", "", ""},
		{"not valid UTF-8", "", "\xc3\x28"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.sink.reset()
			r := httptest.NewRequest(http.MethodPost, devicePath("body-1"), strings.NewReader(tt.body))
			r.Host = hubName
			r.Header.Set("Authorization", tok)
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			rec := f.do(r)
			if rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
				t.Fatalf("status %d %q", rec.Code, rec.Body)
			}
			msgs := f.sink.messages()
			if len(msgs) != 1 || string(msgs[0].Body) != tt.body {
				t.Fatalf("appended %v", msgs)
			}
			if _, has := prop(msgs[0].System, hub.PropContentType); has {
				t.Error("the HTTP Content-Type became the message content-type")
			}
			f.checkStamped(t, msgs[0], d, "device")
		})
	}
}

const batchCT = "application/vnd.microsoft.iothub.json"

// TestTelemetryBatch: each element of a batch is one message, in order,
// with base64 and text bodies and its own properties.
func TestTelemetryBatch(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "batch-1", "")
	tok := hubDeviceToken(t, "batch-1", d.Keys()[0], f.now.Add(time.Hour))
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	type want struct {
		body     string
		sys, app []hub.Property
	}
	tests := []struct {
		name, contentType, body string
		want                    []want
	}{
		{"C SDK minimal fixture", batchCT, `[{"body":""}]`, []want{{"", nil, nil}}},
		{"Node: base64 by default, app properties prefixed", batchCT,
			`[{"body":"` + b64(`{"n":1}`) + `","properties":{"iothub-app-k":"v"}},{"body":"` + b64("\x00\xff") + `"}]`,
			[]want{{`{"n":1}`, nil, kv("k", "v")}, {"\x00\xff", nil, nil}}},
		{"C#: explicit base64Encoded, system properties by header name", batchCT + "; charset=utf-8",
			`[{"body":"` + b64("x") + `","base64Encoded":true,"properties":{"iothub-messageid":"m1","IoTHub-CorrelationId":"c1","iothub-contenttype":"application/json","iothub-app-Temp":"21"}}]`,
			[]want{{"x", kv(hub.PropMessageID, "m1", hub.PropCorrelationID, "c1", hub.PropContentType, "application/json"), kv("Temp", "21")}}},
		{"C SDK text body; app property case and order kept", "Application/Vnd.Microsoft.IotHub.Json",
			`[{"body":"plain \"text\" ü","base64Encoded":false,"properties":{"iothub-app-Zeta":"1","iothub-app-alpha":"2","iothub-messageschema":"s","dt-subject":"comp"}}]`,
			[]want{{`plain "text" ü`, kv(hub.PropComponent, "comp"), kv("Zeta", "1", "alpha", "2", "iothub-message-schema", "s")}}},
		{"null body and properties, unknown members", batchCT,
			`[{"body":null,"properties":null,"extra":{"x":1}}]`, []want{{"", nil, nil}}},
		{"repeated property: the last wins; stamps cannot be forged", batchCT,
			`[{"body":"","properties":{"iothub-app-k":"1","iothub-app-k":"2","iothub-connection-device-id":"evil"}}]`,
			[]want{{"", nil, kv("k", "2")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.sink.reset()
			rec := f.do(request(http.MethodPost, devicePath("batch-1"), tt.body,
				"Authorization", tok, "Content-Type", tt.contentType, "iothub-app-request", "not applied"))
			if rec.Code != http.StatusNoContent {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			msgs := f.sink.messages()
			if len(msgs) != len(tt.want) {
				t.Fatalf("%d messages, want %d", len(msgs), len(tt.want))
			}
			for i, w := range tt.want {
				m := msgs[i]
				if string(m.Body) != w.body {
					t.Errorf("message %d body %q, want %q", i, m.Body, w.body)
				}
				if got := deviceSet(m); !reflect.DeepEqual(got, w.sys) {
					t.Errorf("message %d system %v, want %v", i, got, w.sys)
				}
				if !reflect.DeepEqual(m.App, w.app) {
					t.Errorf("message %d app %v, want %v", i, m.App, w.app)
				}
				f.checkStamped(t, m, d, "device")
			}
		})
	}
}

// TestTelemetryBatchErrors: a batch that cannot be used is refused as a
// whole, nothing appended.
func TestTelemetryBatchErrors(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "batch-2", "")
	tok := hubDeviceToken(t, "batch-2", d.Keys()[0], f.now.Add(time.Hour))
	tests := []struct {
		name, body string
		code       azerr.Code
	}{
		{"not JSON", `[{"body":`, azerr.HubFormatError},
		{"empty body", ``, azerr.HubFormatError},
		{"object, not array", `{"body":""}`, azerr.HubFormatError},
		{"trailing data", `[{"body":""}] []`, azerr.HubFormatError},
		{"body not a string", `[{"body":{"a":1}}]`, azerr.HubFormatError},
		{"base64Encoded not a bool", `[{"body":"","base64Encoded":"yes"}]`, azerr.HubFormatError},
		{"property value not a string", `[{"body":"","properties":{"iothub-app-n":1}}]`, azerr.HubFormatError},
		{"property value null", `[{"body":"","properties":{"iothub-app-n":null}}]`, azerr.HubFormatError},
		{"properties not an object", `[{"body":"","properties":["a"]}]`, azerr.HubFormatError},
		{"empty batch", `[]`, azerr.HubArgumentInvalid},
		{"null element", `[{"body":""},null]`, azerr.HubArgumentInvalid},
		{"bad base64 in the second message", `[{"body":"eA=="},{"body":"not base64!"}]`, azerr.HubArgumentInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.sink.reset()
			rec := f.do(request(http.MethodPost, devicePath("batch-2"), tt.body, "Authorization", tok, "Content-Type", batchCT))
			msg := checkHubError(t, rec, tt.code)
			if strings.Contains(msg, "enrollment") {
				t.Errorf("a DPS message on a hub error: %q", msg)
			}
			if n := len(f.sink.messages()); n != 0 {
				t.Errorf("%d messages appended", n)
			}
		})
	}
}

// TestTelemetrySizeLimit: 256 KB counted over body, system property
// values and application property names and values; exactly at the limit
// is accepted, one byte over refused with nothing appended.
func TestTelemetrySizeLimit(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "big-1", "")
	tok := hubDeviceToken(t, "big-1", d.Keys()[0], f.now.Add(time.Hour))
	const max = 256 * 1024 // IoT Hub's limit, as a literal: a wrong constant fails here
	// Properties worth 2+2 (app name and value) + 3 (message-id value).
	propHdr := []string{"iothub-app-ab", "cd", "iothub-messageid", "mid"}
	const propSize = 7
	batch := func(sizes ...int) string {
		var parts []string
		for _, n := range sizes {
			parts = append(parts, fmt.Sprintf(`{"body":"%s","base64Encoded":false,"properties":{"iothub-app-k":"v"}}`, strings.Repeat("b", n)))
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	tests := []struct {
		name, body, contentType string
		hdr                     []string
		chunked                 bool
		wantMsgs                int // 0: refused with 413
	}{
		{"body exactly at the limit", strings.Repeat("a", max), "", nil, false, 1},
		{"body one byte over", strings.Repeat("a", max+1), "", nil, false, 0},
		{"body one byte over, chunked", strings.Repeat("a", max+1), "", nil, true, 0},
		{"body at the limit, chunked", strings.Repeat("a", max), "", nil, true, 1},
		{"body and properties exactly at the limit", strings.Repeat("a", max-propSize), "", propHdr, false, 1},
		{"body and properties one byte over", strings.Repeat("a", max-propSize+1), "", propHdr, false, 0},
		{"batch exactly at the limit", batch(max/2-2, max/2-2), batchCT, nil, false, 2},
		{"batch one byte over", batch(max/2-2, max/2-1), batchCT, nil, false, 0},
		{"batch JSON over its own bound", "[" + strings.Repeat(" ", maxBatchRequest) + "]", batchCT, nil, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.sink.reset()
			r := request(http.MethodPost, devicePath("big-1"), tt.body, append([]string{"Authorization", tok}, tt.hdr...)...)
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			if tt.chunked {
				r.ContentLength = -1
				r.Body = io.NopCloser(strings.NewReader(tt.body))
			}
			rec := f.do(r)
			msgs := f.sink.messages()
			if tt.wantMsgs == 0 {
				checkHubError(t, rec, azerr.HubMessageTooLarge)
				if len(msgs) != 0 {
					t.Errorf("%d messages appended over the limit", len(msgs))
				}
				return
			}
			if rec.Code != http.StatusNoContent {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			total := 0
			for _, m := range msgs {
				total += len(m.Body)
				for _, p := range deviceSet(m) {
					total += len(p.Value)
				}
				for _, p := range m.App {
					total += len(p.Name) + len(p.Value)
				}
			}
			if len(msgs) != tt.wantMsgs || total != max {
				t.Errorf("%d messages of %d bytes in all, want %d of %d", len(msgs), total, tt.wantMsgs, max)
			}
		})
	}
}

// unreadable fails the test if the handler reads the body.
type unreadable struct{ t *testing.T }

func (u unreadable) Read([]byte) (int, error) {
	u.t.Error("the body was read")
	return 0, io.EOF
}

// TestTelemetryDeclaredLength: a Content-Length over the limit is refused
// before a byte is read, and a refused token before the body is read.
func TestTelemetryDeclaredLength(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "len-1", "")
	tok := hubDeviceToken(t, "len-1", d.Keys()[0], f.now.Add(time.Hour))
	for _, tt := range []struct {
		name, auth, contentType string
		length                  int64
		code                    azerr.Code
	}{
		{"single", tok, "", 256*1024 + 1, azerr.HubMessageTooLarge},
		{"batch", tok, batchCT, maxBatchRequest + 1, azerr.HubMessageTooLarge},
		{"bad token", hubDeviceToken(t, "len-1", otherKey, f.now.Add(time.Hour)), "", 10, azerr.HubUnauthorizedAccess},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := request(http.MethodPost, devicePath("len-1"), "", "Authorization", tt.auth)
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			r.Body = io.NopCloser(unreadable{t})
			r.ContentLength = tt.length
			checkHubError(t, f.do(r), tt.code)
		})
	}
}

// TestTelemetrySinkFailure: no 204 unless the sink made the message
// durable; a sink failure is a 500 hub error whose cause stays in the
// logs; a batch stops at the failing message.
func TestTelemetrySinkFailure(t *testing.T) {
	errSink := errors.New("disk on fire")
	tests := []struct {
		name       string
		body, ct   string
		err        error
		failAt     int
		code       azerr.Code
		wantStored int
	}{
		{"single", "x", "", errSink, 1, azerr.HubServerError, 0},
		{"batch, second of three fails", `[{"body":"MQ=="},{"body":"Mg=="},{"body":"Mw=="}]`, batchCT, errSink, 2, azerr.HubServerError, 1},
		{"sink throttles", "x", "", azerr.New(azerr.HubThrottled), 1, azerr.HubThrottled, 0},
		{"sink returns a DPS-only code", "x", "", azerr.New(azerr.DPSInternal), 1, azerr.HubServerError, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			d := f.device(t, "fail-1", "")
			tok := hubDeviceToken(t, "fail-1", d.Keys()[0], f.now.Add(time.Hour))
			f.sink.failWith(tt.err, tt.failAt)
			r := request(http.MethodPost, devicePath("fail-1"), tt.body, "Authorization", tok)
			if tt.ct != "" {
				r.Header.Set("Content-Type", tt.ct)
			}
			rec := f.do(r)
			msg := checkHubError(t, rec, tt.code)
			if strings.Contains(rec.Body.String(), "fire") {
				t.Errorf("the cause reached the client: %s", rec.Body)
			}
			if tt.code == azerr.HubServerError {
				if msg != "Internal server error." {
					t.Errorf("message %q", msg)
				}
				logs := f.logs.String()
				if !strings.Contains(logs, "level=ERROR") || (errors.Is(tt.err, errSink) && !strings.Contains(logs, errSink.Error())) {
					t.Errorf("sink failure not logged with its cause:\n%s", logs)
				}
			}
			if n := len(f.sink.messages()); n != tt.wantStored {
				t.Errorf("%d messages durable, want %d", n, tt.wantStored)
			}
		})
	}
}

// TestTelemetryAuth: who may send as a device.
func TestTelemetryAuth(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "auth-d", "")
	other := f.device(t, "auth-other", "")
	off := f.device(t, "off", hub.StatusDisabled)
	odd := f.device(t, "dev:1(x)", "")
	exp := f.now.Add(time.Hour)
	key := d.Keys()[0]
	tests := []struct {
		name, device, token string
		want                int
		scope               string // auth method scope on success
	}{
		{"own token", "auth-d", hubDeviceToken(t, "auth-d", key, exp), 204, "device"},
		{"token for the devices/ prefix, device key", "auth-d", signOrFail(t, hubName+"/devices", key, "", exp), 204, "device"},
		{"ID with reserved characters, percent-encoded in path and sr", "dev:1(x)", hubDeviceToken(t, "dev:1(x)", odd.Keys()[0], exp), 204, "device"},
		{"device policy (DeviceConnect) for the device", "auth-d", f.hubToken(t, hubName+"/devices/auth-d", "device"), 204, "hub"},
		{"iothubowner for the hub", "auth-d", f.hubToken(t, hubName, hub.OwnerPolicy), 204, "hub"},

		{"another device's token", "auth-d", hubDeviceToken(t, "auth-other", other.Keys()[0], exp), 401, ""},
		{"own sr, another device's key", "auth-d", hubDeviceToken(t, "auth-d", other.Keys()[0], exp), 401, ""},
		{"wrong key", "auth-d", hubDeviceToken(t, "auth-d", otherKey, exp), 401, ""},
		{"expired", "auth-d", hubDeviceToken(t, "auth-d", key, f.now.Add(-10*time.Minute)), 401, ""},
		{"other hub", "auth-d", signOrFail(t, "other.hub/devices/auth-d", key, "", exp), 401, ""},
		{"disabled device", "off", hubDeviceToken(t, "off", off.Keys()[0], exp), 401, ""},
		{"unknown device", "nobody", hubDeviceToken(t, "nobody", key, exp), 401, ""},
		{"no token", "auth-d", "", 401, ""},
		{"garbage token", "auth-d", "SharedAccessSignature sr=x", 401, ""},
		{"service policy", "auth-d", f.hubToken(t, hubName, "service"), 401, ""},
		{"registryReadWrite policy", "auth-d", f.hubToken(t, hubName, "registryReadWrite"), 401, ""},
		{"DPS service token", "auth-d", f.ownerToken(t), 401, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.sink.reset()
			r := request(http.MethodPost, devicePath(tt.device), "hello")
			if tt.token != "" {
				r.Header.Set("Authorization", tt.token)
			}
			rec := f.do(r)
			msgs := f.sink.messages()
			if tt.want == 401 {
				checkHubError(t, rec, azerr.HubUnauthorizedAccess)
				if len(msgs) != 0 {
					t.Error("a refused message was appended")
				}
				return
			}
			if rec.Code != tt.want || len(msgs) != 1 {
				t.Fatalf("status %d %s, %d messages", rec.Code, rec.Body, len(msgs))
			}
			dev, err := f.reg.Get(r.Context(), hubName, tt.device)
			if err != nil {
				t.Fatal(err)
			}
			f.checkStamped(t, msgs[0], dev, tt.scope)
		})
	}
}

func signOrFail(t testing.TB, sr, key, keyName string, exp time.Time) string {
	t.Helper()
	tok, err := sas.SignEncoded(sr, key, keyName, exp)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestModuleTelemetry: a module sends with its own token and its messages
// carry iothub-connection-module-id; its device's token, or a token of a
// module that does not exist, is 401; other methods on the path are a hub
// 405.
func TestModuleTelemetry(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "mod-d", "")
	m, err := f.reg.CreateModule(context.Background(), hubName, &hub.Module{DeviceID: "mod-d", ModuleID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	mkey := m.Authentication.SymmetricKey.PrimaryKey
	*f.secrets = append(*f.secrets, mkey, m.Authentication.SymmetricKey.SecondaryKey)
	const path = "/devices/mod-d/modules/m1/messages/events?api-version=2021-04-12"
	modTok := signOrFail(t, hubName+"/devices/mod-d/modules/m1", mkey, "", f.now.Add(time.Hour))
	rec := f.do(request(http.MethodPost, path, "x", "Authorization", modTok, "iothub-app-k", "v"))
	if rec.Code != http.StatusNoContent {
		t.Fatalf("module telemetry: %d %s", rec.Code, rec.Body)
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 || msgs[0].DeviceID != "mod-d" || msgs[0].ModuleID != "m1" {
		t.Fatalf("messages %+v", msgs)
	}
	if v, _ := msgs[0].SystemValue(hub.PropConnModuleID); v != "m1" {
		t.Errorf("module stamp %q", v)
	}
	if v, _ := msgs[0].SystemValue(hub.PropConnGenerationID); v != m.GenerationID {
		t.Errorf("generation stamp %q, want the module's %q", v, m.GenerationID)
	}
	f.sink.reset()
	tok := hubDeviceToken(t, "mod-d", d.Keys()[0], f.now.Add(time.Hour))
	checkHubError(t, f.do(request(http.MethodPost, path, "x", "Authorization", tok)), azerr.HubUnauthorizedAccess)
	checkHubError(t, f.do(request(http.MethodPost, "/devices/mod-d/modules/m2/messages/events", "x", "Authorization", modTok)), azerr.HubUnauthorizedAccess)
	checkHubError(t, f.do(request(http.MethodPost, "/devices/mod-d/messages/events", "x", "Authorization", modTok)), azerr.HubUnauthorizedAccess)
	rec = f.do(request(http.MethodGet, "/devices/mod-d/modules/m1/messages/events", "", "Authorization", tok))
	checkHubError(t, rec, azerr.HubMethodNotAllowed)
	if allow, _ := raw(rec, "Allow"); allow != "POST" {
		t.Errorf("Allow = %q", allow)
	}
	if n := len(f.sink.messages()); n != 0 {
		t.Errorf("%d messages appended", n)
	}
}

// TestTelemetryNoSink: a hub without a sink refuses telemetry with 503
// (after authentication) but serves the registry.
func TestTelemetryNoSink(t *testing.T) {
	f := newFixture(t)
	d := f.device(t, "nosink", "")
	cfg := *f.hubCfg
	hs := *cfg.Services
	hs.Telemetry = hub.NewTelemetry(nil, hs.Registry, nil)
	cfg.Services = &hs
	h := NewHandler(Config{Hosts: []string{dpsHost}, Now: func() time.Time { return f.now }, Hub: &cfg,
		Logger: f.h.(*handler).log}, f.svc, f.settings)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, request(http.MethodPost, devicePath("nosink"), "x", "Authorization", hubDeviceToken(t, "nosink", d.Keys()[0], f.now.Add(time.Hour))))
	checkHubError(t, rec, azerr.HubServiceUnavailable)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, request(http.MethodPost, devicePath("nosink"), "x", "Authorization", hubDeviceToken(t, "nosink", otherKey, f.now.Add(time.Hour))))
	checkHubError(t, rec, azerr.HubUnauthorizedAccess)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, request(http.MethodGet, "/devices/nosink", "", "Authorization", f.hubOwnerToken(t)))
	if rec.Code != http.StatusOK {
		t.Errorf("registry without a sink: %d %s", rec.Code, rec.Body)
	}
}

// TestProvisionThenSend: a device DPS assigns to the hub sends telemetry
// with its derived key: DPS and the hub share the registry.
func TestProvisionThenSend(t *testing.T) {
	f := newFixture(t)
	f.group(t, "grp", "")
	op := f.provision(t, "my-device", vector20[0].token, "")
	if op.RegistrationState == nil || op.RegistrationState.AssignedHub != hubName {
		t.Fatalf("provision: %+v", op)
	}
	// vector 20's derived key (sas_test.go TestDeriveKey).
	const derived = "WzAkt5GwqYWFpFrbk3L9aXm6JGAXD0rn4cXlWKGRCpc="
	rec := f.do(request(http.MethodPost, devicePath("my-device"), `{"t":1}`,
		"Authorization", hubDeviceToken(t, "my-device", derived, f.now.Add(time.Hour))))
	if rec.Code != http.StatusNoContent {
		t.Fatalf("send: %d %s", rec.Code, rec.Body)
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Body, []byte(`{"t":1}`)) || msgs[0].DeviceID != "my-device" {
		t.Errorf("appended %+v", msgs)
	}
}

// kv builds a property list from name/value pairs.
func kv(pairs ...string) []hub.Property {
	var out []hub.Property
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, hub.Property{Name: pairs[i], Value: pairs[i+1]})
	}
	return out
}
