package amqp

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	engine "github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/eventhubs"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/stream"
)

// The Event Hubs-compatible endpoint (docs/amqp-wire.md, "Event Hubs";
// wire facts in docs/spec/amqp-protocol.md): each hub's telemetry is the
// Event Hub named eventhubs.EntityName(hub), on the hub's own host and
// AMQP listener. Clients authenticate with CBS tokens signed Event Hubs
// style, read the entity and partitions through $management and read
// partitions through receivers on {entity}/ConsumerGroups/{group}/Partitions/{n}.

// TelemetryReader reads the partitions of the telemetry stream (package
// stream).
type TelemetryReader interface {
	PartitionState(ctx context.Context, hubName string, partition int) (stream.PartitionState, error)
	// PartitionLast is PartitionState with only the last message (Empty,
	// Last, LastStored).
	PartitionLast(ctx context.Context, hubName string, partition int) (stream.PartitionState, error)
	ReadPartition(ctx context.Context, hubName string, partition int, pos stream.Position) (<-chan stream.Event, error)
}

// EventHubs serves the Event Hubs-compatible endpoint.
type EventHubs struct {
	Reader TelemetryReader
	// Receivers applies the epoch and receiver-count rules; shared by
	// every connection.
	Receivers *eventhubs.Receivers
	// Port is the AMQP port Event Hubs clients are sent to (the redirect,
	// the namespace); 0 means 5671.
	Port int
}

// Event Hubs names on the wire.
const (
	ehManagement         = "$management"
	ehTypeEventHub       = "com.microsoft:eventhub"
	ehTypePartition      = "com.microsoft:partition"
	ehSelectorFilter     = engine.Symbol("apache.org:selector-filter:string")
	ehSelectorFilterNum  = uint64(0x0000468C00000004)
	ehEpoch              = engine.Symbol("com.microsoft:epoch")
	ehArgumentOutOfRange = engine.Symbol("com.microsoft:argument-out-of-range")
	ehArgumentError      = engine.Symbol("com.microsoft:argument-error")
	// ehRuntimeMetric in a receiver's desired-capabilities asks for the
	// partition's last enqueued event on every event (delivery
	// annotations ehLast*): .NET's TrackLastEnqueuedEventProperties, JS's
	// trackLastEnqueuedEventProperties (azeventhubs for Go has none).
	ehRuntimeMetric   = engine.Symbol("com.microsoft:enable-receiver-runtime-metric")
	ehLastSeq         = engine.Symbol("last_enqueued_sequence_number")
	ehLastOffset      = engine.Symbol("last_enqueued_offset")
	ehLastTime        = engine.Symbol("last_enqueued_time_utc")
	ehLastRetrieved   = engine.Symbol("runtime_info_retrieval_time_utc")
	ehRuntimeInterval = time.Second
)

func (c *conn) eventHubs() *EventHubs {
	if h := c.hubCfg(); h != nil {
		return h.EventHubs
	}
	return nil
}

// hubInfo is a served hub's record (partition count, creation time).
func (c *conn) hubInfo(hubName string) hub.HubInfo {
	if h := c.hubCfg(); h != nil && h.Hubs != nil {
		if s, ok := h.Hubs.Lookup(hubName); ok {
			return s.Info
		}
	}
	return hub.HubInfo{Name: hubName}
}

// ehGrant is the service grant on this connection that covers an Event
// Hubs path (entity first), for the hub whose entity it names.
func (c *conn) ehGrant(segs []string) *grant {
	g := c.serviceGrant(segs)
	if g == nil || !strings.EqualFold(eventhubs.EntityName(g.hub), segs[0]) {
		return nil
	}
	return g
}

func (c *conn) attachEHManagement(l *engine.Link, _ match) (engine.LinkHandler, *engine.Error) {
	if c.eventHubs() == nil {
		return nil, linkError(engine.ErrCondNotFound, "The Event Hubs-compatible endpoint is not enabled.")
	}
	return c.ehMgmt.Attach(l)
}

// serveEHManagement answers a $management READ of the entity or of a
// partition. The request is authorised by a CBS grant for the entity on
// this connection or by its own security_token.
func (c *conn) serveEHManagement(r *engine.Request) {
	go func() {
		status, desc, body := c.ehRead(r.Message)
		reply := &engine.Message{ApplicationProperties: engine.Map{
			{Key: cbsStatusCode, Value: int32(status)},
			{Key: cbsStatusDescr, Value: desc},
		}}
		if body != nil {
			reply.Value, reply.HasValue = body, true
		}
		if err := r.Reply(reply); err != nil {
			c.srv.log.Debug("amqp: $management reply not sent", c.logAttrs("error", err.Error())...)
		}
	}()
}

