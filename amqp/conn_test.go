package amqp

// Engine tests with raw frames over net.Pipe: what no well-behaved client sends.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

type rawClient struct {
	t    testing.TB
	nc   net.Conn
	hdr  [8]byte
	done chan error
}

func startRaw(t testing.TB, cfg *Config) *rawClient {
	t.Helper()
	cli, srv := net.Pipe()
	if cfg.Handler == nil {
		cfg.Handler = newTestHandler()
	}
	rc := &rawClient{t: t, nc: cli, done: make(chan error, 1)}
	go func() { rc.done <- Serve(context.Background(), srv, cfg) }()
	t.Cleanup(func() { _ = cli.Close() })
	_ = cli.SetDeadline(time.Now().Add(10 * time.Second))
	return rc
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.nc.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

func (rc *rawClient) frame(ch uint16, p marshaler, payload []byte) {
	rc.t.Helper()
	b, err := appendFrame(nil, frameAMQP, ch, p, payload)
	if err != nil {
		rc.t.Fatal(err)
	}
	rc.write(b)
}

func (rc *rawClient) readHeader() [8]byte {
	rc.t.Helper()
	var h [8]byte
	if _, err := io.ReadFull(rc.nc, h[:]); err != nil {
		rc.t.Fatalf("read header: %v", err)
	}
	return h
}

// next reads the next non-empty frame's performative.
func (rc *rawClient) next() any {
	rc.t.Helper()
	for {
		_, body, err := readFrame(rc.nc, rc.hdr[:], 1<<24)
		if err != nil {
			rc.t.Fatalf("read frame: %v", err)
		}
		if len(body) == 0 {
			continue
		}
		p, err := decodeFrameBody(body)
		if err != nil {
			rc.t.Fatalf("decode frame: %v", err)
		}
		return p
	}
}

// open does the no-SASL start and the open exchange.
func (rc *rawClient) open() {
	rc.t.Helper()
	rc.write(headerAMQP[:])
	if h := rc.readHeader(); h != headerAMQP {
		rc.t.Fatalf("header %q", h[:])
	}
	rc.frame(0, &Open{ContainerID: "raw", MaxFrameSize: 65536, ChannelMax: 10}, nil)
	if _, ok := rc.next().(*Open); !ok {
		rc.t.Fatal("no open")
	}
}

func (rc *rawClient) begin() {
	rc.t.Helper()
	rc.frame(0, &Begin{NextOutgoingID: 0, IncomingWindow: 100, OutgoingWindow: 100}, nil)
	if _, ok := rc.next().(*Begin); !ok {
		rc.t.Fatal("no begin")
	}
}

// expectClose reads frames until close and checks its condition.
func (rc *rawClient) expectClose(cond Symbol) {
	rc.t.Helper()
	for {
		p := rc.next()
		if c, ok := p.(*Close); ok {
			if c.Error == nil || c.Error.Condition != cond {
				rc.t.Fatalf("close %v, want %s", c.Error, cond)
			}
			// After a framing error berth may already have hung up.
			b, _ := appendFrame(nil, frameAMQP, 0, &Close{}, nil)
			_, _ = rc.nc.Write(b)
			return
		}
	}
}

func TestNoSASLStartAndAnonymousPlainLinks(t *testing.T) {
	rc := startRaw(t, &Config{})
	rc.open()
	rc.begin()
	rc.frame(0, &Attach{Name: "s", Handle: 0, Role: RoleSender, Target: &Target{Address: "in"}}, nil)
	a, ok := rc.next().(*Attach)
	if !ok || a.Role != RoleReceiver || a.Target == nil || a.Target.Address != "in" || a.MaxMessageSize == 0 {
		t.Fatalf("attach reply %#v", a)
	}
	f, ok := rc.next().(*Flow)
	if !ok || f.LinkCredit == nil || *f.LinkCredit == 0 {
		t.Fatalf("flow %#v", f)
	}
	msg, _ := NewMessage([]byte("hi")).Marshal()
	id := uint32(0)
	rc.frame(0, &Transfer{Handle: 0, DeliveryID: &id, DeliveryTag: []byte{1}}, msg)
	d, ok := rc.next().(*Disposition)
	if !ok || d.First != 0 || !d.Settled || d.State != (Accepted{}) {
		t.Fatalf("disposition %#v", d)
	}
	rc.frame(0, &Close{}, nil)
	if _, ok := rc.next().(*Close); !ok {
		t.Fatal("no close answer")
	}
	if err := <-rc.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestBadProtocolHeaderAnswered(t *testing.T) {
	rc := startRaw(t, &Config{})
	rc.write([]byte("AMQP\x02\x01\x00\x00"))
	if h := rc.readHeader(); h != headerAMQP {
		t.Fatalf("answer %q", h[:])
	}
	if err := <-rc.done; err == nil {
		t.Fatal("Serve accepted a TLS protocol header")
	}
	rc2 := startRaw(t, &Config{RequireSASL: true})
	rc2.write(headerAMQP[:])
	if h := rc2.readHeader(); h != headerSASL {
		t.Fatalf("RequireSASL answered %q", h[:])
	}
}

func TestMalformedFramesCloseWithCondition(t *testing.T) {
	cases := []struct {
		name  string
		bytes []byte
		cond  Symbol
	}{
		{"garbage performative", []byte{0, 0, 0, 10, 2, 0, 0, 0, 0xff, 0xff}, ErrCondDecodeError},
		{"not described", []byte{0, 0, 0, 9, 2, 0, 0, 0, 0x40}, ErrCondDecodeError},
		{"doff below 2", []byte{0, 0, 0, 8, 1, 0, 0, 0}, ErrCondFramingError},
		{"size below 8", []byte{0, 0, 0, 4, 2, 0, 0, 0}, ErrCondFramingError},
		{"frame beyond max-frame-size", []byte{0, 0x10, 0, 0, 2, 0, 0, 0}, ErrCondFramingError},
		{"SASL frame type", []byte{0, 0, 0, 12, 2, 1, 0, 0, 0, 0x53, 0x44, 0x45}, ErrCondFramingError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := startRaw(t, &Config{})
			rc.open()
			rc.write(c.bytes)
			rc.expectClose(c.cond)
			select {
			case <-rc.done:
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not return")
			}
		})
	}
}

func TestProtocolViolationsCloseWithCondition(t *testing.T) {
	t.Run("channel beyond channel-max", func(t *testing.T) {
		rc := startRaw(t, &Config{MaxSessions: 4})
		rc.open()
		rc.frame(9, &Begin{IncomingWindow: 1, OutgoingWindow: 1}, nil)
		rc.expectClose(ErrCondFramingError)
	})
	t.Run("handle beyond handle-max", func(t *testing.T) {
		rc := startRaw(t, &Config{MaxLinksPerSession: 2})
		rc.open()
		rc.begin()
		rc.frame(0, &Attach{Name: "x", Handle: 5, Role: RoleSender, Target: &Target{Address: "in"}}, nil)
		rc.expectClose(ErrCondFramingError)
	})
	t.Run("peer max-frame-size too small", func(t *testing.T) {
		rc := startRaw(t, &Config{})
		rc.write(headerAMQP[:])
		rc.readHeader()
		rc.frame(0, &Open{ContainerID: "raw", MaxFrameSize: 100}, nil)
		if _, ok := rc.next().(*Open); !ok {
			t.Fatal("no open before close")
		}
		rc.expectClose(ErrCondFrameSizeTooSmall)
	})
	t.Run("frame before open", func(t *testing.T) {
		rc := startRaw(t, &Config{})
		rc.write(headerAMQP[:])
		rc.readHeader()
		rc.frame(0, &Begin{IncomingWindow: 1, OutgoingWindow: 1}, nil)
		if _, ok := rc.next().(*Open); !ok {
			t.Fatal("no open before close")
		}
		rc.expectClose(ErrCondNotAllowed)
	})
	t.Run("transfer without credit detaches", func(t *testing.T) {
		rc := startRaw(t, &Config{})
		rc.open()
		rc.begin()
		// berth sends; a transfer from the peer on it is not allowed.
		rc.frame(0, &Attach{Name: "r", Handle: 0, Role: RoleReceiver, Source: &Source{Address: "out"}}, nil)
		rc.next()
		id := uint32(0)
		rc.frame(0, &Transfer{Handle: 0, DeliveryID: &id, DeliveryTag: []byte{1}}, []byte{0, 0x53, 0x77, 0x40})
		rc.expectClose(ErrCondNotAllowed)
	})
	t.Run("message over max-message-size detaches", func(t *testing.T) {
		rc := startRaw(t, &Config{MaxMessageSize: 100})
		rc.open()
		rc.begin()
		rc.frame(0, &Attach{Name: "s", Handle: 0, Role: RoleSender, Target: &Target{Address: "in"}}, nil)
		rc.next()
		rc.next()
		id := uint32(0)
		msg, _ := NewMessage(make([]byte, 200)).Marshal()
		rc.frame(0, &Transfer{Handle: 0, DeliveryID: &id, DeliveryTag: []byte{1}, More: true}, msg[:50])
		rc.frame(0, &Transfer{Handle: 0, More: false}, msg[50:])
		d, ok := rc.next().(*Detach)
		if !ok || d.Error == nil || d.Error.Condition != ErrCondMessageSizeExceeded {
			t.Fatalf("got %#v", d)
		}
	})
	t.Run("transfer beyond credit detaches", func(t *testing.T) {
		h := newTestHandler()
		rc := startRaw(t, &Config{Handler: h})
		rc.open()
		rc.begin()
		rc.frame(0, &Attach{Name: "s", Handle: 0, Role: RoleSender, Target: &Target{Address: "in/hold"}}, nil)
		rc.next()
		f := rc.next().(*Flow)
		msg, _ := NewMessage([]byte("x")).Marshal()
		for i := uint32(0); i <= *f.LinkCredit; i++ {
			id := i
			rc.frame(0, &Transfer{Handle: 0, DeliveryID: &id, DeliveryTag: []byte{byte(i)}}, msg)
		}
		d, ok := rc.next().(*Detach)
		if !ok || d.Error == nil || d.Error.Condition != ErrCondTransferLimitExceeded {
			t.Fatalf("got %#v", d)
		}
	})
}

func TestUnauthenticatedDeadline(t *testing.T) {
	rc := startRaw(t, &Config{AuthTimeout: 200 * time.Millisecond})
	rc.open() // no SASL, no CBS: never authenticated
	start := time.Now()
	rc.expectClose(ErrCondUnauthorizedAccess)
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("closed after %s", el)
	}
}

