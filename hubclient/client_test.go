package hubclient

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// testKey is base64("0123456789abcdef0123456789abcdef").
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// testHost is a name in the httptest certificate. It is never resolved: the
// client dials the listener through Options.Address.
const testHost = "example.com"

// seen is one request as the fake hub received it.
type seen struct {
	Method, Path, Query string
	Header              http.Header
	Body                string
}

type reply struct {
	status int
	header map[string]string
	body   string
	delay  time.Duration // before answering
}

// fake is a TLS hub that records requests and plays replies in order.
type fake struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []seen
	replies []reply
}

func newFake(t *testing.T, replies ...reply) *fake {
	t.Helper()
	f := &fake{t: t, replies: replies}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(body)})
		var rp reply
		if len(f.replies) > 0 {
			rp, f.replies = f.replies[0], f.replies[1:]
		} else {
			rp = reply{status: 500, body: `{"Message":"ErrorCode:ServerError;fake: no reply programmed"}`}
		}
		f.mu.Unlock()
		time.Sleep(rp.delay)
		for k, v := range rp.header {
			w.Header()[k] = []string{v}
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(rp.status)
		io.WriteString(w, rp.body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) caFile() string {
	f.t.Helper()
	p := filepath.Join(f.t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fake) client() *Client {
	f.t.Helper()
	c, err := New("HostName="+testHost+";SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey,
		Options{CAFile: f.caFile(), Address: f.srv.Listener.Addr().String()})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func (f *fake) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

// checkCommon asserts what every request carries: the API version, the
// content type (JSON unless wantCT says otherwise), and a fresh service
// token for the bare host name signed with the policy's key.
func checkCommon(t *testing.T, r seen, wantQuery, wantCT string) {
	t.Helper()
	if r.Query != wantQuery {
		t.Errorf("%s %s: query %q, want %q", r.Method, r.Path, r.Query, wantQuery)
	}
	if wantCT == "" {
		wantCT = "application/json; charset=utf-8"
	}
	if got := r.Header.Get("Content-Type"); got != wantCT {
		t.Errorf("%s %s: Content-Type %q, want %q", r.Method, r.Path, got, wantCT)
	}
	tok, err := sas.Parse(r.Header.Get("Authorization"))
	if err != nil {
		t.Fatalf("%s %s: Authorization: %v", r.Method, r.Path, err)
	}
	if tok.RawResource != testHost || tok.KeyName != "iothubowner" || !tok.VerifyKey(testKey) {
		t.Errorf("%s %s: token sr=%q skn=%q verifies=%v", r.Method, r.Path, tok.RawResource, tok.KeyName, tok.VerifyKey(testKey))
	}
	if _, err := tok.Verify(time.Now(), "d3Jvbmc=", testKey); err != nil {
		t.Errorf("%s %s: token does not verify: %v", r.Method, r.Path, err)
	}
	if ttl := time.Until(tok.Expiry); ttl < 59*time.Minute || ttl > 61*time.Minute {
		t.Errorf("%s %s: token lifetime %v, want 1h", r.Method, r.Path, ttl)
	}
}

// jsonEqual compares JSON documents semantically.
func jsonEqual(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("got is not JSON: %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want is not JSON: %q: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("JSON\n got %s\nwant %s", got, want)
	}
}

const deviceJSON = `{"deviceId":"d1","generationId":"638000000000000000","etag":"AAAAAAAAAAE=","connectionState":"Disconnected","status":"enabled","statusReason":null,"connectionStateUpdatedTime":"0001-01-01T00:00:00Z","statusUpdatedTime":"0001-01-01T00:00:00Z","lastActivityTime":"0001-01-01T00:00:00Z","cloudToDeviceMessageCount":0,"authentication":{"symmetricKey":{"primaryKey":"cGs=","secondaryKey":"c2s="},"type":"sas"},"capabilities":{"iotEdge":false},"deviceScope":null,"parentScopes":[]}`

const api = "api-version=" + APIVersion

const twinJSON = `{"deviceId":"d1","etag":"AAAAAAAAAAI=","deviceEtag":"AAAAAAAAAAE=","status":"enabled","statusReason":null,` +
	`"statusUpdateTime":"0001-01-01T00:00:00Z","connectionState":"Connected","lastActivityTime":"2024-01-02T03:04:05Z",` +
	`"cloudToDeviceMessageCount":2,"authenticationType":"sas","x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},` +
	`"capabilities":{"iotEdge":false},"version":4,"tags":{"floor":3},` +
	`"properties":{"desired":{"rate":5,"$metadata":{"$lastUpdated":"2024-01-02T03:04:05.0000000Z"},"$version":2},` +
	`"reported":{"$metadata":{"$lastUpdated":"2024-01-02T03:04:05.0000000Z"},"$version":1}}}`

const c2dResultJSON = `{"messageId":"m1","sequenceNumber":1704164645000000000,"enqueuedTimeUtc":"2024-01-02T03:04:05.123Z","expiryTimeUtc":"2024-01-02T04:04:05.123Z"}`

func ptr[T any](v T) *T { return &v }

func TestRequests(t *testing.T) {
	ctx := context.Background()
	reason := "maintenance"
	tests := []struct {
		name      string
		replies   []reply
		call      func(c *Client) (any, error)
		wantReq   []string // "METHOD PATH" per request
		wantQuery string
		wantCT    string // Content-Type; "" for JSON
		wantMatch string // If-Match of the (last) request; "-" for none
		wantBody  string // JSON of the (last) request body; "" for none
		wantOut   string // JSON of the result; "" for none
	}{
		{
			name:    "create sends the settable fields and no If-Match",
			replies: []reply{{status: 200, body: deviceJSON}},
			call: func(c *Client) (any, error) {
				return c.CreateDevice(ctx, &hub.Device{DeviceID: "d1", Status: hub.StatusEnabled, ConnectionState: "Connected", ETag: "ignored",
					Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{}}})
			},
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: "-",
			wantBody:  `{"deviceId":"d1","status":"enabled","authentication":{"symmetricKey":{"primaryKey":"","secondaryKey":""},"type":"sas"}}`,
			wantOut:   deviceJSON,
		},
		{
			name:    "update quotes a bare etag",
			replies: []reply{{status: 200, body: deviceJSON}},
			call: func(c *Client) (any, error) {
				return c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1", Status: hub.StatusDisabled, StatusReason: &reason}, "AAAAAAAAAAE=")
			},
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: `"AAAAAAAAAAE="`,
			wantBody:  `{"deviceId":"d1","status":"disabled","statusReason":"maintenance"}`,
			wantOut:   deviceJSON,
		},
		{
			name:      "update quotes the wildcard",
			replies:   []reply{{status: 200, body: deviceJSON}},
			call:      func(c *Client) (any, error) { return c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1"}, "*") },
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: `"*"`,
			wantBody:  `{"deviceId":"d1"}`,
			wantOut:   deviceJSON,
		},
		{
			name:      "update keeps an etag that is already quoted",
			replies:   []reply{{status: 200, body: deviceJSON}},
			call:      func(c *Client) (any, error) { return c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1"}, `"e1"`) },
			wantReq:   []string{"PUT /devices/d1"},
			wantQuery: api,
			wantMatch: `"e1"`,
			wantBody:  `{"deviceId":"d1"}`,
			wantOut:   deviceJSON,
		},
		{
			name:      "get escapes the ID as one segment",
			replies:   []reply{{status: 200, body: deviceJSON}},
			call:      func(c *Client) (any, error) { return c.GetDevice(ctx, "dev 1?#/x") },
			wantReq:   []string{"GET /devices/dev%201%3F%23%2Fx"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   deviceJSON,
		},
		{
			name:      "delete with an etag",
			replies:   []reply{{status: 204}},
			call:      func(c *Client) (any, error) { return nil, c.DeleteDevice(ctx, "d1", "e1") },
			wantReq:   []string{"DELETE /devices/d1"},
			wantQuery: api,
			wantMatch: `"e1"`,
		},
		{
			name:      "delete with the wildcard",
			replies:   []reply{{status: 204}},
			call:      func(c *Client) (any, error) { return nil, c.DeleteDevice(ctx, "d1", "*") },
			wantReq:   []string{"DELETE /devices/d1"},
			wantQuery: api,
			wantMatch: `"*"`,
		},
		{
			name:      "delete unconditionally",
			replies:   []reply{{status: 204}},
			call:      func(c *Client) (any, error) { return nil, c.DeleteDevice(ctx, "d1", "") },
			wantReq:   []string{"DELETE /devices/d1"},
			wantQuery: api,
			wantMatch: "-",
		},
		{
			name:      "list with top",
			replies:   []reply{{status: 200, body: "[" + deviceJSON + "]"}},
			call:      func(c *Client) (any, error) { return c.ListDevices(ctx, 5) },
			wantReq:   []string{"GET /devices"},
			wantQuery: api + "&top=5",
			wantMatch: "-",
			wantOut:   "[" + deviceJSON + "]",
		},
		{
			name:      "list without top, empty registry",
			replies:   []reply{{status: 200, body: "[]"}},
			call:      func(c *Client) (any, error) { return c.ListDevices(ctx, 0) },
			wantReq:   []string{"GET /devices"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   "[]",
		},
		{
			name:      "statistics",
			replies:   []reply{{status: 200, body: `{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}`}},
			call:      func(c *Client) (any, error) { return c.DeviceStatistics(ctx) },
			wantReq:   []string{"GET /statistics/devices"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   `{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}`,
		},
		{
			name:      "get twin",
			replies:   []reply{{status: 200, body: twinJSON}},
			call:      func(c *Client) (any, error) { return c.GetTwin(ctx, "d 1") },
			wantReq:   []string{"GET /twins/d%201"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   twinJSON,
		},
		{
			name:    "update twin quotes the etag and sends the patch as given",
			replies: []reply{{status: 200, body: twinJSON}},
			call: func(c *Client) (any, error) {
				return c.UpdateTwin(ctx, "d1", json.RawMessage(`{"tags": {"floor": 3, "old": null}, "properties": {"desired": {"rate": 5}}}`), "AAAAAAAAAAI=")
			},
			wantReq:   []string{"PATCH /twins/d1"},
			wantQuery: api,
			wantMatch: `"AAAAAAAAAAI="`,
			wantBody:  `{"tags":{"floor":3,"old":null},"properties":{"desired":{"rate":5}}}`,
			wantOut:   twinJSON,
		},
		{
			name:    "update twin unconditionally",
			replies: []reply{{status: 200, body: twinJSON}},
			call: func(c *Client) (any, error) {
				return c.UpdateTwin(ctx, "d1", json.RawMessage(`{"tags":{"a":"b"}}`), "")
			},
			wantReq:   []string{"PATCH /twins/d1"},
			wantQuery: api,
			wantMatch: "-",
			wantBody:  `{"tags":{"a":"b"}}`,
			wantOut:   twinJSON,
		},
		{
			name:    "replace twin with the wildcard",
			replies: []reply{{status: 200, body: twinJSON}},
			call: func(c *Client) (any, error) {
				return c.ReplaceTwin(ctx, "d1", json.RawMessage(`{"properties":{"desired":{}}}`), "*")
			},
			wantReq:   []string{"PUT /twins/d1"},
			wantQuery: api,
			wantMatch: `"*"`,
			wantBody:  `{"properties":{"desired":{}}}`,
			wantOut:   twinJSON,
		},
		{
			name:    "invoke a method with timeouts",
			replies: []reply{{status: 200, body: `{"status":201,"payload":{"rebooting":true}}`}},
			call: func(c *Client) (any, error) {
				return c.InvokeMethod(ctx, "d1", &hub.MethodRequest{MethodName: "reboot", Payload: json.RawMessage(`{"delay": 5}`),
					ResponseTimeoutInSeconds: ptr(10), ConnectTimeoutInSeconds: ptr(0)})
			},
			wantReq:   []string{"POST /twins/d1/methods"},
			wantQuery: api,
			wantMatch: "-",
			wantBody:  `{"methodName":"reboot","payload":{"delay":5},"responseTimeoutInSeconds":10,"connectTimeoutInSeconds":0}`,
			wantOut:   `{"status":201,"payload":{"rebooting":true}}`,
		},
		{
			name:      "invoke a method without a payload sends null and the hub's default timeouts",
			replies:   []reply{{status: 200, body: `{"status":200,"payload":null}`}},
			call:      func(c *Client) (any, error) { return c.InvokeMethod(ctx, "d1", &hub.MethodRequest{MethodName: "ping"}) },
			wantReq:   []string{"POST /twins/d1/methods"},
			wantQuery: api,
			wantMatch: "-",
			wantBody:  `{"methodName":"ping","payload":null}`,
			wantOut:   `{"status":200,"payload":null}`,
		},
		{
			name:    "send C2D: every property, application properties in order, body in base64",
			replies: []reply{{status: 200, body: c2dResultJSON}},
			call: func(c *Client) (any, error) {
				return c.SendC2D(ctx, "d1", &C2DMessage{Body: []byte{0, 1, 0xff, 'h', 'i'}, MessageID: "m1", CorrelationID: "c1", UserID: "u1",
					Expiry: time.Date(2030, 1, 2, 4, 4, 5, 0, time.FixedZone("CET", 3600)), Ack: hub.AckFull,
					ContentType: "application/json", ContentEncoding: "utf-8",
					App: []hub.Property{{Name: "zeta", Value: "1"}, {Name: "Alpha", Value: ""}, {Name: "mid", Value: "a<b>&c"}}})
			},
			wantReq:   []string{"POST /devices/d1/messages/deviceBound"},
			wantQuery: api,
			wantCT:    "application/vnd.microsoft.iothub.json",
			wantMatch: "-",
			wantBody: `{"body":"AAH/aGk=","base64Encoded":true,"properties":{"iothub-messageid":"m1","iothub-correlationid":"c1","iothub-userid":"u1",` +
				`"iothub-expiry":"2030-01-02T03:04:05Z","iothub-contenttype":"application/json","iothub-contentencoding":"utf-8","iothub-ack":"full",` +
				`"iothub-app-zeta":"1","iothub-app-Alpha":"","iothub-app-mid":"a\u003cb\u003e\u0026c"}}`,
			wantOut: c2dResultJSON,
		},
		{
			name:      "send C2D: an empty message leaves everything to the hub",
			replies:   []reply{{status: 200, body: c2dResultJSON}},
			call:      func(c *Client) (any, error) { return c.SendC2D(ctx, "d/1", &C2DMessage{}) },
			wantReq:   []string{"POST /devices/d%2F1/messages/deviceBound"},
			wantQuery: api,
			wantCT:    "application/vnd.microsoft.iothub.json",
			wantMatch: "-",
			wantBody:  `{"body":"","base64Encoded":true,"properties":{}}`,
			wantOut:   c2dResultJSON,
		},
		{
			name:      "purge C2D",
			replies:   []reply{{status: 200, body: `{"totalMessagesPurged":7,"deviceId":"d1","moduleId":null}`}},
			call:      func(c *Client) (any, error) { return c.PurgeC2D(ctx, "d1") },
			wantReq:   []string{"DELETE /devices/d1/commands"},
			wantQuery: api,
			wantMatch: "-",
			wantOut:   "7",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.replies...)
			out, err := tt.call(f.client())
			if err != nil {
				t.Fatal(err)
			}
			reqs := f.requests()
			var got []string
			for _, r := range reqs {
				got = append(got, r.Method+" "+r.Path)
				checkCommon(t, r, tt.wantQuery, tt.wantCT)
			}
			if strings.Join(got, "\n") != strings.Join(tt.wantReq, "\n") {
				t.Fatalf("requests %q, want %q", got, tt.wantReq)
			}
			last := reqs[len(reqs)-1]
			if m, ok := last.Header["If-Match"]; tt.wantMatch == "-" && ok {
				t.Errorf("If-Match %q sent, want none", m)
			} else if tt.wantMatch != "-" && (len(m) != 1 || m[0] != tt.wantMatch) {
				t.Errorf("If-Match %q, want %q", m, tt.wantMatch)
			}
			if tt.wantBody == "" {
				if last.Body != "" {
					t.Errorf("body %q, want none", last.Body)
				}
			} else {
				// Exact text, not just the same JSON: the read-only fields
				// must be absent, not sent as zero values.
				if last.Body != tt.wantBody {
					t.Errorf("body\n got %s\nwant %s", last.Body, tt.wantBody)
				}
			}
			if tt.wantOut != "" {
				b, err := json.Marshal(out)
				if err != nil {
					t.Fatal(err)
				}
				jsonEqual(t, string(b), tt.wantOut)
			}
		})
	}
}

// TestErrors: both error bodies of
// docs/spec/iothub-protocol.md#http-error-body and what is not one of them.
func TestErrors(t *testing.T) {
	tests := []struct {
		name  string
		reply reply
		want  Error
		text  string
	}{
		{
			name: "legacy body with header (berth, IoT Hub)",
			reply: reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound", "x-ms-request-id": "req-1"},
				body: `{"Message":"ErrorCode:DeviceNotFound;Device d9 not found.","ExceptionMessage":"Tracking ID:abc-123-G:11-TimeStamp:07/16/2016 00:12:41"}`},
			want: Error{Status: 404, Name: "DeviceNotFound", Message: "Device d9 not found.", TrackingID: "abc-123-G:11"},
			text: "iot hub: 404 Not Found (DeviceNotFound): Device d9 not found. [trackingId abc-123-G:11]",
		},
		{
			name:  "legacy body without header: the name comes from Message",
			reply: reply{status: 409, body: `{"Message":"ErrorCode:DeviceAlreadyExists;A device with ID 'd1' is already registered.","ExceptionMessage":""}`},
			want:  Error{Status: 409, Name: "DeviceAlreadyExists", Message: "A device with ID 'd1' is already registered."},
			text:  "iot hub: 409 Conflict (DeviceAlreadyExists): A device with ID 'd1' is already registered.",
		},
		{
			name:  "the header wins over the body",
			reply: reply{status: 412, header: map[string]string{"iothub-errorcode": "PreconditionFailed"}, body: `{"Message":"ErrorCode:Other;Precondition failed."}`},
			want:  Error{Status: 412, Name: "PreconditionFailed", Message: "Precondition failed."},
		},
		{
			name: "Message holding JSON (newer IoT Hub)",
			reply: reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotFound"},
				body: `{"Message":"{\"errorCode\":404001,\"trackingId\":\"t-9\",\"message\":\"Device not found\",\"timestampUtc\":\"2024-01-01T00:00:00Z\"}","ExceptionMessage":""}`},
			want: Error{Status: 404, Name: "DeviceNotFound", Message: "Device not found", TrackingID: "t-9"},
		},
		{
			name:  "not JSON: quoted, the request ID kept",
			reply: reply{status: 502, header: map[string]string{"x-ms-request-id": "req-2"}, body: "<html>bad gateway</html>"},
			want:  Error{Status: 502, Message: "<html>bad gateway</html>", TrackingID: "req-2"},
			text:  "iot hub: 502 Bad Gateway: <html>bad gateway</html> [trackingId req-2]",
		},
		{
			name:  "empty body",
			reply: reply{status: 401},
			want:  Error{Status: 401},
			text:  "iot hub: 401 Unauthorized",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.reply)
			_, err := f.client().GetDevice(context.Background(), "d9")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T %v, want *Error", err, err)
			}
			if *e != tt.want {
				t.Errorf("error %+v, want %+v", *e, tt.want)
			}
			if tt.text != "" && e.Error() != tt.text {
				t.Errorf("Error() %q, want %q", e.Error(), tt.text)
			}
			if IsNotFound(err) != (tt.want.Status == 404) {
				t.Errorf("IsNotFound = %v", IsNotFound(err))
			}
		})
	}
}

func TestArgumentChecks(t *testing.T) {
	f := newFake(t)
	c := f.client()
	ctx := context.Background()
	if _, err := c.UpdateDevice(ctx, &hub.Device{DeviceID: "d1"}, ""); err == nil {
		t.Error("UpdateDevice without If-Match succeeded: it would be a create")
	}
	if _, err := c.CreateDevice(ctx, &hub.Device{}); err == nil {
		t.Error("CreateDevice without an ID succeeded")
	}
	if _, err := c.ListDevices(ctx, MaxTop+1); err == nil {
		t.Error("ListDevices over the page limit succeeded")
	}
	for name, doc := range map[string]string{"empty": "", "not JSON": "{tags", "an array": `[{"tags":{}}]`, "null": "null"} {
		if _, err := c.UpdateTwin(ctx, "d1", json.RawMessage(doc), ""); err == nil {
			t.Errorf("UpdateTwin with %s patch succeeded", name)
		}
		if _, err := c.ReplaceTwin(ctx, "d1", json.RawMessage(doc), ""); err == nil {
			t.Errorf("ReplaceTwin with %s document succeeded", name)
		}
	}
	if _, err := c.GetTwin(ctx, ""); err == nil {
		t.Error("GetTwin without an ID succeeded")
	}
	if _, err := c.InvokeMethod(ctx, "d1", &hub.MethodRequest{}); err == nil {
		t.Error("InvokeMethod without a method name succeeded")
	}
	if _, err := c.InvokeMethod(ctx, "d1", nil); err == nil {
		t.Error("InvokeMethod without a request succeeded")
	}
	if _, err := c.SendC2D(ctx, "d1", &C2DMessage{App: []hub.Property{{Name: "a", Value: "1"}, {Name: "a", Value: "2"}}}); err == nil {
		t.Error("SendC2D with a property given twice succeeded")
	}
	if _, err := c.SendC2D(ctx, "d1", &C2DMessage{App: []hub.Property{{Name: "", Value: "1"}}}); err == nil {
		t.Error("SendC2D with an unnamed property succeeded")
	}
	if _, err := c.SendC2D(ctx, "", &C2DMessage{}); err == nil {
		t.Error("SendC2D without an ID succeeded")
	}
	if _, err := c.PurgeC2D(ctx, ""); err == nil {
		t.Error("PurgeC2D without an ID succeeded")
	}
	if got := f.requests(); len(got) != 0 {
		t.Errorf("refused calls reached the hub: %v", got)
	}
}

func TestMethodHTTPTimeout(t *testing.T) {
	for _, tt := range []struct {
		name              string
		response, connect *int
		want              time.Duration
	}{
		{"the hub's defaults", nil, nil, 30*time.Second + methodTimeoutMargin},
		{"response only", ptr(5), nil, 5*time.Second + methodTimeoutMargin},
		{"both at their maximum", ptr(300), ptr(300), 600*time.Second + methodTimeoutMargin},
		{"connect with the default response", nil, ptr(60), 90*time.Second + methodTimeoutMargin},
		{"negative counts as 0", ptr(-5), ptr(-1), methodTimeoutMargin},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := methodHTTPTimeout(&hub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: tt.response, ConnectTimeoutInSeconds: tt.connect})
			if got != tt.want {
				t.Errorf("timeout %v, want %v", got, tt.want)
			}
		})
	}
}

