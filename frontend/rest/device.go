package rest

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/berth-iot/berth/dps"
)

// deviceRoutes is the DPS device API (shared/spec/dps.md §2). It has no
// service authentication: the Authorization header is the device's SAS
// token and goes to the domain as sent (the domain verifies it over the raw
// sr, whatever encoding the SDK chose).
func (h *handler) deviceRoutes() routes {
	return routes{
		newRoute(http.MethodPut, "{idScope}/registrations/{registrationId}/register", h.register),
		newRoute(http.MethodGet, "{idScope}/registrations/{registrationId}/operations/{operationId}", h.operationStatus),
		newRoute(http.MethodPost, "{idScope}/registrations/{registrationId}", h.registrationStatus),
	}
}

// register is PUT /{idScope}/registrations/{registrationId}/register.
// An accepted registration is always answered 202 (the C# HTTP transport
// throws on anything else), with retry-after and the Location of the
// register resource as Azure sends it.
func (h *handler) register(x *exchange, args []string) {
	scope, regID := args[0], args[1]
	body, ok := x.readBody()
	if !ok {
		return
	}
	op, err := h.svc.Register(x.r.Context(), dps.RegisterRequest{
		IDScope:        scope,
		RegistrationID: regID,
		Token:          x.r.Header.Get(reqAuthorization),
		Body:           body,
		Force:          forceRegistration(x.r.URL),
	})
	if err != nil {
		x.fail(err)
		return
	}
	x.w.Header()[hdrLocation] = []string{x.registerLocation(scope, regID)}
	x.setRetryAfter()
	x.writeJSON(http.StatusAccepted, op)
}

// operationStatus is GET /{idScope}/registrations/{registrationId}/operations/{operationId}:
// 202 with retry-after while the operation is not finished, 200 once it is.
// A request body is ignored, not refused: the Node SDK sends "{}" on this
// GET.
func (h *handler) operationStatus(x *exchange, args []string) {
	op, err := h.svc.OperationStatus(x.r.Context(), dps.OperationRequest{
		IDScope:        args[0],
		RegistrationID: args[1],
		OperationID:    args[2],
		Token:          x.r.Header.Get(reqAuthorization),
	})
	if err != nil {
		x.fail(err)
		return
	}
	if !op.Terminal() {
		x.setRetryAfter()
		x.writeJSON(http.StatusAccepted, op)
		return
	}
	x.writeJSON(http.StatusOK, op)
}

// registrationStatus is POST /{idScope}/registrations/{registrationId}, the
// registration status lookup: 200 with the DeviceRegistrationResult.
func (h *handler) registrationStatus(x *exchange, args []string) {
	body, ok := x.readBody()
	if !ok {
		return
	}
	st, err := h.svc.RegistrationStatus(x.r.Context(), dps.StatusRequest{
		IDScope:        args[0],
		RegistrationID: args[1],
		Token:          x.r.Header.Get(reqAuthorization),
		Body:           body,
	})
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, st)
}

// registerLocation is the register URL without its query, as Azure's
// Location header gives it. The scheme is https: berth serves this API only
// behind TLS.
func (x *exchange) registerLocation(scope, regID string) string {
	host := x.r.Host
	if host == "" && len(x.h.hosts) > 0 {
		host = x.h.hosts[0]
	}
	return "https://" + host + "/" + url.PathEscape(scope) + "/registrations/" + url.PathEscape(regID) + "/register"
}

// forceRegistration reads the forceRegistration query flag, which the Node
// SDK appends as "forceRegistration=true". The name is matched
// case-insensitively like the path.
func forceRegistration(u *url.URL) bool {
	for k, vs := range u.Query() {
		if strings.EqualFold(k, "forceRegistration") {
			for _, v := range vs {
				if strings.EqualFold(v, "true") {
					return true
				}
			}
		}
	}
	return false
}
