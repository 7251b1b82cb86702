package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/stream"
)

// BenchmarkHubTelemetry is QoS 1 telemetry end to end: N devices on TLS
// MQTT connections, each keeping up to K PUBLISHes unacknowledged, into the
// telemetry stream on an embedded JetStream with SyncAlways (a PUBACK only
// for a message on disk), as berth serve runs. One iteration is one
// message acknowledged. Devices and server share the process; cpu-µs/op is
// the process's user + system time per message (both sides), which a shared
// machine disturbs less than the rate.
func BenchmarkHubTelemetry(b *testing.B) {
	for _, c := range []struct{ devices, inflight int }{{50, 1}, {50, 8}} {
		b.Run(fmt.Sprintf("devices-%d/inflight-%d", c.devices, c.inflight), func(b *testing.B) {
			benchHubTelemetry(b, c.devices, c.inflight)
		})
	}
}

func benchHubTelemetry(b *testing.B, devices, inflight int) {
	ctx := context.Background()
	st := memstore.New()
	clock := func() time.Time { return testNow }
	reg := hub.NewRegistry(st, clock)
	settings, err := hub.LoadOrCreateSettings(ctx, st, hubName)
	if err != nil {
		b.Fatal(err)
	}
	sink, err := stream.Open(ctx, stream.Config{StoreDir: b.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sink.Close() })
	svc := hub.NewServices(st, reg, sink, clock, nil)
	ts := startServer(b, Config{Logger: slog.New(slog.DiscardHandler),
		Hub: &HubConfig{Name: hubName, Settings: settings, Now: clock, Services: svc}}, &fakeDPS{})
	devs := make([]*rawClient, devices)
	for i := range devs {
		id := "tel-" + strconv.Itoa(i)
		if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: id,
			Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}},
		}); err != nil {
			b.Fatal(err)
		}
		devs[i] = ts.dialRaw(b)
		if rc := devs[i].connectHub(id, hubUsername(id), validToken(b, id), 0); rc != 0 {
			b.Fatalf("CONNACK %d", rc)
		}
	}
	body := bytes.Repeat([]byte("x"), 256)
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, d := range devs {
		n := b.N / devices
		if i < b.N%devices {
			n++
		}
		wg.Go(func() {
			runTelemetryDevice(b, d, "devices/tel-"+strconv.Itoa(i)+"/messages/events/", body, n, inflight)
		})
	}
	wg.Wait()
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
}

// runTelemetryDevice publishes n QoS 1 messages with up to inflight
// unacknowledged, and checks the PUBACKs come in order.
func runTelemetryDevice(b *testing.B, d *rawClient, topic string, body []byte, n, inflight int) {
	slots := make(chan struct{}, inflight)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for want := 1; want <= n; want++ {
			pk, err := d.next(time.Minute)
			if err != nil {
				b.Errorf("read: %v", err)
				return
			}
			if pk.FixedHeader.Type != packets.Puback || int(pk.PacketID) != (want-1)%65535+1 {
				b.Errorf("got %s %d, want PUBACK %d", packetName(pk.FixedHeader.Type), pk.PacketID, want)
				return
			}
			<-slots
		}
	}()
	var buf bytes.Buffer
	for i := 1; i <= n; i++ {
		select {
		case slots <- struct{}{}:
		case <-done:
			return
		}
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16((i-1)%65535 + 1),
			TopicName: topic, Payload: body, ProtocolVersion: 4}
		buf.Reset()
		if err := pk.PublishEncode(&buf); err != nil {
			b.Error(err)
			return
		}
		if _, err := d.nc.Write(buf.Bytes()); err != nil {
			b.Errorf("write: %v", err)
			return
		}
	}
	<-done
}