// TestInvokeMethodOutlastsClientTimeout: a direct method waits for the
// device, longer than the client's limit for other calls, and its errors
// are the hub's.
func TestInvokeMethodOutlastsClientTimeout(t *testing.T) {
	const slow = 300 * time.Millisecond
	f := newFake(t,
		reply{status: 200, body: deviceJSON, delay: slow},
		reply{status: 200, body: `{"status":200,"payload":"late but fine"}`, delay: slow},
		reply{status: 504, delay: slow, header: map[string]string{"iothub-errorcode": "GatewayTimeout"},
			body: `{"Message":"ErrorCode:GatewayTimeout;Timed out waiting for the response from device d1.","ExceptionMessage":""}`},
		reply{status: 404, header: map[string]string{"iothub-errorcode": "DeviceNotOnline"},
			body: `{"Message":"ErrorCode:DeviceNotOnline;Timed out waiting for device d1 to connect.","ExceptionMessage":""}`},
	)
	// httptest's client trusts the server and sends example.com to it.
	hc := *f.srv.Client()
	hc.Timeout = slow / 3
	c, err := New("HostName="+testHost+";SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey, Options{HTTPClient: &hc})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.GetDevice(ctx, "d1"); err == nil {
		t.Fatal("a registry call outlasted the client's timeout")
	}
	req := &hub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: ptr(5)}
	res, err := c.InvokeMethod(ctx, "d1", req)
	if err != nil {
		t.Fatalf("the method call was cut by the client's timeout: %v", err)
	}
	if res.Status != 200 || string(res.Payload) != `"late but fine"` {
		t.Errorf("result %d %s", res.Status, res.Payload)
	}
	for _, want := range []string{
		"iot hub: 504 Gateway Timeout (GatewayTimeout): Timed out waiting for the response from device d1.",
		"iot hub: 404 Not Found (DeviceNotOnline): Timed out waiting for device d1 to connect.",
	} {
		_, err := c.InvokeMethod(ctx, "d1", req)
		var e *Error
		if !errors.As(err, &e) || e.Error() != want {
			t.Errorf("err %v, want %q", err, want)
		}
	}
	if hc.Timeout != slow/3 {
		t.Errorf("the caller's HTTP client was changed: timeout %v", hc.Timeout)
	}
}

