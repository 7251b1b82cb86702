// Package azerr is berth's one Azure error catalogue. Every error berth
// answers is an entry of one table: its service (DPS or IoT Hub), its
// six-digit number (errorCode), its name, its HTTP status and its default
// message. The domain packages return an *Error naming an entry; the front
// ends render it, each in its own wire form, from the entry alone:
//
//   - HTTPS, DPS: the status, x-ms-error-code and the
//     {"errorCode","trackingId","message","timestampUtc"} body;
//   - HTTPS, IoT Hub: the status, the name in iothub-errorcode and the
//     legacy {"Message":"ErrorCode:{name};{message}",…} body;
//   - MQTT: the status in the response topic ($dps/registrations/res/…,
//     $iothub/twin/res/…) with the DPS-shaped body, or, on CONNECT, the
//     CONNACK code the status class maps to;
//   - AMQP (not built yet): the error condition of the entry. The AMQP
//     front end adds it as one more column of the table (a field of entry
//     and an argument of dpsCode and hubCode), so that every wire keeps
//     rendering from the one row; docs/errors.md lists the conditions the
//     SDKs map.
//
// docs/errors.md documents every entry; a test holds the two together.
package azerr

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Service is the Azure service an error belongs to. DPS and IoT Hub reuse
// numbers with different meanings (401002, 412001, 429001), so a number
// alone does not name an error: the service and the number do.
type Service uint8

// The services of the table.
const (
	DPS Service = iota + 1
	Hub
)

func (s Service) String() string {
	switch s {
	case DPS:
		return "DPS"
	case Hub:
		return "IoT Hub"
	case 0:
		return "no service"
	}
	return "unknown service " + strconv.Itoa(int(s))
}

// Code is one entry of the table. Codes are compared with ==; the zero
// Code is no entry, and the front ends answer it as their internal error.
// A Code cannot be made from a number: Lookup finds the entry a number
// received from outside (another berth node) names.
type Code struct{ e *entry }

// entry is one row of the table. It is never changed after init.
type entry struct {
	service Service
	number  int
	name    string
	message string
}

// table holds every entry in declaration order. It is filled while the
// package initialises (by dpsCode and hubCode, from the variables below)
// and only read afterwards.
var table []Code

// def adds an entry to the table. A number outside 400000–599999 would
// break errorCode/1000 == status on every wire, and a second entry of the
// same service and number would make Lookup ambiguous: both are bugs found
// when the package initialises, in every test.
func def(s Service, number int, name, message string) Code {
	if number < 400000 || number > 599999 {
		panic(fmt.Sprintf("azerr: %s %d is not the code of an HTTP error status", s, number))
	}
	if _, dup := Lookup(s, number); dup {
		panic(fmt.Sprintf("azerr: %s %d defined twice", s, number))
	}
	c := Code{&entry{service: s, number: number, name: name, message: message}}
	table = append(table, c)
	return c
}

func dpsCode(number int, name, message string) Code { return def(DPS, number, name, message) }
func hubCode(number int, name, message string) Code { return def(Hub, number, name, message) }

// DPS errors. DPS bodies carry only the number; the names are berth's, for
// logs and docs. Where Azure documents no number for a case, the number is
// berth's choice; docs/errors.md says which, and when each is answered.
var (
	DPSBadRequest          = dpsCode(400000, "BadRequest", "Bad request.")
	DPSInvalidBody         = dpsCode(400101, "InvalidRequestBody", "The request body is not valid JSON for this operation.")
	DPSInvalidRegistration = dpsCode(400102, "InvalidRegistrationId", "The registration ID is not valid.")
	DPSRegistrationIDMatch = dpsCode(400103, "RegistrationIdMismatch", "The registrationId in the body does not match the authenticated registration.")
	DPSInvalidEnrollment   = dpsCode(400104, "InvalidEnrollment", "The enrollment is not valid.")
	DPSCustomAllocation    = dpsCode(400207, "CustomAllocationFailed", "Custom allocation failed.")
	DPSNoHub               = dpsCode(400208, "NoHubAssigned", "No IoT hub could be assigned.")
	DPSHubUnauthorized     = dpsCode(400209, "HubUnauthorized", "The IoT hub refused the device registration.")
	DPSUnauthorized        = dpsCode(401000, "Unauthorized", "Unauthorized")
	DPSInvalidCredentials  = dpsCode(401002, "InvalidCredentials", "Unauthorized")
	DPSNotFound            = dpsCode(404000, "NotFound", "Not found.")
	DPSEnrollmentNotFound  = dpsCode(404201, "EnrollmentNotFound", "Enrollment not found.")
	DPSRegistrationMissing = dpsCode(404202, "RegistrationNotFound", "Registration not found.")
	DPSOperationNotFound   = dpsCode(404203, "OperationNotFound", "Operation not found.")
	DPSMethodNotAllowed    = dpsCode(405000, "MethodNotAllowed", "Method not allowed.")
	DPSConflict            = dpsCode(409203, "Conflict", "Conflict.")
	DPSPreconditionFailed  = dpsCode(412001, "PreconditionFailed", "Precondition failed.")
	DPSTooLarge            = dpsCode(413000, "MessageTooLarge", "The message is larger than the 96 KB limit.")
	DPSUnsupportedMedia    = dpsCode(415000, "UnsupportedMediaType", "Unsupported media type.")
	DPSThrottled           = dpsCode(429001, "Throttled", "Too many requests.")
	DPSInternal            = dpsCode(500000, "InternalServerError", "Internal server error.")
	DPSServiceUnavailable  = dpsCode(503000, "ServiceUnavailable", "Service unavailable.")
)

