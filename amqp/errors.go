package amqp

import "fmt"

// Error conditions of AMQP 1.0 (and the com.microsoft ones front ends use) that the engine itself
// raises or that callers commonly need.
const (
	ErrCondInternalError         Symbol = "amqp:internal-error"
	ErrCondNotFound              Symbol = "amqp:not-found"
	ErrCondUnauthorizedAccess    Symbol = "amqp:unauthorized-access"
	ErrCondDecodeError           Symbol = "amqp:decode-error"
	ErrCondResourceLimitExceeded Symbol = "amqp:resource-limit-exceeded"
	ErrCondNotAllowed            Symbol = "amqp:not-allowed"
	ErrCondInvalidField          Symbol = "amqp:invalid-field"
	ErrCondNotImplemented        Symbol = "amqp:not-implemented"
	ErrCondResourceLocked        Symbol = "amqp:resource-locked"
	ErrCondPreconditionFailed    Symbol = "amqp:precondition-failed"
	ErrCondResourceDeleted       Symbol = "amqp:resource-deleted"
	ErrCondIllegalState          Symbol = "amqp:illegal-state"
	ErrCondFrameSizeTooSmall     Symbol = "amqp:frame-size-too-small"

	ErrCondConnectionForced Symbol = "amqp:connection:forced"
	ErrCondFramingError     Symbol = "amqp:connection:framing-error"
	ErrCondRedirect         Symbol = "amqp:connection:redirect"

	ErrCondWindowViolation  Symbol = "amqp:session:window-violation"
	ErrCondErrantLink       Symbol = "amqp:session:errant-link"
	ErrCondHandleInUse      Symbol = "amqp:session:handle-in-use"
	ErrCondUnattachedHandle Symbol = "amqp:session:unattached-handle"

	ErrCondDetachForced          Symbol = "amqp:link:detach-forced"
	ErrCondTransferLimitExceeded Symbol = "amqp:link:transfer-limit-exceeded"
	ErrCondMessageSizeExceeded   Symbol = "amqp:link:message-size-exceeded"
	ErrCondLinkRedirect          Symbol = "amqp:link:redirect"
	ErrCondStolen                Symbol = "amqp:link:stolen"
)

// Error is the AMQP error type (descriptor 0x1d): it closes connections, ends sessions, detaches
// links and rides in a rejected outcome.
type Error struct {
	Condition   Symbol
	Description string
	Info        Map // fields: symbol keys
}

// Errorf builds an *Error with a formatted description.
func Errorf(cond Symbol, format string, args ...any) *Error {
	return &Error{Condition: cond, Description: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e == nil {
		return "<nil>"
	}
	if e.Description == "" {
		return string(e.Condition)
	}
	return string(e.Condition) + ": " + e.Description
}

func (e *Error) marshal(enc *encoder) {
	enc.describedList(descError, e.Condition, nonEmptyString(e.Description), e.Info)
}

func nonEmptyString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func decodeError(v any) (*Error, error) {
	f, err := described(v, descError, "error")
	if err != nil || f == nil {
		return nil, err
	}
	e := &Error{
		Condition:   f.symbol(0),
		Description: f.str(1),
		Info:        f.fieldsMap(2),
	}
	if f.err == nil && e.Condition == "" {
		f.err = fmt.Errorf("%w: error without condition", ErrDecode)
	}
	return e, f.err
}