func (c *conn) ehRead(m *engine.Message) (int, string, engine.Map) {
	eh := c.eventHubs()
	if op := appString(m, "operation"); op != "READ" {
		return 400, "Only the READ operation is supported.", nil
	}
	name := appString(m, "name")
	typ := appString(m, "type")
	hubName, ok := c.ehAuthorized(name, appString(m, "security_token"))
	if !ok {
		return 401, "Unauthorized: no token for the entity " + clip(name) + " with ServiceConnect.", nil
	}
	info := c.hubInfo(hubName)
	n := info.Partitions()
	switch typ {
	case ehTypeEventHub:
		ids := make([]string, n)
		for i := range ids {
			ids[i] = strconv.Itoa(i)
		}
		return 200, "OK", engine.Map{
			{Key: "name", Value: name},
			{Key: "type", Value: ehTypeEventHub},
			{Key: "created_at", Value: info.Created.UTC()},
			{Key: "partition_count", Value: int32(n)},
			{Key: "partition_ids", Value: ids}, // an AMQP array of str
			{Key: "georeplication_factor", Value: int32(1)},
		}
	case ehTypePartition:
		pid := appString(m, "partition")
		p, err := strconv.Atoi(pid)
		if err != nil || p < 0 || p >= n || strconv.Itoa(p) != pid {
			return 404, "The partition " + clip(pid) + " does not exist; the entity has " + strconv.Itoa(n) + ".", nil
		}
		ctx, cancel := context.WithTimeout(c.srv.ctx, authTimeout)
		defer cancel()
		st, err := eh.Reader.PartitionState(ctx, hubName, p)
		if err != nil {
			c.srv.log.Error("amqp: partition state", c.logAttrs("hub", hubName, "partition", p, "error", err.Error())...)
			return 500, "The partition could not be read.", nil
		}
		out := engine.Map{
			{Key: "name", Value: name},
			{Key: "type", Value: ehTypePartition},
			{Key: "partition", Value: pid},
		}
		if st.Empty {
			// Both SDKs accept -1 for "nothing yet".
			return 200, "OK", append(out,
				engine.KV{Key: "begin_sequence_number", Value: int64(-1)},
				engine.KV{Key: "last_enqueued_sequence_number", Value: int64(-1)},
				engine.KV{Key: "last_enqueued_offset", Value: "-1"},
				engine.KV{Key: "last_enqueued_time_utc", Value: time.UnixMilli(0).UTC()},
				engine.KV{Key: "is_partition_empty", Value: true})
		}
		return 200, "OK", append(out,
			engine.KV{Key: "begin_sequence_number", Value: int64(st.First)},
			engine.KV{Key: "last_enqueued_sequence_number", Value: int64(st.Last)},
			engine.KV{Key: "last_enqueued_offset", Value: strconv.FormatUint(st.Last, 10)},
			engine.KV{Key: "last_enqueued_time_utc", Value: st.LastStored.Truncate(time.Millisecond)},
			engine.KV{Key: "is_partition_empty", Value: false})
	}
	return 400, "The type " + clip(typ) + " is not supported.", nil
}

// ehAuthorized finds the hub of an entity name a $management request
// names: a grant on this connection for the entity (or the whole hub), or
// else the request's own security_token.
func (c *conn) ehAuthorized(entity, token string) (string, bool) {
	if entity == "" {
		return "", false
	}
	// A CBS grant on this connection for the entity (…/{entity}/$management
	// is what the SDKs put) or for the whole hub.
	c.mu.Lock()
	for _, g := range c.grants {
		if g.deviceID == "" && strings.EqualFold(eventhubs.EntityName(g.hub), entity) &&
			(len(g.path) == 0 || strings.EqualFold(g.path[0], entity)) {
			c.mu.Unlock()
			return g.hub, true
		}
	}
	c.mu.Unlock()
	if token == "" {
		return "", false
	}
	tok, err := sas.Parse(token)
	if err != nil {
		return "", false
	}
	host, _, _ := strings.Cut(normaliseAudience(tok.Resource), "/")
	hubName, settings, ok := c.srv.servedHub(host)
	if !ok || !strings.EqualFold(eventhubs.EntityName(hubName), entity) {
		return "", false
	}
	if _, err := c.hubCfg().Registry.AuthorizeEventHubs(settings, hubName, token, []string{entity}); err != nil {
		c.refused("Event Hubs $management", tok.Resource, err)
		return "", false
	}
	return hubName, true
}