func TestUnauthenticatedDeadlineDuringHeader(t *testing.T) {
	rc := startRaw(t, &Config{AuthTimeout: 200 * time.Millisecond})
	select {
	case err := <-rc.done:
		if err == nil {
			t.Fatal("Serve returned nil for a silent peer")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a silent connection outlived the auth deadline")
	}
}

func TestIdleTimeoutClosesSilentPeer(t *testing.T) {
	h := newTestHandler()
	rc := startRaw(t, &Config{Handler: h, IdleTimeout: 300 * time.Millisecond})
	rc.write(headerSASL[:])
	rc.readHeader()
	rc.next() // mechanisms
	b, _ := appendFrame(nil, frameSASL, 0, &SASLInit{Mechanism: MechANONYMOUS}, nil)
	rc.write(b)
	if o, ok := rc.next().(*SASLOutcome); !ok || o.Code != SASLOK {
		t.Fatalf("outcome %#v", o)
	}
	rc.write(headerAMQP[:])
	rc.readHeader()
	rc.frame(0, &Open{ContainerID: "raw", MaxFrameSize: 65536}, nil)
	o := rc.next().(*Open)
	if o.IdleTimeout != 300 {
		t.Fatalf("advertised idle-time-out %d", o.IdleTimeout)
	}
	rc.expectClose(ErrCondResourceLimitExceeded)
}

func TestSASLPlainRefusedThenHangUp(t *testing.T) {
	rc := startRaw(t, &Config{})
	rc.write(headerSASL[:])
	rc.readHeader()
	m := rc.next().(*SASLMechanisms)
	if !bytes.Contains([]byte(fmtSymbols(m.Mechanisms)), []byte("MSSBCBS PLAIN ANONYMOUS")) {
		t.Fatalf("mechanisms %v", m.Mechanisms)
	}
	b, _ := appendFrame(nil, frameSASL, 0, &SASLInit{Mechanism: MechPLAIN, InitialResponse: []byte("\x00dev\x00nope")}, nil)
	rc.write(b)
	if o := rc.next().(*SASLOutcome); o.Code != SASLAuth {
		t.Fatalf("code %d", o.Code)
	}
	if err := <-rc.done; err == nil {
		t.Fatal("refused SASL returned nil")
	}
	// EXTERNAL without a certificate is not offered, and refused.
	rc2 := startRaw(t, &Config{})
	rc2.write(headerSASL[:])
	rc2.readHeader()
	rc2.next()
	b, _ = appendFrame(nil, frameSASL, 0, &SASLInit{Mechanism: MechEXTERNAL}, nil)
	rc2.write(b)
	if o := rc2.next().(*SASLOutcome); o.Code != SASLAuth {
		t.Fatalf("EXTERNAL without certificate: code %d", o.Code)
	}
}

func fmtSymbols(s []Symbol) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(string(x))
	}
	return b.String()
}

