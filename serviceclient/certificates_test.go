package serviceclient

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
)

// certPutResult is what PutCertificate returns, for the table.
type certPutResult struct {
	C       *dps.Certificate
	Created bool
}

func TestCertificateRequests(t *testing.T) {
	const certJSON = `{"name":"root-1","etag":"e1","properties":{"subject":"Root","expiry":"2030-01-01T00:00:00Z","thumbprint":"AB","thumbprintSha256":"CD","isVerified":false,"created":"2024-05-01T10:00:00Z","updated":"2024-05-01T10:00:00Z","future":1}}`
	const codeJSON = `{"name":"root-1","etag":"e2","properties":{"subject":"Root","expiry":"2030-01-01T00:00:00Z","thumbprint":"AB","thumbprintSha256":"CD","isVerified":false,"created":"2024-05-01T10:00:00Z","updated":"2024-05-01T10:00:00Z","verificationCode":"C0DE"}}`
	const verifiedJSON = `{"name":"root-1","etag":"e3","properties":{"subject":"Root","expiry":"2030-01-01T00:00:00Z","thumbprint":"AB","thumbprintSha256":"CD","isVerified":true,"created":"2024-05-01T10:00:00Z","updated":"2024-05-01T10:00:00Z"}}`
	day := func(y int, m time.Month, d, h int) time.Time { return time.Date(y, m, d, h, 0, 0, 0, time.UTC) }
	base := func(etag string) *dps.Certificate {
		return &dps.Certificate{Name: "root-1", ETag: etag, Properties: dps.CertificateProperties{
			Subject: "Root", Expiry: day(2030, 1, 1, 0), Thumbprint: "AB", ThumbprintSHA256: "CD",
			Created: day(2024, 5, 1, 10), Updated: day(2024, 5, 1, 10)}}
	}
	root, withCode, verified := base("e1"), base("e2"), base("e3")
	withCode.Properties.VerificationCode = "C0DE"
	verified.Properties.IsVerified = true
	const pemText = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	runRequestCases(t, []requestCase{
		{
			name:       "list",
			reply:      reply{status: 200, body: `{"value":[` + certJSON + `]}`},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.ListCertificates(ctx) },
			wantMethod: "GET", wantPath: "/certificates",
			want: []*dps.Certificate{root},
		},
		{
			name:       "list none",
			reply:      reply{status: 200, body: `{"value":[]}`},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.ListCertificates(ctx) },
			wantMethod: "GET", wantPath: "/certificates",
			want: []*dps.Certificate{},
		},
		{
			name:       "get escapes the name",
			reply:      reply{status: 200, body: certJSON},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GetCertificate(ctx, "a/b") },
			wantMethod: "GET", wantPath: "/certificates/a%2Fb",
			want: root,
		},
		{
			name:  "put creates",
			reply: reply{status: 201, body: certJSON},
			call: func(ctx context.Context, c *Client) (any, error) {
				out, created, err := c.PutCertificate(ctx, "root-1", pemText, "")
				return certPutResult{out, created}, err
			},
			wantMethod: "PUT", wantPath: "/certificates/root-1",
			wantBody: `{"certificate":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}`,
			want:     certPutResult{root, true},
		},
		{
			name:  "put replaces if the etag matches",
			reply: reply{status: 200, body: certJSON},
			call: func(ctx context.Context, c *Client) (any, error) {
				out, created, err := c.PutCertificate(ctx, "root-1", "TUlJQg==", `"e0"`)
				return certPutResult{out, created}, err
			},
			wantMethod: "PUT", wantPath: "/certificates/root-1", wantIfM: `"e0"`,
			wantBody: `{"certificate":"TUlJQg=="}`,
			want:     certPutResult{root, false},
		},
		{
			name:       "delete",
			reply:      reply{status: 204},
			call:       func(ctx context.Context, c *Client) (any, error) { return nil, c.DeleteCertificate(ctx, "root-1", "") },
			wantMethod: "DELETE", wantPath: "/certificates/root-1",
		},
		{
			name:  "delete if the etag matches",
			reply: reply{status: 204},
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.DeleteCertificate(ctx, "root-1", "e1")
			},
			wantMethod: "DELETE", wantPath: "/certificates/root-1", wantIfM: "e1",
		},
		{
			name:       "generate a verification code, no body",
			reply:      reply{status: 200, body: codeJSON},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.GenerateVerificationCode(ctx, "root-1") },
			wantMethod: "POST", wantPath: "/certificates/root-1/generateVerificationCode",
			want: withCode,
		},
		{
			name:       "verify",
			reply:      reply{status: 200, body: verifiedJSON},
			call:       func(ctx context.Context, c *Client) (any, error) { return c.VerifyCertificate(ctx, "root-1", pemText) },
			wantMethod: "POST", wantPath: "/certificates/root-1/verify",
			wantBody: `{"certificate":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}`,
			want:     verified,
		},
	})
}

func TestCertificateErrors(t *testing.T) {
	t.Run("no name", func(t *testing.T) {
		f := newFake(t)
		if _, _, err := f.client().PutCertificate(context.Background(), "", "x", ""); err == nil || !strings.Contains(err.Error(), "name") {
			t.Errorf("err %v, want a missing name", err)
		}
		if n := len(f.requests()); n != 0 {
			t.Errorf("%d requests sent", n)
		}
	})
	runErrorCases(t, []errorCase{
		{"unknown", reply{status: 404, body: `{"errorCode":404000,"trackingId":"t1","message":"Certificate nope not found."}`},
			func(ctx context.Context, c *Client) error { _, err := c.GetCertificate(ctx, "nope"); return err },
			Error{Status: 404, Code: 404000, Message: "Certificate nope not found.", TrackingID: "t1"}, true},
		{"not a CA", reply{status: 400, body: `{"errorCode":400000,"trackingId":"t2","message":"The certificate is not a CA certificate (basicConstraints CA:TRUE)."}`},
			func(ctx context.Context, c *Client) error {
				_, _, err := c.PutCertificate(ctx, "x", "y", "")
				return err
			},
			Error{Status: 400, Code: 400000, Message: "The certificate is not a CA certificate (basicConstraints CA:TRUE).", TrackingID: "t2"}, false},
		{"stale etag", reply{status: 412, body: `{"errorCode":412002,"trackingId":"t3","message":"Precondition failed."}`},
			func(ctx context.Context, c *Client) error { return c.DeleteCertificate(ctx, "x", "old") },
			Error{Status: 412, Code: 412002, Message: "Precondition failed.", TrackingID: "t3"}, false},
		{"wrong proof", reply{status: 400, body: `{"errorCode":400000,"trackingId":"t4","message":"The verification certificate's subject CN is not the verification code."}`},
			func(ctx context.Context, c *Client) error { _, err := c.VerifyCertificate(ctx, "x", "p"); return err },
			Error{Status: 400, Code: 400000, Message: "The verification certificate's subject CN is not the verification code.", TrackingID: "t4"}, false},
		{"no code yet", reply{status: 404, body: `{"errorCode":404000,"trackingId":"t5","message":"Certificate x not found."}`},
			func(ctx context.Context, c *Client) error { _, err := c.GenerateVerificationCode(ctx, "x"); return err },
			Error{Status: 404, Code: 404000, Message: "Certificate x not found.", TrackingID: "t5"}, true},
	})
}
