package rest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// HubConfig configures the IoT Hub REST API
// (docs/spec/iothub-protocol.md#telemetry-over-https, #service-api) served on
// the same handler as DPS.
type HubConfig struct {
	// Name is the hub host name as connection strings give it
	// (HostName=…), e.g. "127.0.0.1" or "hub.example.lan". Device tokens'
	// sr must start with it and service tokens' sr must name it.
	Name string
	// Settings are the hub's shared access policies (iothubowner, service,
	// device, registryRead, registryReadWrite). When nil, no service token
	// and no policy-signed device token is accepted.
	Settings *hub.Settings
	// Services are the hub domain the routes translate into: the registry,
	// telemetry (a message is acknowledged with 204 only once it is
	// durable; without a sink it is refused with 503), twins, methods and
	// the C2D queue. Required.
	*hub.Services
	// Hubs, when set, is every hub berth serves: each request acts on the
	// hub its Host header names, with that hub's name and policies (Name
	// and Settings are then not used), and the hub management routes
	// (hubs.go) change it. When nil the handler serves the one hub Name
	// and Settings describe, and has no hub management.
	Hubs *hub.Directory
}

// servedHub is the hub a request to host acts on: the hub of that name,
// else the directory's default hub. Every SDK sends its connection
// string's HostName in Host (and SNI), so the name picks the hub; a host
// that names none (the DPS global endpoint, an address that is not a hub
// name) reaches the default hub, as it reaches the one hub of a berth
// without a directory. Tokens still name their hub, so a request that
// lands on the default hub this way authenticates against it, never
// against the hub its token names.
func (h *handler) servedHub(host string) (*hub.Served, error) {
	d := h.hub.Hubs
	if d == nil {
		return h.single, nil
	}
	if s, ok := d.Lookup(hostOf(host)); ok {
		return s, nil
	}
	if s := d.Default(); s != nil {
		return s, nil
	}
	// Only another berth node sharing the store, with another default
	// hub, can have deleted this node's default hub.
	return nil, azerr.Newf(azerr.HubIotHubNotFound, "No hub is named %s, and this berth's default hub is no longer served.", hostOf(host))
}

// hubName is the name of the hub the request acts on.
func (x *exchange) hubName() string { return x.target.Info.Name }