// IoT Hub errors, with the names IoT Hub writes in iothub-errorcode and in
// the legacy "ErrorCode:{name};{message}" body. All are IoT Hub's own but
// 405000, for which IoT Hub has none (docs/errors.md).
var (
	HubInvalidProtocolVersion       = hubCode(400001, "InvalidProtocolVersion", "The api-version is not supported.")
	HubArgumentInvalid              = hubCode(400004, "ArgumentInvalid", "The request is not valid.")
	HubArgumentNull                 = hubCode(400005, "ArgumentNull", "A required value is missing.")
	HubFormatError                  = hubCode(400006, "IotHubFormatError", "The request body is not valid JSON for this operation.")
	HubDeviceDefinedMultipleTimes   = hubCode(400011, "DeviceDefinedMultipleTimes", "A device is named more than once in the bulk registry operation.")
	HubDeserialization              = hubCode(400012, "DeserializationError", "The request body could not be read.")
	HubBulkRegistryOperationFailure = hubCode(400013, "BulkRegistryOperationFailure", "An operation of the bulk registry operation failed.")
	HubIotHubNotFound               = hubCode(401001, "IotHubNotFound", "The IoT hub was not found.")
	HubUnauthorizedAccess           = hubCode(401002, "IotHubUnauthorizedAccess", "Unauthorized")
	HubUnauthorized                 = hubCode(401003, "IotHubUnauthorized", "Unauthorized")
	HubQueueDepthExceeded           = hubCode(403004, "DeviceMaximumQueueDepthExceeded", "The device's cloud-to-device queue is full.")
	HubDeviceNotFound               = hubCode(404001, "DeviceNotFound", "Device not found.")
	HubDeviceNotOnline              = hubCode(404103, "DeviceNotOnline", "The device is not online.")
	HubMethodNotAllowed             = hubCode(405000, "MethodNotAllowed", "Method not allowed.")
	HubDeviceAlreadyExists          = hubCode(409001, "DeviceAlreadyExists", "A device with this ID already exists.")
	HubPreconditionFailed           = hubCode(412001, "PreconditionFailed", "Precondition failed.")
	HubMessageLockLost              = hubCode(412002, "DeviceMessageLockLost", "The message lock was lost.")
	HubMessageTooLarge              = hubCode(413001, "MessageTooLarge", "The message is larger than the 256 KB limit.")
	HubTooManyDevices               = hubCode(413002, "TooManyDevices", "The bulk registry operation names too many devices.")
	HubThrottled                    = hubCode(429001, "ThrottlingException", "Too many requests.")
	HubServerError                  = hubCode(500001, "ServerError", "Internal server error.")
	HubServiceUnavailable           = hubCode(503001, "ServiceUnavailable", "Service unavailable.")
	HubGatewayTimeout               = hubCode(504101, "GatewayTimeout", "The device did not answer in time.")
)

// IoT Hub errors of module identities.
var (
	HubModuleNotFound      = hubCode(404010, "ModuleNotFound", "Module not found.")
	HubModuleAlreadyExists = hubCode(409301, "ModuleAlreadyExistsOnDevice", "A module with this ID already exists on the device.")
)

// IoT Hub errors of jobs (/jobs/v2).
var (
	HubJobNotFound = hubCode(404002, "JobNotFound", "Job not found.")
)

// IoT Hub errors of automatic device configurations (docs/configurations.md).
var (
	HubConfigurationNotFound      = hubCode(404011, "ConfigurationNotFound", "Configuration not found.")
	HubConfigurationAlreadyExists = hubCode(409302, "ConfigurationAlreadyExists", "A configuration with this ID already exists.")
	// HubConfigurationCountLimitExceeded: IoT Hub's number and name for a
	// hub over its configuration limit (100 on paid hubs).
	HubConfigurationCountLimitExceeded = hubCode(413101, "ConfigurationCountLimitExceeded", "The hub's configuration count limit has been exceeded.")
)

// Codes returns every entry of the table, in declaration order.
func Codes() []Code { return append([]Code(nil), table...) }

