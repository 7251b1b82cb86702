package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// FuzzCloudToDeviceSend: any body, in either form, with any property
// header, is either enqueued (200 with the assigned message ID and
// sequence number; the message received back carries the body and an
// application property that is valid) or refused with a 400 or 413 and
// nothing enqueued; never a 500.
func FuzzCloudToDeviceSend(f *testing.F) {
	for _, s := range []struct {
		body          string
		json          bool
		header, value string
	}{
		{"hello", false, "iothub-messageid", "m-1"},
		{"", false, "iothub-expiry", "2030-01-02T15:04:05Z"},
		{"x", false, "iothub-expiry", "soon"},
		{"x", false, "iothub-ack", "full"},
		{"x", false, "iothub-app-k", "v"},
		{`{"body":"aGk=","properties":{"iothub-app-Key":"v","iothub-correlationid":"c"}}`, true, "", ""},
		{`{"body":"text","base64Encoded":false,"properties":{"iothub-expiry":"2023-11-14T22:00:00Z","iothub-ack":"negative"}}`, true, "", ""},
		{`{"body":"***"}`, true, "", ""},
		{`{"body":"","properties":{"iothub-app-a b":"v"}}`, true, "", ""},
		{`{"body":"","properties":{"iothub-messageid":"\u0000"}}`, true, "", ""},
		{`[{"body":""}]`, true, "", ""},
		{`null`, true, "", ""},
	} {
		f.Add([]byte(s.body), s.json, s.header, s.value)
	}
	fx := newQuietFixture(f)
	fx.device(f, "fz-c2d", "")
	tok := fx.hubOwnerToken(f)
	allowed := map[azerr.Code]bool{azerr.HubArgumentInvalid: true, azerr.HubMessageTooLarge: true}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, body []byte, jsonForm bool, header, value string) {
		// Bound the queue: every run starts empty.
		if _, err := fx.c2d.Purge(ctx, hubName, "fz-c2d"); err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, "/devices/fz-c2d/messages/devicebound", bytes.NewReader(body))
		r.Host = hubName
		r.Header.Set("Authorization", tok)
		if jsonForm {
			r.Header.Set("Content-Type", batchContentType)
		}
		// net/http would refuse a request with an invalid header; so
		// does this target.
		if header != "" {
			if !validHeader(header, value) {
				t.Skip()
			}
			r.Header.Set(header, value)
		}
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, r)
		checkAnswer(t, rec)
		n, err := fx.c2d.Count(ctx, hubName, "fz-c2d")
		if err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusOK {
			name, _ := raw(rec, "iothub-errorcode")
			if !allowed[hubCodesByName[name]] {
				t.Fatalf("refused with %s: %s", name, rec.Body)
			}
			if n != 0 {
				t.Fatalf("%d messages enqueued by a refused send", n)
			}
			return
		}
		var sent sendResult
		if err := json.Unmarshal(rec.Body.Bytes(), &sent); err != nil || sent.MessageID == "" || sent.SequenceNumber <= 0 {
			t.Fatalf("send answer %s: %v", rec.Body, err)
		}
		msgs, err := fx.c2d.Receive(ctx, hubName, "fz-c2d", 1, hub.DefaultLockTimeout)
		if err != nil || len(msgs) != 1 || n != 1 {
			t.Fatalf("enqueued %d, received %v (%v)", n, msgs, err)
		}
		m := msgs[0]
		if m.MessageID != sent.MessageID || m.Size() > 64*1024 {
			t.Fatalf("received %+v for %s", m, rec.Body)
		}
		if !jsonForm && !bytes.Equal(m.Body, body) {
			t.Fatalf("body %q, sent %q", m.Body, body)
		}
		for _, p := range m.App {
			if p.Name == "" || strings.ContainsAny(p.Name+p.Value, "\r\n\x00") {
				t.Fatalf("application property %q=%q", p.Name, p.Value)
			}
		}
	})
}

// validHeader is what net/http's server accepts as a request header.
func validHeader(name, value string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// FuzzMethodBody: any body POSTed to /twins/{id}/methods of a connected
// device (which echoes the payload) is either invoked (200 with the
// device's status and a JSON payload) or refused with a 400 or 413 before
// reaching the device; never a 500 or a hang.
func FuzzMethodBody(f *testing.F) {
	for _, s := range []string{
		`{"methodName":"reboot","payload":{"a":1},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`,
		`{"methodName":"c*cmd","payload":null}`,
		`{"methodName":"x","payload":"s","responseTimeoutInSeconds":300,"connectTimeoutInSeconds":300}`,
		`{"methodName":"x","responseTimeoutInSeconds":1}`,
		`{"methodName":"x","connectTimeoutInSeconds":-1}`,
		`{"methodName":"a b"}`,
		`{"methodName":"x","payload":}`,
		`{"methodName":"x","responseTimeoutInSeconds":1e3}`,
		`{}`,
		`[]`,
		`null`,
		`{"methodName":"x"} {}`,
	} {
		f.Add([]byte(s))
	}
	fx := newQuietFixture(f)
	fx.device(f, "fz-m", "")
	link := &fakeLink{subscribed: true}
	f.Cleanup(fx.attachLink(hubName, "fz-m", link))
	tok := fx.hubOwnerToken(f)
	allowed := map[azerr.Code]bool{azerr.HubArgumentInvalid: true, azerr.HubMessageTooLarge: true}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/twins/fz-m/methods", bytes.NewReader(body))
		r.Host = hubName
		r.Header.Set("Authorization", tok)
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, r)
		checkAnswer(t, rec)
		if rec.Code != http.StatusOK {
			name, _ := raw(rec, "iothub-errorcode")
			if !allowed[hubCodesByName[name]] {
				t.Fatalf("refused with %s: %s", name, rec.Body)
			}
			return
		}
		var res struct {
			Status  int             `json:"status"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || res.Status != http.StatusOK || !json.Valid(res.Payload) {
			t.Fatalf("answer %s: %v", rec.Body, err)
		}
	})
}
