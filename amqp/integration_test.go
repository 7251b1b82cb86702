package amqp

// Integration tests: the engine driven by a real AMQP 1.0 client, github.com/Azure/go-amqp (the
// client the Azure Go SDKs use), over TLS on 127.0.0.1.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/internal/testcerts"
)

// testHandler is a small front end: addresses name behaviours.
//
//	in          berth receives and accepts at once
//	in/reject   berth rejects with amqp:not-allowed
//	in/hold     berth hands the delivery to the test (held channel), which settles it
//	out         berth sends what the test queues on the link (senders channel)
//	$echo       request/response node answering each request with its body
//	refuse      attach refused with amqp:not-found
type testHandler struct {
	node     *Node
	received chan *Delivery
	held     chan *Delivery
	senders  chan *Link
	outcomes chan DeliveryState
	conns    chan *Conn
	closed   chan error
	mechs    chan Symbol
	certCN   chan string
}

func newTestHandler() *testHandler {
	h := &testHandler{
		received: make(chan *Delivery, 1000),
		held:     make(chan *Delivery, 100),
		senders:  make(chan *Link, 10),
		outcomes: make(chan DeliveryState, 100),
		conns:    make(chan *Conn, 10),
		closed:   make(chan error, 10),
		mechs:    make(chan Symbol, 10),
		certCN:   make(chan string, 10),
	}
	h.node = &Node{Serve: func(r *Request) {
		_ = r.Reply(&Message{Data: r.Message.Data,
			ApplicationProperties: Map{{"status-code", int32(200)}}})
	}}
	return h
}

func (h *testHandler) Authenticate(c *Conn, cr *SASLCredentials) SASLCode {
	h.mechs <- cr.Mechanism
	switch cr.Mechanism {
	case MechPLAIN:
		if cr.Username == "dev" && cr.Password == "secret" {
			return SASLOK
		}
		return SASLAuth
	case MechEXTERNAL:
		h.certCN <- cr.PeerCertificates[0].Subject.CommonName
		return SASLOK
	case MechANONYMOUS, MechMSSBCBS:
		c.Authenticated("anonymous") // tests stand in for a CBS token here
		return SASLOK
	}
	return SASLAuth
}

func (h *testHandler) Open(c *Conn, o *Open) *Error {
	h.conns <- c
	return nil
}

func (h *testHandler) Attach(l *Link) (LinkHandler, *Error) {
	switch addr := l.Address(); {
	case addr == "$echo":
		return h.node.Attach(l)
	case addr == "refuse":
		return nil, Errorf(ErrCondNotFound, "no such node")
	case l.Role() == RoleReceiver && strings.HasPrefix(addr, "in"):
		return &recvHandler{h: h, mode: strings.TrimPrefix(addr, "in")}, nil
	case l.Role() == RoleSender && addr == "out":
		h.senders <- l
		return &sendHandler{h: h}, nil
	}
	return nil, Errorf(ErrCondNotFound, "unknown address %q", l.Address())
}

func (h *testHandler) Closed(c *Conn, err error) { h.closed <- err }

type recvHandler struct {
	h    *testHandler
	mode string
}

func (r *recvHandler) Message(l *Link, d *Delivery) {
	switch r.mode {
	case "/reject":
		_ = d.Reject(Errorf(ErrCondNotAllowed, "rejected by test"))
	case "/hold":
		r.h.held <- d
		return
	default:
		_ = d.Accept()
	}
	r.h.received <- d
}
func (r *recvHandler) Detached(*Link, *Error) {}

type sendHandler struct{ h *testHandler }

func (s *sendHandler) Credit(*Link)           {}
func (s *sendHandler) Detached(*Link, *Error) {}
func (s *sendHandler) Outcome(l *Link, x *Sent, st DeliveryState) {
	s.h.outcomes <- st
}

type testServer struct {
	addr string
	h    *testHandler
}

