package dps

import (
	"context"
	"crypto/x509"

	"github.com/berth-iot/berth/azerr"
)

// Authenticate checks a device's credential for a registration — its SAS
// token, or its TLS client chain when token is "" — exactly as Register
// and OperationStatus do, and registers nothing. AMQP needs it on its own:
// there a wrong key is refused in the SASL exchange, before any request
// (docs/spec/amqp-protocol.md#dps-over-amqp). A refusal is the same
// *azerr.Error (401000, 401002) those calls return.
func (s *Service) Authenticate(ctx context.Context, scope, regID, token string, certs []*x509.Certificate) error {
	if !ValidRegistrationID(regID) {
		return azerr.New(azerr.DPSInvalidRegistration)
	}
	_, err := s.authenticate(ctx, scope, regID, token, certs)
	return err
}
