package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/throttle"
)

// Direct-method limits
// (docs/spec/iothub-protocol.md#direct-methods-over-mqtt,
// #direct-method-invocation).
const (
	DefaultMethodResponseTimeout = 30 * time.Second
	MinMethodResponseTimeout     = 5 * time.Second
	MaxMethodResponseTimeout     = 300 * time.Second
	MaxMethodConnectTimeout      = 300 * time.Second
	MaxMethodPayload             = 128 * 1024
)

// MethodRequest is IoT Hub's CloudToDeviceMethod (POST /twins/{id}/methods).
type MethodRequest struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds *int            `json:"responseTimeoutInSeconds,omitempty"`
	ConnectTimeoutInSeconds  *int            `json:"connectTimeoutInSeconds,omitempty"`
}

// MethodResult is IoT Hub's CloudToDeviceMethodResult: the status and
// payload the device answered, whatever they are.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// Methods invokes direct methods on connected devices.
type Methods struct {
	reg   *Registry
	links *Links
	obs   Observer
}

// NewMethods returns the direct-method service.
func NewMethods(reg *Registry, links *Links) *Methods {
	return &Methods{reg: reg, links: links}
}

// validMethodName is IoT Hub's rule: printable US-ASCII except $ ( ) < > @ ,
// ; : \ " / [ ] ? = { } and space
// (docs/spec/iothub-protocol.md#direct-methods-over-mqtt). '*' stays allowed:
// Plug and Play commands are "{component}*{command}".
func validMethodName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || strings.IndexByte(`$()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// Invoke sends a method request to a device, or a module when deviceID is
// a TwinID "device/module", and returns its answer. The
// device must be connected and subscribed to methods within the connect
// timeout (404103 DeviceNotOnline otherwise) and answer within the response
// timeout (504101 GatewayTimeout otherwise). Methods are never queued.
func (m *Methods) Invoke(ctx context.Context, hubName, deviceID string, req *MethodRequest) (_ *MethodResult, err error) {
	defer observeOp(m.obs, "method.invoke", time.Now(), &err)
	if !validMethodName(req.MethodName) {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Method name '%s' is not valid.", clipKey(req.MethodName))
	}
	// Metered in 4 KB of request payload, as IoT Hub meters methods.
	if err := m.reg.throttled(hubName, throttle.HubMethod, throttle.MethodCost(len(req.Payload))); err != nil {
		return nil, err
	}
	respTimeout := DefaultMethodResponseTimeout
	if req.ResponseTimeoutInSeconds != nil {
		respTimeout = time.Duration(*req.ResponseTimeoutInSeconds) * time.Second
		if respTimeout < MinMethodResponseTimeout || respTimeout > MaxMethodResponseTimeout {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "responseTimeoutInSeconds must be between %d and %d.", int(MinMethodResponseTimeout/time.Second), int(MaxMethodResponseTimeout/time.Second))
		}
	}
	var connTimeout time.Duration
	if req.ConnectTimeoutInSeconds != nil {
		connTimeout = time.Duration(*req.ConnectTimeoutInSeconds) * time.Second
		if connTimeout < 0 || connTimeout > MaxMethodConnectTimeout {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "connectTimeoutInSeconds must be between 0 and %d.", int(MaxMethodConnectTimeout/time.Second))
		}
	}
	payload := bytes.TrimSpace(req.Payload)
	if len(payload) == 0 {
		payload = []byte("null")
	}
	if !json.Valid(payload) {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The method payload is not valid JSON.")
	}
	if len(payload) > MaxMethodPayload {
		return nil, azerr.Newf(azerr.HubMessageTooLarge, "The method payload of %d bytes is over the %d bytes limit.", len(payload), MaxMethodPayload)
	}
	d, err := m.reg.identity(ctx, hubName, deviceID)
	if err != nil {
		return nil, err
	}
	if d.Status == StatusDisabled {
		return nil, azerr.Newf(azerr.HubDeviceNotOnline, "Device %s is disabled.", deviceID)
	}

	// A link subscribed here right now wins; otherwise, with a forwarder,
	// whichever node holds or gains the device answers.
	link := m.links.MethodLink(ctx, hubName, deviceID, 0)
	if link == nil {
		if f := m.links.forwarder(); f != nil {
			return m.invokeAnywhere(ctx, f, hubName, deviceID, req.MethodName, payload, connTimeout, respTimeout)
		}
		link = m.links.MethodLink(ctx, hubName, deviceID, connTimeout)
	}
	if link == nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, notOnline(deviceID, connTimeout)
	}
	return m.invokeLocal(ctx, link, hubName, deviceID, req.MethodName, payload, respTimeout)
}

// notOnline is the 404103 answer when no link was found in time.
func notOnline(deviceID string, connTimeout time.Duration) error {
	if connTimeout > 0 {
		return azerr.Newf(azerr.HubDeviceNotOnline, "Timed out waiting for device %s to connect.", deviceID)
	}
	return azerr.Newf(azerr.HubDeviceNotOnline, "Device %s is not online: it is not connected, or not subscribed to direct methods.", deviceID)
}

// invokeLocal calls the method on a link of this node.
func (m *Methods) invokeLocal(ctx context.Context, link DeviceLink, hubName, deviceID, name string, payload []byte, respTimeout time.Duration) (*MethodResult, error) {
	ictx, cancel := context.WithTimeout(ctx, respTimeout)
	defer cancel()
	status, resp, err := link.InvokeMethod(ictx, name, payload)
	if err == nil {
		err = m.reg.fault(ictx, FaultMethod, hubName, deviceID)
	}
	return methodResult(ctx, deviceID, 0, status, resp, err)
}

// remoteAnswer is what Forwarder.InvokeMethod returned.
type remoteAnswer struct {
	status int
	resp   []byte
	err    error
}

// invokeAnywhere calls the method through the forwarder. With a connect
// timeout the device may just as well connect to this node meanwhile (the
// forwarder ignores this node's own requests), so a local wait races the
// remote call: a link gained here cancels the remote call, which by then
// has reached no device (a device holds one connection at a time).
func (m *Methods) invokeAnywhere(ctx context.Context, f Forwarder, hubName, deviceID, name string, payload []byte, connTimeout, respTimeout time.Duration) (*MethodResult, error) {
	rctx, cancelRemote := context.WithCancel(ctx)
	defer cancelRemote()
	remote := make(chan remoteAnswer, 1)
	go func() {
		status, resp, err := f.InvokeMethod(rctx, hubName, deviceID, name, payload, connTimeout, respTimeout)
		remote <- remoteAnswer{status, resp, err}
	}()
	local := make(chan DeviceLink, 1)
	if connTimeout > 0 {
		wctx, cancelWait := context.WithCancel(ctx)
		defer cancelWait()
		go func() { local <- m.links.MethodLink(wctx, hubName, deviceID, connTimeout) }()
	}
	for {
		select {
		case a := <-remote:
			return methodResult(ctx, deviceID, connTimeout, a.status, a.resp, a.err)
		case l := <-local:
			if l != nil {
				cancelRemote()
				return m.invokeLocal(ctx, l, hubName, deviceID, name, payload, respTimeout)
			}
			local = nil // timed out here; the remote answer decides
		}
	}
}

// methodResult turns what a link or the forwarder returned into Invoke's
// answer; ctx is the caller's.
func methodResult(ctx context.Context, deviceID string, connTimeout time.Duration, status int, resp []byte, err error) (*MethodResult, error) {
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		return nil, azerr.Newf(azerr.HubGatewayTimeout, "Timed out waiting for the response from device %s.", deviceID)
	case errors.Is(err, ErrDeviceNotReached):
		return nil, notOnline(deviceID, connTimeout)
	default:
		var ae *azerr.Error
		if errors.As(err, &ae) {
			return nil, ae
		}
		// The connection went away before the answer.
		return nil, azerr.Wrap(azerr.HubDeviceNotOnline, err)
	}
	return &MethodResult{Status: status, Payload: methodResponsePayload(resp)}, nil
}

// methodResponsePayload renders what the device answered as the result's
// payload: JSON as sent, nothing as null, anything else as a JSON string
// (IoT Hub's answer to a non-JSON response is not documented; berth keeps
// the bytes rather than failing the call).
func methodResponsePayload(b []byte) json.RawMessage {
	t := bytes.TrimSpace(b)
	switch {
	case len(t) == 0:
		return json.RawMessage("null")
	case json.Valid(t):
		return json.RawMessage(t)
	default:
		s, _ := json.Marshal(string(b))
		return s
	}
}
