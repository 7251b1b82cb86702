// Package refusal names why berth refused a device's or a service's
// credential. The domain's checks (package sas, policy, dps, hub) return
// errors that carry a Reason; the front ends still answer every refusal
// with the protocol's one code (CONNACK 5, 401), as Azure does, and write
// the reason to the operator's log, once per refusal, at INFO. A refusal
// never carries key material: not the key, not the signature, not the
// token.
package refusal

import (
	"errors"
	"fmt"
)

// Reason is why a credential was refused, as the log shows it.
type Reason string

// The reasons.
const (
	// NoCredential: no token and no client certificate.
	NoCredential Reason = "no credential"
	// Malformed: the token is not a SharedAccessSignature berth can read.
	Malformed Reason = "malformed token"
	// UnknownDevice: the hub has no such device.
	UnknownDevice Reason = "unknown device"
	// UnknownRegistration: DPS has no enrollment for the registration ID.
	UnknownRegistration Reason = "unknown registration"
	// UnknownPolicy: the token's skn names no shared access policy.
	UnknownPolicy Reason = "unknown policy"
	// UnknownScope: the ID scope is not this DPS's.
	UnknownScope Reason = "unknown ID scope"
	// WrongKey: the signature does not verify with any key that applies.
	WrongKey Reason = "wrong key"
	// WrongAudience: the token's sr names another resource.
	WrongAudience Reason = "wrong audience"
	// Expired: the token's se (plus the clock skew allowed) or the
	// certificate's validity is past, or the certificate is not yet valid.
	Expired Reason = "expired"
	// LifetimeTooLong: the token's se is further ahead than the operator
	// allows (berth serve --max-token-lifetime).
	LifetimeTooLong Reason = "token lifetime too long"
	// Disabled: the device is disabled.
	Disabled Reason = "disabled"
	// NotEnrolled: no enrollment lists or anchors the client certificate.
	NotEnrolled Reason = "certificate not enrolled"
	// WrongCertificate: the certificate is not the device's (thumbprint,
	// subject CN or chain).
	WrongCertificate Reason = "wrong certificate"
	// WrongCredentialType: the identity authenticates otherwise (a
	// certificate for a SAS device, a token for an X.509 enrollment).
	WrongCredentialType Reason = "wrong kind of credential"
	// MissingRight: the policy does not grant the operation's right.
	MissingRight Reason = "policy lacks the right"
)

// Error is a refused credential: the reason and, for the log, what
// exactly did not match.
type Error struct {
	Reason Reason
	// Err is the detail; it names identities, never secrets.
	Err error
}

// New returns a refusal for reason with detail (which may be nil).
func New(reason Reason, detail error) *Error { return &Error{Reason: reason, Err: detail} }

// Newf returns a refusal whose detail is formatted; %w wraps as in
// fmt.Errorf.
func Newf(reason Reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, args...)}
}

func (e *Error) Error() string {
	if e.Err == nil {
		return string(e.Reason)
	}
	return string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Of returns the refusal err carries (through any wrapping), or nil.
func Of(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// LogAttrs are the refusal's slog attributes: the reason and, when there
// is one, the detail. Every front end logs a refusal with these, once. The
// reason keeps its type Reason (it prints as its text): a log handler
// counts refusals by it (package metrics).
func (e *Error) LogAttrs() []any {
	if e.Err == nil {
		return []any{"reason", e.Reason}
	}
	return []any{"reason", e.Reason, "detail", e.Err.Error()}
}
