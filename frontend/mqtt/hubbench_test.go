package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/store/sqlite"
)

// Hub features end to end over a real TLS MQTT connection on loopback:
// a direct-method round trip, twin GET and reported PATCH round trips,
// and C2D delivery throughput. Device (a raw MQTT client) and server
// share the process, so B/op and allocs/op count both sides. The figures
// are in docs/benchmarks.md ("Twins, methods, C2D and X.509").

// benchHub is a hub front end on st with dev-1 connected (TLS, SAS), its
// log discarded: the test fixture logs at debug level into a buffer,
// which would be measured too.
type benchHub struct {
	st      store.Store
	reg     *hub.Registry
	c2d     *hub.CloudToDevice
	methods *hub.Methods
	dev     *rawClient
	ts      *testServer
}

// benchStores are the stores a hub benchmark runs on: the in-memory one
// (front end and domain alone) and SQLite on a temp file (synchronous=FULL,
// one fsync per write transaction, as berth serve runs).
var benchStores = []struct {
	name string
	open func(b *testing.B) store.Store
}{
	{"memstore", func(*testing.B) store.Store { return memstore.New() }},
	{"sqlite", func(b *testing.B) store.Store {
		s, err := sqlite.Open(filepath.Join(b.TempDir(), "bench.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		return s
	}},
}

func newBenchHub(b *testing.B, st store.Store, filters ...string) *benchHub {
	b.Helper()
	h := &benchHub{st: st}
	clock := func() time.Time { return testNow }
	h.reg = hub.NewRegistry(st, clock)
	h.reg.CacheSendViews() // as a single-node server does
	settings, err := hub.LoadOrCreateSettings(context.Background(), st, hubName)
	if err != nil {
		b.Fatal(err)
	}
	svc := hub.NewServices(st, h.reg, &recordingSink{}, clock, nil)
	h.c2d, h.methods = svc.CloudToDevice, svc.Methods
	cfg := Config{
		Logger: slog.New(slog.DiscardHandler),
		Hub:    &HubConfig{Name: hubName, Settings: settings, Now: clock, Services: svc},
	}
	ts := startServer(b, cfg, &fakeDPS{})
	h.ts = ts
	if _, err := h.reg.Create(context.Background(), hubName, &hub.Device{DeviceID: "dev-1",
		Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}},
	}); err != nil {
		b.Fatal(err)
	}
	h.dev = ts.dialRaw(b)
	if rc := h.dev.connectHub("dev-1", hubUsername("dev-1"), validToken(b, "dev-1"), 0); rc != 0 {
		b.Fatalf("CONNACK %d", rc)
	}
	for i, f := range filters {
		if got := h.dev.subscribe(uint16(i+1), 1, f); got[0] > 1 {
			b.Fatalf("SUBACK %v for %s", got, f)
		}
	}
	return h
}

// BenchmarkHubMethodRoundTrip is Methods.Invoke with the device connected
// and subscribed: the request goes out as a PUBLISH, the device answers at
// once (QoS 0), and Invoke returns the answer. One iteration is one
// method call.
func BenchmarkHubMethodRoundTrip(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			h := newBenchHub(b, s.open(b), "$iothub/methods/POST/#")
			dev := h.dev
			// The device: answer every request on its own goroutine,
			// reporting errors with b.Error (Fatal is for the benchmark's).
			done := make(chan struct{})
			var closing atomic.Bool
			go func() {
				defer close(done)
				var out bytes.Buffer
				for {
					pk, err := dev.next(time.Minute)
					if err != nil {
						if !closing.Load() {
							b.Errorf("device read: %v", err)
						}
						return
					}
					_, rid, ok := strings.Cut(pk.TopicName, "?$rid=")
					if pk.FixedHeader.Type != packets.Publish || !ok {
						b.Errorf("device got %s %q", packetName(pk.FixedHeader.Type), pk.TopicName)
						return
					}
					resp := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
						TopicName: "$iothub/methods/res/200/?$rid=" + rid, Payload: []byte(`{"ok":true}`), ProtocolVersion: 4}
					out.Reset()
					if err := resp.PublishEncode(&out); err != nil {
						b.Error(err)
						return
					}
					if _, err := dev.nc.Write(out.Bytes()); err != nil {
						if !closing.Load() {
							b.Errorf("device write: %v", err)
						}
						return
					}
				}
			}()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				res, err := h.methods.Invoke(ctx, hubName, "dev-1", &hub.MethodRequest{MethodName: "reboot", Payload: []byte(`{"delay":1}`)})
				if err != nil {
					b.Fatal(err)
				}
				if res.Status != 200 {
					b.Fatalf("status %d", res.Status)
				}
			}
			b.StopTimer()
			closing.Store(true)
			dev.nc.Close()
			<-done
		})
	}
}

