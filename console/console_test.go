package console

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func newTest(t *testing.T, ready error) *Console {
	t.Helper()
	c, err := New(Config{Ready: func(context.Context) error { return ready }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A signed-in session for handler tests, without a berth behind it.
func (c *Console) testSession() *session {
	s := &session{IsDPS: true}
	c.newSession(s)
	return s
}

// Every answer carries a CSP without inline scripts and refuses framing;
// the sign-in page sets an HttpOnly, Secure, SameSite=Strict cookie.
func TestHeadersAndCookies(t *testing.T) {
	c := newTest(t, nil)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "https://console/signin", nil))
	h := rec.Header()
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP %q", csp)
	}
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 || !cookies[0].HttpOnly || !cookies[0].Secure || cookies[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("sign-in cookie %+v", cookies)
	}
	if !strings.Contains(rec.Body.String(), `name="csrf" value="`+cookies[0].Value+`"`) {
		t.Error("the sign-in form does not carry the token its cookie holds")
	}
}

// A sign-in POST without the token of the sign-in page is refused before
// the connection string is even read.
func TestSigninNeedsItsToken(t *testing.T) {
	c := newTest(t, nil)
	form := url.Values{"connectionString": {"HostName=x;SharedAccessKeyName=y;SharedAccessKey=eg=="}, "csrf": {"guess"}}
	req := httptest.NewRequest("POST", "https://console/signin", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: preCookie, Value: "other"})
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("sign-in with a wrong token: %d", rec.Code)
	}
}

// Without a session pages redirect to sign-in and POSTs are refused; with
// one, a POST needs the session's CSRF token and a same-origin request.
func TestSessionAndCSRF(t *testing.T) {
	c := newTest(t, nil)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "https://console/devices", nil))
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/signin" {
		t.Errorf("no session: %d %s", rec.Code, rec.Header().Get("Location"))
	}
	s := c.testSession()
	post := func(token, origin string) int {
		req := httptest.NewRequest("POST", "https://console/signout", strings.NewReader(url.Values{"csrf": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: s.id})
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, req)
		return rec.Code
	}
	if code := post("", ""); code != http.StatusForbidden {
		t.Errorf("no token: %d", code)
	}
	if code := post(s.csrf+"x", ""); code != http.StatusForbidden {
		t.Errorf("wrong token: %d", code)
	}
	if code := post(s.csrf, "https://evil.example"); code != http.StatusForbidden {
		t.Errorf("cross-origin: %d", code)
	}
	if code := post(s.csrf, "https://console"); code != http.StatusSeeOther {
		t.Errorf("good token: %d", code)
	}
	if c.lookup(httptest.NewRequest("GET", "/", nil)) != nil || len(c.sessions) != 0 {
		t.Error("the session outlived sign-out")
	}
}

// /healthz is alive whatever; /readyz reports what is not ready.
func TestHealthAndReady(t *testing.T) {
	for _, tc := range []struct {
		ready error
		code  int
	}{{nil, 200}, {errors.New("stream: not connected"), 503}} {
		c := newTest(t, tc.ready)
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		if rec.Code != tc.code {
			t.Errorf("readyz with %v: %d", tc.ready, rec.Code)
		}
		rec = httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != 200 {
			t.Errorf("healthz: %d", rec.Code)
		}
	}
}

// The embedded assets are served, htmx among them.
func TestStatic(t *testing.T) {
	c := newTest(t, nil)
	for _, p := range []string{"/static/htmx.min.js", "/static/console.js", "/static/console.css"} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		if rec.Code != 200 || rec.Body.Len() < 100 {
			t.Errorf("%s: %d, %d bytes", p, rec.Code, rec.Body.Len())
		}
	}
}
