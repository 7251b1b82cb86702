// Package rest is berth's HTTPS front end (port 443): the DPS device API
// (register, operation status, registration status), the DPS service API
// (enrollments, enrollment groups, registration records) and, when
// configured, the IoT Hub REST API (device telemetry, device registry), with
// the exact status codes, headers and JSON shapes the Azure SDKs expect
// (docs/spec/dps-protocol.md#device-api-over-https and #service-api,
// docs/spec/iothub-protocol.md#telemetry-over-https and #service-api). It
// turns requests into calls on *dps.Service and *hub.Registry, and
// *azerr.Error results into Azure's error answers, in the format of the API
// the route belongs to; protocol rules about identities and credentials
// stay in the domain.
//
// Header names whose spelling matters are written by direct assignment to the
// header map, never with Header.Set, which would canonicalise them: the Azure
// C SDK looks response headers up with a case-sensitive strcmp
// (docs/spec/dps-protocol.md#device-api-over-https,
// docs/spec/iothub-protocol.md#endpoints). That is also why the listener must
// stay on HTTP/1.1: HTTP/2 lower-cases every name.
package rest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/refusal"
)

// Response header names, spelled as they go on the wire.
const (
	hdrContentType  = "Content-Type"
	hdrRequestID    = "x-ms-request-id"
	hdrErrorCode    = "x-ms-error-code"
	hdrRetryAfter   = "retry-after"
	hdrLocation     = "Location"
	hdrAllow        = "Allow"
	hdrItemType     = "x-ms-item-type"
	hdrContinuation = "x-ms-continuation"
	hdrMaxItemCount = "x-ms-max-item-count"
	hdrHubErrorCode = "iothub-errorcode"
	// hdrETag is spelled as IoT Hub spells it: the C SDK finds a C2D
	// message's lock token only under exactly "ETag".
	hdrETag = "ETag"
)

// contentTypeJSON is the Content-Type of every answer, as Azure sends it.
const contentTypeJSON = "application/json; charset=utf-8"

// Request header names. Go canonicalises the keys of received headers, and
// Header.Get canonicalises its argument, so the spelling here is free.
const (
	reqAuthorization = "Authorization"
	reqIfMatch       = "If-Match"
	reqContinuation  = "X-Ms-Continuation"
	reqMaxItemCount  = "X-Ms-Max-Item-Count"
	reqContentType   = "Content-Type"
)

// maxLoggedAPIVersion bounds what a client can put into the access log.
const maxLoggedAPIVersion = 32

// maxLoggedHost bounds the Host header in the access log: a DNS name and
// a port.
const maxLoggedHost = 260

// Config configures the HTTPS front end.
type Config struct {
	// Hosts are the host names the service answers to. A service SAS token's
	// sr must name one of them or the host the request was sent to.
	Hosts []string
	// Logger receives the access and error logs; slog.Default() when nil.
	Logger *slog.Logger
	// Now is the clock for service tokens and error timestamps; time.Now
	// when nil.
	Now func() time.Time
	// Hub, when not nil, adds the IoT Hub REST API (telemetry and device
	// registry) to the same handler.
	Hub *HubConfig
}

// handler serves the REST API: DPS always, the hub when configured.
type handler struct {
	svc      *dps.Service
	settings *dps.Settings
	hosts    []string
	log      *slog.Logger
	now      func() time.Time
	hub      *HubConfig // nil: no hub routes
	// single is the one hub served when hub.Hubs is nil.
	single *hub.Served
	routes routes
}

