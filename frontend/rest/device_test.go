package rest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
)

// wireResponse is an HTTP/1.1 answer as bytes on the wire: header names
// exactly as sent.
type wireResponse struct {
	status  int
	headers map[string]string // raw name → value
	body    string
}

// rawRoundTrip sends a request over TCP and reads the raw answer, so that
// tests see header names the way the C SDK does (Go's client would
// canonicalise them).
func rawRoundTrip(t *testing.T, addr, method, target, host string, hdr []string, body string) wireResponse {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, target, host)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, ok := strings.Cut(string(all), "\r\n\r\n")
	if !ok {
		t.Fatalf("no header end in %q", all)
	}
	lines := strings.Split(head, "\r\n")
	var resp wireResponse
	if _, err := fmt.Sscanf(lines[0], "HTTP/1.1 %d", &resp.status); err != nil {
		t.Fatalf("status line %q: %v", lines[0], err)
	}
	resp.headers = map[string]string{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ": ")
		resp.headers[k] = v
	}
	resp.body = rest
	return resp
}

// TestCurlDocFlow replays Azure's "symmetric keys over HTTPS without an
// SDK" curl session (iot-dps-https-sym-key-support.md) against a real
// listener, with a group-derived key, and checks the bytes on the wire.
func TestCurlDocFlow(t *testing.T) {
	f := newFixture(t)
	f.group(t, "curl-group", "")
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	const host = "global.azure-devices-provisioning.net"
	tok := vector20[0].token // group-derived key for "my-device"
	hdr := []string{"Content-Type", "application/json", "Content-Encoding", "utf-8", "Authorization", tok}

	// 1. Register.
	reg := rawRoundTrip(t, addr, "PUT", "/"+scope+"/registrations/my-device/register?api-version=2021-06-01", host, hdr,
		`{"registrationId": "my-device"}`)
	if reg.status != http.StatusAccepted {
		t.Fatalf("register: %d %s", reg.status, reg.body)
	}
	if got := reg.headers["retry-after"]; got != "3" { // what DPS answers
		t.Errorf("retry-after on the wire = %q (headers %v)", got, reg.headers)
	}
	if _, dup := reg.headers["Retry-After"]; dup {
		t.Error("a second, canonical Retry-After field was sent")
	}
	if got, want := reg.headers["Location"], "https://"+host+"/"+scope+"/registrations/my-device/register"; got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	if got := reg.headers["Content-Type"]; got != contentTypeJSON {
		t.Errorf("Content-Type = %q", got)
	}
	if !uuidRE.MatchString(reg.headers["x-ms-request-id"]) {
		t.Errorf("x-ms-request-id = %q", reg.headers["x-ms-request-id"])
	}
	op := decodeString[dps.OperationStatus](t, reg.body)
	if op.OperationID == "" || op.Status != dps.StatusAssigning {
		t.Fatalf("register body %s", reg.body)
	}

	// 2. Poll the operation (the doc's GET carries the same headers).
	poll := rawRoundTrip(t, addr, "GET", "/"+scope+"/registrations/my-device/operations/"+op.OperationID+"?api-version=2021-06-01", host, hdr, "")
	if poll.status != http.StatusOK {
		t.Fatalf("poll: %d %s", poll.status, poll.body)
	}
	if _, ok := poll.headers["retry-after"]; ok {
		t.Error("retry-after on a terminal answer")
	}
	done := decodeString[dps.OperationStatus](t, poll.body)
	rs := done.RegistrationState
	if done.Status != dps.StatusAssigned || done.OperationID != op.OperationID || rs == nil {
		t.Fatalf("poll body %s", poll.body)
	}
	if rs.AssignedHub != hubName || rs.DeviceID != "my-device" || rs.Substatus != dps.SubstatusInitialAssignment || rs.ETag == "" ||
		rs.RegistrationID != "my-device" || rs.SymmetricKey == nil || rs.SymmetricKey.EnrollmentGroupID != "curl-group" {
		t.Errorf("registration state %s", poll.body)
	}
	for _, field := range []string{`"createdDateTimeUtc":"`, `"lastUpdatedDateTimeUtc":"`} {
		i := strings.Index(poll.body, field)
		if i < 0 || !timestampRE.MatchString(poll.body[i+len(field):i+len(field)+28]) {
			t.Errorf("%s not in Azure's format: %s", field, poll.body)
		}
	}

	// 3. Registration status lookup.
	st := rawRoundTrip(t, addr, "POST", "/"+scope+"/registrations/my-device?api-version=2021-06-01", host, hdr, `{"registrationId": "my-device"}`)
	if st.status != http.StatusOK {
		t.Fatalf("status lookup: %d %s", st.status, st.body)
	}
	state := decodeString[dps.RegistrationState](t, st.body)
	if state.Status != dps.StatusAssigned || state.AssignedHub != hubName || state.DeviceID != "my-device" || state.ETag != rs.ETag {
		t.Errorf("status lookup body %s", st.body)
	}
}

