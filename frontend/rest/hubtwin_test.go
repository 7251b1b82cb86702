package rest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// wireTwin is what the tests read from a Twin answer.
type wireTwin struct {
	DeviceID   string         `json:"deviceId"`
	ETag       string         `json:"etag"`
	Tags       map[string]any `json:"tags"`
	Properties struct {
		Desired  map[string]any `json:"desired"`
		Reported map[string]any `json:"reported"`
	} `json:"properties"`
}

// checkTwin asserts a 200 Twin answer over the wire: JSON content type,
// the etag quoted in exactly "ETag", and returns the twin.
func checkTwin(t *testing.T, rec *httptest.ResponseRecorder) wireTwin {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	tw := decode[wireTwin](t, rec)
	if got := rec.Header()["ETag"]; len(got) != 1 || got[0] != `"`+tw.ETag+`"` || tw.ETag == "" {
		t.Errorf("ETag header %q, body etag %q", got, tw.ETag)
	}
	if _, canon := rec.Header()["Etag"]; canon {
		t.Error("a canonicalised Etag header was written")
	}
	return tw
}

// TestTwinRoutes: GET, PATCH (every If-Match form) and PUT of the service
// twin over real HTTPS, the desired notification they push to a connected
// device, and their refusals.
func TestTwinRoutes(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "tw-1", "")
	link := f.attach(t, "tw-1", false)
	owner := f.hubOwnerToken(t)
	const path = "/twins/tw-1?api-version=2021-04-12"
	auth := func(tok string, hdr ...string) []string {
		return append([]string{"Authorization", tok, "Content-Type", "application/json; charset=utf-8"}, hdr...)
	}

	rec := wire(t, srv, http.MethodGet, path, nil, auth(owner)...)
	checkCommon(t, rec)
	tw := checkTwin(t, rec)
	if tw.DeviceID != "tw-1" || tw.Properties.Desired["$version"] != 1.0 || tw.Properties.Reported["$version"] != 1.0 {
		t.Fatalf("twin %s", rec.Body)
	}
	first := tw.ETag

	// Node's updateTwin: the etag as the Twin holds it, unquoted; later
	// versions quote it; "*" and no If-Match at all update whatever the
	// version.
	etag := first
	for i, im := range []func(string) string{
		func(e string) string { return e },
		func(e string) string { return `"` + e + `"` },
		func(string) string { return `"*"` },
		func(string) string { return "*" },
		func(string) string { return "" },
	} {
		var hdr []string
		if v := im(etag); v != "" {
			hdr = []string{"If-Match", v}
		}
		body := `{"tags":{"n":` + string(rune('0'+i)) + `},"properties":{"desired":{"speed":` + string(rune('0'+i)) + `}}}`
		rec := wire(t, srv, http.MethodPatch, path, []byte(body), auth(owner, hdr...)...)
		checkCommon(t, rec)
		tw := checkTwin(t, rec)
		if tw.ETag == etag || tw.Tags["n"] != float64(i) || tw.Properties.Desired["speed"] != float64(i) {
			t.Fatalf("If-Match %q: %s", im(etag), rec.Body)
		}
		etag = tw.ETag
	}
	// The device heard of every desired change, in version order.
	_, desired, _ := link.snapshot()
	if len(desired) != 5 || desired[4].version != 6 || desired[4].body != `{"speed":4,"$version":6}` {
		t.Errorf("desired notifications %+v", desired)
	}

	// A stale etag: 412, nothing changed.
	rec = wire(t, srv, http.MethodPatch, path, []byte(`{"tags":{"n":9}}`), auth(owner, "If-Match", `"`+first+`"`)...)
	checkHubError(t, rec, azerr.HubPreconditionFailed)
	if _, has := raw(rec, "ETag"); has {
		t.Error("an error carries an ETag")
	}
	rec = wire(t, srv, http.MethodPut, path, []byte(`{"tags":{}}`), auth(owner, "If-Match", first)...)
	checkHubError(t, rec, azerr.HubPreconditionFailed)

	// PUT replaces tags and desired properties; the device gets the
	// removal as null.
	rec = wire(t, srv, http.MethodPut, path, []byte(`{"tags":{"site":"a"},"properties":{"desired":{"mode":"eco"}}}`), auth(owner, "If-Match", `"`+etag+`"`)...)
	tw = checkTwin(t, rec)
	if tw.Tags["site"] != "a" || tw.Tags["n"] != nil || tw.Properties.Desired["mode"] != "eco" || tw.Properties.Desired["speed"] != nil {
		t.Errorf("replaced twin %s", rec.Body)
	}
	if _, desired, _ = link.snapshot(); len(desired) != 6 || !strings.Contains(desired[5].body, `"speed":null`) {
		t.Errorf("replace notification %+v", desired)
	}

	// GET shows what was written, with the same etag.
	rec = wire(t, srv, http.MethodGet, path, nil, auth(owner)...)
	if got := checkTwin(t, rec); got.ETag != tw.ETag {
		t.Errorf("GET etag %q, want %q", got.ETag, tw.ETag)
	}
}