// attachEHPartition serves a partition receiver,
// {entity}/ConsumerGroups/{group}/Partitions/{n}.
func (c *conn) attachEHPartition(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	eh := c.eventHubs()
	if eh == nil {
		return nil, linkError(engine.ErrCondNotFound, "The Event Hubs-compatible endpoint is not enabled.")
	}
	if e := wantRole(l, engine.RoleSender); e != nil {
		return nil, e
	}
	g := c.ehGrant(m.segs)
	if g == nil {
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "No token with ServiceConnect for %s on this connection.", clip(m.address))
	}
	group := m.segs[2]
	info := c.hubInfo(g.hub)
	if !info.HasConsumerGroup(group) {
		return nil, linkError(engine.ErrCondNotFound, "The consumer group %q does not exist (berth hub consumer-group create).", clip(group))
	}
	n := info.Partitions()
	p, err := strconv.Atoi(m.segs[4])
	if err != nil || p < 0 || p >= n || strconv.Itoa(p) != m.segs[4] {
		return nil, linkError(ehArgumentOutOfRange, "The partition %q does not exist; the entity has %d (0 to %d).", clip(m.segs[4]), n, n-1)
	}
	start, err := eventhubs.ParseSelector(selectorOf(l.Source()))
	if err != nil {
		return nil, linkError(ehArgumentError, "%s", err.Error())
	}
	var epoch *int64
	if a := l.PeerAttach(); a != nil {
		if v, ok := a.Properties.Get(ehEpoch); ok {
			switch e := v.(type) {
			case int64:
				epoch = &e
			case int32:
				e64 := int64(e)
				epoch = &e64
			}
		}
	}
	ctx, cancel := context.WithCancel(c.srv.ctx)
	r := &ehReceiver{c: c, l: l, ctx: ctx, cancel: cancel, credit: make(chan struct{}, 1), hub: g.hub, partition: p}
	if a := l.PeerAttach(); a != nil && slices.Contains(a.DesiredCapabilities, ehRuntimeMetric) {
		r.runtime = &ehRuntime{reader: eh.Reader}
		l.SetOfferedCapabilities(ehRuntimeMetric)
	}
	leave, err := eh.Receivers.Join(g.hub, group, p, epoch, func(err error) {
		r.cancel()
		l.Close(linkError(engine.ErrCondStolen, "%s", err.Error()))
	})
	if err != nil {
		cancel()
		if errors.Is(err, eventhubs.ErrTooMany) {
			return nil, linkError(engine.ErrCondResourceLimitExceeded, "%s", err.Error())
		}
		return nil, linkError(engine.ErrCondStolen, "%s", err.Error())
	}
	r.leave = leave
	var pos stream.Position
	switch start.Kind {
	case eventhubs.StartLatest:
		pos.Latest = true
	case eventhubs.StartSequence:
		pos.Seq = uint64(start.Seq)
	case eventhubs.StartTime:
		pos.Time = start.Time
	}
	events, err := eh.Reader.ReadPartition(ctx, g.hub, p, pos)
	if err != nil {
		leave()
		cancel()
		c.srv.log.Error("amqp: read partition", c.logAttrs("hub", g.hub, "partition", p, "error", err.Error())...)
		return nil, linkError(engine.ErrCondInternalError, "The partition could not be read.")
	}
	r.events = events
	c.bind(g, l)
	go r.run()
	return r, nil
}

// selectorOf is a source's selector filter expression ("" for none).
func selectorOf(s *engine.Source) string {
	if s == nil {
		return ""
	}
	for _, kv := range s.Filter {
		d, ok := kv.Value.(engine.Described)
		if !ok {
			if dp, ok2 := kv.Value.(*engine.Described); ok2 && dp != nil {
				d, ok = *dp, true
			}
		}
		if !ok {
			continue
		}
		isSel := false
		switch k := kv.Key.(type) {
		case engine.Symbol:
			isSel = k == ehSelectorFilter
		}
		switch desc := d.Descriptor.(type) {
		case uint64:
			isSel = isSel || desc == ehSelectorFilterNum
		case engine.Symbol:
			isSel = isSel || desc == ehSelectorFilter
		}
		if expr, ok := d.Value.(string); ok && isSel {
			return expr
		}
	}
	return ""
}

