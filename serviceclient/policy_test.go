package serviceclient

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/berth-iot/berth/policy"
)

// putResult is what PutPolicy returns, for the table.
type putResult struct {
	P       *policy.Policy
	Created bool
}

func TestPolicyRequests(t *testing.T) {
	const pol = `{"keyName":"ops","primaryKey":"cGs=","secondaryKey":"c2s=","rights":["EnrollmentRead"],"future":1}`
	ops := &policy.Policy{KeyName: "ops", PrimaryKey: "cGs=", SecondaryKey: "c2s=", Rights: []string{"EnrollmentRead"}}
	runRequestCases(t, []requestCase{
		{
			name:       "list the DPS's",
			reply:      reply{status: 200, body: "[" + pol + "]"},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.ListPolicies(ctx, "") },
			wantMethod: "GET", wantPath: "/policies",
			want: []policy.Policy{*ops},
		},
		{
			name:       "list a hub's",
			reply:      reply{status: 200, body: "[]"},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.ListPolicies(ctx, "hub.example") },
			wantMethod: "GET", wantPath: "/hubs/hub.example/policies",
			want: []policy.Policy{},
		},
		{
			name:       "get escapes the names",
			reply:      reply{status: 200, body: pol},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GetPolicy(ctx, "a hub", "o/ps") },
			wantMethod: "GET", wantPath: "/hubs/a%20hub/policies/o%2Fps",
			want: ops,
		},
		{
			name:  "put creates",
			reply: reply{status: 201, body: pol},
			call: func(ctx context.Context, c *Client) (any, error) {
				p, created, err := c.PutPolicy(ctx, "", policy.Policy{KeyName: "ops", Rights: []string{"EnrollmentRead"}})
				return putResult{p, created}, err
			},
			wantMethod: "PUT", wantPath: "/policies/ops",
			wantBody: `{"rights":["EnrollmentRead"]}`,
			want:     putResult{ops, true},
		},
		{
			name:  "put updates, keys given",
			reply: reply{status: 200, body: pol},
			call: func(ctx context.Context, c *Client) (any, error) {
				p, created, err := c.PutPolicy(ctx, "hub.example", policy.Policy{KeyName: "ops", Rights: []string{"DeviceConnect", "RegistryRead"},
					PrimaryKey: "cGs=", SecondaryKey: "c2s="})
				return putResult{p, created}, err
			},
			wantMethod: "PUT", wantPath: "/hubs/hub.example/policies/ops",
			wantBody: `{"rights":["DeviceConnect","RegistryRead"],"primaryKey":"cGs=","secondaryKey":"c2s="}`,
			want:     putResult{ops, false},
		},
		{
			name:       "delete",
			reply:      reply{status: 204},
			call:       func(ctx context.Context, c *Client) (any, error) { return nil, c.DeletePolicy(ctx, "", "ops") },
			wantMethod: "DELETE", wantPath: "/policies/ops",
		},
		{
			name:  "delete a hub's",
			reply: reply{status: 204},
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.DeletePolicy(ctx, "hub.example", "ops")
			},
			wantMethod: "DELETE", wantPath: "/hubs/hub.example/policies/ops",
		},
		{
			name:  "renew primary",
			reply: reply{status: 200, body: pol},
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.RenewPolicyKey(ctx, "", "ops", policy.RenewPrimary)
			},
			wantMethod: "POST", wantPath: "/policies/ops/renewKey", wantQuery: "keyType=primary",
			want: ops,
		},
		{
			name:  "swap a hub's",
			reply: reply{status: 200, body: pol},
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.RenewPolicyKey(ctx, "hub.example", "ops", policy.RenewSwap)
			},
			wantMethod: "POST", wantPath: "/hubs/hub.example/policies/ops/renewKey", wantQuery: "keyType=swap",
			want: ops,
		},
	})
}

func TestPolicyErrors(t *testing.T) {
	t.Run("no name", func(t *testing.T) {
		f := newFake(t)
		if _, _, err := f.client().PutPolicy(context.Background(), "", policy.Policy{Rights: []string{"EnrollmentRead"}}); err == nil || !strings.Contains(err.Error(), "keyName") {
			t.Errorf("err %v, want a missing keyName", err)
		}
		if n := len(f.requests()); n != 0 {
			t.Errorf("%d requests sent", n)
		}
	})
	runErrorCases(t, []errorCase{
		{"last ServiceConfig policy", reply{status: 400, body: `{"errorCode":400000,"trackingId":"t1","message":"At least one policy must keep the ServiceConfig right."}`},
			func(ctx context.Context, c *Client) error { return c.DeletePolicy(ctx, "", "provisioningserviceowner") },
			Error{Status: 400, Code: 400000, Message: "At least one policy must keep the ServiceConfig right.", TrackingID: "t1"}, false},
		{"unknown policy", reply{status: 404, body: `{"errorCode":404000,"trackingId":"t2","message":"Policy nope not found."}`},
			func(ctx context.Context, c *Client) error { _, err := c.GetPolicy(ctx, "", "nope"); return err },
			Error{Status: 404, Code: 404000, Message: "Policy nope not found.", TrackingID: "t2"}, true},
		{"missing right", reply{status: 401, body: `{"errorCode":401002,"trackingId":"t3","message":"Unauthorized"}`},
			func(ctx context.Context, c *Client) error { _, err := c.ListPolicies(ctx, "hub.example"); return err },
			Error{Status: 401, Code: 401002, Message: "Unauthorized", TrackingID: "t3"}, false},
		{"bad keyType", reply{status: 400, body: `{"errorCode":400000,"trackingId":"t4","message":"Key \"x\" is not primary, secondary or swap."}`},
			func(ctx context.Context, c *Client) error { _, err := c.RenewPolicyKey(ctx, "", "p", "x"); return err },
			Error{Status: 400, Code: 400000, Message: `Key "x" is not primary, secondary or swap.`, TrackingID: "t4"}, false},
		{"put refused", reply{status: 400, body: `{"errorCode":400000,"trackingId":"t5","message":"Right \"x\" is not one of …"}`},
			func(ctx context.Context, c *Client) error {
				_, _, err := c.PutPolicy(ctx, "", policy.Policy{KeyName: "p", Rights: []string{"x"}})
				return err
			},
			Error{Status: 400, Code: 400000, Message: `Right "x" is not one of …`, TrackingID: "t5"}, false},
	})
}

// errorCase is a call the fake answers with an error.
type errorCase struct {
	name     string
	reply    reply
	call     func(ctx context.Context, c *Client) error
	want     Error
	notFound bool
}

// runErrorCases checks that each call returns the *Error its reply
// describes.
func runErrorCases(t *testing.T, tests []errorCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.reply)
			err := tt.call(context.Background(), f.client())
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T %v, want *Error", err, err)
			}
			if *e != tt.want {
				t.Errorf("error %+v, want %+v", *e, tt.want)
			}
			if IsNotFound(err) != tt.notFound {
				t.Errorf("IsNotFound = %v", IsNotFound(err))
			}
		})
	}
}
