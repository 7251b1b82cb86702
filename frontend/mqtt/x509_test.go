package mqtt

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/store/memstore"
)

const (
	x509CertAuthMethod = `{"scope":"device","type":"x509","issuer":"iothub","acceptingIpFilterRule":null}`
	x509CAAuthMethod   = `{"scope":"device","type":"x509","issuer":"iothub","acceptingIpFilterRule":null}`
)

// staticTrust is a hub.CATrust of fixed CA certificates.
type staticTrust []*x509.Certificate

func (s staticTrust) TrustedCAs(context.Context) ([]*x509.Certificate, error) { return s, nil }

// testPKI is a root CA with an intermediate, and a root nobody trusts, all
// valid around testNow (the domains' clock).
type testPKI struct {
	root, inter, other *testcerts.Cert
}

func newTestPKI(t testing.TB) *testPKI {
	root := testcerts.Valid(t, "Berth Test Root", nil, true, testNow)
	return &testPKI{
		root:  root,
		inter: testcerts.Valid(t, "Berth Test Intermediate", root, true, testNow),
		other: testcerts.Valid(t, "Untrusted Root", nil, true, testNow),
	}
}

// leaf issues a device certificate for cn valid around testNow (self-signed
// when parent is nil).
func leaf(t testing.TB, cn string, parent *testcerts.Cert) *testcerts.Cert {
	return testcerts.Valid(t, cn, parent, false, testNow)
}

// expiredLeaf issues a device certificate that ended an hour before
// testNow.
func expiredLeaf(t testing.TB, cn string, parent *testcerts.Cert) *testcerts.Cert {
	return testcerts.Issue(t, cn, parent, false, testNow.Add(-48*time.Hour), testNow.Add(-time.Hour))
}

// longChain presents c followed by 10 more certificates: over
// maxClientChainCerts.
func longChain(c *testcerts.Cert, ca *testcerts.Cert) tls.Certificate {
	chain := make([]*testcerts.Cert, maxClientChainCerts)
	for i := range chain {
		chain[i] = ca
	}
	return c.TLS(chain...)
}

// x509Mechanism is an X.509 attestation; certs is its only certificate.
func x509Mechanism(a *dps.X509Attestation) *dps.AttestationMechanism {
	return &dps.AttestationMechanism{Type: dps.AttestationX509, X509: a}
}

func certsOf(c *testcerts.Cert) *dps.X509Certificates {
	return &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: c.PEM()}}
}

// enrollX509 creates an individual X.509 enrollment listing cert.
func (d *domain) enrollX509(t testing.TB, regID string, cert *testcerts.Cert) {
	t.Helper()
	e := &dps.IndividualEnrollment{RegistrationID: regID}
	e.Attestation = x509Mechanism(&dps.X509Attestation{ClientCertificates: certsOf(cert)})
	if _, err := d.svc.PutEnrollment(context.Background(), regID, e, ""); err != nil {
		t.Fatal(err)
	}
}

// groupX509 creates an X.509 enrollment group whose signing certificate
// is signing.
func (d *domain) groupX509(t testing.TB, id string, signing *testcerts.Cert) {
	t.Helper()
	g := &dps.EnrollmentGroup{EnrollmentGroupID: id}
	g.Attestation = x509Mechanism(&dps.X509Attestation{SigningCertificates: certsOf(signing)})
	if _, err := d.svc.PutGroup(context.Background(), id, g, ""); err != nil {
		t.Fatal(err)
	}
}

