package hubclient

import (
	"context"
	"errors"
	"testing"
)

// TestQuery: the request Node's Registry.createQuery / Query.next sends
// (POST /devices/query, {"query"}, the paging headers only when set) and
// the page read back, headers included; an error answer is an *Error.
func TestQuery(t *testing.T) {
	f := newFake(t,
		reply{status: 200, header: map[string]string{"x-ms-item-type": "raw", "x-ms-continuation": "tok1"}, body: `[{"deviceId":"a"},{"deviceId":"b"}]`},
		reply{status: 200, header: map[string]string{"x-ms-item-type": "raw"}, body: `[{"deviceId":"c"}]`},
		reply{status: 400, body: `{"Message":"ErrorCode:ArgumentInvalid;Invalid query: Syntax error at position 28: x","ExceptionMessage":""}`},
	)
	c := f.client()
	ctx := context.Background()
	p1, err := c.Query(ctx, "SELECT deviceId FROM devices", 2, "")
	if err != nil || len(p1.Items) != 2 || p1.ItemType != "raw" || p1.Continuation != "tok1" {
		t.Fatalf("page 1: %+v %v", p1, err)
	}
	p2, err := c.Query(ctx, "SELECT deviceId FROM devices", 0, p1.Continuation)
	if err != nil || len(p2.Items) != 1 || p2.Continuation != "" {
		t.Fatalf("page 2: %+v %v", p2, err)
	}
	_, err = c.Query(ctx, "SELECT * FROM devices WHERE", 0, "")
	var e *Error
	if !errors.As(err, &e) || e.Status != 400 {
		t.Fatalf("malformed: %v", err)
	}
	reqs := f.requests()
	for i, r := range reqs {
		checkCommon(t, r, "api-version="+APIVersion, "")
		if r.Method != "POST" || r.Path != "/devices/query" {
			t.Errorf("request %d: %s %s", i, r.Method, r.Path)
		}
	}
	if reqs[0].Body != `{"query":"SELECT deviceId FROM devices"}` {
		t.Errorf("body %s", reqs[0].Body)
	}
	if reqs[0].Header.Get("x-ms-max-item-count") != "2" || reqs[0].Header.Get("x-ms-continuation") != "" {
		t.Errorf("page 1 headers %v", reqs[0].Header)
	}
	if _, ok := reqs[1].Header["X-Ms-Max-Item-Count"]; ok || reqs[1].Header.Get("x-ms-continuation") != "tok1" {
		t.Errorf("page 2 headers %v", reqs[1].Header)
	}
	if _, err := c.Query(ctx, "", 0, ""); err == nil {
		t.Error("an empty query was sent")
	}
}
