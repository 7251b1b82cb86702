package serviceclient

import (
	"context"
	"errors"
	"net/http"

	"github.com/berth-iot/berth/dps"
)

// The CA certificate calls manage the certificates X.509 enrollment groups
// reference (x509.caReferences) and their proof of possession: Azure's
// `az iot dps certificate …`, which goes through Azure Resource Manager;
// berth serves them on its service API under /certificates. They need a
// connection string whose policy has ServiceConfig.

// certificatePath is the path of the certificate collection, or of one
// certificate and more segments.
func certificatePath(more ...string) []string { return append([]string{"certificates"}, more...) }

// certificateBody carries a certificate (PEM or base64 DER) to PUT and to
// verify.
type certificateBody struct {
	Certificate string `json:"certificate"`
}

// certificateList is the answer to a list, in ARM's {"value": […]} shape.
type certificateList struct {
	Value []*dps.Certificate `json:"value"`
}

// ListCertificates returns every uploaded CA certificate.
func (c *Client) ListCertificates(ctx context.Context) ([]*dps.Certificate, error) {
	list, err := call[certificateList](ctx, c, request{method: http.MethodGet, path: certificatePath()}, "certificates")
	if err != nil {
		return nil, err
	}
	return list.Value, nil
}

// GetCertificate reads one uploaded certificate (its properties; the
// service never returns the certificate itself).
func (c *Client) GetCertificate(ctx context.Context, name string) (*dps.Certificate, error) {
	return call[dps.Certificate](ctx, c, request{method: http.MethodGet, path: certificatePath(name)}, "certificate")
}

// PutCertificate uploads the CA certificate pem (PEM or base64 DER) as
// name, or replaces it, conditionally when ifMatch is not empty. A new or
// replaced certificate is unverified. created reports a new one (201).
func (c *Client) PutCertificate(ctx context.Context, name, pem, ifMatch string) (out *dps.Certificate, created bool, err error) {
	if name == "" {
		return nil, false, errors.New("serviceclient: PutCertificate: the certificate needs a name")
	}
	return put[dps.Certificate](ctx, c, request{method: http.MethodPut, path: certificatePath(name),
		body: certificateBody{Certificate: pem}, ifMatch: ifMatch}, "certificate")
}

// DeleteCertificate deletes an uploaded certificate, conditionally when
// ifMatch is not empty. Groups that reference it stop authenticating
// devices.
func (c *Client) DeleteCertificate(ctx context.Context, name, ifMatch string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: certificatePath(name), ifMatch: ifMatch})
	return err
}

// GenerateVerificationCode starts proof of possession: the answer carries
// a new code in Properties.VerificationCode, to be the subject CN of a
// certificate signed with the CA's private key (see VerifyCertificate).
func (c *Client) GenerateVerificationCode(ctx context.Context, name string) (*dps.Certificate, error) {
	return call[dps.Certificate](ctx, c, request{method: http.MethodPost, path: certificatePath(name, "generateVerificationCode")}, "certificate")
}

// VerifyCertificate completes proof of possession with proofPEM, a
// certificate whose subject CN is the current verification code, signed
// by the uploaded certificate's key. The answer is the verified
// certificate.
func (c *Client) VerifyCertificate(ctx context.Context, name, proofPEM string) (*dps.Certificate, error) {
	return call[dps.Certificate](ctx, c, request{method: http.MethodPost, path: certificatePath(name, "verify"),
		body: certificateBody{Certificate: proofPEM}}, "certificate")
}
