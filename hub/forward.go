package hub

import (
	"context"
	"errors"
	"time"
)

// Forwarder carries pushes to devices connected to other berth nodes. Links
// hands a push to it only when the device has no link on this node; the
// implementation (package linkbus, over core NATS) reaches the node that
// holds the device's connection. The hub knows nothing else about it.
type Forwarder interface {
	// DesiredPatch offers a desired-properties notification (as
	// DeviceLink.DesiredPatch) to the node holding the device. It must not
	// block: Twins calls it under the device's lock. Lost when no node
	// holds the device, as a local notification is.
	DesiredPatch(hubName, deviceID string, version int64, body []byte)
	// InvokeMethod runs a direct method on the node that holds, or within
	// connectTimeout gains, a link subscribed to methods. It returns
	// ErrDeviceNotReached (wrapped) when no node answered in time or the
	// holder found the device not online, context.DeadlineExceeded when the
	// device did not answer within responseTimeout (counted, as locally,
	// from the moment the device was reached), ctx.Err() when ctx ends, and
	// an *azerr.Error for an answer such as 429 from an overloaded node.
	InvokeMethod(ctx context.Context, hubName, deviceID, name string, payload []byte, connectTimeout, responseTimeout time.Duration) (status int, response []byte, err error)
	// CloudToDevicePending wakes the device's link on whichever node holds
	// it (as DeviceLink.CloudToDevicePending). It must not block.
	CloudToDevicePending(hubName, deviceID string)
	// Revoke closes the device's sessions on every other node unless they
	// were opened with credential keep ("" closes them all), as
	// Links.RevokeLocal does there. It must not block: the registry calls
	// it right after a change.
	Revoke(hubName, deviceID, keep string)
}

// SessionForwarder is a Forwarder that also keeps one live session per
// device across nodes: Links calls Attached after every attach, and the
// other nodes close an older session of the device (Links.ReplaceLocal).
// It must not block.
type SessionForwarder interface {
	Forwarder
	Attached(hubName, deviceID string, at time.Time)
}

// ErrDeviceNotReached says that no berth node holds the device with a link
// subscribed to methods: Methods answers 404103 DeviceNotOnline.
var ErrDeviceNotReached = errors.New("hub: no node has the device connected and subscribed to methods")

// SetForwarder makes f carry pushes for devices without a link on this
// node; nil (the default) keeps pushes local.
func (ls *Links) SetForwarder(f Forwarder) {
	ls.mu.Lock()
	ls.fwd = f
	ls.mu.Unlock()
}

func (ls *Links) forwarder() Forwarder {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.fwd
}

// DeliverDesiredPatch hands a desired patch to the device's link on this
// node, never to the forwarder, and reports whether there was one. The
// forwarder's receiving side calls it.
func (ls *Links) DeliverDesiredPatch(hubName, deviceID string, version int64, body []byte) bool {
	l := ls.Lookup(hubName, deviceID)
	if l != nil {
		l.DesiredPatch(version, body)
	}
	return l != nil
}

// DeliverCloudToDevicePending wakes the device's link on this node, never
// the forwarder, and reports whether there was one.
func (ls *Links) DeliverCloudToDevicePending(hubName, deviceID string) bool {
	l := ls.Lookup(hubName, deviceID)
	if l != nil {
		l.CloudToDevicePending()
	}
	return l != nil
}

// MethodLink returns the device's link on this node once it is subscribed
// to methods, waiting up to connectTimeout for that; nil when it is not
// (or ctx ends first). Methods.Invoke and the forwarder's receiving side
// use it.
func (ls *Links) MethodLink(ctx context.Context, hubName, deviceID string, connectTimeout time.Duration) DeviceLink {
	subscribed := func(l DeviceLink) bool { return l.MethodsSubscribed() }
	if l := ls.Lookup(hubName, deviceID); l != nil && subscribed(l) {
		return l
	}
	if connectTimeout <= 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	return ls.Wait(wctx, hubName, deviceID, subscribed)
}

// pushDesiredPatch delivers locally, else through the forwarder. A link
// attached in between learns the twin with its own GET, as after any
// connect.
func (ls *Links) pushDesiredPatch(hubName, deviceID string, version int64, body []byte) {
	if ls.DeliverDesiredPatch(hubName, deviceID, version, body) {
		return
	}
	if f := ls.forwarder(); f != nil {
		f.DesiredPatch(hubName, deviceID, version, body)
	}
}

// wakeCloudToDevice wakes the local link, else the remote one. The message
// itself waits in the store, so a wake-up lost on the way only delays it
// until the device's next subscribe.
func (ls *Links) wakeCloudToDevice(hubName, deviceID string) {
	if ls.DeliverCloudToDevicePending(hubName, deviceID) {
		return
	}
	if f := ls.forwarder(); f != nil {
		f.CloudToDevicePending(hubName, deviceID)
	}
}
