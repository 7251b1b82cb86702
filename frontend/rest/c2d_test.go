package rest

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// c2dPath is a device's C2D path in the spelling a client uses.
func c2dPath(id, spelling string) string {
	return "/devices/" + url.PathEscape(id) + "/messages/" + spelling
}

// c2dCount is the length of a device's C2D queue; an error fails the
// test, so that a broken Count cannot pass for an empty queue.
func (f *fixture) c2dCount(t *testing.T, deviceID string) int {
	t.Helper()
	n, err := f.c2d.Count(context.Background(), hubName, deviceID)
	if err != nil {
		t.Fatalf("Count(%s): %v", deviceID, err)
	}
	return n
}

// sendResult is the answer to a C2D send.
type sendResult struct {
	MessageID       string `json:"messageId"`
	SequenceNumber  int64  `json:"sequenceNumber"`
	EnqueuedTimeUTC string `json:"enqueuedTimeUtc"`
	ExpiryTimeUTC   string `json:"expiryTimeUtc"`
}

// c2dDevice creates a device and returns its SAS token.
func (f *fixture) c2dDevice(t testing.TB, id string) string {
	t.Helper()
	d := f.device(t, id, "")
	return hubDeviceToken(t, id, d.Keys()[0], f.now.Add(time.Hour))
}

var hubTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// TestCloudToDeviceLifecycle: a message sent with the raw form over real
// HTTPS is received by the device with every property in exactly named
// headers, abandoned, received again (delivery count 2, a new lock),
// refused under its old lock and completed under the new one.
func TestCloudToDeviceLifecycle(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	owner := f.hubOwnerToken(t)
	devTok := f.c2dDevice(t, "c2d-1")
	link := f.attach(t, "c2d-1", false) // a device exists before it connects

	// Empty queue: 204.
	rec := wire(t, srv, http.MethodGet, c2dPath("c2d-1", "devicebound")+"?api-version=2021-04-12", nil, "Authorization", devTok)
	checkCommon(t, rec)
	if rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Fatalf("empty queue: %d %q", rec.Code, rec.Body)
	}

	rec = wire(t, srv, http.MethodPost, c2dPath("c2d-1", "deviceBound"), []byte("hello\x00device"),
		"Authorization", owner,
		"Content-Type", "application/octet-stream",
		"iothub-messageid", "mid-1",
		"iothub-correlationid", "cid-1",
		"iothub-userid", "uid-1",
		"iothub-expiry", "2023-11-14T23:00:00+01:00",
		"iothub-ack", "Full",
		"iothub-contenttype", "application/json",
		"iothub-contentencoding", "utf-8",
		"iothub-app-Color", "blue",
		"iothub-to", "/devices/other/messages/deviceBound",
		"User-Agent", "curl/8")
	checkCommon(t, rec)
	if rec.Code != http.StatusOK {
		t.Fatalf("send: %d %s", rec.Code, rec.Body)
	}
	sent := decode[sendResult](t, rec)
	if sent.MessageID != "mid-1" || sent.SequenceNumber <= 0 || !hubTimeRE.MatchString(sent.EnqueuedTimeUTC) || sent.ExpiryTimeUTC != "2023-11-14T22:00:00.000Z" {
		t.Errorf("send answer %s", rec.Body)
	}
	// Durable before the answer, and the device's link was woken.
	if n, err := f.c2d.Count(context.Background(), hubName, "c2d-1"); err != nil || n != 1 {
		t.Errorf("queue holds %d (%v)", n, err)
	}
	if _, _, pending := link.snapshot(); pending != 1 {
		t.Errorf("link woken %d times", pending)
	}

	receive := func(wantCount int) string {
		t.Helper()
		rec := wire(t, srv, http.MethodGet, c2dPath("c2d-1", "devicebound")+"?api-version=2021-04-12&iothub-messagelocktimeout=60", nil, "Authorization", devTok)
		if rec.Code != http.StatusOK {
			t.Fatalf("receive: %d %s", rec.Code, rec.Body)
		}
		if rec.Body.String() != "hello\x00device" {
			t.Errorf("body %q", rec.Body)
		}
		hdr := rec.Header()
		etag := hdr["ETag"]
		if len(etag) != 1 || len(etag[0]) < 3 || etag[0][0] != '"' || etag[0][len(etag[0])-1] != '"' {
			t.Fatalf("ETag %q, want the quoted lock token", etag)
		}
		want := map[string]string{
			"Content-Type":           contentTypeOctets,
			"iothub-messageid":       "mid-1",
			"iothub-correlationid":   "cid-1",
			"iothub-to":              "/devices/c2d-1/messages/deviceBound",
			"iothub-userid":          "uid-1",
			"iothub-expiry":          "2023-11-14T22:00:00.000Z",
			"iothub-ack":             "full",
			"iothub-enqueuedtime":    sent.EnqueuedTimeUTC,
			"iothub-deliverycount":   strconv.Itoa(wantCount),
			"iothub-sequencenumber":  strconv.FormatInt(sent.SequenceNumber, 10),
			"ContentType":            "application/json",
			"ContentEncoding":        "utf-8",
			"iothub-contenttype":     "application/json",
			"iothub-contentencoding": "utf-8",
			// Go canonicalised the request header: the name arrives
			// lower-cased.
			"iothub-app-color": "blue",
		}
		for name, v := range want {
			if got, _ := raw(rec, name); got != v {
				t.Errorf("header %s = %q, want %q", name, got, v)
			}
		}
		// Every name on the wire is one of those, exactly spelled (no
		// canonical Etag or Iothub-Messageid), plus net/http's own.
		for name := range hdr {
			if _, ok := want[name]; !ok && !slices.Contains([]string{"ETag", "x-ms-request-id", "Content-Length", "Date", "Connection"}, name) {
				t.Errorf("unexpected header %q", name)
			}
		}
		// What Node's toMessage and C# do with the ETag.
		return etag[0][1 : len(etag[0])-1]
	}

	first := receive(1)
	// Locked: nothing else to receive.
	if rec := wire(t, srv, http.MethodGet, c2dPath("c2d-1", "DeviceBound"), nil, "Authorization", devTok); rec.Code != http.StatusNoContent {
		t.Fatalf("locked message delivered again: %d", rec.Code)
	}
	// Abandon (Node sends the unquoted lock token as If-Match, which is
	// ignored).
	rec = wire(t, srv, http.MethodPost, c2dPath("c2d-1", "devicebound")+"/"+first+"/abandon?api-version=2021-04-12", nil, "Authorization", devTok, "If-Match", first)
	checkCommon(t, rec)
	if rec.Code != http.StatusNoContent {
		t.Fatalf("abandon: %d %s", rec.Code, rec.Body)
	}
	second := receive(2)
	if second == first {
		t.Error("the lock token did not change on redelivery")
	}
	// The old lock is lost for every settlement.
	for _, req := range []struct{ method, suffix string }{
		{http.MethodDelete, ""}, {http.MethodDelete, "?reject"}, {http.MethodPost, "/abandon"},
	} {
		rec = wire(t, srv, req.method, c2dPath("c2d-1", "devicebound")+"/"+first+req.suffix, nil, "Authorization", devTok, "If-Match", `"`+second+`"`)
		checkHubError(t, rec, azerr.HubMessageLockLost)
	}
	// Complete under the current lock (C# and the C SDK quote If-Match).
	rec = wire(t, srv, http.MethodDelete, c2dPath("c2d-1", "deviceBound")+"/"+second+"?api-version=2021-04-12", nil, "Authorization", devTok, "If-Match", `"`+second+`"`)
	if rec.Code != http.StatusNoContent {
		t.Fatalf("complete: %d %s", rec.Code, rec.Body)
	}
	checkHubError(t, wire(t, srv, http.MethodDelete, c2dPath("c2d-1", "devicebound")+"/"+second, nil, "Authorization", devTok), azerr.HubMessageLockLost)
	if n := f.c2dCount(t, "c2d-1"); n != 0 {
		t.Errorf("%d messages left", n)
	}
}

