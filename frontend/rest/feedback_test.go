package rest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// TestFeedbackOverHTTPS: a message sent with iothub-ack full and completed
// by the device over HTTPS, and one sent with negative and rejected, come
// back as one feedback message on GET /messages/serviceBound/feedback,
// with the lock token in ETag; abandon gives it back, DELETE completes it,
// after which the queue answers 204 and the token is lost. Rights: a
// policy without ServiceConnect is refused.
func TestFeedbackOverHTTPS(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	owner := f.hubOwnerToken(t)
	devTok := f.c2dDevice(t, "fb-1")
	const fbPath = "/messages/serviceBound/feedback?api-version=2021-04-12"

	for _, s := range []struct{ id, ack, settle string }{{"ok", "full", ""}, {"no", "negative", "&reject"}, {"quiet", "negative", ""}} {
		rec := wire(t, srv, http.MethodPost, c2dPath("fb-1", "deviceBound"), []byte(s.id), "Authorization", owner, "iothub-messageid", s.id, "iothub-ack", s.ack)
		if rec.Code != http.StatusOK {
			t.Fatalf("send %s: %d %s", s.id, rec.Code, rec.Body)
		}
		rec = wire(t, srv, http.MethodGet, c2dPath("fb-1", "devicebound"), nil, "Authorization", devTok)
		tok, _ := raw(rec, "ETag")
		rec = wire(t, srv, http.MethodDelete, c2dPath("fb-1", "devicebound")+"/"+strings.Trim(tok, `"`)+"?api-version=2021-04-12"+s.settle, nil, "Authorization", devTok)
		if rec.Code != http.StatusNoContent {
			t.Fatalf("settle %s: %d %s", s.id, rec.Code, rec.Body)
		}
	}

	get := func() (*httptest.ResponseRecorder, string, []hub.FeedbackRecord) {
		t.Helper()
		rec := wire(t, srv, http.MethodGet, fbPath, nil, "Authorization", owner)
		if rec.Code == http.StatusNoContent {
			return rec, "", nil
		}
		if rec.Code != http.StatusOK {
			t.Fatalf("receive feedback: %d %s", rec.Code, rec.Body)
		}
		if ct, _ := raw(rec, "Content-Type"); ct != hub.FeedbackContentType {
			t.Errorf("Content-Type %q", ct)
		}
		if uid, _ := raw(rec, "iothub-userid"); uid != hubName {
			t.Errorf("iothub-userid %q", uid)
		}
		etag, _ := raw(rec, "ETag")
		var recs []hub.FeedbackRecord
		if err := json.Unmarshal(rec.Body.Bytes(), &recs); err != nil {
			t.Fatalf("body %s: %v", rec.Body, err)
		}
		return rec, strings.Trim(etag, `"`), recs
	}
	_, tok, recs := get()
	if len(recs) != 2 || recs[0].OriginalMessageID != "ok" || recs[0].StatusCode != "Success" ||
		recs[1].OriginalMessageID != "no" || recs[1].StatusCode != "Rejected" || recs[1].DeviceID != "fb-1" {
		t.Fatalf("records %+v", recs)
	}
	if rec := wire(t, srv, http.MethodPost, "/messages/serviceBound/feedback/"+tok+"/abandon?api-version=2021-04-12", nil, "Authorization", owner); rec.Code != http.StatusNoContent {
		t.Fatalf("abandon: %d %s", rec.Code, rec.Body)
	}
	_, tok2, recs2 := get()
	if len(recs2) != 2 || tok2 == tok {
		t.Fatalf("after abandon: %s %+v", tok2, recs2)
	}
	if rec := wire(t, srv, http.MethodDelete, "/messages/serviceBound/feedback/"+tok2+"?api-version=2021-04-12", nil, "Authorization", owner); rec.Code != http.StatusNoContent {
		t.Fatalf("complete: %d %s", rec.Code, rec.Body)
	}
	if rec, _, _ := get(); rec.Code != http.StatusNoContent {
		t.Fatalf("after complete: %d", rec.Code)
	}
	rec := wire(t, srv, http.MethodDelete, "/messages/serviceBound/feedback/"+tok2+"?api-version=2021-04-12", nil, "Authorization", owner)
	checkHubError(t, rec, azerr.HubMessageLockLost)

	for name, tok := range map[string]string{"device token": devTok, "registryRead": f.hubToken(t, hubName, "registryRead")} {
		if rec := wire(t, srv, http.MethodGet, fbPath, nil, "Authorization", tok); rec.Code != http.StatusUnauthorized {
			t.Errorf("%s on the feedback endpoint: %d %s", name, rec.Code, rec.Body)
		}
	}
}
