package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/berth-iot/berth/hub"
)

// benchMessage is a typical telemetry message: 1 KiB body, the system
// properties the hub stamps, two application properties.
func benchMessage() *hub.Message {
	m := &hub.Message{Hub: "hub.example.lan", DeviceID: "bench-device", Body: make([]byte, 1024), Enqueued: time.Now()}
	m.System = []hub.Property{
		{Name: hub.PropMessageID, Value: "0b6a7a6e-2f0b-4c9e-9a52-3c2f4f5e6d7c"},
		{Name: hub.PropContentType, Value: "application/json"},
		{Name: hub.PropContentEncoding, Value: "utf-8"},
		{Name: hub.PropConnDeviceID, Value: m.DeviceID},
		{Name: hub.PropConnAuthMethod, Value: `{"scope":"device","type":"sas","issuer":"iothub"}`},
		{Name: hub.PropConnGenerationID, Value: "638000000000000000"},
		{Name: hub.PropMessageSource, Value: "Telemetry"},
	}
	m.App = []hub.Property{{Name: "alert", Value: "false"}, {Name: "unit", Value: "C"}}
	return m
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// cpuClock reads the process's user + system CPU time (getrusage).
func cpuClock() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCost starts measuring what a benchmark of s costs per message and
// returns the function that reports it: the process's CPU (server and
// callers together, which a shared machine disturbs less than the rate)
// and, when berth syncs the stream itself, its block fsyncs.
func reportCost(b *testing.B, s *Stream) func() {
	cpu0, syncs0 := cpuClock(), s.blockSyncs()
	return func() {
		b.ReportMetric(float64(cpuClock()-cpu0)/1e3/float64(b.N), "cpu-µs/op")
		if s.blocks != nil {
			b.ReportMetric(float64(s.blockSyncs()-syncs0)/float64(b.N), "fsyncs/op")
		}
	}
}

func (s *Stream) blockSyncs() int {
	if s.blocks == nil {
		return 0
	}
	s.blocks.mu.Lock()
	defer s.blocks.mu.Unlock()
	return s.blocks.syncs
}

// runAppend measures Append serially and from 8 and 64 concurrent
// producers (whatever -cpu says). The parallel runs show whether concurrent
// acknowledged writes share fsyncs: with group commit (commit.go) they do.
func runAppend(b *testing.B, s *Stream) {
	// Generous: the machine's disk may be shared; a timeout should mean a
	// hang, not a slow fsync.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.Run("serial", func(b *testing.B) {
		defer reportCost(b, s)()
		m := benchMessage()
		b.SetBytes(int64(len(m.Body)))
		b.ResetTimer()
		for range b.N {
			if err := s.Append(ctx, m); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})
	for _, producers := range []int{8, 64} {
		b.Run(fmt.Sprintf("producers-%d", producers), func(b *testing.B) {
			defer reportCost(b, s)()
			// SetParallelism multiplies GOMAXPROCS.
			procs := runtime.GOMAXPROCS(0)
			b.SetParallelism((producers + procs - 1) / procs)
			b.SetBytes(1024)
			b.RunParallel(func(pb *testing.PB) {
				m := benchMessage()
				for pb.Next() {
					if err := s.Append(ctx, m); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b)
		})
	}
	// AppendAsync, as the MQTT front end uses it: each producer (a device
	// connection) keeps several messages in flight, so more messages wait
	// per group commit than there are producers.
	for _, pc := range []struct{ producers, inflight int }{{8, 8}, {64, 8}} {
		b.Run(fmt.Sprintf("async-%dx%d", pc.producers, pc.inflight), func(b *testing.B) {
			defer reportCost(b, s)()
			procs := runtime.GOMAXPROCS(0)
			b.SetParallelism((pc.producers + procs - 1) / procs)
			b.SetBytes(1024)
			b.RunParallel(func(pb *testing.PB) {
				m := benchMessage()
				slots := make(chan struct{}, pc.inflight)
				done := func(err error) {
					if err != nil {
						b.Error(err)
					}
					<-slots
				}
				for pb.Next() {
					slots <- struct{}{}
					s.AppendAsync(ctx, m, done)
				}
				for range pc.inflight {
					slots <- struct{}{}
				}
			})
			reportRate(b)
		})
	}
}

func BenchmarkAppendEmbedded(b *testing.B) {
	for _, mode := range []struct {
		name                         string
		sync, perMessage, serverSync bool
	}{
		{"SyncAlways", true, false, false}, // production: group commit, berth's fsync per group (blocksync.go)
		// Group commit as before blocksync.go: the server's SyncAlways,
		// groups of 16 or more as atomic batches.
		{"SyncAlways-AtomicBatch", true, false, true},
		// The per-message publish Open falls back to without atomic
		// batches, i.e. Append before group commit.
		{"SyncAlways-PerMessage", true, true, true},
		{"NoSync", false, false, false}, // what SyncAlways costs; not a production mode
	} {
		b.Run(mode.name, func(b *testing.B) {
			cfg := embeddedConfig(b)
			cfg.noAtomic = mode.perMessage
			cfg.serverSync = mode.serverSync
			s, err := open(context.Background(), cfg, mode.sync)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			runAppend(b, s)
		})
	}
}

func BenchmarkAppendExternal(b *testing.B) {
	s := openT(b, externalConfig(b))
	runAppend(b, s)
}

// BenchmarkAppendAsync is not Append: it publishes without waiting for each
// PubAck (up to 256 in flight, acks collected asynchronously), i.e. what a
// front end could do if it released PUBACKs as acks come back instead of
// holding one goroutine per message. With SyncAlways it gains nothing: the
// server still stores, and fsyncs, one message at a time.
func BenchmarkAppendAsync(b *testing.B) {
	for _, sync := range []bool{true, false} {
		name := "SyncAlways"
		if !sync {
			name = "NoSync"
		}
		b.Run(name, func(b *testing.B) {
			s, err := open(context.Background(), embeddedConfig(b), sync)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			js, err := jetstream.New(s.nc, jetstream.WithPublishAsyncMaxPending(256))
			if err != nil {
				b.Fatal(err)
			}
			// Wait for acks rather than failing when the window is full.
			stall := jetstream.WithStallWait(time.Minute)
			m := benchMessage()
			b.SetBytes(int64(len(m.Body)))
			b.ResetTimer()
			for range b.N {
				msg, err := encode(s.cfg.SubjectPrefix, m, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := js.PublishMsgAsync(msg, stall); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("async acks did not complete")
			}
			reportRate(b)
		})
	}
}

// BenchmarkAppendAtomicBatch publishes fixed-size JetStream atomic batches
// from one goroutine (nats-server ≥ 2.12, stream AllowAtomicPublish), the
// way the committer does but without Append's queue. With SyncAlways the
// server coalesces the fsync of a whole batch, so this is the ceiling of
// group commit. On an R1 file stream each batch is first staged in a
// temporary file store of its own, which costs about as much as a dozen
// single-message fsyncs: small batches are slower than single messages,
// large ones much faster (hence minAtomicR1).
func BenchmarkAppendAtomicBatch(b *testing.B) {
	for _, size := range []int{4, 16, 64, 256} {
		b.Run(fmt.Sprintf("batch-%d", size), func(b *testing.B) {
			s, err := open(context.Background(), embeddedConfig(b), true)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			info, err := s.js.Stream(ctx, s.cfg.StreamName)
			if err != nil {
				b.Fatal(err)
			}
			sc := info.CachedInfo().Config
			sc.AllowAtomicPublish = true
			if _, err := s.js.UpdateStream(ctx, sc); err != nil {
				b.Fatal(err)
			}
			m := benchMessage()
			var batchNo atomic.Int64
			b.SetBytes(int64(len(m.Body)))
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(size, b.N-done)
				id := fmt.Sprintf("b%d", batchNo.Add(1))
				for i := 1; i <= n; i++ {
					msg, err := encode(s.cfg.SubjectPrefix, m, time.Now())
					if err != nil {
						b.Fatal(err)
					}
					msg.Header["Nats-Batch-Id"] = []string{id}
					msg.Header["Nats-Batch-Sequence"] = []string{fmt.Sprint(i)}
					if i < n {
						if err := s.nc.PublishMsg(msg); err != nil {
							b.Fatal(err)
						}
						continue
					}
					msg.Header["Nats-Batch-Commit"] = []string{"1"}
					resp, err := s.nc.RequestMsg(msg, 10*time.Second)
					if err != nil {
						b.Fatal(err)
					}
					var ack struct {
						Error *struct {
							Description string `json:"description"`
						} `json:"error"`
						Count int `json:"count"`
					}
					if err := json.Unmarshal(resp.Data, &ack); err != nil || ack.Error != nil || ack.Count != n {
						b.Fatalf("batch commit: %s (%v)", resp.Data, err)
					}
				}
				done += n
			}
			reportRate(b)
		})
	}
}

// BenchmarkAppendShards spreads parallel appends over several streams of
// one embedded SyncAlways server. A stream stores its messages one at a time
// (one fsync each), but different streams fsync concurrently, so this is
// what partitioning the telemetry stream (by device hash) would buy.
func BenchmarkAppendShards(b *testing.B) {
	for _, shards := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("streams-%d", shards), func(b *testing.B) {
			s, err := open(context.Background(), embeddedConfig(b), true)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			for i := 1; i < shards; i++ {
				_, err := s.js.CreateStream(ctx, jetstream.StreamConfig{
					Name: fmt.Sprintf("SHARD_%d", i), Subjects: []string{fmt.Sprintf("shard%d.>", i)}, Storage: jetstream.FileStorage,
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			var next atomic.Int64
			b.SetParallelism(32)
			b.SetBytes(1024)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				m := benchMessage()
				shard := int(next.Add(1)) % shards
				prefix := s.cfg.SubjectPrefix
				if shard > 0 {
					prefix = fmt.Sprintf("shard%d", shard)
				}
				for pb.Next() {
					msg, err := encode(prefix, m, time.Now())
					if err != nil {
						b.Error(err)
						return
					}
					if _, err := s.js.PublishMsg(ctx, msg); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b)
		})
	}
}

// BenchmarkFsyncBaseline is the disk's floor for SyncAlways: append 1 KiB
// to a file and fsync it, as the JetStream file store does per message.
// Compare it with BenchmarkAppendEmbedded/SyncAlways/serial.
func BenchmarkFsyncBaseline(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "probe"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1024)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b)
}