func decodeString[T any](t testing.TB, s string) T {
	t.Helper()
	rec := httptest.NewRecorder()
	rec.Body.WriteString(s)
	return decode[T](t, rec)
}

// provision registers and polls through the handler, returning the final
// operation status.
func (f *fixture) provision(t *testing.T, regID, token, body string) dps.OperationStatus {
	t.Helper()
	rec := f.do(request(http.MethodPut, "/"+scope+"/registrations/"+url.PathEscape(regID)+"/register?api-version=2019-03-31", body,
		"Authorization", token, "Content-Type", "application/json; charset=utf-8"))
	if rec.Code != http.StatusAccepted {
		t.Fatalf("register %s: %d %s", regID, rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	if ra, _ := raw(rec, "retry-after"); ra != "3" {
		t.Errorf("retry-after = %q", ra)
	}
	op := decode[dps.OperationStatus](t, rec)
	rec = f.do(request(http.MethodGet, "/"+scope+"/registrations/"+url.PathEscape(regID)+"/operations/"+op.OperationID+"?api-version=2019-03-31", "",
		"Authorization", token))
	if rec.Code != http.StatusOK {
		t.Fatalf("poll %s: %d %s", regID, rec.Code, rec.Body)
	}
	checkCommon(t, rec)
	return decode[dps.OperationStatus](t, rec)
}

// TestProvisionSREncodings: every SDK's sr encoding validates, for individual
// enrollments and group members
// (docs/spec/dps-protocol.md#token-format-and-client-encodings,
// #test-vectors, vector 20).
func TestProvisionSREncodings(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev-1", "", "")
	f.enroll(t, "Dev-2", "custom-id", "")
	f.group(t, "grp", "")
	exp := f.now.Add(time.Hour)
	derived, err := sas.DeriveKey(groupKey, "member-7")
	if err != nil {
		t.Fatal(err)
	}

	type tc struct {
		name, regID, token, wantDevice, wantGroup string
	}
	var tests []tc
	for _, style := range []string{styleNode, stylePython, styleCSharp, styleC} {
		tests = append(tests,
			tc{"individual " + style, "dev-1", deviceToken(t, scope, "dev-1", indivKey, style, exp), "dev-1", ""},
			tc{"individual deviceId " + style, "Dev-2", deviceToken(t, scope, "Dev-2", indivKey, style, exp), "custom-id", ""},
			tc{"group " + style, "member-7", deviceToken(t, scope, "member-7", derived, style, exp), "member-7", "grp"},
		)
	}
	for _, v := range vector20 {
		tests = append(tests, tc{"vector 20 " + v.name, "my-device", v.token, "my-device", "grp"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := f.provision(t, tt.regID, tt.token, "")
			rs := op.RegistrationState
			if op.Status != dps.StatusAssigned || rs == nil || rs.DeviceID != tt.wantDevice || rs.AssignedHub != hubName || rs.RegistrationID != tt.regID {
				t.Fatalf("operation %+v / %+v", op, rs)
			}
			gotGroup := ""
			if rs.SymmetricKey != nil {
				gotGroup = rs.SymmetricKey.EnrollmentGroupID
			}
			if gotGroup != tt.wantGroup {
				t.Errorf("group = %q, want %q", gotGroup, tt.wantGroup)
			}
		})
	}
}

// TestDeviceAcceptedRequests: the register bodies and Content-Types the SDKs
// and raw clients send are all accepted
// (docs/spec/dps-protocol.md#register-request-body, #device-api-over-https).
func TestDeviceAcceptedRequests(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev-1", "", "")
	tok := f.devToken(t, "dev-1", indivKey)
	path := "/" + scope + "/registrations/dev-1/register?api-version=2021-10-01"
	tests := []struct {
		name, path, body, contentType string
	}{
		{"empty body, no content-type (C#, Embedded C)", path, "", ""},
		{"whitespace body (Node/Python poll style)", path, " ", "application/json"},
		{"python", path, `{"payload": null, "registrationId": "dev-1"}`, "application/json; charset=utf-8"},
		{"csharp payload only", path, `{"payload":{"modelId":"dtmi:x;1"}}`, "application/json; charset=utf-8"},
		{"registrationId other case", path, `{"registrationId":"DEV-1"}`, "application/json"},
		{"no content-type with body", path, `{"registrationId":"dev-1"}`, ""},
		{"content-type case and utf8", path, `{}`, "Application/JSON;Charset=UTF8"},
		{"path literals upper case, id percent-encoded", "/" + strings.ToLower(scope) + "/REGISTRATIONS/dev%2D1/Register", `{}`, "application/json"},
		{"forceRegistration", path + "&forceRegistration=true", `{}`, "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(http.MethodPut, tt.path, tt.body, "Authorization", tok)
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			rec := f.do(r)
			if rec.Code != http.StatusAccepted {
				t.Fatalf("status %d %s", rec.Code, rec.Body)
			}
			checkCommon(t, rec)
			// The Location is canonical whatever spelling the client used.
			if loc, _ := raw(rec, "Location"); loc != "https://"+dpsHost+"/"+strings.ToLower(scope)+"/registrations/dev-1/register" &&
				loc != "https://"+dpsHost+"/"+scope+"/registrations/dev-1/register" {
				t.Errorf("Location = %q", loc)
			}
		})
	}
}

// TestPollTolerance: the Node SDK sends "{}" as the body of the poll GET;
// any body and content type on the GET is ignored. An operation that is
// not finished answers 202 with retry-after.
func TestPollTolerance(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev-1", "", "")
	f.enroll(t, "off", "", dps.ProvisioningDisabled)
	tok := f.devToken(t, "dev-1", indivKey)
	op := f.provision(t, "dev-1", tok, "")
	for _, body := range []string{"{}", " ", "not json"} {
		rec := f.do(request(http.MethodGet, "/"+scope+"/registrations/dev-1/operations/"+op.OperationID, body,
			"Authorization", tok, "Content-Type", "text/plain"))
		if rec.Code != http.StatusOK {
			t.Errorf("body %q: %d %s", body, rec.Code, rec.Body)
		}
	}
	// A disabled enrollment: 202 on register, 200 "disabled" on poll.
	off := f.provision(t, "off", f.devToken(t, "off", indivKey), "")
	if off.Status != dps.StatusDisabled || off.OperationID == "" {
		t.Errorf("disabled: %+v", off)
	}
}

// TestPollAssigning: a poll that finds an unfinished operation answers 202
// with retry-after. The domain completes operations inside Register, so a
// store that holds an "assigning" operation stands in for a slower
// allocator.
func TestPollAssigning(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev-1", "", "")
	tok := f.devToken(t, "dev-1", indivKey)
	op := f.provision(t, "dev-1", tok, "")
	rec, err := f.st.Get(context.Background(), store.KindOperation, op.OperationID)
	if err != nil {
		t.Fatal(err)
	}
	rec.Data = []byte(strings.Replace(string(rec.Data), `"status":"assigned"`, `"status":"assigning"`, 1))
	if _, err := f.st.Put(context.Background(), rec, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	res := f.do(request(http.MethodGet, "/"+scope+"/registrations/dev-1/operations/"+op.OperationID, "", "Authorization", tok))
	if res.Code != http.StatusAccepted {
		t.Fatalf("status %d %s", res.Code, res.Body)
	}
	if ra, _ := raw(res, "retry-after"); ra != "3" {
		t.Errorf("retry-after = %q", ra)
	}
	if got := decode[dps.OperationStatus](t, res); got.Status != dps.StatusAssigning {
		t.Errorf("body %s", res.Body)
	}
}

// TestDeviceErrors: every refusal is a DPS error answer with the right
// status and code.
func TestDeviceErrors(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "dev-1", "", "")
	f.enroll(t, "dev-2", "", "")
	f.enroll(t, "never", "", "")
	f.enroll(t, "big-dev", "", "")
	tok := f.devToken(t, "dev-1", indivKey)
	op := f.provision(t, "dev-1", tok, "")
	f.provision(t, "dev-2", f.devToken(t, "dev-2", indivKey), "")

	reg := "/" + scope + "/registrations/dev-1/register?api-version=2021-06-01"
	jsonCT := "application/json"
	tooBig := `{"registrationId":"big-dev","payload":{"p":"` + strings.Repeat("a", 97*1024) + `"}}`
	tests := []struct {
		name, method, path, body, auth, contentType string
		code                                        azerr.Code
	}{
		{"missing token", "PUT", reg, "", "", "", azerr.DPSUnauthorized},
		{"malformed token", "PUT", reg, "", "SharedAccessSignature garbage", "", azerr.DPSUnauthorized},
		{"bearer token", "PUT", reg, "", "Bearer eyJ0eXAi", "", azerr.DPSUnauthorized},
		{"expired token", "PUT", reg, "", deviceToken(t, scope, "dev-1", indivKey, styleCSharp, f.now.Add(-10*time.Minute)), "", azerr.DPSInvalidCredentials},
		{"wrong key", "PUT", reg, "", deviceToken(t, scope, "dev-1", otherKey, styleCSharp, f.now.Add(time.Hour)), "", azerr.DPSInvalidCredentials},
		{"token for another registration", "PUT", reg, "", f.devToken(t, "dev-2", indivKey), "", azerr.DPSInvalidCredentials},
		{"unknown ID scope", "PUT", "/0neFFFFFFFF/registrations/dev-1/register", "", deviceToken(t, "0neFFFFFFFF", "dev-1", indivKey, styleNode, f.now.Add(time.Hour)), "", azerr.DPSInvalidCredentials},
		{"invalid registration ID", "PUT", "/" + scope + "/registrations/bad%20id%21/register", "", tok, "", azerr.DPSInvalidRegistration},
		{"registration ID with encoded slash", "PUT", "/" + scope + "/registrations/a%2Fb/register", "", tok, "", azerr.DPSInvalidRegistration},
		{"registration ID too long", "PUT", "/" + scope + "/registrations/" + strings.Repeat("a", 129) + "/register", "", tok, "", azerr.DPSInvalidRegistration},
		{"registrationId mismatch", "PUT", reg, `{"registrationId":"dev-2"}`, tok, jsonCT, azerr.DPSRegistrationIDMatch},
		{"non-JSON body", "PUT", reg, `registrationId=dev-1`, tok, jsonCT, azerr.DPSInvalidBody},
		{"JSON array body", "PUT", reg, `[]`, tok, jsonCT, azerr.DPSInvalidBody},
		{"payload not an object", "PUT", reg, `{"payload":[1]}`, tok, jsonCT, azerr.DPSInvalidBody},
		{"wrong content-type", "PUT", reg, `{}`, tok, "text/plain", azerr.DPSUnsupportedMedia},
		{"form content-type", "PUT", reg, `a=b`, tok, "application/x-www-form-urlencoded", azerr.DPSUnsupportedMedia},
		{"non-utf-8 charset", "PUT", reg, `{}`, tok, "application/json; charset=iso-8859-1", azerr.DPSUnsupportedMedia},
		{"malformed content-type", "PUT", reg, `{}`, tok, "application/json; charset", azerr.DPSUnsupportedMedia},
		{"97 KB body", "PUT", "/" + scope + "/registrations/big-dev/register", tooBig, f.devToken(t, "big-dev", indivKey), jsonCT, azerr.DPSTooLarge},
		{"unknown operation", "GET", "/" + scope + "/registrations/dev-1/operations/5.0000000000000000.00000000-0000-4000-8000-000000000000", "", tok, "", azerr.DPSOperationNotFound},
		{"operation of another device", "GET", "/" + scope + "/registrations/dev-2/operations/" + op.OperationID, "", f.devToken(t, "dev-2", indivKey), "", azerr.DPSOperationNotFound},
		{"poll without token", "GET", "/" + scope + "/registrations/dev-1/operations/" + op.OperationID, "", "", "", azerr.DPSUnauthorized},
		{"status lookup, never registered", "POST", "/" + scope + "/registrations/never", "", f.devToken(t, "never", indivKey), "", azerr.DPSRegistrationMissing},
		{"status lookup, wrong key", "POST", "/" + scope + "/registrations/dev-1", "", deviceToken(t, scope, "dev-1", otherKey, styleC, f.now.Add(time.Hour)), "", azerr.DPSInvalidCredentials},
		{"status lookup, bad body", "POST", "/" + scope + "/registrations/dev-1", `{"registrationId":`, tok, jsonCT, azerr.DPSInvalidBody},
		{"status lookup, wrong content-type", "POST", "/" + scope + "/registrations/dev-1", `{}`, tok, "text/xml", azerr.DPSUnsupportedMedia},
		{"wrong method on register", "DELETE", reg, "", tok, "", azerr.DPSMethodNotAllowed},
		{"wrong method on operation", "PUT", "/" + scope + "/registrations/dev-1/operations/x", "", tok, "", azerr.DPSMethodNotAllowed},
		{"unknown device path", "PUT", "/" + scope + "/registrations/dev-1/registerx", "", tok, "", azerr.DPSNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(tt.method, tt.path, tt.body)
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			rec := f.do(r)
			e := checkError(t, rec, tt.code.Number())
			if tt.code == azerr.DPSUnauthorized || tt.code == azerr.DPSInvalidCredentials {
				if e.Message != "Unauthorized" {
					t.Errorf("message = %q, want Azure's %q", e.Message, "Unauthorized")
				}
			}
			if _, ok := raw(rec, "retry-after"); ok {
				t.Error("retry-after on an error other than 429")
			}
		})
	}

	// Nothing was written for the oversized register: the device never got
	// a registration record nor a hub identity.
	if _, err := f.svc.GetRegistration(context.Background(), "big-dev"); !isCode(err, azerr.DPSRegistrationMissing) {
		t.Errorf("after the 97 KB register: GetRegistration err = %v, want 404202", err)
	}
}