// Lookup returns the entry of service s numbered number, if there is one.
func Lookup(s Service, number int) (Code, bool) {
	for _, c := range table {
		if c.e.service == s && c.e.number == number {
			return c, true
		}
	}
	return Code{}, false
}

// Service is the service the entry belongs to; 0 for the zero Code.
func (c Code) Service() Service {
	if c.e == nil {
		return 0
	}
	return c.e.service
}

// Number is the six-digit errorCode; 0 for the zero Code.
func (c Code) Number() int {
	if c.e == nil {
		return 0
	}
	return c.e.number
}

// Status is the HTTP status: the number's first three digits, the
// invariant the Azure Embedded C SDK relies on (it derives the status from
// the errorCode). 500 for the zero Code.
func (c Code) Status() int {
	if c.e == nil {
		return 500
	}
	return c.e.number / 1000
}

// Name is the entry's name: for IoT Hub the one it sends in
// iothub-errorcode, for DPS berth's (DPS sends only the number).
func (c Code) Name() string {
	if c.e == nil {
		return ""
	}
	return c.e.name
}

// Message is the entry's default message.
func (c Code) Message() string {
	if c.e == nil {
		return "Error."
	}
	return c.e.message
}

// String is "404001 DeviceNotFound", for logs.
func (c Code) String() string {
	if c.e == nil {
		return "no error code"
	}
	return strconv.Itoa(c.e.number) + " " + c.e.name
}

// Format prints the number for %d (as logs and messages printed the
// numeric codes before the table) and String otherwise.
func (c Code) Format(f fmt.State, verb rune) {
	if verb == 'd' {
		fmt.Fprintf(f, fmt.FormatString(f, verb), c.Number())
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.String())
}

// Error is an Azure-shaped error: an entry of the table and the message
// this occurrence carries.
type Error struct {
	Code    Code
	Message string
	// Info is the optional "info" map of the DPS error body.
	Info map[string]string
	// Err is the underlying cause, for logs only; never sent to clients.
	Err error
	// RetryAfter is, on a 429 or 503, how long the client should wait
	// before it tries again (a throttle's wait); 0 leaves the hint to the
	// front end's default. The wires that carry a hint (DPS retry-after
	// over HTTPS and MQTT, AMQP's retry-after info) send it in whole
	// seconds, rounded up.
	RetryAfter time.Duration
}

// New returns an error with code's default message.
func New(code Code) *Error { return &Error{Code: code, Message: code.Message()} }

// Newf returns an error with a formatted message.
func Newf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Throttled returns code's error (a 429 entry) with message and the wait
// the client is asked to honour before it retries.
func Throttled(code Code, retryAfter time.Duration, message string) *Error {
	return &Error{Code: code, Message: message, RetryAfter: retryAfter}
}

// Wrap returns code's error with its default message, carrying cause for
// the logs.
func Wrap(code Code, cause error) *Error {
	return &Error{Code: code, Message: code.Message(), Err: cause}
}

// NewHub is New.
//
// Deprecated: every code now carries its own service and message; use New.
// Kept only so that branches written before the one table still compile.
func NewHub(code Code) *Error { return New(code) }

// WrapHub is Wrap.
//
// Deprecated: use Wrap; kept like NewHub.
func WrapHub(code Code, cause error) *Error { return Wrap(code, cause) }

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %v", e.Code.Number(), e.Message, e.Err)
	}
	return fmt.Sprintf("%d %s", e.Code.Number(), e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Status is the HTTP status of e's code.
func (e *Error) Status() int { return e.Code.Status() }

// As returns err as an *Error; any other error becomes internal, with err
// kept as the cause so it is logged but never shown.
//
// An error that says a backing service cannot be reached now (one with an
// Unavailable method reporting true, such as store.ErrUnavailable)
// becomes internal's service's 503 instead: the answer every SDK retries
// (DPS with retry-after), rather than a 500 it gives up on.
func As(err error, internal Code) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var u interface{ Unavailable() bool }
	if errors.As(err, &u) && u.Unavailable() {
		switch internal.Service() {
		case DPS:
			return Wrap(DPSServiceUnavailable, err)
		case Hub:
			return Wrap(HubServiceUnavailable, err)
		}
	}
	return Wrap(internal, err)
}

// For returns err as an *Error of internal's service, to be rendered in
// that service's wire form: As, and more. An *Error of the service is
// returned as it is. Anything else becomes internal: a plain error (a
// store or network failure), and an *Error of the other service or of no
// entry, which only a bug in berth can route here (one service's numbers
// mean something else, or nothing, to the other's clients). The original
// is kept as the cause, for the logs.
func For(err error, internal Code) *Error {
	e := As(err, internal)
	if s := internal.Service(); e.Code.Service() != s {
		return Wrap(internal, fmt.Errorf("%s error %s answered as %s: %w", e.Code.Service(), e.Code, s, e))
	}
	return e
}