// twinRoundTrip publishes one pre-encoded twin request per iteration (so
// that the loop measures the server, not the client's encoder) and reads
// its answer.
func twinRoundTrip(b *testing.B, h *benchHub, requests [][]byte, status int) {
	b.Helper()
	want := fmt.Sprintf("$iothub/twin/res/%d/", status)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := h.dev.nc.Write(requests[i%len(requests)]); err != nil {
			b.Fatal(err)
		}
		pk := h.dev.read()
		if pk.FixedHeader.Type != packets.Publish || !strings.HasPrefix(pk.TopicName, want) {
			b.Fatalf("got %s %q %s; want a %d answer", packetName(pk.FixedHeader.Type), pk.TopicName, pk.Payload, status)
		}
	}
}

// BenchmarkHubTwinGet is a device's twin GET: PUBLISH
// $iothub/twin/GET/?$rid=…, answer on $iothub/twin/res/200/ with the
// desired and reported documents (small ones).
func BenchmarkHubTwinGet(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			h := newBenchHub(b, s.open(b), twinResponseFilter)
			tw := hub.NewTwins(h.st, h.reg, nil)
			if _, err := tw.PatchReported(context.Background(), hubName, "dev-1", []byte(`{"battery":55,"fw":{"version":"1.4.2"}}`)); err != nil {
				b.Fatal(err)
			}
			req := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "$iothub/twin/GET/?$rid=1", ProtocolVersion: 4}
			twinRoundTrip(b, h, [][]byte{encodePacket(b, req.PublishEncode)}, 200)
		})
	}
}

// BenchmarkHubTwinPatchReported is a device's reported PATCH at QoS 0:
// the answer (204 with the new $version) comes once the twin is written.
func BenchmarkHubTwinPatchReported(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			h := newBenchHub(b, s.open(b), twinResponseFilter)
			reqs := make([][]byte, 16)
			for i := range reqs {
				req := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
					TopicName: fmt.Sprintf("$iothub/twin/PATCH/properties/reported/?$rid=%d", i),
					Payload:   fmt.Appendf(nil, `{"battery":%d,"temperature":21.5,"fw":{"version":"1.4.2","state":"running"}}`, 50+i), ProtocolVersion: 4}
				reqs[i] = encodePacket(b, req.PublishEncode)
			}
			twinRoundTrip(b, h, reqs, 204)
		})
	}
}

// c2dDeleteSignal counts completed C2D messages (deletes from the queue)
// and frees a slot of the sender's window for each. It also counts write
// calls (each one transaction, one fsync on SQLite).
type c2dDeleteSignal struct {
	store.Store
	window  chan struct{}
	windows map[string]chan struct{} // per device key (hub/device), when several devices

	deleted atomic.Int64
	writes  atomic.Int64
	target  int64
	done    chan struct{}
}

func (s *c2dDeleteSignal) Put(ctx context.Context, rec store.Record, cond store.Cond) (store.Record, error) {
	s.writes.Add(1)
	return s.Store.Put(ctx, rec, cond)
}

