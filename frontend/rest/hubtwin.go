package rest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// maxTwinBody bounds a twin PATCH or PUT body. The documents themselves
// are small (tags 8 KB, desired 32 KB as IoT Hub counts them, checked by
// hub.Twins), but clients that replace a twin send back the Twin they
// read, with the reported properties (another 32 KB), $metadata and the
// read-only fields, all in JSON syntax. The hub's 256 KB message limit
// holds such an echo and is an already-documented bound.
const maxTwinBody = hub.MaxMessageSize

// maxMethodRequest bounds a CloudToDeviceMethod body: the payload may be
// hub.MaxMethodPayload bytes, which hub.Methods checks exactly (413
// MessageTooLarge); twice that leaves room for the envelope and for a
// pretty-printed payload's indentation without letting a client make the
// server hold more.
const maxMethodRequest = 2 * hub.MaxMethodPayload

// methodWireMargin is added to an invocation's connect and response
// timeouts when extending the request's write deadline: the answer must
// still be written after the device answered at the last moment. C#
// budgets 15 s of "wire time" the same way (HttpTransportHandler
// GetInvokeDeviceMethodOperationTimeout).
const methodWireMargin = 15 * time.Second

// unavailable is the answer of a route whose domain service the hub was
// built without.
func unavailable(what string) error {
	return azerr.Newf(azerr.HubServiceUnavailable, "%s not enabled on this hub.", what)
}

// moduleArg is the module ID of a module route ({deviceId}, {moduleId});
// "" on a device route.
func moduleArg(args []string) string {
	if len(args) > 1 {
		return args[1]
	}
	return ""
}

// twinArg is the hub.TwinID a twin or method route names: the device's,
// or on /twins/{id}/modules/{moduleId} the module's.
func twinArg(args []string) string { return hub.TwinID(args[0], moduleArg(args)) }

// getTwin is GET /twins/{id} and /twins/{id}/modules/{moduleId}
// (docs/spec/iothub-protocol.md#twins-service-side): 200 with the Twin, and
// its etag also as a quoted ETag header.
func (h *handler) getTwin(x *exchange, args []string) {
	if h.hub.Twins == nil {
		x.fail(unavailable("Twins are"))
		return
	}
	tw, err := h.hub.Twins.Get(x.r.Context(), x.hubName(), twinArg(args))
	if err != nil {
		x.fail(err)
		return
	}
	x.writeTwin(tw)
}

// patchTwin is PATCH /twins/{id}: tags and desired properties merged into
// the twin (null deletes), reported properties ignored.
func (h *handler) patchTwin(x *exchange, args []string) {
	if h.hub.Twins == nil {
		x.fail(unavailable("Twins are"))
		return
	}
	h.updateTwin(x, twinArg(args), h.hub.Twins.Patch)
}

// replaceTwin is PUT /twins/{id}: tags and desired properties replaced.
func (h *handler) replaceTwin(x *exchange, args []string) {
	if h.hub.Twins == nil {
		x.fail(unavailable("Twins are"))
		return
	}
	h.updateTwin(x, twinArg(args), h.hub.Twins.Replace)
}

// twinWrite is hub.Twins.Patch or hub.Twins.Replace.
type twinWrite func(ctx context.Context, hubName, id string, body []byte, ifMatch string) (*hub.Twin, error)

// updateTwin runs a twin write. If-Match is optional and goes to the
// domain as received: it strips quotes (Node's updateTwin sends the etag
// as the Twin holds it, unquoted, or "*"; later versions quote it) and
// treats * and "*" as "any version"; a stale etag is 412 PreconditionFailed.
func (h *handler) updateTwin(x *exchange, id string, write twinWrite) {
	body, ok := x.readHubBody(maxTwinBody)
	if !ok {
		return
	}
	// The domain would read a JSON null as an empty document, which for
	// PUT means "delete every tag and desired property": a client that
	// serialised nothing must not wipe the twin.
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' {
		x.fail(azerr.Newf(azerr.HubArgumentInvalid, "The twin must be a JSON object."))
		return
	}
	tw, err := write(x.r.Context(), x.hubName(), id, body, strings.TrimSpace(x.r.Header.Get(reqIfMatch)))
	if err != nil {
		x.fail(err)
		return
	}
	x.writeTwin(tw)
}

// writeTwin answers 200 with a twin. The body's etag is unquoted, as IoT
// Hub writes it (Node's Twin keeps it and quotes it itself); the ETag
// header carries it quoted, as HTTP wants an entity tag.
func (x *exchange) writeTwin(tw *hub.Twin) {
	x.w.Header()[hdrETag] = []string{`"` + tw.ETag + `"`}
	x.writeJSON(http.StatusOK, tw)
}

// invokeMethod is POST /twins/{id}/methods
// (docs/spec/iothub-protocol.md#direct-method-invocation): 200 with the
// device's status and payload whatever the device answered; 404
// DeviceNotFound, 404 DeviceNotOnline, 504 GatewayTimeout or 400
// ArgumentInvalid otherwise.
func (h *handler) invokeMethod(x *exchange, args []string) {
	if h.hub.Methods == nil {
		x.fail(unavailable("Direct methods are"))
		return
	}
	body, ok := x.readHubBody(maxMethodRequest)
	if !ok {
		return
	}
	var req hub.MethodRequest
	if err := decodeObject(body, &req); err != nil {
		x.fail(&azerr.Error{Code: azerr.HubArgumentInvalid, Err: err,
			Message: "The body is not a CloudToDeviceMethod: {\"methodName\":…,\"payload\":…,\"responseTimeoutInSeconds\":…,\"connectTimeoutInSeconds\":…}."})
		return
	}
	x.extendWriteDeadline(methodDuration(&req) + methodWireMargin)

	res, err := h.hub.Methods.Invoke(x.r.Context(), x.hubName(), twinArg(args), &req)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			// The request ended (the caller went away or the server is
			// stopping) before the device answered; the answer most
			// likely reaches no one, but it is one the SDKs retry.
			err = azerr.Wrap(azerr.HubServiceUnavailable, fmt.Errorf("rest: method invocation on %s ended with the request: %w", args[0], err))
		}
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, res)
}

// methodDuration is the longest an invocation may take: its connect
// timeout plus its response timeout, each clamped to what hub.Methods
// accepts (out-of-range values are refused there at once, so the clamp
// only keeps the arithmetic from overflowing).
func methodDuration(req *hub.MethodRequest) time.Duration {
	clamp := func(v *int, def, limit time.Duration) time.Duration {
		if v == nil {
			return def
		}
		s := time.Duration(max(*v, 0))
		if s > limit/time.Second {
			return limit
		}
		return s * time.Second
	}
	return clamp(req.ConnectTimeoutInSeconds, 0, hub.MaxMethodConnectTimeout) +
		clamp(req.ResponseTimeoutInSeconds, hub.DefaultMethodResponseTimeout, hub.MaxMethodResponseTimeout)
}

// extendWriteDeadline gives this response d from now to be written. The
// 443 listener's WriteTimeout (30 s) is counted from the end of the
// request headers and would cut off the answer of an invocation that
// waits for a device longer than that (up to 600 s). x.w is net/http's
// own ResponseWriter, so the controller reaches the connection; a writer
// that cannot (httptest's recorder) has no deadline to extend.
func (x *exchange) extendWriteDeadline(d time.Duration) {
	// Wall-clock time, not x.h.now: deadlines are the network's clock.
	err := http.NewResponseController(x.w).SetWriteDeadline(time.Now().Add(d))
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		x.h.log.Debug("rest: cannot extend the write deadline", "requestId", x.id, "error", err.Error())
	}
}
