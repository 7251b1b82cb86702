package deviceclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/testcerts"
)

// chainCNs names a certificate chain by its subject CNs, "" for none.
func chainCNs(chain []*x509.Certificate) string {
	cns := make([]string, len(chain))
	for i, c := range chain {
		cns[i] = c.Subject.CommonName
	}
	return strings.Join(cns, ",")
}

// assignedAnswer is the final answer of both fakes.
const assignedAnswer = `{"operationId":"op","status":"assigned","registrationState":{"x509":{},"registrationId":"dev-1","assignedHub":"hub.example","deviceId":"dev-1","status":"assigned"}}`

// TestClientCertificate: an X.509 device presents its certificate chain
// over either transport, sends no SAS token (no MQTT password, no
// Authorization header), and its registration ID defaults to the CN.
func TestClientCertificate(t *testing.T) {
	now := time.Now()
	root := testcerts.Valid(t, "root", nil, true, now)
	inter := testcerts.Valid(t, "inter", root, true, now)
	leaf := testcerts.Valid(t, "dev-1", inter, false, now)
	self := testcerts.Valid(t, "dev-1", nil, false, now)
	tests := []struct {
		name      string
		transport string
		cert      tls.Certificate
		regID     string
		wantChain string
	}{
		{"mqtt, CA-signed with its intermediate", TransportMQTT, leaf.TLS(inter), "", "dev-1,inter"},
		{"mqtt, self-signed, ID given", TransportMQTT, self.TLS(), "dev-1", "dev-1"},
		{"https, CA-signed with its intermediate", TransportHTTPS, leaf.TLS(inter), "", "dev-1,inter"},
		{"https, self-signed, leaf not parsed", TransportHTTPS, tls.Certificate{Certificate: self.TLS().Certificate, PrivateKey: self.Key}, "", "dev-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				opts  Options
				chain func() string
				check func()
			)
			if tt.transport == TransportMQTT {
				f := newMQTTFake(t, 0, func(topic, _ string) []published {
					return []published{{"$dps/registrations/res/200/?$rid=" + ridOf(topic), assignedAnswer}}
				})
				opts = f.options()
				chain = func() string { f.mu.Lock(); defer f.mu.Unlock(); return f.chain }
				check = func() {
					f.mu.Lock()
					defer f.mu.Unlock()
					if f.connect.PasswordFlag || len(f.connect.Password) != 0 {
						t.Errorf("CONNECT carries a password %q", f.connect.Password)
					}
					if u := string(f.connect.Username); !strings.HasPrefix(u, testScope+"/registrations/dev-1/") || f.connect.ClientIdentifier != "dev-1" {
						t.Errorf("CONNECT username %q client ID %q", u, f.connect.ClientIdentifier)
					}
				}
			} else {
				f := newHTTPSFake(t, answer(200, "", assignedAnswer))
				f.x509 = true
				opts = f.options()
				chain = func() string { f.mu.Lock(); defer f.mu.Unlock(); return strings.Join(f.chains, ";") }
				check = func() {
					if len(f.log) != 1 || !strings.Contains(f.log[0], "/registrations/dev-1/register?") {
						t.Errorf("requests %q", f.log)
					}
				}
			}
			opts.SymmetricKey = ""
			opts.RegistrationID = tt.regID
			opts.ClientCertificate = &tt.cert
			op, err := Provision(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			if op.Status != "assigned" || op.RegistrationState.X509 == nil {
				t.Errorf("operation %+v", op)
			}
			if got := chain(); got != tt.wantChain {
				t.Errorf("server saw chain %q, want %q", got, tt.wantChain)
			}
			check()
		})
	}
}

func TestValidateClientCertificate(t *testing.T) {
	now := time.Now()
	c := testcerts.Valid(t, "dev-cn", nil, false, now).TLS()
	noKey := c
	noKey.PrivateKey = nil
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		wantID  string
	}{
		{"the ID defaults to the CN", Options{ClientCertificate: &c}, "", "dev-cn"},
		{"a given ID wins", Options{ClientCertificate: &c, RegistrationID: "other"}, "", "other"},
		{"not with a key too", Options{ClientCertificate: &c, SymmetricKey: "a2V5"}, "not both", "dev-cn"},
		{"no private key", Options{ClientCertificate: &noKey}, "no private key", "dev-cn"},
		{"empty certificate", Options{ClientCertificate: &tls.Certificate{}, RegistrationID: "d"}, "empty", "d"},
		{"neither", Options{RegistrationID: "d"}, "no symmetric key and no client certificate", "d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.GlobalEndpoint, o.IDScope = "dps", "0ne"
			o = o.withDefaults()
			if o.RegistrationID != tt.wantID {
				t.Errorf("registration ID %q, want %q", o.RegistrationID, tt.wantID)
			}
			err := o.validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
	// No token for a certificate device.
	o := Options{ClientCertificate: &c}.withDefaults()
	if tok, err := o.token(); tok != "" || err != nil {
		t.Errorf("token %q, %v; want none", tok, err)
	}
}