func startServer(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	now := time.Now()
	srvCert := testcerts.Valid(t, "127.0.0.1", nil, false, now)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tln := tls.NewListener(ln, &tls.Config{
		Certificates: []tls.Certificate{srvCert.TLS()},
		ClientAuth:   tls.RequestClientCert,
	})
	h := newTestHandler()
	cfg := &Config{Handler: h, MaxMessageSize: 4 << 20}
	if mod != nil {
		mod(cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		_ = tln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := tln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = Serve(ctx, nc, cfg)
			}()
		}
	}()
	return &testServer{addr: ln.Addr().String(), h: h}
}

func (ts *testServer) dial(t *testing.T, opts *goamqp.ConnOptions) *goamqp.Conn {
	t.Helper()
	c, err := ts.tryDial(opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (ts *testServer) tryDial(opts *goamqp.ConnOptions) (*goamqp.Conn, error) {
	if opts == nil {
		opts = &goamqp.ConnOptions{}
	}
	if opts.TLSConfig == nil {
		opts.TLSConfig = &tls.Config{InsecureSkipVerify: true}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return goamqp.Dial(ctx, "amqps://"+ts.addr, opts)
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func session(t *testing.T, c *goamqp.Conn) *goamqp.Session {
	t.Helper()
	s, err := c.NewSession(ctx5(t), nil)
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	return s
}

func plain() *goamqp.ConnOptions {
	return &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("dev", "secret")}
}

func TestGoAMQPPlainUnsettledTransfer(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	if m := <-ts.h.mechs; m != MechPLAIN {
		t.Fatalf("mechanism %s", m)
	}
	snd, err := s.NewSender(ctx5(t), "in", nil)
	if err != nil {
		t.Fatal(err)
	}
	msg := goamqp.NewMessage([]byte(`{"t":21.5}`))
	msg.Properties = &goamqp.MessageProperties{MessageID: "m-1", CorrelationID: goamqp.UUID{1, 2, 3},
		ContentType: ptr("application/json"), To: ptr("/devices/d1/messages/events")}
	msg.ApplicationProperties = map[string]any{"k": "v", "n": int64(7)}
	msg.Annotations = goamqp.Annotations{"x-opt-a": "b"}
	if err := snd.Send(ctx5(t), msg, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	d := <-ts.h.received
	m := d.Message
	if d.Settled || string(m.Data[0]) != `{"t":21.5}` {
		t.Fatalf("delivery settled=%v data=%q", d.Settled, m.Data)
	}
	if m.Properties.MessageID != "m-1" || m.Properties.CorrelationID != (UUID{1, 2, 3}) ||
		m.Properties.ContentType != "application/json" || m.Properties.To != "/devices/d1/messages/events" {
		t.Fatalf("properties %+v", m.Properties)
	}
	if v, _ := m.ApplicationProperty("k"); v != "v" {
		t.Fatalf("app property k = %v", v)
	}
	if v, _ := m.ApplicationProperty("n"); v != int64(7) {
		t.Fatalf("app property n = %#v", v)
	}
	if v, _ := m.Annotation("x-opt-a"); v != "b" {
		t.Fatalf("annotation = %#v", v)
	}
}

func ptr[T any](v T) *T { return &v }

func TestGoAMQPPlainWrongPasswordRefused(t *testing.T) {
	ts := startServer(t, nil)
	_, err := ts.tryDial(&goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("dev", "wrong")})
	if err == nil {
		t.Fatal("dial with a wrong password succeeded")
	}
}

func TestGoAMQPAnonymousSettledTransfers(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous()}))
	snd, err := s.NewSender(ctx5(t), "in", &goamqp.SenderOptions{SettlementMode: goamqp.SenderSettleModeSettled.Ptr()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 { // beyond the default credit window of 100: credit must be refilled
		if err := snd.Send(ctx5(t), goamqp.NewMessage([]byte(fmt.Sprint(i))), nil); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	for i := range 300 {
		d := <-ts.h.received
		if !d.Settled || string(d.Message.Data[0]) != fmt.Sprint(i) {
			t.Fatalf("delivery %d: settled=%v data=%q", i, d.Settled, d.Message.Data[0])
		}
	}
}

func TestGoAMQPExternalClientCertificate(t *testing.T) {
	ts := startServer(t, nil)
	cert := testcerts.Valid(t, "device-x509", nil, false, time.Now())
	ts.dial(t, &goamqp.ConnOptions{SASLType: goamqp.SASLTypeExternal(""),
		TLSConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert.TLS()}}})
	if cn := <-ts.h.certCN; cn != "device-x509" {
		t.Fatalf("EXTERNAL saw %q", cn)
	}
}

func TestGoAMQPRejectedOutcome(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	snd, err := s.NewSender(ctx5(t), "in/reject", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = snd.Send(ctx5(t), goamqp.NewMessage([]byte("x")), nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCond(ErrCondNotAllowed) {
		t.Fatalf("send error %v, want rejected with amqp:not-allowed", err)
	}
}

// The application settles later (after a durable write): the client's Send waits until then.
func TestGoAMQPDeferredAccept(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	snd, err := s.NewSender(ctx5(t), "in/hold", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- snd.Send(ctx5(t), goamqp.NewMessage([]byte("x")), nil) }()
	d := <-ts.h.held
	select {
	case err := <-done:
		t.Fatalf("Send returned %v before berth settled", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := d.Accept(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := d.Accept(); !errors.Is(err, ErrSettled) {
		t.Fatalf("second settle: %v", err)
	}
}

func TestGoAMQPLargeMessagesBothWays(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("dev", "secret"), MaxFrameSize: 16384}))
	big := bytes.Repeat([]byte("0123456789abcdef"), 1500000/16) // 1.5 MB, ~24 frames of 64 KiB
	snd, err := s.NewSender(ctx5(t), "in", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx5(t), goamqp.NewMessage(big), nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	if d := <-ts.h.received; !bytes.Equal(d.Message.Data[0], big) {
		t.Fatal("reassembled message differs")
	}

	rcv, err := s.NewReceiver(ctx5(t), "out", &goamqp.ReceiverOptions{Credit: 1, MaxMessageSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	l := <-ts.h.senders
	waitCredit(t, l)
	if _, err := l.Send(NewMessage(big), false); err != nil { // split into 16 KiB frames
		t.Fatal(err)
	}
	m, err := rcv.Receive(ctx5(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.GetData(), big) {
		t.Fatal("client got a different message")
	}
	if err := rcv.AcceptMessage(ctx5(t), m); err != nil {
		t.Fatal(err)
	}
	if st := <-ts.h.outcomes; st != (Accepted{}) {
		t.Fatalf("outcome %#v", st)
	}
}

func TestGoAMQPMessageTooLargeDetaches(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxMessageSize = 1000 })
	s := session(t, ts.dial(t, plain()))
	snd, err := s.NewSender(ctx5(t), "in", nil)
	if err != nil {
		t.Fatal(err)
	}
	// go-amqp reads the max-message-size of berth's attach reply and refuses locally; the
	// engine's own detach for an oversized message is tested with raw frames.
	err = snd.Send(ctx5(t), goamqp.NewMessage(make([]byte, 5000)), nil)
	if err == nil {
		t.Fatal("a message over max-message-size was sent")
	}
}

func waitCredit(t *testing.T, l *Link) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.Credit() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no credit from the client")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Credit and dispositions of messages berth sends: the client's credit limits berth, and each
// outcome (accepted, rejected, released, modified) comes back to the sender.
func TestGoAMQPCreditAndOutcomes(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	rcv, err := s.NewReceiver(ctx5(t), "out", &goamqp.ReceiverOptions{Credit: 4})
	if err != nil {
		t.Fatal(err)
	}
	l := <-ts.h.senders
	waitCredit(t, l)
	sent := 0
	for ; sent < 10; sent++ {
		if _, err := l.Send(NewMessage([]byte(fmt.Sprint(sent))), false); err != nil {
			if !errors.Is(err, ErrNoCredit) {
				t.Fatal(err)
			}
			break
		}
	}
	if sent != 4 {
		t.Fatalf("berth sent %d messages on a credit of 4", sent)
	}
	ctx := ctx5(t)
	want := []DeliveryState{Accepted{}, Rejected{Error: &Error{Condition: "x:bad", Description: "no"}}, Released{}, Modified{DeliveryFailed: true}}
	for i := range 4 {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch i {
		case 0:
			err = rcv.AcceptMessage(ctx, m)
		case 1:
			err = rcv.RejectMessage(ctx, m, &goamqp.Error{Condition: "x:bad", Description: "no"})
		case 2:
			err = rcv.ReleaseMessage(ctx, m)
		case 3:
			err = rcv.ModifyMessage(ctx, m, &goamqp.ModifyMessageOptions{DeliveryFailed: true})
		}
		if err != nil {
			t.Fatal(err)
		}
		got := <-ts.h.outcomes
		if fmt.Sprint(got) != fmt.Sprint(want[i]) {
			t.Fatalf("outcome %d: %#v, want %#v", i, got, want[i])
		}
	}
	// Settling gave credit back.
	waitCredit(t, l)
	if _, err := l.Send(NewMessage([]byte("more")), true); err != nil {
		t.Fatal(err)
	}
	if m, err := rcv.Receive(ctx, nil); err != nil || string(m.GetData()) != "more" {
		t.Fatalf("receive after credit: %v", err)
	}
}

func TestGoAMQPAttachRefused(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	_, err := s.NewReceiver(ctx5(t), "refuse", nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCond(ErrCondNotFound) {
		t.Fatalf("receiver attach: %v, want amqp:not-found", err)
	}
	_, err = s.NewSender(ctx5(t), "refuse", nil)
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCond(ErrCondNotFound) {
		t.Fatalf("sender attach: %v, want amqp:not-found", err)
	}
	// The session survives a refusal.
	if _, err := s.NewSender(ctx5(t), "in", nil); err != nil {
		t.Fatalf("attach after refusal: %v", err)
	}
}

func TestGoAMQPDetachWithError(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	rcv, err := s.NewReceiver(ctx5(t), "out", nil)
	if err != nil {
		t.Fatal(err)
	}
	l := <-ts.h.senders
	l.Close(Errorf(ErrCondUnauthorizedAccess, "token expired"))
	_, err = rcv.Receive(ctx5(t), nil)
	var le *goamqp.LinkError
	if !errors.As(err, &le) || le.RemoteErr == nil || le.RemoteErr.Condition != goamqp.ErrCond(ErrCondUnauthorizedAccess) {
		t.Fatalf("receive: %v, want detach with amqp:unauthorized-access", err)
	}
}

func TestGoAMQPCloseFromOutside(t *testing.T) {
	ts := startServer(t, nil)
	conn := ts.dial(t, plain())
	s := session(t, conn)
	rcv, err := s.NewReceiver(ctx5(t), "out", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := <-ts.h.conns
	c.Close(Errorf(ErrCondUnauthorizedAccess, "revoked"))
	_, err = rcv.Receive(ctx5(t), nil)
	var ce *goamqp.ConnError
	if !errors.As(err, &ce) || ce.RemoteErr == nil || ce.RemoteErr.Condition != goamqp.ErrCond(ErrCondUnauthorizedAccess) {
		t.Fatalf("receive: %v, want connection closed with amqp:unauthorized-access", err)
	}
	select {
	case <-ts.h.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Handler.Closed not called")
	}
}

func TestGoAMQPRequestResponseNode(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	rcv, err := s.NewReceiver(ctx5(t), "$echo", &goamqp.ReceiverOptions{
		TargetAddress: "reply-here", SettlementMode: goamqp.ReceiverSettleModeFirst.Ptr()})
	if err != nil {
		t.Fatal(err)
	}
	snd, err := s.NewSender(ctx5(t), "$echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []any{"req-1", uint64(42)} {
		msg := goamqp.NewMessage([]byte("ping"))
		msg.Properties = &goamqp.MessageProperties{MessageID: id, ReplyTo: ptr("reply-here")}
		if err := snd.Send(ctx5(t), msg, nil); err != nil {
			t.Fatal(err)
		}
		m, err := rcv.Receive(ctx5(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = rcv.AcceptMessage(ctx5(t), m)
		if m.Properties.CorrelationID != id || string(m.GetData()) != "ping" {
			t.Fatalf("reply correlation-id %#v (want %#v), data %q", m.Properties.CorrelationID, id, m.GetData())
		}
		if v := m.ApplicationProperties["status-code"]; v != int32(200) {
			t.Fatalf("status-code %#v", v)
		}
	}
}

// Both sides honour idle timeouts: the client announces 400 ms and gets heartbeats; berth announces
// 400 ms and go-amqp heartbeats too; the connection outlives several timeouts.
func TestGoAMQPIdleTimeoutHeartbeats(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.IdleTimeout = 400 * time.Millisecond })
	conn := ts.dial(t, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("dev", "secret"), IdleTimeout: 400 * time.Millisecond})
	s := session(t, conn)
	time.Sleep(1500 * time.Millisecond)
	snd, err := s.NewSender(ctx5(t), "in", nil)
	if err != nil {
		t.Fatalf("after idle period: %v", err)
	}
	if err := snd.Send(ctx5(t), goamqp.NewMessage([]byte("alive")), nil); err != nil {
		t.Fatal(err)
	}
}

// The no-SASL start (what the Node Azure SDKs do): go-amqp without a SASL type sends the bare AMQP
// header; the connection then works, and the front end authenticates it later (CBS).
func TestGoAMQPNoSASLStart(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.AuthTimeout = 300 * time.Millisecond })
	conn := ts.dial(t, nil)
	c := <-ts.h.conns
	if c.SASLMechanism() != "" {
		t.Fatalf("mechanism %q", c.SASLMechanism())
	}
	c.Authenticated("cbs") // as after an accepted put-token
	s := session(t, conn)
	time.Sleep(500 * time.Millisecond) // past the auth deadline: still open
	snd, err := s.NewSender(ctx5(t), "in", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx5(t), goamqp.NewMessage([]byte("x")), nil); err != nil {
		t.Fatal(err)
	}
}

// Without authentication the no-SASL connection is closed at the deadline, and the client hears why.
func TestGoAMQPNoSASLUnauthenticatedClosed(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.AuthTimeout = 300 * time.Millisecond })
	conn := ts.dial(t, nil)
	s := session(t, conn)
	rcv, err := s.NewReceiver(ctx5(t), "out", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rcv.Receive(ctx5(t), nil)
	var ce *goamqp.ConnError
	if !errors.As(err, &ce) || ce.RemoteErr == nil || ce.RemoteErr.Condition != goamqp.ErrCond(ErrCondUnauthorizedAccess) {
		t.Fatalf("receive: %v, want the connection closed with amqp:unauthorized-access", err)
	}
}

// Replies wait for credit: a reply node receiver with manual credit gets its replies once it grants.
func TestGoAMQPRepliesWaitForCredit(t *testing.T) {
	ts := startServer(t, nil)
	s := session(t, ts.dial(t, plain()))
	rcv, err := s.NewReceiver(ctx5(t), "$echo", &goamqp.ReceiverOptions{Credit: -1})
	if err != nil {
		t.Fatal(err)
	}
	snd, err := s.NewSender(ctx5(t), "$echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		msg := goamqp.NewMessage([]byte(fmt.Sprint(i)))
		msg.Properties = &goamqp.MessageProperties{MessageID: fmt.Sprint(i)}
		if err := snd.Send(ctx5(t), msg, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := rcv.IssueCredit(3); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		m, err := rcv.Receive(ctx5(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.Properties.CorrelationID != fmt.Sprint(i) {
			t.Fatalf("reply %d correlation %v", i, m.Properties.CorrelationID)
		}
		_ = rcv.AcceptMessage(ctx5(t), m)
	}
}

// A client that connects and never starts TLS is dropped at the auth deadline.
func TestSilentTLSClientDropped(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.AuthTimeout = 300 * time.Millisecond })
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatal("server wrote to a client that never said hello")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("dropped after %s", el)
	}
}