// ehReceiver pumps a partition's events into a client's link as its
// credit allows.
type ehReceiver struct {
	c      *conn
	l      *engine.Link
	ctx    context.Context
	cancel context.CancelFunc
	events <-chan stream.Event
	leave  func()
	credit chan struct{}
	once   sync.Once

	hub       string
	partition int
	// runtime is the partition's last enqueued event, for a receiver that
	// asked for it (ehRuntimeMetric); nil otherwise.
	runtime *ehRuntime
}

// ehRuntime keeps what a receiver reports as the partition's last
// enqueued event. Event Hubs sends it with each event as a snapshot with
// its retrieval time, so berth looks it up at most once per
// ehRuntimeInterval, in the background, and meanwhile takes each event it
// sends as a lower bound (an event being sent has been enqueued).
type ehRuntime struct {
	reader     TelemetryReader
	mu         sync.Mutex
	seq        uint64
	stored     time.Time
	retrieved  time.Time
	refreshing bool
}

// note raises the snapshot to ev if ev is later, and starts a lookup in
// the background if the snapshot is older than ehRuntimeInterval.
func (rt *ehRuntime) note(r *ehReceiver, ev *stream.Event) {
	now := time.Now()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if ev.Seq > rt.seq {
		rt.seq, rt.stored, rt.retrieved = ev.Seq, ev.Stored, now
	}
	if rt.refreshing || now.Sub(rt.retrieved) < ehRuntimeInterval {
		return
	}
	rt.refreshing = true
	go rt.refresh(r)
}

// refresh looks the partition's last event up.
func (rt *ehRuntime) refresh(r *ehReceiver) {
	ctx, cancel := context.WithTimeout(r.ctx, authTimeout)
	defer cancel()
	st, err := rt.reader.PartitionLast(ctx, r.hub, r.partition)
	at := time.Now()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.refreshing = false
	if err != nil {
		r.c.srv.log.Debug("amqp: last enqueued event", r.c.logAttrs("hub", r.hub, "partition", r.partition, "error", err.Error())...)
		return
	}
	if !st.Empty && st.Last >= rt.seq {
		rt.seq, rt.stored = st.Last, st.LastStored
	}
	rt.retrieved = at
}

// annotations are the delivery annotations of the snapshot: the values
// GetPartitionProperties gives (empty: -1, "-1", the Unix epoch).
func (rt *ehRuntime) annotations() engine.Map {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	seq, off, stored := int64(-1), "-1", time.UnixMilli(0).UTC()
	if rt.seq > 0 {
		seq, off, stored = int64(rt.seq), strconv.FormatUint(rt.seq, 10), rt.stored.UTC().Truncate(time.Millisecond)
	}
	return engine.Map{
		{Key: ehLastSeq, Value: seq},
		{Key: ehLastOffset, Value: off},
		{Key: ehLastTime, Value: stored},
		{Key: ehLastRetrieved, Value: rt.retrieved.UTC().Truncate(time.Millisecond)},
	}
}

func (r *ehReceiver) Credit(*engine.Link) {
	select {
	case r.credit <- struct{}{}:
	default:
	}
}

func (r *ehReceiver) Detached(l *engine.Link, _ *engine.Error) {
	r.once.Do(func() {
		r.cancel()
		if r.leave != nil {
			r.leave()
		}
		r.c.unbind(l)
	})
}

func (r *ehReceiver) run() {
	// A client that asked for pre-settled transfers gets them; otherwise
	// they go unsettled, as Event Hubs sends them, and the client's
	// accept changes nothing (reads are not destructive).
	settled := r.l.SndSettleMode() == 1
	if r.runtime != nil {
		// So that the first events of a backlog carry the partition's
		// end, not themselves.
		r.runtime.refresh(r)
	}
	var pending *engine.Message
	for {
		if pending == nil {
			select {
			case ev, ok := <-r.events:
				if !ok {
					if r.ctx.Err() == nil {
						r.l.Close(linkError(engine.ErrCondDetachForced, "The partition reader ended; attach again."))
					}
					return
				}
				pending = eventMessage(ev)
				if r.runtime != nil {
					r.runtime.note(r, &ev)
					pending.DeliveryAnnotations = r.runtime.annotations()
				}
			case <-r.ctx.Done():
				return
			}
		}
		if r.l.Credit() == 0 {
			select {
			case <-r.credit:
				continue
			case <-r.ctx.Done():
				return
			}
		}
		_, err := r.l.Send(pending, settled)
		switch {
		case err == nil:
			pending = nil
		case errors.Is(err, engine.ErrNoCredit):
			select {
			case <-r.credit:
			case <-r.ctx.Done():
				return
			}
		default:
			return
		}
	}
}

