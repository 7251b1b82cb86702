// Package linkbus carries pushes to devices between berth nodes over core
// NATS: desired-property notifications, cloud-to-device wake-ups and direct
// methods for a device connected to another node. It is a hub.Forwarder.
//
// It is a package of its own rather than part of package stream because it
// shares only the connection with the telemetry stream: nothing here is
// stored (no JetStream), a push nobody takes is simply lost, and it needs
// hub.Links, the node's device directory, on the receiving side.
//
// # Subjects
//
//	{prefix}.desired.{hub}.{device}   desired patch (body), Berth-Version
//	{prefix}.c2d.{hub}.{device}       C2D wake-up, no body
//	{prefix}.method.{hub}.{device}    direct method request (request-reply)
//	{prefix}.revoke.{hub}.{device}    close the device's sessions, Berth-Credential
//	{prefix}.attach.{hub}.{device}    a session attached on the sender, Berth-Attached
//	{prefix}.presence.{hub}._         the nodes' presence of devices (request-reply)
//	{prefix}.hello._._                a node is alive (every HelloInterval)
//
// prefix defaults to berth.push; hub (lower case) and device are encoded as
// one subject token each, as in the telemetry stream (stream.Subject). Each
// node subscribes once to {prefix}.> — the cost is one subscription per
// node, not per device — and drops what it published itself (Berth-Node
// header, random per process). A node acts only when the device is
// connected to it. Restrict {prefix}.> to berth nodes with NATS
// permissions: whoever may publish there may push to devices.
//
// # Revocation
//
// A change of a device that revokes its credential (disabled, deleted,
// keys or thumbprints replaced) closes its sessions on every node: the
// node that made the change closes its own and publishes a revoke;
// every other node closes the device's session unless it was opened with
// the credential in Berth-Credential (empty: close it whatever it was
// opened with). Like every push it is lost when NATS is unreachable; the
// device's next authentication is checked against the store anyway.
//
// # One session per device
//
// After a device session attaches, its node publishes an attach with the
// attach time (Unix nanoseconds, wall clock); a node holding an older
// session of the device closes it (hub.Links.ReplaceLocal), as IoT Hub
// keeps the newest connection of an identity. Two attaches within the
// nodes' clock skew of each other are ordered by that clock, ties by node
// ID, so both nodes agree which one stays.
//
// # Presence
//
// connectionState and lastActivityTime are kept in memory by the node
// that holds the connection (hub.Registry). A service view asks the other
// nodes with one request carrying the device IDs (JSON array); every node
// answers with its views of those it knows (JSON object, possibly empty).
// The asker waits for the nodes it heard a hello from within
// 3 × HelloInterval, at most PresenceWait, and merges what came.
//
// # Direct methods
//
// The request carries Berth-Method, Berth-Connect-Timeout and
// Berth-Response-Timeout (milliseconds) and the payload. Only a node whose
// link is, or within the connect timeout becomes, subscribed to methods
// answers, on the request's reply subject, twice: Berth-Phase "reached" at
// once, then "result" with Berth-Status and the device's response as body,
// or Berth-Error (an IoT Hub error number such as 504101, 404103, 429001) with a
// message as body. The caller gives up with 404103 when nothing is reached
// within the connect timeout plus Margin, and with 504101 when the result
// is later than the response timeout plus Margin.
package linkbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/stream"
)

// Defaults for Config's zero values.
const (
	DefaultPrefix = "berth.push"
	// DefaultMaxMethodHandlers bounds the remote method calls a node serves
	// (or waits for a device for) at once: each holds a goroutine for up to
	// the connect plus response timeouts.
	DefaultMaxMethodHandlers = 256
	// HelloInterval is how often a node says it is alive; a node silent
	// for three intervals is no longer waited for.
	HelloInterval = time.Second
	// DefaultPresenceWait bounds how long a service view waits for the
	// other nodes' presence.
	DefaultPresenceWait = 500 * time.Millisecond
	// DefaultMargin is what a caller adds to a timeout for the NATS round
	// trip before it gives up on the other nodes. It is also the latency of
	// a 404 for a device connected nowhere when connectTimeout is 0.
	DefaultMargin = time.Second
)