func TestQuoteETag(t *testing.T) {
	for in, want := range map[string]string{
		"*":              `"*"`,
		`"*"`:            `"*"`,
		"AAAAAAAAAAE=":   `"AAAAAAAAAAE="`,
		`"AAAAAAAAAAE="`: `"AAAAAAAAAAE="`,
		`"`:              `"""`,
		`a"b`:            `"a"b"`,
	} {
		if got := QuoteETag(in); got != want {
			t.Errorf("QuoteETag(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTLSTrust: the client verifies the server against the CA file, for the
// connection string's host name.
func TestTLSTrust(t *testing.T) {
	f := newFake(t, reply{status: 200, body: deviceJSON})
	// No CA file: the httptest certificate is not trusted.
	c, err := New("HostName="+testHost+";SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey, Options{Address: f.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetDevice(context.Background(), "d1"); err == nil {
		t.Error("an untrusted server was accepted")
	}
	// Right CA, wrong name.
	c, err = New("HostName=other.invalid;SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey, Options{CAFile: f.caFile(), Address: f.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetDevice(context.Background(), "d1"); err == nil {
		t.Error("a certificate for another name was accepted")
	}
	if _, err := New("HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey="+testKey, Options{CAFile: filepath.Join(t.TempDir(), "none.pem")}); err == nil {
		t.Error("a missing CA file was accepted")
	}
}

func TestParseConnectionString(t *testing.T) {
	cs, err := ParseConnectionString(" sharedaccesskey=" + testKey + "; HostName=hub.example.lan ;SharedAccessKeyName=iothubowner;GatewayHostName=gw")
	if err != nil {
		t.Fatal(err)
	}
	if cs != (ConnectionString{HostName: "hub.example.lan", SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey}) {
		t.Errorf("parsed %+v", cs)
	}
	for _, bad := range []string{
		"",
		"HostName=h;SharedAccessKeyName=p",
		"HostName=h;DeviceId=d1;SharedAccessKey=" + testKey, // a device connection string
		"SharedAccessKeyName=p;SharedAccessKey=" + testKey,
		"HostName=h;SharedAccessKeyName=p;SharedAccessKey=not*base64",
		"HostName=h/x;SharedAccessKeyName=p;SharedAccessKey=" + testKey,
		"HostName=h;SharedAccessKeyName=p;junk",
	} {
		_, err := ParseConnectionString(bad)
		if err == nil {
			t.Errorf("ParseConnectionString(%q) succeeded", bad)
			continue
		}
		if strings.Contains(err.Error(), testKey) || strings.Contains(err.Error(), "not*base64") {
			t.Errorf("error quotes the key: %v", err)
		}
	}
}
