package rest

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/berth-iot/berth/azerr"
)

// maxSegments bounds the path segments looked at: no route has more than
// six, so longer paths are unknown without decoding them all.
const maxSegments = 8

// A route is one method on one path pattern. A pattern is a list of
// slash-separated segments: "{name}" matches any non-empty segment (already
// percent-decoded) and passes it to the handler; any other segment is a
// literal matched case-insensitively, because clients disagree on case (the
// Node service SDK writes /enrollmentgroups/, Azure documents
// /enrollmentGroups/) and Azure accepts both.
type route struct {
	method  string
	pattern []string
	handle  func(x *exchange, args []string)
	// api decides how errors on this route are rendered: DPS and IoT Hub
	// clients parse different error bodies.
	api api
}

// api is the Azure service a route belongs to.
type api int

const (
	apiDPS api = iota // DPS error body and x-ms-error-code (the default)
	apiHub            // IoT Hub's legacy error body and iothub-errorcode
)

// internal is the API's code for berth's own failure (a store error, a
// recovered panic): the error answer of a cause never shown.
func (a api) internal() azerr.Code {
	if a == apiHub {
		return azerr.HubServerError
	}
	return azerr.DPSInternal
}

// methodNotAllowed is the API's code for a known path with another method.
func (a api) methodNotAllowed() azerr.Code {
	if a == apiHub {
		return azerr.HubMethodNotAllowed
	}
	return azerr.DPSMethodNotAllowed
}

// newRoute returns a DPS route.
func newRoute(method, pattern string, handle func(x *exchange, args []string)) route {
	return route{method: method, pattern: strings.Split(pattern, "/"), handle: handle}
}

// newHubRoute returns an IoT Hub route.
func newHubRoute(method, pattern string, handle func(x *exchange, args []string)) route {
	rt := newRoute(method, pattern, handle)
	rt.api = apiHub
	return rt
}

// match returns the arguments of the path if it fits the pattern.
func (rt *route) match(segs []string) ([]string, bool) {
	if len(segs) != len(rt.pattern) {
		return nil, false
	}
	var args []string
	for i, p := range rt.pattern {
		s := segs[i]
		if s == "" {
			return nil, false
		}
		if isParam(p) {
			args = append(args, s)
			continue
		}
		if !strings.EqualFold(p, s) {
			return nil, false
		}
	}
	return args, true
}

func isParam(p string) bool { return strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") }

// routes is an ordered route table. Several APIs (DPS device, DPS service,
// the hub's REST API) contribute their routes to one table served on
// the same 443 listener; the order decides between patterns that fit the
// same path (literal-first service routes come before the device routes,
// whose first segment is a parameter).
type routes []route

// lookup returns the first route that fits both the method and the path.
// When the path fits some route but none with this method, allow lists the
// methods that would have been accepted (for a 405 and its Allow header);
// when nothing fits the path, rt is nil and allow empty (a 404).
func (rs routes) lookup(method string, segs []string) (rt *route, args []string, allow []string) {
	for i := range rs {
		a, ok := rs[i].match(segs)
		if !ok {
			continue
		}
		if rs[i].method == method {
			return &rs[i], a, nil
		}
		if !contains(allow, rs[i].method) {
			allow = append(allow, rs[i].method)
		}
	}
	return nil, nil, allow
}

// pathAPI is the API of the first route whose pattern fits the path,
// whatever its method: a 405 is rendered the way that API's clients parse
// errors. Paths no route fits are DPS's (see exchange.serve).
func (rs routes) pathAPI(segs []string) api {
	for i := range rs {
		if _, ok := rs[i].match(segs); ok {
			return rs[i].api
		}
	}
	return apiDPS
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// splitPath turns an escaped request path into percent-decoded segments.
// It works on the escaped form (r.URL.EscapedPath) and decodes each segment
// on its own, so that an encoded "/" (%2F) stays inside its segment instead
// of creating a new one: clients percent-encode IDs (C# WebUtility.UrlEncode,
// C SDK URL_EncodeString), and an ID containing "/" must be rejected as an
// invalid ID, not routed elsewhere. ok is false for paths no route can fit.
func splitPath(escaped string) (segs []string, ok bool, err error) {
	p, found := strings.CutPrefix(escaped, "/")
	if !found {
		return nil, false, nil
	}
	// One trailing slash is tolerated: the Node service SDK posts bulk
	// operations to /enrollments/.
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	raw := strings.Split(p, "/")
	if len(raw) > maxSegments {
		return nil, false, nil
	}
	segs = make([]string, len(raw))
	for i, s := range raw {
		d, err := url.PathUnescape(s)
		if err != nil {
			return nil, false, fmt.Errorf("rest: path segment %d: %w", i, err)
		}
		segs[i] = d
	}
	return segs, true, nil
}
