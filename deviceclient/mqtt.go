package deviceclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// mqttSession is a Session over MQTT 3.1.1/TLS. Responses are matched to
// requests by $rid: each request gets a fresh one, and a response whose rid
// nobody waits for is dropped (as the Node SDK does).
type mqttSession struct {
	opts   Options
	log    *slog.Logger
	client paho.Client
	w      *waiters
}

// mqttTimeout bounds CONNECT, SUBSCRIBE and PUBLISH acknowledgements when
// the context has no deadline of its own.
const mqttTimeout = 30 * time.Second

func dialMQTT(ctx context.Context, opts Options, tlsConf *tls.Config) (*mqttSession, error) {
	// "" for an X.509 device: paho then sends no password at all, as DPS
	// expects of certificate authentication.
	password, err := opts.token()
	if err != nil {
		return nil, err
	}
	s := &mqttSession{opts: opts, log: opts.Logger, w: newWaiters()}
	po := paho.NewClientOptions().
		AddBroker("ssl://" + opts.Address).
		SetClientID(opts.RegistrationID).
		SetUsername(Username(opts.IDScope, opts.RegistrationID, opts.ClientVersion)).
		SetPassword(password).
		SetProtocolVersion(4).
		// DPS keeps no sessions
		// (docs/spec/dps-protocol.md#endpoints-and-transport); a clean one
		// says so.
		SetCleanSession(true).
		// A lost connection fails the flow; the caller decides whether to
		// start over, as firmware does, instead of paho resubscribing
		// behind its back.
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(mqttTimeout).
		SetKeepAlive(60 * time.Second).
		SetTLSConfig(tlsConf).
		// Handlers only hand messages over, so they need no ordering.
		SetOrderMatters(false).
		// onMessage acknowledges before it hands the answer over, so the
		// PUBACK of the final answer is queued before the caller can close
		// the connection (with auto-ack, paho acks after the handler
		// returns, racing a Close).
		SetAutoAckDisabled(true).
		SetDefaultPublishHandler(s.onMessage).
		SetConnectionLostHandler(func(_ paho.Client, err error) { s.w.fail(fmt.Errorf("connection lost: %w", err)) })
	s.client = paho.NewClient(po)
	s.log.Debug("deviceclient: mqtt connect", "address", opts.Address, "serverName", opts.GlobalEndpoint, "clientId", opts.RegistrationID)
	if err := wait(ctx, s.client.Connect()); err != nil {
		s.client.Disconnect(0)
		return nil, fmt.Errorf("deviceclient: mqtt connect to %s: %w", opts.Address, err)
	}
	sub := s.client.Subscribe(ResponseFilter, 1, s.onMessage)
	if err := wait(ctx, sub); err != nil {
		s.client.Disconnect(0)
		return nil, fmt.Errorf("deviceclient: mqtt subscribe %s: %w", ResponseFilter, err)
	}
	if st, ok := sub.(*paho.SubscribeToken); ok {
		if qos, ok := st.Result()[ResponseFilter]; ok && qos > 2 {
			s.client.Disconnect(0)
			return nil, fmt.Errorf("deviceclient: mqtt subscribe %s: refused (0x%02x)", ResponseFilter, qos)
		}
	}
	return s, nil
}

// wait waits for a paho token, or ctx, or mqttTimeout.
func wait(ctx context.Context, tok paho.Token) error {
	t := time.NewTimer(mqttTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errors.New("timed out")
	}
}

func (s *mqttSession) onMessage(_ paho.Client, m paho.Message) {
	m.Ack()
	resp, err := ParseResponseTopic(m.Topic())
	if err != nil {
		s.log.Debug("deviceclient: ignoring message", "topic", m.Topic(), "err", err)
		return
	}
	if !s.w.deliver(resp, m.Payload()) {
		s.log.Debug("deviceclient: response nobody waits for", "topic", m.Topic())
	}
}

// Register publishes the register request.
func (s *mqttSession) Register(ctx context.Context) (*Result, error) {
	body, err := RegisterBody(s.opts.RegistrationID, s.opts.Payload)
	if err != nil {
		return nil, err
	}
	return s.request(ctx, RegisterTopic, body)
}

// Poll publishes an operation status request.
func (s *mqttSession) Poll(ctx context.Context, operationID string) (*Result, error) {
	return s.request(ctx, func(rid string) string { return PollTopic(rid, operationID) }, nil)
}

func (s *mqttSession) request(ctx context.Context, topic func(rid string) string, body []byte) (*Result, error) {
	rid, ch, err := s.w.add()
	if err != nil {
		return nil, err
	}
	defer s.w.remove(rid)
	t := topic(rid)
	s.log.Debug("deviceclient: mqtt publish", "topic", t)
	if err := wait(ctx, s.client.Publish(t, 1, false, body)); err != nil {
		return nil, fmt.Errorf("publish %s: %w", t, err)
	}
	select {
	case m := <-ch:
		s.log.Debug("deviceclient: mqtt response", "status", m.resp.Status, "rid", m.resp.RID)
		return decodeAnswer(m.resp.Status, m.resp.RetryAfter, m.resp.HasRetryAfter, m.payload, "")
	case <-s.w.lost:
		return nil, s.w.lostErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close disconnects.
func (s *mqttSession) Close() error {
	s.client.Disconnect(250)
	return nil
}

// message is a response handed from paho's goroutine to the waiter.
type message struct {
	resp    Response
	payload []byte
}

// waiters matches responses to requests by rid. rids are decimal counters,
// like the C SDK's and C#'s packet ids, so they need no escaping.
type waiters struct {
	mu      sync.Mutex
	next    uint64
	pending map[string]chan message
	lost    chan struct{} // closed when the connection is gone
	err     error
}

func newWaiters() *waiters {
	return &waiters{pending: map[string]chan message{}, lost: make(chan struct{})}
}

// add reserves a new rid and the channel its response will arrive on.
func (w *waiters) add() (string, <-chan message, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return "", nil, w.err
	}
	w.next++
	rid := strconv.FormatUint(w.next, 10)
	// One slot: deliver never blocks paho's goroutine.
	ch := make(chan message, 1)
	w.pending[rid] = ch
	return rid, ch, nil
}

func (w *waiters) remove(rid string) {
	w.mu.Lock()
	delete(w.pending, rid)
	w.mu.Unlock()
}

// deliver hands a response to its waiter; false when there is none.
func (w *waiters) deliver(resp Response, payload []byte) bool {
	w.mu.Lock()
	ch, ok := w.pending[resp.RID]
	delete(w.pending, resp.RID)
	w.mu.Unlock()
	if !ok {
		return false
	}
	ch <- message{resp: resp, payload: append([]byte(nil), payload...)}
	return true
}

// fail wakes every waiter with err; later requests fail at once.
func (w *waiters) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		close(w.lost)
	}
}

func (w *waiters) lostErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}