// TestDPSX509Register: a CONNECT without password on a connection that
// presented a client certificate registers and polls by certificate
// (docs/spec/dps-protocol.md#x509-attestation), against the real DPS domain.
func TestDPSX509Register(t *testing.T) {
	d := newDomain(t)
	p := newTestPKI(t)
	self := leaf(t, "x509-dev", nil)
	d.enrollX509(t, "x509-dev", self)
	d.groupX509(t, "x509-group", p.root)
	d.enroll(t, "dev-1", "", dps.ProvisioningEnabled)
	ts := startServer(t, Config{}, d.svc)

	tests := []struct {
		name      string
		regID     string
		cert      tls.Certificate
		password  string
		wantGroup string // the registration's x509.enrollmentGroupId
		wantAuth  string // the hub device's authentication type
	}{
		{"individual, self-signed", "x509-dev", self.TLS(), "", "", hub.AuthSelfSigned},
		{"group, leaf and intermediate", "grp-dev-1", leaf(t, "grp-dev-1", p.inter).TLS(p.inter), "", "x509-group", hub.AuthCertificateAuthority},
		{"group, leaf signed by the root", "grp-dev-2", leaf(t, "grp-dev-2", p.root).TLS(), "", "x509-group", hub.AuthCertificateAuthority},
		{"group, whole chain up to the root", "grp-dev-3", leaf(t, "grp-dev-3", p.inter).TLS(p.inter, p.root), "", "x509-group", hub.AuthCertificateAuthority},
		// A password is the credential whatever the TLS layer presented.
		{"token wins over the certificate", "dev-1", self.TLS(), token(t, "dev-1", indivKey, testNow.Add(time.Hour)), "", hub.AuthSAS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := ts.withClientCert(tt.cert).connectPaho(t, tt.regID, tt.password)
			r := dev.register("1", `{"registrationId":"`+tt.regID+`"}`)
			if r.status != 202 || r.retryAfter == "" {
				t.Fatalf("register: %s %s; want 202 with retry-after", r.topic, r.body)
			}
			r = dev.poll("2", decodeStatus(t, r).OperationID)
			got := decodeStatus(t, r)
			st := got.RegistrationState
			if r.status != 200 || got.Status != dps.StatusAssigned || st == nil {
				t.Fatalf("poll: %s %s; want 200 assigned", r.topic, r.body)
			}
			if st.AssignedHub != hubName || st.DeviceID != tt.regID {
				t.Errorf("registrationState %s", r.body)
			}
			switch {
			case tt.wantAuth == hub.AuthSAS:
				if st.X509 != nil {
					t.Errorf("a token registration reports x509: %s", r.body)
				}
			case st.X509 == nil || st.X509.EnrollmentGroupID != tt.wantGroup:
				t.Errorf("registrationState.x509 in %s; want enrollmentGroupId %q", r.body, tt.wantGroup)
			}
			dv, err := d.reg.Get(context.Background(), hubName, tt.regID)
			if err != nil {
				t.Fatalf("assigned device: %v", err)
			}
			if dv.Authentication == nil || dv.Authentication.Type != tt.wantAuth {
				t.Errorf("hub device authentication %+v; want %s", dv.Authentication, tt.wantAuth)
			}
		})
	}

	// An empty password (the flag set, 0 bytes, which MQTT 3.1.1 allows)
	// is no password.
	for _, tt := range []struct {
		name   string
		ts     *testServer
		status int
	}{
		{"empty password and a certificate", ts.withClientCert(self.TLS()), 202},
		{"empty password, no certificate", ts, 401},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.ts.dialRaw(t)
			pk := connectPacket("x509-dev", dpsUsername("x509-dev"), "", 0)
			pk.Connect.PasswordFlag = true
			if rc := c.connectWith(pk); rc != 0 {
				t.Fatalf("CONNACK %d", rc)
			}
			c.subscribe(1, 1, dpsResponseFilter)
			c.publish(1, 2, registerTopic+"7", nil)
			c.expectPuback(2)
			r := c.readResponse()
			if r.status == 401 {
				checkError(t, r, 401, 401000)
			}
			if r.status != tt.status || r.rid != "7" {
				t.Fatalf("register: %s %s; want %d", r.topic, r.body, tt.status)
			}
		})
	}
	if logs := ts.logs.String(); !strings.Contains(logs, "certCN=x509-dev") || !strings.Contains(logs, "auth=x509") {
		t.Error("the DPS session's certificate is not logged by CN")
	}
}

