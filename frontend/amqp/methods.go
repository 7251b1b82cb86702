package amqp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/azerr"
)

// Direct-method application properties (docs/amqp-wire.md, "Methods").
const (
	propMethodName   = "IoThub-methodname"
	propMethodStatus = "IoThub-status"
)

// maxPendingMethods bounds a device's calls waiting for an answer.
const maxPendingMethods = 64

type methodAnswer struct {
	status int
	body   []byte
	closed bool
}

// methodState is a device's methods channel: berth's sender carries
// requests (correlation-id a uuid), the device's sender the answers.
type methodState struct {
	d *device

	mu      sync.Mutex
	out     *engine.Link
	pending map[engine.UUID]chan methodAnswer
	closed  bool
}

func (d *device) methodState() *methodState {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.method == nil {
		d.method = &methodState{d: d, pending: map[engine.UUID]chan methodAnswer{}}
	}
	return d.method
}

// attachMethods serves /devices/{d}/methods/devicebound: the device's
// receiver makes it reachable for hub.Methods.
func (c *conn) attachMethods(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	d, e := c.deviceFor(l, m)
	if e != nil {
		return nil, e
	}
	ms := d.methodState()
	if l.Role() == engine.RoleSender {
		ms.mu.Lock()
		ms.out, ms.closed = l, false
		ms.mu.Unlock()
		return &methodOut{ms: ms}, nil
	}
	return &methodIn{ms: ms}, nil
}

type methodOut struct{ ms *methodState }

func (*methodOut) Credit(*engine.Link) {}

func (mo *methodOut) Detached(l *engine.Link, _ *engine.Error) {
	mo.ms.mu.Lock()
	if mo.ms.out == l {
		mo.ms.out = nil
	}
	mo.ms.mu.Unlock()
	mo.ms.d.linkEnded(l)
}

type methodIn struct{ ms *methodState }

func (mi *methodIn) Message(l *engine.Link, dl *engine.Delivery) {
	_ = dl.Accept()
	m := dl.Message
	if m.Properties == nil {
		return
	}
	id, ok := toUUID(m.Properties.CorrelationID)
	if !ok {
		return
	}
	status := 0
	if v, ok := m.ApplicationProperty(propMethodStatus); ok {
		status = intValue(v)
	}
	mi.ms.mu.Lock()
	ch := mi.ms.pending[id]
	delete(mi.ms.pending, id)
	mi.ms.mu.Unlock()
	if ch != nil {
		ch <- methodAnswer{status: status, body: body(m)}
	}
}

func (mi *methodIn) Detached(l *engine.Link, _ *engine.Error) { mi.ms.d.linkEnded(l) }

func (ms *methodState) close() {
	ms.mu.Lock()
	ms.closed = true
	pending := ms.pending
	ms.pending = map[engine.UUID]chan methodAnswer{}
	ms.mu.Unlock()
	for _, ch := range pending {
		ch <- methodAnswer{closed: true}
	}
}

// MethodsSubscribed: the device attached its methods receiver.
func (d *device) MethodsSubscribed() bool {
	d.mu.Lock()
	ms := d.method
	d.mu.Unlock()
	if ms == nil {
		return false
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.out != nil && !ms.closed
}

// InvokeMethod sends a method request and waits for its answer.
func (d *device) InvokeMethod(ctx context.Context, name string, payload []byte) (int, []byte, error) {
	ms := d.methodState()
	var id engine.UUID
	_, _ = rand.Read(id[:])
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	ch := make(chan methodAnswer, 1)
	ms.mu.Lock()
	out := ms.out
	switch {
	case ms.closed || out == nil:
		ms.mu.Unlock()
		return 0, nil, azerr.Newf(azerr.HubDeviceNotOnline, "Device %s is not listening for direct methods.", d.twinID)
	case len(ms.pending) >= maxPendingMethods:
		ms.mu.Unlock()
		return 0, nil, azerr.Newf(azerr.HubThrottled, "Device %s has %d direct method calls waiting for an answer, the most berth allows.", d.twinID, maxPendingMethods)
	}
	ms.pending[id] = ch
	ms.mu.Unlock()
	defer func() {
		ms.mu.Lock()
		delete(ms.pending, id)
		ms.mu.Unlock()
	}()
	if len(payload) == 0 {
		payload = []byte("null")
	}
	req := &engine.Message{
		Properties:            &engine.Properties{CorrelationID: id},
		ApplicationProperties: engine.Map{{Key: propMethodName, Value: name}},
		Data:                  [][]byte{payload},
	}
	if _, err := out.Send(req, false); err != nil {
		return 0, nil, azerr.Newf(azerr.HubThrottled, "Device %s is not taking direct method requests now.", d.twinID)
	}
	select {
	case a := <-ch:
		if a.closed {
			return 0, nil, errSessionClosed
		}
		return a.status, a.body, nil
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
}

// toUUID reads a correlation-id the device echoed: a uuid, or its text.
func toUUID(v any) (engine.UUID, bool) {
	var u engine.UUID
	switch x := v.(type) {
	case engine.UUID:
		return x, true
	case string:
		b, err := hex.DecodeString(strings.ReplaceAll(x, "-", ""))
		if err != nil || len(b) != len(u) {
			return u, false
		}
		copy(u[:], b)
		return u, true
	}
	return u, false
}

// intValue reads an AMQP integer of any width.
func intValue(v any) int {
	switch x := v.(type) {
	case int32:
		return int(x)
	case int64:
		return int(x)
	case uint32:
		return int(x)
	case uint64:
		return int(x)
	case int8:
		return int(x)
	case int16:
		return int(x)
	case uint8:
		return int(x)
	case uint16:
		return int(x)
	case int:
		return x
	}
	return 0
}
