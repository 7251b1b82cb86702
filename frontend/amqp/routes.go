package amqp

import (
	"net/url"
	"strings"

	engine "github.com/berth-iot/berth/amqp"
)

// route is one row of the attach table: the address pattern a link's
// address (normalised, see normaliseAddress) must match, and what serves
// it. Pattern segments compare case-insensitively; "{d}" captures a device
// ID and "{m}" a module ID (percent-decoded, case kept), "{*}" anything.
type route struct {
	pattern string
	attach  func(c *conn, l *engine.Link, m match) (engine.LinkHandler, *engine.Error)
}

// match is what a route's pattern captured.
type match struct {
	address  string   // normalised address
	segs     []string // its segments
	deviceID string
	moduleID string
}

// routes is the attach table, searched in order: a link is served by the
// first row whose pattern matches its address. To serve a new address, add
// a row (the handler lives in its own file).
var routes = []route{
	{pattern: "$cbs", attach: (*conn).attachCBS},
	{pattern: "devices/{d}/messages/events", attach: (*conn).attachTelemetry},
	{pattern: "devices/{d}/messages/devicebound", attach: (*conn).attachC2D},
	{pattern: "devices/{d}/twin", attach: (*conn).attachTwin},
	{pattern: "devices/{d}/methods/devicebound", attach: (*conn).attachMethods},
	// Module identities (module.go); other module addresses are refused.
	{pattern: "devices/{d}/modules/{m}/messages/events", attach: (*conn).attachModuleEvents},
	{pattern: "devices/{d}/modules/{m}/twin", attach: (*conn).attachTwin},
	{pattern: "devices/{d}/modules/{m}/methods/devicebound", attach: (*conn).attachMethods},
	{pattern: "devices/{d}/modules/{m}/{*}", attach: (*conn).attachModule},
	{pattern: "devices/{d}/modules/{m}/{*}/{*}", attach: (*conn).attachModule},
	{pattern: "devices/{d}/modules/{m}/{*}/{*}/{*}", attach: (*conn).attachModule},
	{pattern: "messages/devicebound", attach: (*conn).attachServiceSend},
	{pattern: "messages/servicebound/feedback", attach: (*conn).attachFeedback},
	{pattern: "messages/servicebound/filenotifications", attach: (*conn).attachFileNotifications},
	// The Event Hubs-compatible endpoint (eventhubs.go), and the redirect
	// to it from the hub's messages/events.
	{pattern: "$management", attach: (*conn).attachEHManagement},
	{pattern: "{*}/$management", attach: (*conn).attachEHManagement},
	{pattern: "{*}/ConsumerGroups/{*}/Partitions/{*}", attach: (*conn).attachEHPartition},
	{pattern: "messages/events", attach: (*conn).attachRedirect},
	{pattern: "messages/events/{*}", attach: (*conn).attachRedirect},
	{pattern: "messages/events/{*}/{*}", attach: (*conn).attachRedirect},
	{pattern: "messages/events/{*}/{*}/{*}", attach: (*conn).attachRedirect},
	{pattern: "messages/events/{*}/{*}/{*}/{*}", attach: (*conn).attachRedirect},
	// DPS: {scope}/registrations/{reg}, last so that no hub address is
	// taken for one ({d} here is the registration ID).
	{pattern: "{*}/registrations/{d}", attach: (*conn).attachDPS},
}

// normaliseAddress strips a scheme and host (amqps://{hub}[:port]) and the
// leading '/' from a link address: clients send "/devices/d/…",
// "devices/d/…" and full URIs alike.
func normaliseAddress(a string) string {
	for _, scheme := range []string{"amqps://", "amqp://", "sb://"} {
		if len(a) >= len(scheme) && strings.EqualFold(a[:len(scheme)], scheme) {
			a = a[len(scheme):]
			if i := strings.IndexByte(a, '/'); i >= 0 {
				a = a[i:]
			} else {
				a = ""
			}
			break
		}
	}
	return strings.TrimSuffix(strings.TrimPrefix(a, "/"), "/")
}

// lookupRoute finds the route of an address.
func lookupRoute(address string) (route, match, bool) {
	norm := normaliseAddress(address)
	segs := strings.Split(norm, "/")
	for _, r := range routes {
		if m, ok := matchPattern(r.pattern, segs); ok {
			m.address = norm
			return r, m, true
		}
	}
	return route{}, match{}, false
}

func matchPattern(pattern string, segs []string) (match, bool) {
	ps := strings.Split(pattern, "/")
	if len(ps) != len(segs) {
		return match{}, false
	}
	m := match{segs: segs}
	for i, p := range ps {
		s := segs[i]
		switch p {
		case "{d}", "{m}":
			dec, err := url.PathUnescape(s)
			if err != nil || dec == "" {
				return match{}, false
			}
			if p == "{d}" {
				m.deviceID = dec
			} else {
				m.moduleID = dec
			}
		case "{*}":
		default:
			if !strings.EqualFold(p, s) {
				return match{}, false
			}
		}
	}
	return m, true
}

// linkError is a refusal or detach error.
func linkError(cond engine.Symbol, format string, args ...any) *engine.Error {
	return engine.Errorf(cond, format, args...)
}

// wantRole refuses a link on which berth would play the wrong role (a
// client receiver on a telemetry address, …).
func wantRole(l *engine.Link, r engine.Role) *engine.Error {
	if l.Role() != r {
		return linkError(engine.ErrCondNotAllowed, "On %s berth is the %s; a link the other way cannot be attached.", clip(l.Address()), r)
	}
	return nil
}