// TestBodyLimitBoundary: exactly 96 KB is accepted, one byte more is 413,
// whether the length is declared or the body is chunked.
func TestBodyLimitBoundary(t *testing.T) {
	f := newFixture(t)
	f.enroll(t, "edge", "", "")
	tok := f.devToken(t, "edge", indivKey)
	body := func(n int) string {
		pre, post := `{"registrationId":"edge","payload":{"p":"`, `"}}`
		return pre + strings.Repeat("a", n-len(pre)-len(post)) + post
	}
	tests := []struct {
		name    string
		size    int
		chunked bool
		want    int
	}{
		{"96 KB declared", 96 * 1024, false, http.StatusAccepted},
		{"96 KB + 1 declared", 96*1024 + 1, false, http.StatusRequestEntityTooLarge},
		{"96 KB chunked", 96 * 1024, true, http.StatusAccepted},
		{"96 KB + 1 chunked", 96*1024 + 1, true, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(http.MethodPut, "/"+scope+"/registrations/edge/register", body(tt.size), "Authorization", tok, "Content-Type", "application/json")
			if tt.chunked {
				r.ContentLength = -1
				r.Body = io.NopCloser(strings.NewReader(body(tt.size)))
			}
			rec := f.do(r)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %.200s", rec.Code, tt.want, rec.Body)
			}
			if tt.want == http.StatusRequestEntityTooLarge {
				checkError(t, rec, azerr.DPSTooLarge.Number())
			}
		})
	}
}

