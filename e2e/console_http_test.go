package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/serviceclient"
)

// consoleUser is a cookie-keeping HTTPS client of the console, as a
// browser without JavaScript: it posts the forms the pages render.
type consoleUser struct {
	t    *testing.T
	c    *http.Client
	base string
	csrf string
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *berth) consoleSignIn(connStr string) *consoleUser {
	b.t.Helper()
	jar, _ := cookiejar.New(nil)
	u := &consoleUser{t: b.t, base: strings.TrimSuffix(b.srv.AdminURL(), "/"), c: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"}}}}
	_, page := u.get("/signin")
	u.csrf = csrfInput.FindStringSubmatch(page)[1]
	code, page := u.post("/signin", url.Values{"connectionString": {connStr}})
	if code != 200 || !strings.Contains(page, `id="idscope"`) {
		b.t.Fatalf("sign-in: %d %s", code, page)
	}
	u.csrf = csrfInput.FindStringSubmatch(page)[1]
	return u
}

func (u *consoleUser) get(path string) (int, string) {
	u.t.Helper()
	resp, err := u.c.Get(u.base + path)
	if err != nil {
		u.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (u *consoleUser) post(path string, form url.Values) (int, string) {
	u.t.Helper()
	form.Set("csrf", u.csrf)
	req, _ := http.NewRequest("POST", u.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", u.base)
	resp, err := u.c.Do(req)
	if err != nil {
		u.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Through the console's forms: an individual enrollment with an uploaded
// X.509 certificate, static allocation, no reprovisioning and an initial
// twin is stored so by the service API; it can be disabled and deleted; a
// CA certificate is uploaded and verified by proof of possession.
func TestConsoleEnrollmentAndCertificateForms(t *testing.T) {
	b := startWith(t, t.TempDir(), server.Config{AdminAddr: "127.0.0.1:0"})
	u := b.consoleSignIn(b.info.ServiceConnectionString)
	now := time.Now()
	root := testcerts.Valid(t, "console-root", nil, true, now)
	leaf := testcerts.Valid(t, "console-x509", root, false, now)

	code, page := u.post("/enrollments", url.Values{
		"id": {"console-x509"}, "attestation": {"x509"}, "certificate": {leaf.PEM()},
		"provisioningStatus": {"enabled"}, "allocationPolicy": {"static"}, "iotHubs": {b.info.HubHostName},
		"twinTags": {`{"site": "lab"}`}, "twinDesired": {`{"interval": 30}`},
	})
	if code != 200 || !strings.Contains(page, "Saved.") {
		t.Fatalf("create: %d %s", code, page)
	}
	sc, err := serviceclient.New(b.info.ServiceConnectionString, serviceclient.Options{CAFile: b.info.CAFile, Address: b.info.HTTPSAddress})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e, err := sc.GetEnrollment(ctx, "console-x509")
	if err != nil {
		t.Fatal(err)
	}
	if e.Attestation.Type != "x509" || e.AllocationPolicy != "static" || len(e.IoTHubs) != 1 || e.ReprovisionPolicy == nil ||
		e.ReprovisionPolicy.UpdateHubAssignment || e.InitialTwin == nil || !strings.Contains(string(e.InitialTwin.Tags), "lab") {
		t.Fatalf("stored enrollment: %+v", e)
	}
	if code, page := u.post("/enrollments/console-x509", url.Values{"action": {"disable"}}); code != 200 || !strings.Contains(page, "disabled") {
		t.Fatalf("disable: %d", code)
	}
	if e, _ := sc.GetEnrollment(ctx, "console-x509"); e.ProvisioningStatus != "disabled" || e.Attestation.Type != "x509" {
		t.Fatalf("after disable: %+v", e)
	}
	if code, _ := u.post("/enrollments/console-x509/delete", url.Values{}); code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if _, err := sc.GetEnrollment(ctx, "console-x509"); !serviceclient.IsNotFound(err) {
		t.Fatalf("after delete: %v", err)
	}

	// Proof of possession.
	if code, page := u.post("/certificates", url.Values{"name": {"console-root"}, "pem": {root.PEM()}}); code != 200 || !strings.Contains(page, "Unverified") {
		t.Fatalf("upload: %d %s", code, page)
	}
	code, page = u.post("/certificates/console-root/verification-code", url.Values{})
	m := regexp.MustCompile(`Verification code for console-root: ([0-9A-Fa-f]+)`).FindStringSubmatch(page)
	if code != 200 || m == nil {
		t.Fatalf("verification code: %d %s", code, page)
	}
	proof := testcerts.Valid(t, m[1], root, false, now)
	if code, page := u.post("/certificates/console-root/verify", url.Values{"pem": {proof.PEM()}}); code != 200 || !strings.Contains(page, "console-root is verified.") {
		t.Fatalf("verify: %d %s", code, page)
	}
	if c, err := sc.GetCertificate(ctx, "console-root"); err != nil || !c.Properties.IsVerified {
		t.Fatalf("stored certificate: %+v %v", c, err)
	}
}
