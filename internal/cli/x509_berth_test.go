package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestX509AgainstBerth: the X.509 tooling end to end on a real berth:
// berth's development CA verified in one command, an enrollment group on
// it, CA-signed devices provisioned over MQTT and HTTPS, and a self-signed
// device through an individual enrollment, which the hub then knows by
// its certificate's thumbprint.
func TestX509AgainstBerth(t *testing.T) {
	clearHubEnv(t)
	dir := startBerth(t)
	certs := t.TempDir()
	b := berthRunner{t: t, pre: []string{"--data-dir", dir}}
	must, get := b.must, jsonAt

	// One command makes berth's development CA a verified CA.
	ca := must("dps", "certificate", "create", "--name", "berth-dev-ca", "--verify")
	if get(ca, "name") != "berth-dev-ca" || get(ca, "properties", "isVerified") != true || get(ca, "properties", "verificationCode") != nil {
		t.Fatalf("created CA: %v", ca)
	}
	if list := must("dps", "certificate", "list"); !strings.Contains(toJSON(t, list), `"berth-dev-ca"`) {
		t.Errorf("list: %v", list)
	}
	b.fails("already exists", "dps", "certificate", "create", "--name", "berth-dev-ca")

	g := must("enrollment-group", "create", "grp-x509", "--attestation-type", "x509", "--ca-name", "berth-dev-ca")
	if get(g, "attestation", "x509", "caReferences", "primary") != "berth-dev-ca" {
		t.Errorf("group: %v", g)
	}

	for _, tr := range []string{"mqtt", "https"} {
		t.Run("group device over "+tr, func(t *testing.T) {
			id := "grp-dev-" + tr
			issued := must("device", "certificate", "create", "--registration-id", id, "--out", certs)
			if get(issued, "certificateFile") != filepath.Join(certs, id+".crt") {
				t.Fatalf("issued: %v", issued)
			}
			// The registration ID comes from the certificate's CN; the key
			// file from the certificate's name.
			op := must("device", "register", "--transport", tr, "--certificate", filepath.Join(certs, id+".crt"))
			if get(op, "status") != "assigned" || get(op, "registrationState", "deviceId") != id ||
				get(op, "registrationState", "x509", "enrollmentGroupId") != "grp-x509" {
				t.Errorf("operation: %v", op)
			}
			if d := must("hub", "device-identity", "show", id); get(d, "authentication", "type") != "certificateAuthority" {
				t.Errorf("hub device: %v", d)
			}
		})
	}

	// A self-signed device through an individual enrollment.
	issued := must("device", "certificate", "create", "--registration-id", "self-1", "--self-signed", "--out", certs)
	sha1, _ := get(issued, "sha1Thumbprint").(string)
	if len(sha1) != 40 {
		t.Fatalf("issued: %v", issued)
	}
	e := must("enrollment", "create", "self-1", "--attestation-type", "x509", "--certificate-path", filepath.Join(certs, "self-1.crt"))
	if get(e, "attestation", "x509", "clientCertificates", "primary", "info", "sha1Thumbprint") != sha1 {
		t.Errorf("enrollment shows %v, want the certificate's info", get(e, "attestation"))
	}
	if e = must("enrollment", "show", "self-1"); get(e, "attestation", "x509", "clientCertificates", "primary", "info", "sha1Thumbprint") != sha1 ||
		get(e, "attestation", "x509", "clientCertificates", "primary", "certificate") != nil {
		t.Errorf("enrollment shows %v, want the certificate's info only", get(e, "attestation"))
	}
	for _, tr := range []string{"https", "mqtt"} {
		op := must("device", "register", "--transport", tr, "--certificate", filepath.Join(certs, "self-1.crt"), "--key", filepath.Join(certs, "self-1.key"))
		if get(op, "status") != "assigned" || get(op, "registrationState", "deviceId") != "self-1" {
			t.Errorf("%s: operation: %v", tr, op)
		}
	}
	d := must("hub", "device-identity", "show", "self-1")
	if get(d, "authentication", "type") != "selfSigned" || !strings.EqualFold(toString(get(d, "authentication", "x509Thumbprint", "primaryThumbprint")), sha1) {
		t.Errorf("hub device authentication: %v, want selfSigned with %s", get(d, "authentication"), sha1)
	}

	// Another device's certificate is refused.
	must("device", "certificate", "create", "--registration-id", "self-2", "--self-signed", "--out", certs)
	b.fails("401", "device", "register", "--transport", "https", "--registration-id", "self-1", "--certificate", filepath.Join(certs, "self-2.crt"))

	must("dps", "certificate", "show", "berth-dev-ca")
	if out, _, err := run(t, "--data-dir", dir, "dps", "certificate", "delete", "berth-dev-ca"); err != nil || out != "" {
		t.Errorf("delete: %q, %v", out, err)
	}
	b.fails("404", "dps", "certificate", "show", "berth-dev-ca")
}

// berthRunner runs commands on a local berth: pre, then each command's
// arguments. Their output is one JSON object.
type berthRunner struct {
	t   *testing.T
	pre []string
}

// try runs a command and decodes its output; on error it must print
// nothing.
func (b berthRunner) try(args ...string) (map[string]any, error) {
	b.t.Helper()
	out, _, err := run(b.t, append(append([]string{}, b.pre...), args...)...)
	if err != nil {
		if out != "" {
			b.t.Errorf("%v: printed %q on error", args, out)
		}
		return nil, err
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		b.t.Fatalf("%v: output is not a JSON object: %q", args, out)
	}
	return v, nil
}

// must runs a command that has to succeed.
func (b berthRunner) must(args ...string) map[string]any {
	b.t.Helper()
	v, err := b.try(args...)
	if err != nil {
		b.t.Fatalf("%v: %v", args, err)
	}
	return v
}

// fails runs a command that has to fail with want in its error.
func (b berthRunner) fails(want string, args ...string) {
	b.t.Helper()
	if _, err := b.try(args...); err == nil || !strings.Contains(err.Error(), want) {
		b.t.Errorf("%v: err %v, want %q", args, err, want)
	}
}

// jsonAt digs a value out of decoded JSON by its path.
func jsonAt(v any, path ...string) any {
	for _, k := range path {
		m, _ := v.(map[string]any)
		v = m[k]
	}
	return v
}

func toJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func toString(v any) string { s, _ := v.(string); return s }
