package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/azerr"
)

// Twin message annotations (docs/amqp-wire.md, "Twin"): symbol keys,
// status an int, version a long (the C SDK insists on both types).
const (
	annOperation = engine.Symbol("operation")
	annResource  = engine.Symbol("resource")
	annStatus    = engine.Symbol("status")
	annVersion   = engine.Symbol("version")

	resReported = "/properties/reported"
	resDesired  = "/notifications/twin/properties/desired"
)

// twinTimeout bounds one twin request's domain call.
const twinTimeout = 30 * time.Second

// maxTwinQueued bounds answers and desired notifications waiting for the
// device's credit; past it the connection is closed, as MQTT does, and
// the device resynchronises with GET.
const maxTwinQueued = 16

// twinState is a device's twin channel: the link berth answers and pushes
// on, and whether the device asked for desired notifications.
type twinState struct {
	d *device

	mu         sync.Mutex
	out        *engine.Link
	queue      []*engine.Message
	subscribed bool
	closed     bool
}

func (d *device) twinState() *twinState {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.twin == nil {
		d.twin = &twinState{d: d}
	}
	return d.twin
}

// attachTwin serves /devices/{d}/twin: the device's sender brings
// requests (GET, PATCH reported, PUT/DELETE desired notifications), the
// device's receiver takes answers and desired patches.
func (c *conn) attachTwin(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	d, e := c.deviceFor(l, m)
	if e != nil {
		return nil, e
	}
	t := d.twinState()
	if l.Role() == engine.RoleSender {
		t.mu.Lock()
		t.out, t.closed = l, false
		t.mu.Unlock()
		return &twinOut{t: t}, nil
	}
	return &twinIn{t: t}, nil
}

type twinIn struct {
	t *twinState
	q serial
}

func (ti *twinIn) Message(l *engine.Link, dl *engine.Delivery) {
	_ = dl.Accept()
	ti.q.do(func() { ti.t.request(dl.Message) })
}

func (ti *twinIn) Detached(l *engine.Link, _ *engine.Error) { ti.t.d.linkEnded(l) }

type twinOut struct{ t *twinState }

func (to *twinOut) Credit(*engine.Link) { to.t.flush() }

func (to *twinOut) Detached(l *engine.Link, _ *engine.Error) {
	to.t.mu.Lock()
	if to.t.out == l {
		to.t.out, to.t.subscribed, to.t.queue = nil, false, nil
	}
	to.t.mu.Unlock()
	to.t.d.linkEnded(l)
}

func (t *twinState) close() {
	t.mu.Lock()
	t.closed, t.queue = true, nil
	t.mu.Unlock()
}

// request runs one twin request and answers it.
func (t *twinState) request(m *engine.Message) {
	d := t.d
	h := d.c.hubCfg()
	op := strings.ToUpper(annotationString(m, annOperation))
	res := annotationString(m, annResource)
	var corr any
	if m.Properties != nil {
		corr = m.Properties.CorrelationID
	}
	ctx, cancel := context.WithTimeout(d.c.srv.ctx, twinTimeout)
	defer cancel()
	var (
		status  = 200
		payload []byte
		version int64
		err     error
	)
	switch {
	case op == "GET":
		payload, err = h.Twins.DeviceDocument(ctx, d.hub, d.twinID)
	case op == "PATCH" && strings.EqualFold(res, resReported):
		version, err = h.Twins.PatchReported(ctx, d.hub, d.twinID, body(m))
		status = 204
	case (op == "PUT" || op == "DELETE") && strings.EqualFold(res, resDesired):
		t.mu.Lock()
		t.subscribed = op == "PUT"
		t.mu.Unlock()
	default:
		err = azerr.Newf(azerr.HubArgumentInvalid, "The twin operation %q on %q is not supported.", clip(op), clip(res))
	}
	if err != nil {
		var ae *azerr.Error
		if !errors.As(err, &ae) {
			d.c.srv.log.Warn("amqp: twin request failed", d.c.logAttrs("hub", d.hub, "deviceId", d.deviceID, "operation", op, "error", err.Error())...)
			ae = azerr.WrapHub(azerr.HubServerError, err)
			ae.Message = "The twin request could not be completed."
		}
		status = ae.Status()
		payload, _ = json.Marshal(map[string]any{"errorCode": ae.Code.Number(), "message": ae.Message})
	}
	ann := engine.Map{{Key: annStatus, Value: int32(status)}}
	if version != 0 {
		ann = append(ann, engine.KV{Key: annVersion, Value: version})
	}
	resp := &engine.Message{Annotations: ann, Properties: &engine.Properties{CorrelationID: corr}}
	if len(payload) > 0 {
		resp.Data = [][]byte{payload}
	}
	t.send(resp)
}

// DesiredPatch pushes a desired-properties patch to a device that asked
// for them (PUT on the desired notifications resource).
func (d *device) DesiredPatch(version int64, body []byte) {
	d.mu.Lock()
	t := d.twin
	d.mu.Unlock()
	if t == nil {
		return
	}
	t.mu.Lock()
	sub := t.subscribed
	t.mu.Unlock()
	if !sub {
		return
	}
	t.send(&engine.Message{Annotations: engine.Map{{Key: annVersion, Value: version}}, Data: [][]byte{body}})
}

// send queues a message for the device's twin receiver and sends what
// its credit allows.
func (t *twinState) send(m *engine.Message) {
	t.mu.Lock()
	if t.closed || t.out == nil {
		t.mu.Unlock()
		return
	}
	if len(t.queue) >= maxTwinQueued {
		t.mu.Unlock()
		t.d.c.srv.log.Info("amqp: twin messages not taken by the device; closing its connection", t.d.c.logAttrs("hub", t.d.hub, "deviceId", t.d.deviceID)...)
		t.d.c.closeConn(linkError(engine.ErrCondResourceLimitExceeded, "Twin messages are not being received."))
		return
	}
	t.queue = append(t.queue, m)
	t.mu.Unlock()
	t.flush()
}

// flush sends queued messages while there is credit, in order.
func (t *twinState) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.queue) > 0 && t.out != nil {
		if _, err := t.out.Send(t.queue[0], true); err != nil {
			return // no credit: Credit calls flush again
		}
		t.queue = t.queue[1:]
	}
}

// annotationString is a string or symbol message annotation.
func annotationString(m *engine.Message, key engine.Symbol) string {
	v, _ := m.Annotation(key)
	switch s := v.(type) {
	case string:
		return s
	case engine.Symbol:
		return string(s)
	}
	return ""
}