// Header names.
const (
	hNode        = "Berth-Node"
	hVersion     = "Berth-Version"
	hMethod      = "Berth-Method"
	hConnTimeout = "Berth-Connect-Timeout"
	hRespTimeout = "Berth-Response-Timeout"
	hPhase       = "Berth-Phase"
	hStatus      = "Berth-Status"
	hError       = "Berth-Error"
	hCredential  = "Berth-Credential"
	hAttached    = "Berth-Attached"

	phaseReached = "reached"
	phaseResult  = "result"

	kindDesired  = "desired"
	kindC2D      = "c2d"
	kindMethod   = "method"
	kindRevoke   = "revoke"
	kindAttach   = "attach"
	kindPresence = "presence"
	kindHello    = "hello"
)

// Config wires a Bus.
type Config struct {
	// Conn is the NATS connection (the telemetry stream's); the Bus does
	// not close it.
	Conn *nats.Conn
	// Links is this node's device directory: pushes from other nodes are
	// delivered to its links.
	Links *hub.Links
	// Prefix defaults to DefaultPrefix.
	Prefix string
	// NodeID names this node in Berth-Node; "" picks a random one. Two
	// Buses must never share one.
	NodeID string
	// MaxMethodHandlers defaults to DefaultMaxMethodHandlers.
	MaxMethodHandlers int
	// Margin defaults to DefaultMargin.
	Margin time.Duration
	// Registry answers other nodes' presence questions; nil answers
	// nothing (and Presence asks nobody).
	Registry *hub.Registry
	// PresenceWait defaults to DefaultPresenceWait.
	PresenceWait time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Bus is a hub.Forwarder over NATS and the receiving side for the other
// nodes' pushes. It is safe for concurrent use.
type Bus struct {
	nc     *nats.Conn
	links  *hub.Links
	prefix string
	node   string
	margin time.Duration
	log    *slog.Logger

	reg          *hub.Registry
	presenceWait time.Duration
	// peers are the other nodes heard from, with when (hello or any
	// message).
	peersMu sync.Mutex
	peers   map[string]time.Time

	sub    *nats.Subscription
	sem    chan struct{} // one slot per running method handler
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

var (
	_ hub.SessionForwarder = (*Bus)(nil)
	_ hub.PresencePeers    = (*Bus)(nil)
)

// Start subscribes to the other nodes' pushes. Pass the Bus to
// hub.Links.SetForwarder to send this node's.
func Start(cfg Config) (*Bus, error) {
	if cfg.Conn == nil || cfg.Links == nil {
		return nil, errors.New("linkbus: Config needs Conn and Links")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.NodeID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.NodeID = hex.EncodeToString(b[:])
	}
	if cfg.MaxMethodHandlers <= 0 {
		cfg.MaxMethodHandlers = DefaultMaxMethodHandlers
	}
	if cfg.Margin <= 0 {
		cfg.Margin = DefaultMargin
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PresenceWait <= 0 {
		cfg.PresenceWait = DefaultPresenceWait
	}
	b := &Bus{
		nc: cfg.Conn, links: cfg.Links, prefix: cfg.Prefix, node: cfg.NodeID, margin: cfg.Margin,
		log: cfg.Logger.With("component", "linkbus", "node", cfg.NodeID),
		sem: make(chan struct{}, cfg.MaxMethodHandlers),
		reg: cfg.Registry, presenceWait: cfg.PresenceWait, peers: map[string]time.Time{},
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	sub, err := b.nc.Subscribe(b.prefix+".>", b.receive)
	if err != nil {
		b.cancel()
		return nil, fmt.Errorf("linkbus: subscribe %s.>: %w", b.prefix, err)
	}
	// The subscription is live on the server once the flush returns, so a
	// push sent after Start is not missed.
	if err := b.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		b.cancel()
		return nil, fmt.Errorf("linkbus: subscribe %s.>: %w", b.prefix, err)
	}
	b.sub = sub
	b.wg.Add(1)
	go b.hello()
	return b, nil
}

// hello tells the other nodes that this one is alive, until Close.
func (b *Bus) hello() {
	defer b.wg.Done()
	t := time.NewTicker(HelloInterval)
	defer t.Stop()
	for {
		_ = b.nc.PublishMsg(b.newMsg(b.prefix + "." + kindHello + "._._"))
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// heard notes a message from another node.
func (b *Bus) heard(node string) {
	if node == "" {
		return
	}
	b.peersMu.Lock()
	b.peers[node] = time.Now()
	b.peersMu.Unlock()
}

// alive returns the nodes heard from within three hello intervals.
func (b *Bus) alive() map[string]bool {
	b.peersMu.Lock()
	defer b.peersMu.Unlock()
	out := map[string]bool{}
	for n, at := range b.peers {
		if time.Since(at) < 3*HelloInterval {
			out[n] = true
		} else {
			delete(b.peers, n)
		}
	}
	return out
}

// LiveNodes is how many nodes are alive: this one and those heard from
// within three hello intervals (the throttle's share of a cluster-wide
// quota, throttle.Config.Nodes).
func (b *Bus) LiveNodes() int {
	b.peersMu.Lock()
	defer b.peersMu.Unlock()
	n := 1
	for _, at := range b.peers {
		if time.Since(at) < 3*HelloInterval {
			n++
		}
	}
	return n
}

// NodeID is the Berth-Node this Bus stamps on its messages.
func (b *Bus) NodeID() string { return b.node }

// Close stops receiving, ends the method handlers (their callers get an
// error answer) and waits for them. Later pushes are dropped. It is
// idempotent and leaves the connection open.
func (b *Bus) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	err := b.sub.Unsubscribe()
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
		err = nil
	}
	b.cancel()
	b.wg.Wait()
	if err != nil {
		return fmt.Errorf("linkbus: unsubscribe: %w", err)
	}
	return nil
}

func (b *Bus) subject(kind, hubName, deviceID string) string {
	return stream.Subject(b.prefix+"."+kind, strings.ToLower(hubName), deviceID)
}

func (b *Bus) newMsg(subject string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Header.Set(hNode, b.node)
	return m
}

// publish sends a push nobody answers. nats.go buffers it (also while
// reconnecting), so this does not block the caller, who may hold a lock.
func (b *Bus) publish(m *nats.Msg, hubName, deviceID string) {
	if b.closed.Load() {
		return
	}
	if err := b.nc.PublishMsg(m); err != nil {
		b.log.Warn("linkbus: push to other nodes lost", "subject", m.Subject, "hub", hubName, "deviceId", deviceID, "err", err)
	}
}

// DesiredPatch implements hub.Forwarder.
func (b *Bus) DesiredPatch(hubName, deviceID string, version int64, body []byte) {
	m := b.newMsg(b.subject(kindDesired, hubName, deviceID))
	m.Header.Set(hVersion, strconv.FormatInt(version, 10))
	m.Data = body
	b.publish(m, hubName, deviceID)
}

// CloudToDevicePending implements hub.Forwarder.
func (b *Bus) CloudToDevicePending(hubName, deviceID string) {
	b.publish(b.newMsg(b.subject(kindC2D, hubName, deviceID)), hubName, deviceID)
}

// Revoke implements hub.Forwarder.
func (b *Bus) Revoke(hubName, deviceID, keep string) {
	m := b.newMsg(b.subject(kindRevoke, hubName, deviceID))
	m.Header.Set(hCredential, keep)
	b.publish(m, hubName, deviceID)
}

// Attached implements hub.SessionForwarder.
func (b *Bus) Attached(hubName, deviceID string, at time.Time) {
	m := b.newMsg(b.subject(kindAttach, hubName, deviceID))
	m.Header.Set(hAttached, strconv.FormatInt(at.UnixNano(), 10))
	b.publish(m, hubName, deviceID)
}

// Presence implements hub.PresencePeers.
func (b *Bus) Presence(ctx context.Context, hubName string, ids []string) map[string]hub.PresenceView {
	want := b.alive()
	if b.closed.Load() || len(want) == 0 || len(ids) == 0 {
		return nil
	}
	body, err := json.Marshal(ids)
	if err != nil {
		return nil
	}
	inbox := b.nc.NewInbox()
	ch := make(chan *nats.Msg, len(want)+8)
	sub, err := b.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		b.log.Warn("linkbus: presence from other nodes unavailable", "err", err)
		return nil
	}
	defer func() { _ = sub.Unsubscribe() }()
	req := b.newMsg(b.subject(kindPresence, hubName, "_"))
	req.Reply = inbox
	req.Data = body
	if err := b.nc.PublishMsg(req); err != nil {
		b.log.Warn("linkbus: presence from other nodes unavailable", "err", err)
		return nil
	}
	timer := time.NewTimer(b.presenceWait)
	defer timer.Stop()
	out := map[string]hub.PresenceView{}
	for len(want) > 0 {
		select {
		case m := <-ch:
			delete(want, m.Header.Get(hNode))
			var views map[string]hub.PresenceView
			if json.Unmarshal(m.Data, &views) != nil {
				continue
			}
			for id, v := range views {
				if cur, ok := out[id]; ok {
					v = hub.MergePresence(cur, v)
				}
				out[id] = v
			}
		case <-timer.C:
			return out
		case <-ctx.Done():
			return out
		case <-b.ctx.Done():
			return out
		}
	}
	return out
}

// InvokeMethod implements hub.Forwarder: it publishes the request and
// waits for a node to report the device reached, then for that node's
// result.
func (b *Bus) InvokeMethod(ctx context.Context, hubName, deviceID, name string, payload []byte, connectTimeout, responseTimeout time.Duration) (int, []byte, error) {
	if b.closed.Load() {
		return 0, nil, azerr.Newf(azerr.HubServiceUnavailable, "This node is shutting down.")
	}
	inbox := b.nc.NewInbox()
	// Two answers are expected; a few more (a device connected to two nodes)
	// are dropped by nats.go rather than block its reader.
	ch := make(chan *nats.Msg, 8)
	sub, err := b.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return 0, nil, azerr.Wrap(azerr.HubServiceUnavailable, fmt.Errorf("linkbus: subscribe reply inbox: %w", err))
	}
	defer func() { _ = sub.Unsubscribe() }()

	req := b.newMsg(b.subject(kindMethod, hubName, deviceID))
	req.Reply = inbox
	req.Header.Set(hMethod, name)
	req.Header.Set(hConnTimeout, strconv.FormatInt(connectTimeout.Milliseconds(), 10))
	req.Header.Set(hRespTimeout, strconv.FormatInt(responseTimeout.Milliseconds(), 10))
	req.Data = payload
	if err := b.nc.PublishMsg(req); err != nil {
		return 0, nil, azerr.Wrap(azerr.HubServiceUnavailable, fmt.Errorf("linkbus: publish method request %s: %w", req.Subject, err))
	}

	// Phase 1: a node reaches the device, or answers with an error.
	deadline := time.NewTimer(connectTimeout + b.margin)
	defer deadline.Stop()
	holder := ""
	for holder == "" {
		select {
		case m := <-ch:
			if e := m.Header.Get(hError); e != "" {
				return 0, nil, replyError(e, m.Data)
			}
			if m.Header.Get(hPhase) == phaseReached {
				holder = m.Header.Get(hNode)
			}
		case <-deadline.C:
			return 0, nil, fmt.Errorf("linkbus: %s/%s: no answer within %s: %w", hubName, deviceID, connectTimeout+b.margin, hub.ErrDeviceNotReached)
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-b.ctx.Done():
			return 0, nil, azerr.Newf(azerr.HubServiceUnavailable, "This node is shutting down.")
		}
	}
	// Phase 2: that node's result.
	deadline.Reset(responseTimeout + b.margin)
	for {
		select {
		case m := <-ch:
			if m.Header.Get(hNode) != holder {
				continue // another node that also holds the device: too late
			}
			if e := m.Header.Get(hError); e != "" {
				return 0, nil, replyError(e, m.Data)
			}
			if m.Header.Get(hPhase) != phaseResult {
				continue
			}
			status, err := strconv.Atoi(m.Header.Get(hStatus))
			if err != nil {
				return 0, nil, azerr.Newf(azerr.HubServerError, "Node %s answered a method with an invalid status.", holder)
			}
			return status, m.Data, nil
		case <-deadline.C:
			return 0, nil, fmt.Errorf("linkbus: %s/%s: node %s sent no result: %w", hubName, deviceID, holder, context.DeadlineExceeded)
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-b.ctx.Done():
			return 0, nil, azerr.Newf(azerr.HubServiceUnavailable, "This node is shutting down.")
		}
	}
}

// replyError turns a Berth-Error answer into what hub.Methods expects of
// a Forwarder.
func replyError(code string, msg []byte) error {
	n, err := strconv.Atoi(code)
	c, ok := azerr.Lookup(azerr.Hub, n)
	switch {
	case err != nil || !ok:
		return azerr.Newf(azerr.HubServerError, "A node answered a method with an invalid error %q.", code)
	case c == azerr.HubDeviceNotOnline:
		return fmt.Errorf("linkbus: %s: %w", msg, hub.ErrDeviceNotReached)
	case c == azerr.HubGatewayTimeout:
		return fmt.Errorf("linkbus: %s: %w", msg, context.DeadlineExceeded)
	}
	return azerr.Newf(c, "%s", msg)
}

// receive handles every push from the other nodes. nats.go calls it on one
// goroutine in order, so it must not block: desired and C2D pushes go to
// links that never block, a method waits on a goroutine of its own.
func (b *Bus) receive(m *nats.Msg) {
	node := m.Header.Get(hNode)
	if node == b.node {
		return
	}
	b.heard(node)
	rest, ok := strings.CutPrefix(m.Subject, b.prefix+".")
	kind, _, _ := strings.Cut(rest, ".")
	if !ok || kind == kindHello {
		return
	}
	hubName, deviceID, err := stream.ParseSubject(b.prefix+"."+kind, m.Subject)
	if err != nil {
		b.log.Debug("linkbus: ignoring a message on an unknown subject", "subject", m.Subject, "err", err)
		return
	}
	switch kind {
	case kindDesired:
		v, err := strconv.ParseInt(m.Header.Get(hVersion), 10, 64)
		if err != nil {
			b.log.Debug("linkbus: ignoring a desired patch without a version", "subject", m.Subject)
			return
		}
		b.links.DeliverDesiredPatch(hubName, deviceID, v, m.Data)
	case kindC2D:
		b.links.DeliverCloudToDevicePending(hubName, deviceID)
	case kindMethod:
		b.receiveMethod(m, hubName, deviceID)
	case kindAttach:
		at, err := strconv.ParseInt(m.Header.Get(hAttached), 10, 64)
		if err != nil {
			b.log.Debug("linkbus: ignoring an attach without a time", "subject", m.Subject)
			return
		}
		// Both nodes order a tie the same way: the greater node ID stays.
		if b.links.ReplaceLocal(hubName, deviceID, time.Unix(0, at), node > b.node) {
			b.log.Info("linkbus: closed a device session replaced by a newer one on another node", "hub", hubName, "deviceId", deviceID)
		}
	case kindPresence:
		if m.Reply == "" {
			return
		}
		var ids []string
		var views map[string]hub.PresenceView
		if b.reg != nil && json.Unmarshal(m.Data, &ids) == nil {
			views = b.reg.LocalPresence(hubName, ids)
		}
		r := b.newMsg(m.Reply)
		r.Data, _ = json.Marshal(views)
		if err := b.nc.PublishMsg(r); err != nil {
			b.log.Warn("linkbus: presence answer lost", "err", err)
		}
	case kindRevoke:
		if b.links.RevokeLocal(hubName, deviceID, m.Header.Get(hCredential)) {
			b.log.Info("linkbus: closed a device session revoked on another node", "hub", hubName, "deviceId", deviceID)
		}
	}
}

func (b *Bus) receiveMethod(m *nats.Msg, hubName, deviceID string) {
	name := m.Header.Get(hMethod)
	ct, err1 := strconv.ParseInt(m.Header.Get(hConnTimeout), 10, 64)
	rt, err2 := strconv.ParseInt(m.Header.Get(hRespTimeout), 10, 64)
	if m.Reply == "" || name == "" || err1 != nil || err2 != nil || ct < 0 || rt <= 0 {
		b.log.Debug("linkbus: ignoring a malformed method request", "subject", m.Subject)
		return
	}
	connTimeout, respTimeout := time.Duration(ct)*time.Millisecond, time.Duration(rt)*time.Millisecond
	// Most nodes do not hold the device: they decide without a goroutine.
	link := b.links.MethodLink(b.ctx, hubName, deviceID, 0)
	if link == nil && connTimeout == 0 {
		return
	}
	select {
	case b.sem <- struct{}{}:
	default:
		// Full. Only the holder speaks up; a node that would merely wait
		// for the device stays silent, as it would without the device.
		if link != nil {
			b.reply(m.Reply, phaseResult, func(r *nats.Msg) {
				r.Header.Set(hError, strconv.Itoa(azerr.HubThrottled.Number()))
				r.Data = []byte("Too many direct methods in flight on the node the device is connected to.")
			})
		}
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer func() { <-b.sem }()
		if link == nil {
			if link = b.links.MethodLink(b.ctx, hubName, deviceID, connTimeout); link == nil {
				return
			}
		}
		b.invoke(m, link, name, respTimeout)
	}()
}

// invoke calls the method on this node's link and answers the caller.
func (b *Bus) invoke(req *nats.Msg, link hub.DeviceLink, name string, respTimeout time.Duration) {
	b.reply(req.Reply, phaseReached, nil)
	ctx, cancel := context.WithTimeout(b.ctx, respTimeout)
	defer cancel()
	status, resp, err := link.InvokeMethod(ctx, name, req.Data)
	b.reply(req.Reply, phaseResult, func(r *nats.Msg) {
		var ae *azerr.Error
		switch {
		case err == nil:
			r.Header.Set(hStatus, strconv.Itoa(status))
			r.Data = resp
			return
		case b.ctx.Err() != nil:
			r.Header.Set(hError, strconv.Itoa(azerr.HubServiceUnavailable.Number()))
			r.Data = []byte("The node the device is connected to is shutting down.")
		case errors.Is(err, context.DeadlineExceeded):
			r.Header.Set(hError, strconv.Itoa(azerr.HubGatewayTimeout.Number()))
			r.Data = []byte("The device did not answer in time.")
		case errors.As(err, &ae):
			r.Header.Set(hError, strconv.Itoa(ae.Code.Number()))
			r.Data = []byte(ae.Message)
		default:
			// The connection went away before the answer.
			r.Header.Set(hError, strconv.Itoa(azerr.HubDeviceNotOnline.Number()))
			r.Data = []byte("The device disconnected before it answered.")
		}
	})
}

// reply answers a method caller; fill adds the answer's headers and body.
func (b *Bus) reply(to, phase string, fill func(*nats.Msg)) {
	r := b.newMsg(to)
	r.Header.Set(hPhase, phase)
	if fill != nil {
		fill(r)
	}
	err := b.nc.PublishMsg(r)
	if errors.Is(err, nats.ErrMaxPayload) {
		// The device's response is larger than NATS carries: say so
		// rather than leave the caller to time out.
		r = b.newMsg(to)
		r.Header.Set(hPhase, phase)
		r.Header.Set(hError, strconv.Itoa(azerr.HubMessageTooLarge.Number()))
		r.Data = []byte("The device's response is too large to pass between berth nodes.")
		err = b.nc.PublishMsg(r)
	}
	if err != nil {
		b.log.Warn("linkbus: method answer lost", "phase", phase, "err", err)
	}
}