// TestDPSX509Refused: certificates that enroll nothing are accepted at
// CONNECT and answered 401 on the response topic, for register and poll alike
// (docs/spec/dps-protocol.md#mqtt-connect "authentication timing"); without
// password and certificate the answer is 401000, as before X.509.
func TestDPSX509Refused(t *testing.T) {
	d := newDomain(t)
	p := newTestPKI(t)
	d.enrollX509(t, "x509-dev", leaf(t, "x509-dev", nil))
	d.groupX509(t, "x509-group", p.root)
	ts := startServer(t, Config{}, d.svc)

	tests := []struct {
		name  string
		regID string
		cert  *tls.Certificate
		code  int
	}{
		{"CN is not the registration ID", "x509-dev", new(leaf(t, "someone-else", nil).TLS()), 401002},
		{"group member's CN is not the registration ID", "grp-dev-1", new(leaf(t, "grp-dev-2", p.inter).TLS(p.inter)), 401002},
		{"another certificate with the enrolled CN", "x509-dev", new(leaf(t, "x509-dev", nil).TLS()), 401002},
		{"expired certificate", "grp-old", new(expiredLeaf(t, "grp-old", p.inter).TLS(p.inter)), 401002},
		{"untrusted root", "grp-dev-1", new(leaf(t, "grp-dev-1", p.other).TLS()), 401002},
		{"intermediate not sent", "grp-dev-1", new(leaf(t, "grp-dev-1", p.inter).TLS()), 401002},
		{"neither password nor certificate", "x509-dev", nil, 401000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cts := ts
			if tt.cert != nil {
				cts = ts.withClientCert(*tt.cert)
			}
			dev := cts.connectPaho(t, tt.regID, "")
			for _, r := range []response{
				dev.register("1", ""),
				dev.poll("1", "5.0000000000000000.00000000-0000-4000-8000-000000000000"),
			} {
				body := checkError(t, r, 401, tt.code)
				if tt.code == 401002 && body["message"] != "Invalid certificate." {
					t.Errorf("message %q; want %q", body["message"], "Invalid certificate.")
				}
			}
		})
	}
	if _, err := d.svc.GetRegistration(context.Background(), "x509-dev"); err == nil {
		t.Error("a registration exists after only refused requests")
	}
}

// TestClientChainTooLarge: a chain over the bounds is refused at CONNECT,
// DPS and hub alike, since crypto/tls would keep it for the connection's
// life.
func TestClientChainTooLarge(t *testing.T) {
	f := newHubFixture(t, nil)
	p := newTestPKI(t)
	tests := []struct {
		name     string
		clientID string
		username string
	}{
		{"DPS", "x509-dev", dpsUsername("x509-dev")},
		{"hub", "x509-dev", hubUsername("x509-dev")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.ts.withClientCert(longChain(leaf(t, "x509-dev", p.inter), p.inter)).dialRaw(t)
			if rc := c.connectHub(tt.clientID, tt.username, "", 0); rc != 5 {
				t.Fatalf("CONNACK %d; want 5", rc)
			}
			c.expectClosed(5 * time.Second)
		})
	}
	if !strings.Contains(f.ts.logs.String(), "TLS client certificate chain too large") {
		t.Error("the refusal is not logged")
	}
	// The bounds themselves.
	chainOf := func(n, size int) []*x509.Certificate {
		out := make([]*x509.Certificate, n)
		for i := range out {
			out[i] = &x509.Certificate{Raw: make([]byte, size)}
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		chain []*x509.Certificate
		ok    bool
	}{
		{"none", nil, true},
		{"leaf, intermediate, root", testcerts.Chain(leaf(t, "x", p.inter), p.inter, p.root), true},
		{"as many certificates as allowed", chainOf(maxClientChainCerts, 1), true},
		{"one certificate too many", chainOf(maxClientChainCerts+1, 1), false},
		{"as many bytes as allowed", chainOf(2, maxClientChainBytes/2), true},
		{"one byte too many", chainOf(1, maxClientChainBytes+1), false},
	} {
		if err := checkClientChain(tt.chain); (err == nil) != tt.ok {
			t.Errorf("%s: checkClientChain = %v; want ok %v", tt.name, err, tt.ok)
		}
	}
}

