// Package console is berth's operator web console and the rest of the
// operator listener: /metrics, /healthz and /readyz. The console is
// server-rendered (html/template) with htmx for the small interactive
// parts; both are embedded, so the product build needs no Node toolchain.
//
// An operator signs in with a DPS or hub connection string. Every action
// goes through berth's own service API (HTTPS to berth's own listener, with
// the connection string's policy, through serviceclient and hubclient), so
// the policy's rights decide what is shown and allowed, exactly as for any
// other client. Only live telemetry is read in-process from the stream,
// after the same service-token check as the service API's (Config.
// AuthorizeTelemetry). docs/console.md describes the pages.
package console

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/internal/svcconn"
	"github.com/berth-iot/berth/serviceclient"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is what the console needs of the running berth.
type Config struct {
	Logger *slog.Logger
	// ServiceAddr is where berth's HTTPS listener can be dialled from
	// this process (host:port).
	ServiceAddr func() string
	// ServerCert is the certificate berth's HTTPS listener serves now: the
	// console's calls to itself accept exactly that certificate.
	ServerCert func() *tls.Certificate
	// Overview facts.
	IDScope        string
	GlobalEndpoint string
	MQTTAddress    func() string
	HTTPSAddress   func() string
	// CAFile is the PEM of berth's development CA ("" with an operator's
	// own certificate): the overview offers it for download.
	CAFile string
	// Telemetry subscribes to a device's telemetry from now on.
	Telemetry func(ctx context.Context, hubName, deviceID string) (<-chan *hub.Message, error)
	// AuthorizeTelemetry checks a connection string's policy as the
	// service API would for reading telemetry of hubName (ServiceConnect).
	AuthorizeTelemetry func(cs svcconn.ConnectionString) (hubName string, err error)
	// Metrics serves /metrics; nil leaves it out.
	Metrics http.Handler
	// Ready reports whether store, stream and listeners are ready.
	Ready func(ctx context.Context) error
	// SessionTTL is how long an idle session lasts (default 8 h).
	SessionTTL time.Duration
	// now is the clock (tests).
	now func() time.Time
}

// Console is the operator listener's handler.
type Console struct {
	cfg  Config
	log  *slog.Logger
	tmpl map[string]*template.Template
	mux  *http.ServeMux

	mu       sync.Mutex
	sessions map[string]*session
}

// session is one signed-in operator. The connection string stays on the
// server; the browser holds only a random session ID.
type session struct {
	id      string
	csrf    string
	Conn    svcconn.ConnectionString
	connStr string
	dps     *serviceclient.Client
	hub     *hubclient.Client
	// kind is what the connection string was accepted as: "dps", "hub"
	// or both.
	IsDPS, IsHub bool
	expires      time.Time
}

const (
	sessionCookie = "berth_console"
	preCookie     = "berth_console_signin"
	csrfField     = "csrf"
	csrfHeader    = "X-CSRF-Token"
)

// New returns the operator listener's handler.
func New(cfg Config) (*Console, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	c := &Console{cfg: cfg, log: cfg.Logger, sessions: map[string]*session{}, mux: http.NewServeMux()}
	if err := c.parseTemplates(); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

func (c *Console) parseTemplates() error {
	pages, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	c.tmpl = map[string]*template.Template{}
	for _, p := range pages {
		name := p[len("templates/"):]
		if name == "layout.html" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", p)
		if err != nil {
			return fmt.Errorf("console: template %s: %w", name, err)
		}
		c.tmpl[name] = t
	}
	return nil
}

// ServeHTTP adds the security headers every answer carries.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	c.mux.ServeHTTP(w, r)
}

func (c *Console) routes() {
	m := c.mux
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", cacheStatic(http.FileServerFS(static))))
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	m.HandleFunc("GET /readyz", c.readyz)
	if c.cfg.Metrics != nil {
		m.Handle("GET /metrics", c.cfg.Metrics)
	}
	m.HandleFunc("GET /signin", c.signinPage)
	m.HandleFunc("POST /signin", c.signin)
	m.HandleFunc("POST /signout", c.auth(c.signout))
	m.HandleFunc("GET /ca.pem", c.auth(c.caDownload))
	m.HandleFunc("GET /{$}", c.auth(c.overview))
	m.HandleFunc("POST /connection-string", c.auth(c.revealConnectionString))
	c.dpsRoutes(m)
	c.hubRoutes(m)
}

func cacheStatic(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=300")
		h.ServeHTTP(w, r)
	})
}

func (c *Console) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if c.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := c.cfg.Ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

// ---- sessions and CSRF ----

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (c *Console) lookup(r *http.Request) *session {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[ck.Value]
	if s == nil {
		return nil
	}
	now := c.cfg.now()
	if now.After(s.expires) {
		delete(c.sessions, s.id)
		return nil
	}
	s.expires = now.Add(c.cfg.SessionTTL)
	return s
}

func (c *Console) newSession(s *session) {
	s.id, s.csrf = randomToken(), randomToken()
	now := c.cfg.now()
	s.expires = now.Add(c.cfg.SessionTTL)
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, o := range c.sessions { // drop the expired ones
		if now.After(o.expires) {
			delete(c.sessions, id)
		}
	}
	c.sessions[s.id] = s
}

