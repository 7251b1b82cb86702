package serviceclient

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
)

// hubPutResult is what PutHub returns, for the table.
type hubPutResult struct {
	H       *hub.HubInfo
	Created bool
}

func TestHubRequests(t *testing.T) {
	const hubJSON = `{"name":"hub-b.example","allocationWeight":3,"applyAllocationPolicy":false,"region":"eu","createdTime":"2024-05-01T10:00:00Z","future":1}`
	b := &hub.HubInfo{Name: "hub-b.example", AllocationWeight: 3, ApplyAllocationPolicy: false, Region: "eu",
		Created: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	weight, apply, region := 3, false, ""
	runRequestCases(t, []requestCase{
		{
			name:       "list",
			reply:      reply{status: 200, body: "[" + hubJSON + "]"},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.ListHubs(ctx) },
			wantMethod: "GET", wantPath: "/hubs",
			want: []hub.HubInfo{*b},
		},
		{
			name:       "list none",
			reply:      reply{status: 200, body: "[]"},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.ListHubs(ctx) },
			wantMethod: "GET", wantPath: "/hubs",
			want: []hub.HubInfo{},
		},
		{
			name:       "get escapes the name",
			reply:      reply{status: 200, body: hubJSON},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GetHub(ctx, "a/hub") },
			wantMethod: "GET", wantPath: "/hubs/a%2Fhub",
			want: b,
		},
		{
			name:  "put creates with the defaults: nothing set, nothing sent",
			reply: reply{status: 201, body: hubJSON},
			call: func(ctx context.Context, c *Client) (any, error) {
				h, created, err := c.PutHub(ctx, HubSpec{Name: "hub-b.example"})
				return hubPutResult{h, created}, err
			},
			wantMethod: "PUT", wantPath: "/hubs/hub-b.example",
			wantBody: `{}`,
			want:     hubPutResult{b, true},
		},
		{
			name:  "put updates what it sets, zero values included",
			reply: reply{status: 200, body: hubJSON},
			call: func(ctx context.Context, c *Client) (any, error) {
				h, created, err := c.PutHub(ctx, HubSpec{Name: "hub-b.example", AllocationWeight: &weight, ApplyAllocationPolicy: &apply, Region: &region})
				return hubPutResult{h, created}, err
			},
			wantMethod: "PUT", wantPath: "/hubs/hub-b.example",
			wantBody: `{"allocationWeight":3,"applyAllocationPolicy":false,"region":""}`,
			want:     hubPutResult{b, false},
		},
		{
			name:       "delete",
			reply:      reply{status: 204},
			call:       func(ctx context.Context, c *Client) (any, error) { return nil, c.DeleteHub(ctx, "hub-b.example") },
			wantMethod: "DELETE", wantPath: "/hubs/hub-b.example",
		},
	})
}

func TestHubErrors(t *testing.T) {
	t.Run("no name", func(t *testing.T) {
		f := newFake(t)
		if _, _, err := f.client().PutHub(context.Background(), HubSpec{}); err == nil || !strings.Contains(err.Error(), "name") {
			t.Errorf("err %v, want a missing name", err)
		}
		if n := len(f.requests()); n != 0 {
			t.Errorf("%d requests sent", n)
		}
	})
	runErrorCases(t, []errorCase{
		{"default hub", reply{status: 400, body: `{"errorCode":400000,"trackingId":"t1","message":"Hub a is this berth's default hub (--hub-name) and cannot be deleted."}`},
			func(ctx context.Context, c *Client) error { return c.DeleteHub(ctx, "a") },
			Error{Status: 400, Code: 400000, Message: "Hub a is this berth's default hub (--hub-name) and cannot be deleted.", TrackingID: "t1"}, false},
		{"unknown hub", reply{status: 404, body: `{"errorCode":404000,"trackingId":"t2","message":"Hub nope not found."}`},
			func(ctx context.Context, c *Client) error { _, err := c.GetHub(ctx, "nope"); return err },
			Error{Status: 404, Code: 404000, Message: "Hub nope not found.", TrackingID: "t2"}, true},
		{"exists", reply{status: 409, body: `{"errorCode":409203,"trackingId":"t3","message":"Hub b already exists."}`},
			func(ctx context.Context, c *Client) error { _, _, err := c.PutHub(ctx, HubSpec{Name: "b"}); return err },
			Error{Status: 409, Code: 409203, Message: "Hub b already exists.", TrackingID: "t3"}, false},
		{"missing right", reply{status: 401, body: `{"errorCode":401002,"trackingId":"t4","message":"Unauthorized"}`},
			func(ctx context.Context, c *Client) error { _, err := c.ListHubs(ctx); return err },
			Error{Status: 401, Code: 401002, Message: "Unauthorized", TrackingID: "t4"}, false},
	})
}