// hubRoutes is the IoT Hub REST API. Its first segments ("devices",
// "twins", "statistics", "configurations", "messages") are literals no DPS route uses, so these paths
// never collide with the DPS service routes (/enrollments…,
// /registrations/…); the DPS device routes (/{idScope}/registrations/…)
// come after them in the table, so that a path both fit (an ID scope
// spelled "twins") is the hub's.
//
// Rights follow docs/spec/iothub-protocol.md#policies-and-rights: registry
// reads need RegistryRead, writes RegistryWrite (which implies RegistryRead,
// see hub.Policy.Has); ServiceConnect alone grants neither. Twins, direct
// methods, the C2D send extension and the queue purge need ServiceConnect; a
// twin GET is also granted to RegistryRead, berth's choice (IoT Hub's
// documentation says both "read device twins" under ServiceConnect and lets
// registry readers list twins through queries; it is not documented which IoT
// Hub checks, and refusing a read that IoT Hub allows would break the caller
// while allowing it reveals nothing a registry reader cannot already query).
//
// "deviceBound" is matched case-insensitively like every literal: Node
// and C write devicebound, C# and the docs deviceBound.
func (h *handler) hubRoutes() routes {
	const (
		read    = hub.RightRegistryRead
		write   = hub.RightRegistryWrite
		connect = hub.RightServiceConnect
	)
	return routes{
		newHubRoute(http.MethodPost, "devices/{deviceId}/messages/events", h.sendEvent),
		newHubRoute(http.MethodPost, "devices/{deviceId}/modules/{moduleId}/messages/events", h.sendEvent),

		newHubRoute(http.MethodGet, "devices", h.hubAuthorized(h.listDevices, read)),
		newHubRoute(http.MethodPost, "devices", h.hubAuthorized(h.bulkDevices, write)),
		newHubRoute(http.MethodPut, "devices/{id}", h.hubAuthorized(h.putDevice, write)),
		newHubRoute(http.MethodGet, "devices/{id}", h.hubAuthorized(h.getDevice, read)),
		newHubRoute(http.MethodDelete, "devices/{id}", h.hubAuthorized(h.deleteDevice, write)),
		newHubRoute(http.MethodGet, "devices/{id}/modules", h.hubAuthorized(h.listModules, read)),
		newHubRoute(http.MethodPut, "devices/{id}/modules/{moduleId}", h.hubAuthorized(h.putModule, write)),
		newHubRoute(http.MethodGet, "devices/{id}/modules/{moduleId}", h.hubAuthorized(h.getModule, read)),
		newHubRoute(http.MethodDelete, "devices/{id}/modules/{moduleId}", h.hubAuthorized(h.deleteModule, write)),
		newHubRoute(http.MethodGet, "statistics/devices", h.hubAuthorized(h.deviceStatistics, read)),
		newHubRoute(http.MethodPost, "devices/query", h.hubAuthorized(h.queryDevices, read, connect)),
		newHubRoute(http.MethodPost, "devices/{id}/applyConfigurationContent", h.hubAuthorized(h.applyConfigurationContent, write)),

		// Automatic device configurations (hubconfig.go).
		newHubRoute(http.MethodGet, "configurations", h.hubAuthorized(h.listConfigurations, read)),
		newHubRoute(http.MethodPost, "configurations/testQueries", h.hubAuthorized(h.testConfigurationQueries, read)),
		newHubRoute(http.MethodPut, "configurations/{id}", h.hubAuthorized(h.putConfiguration, write)),
		newHubRoute(http.MethodGet, "configurations/{id}", h.hubAuthorized(h.getConfiguration, read)),
		newHubRoute(http.MethodDelete, "configurations/{id}", h.hubAuthorized(h.deleteConfiguration, write)),

		// Jobs (docs/hub-jobs.md). The query route comes before
		// jobs/v2/{id}, which it would also fit.
		newHubRoute(http.MethodGet, "jobs/v2/query", h.hubAuthorized(h.queryJobs, read)),
		newHubRoute(http.MethodPut, "jobs/v2/{jobId}", h.hubAuthorized(h.putJob, write)),
		newHubRoute(http.MethodGet, "jobs/v2/{jobId}", h.hubAuthorized(h.getJob, read)),
		newHubRoute(http.MethodPost, "jobs/v2/{jobId}/cancel", h.hubAuthorized(h.cancelJob, write)),
		// Import and export jobs (docs/hub-jobs.md#import-and-export).
		newHubRoute(http.MethodPost, "jobs/create", h.hubAuthorized(h.createImportExport, write)),
		newHubRoute(http.MethodGet, "jobs", h.hubAuthorized(h.listImportExport, read)),
		newHubRoute(http.MethodGet, "jobs/{jobId}", h.hubAuthorized(h.getImportExport, read)),
		newHubRoute(http.MethodDelete, "jobs/{jobId}", h.hubAuthorized(h.cancelImportExport, write)),

		newHubRoute(http.MethodGet, "twins/{id}", h.hubAuthorized(h.getTwin, connect, read)),
		newHubRoute(http.MethodPatch, "twins/{id}", h.hubAuthorized(h.patchTwin, connect)),
		newHubRoute(http.MethodPut, "twins/{id}", h.hubAuthorized(h.replaceTwin, connect)),
		newHubRoute(http.MethodPost, "twins/{id}/methods", h.hubAuthorized(h.invokeMethod, connect)),
		newHubRoute(http.MethodGet, "twins/{id}/modules/{moduleId}", h.hubAuthorized(h.getTwin, connect, read)),
		newHubRoute(http.MethodPatch, "twins/{id}/modules/{moduleId}", h.hubAuthorized(h.patchTwin, connect)),
		newHubRoute(http.MethodPut, "twins/{id}/modules/{moduleId}", h.hubAuthorized(h.replaceTwin, connect)),
		newHubRoute(http.MethodPost, "twins/{id}/modules/{moduleId}/methods", h.hubAuthorized(h.invokeMethod, connect)),

		// Device side of the C2D queue
		// (docs/spec/iothub-protocol.md#cloud-to-device-over-https).
		newHubRoute(http.MethodGet, "devices/{deviceId}/messages/deviceBound", h.receiveCloudToDevice),
		newHubRoute(http.MethodDelete, "devices/{deviceId}/messages/deviceBound/{lockToken}", h.completeCloudToDevice),
		newHubRoute(http.MethodPost, "devices/{deviceId}/messages/deviceBound/{lockToken}/abandon", h.abandonCloudToDevice),
		// Service side: berth's send extension
		// (docs/spec/iothub-protocol.md#sending-cloud-to-device) and the
		// purge.
		newHubRoute(http.MethodPost, "devices/{id}/messages/deviceBound", h.hubAuthorized(h.sendCloudToDevice, connect)),
		newHubRoute(http.MethodDelete, "devices/{id}/commands", h.hubAuthorized(h.purgeCloudToDevice, connect)),
		// Delivery feedback of C2D messages (docs/hub-wire.md#c2d-feedback).
		newHubRoute(http.MethodGet, "messages/serviceBound/feedback", h.hubAuthorized(h.receiveFeedback, connect)),
		newHubRoute(http.MethodDelete, "messages/serviceBound/feedback/{lockToken}", h.hubAuthorized(h.completeFeedback, connect)),
		newHubRoute(http.MethodPost, "messages/serviceBound/feedback/{lockToken}/abandon", h.hubAuthorized(h.abandonFeedback, connect)),
	}
}

