package amqp

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

func seedValues(f *testing.F) {
	for _, v := range []any{nil, uint32(7), "s", Symbol("y"), List{uint64(1), Map{{"k", []byte{1}}}},
		[]Symbol{"a"}, Described{DescriptorSelectorFilter, "x"}, Array{Code: codeInt, Values: []any{int32(1)}}} {
		b, _ := Marshal(v)
		f.Add(b)
	}
}

// FuzzDecode: the decoder never panics, and what it decodes re-encodes to something it decodes
// again to the same value.
func FuzzDecode(f *testing.F) {
	seedValues(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := Unmarshal(b)
		if err != nil {
			return
		}
		out, err := Marshal(v)
		if err != nil {
			return // e.g. an array of lists of mixed element types
		}
		if _, err := Unmarshal(out); err != nil {
			t.Fatalf("re-encoding of % x does not decode: %v", b, err)
		}
	})
}

// FuzzPerformative covers every performative and SASL frame body.
func FuzzPerformative(f *testing.F) {
	one := uint32(1)
	for _, p := range []marshaler{&Open{ContainerID: "c"}, &Begin{}, &Attach{Name: "n", Source: &Source{Address: "a"}},
		&Flow{Handle: &one}, &Transfer{DeliveryID: &one}, &Disposition{State: Rejected{}}, &Detach{Error: &Error{Condition: "c"}},
		&SASLInit{Mechanism: MechPLAIN, InitialResponse: []byte("\x00u\x00p")}, &SASLOutcome{}} {
		b, _ := appendFrame(nil, 0, 0, p, nil)
		f.Add(b[8:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeFrameBody(b)
		if err != nil {
			return
		}
		if m, ok := p.(marshaler); ok {
			if _, err := appendFrame(nil, 0, 0, m, nil); err != nil {
				t.Fatalf("decoded %T does not encode: %v", p, err)
			}
		}
	})
}

// FuzzMessage covers message sections.
func FuzzMessage(f *testing.F) {
	m := &Message{Header: &Header{Durable: true}, Annotations: Map{{Symbol("a"), int32(1)}},
		Properties: &Properties{MessageID: UUID{1}, To: "t"}, ApplicationProperties: Map{{"k", "v"}},
		Data: [][]byte{[]byte("x")}, Footer: Map{}}
	b, _ := m.Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := UnmarshalMessage(b)
		if err != nil {
			return
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("decoded message does not encode: %v", err)
		}
		if _, err := UnmarshalMessage(out); err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
	})
}

// fuzzConn feeds bytes to a whole connection and drains what berth writes; Serve must return
// (no hang, no panic) once the input ends.
func fuzzConn(t *testing.T, prefix, b []byte) {
	cli, srv := net.Pipe()
	done := make(chan error, 1)
	cfg := &Config{Handler: newTestHandler(), AuthTimeout: time.Second, IdleTimeout: time.Second}
	go func() { done <- Serve(context.Background(), srv, cfg) }()
	go func() { _, _ = io.Copy(io.Discard, cli) }()
	_ = cli.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = cli.Write(prefix)
	_, _ = cli.Write(b)
	_ = cli.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve hung")
	}
}

func frames(ps ...marshaler) []byte {
	var out []byte
	for _, p := range ps {
		typ := uint8(frameAMQP)
		switch p.(type) {
		case *SASLInit, *SASLResponse:
			typ = frameSASL
		}
		out, _ = appendFrame(out, typ, 0, p, nil)
	}
	return out
}

// FuzzConnection: bytes after the no-SASL header.
func FuzzConnection(f *testing.F) {
	id := uint32(0)
	msg, _ := NewMessage([]byte("x")).Marshal()
	seed := frames(&Open{ContainerID: "c", MaxFrameSize: 65536}, &Begin{IncomingWindow: 9, OutgoingWindow: 9},
		&Attach{Name: "s", Role: RoleSender, Target: &Target{Address: "in"}})
	seed, _ = appendFrame(seed, 0, 0, &Transfer{DeliveryID: &id, DeliveryTag: []byte{1}}, msg)
	seed = append(seed, frames(&Attach{Name: "r", Handle: 1, Role: RoleReceiver, Source: &Source{Address: "$echo"}},
		&Flow{Handle: &id, LinkCredit: &id, Drain: true, Echo: true}, &Disposition{Role: RoleReceiver, First: 0},
		&Detach{Handle: 0}, &End{}, &Close{})...)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) { fuzzConn(t, headerAMQP[:], b) })
}

// FuzzSASL: bytes after the SASL header.
func FuzzSASL(f *testing.F) {
	f.Add(frames(&SASLInit{Mechanism: MechPLAIN, InitialResponse: []byte("\x00dev\x00secret")}))
	f.Add(append(frames(&SASLInit{Mechanism: MechANONYMOUS}), headerAMQP[:]...))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzConn(t, headerSASL[:], b) })
}