func setCookie(w http.ResponseWriter, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
}

// sameOrigin refuses a state-changing request another site's page made:
// browsers send Origin on every POST, and Sec-Fetch-Site where supported.
// The CSRF token is the check that counts; this one is defence in depth.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" && o != "https://"+r.Host {
		return false
	}
	return true
}

type authedHandler func(w http.ResponseWriter, r *http.Request, s *session)

// auth requires a session and, on every POST, its CSRF token (form field
// or header) and a same-origin request.
func (c *Console) auth(h authedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.lookup(r)
		if s == nil {
			if r.Method == http.MethodGet && r.Header.Get("HX-Request") == "" {
				http.Redirect(w, r, "/signin", http.StatusSeeOther)
				return
			}
			http.Error(w, "not signed in", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet {
			r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
			tok := r.Header.Get(csrfHeader)
			if tok == "" {
				tok = r.PostFormValue(csrfField)
			}
			if !sameOrigin(r) || subtle.ConstantTimeCompare([]byte(tok), []byte(s.csrf)) != 1 {
				c.log.Info("console: request refused: CSRF token missing or wrong", "path", r.URL.Path)
				http.Error(w, "forbidden: the form is stale or did not come from this console; reload the page", http.StatusForbidden)
				return
			}
		}
		h(w, r, s)
	}
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	c.renderSignin(w, r, "", http.StatusOK)
}

func (c *Console) renderSignin(w http.ResponseWriter, r *http.Request, msg string, status int) {
	tok := randomToken()
	setCookie(w, preCookie, tok, 600)
	c.render(w, r, status, "signin.html", nil, map[string]any{"CSRF": tok, "Error": msg})
}

// signin accepts a connection string when berth's own service API does:
// as a DPS policy (it can list enrollment groups), as a hub policy (it can
// list devices), or both when the DPS and the hub share the host name.
func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	ck, err := r.Cookie(preCookie)
	if err != nil || !sameOrigin(r) || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostFormValue(csrfField))) != 1 {
		http.Error(w, "forbidden: the sign-in form is stale or did not come from this console; reload it", http.StatusForbidden)
		return
	}
	connStr := r.PostFormValue("connectionString")
	cs, err := svcconn.Parse("console", connStr)
	if err != nil {
		c.renderSignin(w, r, "That is not a service connection string: "+err.Error(), http.StatusBadRequest)
		return
	}
	hc := c.httpClient()
	s := &session{Conn: cs, connStr: connStr}
	if s.dps, err = serviceclient.New(connStr, serviceclient.Options{HTTPClient: hc}); err != nil {
		c.renderSignin(w, r, err.Error(), http.StatusBadRequest)
		return
	}
	if s.hub, err = hubclient.New(connStr, hubclient.Options{HTTPClient: hc}); err != nil {
		c.renderSignin(w, r, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	_, _, derr := s.dps.QueryEnrollmentGroups(ctx, 1, "")
	s.IsDPS = derr == nil
	// A DPS policy whose host is no linked hub is not tried as a hub
	// policy: that attempt would only log (and count) a refusal.
	if !s.IsDPS || c.isLinkedHub(ctx, s) {
		_, herr := s.hub.ListDevices(ctx, 1)
		s.IsHub = herr == nil
	}
	if !s.IsDPS && !s.IsHub {
		c.log.Info("console: sign-in refused", "policy", cs.SharedAccessKeyName, "host", cs.HostName)
		c.renderSignin(w, r, "berth refused this connection string as a DPS and as a hub policy (wrong key, unknown policy or host, or a policy without read rights).", http.StatusUnauthorized)
		return
	}
	c.newSession(s)
	setCookie(w, preCookie, "", -1)
	setCookie(w, sessionCookie, s.id, 0)
	c.log.Info("console: signed in", "policy", cs.SharedAccessKeyName, "host", cs.HostName, "dps", s.IsDPS, "hub", s.IsHub)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (c *Console) isLinkedHub(ctx context.Context, s *session) bool {
	hubs, err := s.dps.ListHubs(ctx)
	if err != nil {
		return true // cannot tell: try
	}
	host := svcconn.HostOnly(s.Conn.HostName)
	for _, h := range hubs {
		if strings.EqualFold(h.Name, host) {
			return true
		}
	}
	return false
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request, s *session) {
	c.mu.Lock()
	delete(c.sessions, s.id)
	c.mu.Unlock()
	setCookie(w, sessionCookie, "", -1)
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

// httpClient calls berth's own HTTPS listener and trusts exactly the
// certificate it serves: the console is a client of its own process, over
// loopback, whatever CA (berth's or the operator's) issued it.
func (c *Console) httpClient() *http.Client {
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, c.cfg.ServiceAddr())
		},
		TLSClientConfig: &tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: true, // replaced by the pin below
			VerifyConnection: func(cs tls.ConnectionState) error {
				want := c.cfg.ServerCert()
				if want == nil || len(want.Certificate) == 0 || len(cs.PeerCertificates) == 0 ||
					subtle.ConstantTimeCompare(cs.PeerCertificates[0].Raw, want.Certificate[0]) != 1 {
					return errors.New("console: berth's HTTPS listener served another certificate than berth's")
				}
				return nil
			},
		},
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     time.Minute,
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}