// x509Devices registers the hub test devices that authenticate by
// certificate and returns their certificates.
type x509Devices struct {
	self, self2, ca, caInter, expired *testcerts.Cert
}

func (f *hubFixture) x509Devices(t testing.TB, p *testPKI) *x509Devices {
	t.Helper()
	ds := &x509Devices{
		self:    leaf(t, "self-dev", nil),
		self2:   leaf(t, "self-dev", nil),
		ca:      leaf(t, "ca-dev", p.root),
		caInter: leaf(t, "ca-dev", p.inter),
		expired: expiredLeaf(t, "old-dev", nil),
	}
	sha1Upper, _ := dps.Thumbprints(ds.self.Cert)
	s2 := sha256.Sum256(ds.self2.Cert.Raw)
	sha256Lower := hex.EncodeToString(s2[:])
	oldThumb, _ := dps.Thumbprints(ds.expired.Cert)
	for _, d := range []*hub.Device{
		// SHA-1 upper case as Azure shows it, SHA-256 lower case: both forms
		// authenticate
		// (docs/spec/iothub-protocol.md#x509-device-authentication).
		{DeviceID: "self-dev", Authentication: &hub.Authentication{Type: hub.AuthSelfSigned,
			X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &sha1Upper, SecondaryThumbprint: &sha256Lower}}},
		{DeviceID: "off-dev", Status: hub.StatusDisabled, Authentication: &hub.Authentication{Type: hub.AuthSelfSigned,
			X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &sha1Upper}}},
		{DeviceID: "old-dev", Authentication: &hub.Authentication{Type: hub.AuthSelfSigned,
			X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &oldThumb}}},
		{DeviceID: "ca-dev", Authentication: &hub.Authentication{Type: hub.AuthCertificateAuthority}},
	} {
		if _, err := f.reg.Create(context.Background(), hubName, d); err != nil {
			t.Fatal(err)
		}
	}
	f.reg.SetCATrust(staticTrust{p.root.Cert})
	return ds
}

