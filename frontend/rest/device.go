package rest

import (
	"crypto/x509"
	"net/http"
	"net/url"
	"strings"

	"github.com/berth-iot/berth/dps"
)

// deviceRoutes is the DPS device API
// (docs/spec/dps-protocol.md#device-api-over-https). It has no service
// authentication: the Authorization header is the device's SAS token and goes
// to the domain as sent (the domain verifies it over the raw sr, whatever
// encoding the SDK chose). An X.509 device sends no Authorization header and
// authenticates by its TLS client certificate
// (docs/spec/dps-protocol.md#x509-attestation), which goes to the domain as
// ClientCerts.
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
		ClientCerts:    x.clientCerts(),
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
		ClientCerts:    x.clientCerts(),
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
		ClientCerts:    x.clientCerts(),
		Body:           body,
	})
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, st)
}

// clientCerts is the chain a device authenticates with by X.509: the TLS
// client certificates it presented, leaf first, as it sent them (the
// listener requests but never verifies them, pki.ServerTLSConfig; the
// domain does, against the enrollment or the device). It is nil when the
// request carries an Authorization header, which then decides alone: a
// SAS device on a TLS stack that also presents a certificate (a shared
// client certificate store, a gateway) keeps authenticating as before, as
// on Azure where the X.509 SDK paths never send the header. nil also
// without TLS or without a certificate, and the domain then answers its
// usual 401 for a missing credential.
func (x *exchange) clientCerts() []*x509.Certificate {
	if x.r.Header.Get(reqAuthorization) != "" || x.r.TLS == nil || len(x.r.TLS.PeerCertificates) == 0 {
		return nil
	}
	return x.r.TLS.PeerCertificates
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
