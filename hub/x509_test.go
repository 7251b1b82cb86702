package hub_test

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/store/memstore"
)

type staticTrust []*x509.Certificate

func (s staticTrust) TrustedCAs(context.Context) ([]*x509.Certificate, error) { return s, nil }

func TestAuthenticateDeviceCert(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	reg := hub.NewRegistry(memstore.New(), func() time.Time { return now })
	root := testcerts.Valid(t, "root", nil, true, now)
	inter := testcerts.Valid(t, "inter", root, true, now)
	other := testcerts.Valid(t, "other", nil, true, now)
	self := testcerts.Valid(t, "self-1", nil, false, now)
	self2 := testcerts.Valid(t, "self-1", nil, false, now)
	sha1Of := func(c *testcerts.Cert) string {
		s := sha1.Sum(c.Cert.Raw)
		return strings.ToUpper(hex.EncodeToString(s[:]))
	}
	sha256Of := func(c *testcerts.Cert) string { s := sha256.Sum256(c.Cert.Raw); return hex.EncodeToString(s[:]) }
	p1, p2 := sha1Of(self), sha256Of(self2)
	mk := func(id string, auth *hub.Authentication, status string) {
		if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: id, Authentication: auth, Status: status}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	mk("self-1", &hub.Authentication{X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &p1, SecondaryThumbprint: &p2}}, "")
	mk("ca-1", &hub.Authentication{Type: hub.AuthCertificateAuthority}, "")
	mk("ca-off", &hub.Authentication{Type: hub.AuthCertificateAuthority}, hub.StatusDisabled)
	mk("sas-1", nil, "")
	if d, _ := reg.Get(ctx, hubName, "self-1"); d.Authentication.Type != hub.AuthSelfSigned {
		t.Fatalf("thumbprints only: type %s, want selfSigned (what Node's create implies)", d.Authentication.Type)
	}

	caDev := testcerts.Valid(t, "ca-1", inter, false, now)
	cases := []struct {
		name   string
		trust  hub.CATrust
		id     string
		chain  []*x509.Certificate
		ok     bool
		method string
	}{
		{"self-signed, primary SHA-1", nil, "self-1", testcerts.Chain(self), true, "x509"},
		{"self-signed, secondary SHA-256 lower case", nil, "self-1", testcerts.Chain(self2), true, "x509"},
		{"self-signed, other certificate", nil, "self-1", testcerts.Chain(testcerts.Valid(t, "self-1", nil, false, now)), false, ""},
		{"CA, chain to the trusted root", staticTrust{root.Cert}, "ca-1", testcerts.Chain(caDev, inter), true, "x509"},
		{"CA, intermediate not sent", staticTrust{root.Cert}, "ca-1", testcerts.Chain(caDev), false, ""},
		{"CA, trusted intermediate", staticTrust{inter.Cert}, "ca-1", testcerts.Chain(caDev), true, "x509"},
		{"CA, untrusted", staticTrust{other.Cert}, "ca-1", testcerts.Chain(caDev, inter), false, ""},
		{"CA, no trust configured", nil, "ca-1", testcerts.Chain(caDev, inter), false, ""},
		{"CA, CN is another device", staticTrust{root.Cert}, "ca-1", testcerts.Chain(testcerts.Valid(t, "ca-2", inter, false, now), inter), false, ""},
		{"CA, expired", staticTrust{root.Cert}, "ca-1", testcerts.Chain(testcerts.Issue(t, "ca-1", inter, false, now.Add(-2*time.Hour), now.Add(-time.Hour)), inter), false, ""},
		{"disabled device", staticTrust{root.Cert}, "ca-off", testcerts.Chain(testcerts.Valid(t, "ca-off", inter, false, now), inter), false, ""},
		{"SAS device", staticTrust{root.Cert}, "sas-1", testcerts.Chain(testcerts.Valid(t, "sas-1", inter, false, now), inter), false, ""},
		{"unknown device", staticTrust{root.Cert}, "nobody", testcerts.Chain(testcerts.Valid(t, "nobody", inter, false, now), inter), false, ""},
		{"no certificate", staticTrust{root.Cert}, "ca-1", nil, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reg.SetCATrust(c.trust)
			id, err := reg.AuthenticateDeviceCert(ctx, hubName, c.id, c.chain)
			if !c.ok {
				if code(err) != azerr.HubUnauthorizedAccess {
					t.Fatalf("got %+v, %v; want 401002", id, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(id.AuthMethod, `"type":"`+c.method+`"`) || !id.Expires.Equal(c.chain[0].NotAfter) {
				t.Errorf("identity %+v", id)
			}
		})
	}
	bad := "XYZ"
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "bad-tp", Authentication: &hub.Authentication{Type: hub.AuthSelfSigned,
		X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &bad}}}); code(err) != azerr.HubArgumentInvalid {
		t.Errorf("bad thumbprint accepted: %v", err)
	}
}

// TestAuthenticateModuleCert: a selfSigned module authenticates by its
// thumbprint with the module scope; its device's certificate, a
// certificateAuthority module and a module of a disabled device are refused.
func TestAuthenticateModuleCert(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	reg := hub.NewRegistry(memstore.New(), func() time.Time { return now })
	modCert := testcerts.Valid(t, "m1", nil, false, now)
	devCert := testcerts.Valid(t, "dev", nil, false, now)
	thumb := func(c *testcerts.Cert) *string {
		s := sha256.Sum256(c.Cert.Raw)
		h := hex.EncodeToString(s[:])
		return &h
	}
	for _, d := range []struct{ id, status string }{{"dev", ""}, {"off", hub.StatusDisabled}} {
		if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: d.id, Status: d.status,
			Authentication: &hub.Authentication{X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: thumb(devCert)}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: d.id, ModuleID: "m1",
			Authentication: &hub.Authentication{X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: thumb(modCert)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.CreateModule(ctx, hubName, &hub.Module{DeviceID: "dev", ModuleID: "ca", Authentication: &hub.Authentication{Type: hub.AuthCertificateAuthority}}); err != nil {
		t.Fatal(err)
	}
	id, err := reg.AuthenticateModuleCert(ctx, hubName, "dev", "m1", []*x509.Certificate{modCert.Cert})
	if err != nil || id.Device.ModuleID() != "m1" || !strings.Contains(id.AuthMethod, `"scope":"module"`) {
		t.Fatalf("module cert: %+v, %v", id, err)
	}
	for _, tt := range []struct {
		name, dev, mod string
		cert           *testcerts.Cert
	}{
		{"the device's certificate", "dev", "m1", devCert},
		{"certificateAuthority module", "dev", "ca", modCert},
		{"disabled device", "off", "m1", modCert},
		{"unknown module", "dev", "m9", modCert},
	} {
		if _, err := reg.AuthenticateModuleCert(ctx, hubName, tt.dev, tt.mod, []*x509.Certificate{tt.cert.Cert}); code(err) != azerr.HubUnauthorizedAccess {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}