// TestHubX509Connect: a CONNECT without password authenticates by the TLS
// client certificate
// (docs/spec/iothub-protocol.md#x509-device-authentication); every failure is
// CONNACK 5. Accepted sessions stamp telemetry with the identity's auth
// method.
func TestHubX509Connect(t *testing.T) {
	f := newHubFixture(t, nil)
	p := newTestPKI(t)
	ds := f.x509Devices(t, p)
	f.device(t, "dev-1", "")
	tests := []struct {
		name       string
		deviceID   string
		cert       tls.Certificate
		password   string
		want       byte
		authMethod string
	}{
		{"selfSigned, primary SHA-1 thumbprint", "self-dev", ds.self.TLS(), "", 0, x509CertAuthMethod},
		{"selfSigned, secondary SHA-256 thumbprint", "self-dev", ds.self2.TLS(), "", 0, x509CertAuthMethod},
		{"certificateAuthority, signed by the root", "ca-dev", ds.ca.TLS(), "", 0, x509CAAuthMethod},
		{"certificateAuthority, leaf and intermediate", "ca-dev", ds.caInter.TLS(p.inter), "", 0, x509CAAuthMethod},
		{"certificateAuthority, whole chain", "ca-dev", ds.caInter.TLS(p.inter, p.root), "", 0, x509CAAuthMethod},
		// A password is the credential whatever the TLS layer presented.
		{"SAS device, token and a certificate", "dev-1", ds.self.TLS(), validToken(t, "dev-1"), 0, deviceAuthMethod},

		{"selfSigned, another certificate", "self-dev", leaf(t, "self-dev", nil).TLS(), "", 5, ""},
		{"selfSigned, certificate of another device", "self-dev", ds.ca.TLS(), "", 5, ""},
		{"expired certificate", "old-dev", ds.expired.TLS(), "", 5, ""},
		{"disabled device", "off-dev", ds.self.TLS(), "", 5, ""},
		{"unknown device", "ghost", leaf(t, "ghost", p.root).TLS(), "", 5, ""},
		{"certificateAuthority, untrusted root", "ca-dev", leaf(t, "ca-dev", p.other).TLS(), "", 5, ""},
		{"certificateAuthority, intermediate not sent", "ca-dev", ds.caInter.TLS(), "", 5, ""},
		{"certificateAuthority, CN is another device", "ca-dev", leaf(t, "self-dev", p.root).TLS(), "", 5, ""},
		{"certificateAuthority, expired", "ca-dev", expiredLeaf(t, "ca-dev", p.root).TLS(), "", 5, ""},
		{"SAS device, certificate only", "dev-1", leaf(t, "dev-1", p.root).TLS(), "", 5, ""},
		{"selfSigned device, wrong token and its certificate", "self-dev", ds.self.TLS(), validToken(t, "self-dev"), 5, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.ts.withClientCert(tt.cert).dialRaw(t)
			c.expectOutcome(c.connectHub(tt.deviceID, hubUsername(tt.deviceID), tt.password, 0), tt.want)
			if tt.want != 0 {
				return
			}
			before := len(f.sink.messages())
			c.publish(1, 1, "devices/"+tt.deviceID+"/messages/events/", []byte("x"))
			c.expectPuback(1)
			msgs := f.sink.messages()
			if len(msgs) != before+1 {
				t.Fatalf("%d messages appended; want 1", len(msgs)-before)
			}
			if got := propertyValue(msgs[len(msgs)-1].System, "iothub-connection-auth-method"); got != tt.authMethod {
				t.Errorf("auth method %s; want %s", got, tt.authMethod)
			}
		})
	}

	// An empty password (the flag set, 0 bytes, which MQTT 3.1.1 allows)
	// is no password.
	for _, tt := range []struct {
		name string
		ts   *testServer
		want byte
	}{
		{"empty password and a certificate", f.ts.withClientCert(ds.self.TLS()), 0},
		{"empty password, no certificate", f.ts, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.ts.dialRaw(t)
			pk := connectPacket("self-dev", hubUsername("self-dev"), "", 0)
			pk.Connect.Clean, pk.Connect.PasswordFlag = false, true
			c.expectOutcome(c.connectWith(pk), tt.want)
		})
	}
	logs := f.ts.logs.String()
	for _, s := range []string{"certCN=self-dev", "certThumbprint=", "device authentication failed", "no password and no TLS client certificate"} {
		if !strings.Contains(logs, s) {
			t.Errorf("no log line says %q", s)
		}
	}
}

// propertyValue is the value of the named property, "" when absent.
func propertyValue(list []hub.Property, name string) string {
	for _, p := range list {
		if p.Name == name {
			return p.Value
		}
	}
	return ""
}

// TestHubX509TelemetryPaho is the SDK flow with paho: a selfSigned device
// connects with its certificate and no password, and its telemetry is
// stamped with the x509 auth method.
func TestHubX509TelemetryPaho(t *testing.T) {
	f := newHubFixture(t, nil)
	ds := f.x509Devices(t, newTestPKI(t))
	dev, err := f.ts.withClientCert(ds.self.TLS()).connectHubPaho(t, "self-dev", hubUsername("self-dev"), "")
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if pt := dev.c.Publish("devices/self-dev/messages/events/a=1", 1, false, "hello"); !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("publish: %v", pt.Error())
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages; want 1", len(msgs))
	}
	d, err := f.reg.Get(context.Background(), hubName, "self-dev")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := propsOf(msgs[0].System), stamps(d, x509CertAuthMethod); !reflect.DeepEqual(got, want) {
		t.Errorf("system properties\n got %q\nwant %q", got, want)
	}
}