// TestTwinErrors: each refusal of the twin routes, over real HTTPS.
func TestTwinErrors(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	d := f.device(t, "tw-e", "")
	owner := f.hubOwnerToken(t)
	tests := []struct {
		name, method, path, body, token string
		want                            azerr.Code
	}{
		{"unknown device GET", "GET", "/twins/ghost", "", owner, azerr.HubDeviceNotFound},
		{"unknown device PATCH", "PATCH", "/twins/ghost", `{"tags":{}}`, owner, azerr.HubDeviceNotFound},
		{"not JSON", "PATCH", "/twins/tw-e", `{"tags":`, owner, azerr.HubArgumentInvalid},
		{"null would wipe the twin", "PUT", "/twins/tw-e", `null`, owner, azerr.HubArgumentInvalid},
		{"array", "PATCH", "/twins/tw-e", `[{"tags":{}}]`, owner, azerr.HubArgumentInvalid},
		{"empty body", "PATCH", "/twins/tw-e", ``, owner, azerr.HubArgumentInvalid},
		{"arrays are not twin values", "PATCH", "/twins/tw-e", `{"tags":{"a":[1]}}`, owner, azerr.HubArgumentInvalid},
		{"body over the limit", "PATCH", "/twins/tw-e", `{"tags":{"a":"` + strings.Repeat("x", maxTwinBody) + `"}}`, owner, azerr.HubMessageTooLarge},
		{"no token", "GET", "/twins/tw-e", "", "", azerr.HubUnauthorizedAccess},
		{"device token", "GET", "/twins/tw-e", "", hubDeviceToken(t, "tw-e", d.Keys()[0], f.now.Add(time.Hour)), azerr.HubUnauthorizedAccess},
		{"registryReadWrite cannot write twins", "PATCH", "/twins/tw-e", `{"tags":{}}`, f.hubToken(t, hubName, "registryReadWrite"), azerr.HubUnauthorizedAccess},
		{"registryReadWrite cannot replace twins", "PUT", "/twins/tw-e", `{"tags":{}}`, f.hubToken(t, hubName, "registryReadWrite"), azerr.HubUnauthorizedAccess},
		{"device policy cannot read twins", "GET", "/twins/tw-e", "", f.hubToken(t, hubName, "device"), azerr.HubUnauthorizedAccess},
		{"unknown module twin", "GET", "/twins/tw-e/modules/m1", "", owner, azerr.HubModuleNotFound},
		{"unknown module twin PATCH", "PATCH", "/twins/tw-e/modules/m1", `{}`, owner, azerr.HubModuleNotFound},
		{"module twin of an unknown device", "GET", "/twins/nodev/modules/m1", "", owner, azerr.HubDeviceNotFound},
		{"405", "DELETE", "/twins/tw-e", "", owner, azerr.HubMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			rec := wire(t, srv, tt.method, tt.path, body, "Authorization", tt.token)
			checkHubError(t, rec, tt.want)
		})
	}
	// Nothing was written by the refused requests.
	tw, err := f.hubCfg.Twins.Get(context.Background(), hubName, "tw-e")
	if err != nil || string(tw.Tags) != "{}" || tw.Version != 1 {
		t.Errorf("twin after refusals: %+v %v", tw, err)
	}
}

// TestTwinRights: ServiceConnect reads and writes twins; RegistryRead may
// read them (berth's choice,
// docs/spec/iothub-protocol.md#policies-and-rights), not write them.
func TestTwinRights(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "tw-r", "")
	tests := []struct {
		policy, method, body string
		want                 int
	}{
		{"service", "GET", "", 200},
		{"service", "PATCH", `{"tags":{"a":1}}`, 200},
		{"service", "PUT", `{"tags":{"a":2}}`, 200},
		{"registryRead", "GET", "", 200},
		{"registryRead", "PATCH", `{"tags":{"a":3}}`, 401},
		{"registryReadWrite", "GET", "", 200},
		{"device", "PATCH", `{"tags":{"a":3}}`, 401},
		{hub.OwnerPolicy, "PATCH", `{"tags":{"a":4}}`, 200},
	}
	for _, tt := range tests {
		t.Run(tt.policy+" "+tt.method, func(t *testing.T) {
			rec := wire(t, srv, tt.method, "/twins/tw-r", []byte(tt.body), "Authorization", f.hubToken(t, hubName, tt.policy))
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if tt.want == 401 {
				checkHubError(t, rec, azerr.HubUnauthorizedAccess)
			}
		})
	}
}

