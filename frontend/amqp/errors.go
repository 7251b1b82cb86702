package amqp

import (
	"fmt"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/azerr"
)

// Error conditions the Azure SDKs map (docs/amqp-wire.md, "Errors").
const (
	condArgumentError   engine.Symbol = "com.microsoft:argument-error"
	condThrottled       engine.Symbol = "com.microsoft:device-container-throttled"
	condMessageLockLost engine.Symbol = "com.microsoft:message-lock-lost"
	condTimeout         engine.Symbol = "com.microsoft:timeout"
	condPrecondition    engine.Symbol = "com.microsoft:precondition-failed"
)

// domainError turns a hub error into the AMQP error the SDKs map back to
// the same Node error class: the condition by the hub code, the
// description in IoT Hub's "ErrorCode:Name;message" form.
func domainError(err error) *engine.Error {
	ae := azerr.As(err, azerr.HubServerError)
	cond := engine.ErrCondInternalError
	switch ae.Code {
	case azerr.HubDeviceNotFound, azerr.HubIotHubNotFound:
		cond = engine.ErrCondNotFound
	case azerr.HubQueueDepthExceeded:
		cond = engine.ErrCondResourceLimitExceeded
	case azerr.HubMessageTooLarge:
		cond = engine.ErrCondMessageSizeExceeded
	case azerr.HubThrottled:
		cond = condThrottled
	case azerr.HubUnauthorizedAccess, azerr.HubUnauthorized:
		cond = engine.ErrCondUnauthorizedAccess
	case azerr.HubMessageLockLost:
		cond = condMessageLockLost
	case azerr.HubPreconditionFailed:
		cond = condPrecondition
	case azerr.HubServiceUnavailable, azerr.HubGatewayTimeout:
		cond = condTimeout
	default:
		if ae.Status() == 400 {
			cond = condArgumentError
		}
	}
	name := ae.Code.Name()
	if name == "" {
		name = "ServerError"
	}
	msg := ae.Message
	if ae.Status() >= 500 {
		msg = "The hub could not complete the request."
	}
	return &engine.Error{Condition: cond, Description: fmt.Sprintf("ErrorCode:%s;%s", name, msg)}
}