// TestCloudToDeviceReject: ?reject with any value or none dead-letters
// the message.
func TestCloudToDeviceReject(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	devTok := f.c2dDevice(t, "c2d-r")
	for _, q := range []string{"?api-version=2021-04-12&reject", "?reject=true", "?Reject="} {
		t.Run(q, func(t *testing.T) {
			if _, err := f.c2d.Send(context.Background(), hubName, "c2d-r", &hub.CloudMessage{Body: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			rec := wire(t, srv, http.MethodGet, c2dPath("c2d-r", "devicebound"), nil, "Authorization", devTok)
			tok, _ := raw(rec, "ETag")
			rec = wire(t, srv, http.MethodDelete, c2dPath("c2d-r", "devicebound")+"/"+strings.Trim(tok, `"`)+q, nil, "Authorization", devTok)
			if rec.Code != http.StatusNoContent {
				t.Fatalf("reject: %d %s", rec.Code, rec.Body)
			}
			if n := f.c2dCount(t, "c2d-r"); n != 0 {
				t.Errorf("%d messages left", n)
			}
		})
	}
}

// TestCloudToDeviceSendJSON: the JSON form keeps property-name case and
// decodes the body as a batch element's.
func TestCloudToDeviceSendJSON(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	devTok := f.c2dDevice(t, "c2d-j")
	owner := f.hubOwnerToken(t)
	tests := []struct {
		name, body, wantBody string
		wantApp              []hub.Property
		wantID               string
	}{
		{"base64 by default", `{"body":"` + base64.StdEncoding.EncodeToString([]byte("\x01bin")) + `","properties":{"iothub-app-Name":"v","IoTHub-MessageId":"j-1","iothub-app-b":"2"}}`,
			"\x01bin", []hub.Property{{Name: "Name", Value: "v"}, {Name: "b", Value: "2"}}, "j-1"},
		{"text body", `{"body":"plain text","base64Encoded":false}`, "plain text", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := wire(t, srv, http.MethodPost, c2dPath("c2d-j", "deviceBound"), []byte(tt.body), "Authorization", owner, "Content-Type", batchContentType+"; charset=utf-8")
			if rec.Code != http.StatusOK {
				t.Fatalf("send: %d %s", rec.Code, rec.Body)
			}
			sent := decode[sendResult](t, rec)
			if tt.wantID != "" && sent.MessageID != tt.wantID || !uuidRE.MatchString(sent.MessageID) && tt.wantID == "" {
				t.Errorf("messageId %q", sent.MessageID)
			}
			msgs, err := f.c2d.Receive(context.Background(), hubName, "c2d-j", 1, time.Minute)
			if err != nil || len(msgs) != 1 {
				t.Fatalf("receive: %v %v", msgs, err)
			}
			m := msgs[0]
			if string(m.Body) != tt.wantBody || !slices.Equal(m.App, tt.wantApp) {
				t.Errorf("message body %q app %v", m.Body, m.App)
			}
			if err := f.c2d.Complete(context.Background(), hubName, "c2d-j", m.LockToken); err != nil {
				t.Fatal(err)
			}
			// Over the wire, the app property keeps its case.
			if _, err := f.c2d.Send(context.Background(), hubName, "c2d-j", &hub.CloudMessage{Body: []byte("x"), App: tt.wantApp}); err != nil {
				t.Fatal(err)
			}
			rec = wire(t, srv, http.MethodGet, c2dPath("c2d-j", "devicebound"), nil, "Authorization", devTok)
			for _, p := range tt.wantApp {
				if got, _ := raw(rec, "iothub-app-"+p.Name); got != p.Value {
					t.Errorf("iothub-app-%s = %q (headers %v)", p.Name, got, rec.Header())
				}
			}
			if _, err := f.c2d.Purge(context.Background(), hubName, "c2d-j"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCloudToDeviceErrors: every refusal of the C2D routes, over real
// HTTPS; none enqueues anything.
func TestCloudToDeviceErrors(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "c2d-full", "")
	for i := 0; i < 50; i++ { // IoT Hub's queue depth, as a literal: a wrong constant fails here
		if _, err := f.c2d.Send(context.Background(), hubName, "c2d-full", &hub.CloudMessage{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	owner := f.hubOwnerToken(t)
	devTok := f.c2dDevice(t, "c2d-e")
	otherTok := f.c2dDevice(t, "c2d-other")
	send := c2dPath("c2d-e", "deviceBound")
	js := "Content-Type"
	tests := []struct {
		name, method, path, body string
		hdr                      []string
		want                     azerr.Code
	}{
		{"unknown device", "POST", c2dPath("ghost", "deviceBound"), "x", []string{"Authorization", owner}, azerr.HubDeviceNotFound},
		{"queue full", "POST", c2dPath("c2d-full", "devicebound"), "x", []string{"Authorization", owner}, azerr.HubQueueDepthExceeded},
		{"body over 64 KB", "POST", send, strings.Repeat("b", 64*1024+1), []string{"Authorization", owner}, azerr.HubMessageTooLarge},
		{"body and properties over 64 KB", "POST", send, strings.Repeat("b", 64*1024-2), []string{"Authorization", owner, "iothub-app-k", "vvv"}, azerr.HubMessageTooLarge},
		{"JSON form over 64 KB decoded", "POST", send, `{"body":"` + strings.Repeat("b", 64*1024+1) + `","base64Encoded":false}`, []string{"Authorization", owner, js, batchContentType}, azerr.HubMessageTooLarge},
		{"bad ack", "POST", send, "x", []string{"Authorization", owner, "iothub-ack", "sometimes"}, azerr.HubArgumentInvalid},
		{"bad expiry", "POST", send, "x", []string{"Authorization", owner, "iothub-expiry", "tomorrow"}, azerr.HubArgumentInvalid},
		{"bad app property name", "POST", send, `{"body":"eA==","properties":{"iothub-app-a b":"v"}}`, []string{"Authorization", owner, js, batchContentType}, azerr.HubArgumentInvalid},
		{"control character in a message ID", "POST", send, `{"body":"eA==","properties":{"iothub-messageid":"a\u0001"}}`, []string{"Authorization", owner, js, batchContentType}, azerr.HubArgumentInvalid},
		{"JSON form not an object", "POST", send, `[{"body":"eA=="}]`, []string{"Authorization", owner, js, batchContentType}, azerr.HubArgumentInvalid},
		{"JSON form not JSON", "POST", send, `{"body":`, []string{"Authorization", owner, js, batchContentType}, azerr.HubArgumentInvalid},
		{"JSON form bad base64", "POST", send, `{"body":"***"}`, []string{"Authorization", owner, js, batchContentType}, azerr.HubArgumentInvalid},
		{"JSON form null property", "POST", send, `{"body":"eA==","properties":{"iothub-app-a":null}}`, []string{"Authorization", owner, js, batchContentType}, azerr.HubArgumentInvalid},
		{"send with a device token", "POST", send, "x", []string{"Authorization", devTok}, azerr.HubUnauthorizedAccess},
		{"send without ServiceConnect", "POST", send, "x", []string{"Authorization", f.hubToken(t, hubName, "registryReadWrite")}, azerr.HubUnauthorizedAccess},
		{"purge without ServiceConnect", "DELETE", "/devices/c2d-e/commands", "", []string{"Authorization", f.hubToken(t, hubName, "registryReadWrite")}, azerr.HubUnauthorizedAccess},
		{"purge unknown device", "DELETE", "/devices/ghost/commands", "", []string{"Authorization", owner}, azerr.HubDeviceNotFound},
		{"receive without a token", "GET", send, "", nil, azerr.HubUnauthorizedAccess},
		{"receive with another device's token", "GET", send, "", []string{"Authorization", otherTok}, azerr.HubUnauthorizedAccess},
		{"receive with a service token", "GET", send, "", []string{"Authorization", f.hubToken(t, hubName, "service")}, azerr.HubUnauthorizedAccess},
		{"receive with a bad lock timeout", "GET", send + "?iothub-messagelocktimeout=soon", "", []string{"Authorization", devTok}, azerr.HubArgumentInvalid},
		{"complete an unknown lock", "DELETE", send + "/00000000-0000-0000-0000-000000000000", "", []string{"Authorization", devTok}, azerr.HubMessageLockLost},
		{"complete a malformed lock", "DELETE", send + "/not-a-lock", "", []string{"Authorization", devTok}, azerr.HubMessageLockLost},
		{"abandon with another device's token", "POST", send + "/x/abandon", "", []string{"Authorization", otherTok}, azerr.HubUnauthorizedAccess},
		{"405 on the queue", "PUT", send, "", []string{"Authorization", owner}, azerr.HubMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			checkHubError(t, wire(t, srv, tt.method, tt.path, body, tt.hdr...), tt.want)
		})
	}
	if n := f.c2dCount(t, "c2d-e"); n != 0 {
		t.Errorf("refused sends enqueued %d messages", n)
	}
	if n := f.c2dCount(t, "c2d-full"); n != 50 {
		t.Errorf("the full queue holds %d", n)
	}
}

// TestCloudToDeviceExpiry: a send without iothub-expiry keeps the message
// an hour; one with a later expiry than 48 hours is kept 48 hours, and the
// answer says so. IoT Hub's figures, as literals.
func TestCloudToDeviceExpiry(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "c2d-x", "")
	owner := f.hubOwnerToken(t)
	for _, tt := range []struct {
		name   string
		expiry time.Duration // after now; 0: no header
		want   time.Duration // after enqueuing
	}{
		{"none", 0, time.Hour},
		{"ten hours", 10 * time.Hour, 10 * time.Hour},
		{"48 hours", 48 * time.Hour, 48 * time.Hour},
		{"72 hours", 72 * time.Hour, 48 * time.Hour},
		{"ten years", 10 * 365 * 24 * time.Hour, 48 * time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hdr := []string{"Authorization", owner}
			if tt.expiry != 0 {
				hdr = append(hdr, "iothub-expiry", f.now.Add(tt.expiry).UTC().Format(time.RFC3339Nano))
			}
			rec := wire(t, srv, http.MethodPost, c2dPath("c2d-x", "deviceBound"), []byte("x"), hdr...)
			if rec.Code != http.StatusOK {
				t.Fatalf("send: %d %s", rec.Code, rec.Body)
			}
			sent := decode[sendResult](t, rec)
			enq, err := time.Parse(hub.EnqueuedTimeLayout, sent.EnqueuedTimeUTC)
			if err != nil {
				t.Fatal(err)
			}
			if want := enq.Add(tt.want).Format(hub.EnqueuedTimeLayout); sent.ExpiryTimeUTC != want {
				t.Errorf("expiryTimeUtc %s, want %s (enqueued %s)", sent.ExpiryTimeUTC, want, sent.EnqueuedTimeUTC)
			}
		})
	}
}

// TestCloudToDevicePurge: DELETE /devices/{id}/commands empties the queue
// and says how many messages it held.
func TestCloudToDevicePurge(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	f.device(t, "c2d-p", "")
	for i := 0; i < 3; i++ {
		rec := wire(t, srv, http.MethodPost, c2dPath("c2d-p", "devicebound"), []byte("m"), "Authorization", f.hubToken(t, hubName, "service"))
		if rec.Code != http.StatusOK {
			t.Fatalf("send: %d %s", rec.Code, rec.Body)
		}
	}
	for _, want := range []string{
		`{"totalMessagesPurged":3,"deviceId":"c2d-p","moduleId":null}`,
		`{"totalMessagesPurged":0,"deviceId":"c2d-p","moduleId":null}`,
	} {
		rec := wire(t, srv, http.MethodDelete, "/devices/c2d-p/commands?api-version=2021-04-12", nil, "Authorization", f.hubToken(t, hubName, "service"))
		checkCommon(t, rec)
		if rec.Code != http.StatusOK || rec.Body.String() != want {
			t.Errorf("purge: %d %s, want %s", rec.Code, rec.Body, want)
		}
	}
}

// TestLockTimeout: how iothub-messagelocktimeout is read. IoT Hub's
// default lock is a minute and its longest five: literals, not the
// constants.
func TestLockTimeout(t *testing.T) {
	tests := []struct {
		query string
		want  time.Duration
		bad   bool
	}{
		{"", time.Minute, false},
		{"?iothub-messagelocktimeout=", time.Minute, false},
		{"?iothub-messagelocktimeout=60", time.Minute, false},
		{"?IoTHub-MessageLockTimeout=5", 5 * time.Second, false},
		{"?iothub-messagelocktimeout=0", time.Minute, false},
		{"?iothub-messagelocktimeout=-3", time.Minute, false},
		{"?iothub-messagelocktimeout=301", 5 * time.Minute, false},
		{"?iothub-messagelocktimeout=99999999999999999999999", 5 * time.Minute, false},
		{"?iothub-messagelocktimeout=-99999999999999999999999", time.Minute, false},
		{"?iothub-messagelocktimeout=1.5", 0, true},
		{"?iothub-messagelocktimeout=1m", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			got, err := lockTimeout(httptest.NewRequest(http.MethodGet, "/devices/d/messages/devicebound"+tt.query, nil))
			if tt.bad {
				var ae *azerr.Error
				if err == nil || !errors.As(err, &ae) || ae.Code != azerr.HubArgumentInvalid {
					t.Fatalf("got %v, %v; want ArgumentInvalid", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