// hubAuthorized checks the hub service SAS token before next runs, and
// before any body is read: the domain's check (hub.Registry.AuthorizeService)
// for the hub the request acts on, whose policy must have one of rights.
func (h *handler) hubAuthorized(next func(*exchange, []string), rights ...string) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		if _, err := h.hub.Registry.AuthorizeService(x.target.Settings, x.hubName(), x.r.Header.Get(reqAuthorization), x.segs, rights...); err != nil {
			x.fail(err)
			return
		}
		next(x, args)
	}
}

// hubErrorBody is IoT Hub's legacy error body
// (docs/spec/iothub-protocol.md#http-error-body), the one format both SDKs
// parse: Node splits Message on ";" and takes the code name after
// "ErrorCode:", C# finds the ErrorCode field the same way and requires the
// iothub-errorcode header to agree with it.
type hubErrorBody struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// hubTimestampLayout is .NET's "MM/dd/yyyy HH:mm:ss", as IoT Hub prints
// the time in ExceptionMessage.
const hubTimestampLayout = "01/02/2006 15:04:05"

// failHub answers with e as an IoT Hub error: status code/1000, the
// entry's name in iothub-errorcode (written verbatim: the C SDK looks
// headers up case-sensitively) and in the body.
func (x *exchange) failHub(e *azerr.Error) {
	name := e.Code.Name()
	x.w.Header()[hdrHubErrorCode] = []string{name}
	body := hubErrorBody{
		// Node keeps only the text between the first and second ";", so
		// the message must not contain one.
		Message:          "ErrorCode:" + name + ";" + strings.ReplaceAll(e.Message, ";", ","),
		ExceptionMessage: "Tracking ID:" + x.id + "-TimeStamp:" + x.h.now().UTC().Format(hubTimestampLayout),
	}
	// Two string fields always encode.
	b, _ := encodeJSON(body)
	x.writeHeader(e.Status())
	_, _ = x.w.Write(b)
}

// readHubBody reads a request body of at most limit bytes. On failure it
// has answered the request (413 MessageTooLarge, or 400 when the client
// stopped sending) and returns ok false; the caller must then do nothing
// more, so an oversized request writes nothing.
func (x *exchange) readHubBody(limit int64) (body []byte, ok bool) {
	r := x.r
	// The answer names the limit of this route (64 KB for C2D, 256 KB for
	// telemetry, …), not a generic one.
	tooLarge := func(cause error) error {
		e := azerr.Newf(azerr.HubMessageTooLarge, "The request body is larger than the %d KB limit.", limit/1024)
		e.Err = cause
		return e
	}
	if r.ContentLength > limit {
		x.fail(tooLarge(fmt.Errorf("content-length %d over %d", r.ContentLength, limit)))
		return nil, false
	}
	// MaxBytesReader also covers chunked bodies and makes the server close
	// the connection rather than drain an oversized body.
	b, err := io.ReadAll(http.MaxBytesReader(x.w, r.Body, limit))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		x.fail(tooLarge(err))
		return nil, false
	case err != nil:
		x.fail(azerr.Wrap(azerr.HubArgumentInvalid, fmt.Errorf("read body: %w", err)))
		return nil, false
	}
	return b, true
}