// eventMessage is a stored telemetry message as Event Hubs delivers it
// (docs/amqp-wire.md, "Event format"): the body as the device sent it,
// its system properties in the properties section, the hub's stamps and
// the partition's sequence number, offset and enqueued time as message
// annotations, and the application properties as they were.
func eventMessage(ev stream.Event) *engine.Message {
	m := ev.Msg
	props := &engine.Properties{}
	hasProps := false
	var ann engine.Map
	for _, p := range m.System {
		switch p.Name {
		case hub.PropMessageID:
			props.MessageID, hasProps = p.Value, true
		case hub.PropCorrelationID:
			props.CorrelationID, hasProps = p.Value, true
		case hub.PropUserID:
			props.UserID, hasProps = []byte(p.Value), true
		case hub.PropTo:
			props.To, hasProps = p.Value, true
		case hub.PropContentType:
			props.ContentType, hasProps = engine.Symbol(p.Value), true
		case hub.PropContentEncoding:
			props.ContentEncoding, hasProps = engine.Symbol(p.Value), true
		case hub.PropExpiry:
			if t, err := time.Parse(time.RFC3339Nano, p.Value); err == nil {
				props.AbsoluteExpiryTime, hasProps = t.UTC(), true
			}
		case hub.PropEnqueuedTime:
			ann = append(ann, engine.KV{Key: engine.Symbol(p.Name), Value: m.Enqueued.UTC().Truncate(time.Millisecond)})
		default:
			ann = append(ann, engine.KV{Key: engine.Symbol(p.Name), Value: p.Value})
		}
	}
	enq := ev.Stored.UTC().Truncate(time.Millisecond)
	ann = append(ann,
		engine.KV{Key: engine.Symbol("x-opt-sequence-number"), Value: int64(ev.Seq)},
		engine.KV{Key: engine.Symbol("x-opt-offset"), Value: strconv.FormatUint(ev.Seq, 10)},
		engine.KV{Key: engine.Symbol("x-opt-enqueued-time"), Value: enq},
	)
	out := &engine.Message{Annotations: ann, Data: [][]byte{m.Body}}
	if hasProps {
		out.Properties = props
	}
	if len(m.App) > 0 {
		app := make(engine.Map, 0, len(m.App))
		for _, p := range m.App {
			app.Set(p.Name, p.Value)
		}
		out.ApplicationProperties = app
	}
	return out
}

// attachRedirect answers a receiver on the hub's messages/events (a
// client holding the hub connection string, as the Azure samples and az
// do) with amqp:link:redirect to the Event Hubs-compatible endpoint.
func (c *conn) attachRedirect(l *engine.Link, m match) (engine.LinkHandler, *engine.Error) {
	eh := c.eventHubs()
	if eh == nil {
		return nil, linkError(engine.ErrCondNotFound, "The Event Hubs-compatible endpoint is not enabled.")
	}
	if e := wantRole(l, engine.RoleSender); e != nil {
		return nil, e
	}
	g := c.serviceGrant(m.segs)
	if g == nil {
		return nil, linkError(engine.ErrCondUnauthorizedAccess, "No service token with ServiceConnect authorises %s on this connection.", m.address)
	}
	port := eh.Port
	if port == 0 {
		port = 5671
	}
	host := g.hub
	address := "amqps://" + eventhubs.Namespace(host, 5671) + ":" + strconv.Itoa(port) + "/" + eventhubs.EntityName(host) + "/" + ehManagement
	return nil, &engine.Error{
		Condition:   engine.ErrCondLinkRedirect,
		Description: "The link '" + clip(l.Name()) + "' is being redirected to the Event Hubs-compatible endpoint.",
		Info: engine.Map{
			{Key: engine.Symbol("hostname"), Value: host},
			{Key: engine.Symbol("network-host"), Value: host},
			{Key: engine.Symbol("port"), Value: int32(port)},
			{Key: engine.Symbol("address"), Value: address},
		},
	}
}
