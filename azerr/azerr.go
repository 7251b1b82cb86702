// Package azerr is berth's one error table: each entry is an Azure
// six-digit errorCode whose first three digits are the HTTP status, with the
// name IoT Hub puts in its iothub-errorcode header and a default message.
// Front ends turn an *Error into an HTTP status and body, an MQTT response
// topic status, or a CONNACK code; the domain packages only return them.
package azerr

import (
	"errors"
	"fmt"
)

// Code is a six-digit Azure errorCode; Code/1000 is the HTTP status.
type Code int

// DPS codes (shared/spec/dps.md §1.7). Those marked berth are berth's choice
// where Azure's value is not documented; docs/errors.md lists them.
const (
	DPSBadRequest          Code = 400000 // berth: generic malformed request
	DPSInvalidBody         Code = 400101 // berth: body is not the JSON expected
	DPSInvalidRegistration Code = 400102 // berth: registration ID fails the ID rules
	DPSRegistrationIDMatch Code = 400103 // berth: body registrationId differs from the one authenticated
	DPSInvalidEnrollment   Code = 400104 // berth: enrollment document invalid
	DPSCustomAllocation    Code = 400207
	DPSNoHub               Code = 400208
	DPSHubUnauthorized     Code = 400209
	DPSUnauthorized        Code = 401000 // missing or unparseable credentials
	DPSInvalidCredentials  Code = 401002 // credentials that do not match an enrollment
	DPSEnrollmentNotFound  Code = 404201
	DPSRegistrationMissing Code = 404202
	DPSOperationNotFound   Code = 404203 // berth
	DPSNotFound            Code = 404000 // berth: unknown route
	DPSMethodNotAllowed    Code = 405000 // berth
	DPSConflict            Code = 409203
	DPSPreconditionFailed  Code = 412001 // berth
	DPSTooLarge            Code = 413000 // berth: over the 96 KB message limit
	DPSUnsupportedMedia    Code = 415000 // berth
	DPSThrottled           Code = 429001
	DPSInternal            Code = 500000 // berth
)

// IoT Hub codes (shared/spec/iothub.md §9.2).
const (
	HubInvalidProtocolVersion Code = 400001
	HubArgumentInvalid        Code = 400004
	HubArgumentNull           Code = 400005
	HubFormatError            Code = 400006
	HubDeserialization        Code = 400012
	HubIotHubNotFound         Code = 401001
	HubUnauthorizedAccess     Code = 401002
	HubUnauthorized           Code = 401003
	HubQueueDepthExceeded     Code = 403004
	HubDeviceNotFound         Code = 404001
	HubDeviceNotOnline        Code = 404103
	HubDeviceAlreadyExists    Code = 409001
	HubPreconditionFailed     Code = 412001
	HubMessageLockLost        Code = 412002
	HubMessageTooLarge        Code = 413001
	HubThrottled              Code = 429001
	HubServerError            Code = 500001
	HubServiceUnavailable     Code = 503001
	HubGatewayTimeout         Code = 504101
)

// IoT Hub codes of the bulk registry operation (POST /devices).
const (
	HubDeviceDefinedMultipleTimes   Code = 400011
	HubBulkRegistryOperationFailure Code = 400013
	HubTooManyDevices               Code = 413002
)

// hubNames are the names IoT Hub writes in iothub-errorcode and in the
// legacy "ErrorCode:Name;message" body that the Node service SDK parses.
var hubNames = map[Code]string{
	HubInvalidProtocolVersion: "InvalidProtocolVersion",
	HubArgumentInvalid:        "ArgumentInvalid",
	HubArgumentNull:           "ArgumentNull",
	HubFormatError:            "IotHubFormatError",
	HubDeserialization:        "DeserializationError",
	HubIotHubNotFound:         "IotHubNotFound",
	HubUnauthorizedAccess:     "IotHubUnauthorizedAccess",
	HubUnauthorized:           "IotHubUnauthorized",
	HubQueueDepthExceeded:     "DeviceMaximumQueueDepthExceeded",
	HubDeviceNotFound:         "DeviceNotFound",
	HubDeviceNotOnline:        "DeviceNotOnline",
	HubDeviceAlreadyExists:    "DeviceAlreadyExists",
	HubPreconditionFailed:     "PreconditionFailed",
	HubMessageLockLost:        "DeviceMessageLockLost",
	HubMessageTooLarge:        "MessageTooLarge",
	HubThrottled:              "ThrottlingException",
	HubServerError:            "ServerError",
	HubServiceUnavailable:     "ServiceUnavailable",
	HubGatewayTimeout:         "GatewayTimeout",

	HubDeviceDefinedMultipleTimes:   "DeviceDefinedMultipleTimes",
	HubBulkRegistryOperationFailure: "BulkRegistryOperationFailure",
	HubTooManyDevices:               "TooManyDevices",
}

