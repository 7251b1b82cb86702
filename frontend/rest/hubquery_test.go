package rest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
)

// TestDeviceQuery: POST /devices/query over real HTTPS as the Node SDK
// sends it: twins or raw items, x-ms-item-type, x-ms-continuation only
// while pages remain, the page size from x-ms-max-item-count, and 400
// ArgumentInvalid for a malformed query, a forged token or a bad header;
// a device's own token is refused.
func TestDeviceQuery(t *testing.T) {
	f := newFixture(t)
	srv := f.tlsServer(t, 30*time.Second)
	for _, id := range []string{"q-a", "q-b", "q-c"} {
		f.device(t, id, "")
	}
	owner := f.hubOwnerToken(t)
	// The headers are written as Azure spells them, not canonicalised.
	get := func(h http.Header, k string) string {
		if v := h[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	const path = "/devices/query?api-version=2021-04-12"
	post := func(tok, query string, hdr ...string) (int, http.Header, string) {
		t.Helper()
		body, _ := json.Marshal(map[string]string{"query": query})
		rec := wire(t, srv, http.MethodPost, path, body,
			append([]string{"Authorization", tok, "Content-Type", "application/json; charset=utf-8"}, hdr...)...)
		if rec.Code == http.StatusOK {
			checkCommon(t, rec)
		}
		return rec.Code, rec.Header(), rec.Body.String()
	}

	code, h, body := post(owner, "SELECT * FROM devices")
	var twins []wireTwin
	if err := json.Unmarshal([]byte(body), &twins); code != 200 || err != nil || len(twins) != 3 || twins[0].ETag == "" {
		t.Fatalf("SELECT *: %d %s %v", code, body, err)
	}
	if get(h, "x-ms-item-type") != "twin" || get(h, "x-ms-continuation") != "" {
		t.Errorf("headers %v", h)
	}

	var ids []string
	cont := ""
	for pages := 0; ; pages++ {
		hdr := []string{"x-ms-max-item-count", "2"}
		if cont != "" {
			hdr = append(hdr, "x-ms-continuation", cont)
		}
		code, h, body := post(owner, "SELECT deviceId FROM devices", hdr...)
		if code != 200 || get(h, "x-ms-item-type") != "raw" {
			t.Fatalf("page %d: %d %s %v", pages, code, body, h)
		}
		var items []map[string]string
		_ = json.Unmarshal([]byte(body), &items)
		for _, it := range items {
			ids = append(ids, it["deviceId"])
		}
		if cont = get(h, "x-ms-continuation"); cont == "" {
			if pages != 1 {
				t.Errorf("%d pages, want 2", pages+1)
			}
			break
		}
	}
	if strings.Join(ids, ",") != "q-a,q-b,q-c" {
		t.Errorf("paged ids %v", ids)
	}

	code, _, body = post(owner, "SELECT COUNT() AS n FROM devices WHERE STARTSWITH(deviceId, 'q-')")
	if code != 200 || body != `[{"n":3}]` {
		t.Errorf("count: %d %s", code, body)
	}

	for _, c := range []struct {
		query string
		hdr   []string
		want  string
	}{
		{"SELECT * FROM devices WHERE", nil, "position 28"},
		{"SELECT * FROM devices", []string{"x-ms-continuation", "forged"}, "continuation"},
		{"SELECT * FROM devices", []string{"x-ms-max-item-count", "ten"}, "x-ms-max-item-count"},
	} {
		body, _ := json.Marshal(map[string]string{"query": c.query})
		rec := wire(t, srv, http.MethodPost, path, body, append([]string{"Authorization", owner}, c.hdr...)...)
		msg := checkHubError(t, rec, azerr.HubArgumentInvalid)
		if !strings.Contains(msg, c.want) {
			t.Errorf("%q %v: message %q lacks %q", c.query, c.hdr, msg, c.want)
		}
	}
	rec := wire(t, srv, http.MethodPost, path, []byte(`{"query":""}`), "Authorization", owner)
	checkHubError(t, rec, azerr.HubArgumentNull)
	rec = wire(t, srv, http.MethodPost, path, []byte(`[1]`), "Authorization", owner)
	checkHubError(t, rec, azerr.HubFormatError)
	rec = wire(t, srv, http.MethodPost, path, []byte(`{"query":"SELECT * FROM devices"}`))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("no token: %d", rec.Code)
	}
}
