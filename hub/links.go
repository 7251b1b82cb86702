package hub

import (
	"context"
	"sync"
)

// DeviceLink is a live device connection as the domain sees it: what a
// front end (MQTT today; AMQP and WebSockets later) offers so that the hub
// can push to a device. Every method must return promptly; none may block
// on the network except InvokeMethod, which waits for the device's answer
// until ctx ends.
type DeviceLink interface {
	// DesiredPatch delivers a desired-properties notification: body is the
	// patch with "$version" (shared/spec/iothub.md §4.1). Notifications of
	// one device are passed in version order. A link that cannot take one
	// (not subscribed: dropped; queue full: the link closes the connection
	// so that the device resynchronises with GET on reconnect) must not
	// block.
	DesiredPatch(version int64, body []byte)
	// MethodsSubscribed reports whether the device subscribed to direct
	// methods: IoT Hub treats a connected device that did not as offline.
	MethodsSubscribed() bool
	// InvokeMethod sends a direct-method request and waits for the device's
	// response or for ctx to end (ctx.Err() then).
	InvokeMethod(ctx context.Context, name string, payload []byte) (status int, response []byte, err error)
	// CloudToDevicePending tells the link that the device's
	// cloud-to-device queue has a message it may deliver.
	CloudToDevicePending()
}

// Links is this node's directory of live device connections. Front ends
// attach a DeviceLink when a device session starts; the domain looks links
// up to push desired properties, invoke methods and wake C2D delivery.
//
// With several berth nodes each knows its own connections only; a
// Forwarder (SetForwarder) carries pushes for a device connected elsewhere.
type Links struct {
	mu    sync.Mutex
	links map[string]DeviceLink
	fwd   Forwarder
	// changed is closed and replaced whenever a link is attached or says
	// its subscriptions changed, waking Wait.
	changed chan struct{}
}

// NewLinks returns an empty directory.
func NewLinks() *Links {
	return &Links{links: map[string]DeviceLink{}, changed: make(chan struct{})}
}

// Attach makes l the device's live link (a newer connection replaces an
// older one, as IoT Hub keeps one per identity). detach forgets it unless
// a newer link has replaced it.
func (ls *Links) Attach(hubName, deviceID string, l DeviceLink) (detach func()) {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	ls.links[k] = l
	ls.wakeLocked()
	ls.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			ls.mu.Lock()
			if ls.links[k] == l {
				delete(ls.links, k)
			}
			ls.mu.Unlock()
		})
	}
}

// Changed tells waiters that a device's link changed its subscriptions.
func (ls *Links) Changed() {
	ls.mu.Lock()
	ls.wakeLocked()
	ls.mu.Unlock()
}

func (ls *Links) wakeLocked() {
	close(ls.changed)
	ls.changed = make(chan struct{})
}

// Lookup returns the device's live link, or nil.
func (ls *Links) Lookup(hubName, deviceID string) DeviceLink {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.links[deviceKey(hubName, deviceID)]
}

// Wait returns the device's live link once ok(link) holds, or nil when ctx
// ends first.
func (ls *Links) Wait(ctx context.Context, hubName, deviceID string, ok func(DeviceLink) bool) DeviceLink {
	k := deviceKey(hubName, deviceID)
	for {
		ls.mu.Lock()
		l, ch := ls.links[k], ls.changed
		ls.mu.Unlock()
		if l != nil && ok(l) {
			return l
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}