func (s *c2dDeleteSignal) Apply(ctx context.Context, recs []store.Record) ([]store.Record, error) {
	s.writes.Add(1)
	out, err := s.Store.Apply(ctx, recs)
	if err == nil {
		for _, r := range recs {
			if r.Delete && r.Kind == store.KindC2D {
				s.completed(r.Key)
			}
		}
	}
	return out, err
}

// completed frees a slot of the sender's window and ends the run after
// the last message.
func (s *c2dDeleteSignal) completed(key string) {
	window := s.window
	if s.windows != nil {
		window = s.windows[key[:strings.LastIndexByte(key, '/')]]
	}
	select {
	case <-window:
	default:
	}
	if s.deleted.Add(1) == s.target {
		close(s.done)
	}
}

func (s *c2dDeleteSignal) Delete(ctx context.Context, kind store.Kind, key, ifMatch string) error {
	s.writes.Add(1)
	err := s.Store.Delete(ctx, kind, key, ifMatch)
	if err == nil && kind == store.KindC2D {
		s.completed(key)
	}
	return err
}

// BenchmarkHubC2DThroughput is C2D delivery with the device subscribed at
// QoS 1: a sender enqueues b.N messages, keeping at most
// hub.MaxC2DQueueDepth in the queue; the server delivers them (at most
// 10 in flight), the device PUBACKs each, and the benchmark ends when
// the last one is completed and the queue is empty. One iteration is one
// message: send, lock, deliver, PUBACK, complete. writes/msg counts store
// write calls (each one transaction, one fsync on SQLite); cpu-µs/op is the
// process's user + system CPU per message (getrusage), sender, server and
// device together.
func BenchmarkHubC2DThroughput(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			sig := &c2dDeleteSignal{Store: s.open(b), window: make(chan struct{}, hub.MaxC2DQueueDepth),
				target: int64(b.N), done: make(chan struct{})}
			h := newBenchHub(b, sig, c2dFilter)
			ctx := context.Background()
			body := []byte(`{"command":"setInterval","value":30}`)
			var puback bytes.Buffer
			b.ReportAllocs()
			var ru0, ru1 syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			b.ResetTimer()
			sig.writes.Store(0)
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				for range b.N {
					sig.window <- struct{}{}
					m := &hub.CloudMessage{Ack: "none", Body: body, App: []hub.Property{{Name: "kind", Value: "config"}}}
					if _, err := h.c2d.Send(ctx, hubName, "dev-1", m); err != nil {
						b.Errorf("send: %v", err)
						return
					}
				}
			}()
			for range b.N {
				pk := h.dev.read()
				if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || !strings.HasPrefix(pk.TopicName, "devices/dev-1/messages/devicebound/") {
					b.Fatalf("got %s %q QoS %d; want a C2D delivery", packetName(pk.FixedHeader.Type), pk.TopicName, pk.FixedHeader.Qos)
				}
				ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ProtocolVersion: 4}
				puback.Reset()
				if err := ack.PubackEncode(&puback); err != nil {
					b.Fatal(err)
				}
				if _, err := h.dev.nc.Write(puback.Bytes()); err != nil {
					b.Fatal(err)
				}
			}
			<-sent
			select {
			case <-sig.done:
			case <-time.After(30 * time.Second):
				b.Fatalf("%d of %d messages completed", sig.deleted.Load(), b.N)
			}
			b.StopTimer()
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
			b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
			if n, err := h.c2d.Count(ctx, hubName, "dev-1"); err != nil || n != 0 {
				b.Fatalf("queue holds %d messages (%v); want 0", n, err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
			b.ReportMetric(float64(sig.writes.Load())/float64(b.N), "writes/msg")
		})
	}
}

