package rest

import (
	"context"
	"net/http"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
)

// CA certificate management, a berth extension of the DPS service API.
// Azure manages a DPS's CA certificates through Azure Resource Manager
// (`az iot dps certificate …`), which berth does not serve; these routes
// give the same operations, in ARM's shapes, to `berth` and any HTTP
// client:
//
//	GET    /certificates                                  list (200, {"value":[…]})
//	GET    /certificates/{name}                           read (200)
//	PUT    /certificates/{name}                           upload (201) or replace (200)
//	DELETE /certificates/{name}                           delete (204)
//	POST   /certificates/{name}/generateVerificationCode  start proof of possession (200)
//	POST   /certificates/{name}/verify                    finish it (200, isVerified)
//
// X.509 enrollment groups reference these certificates by name
// (x509.caReferences), and berth's hubs trust the verified ones for
// certificateAuthority devices; a certificate authenticates devices only
// once verified.
//
// They are authorized exactly as the policy routes (policy.go): a DPS
// service token with ServiceConfig, checked before the name and any body
// is looked at, and errors in the DPS format. If-Match is optional on
// every write and passed to the domain as received (quoted or not, or *).
//
// The first segment "certificates" is a literal no other route uses. The
// DPS device route POST /{idScope}/registrations/{registrationId} fits
// POST /certificates/registrations/verify (an ID scope spelled
// "certificates" and a certificate named "registrations"), but the device
// routes come after the service routes in the table, so the literal route
// wins; no ID scope Azure or berth issues is spelled that way.

// certificateBody is the body of PUT /certificates/{name} and of
// POST …/verify: a certificate as PEM or base64 of DER. Other fields (a
// read certificate written back) are ignored.
type certificateBody struct {
	Certificate string `json:"certificate"`
}

// certificateList is the answer to GET /certificates, in ARM's list shape.
type certificateList struct {
	Value []*dps.Certificate `json:"value"`
}

// certificateRoutes is the CA certificate management API.
func (h *handler) certificateRoutes() routes {
	const config = dps.RightServiceConfig
	s := h.svc
	return routes{
		newRoute(http.MethodGet, "certificates", h.authorized(config, h.listCertificates)),
		newRoute(http.MethodGet, "certificates/{name}", h.authorized(config, certificateOp(
			func(ctx context.Context, name, _ string) (*dps.Certificate, error) {
				return s.GetCertificate(ctx, name)
			}))),
		newRoute(http.MethodPut, "certificates/{name}", h.authorized(config, h.putCertificate)),
		newRoute(http.MethodDelete, "certificates/{name}", h.authorized(config, del(s.DeleteCertificate))),
		newRoute(http.MethodPost, "certificates/{name}/generateVerificationCode", h.authorized(config, certificateOp(s.GenerateVerificationCode))),
		newRoute(http.MethodPost, "certificates/{name}/verify", h.authorized(config, h.verifyCertificate)),
	}
}

// writeCertificate answers with a certificate, its etag also as a quoted
// ETag header (the body's etag is the domain's, unquoted, as the other
// documents of the service API carry theirs; If-Match takes either form).
func (x *exchange) writeCertificate(status int, c *dps.Certificate) {
	x.w.Header()[hdrETag] = []string{`"` + c.ETag + `"`}
	x.writeJSON(status, c)
}

// certificateOp serves the routes whose answer is one certificate and
// whose only input is the name and If-Match (read, and
// generateVerificationCode, whose body is ignored): 200.
func certificateOp(fn func(ctx context.Context, name, ifMatch string) (*dps.Certificate, error)) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		c, err := fn(x.r.Context(), args[0], x.r.Header.Get(reqIfMatch))
		if err != nil {
			x.fail(err)
			return
		}
		x.writeCertificate(http.StatusOK, c)
	}
}

// listCertificates serves GET /certificates.
func (h *handler) listCertificates(x *exchange, _ []string) {
	list, err := h.svc.ListCertificates(x.r.Context())
	if err != nil {
		x.fail(err)
		return
	}
	if list == nil {
		list = []*dps.Certificate{} // "[]", not "null"
	}
	x.writeJSON(http.StatusOK, certificateList{Value: list})
}

// readCertificateBody decodes a certificateBody and refuses one without a
// certificate with a message that names the field, rather than the
// parser's "not PEM and not base64 DER" of an empty string.
func (x *exchange) readCertificateBody() (string, bool) {
	var b certificateBody
	if !x.decodeBody(&b) {
		return "", false
	}
	if b.Certificate == "" {
		x.fail(azerr.Newf(azerr.DPSBadRequest, `The body needs "certificate": the certificate as PEM, base64 DER or base64 of PEM.`))
		return "", false
	}
	return b.Certificate, true
}

// putCertificate serves PUT /certificates/{name}: 201 with a new
// certificate, 200 with a replaced one (unverified again either way).
//
// dps.PutCertificate does not say which it did, so the certificate is
// looked up first. A concurrent upload of the same name between the two
// can only make the status say 201 for what became a replace (or 200 for
// a create); the stored certificate is the same either way.
func (h *handler) putCertificate(x *exchange, args []string) {
	pem, ok := x.readCertificateBody()
	if !ok {
		return
	}
	ctx, name := x.r.Context(), args[0]
	status := http.StatusOK
	if _, err := h.svc.GetCertificate(ctx, name); err != nil {
		if azerr.As(err, azerr.DPSInternal).Code != azerr.DPSNotFound {
			x.fail(err)
			return
		}
		status = http.StatusCreated
	}
	c, err := h.svc.PutCertificate(ctx, name, pem, x.r.Header.Get(reqIfMatch))
	if err != nil {
		x.fail(err)
		return
	}
	x.writeCertificate(status, c)
}

// verifyCertificate serves POST /certificates/{name}/verify: the body's
// certificate is the proof of possession (subject CN the verification
// code, signed with the CA's key). 200 with the verified certificate; a
// proof that does not verify is the domain's 400.
func (h *handler) verifyCertificate(x *exchange, args []string) {
	proof, ok := x.readCertificateBody()
	if !ok {
		return
	}
	c, err := h.svc.VerifyCertificate(x.r.Context(), args[0], x.r.Header.Get(reqIfMatch), proof)
	if err != nil {
		x.fail(err)
		return
	}
	x.writeCertificate(http.StatusOK, c)
}