// TestHubX509ServerUnavailable: a registry that cannot answer is CONNACK
// 3 for a certificate as for a token.
func TestHubX509ServerUnavailable(t *testing.T) {
	f := newHubFixture(t, nil)
	ds := f.x509Devices(t, newTestPKI(t))
	f.st.fail.Store(true)
	c := f.ts.withClientCert(ds.self.TLS()).dialRaw(t)
	if rc := c.connectHub("self-dev", hubUsername("self-dev"), "", 0); rc != 3 {
		t.Fatalf("CONNACK %d; want 3", rc)
	}
	c.expectClosed(5 * time.Second)
}

// TestHubX509Expiry: the connection is closed when the certificate ends,
// as it is when a token does.
func TestHubX509Expiry(t *testing.T) {
	f := newHubFixture(t, nil)
	short := testcerts.Issue(t, "short-dev", nil, false, testNow.Add(-time.Hour), testNow.Add(time.Second))
	thumb, _ := dps.Thumbprints(short.Cert)
	if _, err := f.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: "short-dev", Authentication: &hub.Authentication{
		Type: hub.AuthSelfSigned, X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &thumb}}}); err != nil {
		t.Fatal(err)
	}
	c := f.ts.withClientCert(short.TLS()).dialRaw(t)
	if rc := c.connectHub("short-dev", hubUsername("short-dev"), "", 0); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	f.expectExpiry(c, "device certificate expired")
}

// TestX509ProvisionThenConnect is the device's whole life with one
// certificate: it registers with DPS by certificate, then connects to the
// hub it was assigned with the same certificate and no password. The hub
// trusts what DPS trusts (dps.Service is the hub's CATrust, as the server
// wires it).
func TestX509ProvisionThenConnect(t *testing.T) {
	d := newDomain(t)
	p := newTestPKI(t)
	self := leaf(t, "solo-dev", nil)
	d.enrollX509(t, "solo-dev", self)
	d.groupX509(t, "x509-group", p.inter)
	d.reg.SetCATrust(d.svc)
	sink := &recordingSink{}
	clock := func() time.Time { return testNow }
	ts := startServer(t, Config{Hub: &HubConfig{Name: hubName, Now: clock, Services: hub.NewServices(memstore.New(), d.reg, sink, clock, nil)}}, d.svc)

	tests := []struct {
		name       string
		id         string
		cert       tls.Certificate
		authMethod string
	}{
		{"individual enrollment", "solo-dev", self.TLS(), x509CertAuthMethod},
		{"group member", "member-dev", leaf(t, "member-dev", p.inter).TLS(p.inter), x509CAAuthMethod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cts := ts.withClientCert(tt.cert)
			dev := cts.connectPaho(t, tt.id, "")
			r := dev.register("1", "")
			r = dev.poll("2", decodeStatus(t, r).OperationID)
			if st := decodeStatus(t, r).RegistrationState; r.status != 200 || st == nil || st.AssignedHub != hubName || st.DeviceID != tt.id {
				t.Fatalf("poll: %s %s", r.topic, r.body)
			}
			c := cts.dialRaw(t)
			if rc := c.connectHub(tt.id, hubUsername(tt.id), "", 0); rc != 0 {
				t.Fatalf("hub CONNACK %d", rc)
			}
			c.publish(1, 1, "devices/"+tt.id+"/messages/events/", []byte("x"))
			c.expectPuback(1)
			msgs := sink.messages()
			if got := propertyValue(msgs[len(msgs)-1].System, "iothub-connection-auth-method"); got != tt.authMethod {
				t.Errorf("auth method %s; want %s", got, tt.authMethod)
			}
		})
	}
}
