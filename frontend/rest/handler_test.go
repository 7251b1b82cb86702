package rest

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

// failingStore breaks reads of one kind, the way a lost database
// connection would.
type failingStore struct {
	*memstore.Store
	kind store.Kind
}

var errDiskOnFire = errors.New("disk on fire")

func (s *failingStore) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	if kind == s.kind {
		return store.Record{}, errDiskOnFire
	}
	return s.Store.Get(ctx, kind, key)
}

func (s *failingStore) List(ctx context.Context, kind store.Kind, o store.ListOptions) ([]store.Record, error) {
	if kind == s.kind {
		return nil, errDiskOnFire
	}
	return s.Store.List(ctx, kind, o)
}

// TestInternalError: a store failure is a 500 with Azure's body and a
// generic message; the cause goes to the log, not to the client.
func TestInternalError(t *testing.T) {
	f := newFixtureStore(t, &failingStore{Store: memstore.New(), kind: store.KindEnrollment})
	tests := []struct{ name, method, path, auth string }{
		{"service GET", http.MethodGet, "/enrollments/dev-1", "owner"},
		{"device register", http.MethodPut, "/" + scope + "/registrations/dev-1/register", "device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := f.ownerToken(t)
			if tt.auth == "device" {
				tok = f.devToken(t, "dev-1", indivKey)
			}
			rec := f.do(request(tt.method, tt.path, "", "Authorization", tok))
			e := checkError(t, rec, azerr.DPSInternal.Number())
			if strings.Contains(rec.Body.String(), errDiskOnFire.Error()) || e.Message != azerr.DPSInternal.Message() {
				t.Errorf("the cause reached the client: %s", rec.Body)
			}
			logs := f.logs.String()
			if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, errDiskOnFire.Error()) || !strings.Contains(logs, e.TrackingID) {
				t.Errorf("internal error not logged with its cause and tracking ID:\n%s", logs)
			}
		})
	}
}

// TestPanicRecovered: a handler bug still answers with a DPS error (the
// SDKs must be able to parse every answer) and is logged.
func TestPanicRecovered(t *testing.T) {
	f := newFixture(t)
	h := f.h.(*handler)
	h.routes = append(h.routes, newRoute(http.MethodGet, "boom", func(x *exchange, _ []string) {
		x.w.Header()[hdrLocation] = []string{"https://half.written/"}
		panic("boom")
	}))
	rec := f.do(request(http.MethodGet, "/boom", ""))
	checkError(t, rec, azerr.DPSInternal.Number())
	if _, has := raw(rec, "Location"); has {
		t.Error("a success header survived into the error answer")
	}
	if logs := f.logs.String(); !strings.Contains(logs, "handler panic") || !strings.Contains(logs, "boom") {
		t.Errorf("panic not logged:\n%s", logs)
	}
}

// TestErrorAnswers: the rendering of error codes, including retry-after on
// 429 and a code outside the error range.
func TestErrorAnswers(t *testing.T) {
	f := newFixture(t)
	h := f.h.(*handler)
	base := h.routes[:len(h.routes):len(h.routes)]
	tests := []struct {
		name       string
		err        error
		wantCode   azerr.Code
		wantRetry  bool
		wantMsg    string
		wantStatus int
	}{
		{"throttled", azerr.New(azerr.DPSThrottled), azerr.DPSThrottled, true, "Too many requests.", 429},
		{"plain error", errors.New("boom"), azerr.DPSInternal, false, "Internal server error.", 500},
		{"wrapped azerr", errors.Join(errors.New("ctx"), azerr.New(azerr.DPSConflict)), azerr.DPSConflict, false, "Conflict.", 409},
		{"custom message", azerr.Newf(azerr.DPSNoHub, "no hub %s", "x"), azerr.DPSNoHub, false, "no hub x", 400},
		{"no entry", &azerr.Error{Message: "ok?"}, azerr.DPSInternal, false, "Internal server error.", 500},
		{"an IoT Hub entry on a DPS route", azerr.New(azerr.HubPreconditionFailed), azerr.DPSInternal, false, "Internal server error.", 500},
		{"info map", &azerr.Error{Code: azerr.DPSBadRequest, Message: "m", Info: map[string]string{"k": "v"}}, azerr.DPSBadRequest, false, "m", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.routes = append(base, newRoute(http.MethodGet, "err", func(x *exchange, _ []string) { x.fail(tt.err) }))
			rec := f.do(request(http.MethodGet, "/err", ""))
			e := checkErrorInfo(t, rec, tt.wantCode.Number())
			if rec.Code != tt.wantStatus || e.Message != tt.wantMsg {
				t.Errorf("status %d message %q, want %d %q", rec.Code, e.Message, tt.wantStatus, tt.wantMsg)
			}
			if ra, has := raw(rec, "retry-after"); has != tt.wantRetry || (has && ra != "3") {
				t.Errorf("retry-after = %q (%v), want present=%v", ra, has, tt.wantRetry)
			}
		})
	}
}

// checkErrorInfo is checkError for bodies that may carry "info".
func checkErrorInfo(t *testing.T, r *httptest.ResponseRecorder, code int) wireError {
	t.Helper()
	body := r.Body.String()
	// Strip the optional info member so checkError's strict decoding
	// applies to the rest.
	if i := strings.Index(body, `,"info":{`); i >= 0 {
		j := strings.Index(body[i:], "}")
		r.Body.Reset()
		r.Body.WriteString(body[:i] + body[i+j+1:])
		if !strings.Contains(body, `"info":{"k":"v"}`) {
			t.Errorf("info not rendered: %s", body)
		}
	}
	return checkError(t, r, code)
}

// TestAccessLog: every request leaves one debug line with who asked,
// which host, what, and how it ended — never the Authorization header.
func TestAccessLog(t *testing.T) {
	f := newFixture(t)
	r := request(http.MethodGet, "/enrollments/nobody?api-version=2021-10-01", "")
	r.Header.Set("Authorization", f.ownerToken(t))
	r.RemoteAddr = "192.0.2.7:4711"
	rec := f.do(r)
	var line string
	for _, l := range strings.Split(f.logs.String(), "\n") {
		if strings.Contains(l, `msg="rest: request"`) {
			line = l
		}
	}
	for _, want := range []string{"level=DEBUG", "remote=192.0.2.7:4711", "host=" + r.Host, "method=GET", "path=/enrollments/nobody",
		"apiVersion=2021-10-01", "status=" + strconv.Itoa(rec.Code)} {
		if !strings.Contains(line, want) {
			t.Errorf("access log line lacks %q: %s", want, line)
		}
	}
}