// methodBody is a CloudToDeviceMethod as Node's DeviceMethod sends it.
func methodBody(name, payload string, responseTimeout, connectTimeout int) []byte {
	return []byte(`{"methodName":"` + name + `","payload":` + payload + `,"responseTimeoutInSeconds":` +
		itoa(responseTimeout) + `,"connectTimeoutInSeconds":` + itoa(connectTimeout) + `}`)
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestMethodInvoke: POST /twins/{id}/methods over real HTTPS, answered by a
// fake device link, and every refusal.
func TestMethodInvoke(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "m-on", "")
	f.device(t, "m-off", "")
	f.device(t, "m-unsub", "")
	f.device(t, "m-dis", hub.StatusDisabled)
	on := f.attach(t, "m-on", true)
	on.answer = func(_ context.Context, name string, payload []byte) (int, []byte, error) {
		if name == "fail" {
			return 0, nil, errors.New("connection lost")
		}
		return 201, []byte(`{"echo":` + string(payload) + `}`), nil
	}
	f.attach(t, "m-unsub", false)
	owner := f.hubOwnerToken(t)

	tests := []struct {
		name, device string
		body         []byte
		token        string
		want         azerr.Code // 0: 200
		wantBody     string
	}{
		{"device answers", "m-on", methodBody("reboot", `{"delay":5}`, 30, 0), owner, azerr.Code{}, `{"status":201,"payload":{"echo":{"delay":5}}}`},
		{"no payload is null", "m-on", []byte(`{"methodName":"ping"}`), owner, azerr.Code{}, `{"status":201,"payload":{"echo":null}}`},
		{"service policy", "m-on", methodBody("x", `1`, 5, 0), f.hubToken(t, hubName, "service"), azerr.Code{}, `{"status":201,"payload":{"echo":1}}`},
		{"unknown device", "ghost", methodBody("x", `1`, 30, 0), owner, azerr.HubDeviceNotFound, ""},
		{"not connected", "m-off", methodBody("x", `1`, 30, 0), owner, azerr.HubDeviceNotOnline, ""},
		{"connected, not subscribed", "m-unsub", methodBody("x", `1`, 30, 0), owner, azerr.HubDeviceNotOnline, ""},
		{"disabled", "m-dis", methodBody("x", `1`, 30, 0), owner, azerr.HubDeviceNotOnline, ""},
		{"connection lost", "m-on", methodBody("fail", `1`, 30, 0), owner, azerr.HubDeviceNotOnline, ""},
		{"invalid name", "m-on", methodBody("a/b", `1`, 30, 0), owner, azerr.HubArgumentInvalid, ""},
		{"response timeout too short", "m-on", methodBody("x", `1`, 4, 0), owner, azerr.HubArgumentInvalid, ""},
		{"connect timeout too long", "m-on", methodBody("x", `1`, 30, 301), owner, azerr.HubArgumentInvalid, ""},
		{"not JSON", "m-on", []byte(`{"methodName":`), owner, azerr.HubArgumentInvalid, ""},
		{"not an object", "m-on", []byte(`["x"]`), owner, azerr.HubArgumentInvalid, ""},
		{"timeout not an integer", "m-on", []byte(`{"methodName":"x","responseTimeoutInSeconds":"30"}`), owner, azerr.HubArgumentInvalid, ""},
		{"payload over 128 KB", "m-on", methodBody("x", `"`+strings.Repeat("p", 128*1024)+`"`, 30, 0), owner, azerr.HubMessageTooLarge, ""},
		{"body over the limit", "m-on", methodBody("x", `"`+strings.Repeat("p", maxMethodRequest)+`"`, 30, 0), owner, azerr.HubMessageTooLarge, ""},
		{"registryReadWrite", "m-on", methodBody("x", `1`, 30, 0), f.hubToken(t, hubName, "registryReadWrite"), azerr.HubUnauthorizedAccess, ""},
		{"unknown module", "m-on/modules/mod", methodBody("x", `1`, 30, 0), owner, azerr.HubModuleNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := wire(t, srv, http.MethodPost, "/twins/"+tt.device+"/methods?api-version=2021-04-12", tt.body,
				"Authorization", tt.token, "Content-Type", "application/json; charset=utf-8")
			if tt.want != (azerr.Code{}) {
				checkHubError(t, rec, tt.want)
				return
			}
			checkCommon(t, rec)
			if rec.Code != http.StatusOK || rec.Body.String() != tt.wantBody {
				t.Errorf("%d %s, want 200 %s", rec.Code, rec.Body, tt.wantBody)
			}
		})
	}
	calls, _, _ := on.snapshot()
	if len(calls) != 4 || calls[0].name != "reboot" || calls[0].payload != `{"delay":5}` || calls[1].payload != "null" {
		t.Errorf("the device saw %+v", calls)
	}
}