// NewHandler returns the http.Handler of the 443 listener's REST API. It
// panics when cfg.Hub is set but lacks its name or registry: that is a
// wiring bug found at start-up, like net/http's Handle with a nil handler.
func NewHandler(cfg Config, svc *dps.Service, settings *dps.Settings) http.Handler {
	h := &handler{
		svc:      svc,
		settings: settings,
		hosts:    append([]string(nil), cfg.Hosts...),
		log:      cfg.Logger,
		now:      cfg.Now,
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	// Literal-first routes (DPS service, then hub) before the DPS device
	// routes, whose first segment is the ID scope parameter: on the
	// (theoretical) paths both fit, the literal wins. The hub's first
	// segments ("devices", "twins", "statistics") are hub-only, so an ID scope
	// spelled "devices" can never reach a DPS device route through a hub
	// path.
	h.routes = h.serviceRoutes()
	if cfg.Hub != nil {
		hc := *cfg.Hub
		if (hc.Name == "" && hc.Hubs == nil) || hc.Services == nil || hc.Registry == nil {
			panic("rest: HubConfig needs a Name (or Hubs) and the hub Services")
		}
		h.hub = &hc
		h.single = &hub.Served{Info: hub.HubInfo{Name: hc.Name}, Settings: hc.Settings}
		h.routes = append(h.routes, h.hubRoutes()...)
	}
	h.routes = append(h.routes, h.deviceRoutes()...)
	return h
}

// exchange is one request and its answer.
type exchange struct {
	h      *handler
	w      http.ResponseWriter
	r      *http.Request
	id     string   // x-ms-request-id, also the trackingId of an error
	status int      // 0 until the header is written
	segs   []string // the percent-decoded path segments
	api    api      // of the route serving the request: how errors look
	// target is the hub a hub route acts on, resolved from the Host
	// header once per request (see servedHub); nil on other routes.
	target *hub.Served
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	x := &exchange{h: h, w: w, r: r, id: dps.NewTrackingID()}
	defer func() {
		if v := recover(); v != nil {
			// net/http's own signal to abort the response silently.
			if v == http.ErrAbortHandler {
				panic(v)
			}
			h.log.Error("rest: handler panic", "requestId", x.id, "method", r.Method, "path", r.URL.EscapedPath(),
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if x.status == 0 {
				x.fail(azerr.Wrap(x.api.internal(), fmt.Errorf("panic: %v", v)))
			}
		}
		// The access log, one line per request at debug: who (remote
		// address; the Authorization header is never logged), which DPS
		// or hub (Host), what and how it ended.
		h.log.Debug("rest: request", "requestId", x.id, "remote", r.RemoteAddr, "host", truncate(r.Host, maxLoggedHost),
			"method", r.Method, "path", r.URL.EscapedPath(),
			"apiVersion", truncate(r.URL.Query().Get("api-version"), maxLoggedAPIVersion),
			"status", x.status, "duration", time.Since(start))
	}()
	x.serve()
}

func (x *exchange) serve() {
	segs, ok, err := splitPath(x.r.URL.EscapedPath())
	if err != nil {
		x.fail(azerr.Wrap(azerr.DPSBadRequest, err))
		return
	}
	if !ok {
		x.fail(azerr.New(azerr.DPSNotFound))
		return
	}
	x.segs = segs
	rt, args, allow := x.h.routes.lookup(x.r.Method, segs)
	switch {
	case rt != nil:
		x.api = rt.api
		if rt.api == apiHub {
			s, err := x.h.servedHub(x.r.Host)
			if err != nil {
				x.fail(err)
				return
			}
			x.target = s
		}
		rt.handle(x, args)
	case len(allow) > 0:
		x.api = x.h.routes.pathAPI(segs)
		x.w.Header()[hdrAllow] = allow
		x.fail(azerr.New(x.api.methodNotAllowed()))
	default:
		// A path no route fits belongs to no API; it keeps the DPS 404
		// body that berth has always sent, even under /devices/: guessing
		// the API from a prefix would make the answer to a typo depend on
		// which prefixes are reserved, and every SDK keys its
		// "not found" handling off the status anyway.
		x.fail(azerr.New(azerr.DPSNotFound))
	}
}

// writeHeader writes the headers every answer carries, then the status.
func (x *exchange) writeHeader(status int) {
	h := x.w.Header()
	h[hdrContentType] = []string{contentTypeJSON}
	h[hdrRequestID] = []string{x.id}
	x.status = status
	x.w.WriteHeader(status)
}

// writeJSON answers with v as the body.
func (x *exchange) writeJSON(status int, v any) {
	b, err := encodeJSON(v)
	if err != nil {
		x.fail(fmt.Errorf("rest: encode %T: %w", v, err))
		return
	}
	x.writeHeader(status)
	// A write error means the client went away; there is no one to tell.
	_, _ = x.w.Write(b)
}

// noContent answers 204.
func (x *exchange) noContent() { x.writeHeader(http.StatusNoContent) }

// setRetryAfter writes the retry hint. One header field, named in lower
// case, serves every client:
//   - the Azure C SDK finds it only under exactly "retry-after" (case-
//     sensitive strcmp in azure-c-shared-utility httpheaders.c; with
//     "Retry-After" it silently falls back to 1 s);
//   - HTTP/1.1 field names are case-insensitive (RFC 9110 §5.1), so Node
//     (which lower-cases anyway), C# (typed Headers.RetryAfter), Python and
//     curl read the same field;
//   - sending a second "Retry-After" field as well would duplicate a
//     singleton field: clients that merge duplicates (urllib3, the C SDK's
//     own header map) would see "3, 3", Node drops the duplicate, and .NET
//     marks the second value invalid. One field avoids all of that.
//
// The value is delta-seconds, never an HTTP date: C# reads
// Headers.RetryAfter.Delta.
func (x *exchange) setRetryAfter() { x.setRetryAfterSeconds(x.h.svc.RetryAfter()) }

func (x *exchange) setRetryAfterSeconds(n int) {
	x.w.Header()[hdrRetryAfter] = []string{strconv.Itoa(n)}
}

// errorBody is Azure's ProvisioningServiceErrorDetails.
type errorBody struct {
	ErrorCode    int               `json:"errorCode"`
	TrackingID   string            `json:"trackingId"`
	Message      string            `json:"message"`
	Info         map[string]string `json:"info,omitempty"`
	TimestampUTC dps.Time          `json:"timestampUtc"`
}

// fail answers with err in the error format of the route's API, rendered
// from its azerr entry. Errors that are not *azerr.Error of the route's
// service are internal: their cause is logged, never sent.
func (x *exchange) fail(err error) {
	e := azerr.For(err, x.api.internal())
	x.logError(e)
	x.clearSuccessHeaders()
	if x.api == apiHub {
		x.failHub(e)
		return
	}
	x.failDPS(e)
}

// failDPS answers with e as a DPS error: status errorCode/1000, the code
// in x-ms-error-code, the body every SDK parses.
func (x *exchange) failDPS(e *azerr.Error) {
	status := e.Status()
	h := x.w.Header()
	h[hdrErrorCode] = []string{strconv.Itoa(e.Code.Number())}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		// docs/spec/dps-protocol.md#retry-after-and-polling: every 429
		// carries retry-after; the SDKs retry 503 the same way. A
		// throttle's wait, when the domain gives one, rounded up to
		// whole seconds.
		n := x.h.svc.RetryAfter()
		if e.RetryAfter > 0 {
			n = int((e.RetryAfter + time.Second - 1) / time.Second)
		}
		x.setRetryAfterSeconds(n)
	}
	body := errorBody{
		ErrorCode:    e.Code.Number(),
		TrackingID:   x.id,
		Message:      e.Message,
		Info:         e.Info,
		TimestampUTC: dps.Time{Time: x.h.now().UTC()},
	}
	b, merr := encodeJSON(body)
	if merr != nil {
		// Only a broken Info map could get here; the fixed fields always
		// encode.
		x.h.log.Error("rest: error response", "requestId", x.id, "cause", merr.Error())
		b = []byte(`{"errorCode":500000,"trackingId":"` + x.id + `","message":"Internal server error."}`)
		h[hdrErrorCode] = []string{strconv.Itoa(azerr.DPSInternal.Number())}
		status = http.StatusInternalServerError
	}
	x.writeHeader(status)
	_, _ = x.w.Write(b)
}

// clearSuccessHeaders removes the headers a success answer may have set
// before failing (an encoding error, a recovered panic): they must not
// describe the error answer.
func (x *exchange) clearSuccessHeaders() {
	h := x.w.Header()
	for _, k := range []string{hdrLocation, hdrRetryAfter, hdrItemType, hdrContinuation, hdrMaxItemCount, hdrETag} {
		delete(h, k)
	}
}

// logError logs an error answer:
//   - a refused credential at info, once, with the reason the domain's
//     check gave (the client sees only 401, as from Azure; the operator
//     must see why);
//   - a direct method the device did not answer in time (504) at info: it
//     is the device's outcome, not a fault of berth;
//   - any other 5xx at error (a bug or an outage someone must look at);
//   - the rest at debug (the client's mistake).
//
// The cause may name policies and devices, never keys or tokens: the
// domain's errors carry none.
func (x *exchange) logError(e *azerr.Error) {
	status := e.Status()
	attrs := []any{"requestId", x.id, "method", x.r.Method, "path", x.r.URL.EscapedPath(),
		"status", status, "errorCode", e.Code.Number(), "errorName", e.Code.Name()}
	if r := refusal.Of(e); r != nil {
		attrs = append(attrs, "remote", x.r.RemoteAddr)
		x.h.log.Info("rest: authentication refused", append(attrs, r.LogAttrs()...)...)
		return
	}
	attrs = append(attrs, "message", e.Message)
	if e.Err != nil {
		attrs = append(attrs, "cause", e.Err.Error())
	}
	switch {
	case e.Code == azerr.HubGatewayTimeout:
		x.h.log.Info("rest: the device did not answer in time", attrs...)
	case status >= 500:
		x.h.log.Error("rest: error response", attrs...)
	default:
		x.h.log.Debug("rest: error response", attrs...)
	}
}

// encodeJSON marshals without HTML escaping: bodies carry base64 keys and
// etags, which Azure prints verbatim.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