var defaultMessages = map[Code]string{
	DPSBadRequest:          "Bad request.",
	DPSInvalidBody:         "The request body is not valid JSON for this operation.",
	DPSInvalidRegistration: "The registration ID is not valid.",
	DPSRegistrationIDMatch: "The registrationId in the body does not match the authenticated registration.",
	DPSInvalidEnrollment:   "The enrollment is not valid.",
	DPSNoHub:               "No IoT hub could be assigned.",
	DPSUnauthorized:        "Unauthorized",
	DPSInvalidCredentials:  "Unauthorized",
	DPSEnrollmentNotFound:  "Enrollment not found.",
	DPSRegistrationMissing: "Registration not found.",
	DPSOperationNotFound:   "Operation not found.",
	DPSNotFound:            "Not found.",
	DPSMethodNotAllowed:    "Method not allowed.",
	DPSConflict:            "Conflict.",
	DPSPreconditionFailed:  "Precondition failed.",
	DPSTooLarge:            "The message is larger than the 96 KB limit.",
	DPSUnsupportedMedia:    "Unsupported media type.",
	DPSThrottled:           "Too many requests.",
	DPSInternal:            "Internal server error.",
}

// Error is an Azure-shaped error.
type Error struct {
	Code    Code
	Message string
	// Info is the optional "info" map of the DPS error body.
	Info map[string]string
	// Err is the underlying cause, for logs only; never sent to clients.
	Err error
}

// New returns an error with code's default message.
func New(code Code) *Error { return &Error{Code: code, Message: DefaultMessage(code)} }

// NewHub returns a hub error with IoT Hub's name as its message. DPS and
// IoT Hub reuse some numbers (401002, 412001, 429001) and a hub code has
// a name and message of its own: hub code paths use NewHub, not New.
func NewHub(code Code) *Error { return &Error{Code: code, Message: hubMessage(code)} }

var hubMessages = map[Code]string{
	HubArgumentInvalid:     "The request is not valid.",
	HubUnauthorizedAccess:  "Unauthorized.",
	HubDeviceNotFound:      "The device was not found.",
	HubDeviceAlreadyExists: "A device with this ID already exists.",
	HubPreconditionFailed:  "The etag does not match the current version (precondition failed).",
	HubMessageTooLarge:     "The message is larger than IoT Hub's 256 KB limit.",
	HubServerError:         "Internal server error.",
}

func hubMessage(c Code) string {
	if m, ok := hubMessages[c]; ok {
		return m
	}
	if n, ok := hubNames[c]; ok {
		return n
	}
	return "Error."
}

// Newf returns an error with a formatted message.
func Newf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns code's error carrying cause for the logs. For hub codes
// use WrapHub.
func Wrap(code Code, cause error) *Error {
	return &Error{Code: code, Message: DefaultMessage(code), Err: cause}
}

// WrapHub is Wrap for hub codes.
func WrapHub(code Code, cause error) *Error {
	return &Error{Code: code, Message: hubMessage(code), Err: cause}
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%d %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Status is the HTTP status: the code's first three digits.
func (e *Error) Status() int { return int(e.Code) / 1000 }

// Status is the HTTP status of code.
func (c Code) Status() int { return int(c) / 1000 }

// Name is IoT Hub's error name for a hub code, or "" when it has none.
// Only meaningful for errors raised by the hub: DPS reuses some numbers.
func (c Code) Name() string { return hubNames[c] }

// DefaultMessage is the message used when none is given.
func DefaultMessage(c Code) string {
	if m, ok := defaultMessages[c]; ok {
		return m
	}
	if n, ok := hubNames[c]; ok {
		return n
	}
	return "Error."
}

// As returns err as an *Error; any other error becomes internal, with err
// kept as the cause so it is logged but never shown.
func As(err error, internal Code) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Wrap(internal, err)
}