// Sessions come and go; link handles are reused after detach.
func TestSessionsAndHandlesReused(t *testing.T) {
	rc := startRaw(t, &Config{})
	rc.open()
	for range 3 {
		rc.begin()
		for range 2 {
			rc.frame(0, &Attach{Name: "s", Handle: 0, Role: RoleSender, Target: &Target{Address: "in"}}, nil)
			rc.next()
			rc.next()
			rc.frame(0, &Detach{Handle: 0, Closed: true}, nil)
			if d, ok := rc.next().(*Detach); !ok || !d.Closed {
				t.Fatalf("detach answer %#v", d)
			}
		}
		rc.frame(0, &End{}, nil)
		if _, ok := rc.next().(*End); !ok {
			t.Fatal("no end answer")
		}
	}
}

func TestServeReturnsOnContextCancel(t *testing.T) {
	cli, srv := net.Pipe()
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, &Config{Handler: newTestHandler()}) }()
	rc := &rawClient{t: t, nc: cli}
	rc.open()
	cancel()
	rc.expectClose(ErrCondConnectionForced)
	select {
	case err := <-done:
		var ae *Error
		if !errors.As(err, &ae) || ae.Condition != ErrCondConnectionForced {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// The bytes of unsettled messages a connection holds are bounded; settling gives them back.
func TestConnectionBufferedBytesBounded(t *testing.T) {
	h := newTestHandler()
	rc := startRaw(t, &Config{Handler: h, MaxConnBuffered: 1000})
	rc.open()
	rc.begin()
	rc.frame(0, &Attach{Name: "s", Handle: 0, Role: RoleSender, Target: &Target{Address: "in/hold"}}, nil)
	rc.next()
	rc.next()
	msg, _ := NewMessage(make([]byte, 390)).Marshal() // 400 bytes with its section header
	id := uint32(0)
	send := func() {
		i := id
		rc.frame(0, &Transfer{Handle: 0, DeliveryID: &i, DeliveryTag: []byte{byte(i)}}, msg)
		id++
	}
	send()
	send()
	d := <-h.held
	<-h.held
	go func() { _ = d.Accept() }()
	if disp, ok := rc.next().(*Disposition); !ok || disp.First != 0 {
		t.Fatalf("disposition %#v", disp)
	}
	send() // 800 bytes held again: within the bound
	<-h.held
	send() // 1200: beyond
	rc.expectClose(ErrCondResourceLimitExceeded)
}

// A drain with nothing to send consumes the credit: berth answers with the delivery count advanced
// and no credit left. An echo flow is answered.
func TestDrainAndEcho(t *testing.T) {
	rc := startRaw(t, &Config{})
	rc.open()
	rc.begin()
	rc.frame(0, &Attach{Name: "r", Handle: 0, Role: RoleReceiver, Source: &Source{Address: "out"}}, nil)
	a := rc.next().(*Attach)
	if a.InitialDeliveryCount == nil || *a.InitialDeliveryCount != 0 || a.Source == nil || a.Source.Address != "out" {
		t.Fatalf("attach reply %#v", a)
	}
	h, dc, credit, nid := uint32(0), uint32(0), uint32(5), uint32(0)
	rc.frame(0, &Flow{NextIncomingID: &nid, IncomingWindow: 100, OutgoingWindow: 100, Handle: &h,
		DeliveryCount: &dc, LinkCredit: &credit, Drain: true}, nil)
	f, ok := rc.next().(*Flow)
	if !ok || f.Handle == nil || *f.DeliveryCount != 5 || *f.LinkCredit != 0 || !f.Drain {
		t.Fatalf("drain answer %#v", f)
	}
	rc.frame(0, &Flow{NextIncomingID: &nid, IncomingWindow: 100, OutgoingWindow: 100, Echo: true}, nil)
	if f, ok := rc.next().(*Flow); !ok || f.Handle != nil || f.IncomingWindow == 0 {
		t.Fatalf("echo answer %#v", f)
	}
}