// BenchmarkHubC2DThroughputParallel is BenchmarkHubC2DThroughput with
// several devices, each connected and subscribed at QoS 1, each with its
// own sender (a service sending to a fleet): b.N messages in all, split
// evenly. The Sends of different devices are concurrent store writes,
// which SQLite's group commit can share one transaction and one fsync
// between (one device's Sends are serialized by the hub's device lock).
func BenchmarkHubC2DThroughputParallel(b *testing.B) {
	for _, s := range benchStores {
		for _, devices := range []int{8, 32} {
			b.Run(fmt.Sprintf("%s/devices-%d", s.name, devices), func(b *testing.B) {
				sig := &c2dDeleteSignal{Store: s.open(b), windows: map[string]chan struct{}{},
					target: int64(b.N), done: make(chan struct{})}
				h := newBenchHub(b, sig, c2dFilter)
				ctx := context.Background()
				ids := make([]string, devices)
				clients := make([]*rawClient, devices)
				for i := range ids {
					ids[i] = fmt.Sprintf("dev-%d", i+1)
					sig.windows[hubName+"/"+ids[i]] = make(chan struct{}, hub.MaxC2DQueueDepth)
					if i == 0 {
						clients[0] = h.dev
						continue
					}
					if _, err := h.reg.Create(ctx, hubName, &hub.Device{DeviceID: ids[i],
						Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}},
					}); err != nil {
						b.Fatal(err)
					}
					c := h.ts.dialRaw(b)
					if rc := c.connectHub(ids[i], hubUsername(ids[i]), validToken(b, ids[i]), 0); rc != 0 {
						b.Fatalf("CONNACK %d", rc)
					}
					if got := c.subscribe(1, 1, "devices/"+ids[i]+"/messages/devicebound/#"); got[0] > 1 {
						b.Fatalf("SUBACK %v", got)
					}
					clients[i] = c
				}
				body := []byte(`{"command":"setInterval","value":30}`)
				b.ReportAllocs()
				var ru0, ru1 syscall.Rusage
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
				b.ResetTimer()
				sig.writes.Store(0)
				var wg sync.WaitGroup
				for i, id := range ids {
					n := b.N / devices
					if i < b.N%devices {
						n++
					}
					window := sig.windows[hubName+"/"+id]
					wg.Go(func() { // the service, sending to this device
						for range n {
							window <- struct{}{}
							m := &hub.CloudMessage{Ack: "none", Body: body, App: []hub.Property{{Name: "kind", Value: "config"}}}
							if _, err := h.c2d.Send(ctx, hubName, id, m); err != nil {
								b.Errorf("send to %s: %v", id, err)
								return
							}
						}
					})
					dev := clients[i]
					wg.Go(func() { // the device
						var puback bytes.Buffer
						for range n {
							pk, err := dev.next(30 * time.Second)
							if err != nil {
								b.Errorf("%s: read: %v", id, err)
								return
							}
							if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || !strings.HasPrefix(pk.TopicName, "devices/"+id+"/messages/devicebound/") {
								b.Errorf("%s got %s %q QoS %d; want a C2D delivery", id, packetName(pk.FixedHeader.Type), pk.TopicName, pk.FixedHeader.Qos)
								return
							}
							ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ProtocolVersion: 4}
							puback.Reset()
							if err := ack.PubackEncode(&puback); err != nil {
								b.Error(err)
								return
							}
							if _, err := dev.nc.Write(puback.Bytes()); err != nil {
								b.Errorf("%s: write: %v", id, err)
								return
							}
						}
					})
				}
				wg.Wait()
				if b.Failed() {
					return
				}
				select {
				case <-sig.done:
				case <-time.After(30 * time.Second):
					b.Fatalf("%d of %d messages completed", sig.deleted.Load(), b.N)
				}
				b.StopTimer()
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
				cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
				b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
				for _, id := range ids {
					if n, err := h.c2d.Count(ctx, hubName, id); err != nil || n != 0 {
						b.Fatalf("%s's queue holds %d messages (%v); want 0", id, n, err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
				b.ReportMetric(float64(sig.writes.Load())/float64(b.N), "writes/msg")
			})
		}
	}
}