func isCode(err error, code azerr.Code) bool {
	var ae *azerr.Error
	return errors.As(err, &ae) && ae.Code == code
}

func TestForceRegistrationFlag(t *testing.T) {
	tests := []struct {
		query string
		want  bool
	}{
		{"api-version=2019-03-31", false},
		{"api-version=2019-03-31&forceRegistration=true", true},
		{"forceregistration=True", true},
		{"forceRegistration=false", false},
		{"forceRegistration=", false},
	}
	for _, tt := range tests {
		u := &url.URL{RawQuery: tt.query}
		if got := forceRegistration(u); got != tt.want {
			t.Errorf("%q: %v, want %v", tt.query, got, tt.want)
		}
	}
}

// TestServiceBodyLimit: the 96 KB limit is the front end's own (the domain
// does not bound enrollment documents): an oversized PUT is refused and
// nothing is stored.
func TestServiceBodyLimit(t *testing.T) {
	f := newFixture(t)
	big := `{"attestation":{"type":"symmetricKey"},"initialTwin":{"tags":{"t":"` + strings.Repeat("x", 96*1024) + `"}}}`
	tests := []struct {
		name    string
		chunked bool
	}{{"declared length", false}, {"chunked", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(http.MethodPut, "/enrollments/big-1", big, "Authorization", f.ownerToken(t), "Content-Type", "application/json")
			if tt.chunked {
				r.ContentLength = -1
				r.Body = io.NopCloser(strings.NewReader(big))
			}
			checkError(t, f.do(r), azerr.DPSTooLarge.Number())
			if _, err := f.svc.GetEnrollment(context.Background(), "big-1", false); !isCode(err, azerr.DPSEnrollmentNotFound) {
				t.Errorf("oversized PUT stored the enrollment: %v", err)
			}
		})
	}
}

// countingReader counts what the handler read.
type countingReader struct{ n int }

func (c *countingReader) Read(p []byte) (int, error) {
	c.n += len(p)
	return len(p), nil
}

// TestDeclaredLengthRefusedUnread: a Content-Length over the limit is
// refused before a byte of the body is read.
func TestDeclaredLengthRefusedUnread(t *testing.T) {
	f := newFixture(t)
	for _, path := range []string{"/" + scope + "/registrations/dev-1/register", "/enrollments/dev-1"} {
		body := &countingReader{}
		r := request(http.MethodPut, path, "", "Authorization", f.ownerToken(t), "Content-Type", "application/json")
		r.Body = io.NopCloser(body)
		r.ContentLength = 10 << 20
		checkError(t, f.do(r), azerr.DPSTooLarge.Number())
		if body.n != 0 {
			t.Errorf("%s: read %d bytes of an oversized body", path, body.n)
		}
	}
}
