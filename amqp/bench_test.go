package amqp

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

func benchMessage() *Message {
	return &Message{
		Annotations:           Map{{Symbol("iothub-connection-device-id"), "dev1"}, {Symbol("iothub-enqueuedtime"), time.UnixMilli(1764938022748)}},
		Properties:            &Properties{MessageID: "m-1", To: "/devices/dev1/messages/events", ContentType: "application/json", ContentEncoding: "utf-8"},
		ApplicationProperties: Map{{"run", "bench"}, {"seq", int64(1)}},
		Data:                  [][]byte{[]byte(`{"temperature":21.5,"humidity":40,"nonce":"769a10c30443"}`)},
	}
}

func BenchmarkMessageEncode(b *testing.B) {
	m := benchMessage()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMessageDecode(b *testing.B) {
	raw, _ := benchMessage().Marshal()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := UnmarshalMessage(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTransferThroughput: a raw client sends pre-built settled transfers of a 1 KiB message
// over net.Pipe; berth decodes each frame and message and hands it to the handler.
func BenchmarkTransferThroughput(b *testing.B) {
	h := newTestHandler()
	h.received = make(chan *Delivery, 1)
	go func() {
		for range h.received {
		}
	}()
	cli, srv := net.Pipe()
	defer cli.Close()
	go func() { _ = Serve(context.Background(), srv, &Config{Handler: h}) }()
	rc := &rawClient{t: b, nc: cli}
	rc.open()
	rc.begin()
	rc.frame(0, &Attach{Name: "s", Role: RoleSender, SndSettleMode: SndSettled, Target: &Target{Address: "in"}}, nil)
	rc.next()                                       // attach
	rc.next()                                       // flow
	go func() { _, _ = io.Copy(io.Discard, cli) }() // berth's flows
	msg, _ := NewMessage(make([]byte, 1024)).Marshal()
	var frame []byte
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	id := uint32(0)
	for b.Loop() {
		frame, _ = appendFrame(frame[:0], frameAMQP, 0, &Transfer{DeliveryID: &id, DeliveryTag: []byte{1}, Settled: true}, msg)
		if _, err := cli.Write(frame); err != nil {
			b.Fatal(err)
		}
		id++
	}
}