// TestMethodTimeout: a device that does not answer within
// responseTimeoutInSeconds is 504 GatewayTimeout, after that time (the
// domain's own timer, the shortest IoT Hub allows: 5 s).
func TestMethodTimeout(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "m-slow", "")
	link := f.attach(t, "m-slow", true)
	link.answer = func(ctx context.Context, _ string, _ []byte) (int, []byte, error) {
		<-ctx.Done()
		return 0, nil, ctx.Err()
	}
	start := time.Now()
	rec := wire(t, srv, http.MethodPost, "/twins/m-slow/methods", methodBody("slow", `{}`, 5, 0), "Authorization", f.hubOwnerToken(t))
	checkHubError(t, rec, azerr.HubGatewayTimeout)
	if calls, _, _ := link.snapshot(); len(calls) != 1 || calls[0].deadline.Sub(start) < 4*time.Second || calls[0].deadline.Sub(start) > 6*time.Second {
		t.Errorf("invocations %+v, want one with a deadline 5 s after %v", calls, start)
	}
	// The device's silence is its outcome, not berth's fault: info, not
	// error, for the operator.
	logs := f.logs.String()
	if strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "level=INFO msg=\"rest: the device did not answer in time\"") {
		t.Errorf("a method timeout is not logged once at info:\n%s", logs)
	}
}

// TestMethodOutlivesWriteTimeout: an invocation that lasts longer than the
// listener's WriteTimeout still gets its answer, because the handler
// extends this response's write deadline by the invocation's timeouts.
// Without that, net/http would close the connection and the client would
// read EOF.
func TestMethodOutlivesWriteTimeout(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 500*time.Millisecond)
	f.device(t, "m-late", "")
	link := f.attach(t, "m-late", true)
	link.answer = func(ctx context.Context, _ string, _ []byte) (int, []byte, error) {
		// Answer well after the listener's write deadline has passed.
		select {
		case <-time.After(1500 * time.Millisecond):
			return 200, []byte(`"late"`), nil
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
	rec := wire(t, srv, http.MethodPost, "/twins/m-late/methods", methodBody("late", `null`, 5, 0), "Authorization", f.hubOwnerToken(t))
	checkCommon(t, rec)
	if rec.Code != http.StatusOK || rec.Body.String() != `{"status":200,"payload":"late"}` {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

// TestMethodConnectTimeout: with connectTimeoutInSeconds the invocation
// waits for the device to connect and subscribe.
func TestMethodConnectTimeout(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "m-later", "")
	tok := f.hubOwnerToken(t)
	type answer struct {
		rec *httptest.ResponseRecorder
		err error
	}
	done := make(chan answer, 1)
	go func() {
		rec, err := wireErr(srv, http.MethodPost, "/twins/m-later/methods", methodBody("hello", `"hi"`, 30, 60), "Authorization", tok)
		done <- answer{rec, err}
	}()
	// Whether the device attaches before or while the invocation waits,
	// the invocation reaches it.
	f.attach(t, "m-later", true)
	got := <-done
	if got.err != nil {
		t.Fatal(got.err)
	}
	if got.rec.Code != http.StatusOK || got.rec.Body.String() != `{"status":200,"payload":"hi"}` {
		t.Fatalf("%d %s", got.rec.Code, got.rec.Body)
	}
}

// TestMethodDuration: the write deadline covers the connect and response
// timeouts the domain will use, clamped so the arithmetic cannot overflow.
func TestMethodDuration(t *testing.T) {
	n := func(v int) *int { return &v }
	tests := []struct {
		name          string
		resp, connect *int
		want          time.Duration
	}{
		{"defaults", nil, nil, 30 * time.Second},
		{"both", n(10), n(20), 30 * time.Second},
		{"the maxima", n(300), n(300), 600 * time.Second},
		{"huge values are clamped", n(1 << 62), n(1 << 62), 600 * time.Second},
		{"negative connect is none", n(5), n(-7), 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := methodDuration(&hub.MethodRequest{ResponseTimeoutInSeconds: tt.resp, ConnectTimeoutInSeconds: tt.connect}); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
