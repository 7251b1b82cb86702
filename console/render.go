package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/serviceclient"
)

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err.Error()
		}
		return string(b)
	},
	"rawjson": func(b json.RawMessage) string {
		if len(b) == 0 {
			return ""
		}
		var out bytes.Buffer
		if json.Indent(&out, b, "", "  ") != nil {
			return string(b)
		}
		return out.String()
	},
	"when": func(t time.Time) string {
		if t.IsZero() || t.Year() < 2 {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"join": strings.Join,
}

// page is what every full page's template gets.
type page struct {
	Title   string
	Active  string
	S       *session
	CSRF    string
	Data    any
	Error   string
	Flash   string
	Signin  bool
	ScopeID string
}

// render writes a full page (layout around the page's "content").
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, s *session, data any) {
	t := c.tmpl[name]
	p := page{S: s, Data: data, ScopeID: c.cfg.IDScope}
	if s != nil {
		p.CSRF = s.csrf
	} else {
		p.Signin = true
	}
	if m, ok := data.(map[string]any); ok {
		if v, ok := m["Title"].(string); ok {
			p.Title = v
		}
		if v, ok := m["Active"].(string); ok {
			p.Active = v
		}
		if v, ok := m["Error"].(string); ok {
			p.Error = v
		}
		if v, ok := m["Flash"].(string); ok {
			p.Flash = v
		}
		if v, ok := m["CSRF"].(string); ok && s == nil {
			p.CSRF = v
		}
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", p); err != nil {
		c.log.Error("console: render", "page", name, "error", err.Error())
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

// fragment writes a named template of a page for an htmx swap.
func (c *Console) fragment(w http.ResponseWriter, status int, page, name string, data any) {
	var buf bytes.Buffer
	if err := c.tmpl[page].ExecuteTemplate(&buf, name, data); err != nil {
		c.log.Error("console: render fragment", "fragment", name, "error", err.Error())
		http.Error(w, "internal error rendering the answer", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

// describe turns a service API error into what the operator reads; a
// refused policy is said so plainly.
func describe(err error) string {
	var se *serviceclient.Error
	var he *hubclient.Error
	switch {
	case errors.As(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden):
		return "Refused: the signed-in policy does not allow this (" + se.Error() + ")."
	case errors.As(err, &he) && (he.Status == http.StatusUnauthorized || he.Status == http.StatusForbidden):
		return "Refused: the signed-in policy does not allow this (" + he.Error() + ")."
	}
	return err.Error()
}

// status is the HTTP status the console answers for err: the service
// API's own when it has one.
func status(err error) int {
	var se *serviceclient.Error
	var he *hubclient.Error
	switch {
	case errors.As(err, &se) && se.Status >= 400:
		return se.Status
	case errors.As(err, &he) && he.Status >= 400:
		return he.Status
	}
	return http.StatusBadGateway
}
