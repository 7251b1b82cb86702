package sqlite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/sqlite"
)

// registrationDoc is the size and shape of a DPS registration record
// (~600 bytes), the document on berth's hottest write path.
func registrationDoc(i int) []byte {
	return fmt.Appendf(nil, `{"registrationId":"device-%08d","createdDateTimeUtc":"2025-01-01T00:00:00.0000000Z",`+
		`"assignedHub":"berth-hub.azure-devices.net","deviceId":"device-%08d","status":"assigned","substatus":"initialAssignment",`+
		`"lastUpdatedDateTimeUtc":"2025-01-01T00:00:01.0000000Z","etag":"IjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCI=",`+
		`"tpm":{"authenticationKey":"AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAxsj2gUScTk1UjuioeTlfGYZrrimExB+bScH75adUMRIi2UOMxG1kw4y+9RW/IVoMl4e620VxZad0ARX2gUqVjYO7KPVt3dyKhZS3dkcvfBisBhP1XH9B33VqHG9SHnbnQXdBUaCgKAfxome8UmBKfe+naTsE5fkvjb/do3/dD6l4sGBwFCnKRdln4XpM03zLpoHFao8zOwt8l/uP3qUIxmCYv9A7m69Ms+5/pCkTu/rK4mRDsfhZ0QLfbzVI6zQFOKF/rwsfBtFeWlWtcuJMKlXdD8TXWElTzgh7JS4qhFzreL0c1mI0GCj+Aws0usZh7dLIVPnlgZcBhgy1SSDQMQ=="},`+
		`"payload":{"model":"sensor-v2","firmware":"1.4.2"}}`, i, i)
}

// deviceKey spreads keys over the key space, as real registration IDs are,
// so that inserts land on random B-tree pages rather than appending.
func deviceKey(prefix string, i int) string {
	z := uint64(i) + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return fmt.Sprintf("%s%016x", prefix, z^(z>>31))
}

func openBench(b *testing.B) store.Store {
	b.Helper()
	s, err := sqlite.Open(filepath.Join(b.TempDir(), "bench.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// prefill loads n registrations in large transactions, so the write
// benchmarks can be run against a realistically full table:
// BERTH_BENCH_PREFILL=1000000 go test -run x -bench Put ./store/sqlite
func prefill(b *testing.B, s store.Store) {
	b.Helper()
	n, _ := strconv.Atoi(os.Getenv("BERTH_BENCH_PREFILL"))
	const batch = 10000
	for start := 0; start < n; start += batch {
		recs := make([]store.Record, 0, batch)
		for i := start; i < min(start+batch, n); i++ {
			recs = append(recs, store.Record{Kind: store.KindRegistration, Key: deviceKey("device-", -1-i), Index: "group", Data: registrationDoc(i)})
		}
		if _, err := s.Apply(context.Background(), recs); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPut(b *testing.B) {
	s := openBench(b)
	prefill(b, s)
	ctx := context.Background()
	docs := make([][]byte, 64)
	for i := range docs {
		docs[i] = registrationDoc(i)
	}
	b.SetBytes(int64(len(docs[0])))
	for i := 0; b.Loop(); i++ {
		// A first registration: the key is new, as in a device's first
		// contact, and the write is conditional as the DPS handler's is.
		rec := store.Record{Kind: store.KindRegistration, Key: deviceKey("device-", i), Index: "group", Data: docs[i%len(docs)]}
		if _, err := s.Put(ctx, rec, store.Cond{IfNotExists: true}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	s := openBench(b)
	prefill(b, s)
	ctx := context.Background()
	const n = 1000
	recs := make([]store.Record, n)
	for i := range recs {
		recs[i] = store.Record{Kind: store.KindRegistration, Key: deviceKey("device-", i), Index: "group", Data: registrationDoc(i)}
	}
	if _, err := s.Apply(ctx, recs); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		if _, err := s.Get(ctx, store.KindRegistration, recs[(i*7919)%n].Key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkApply3(b *testing.B) {
	s := openBench(b)
	prefill(b, s)
	ctx := context.Background()
	doc := registrationDoc(0)
	for i := 0; b.Loop(); i++ {
		// What a device assignment writes: registration, operation, hub identity.
		dev := deviceKey("device-", i)
		recs := []store.Record{
			{Kind: store.KindRegistration, Key: dev, Index: "group", Data: doc},
			{Kind: store.KindOperation, Key: deviceKey("op-", i), Index: dev, Data: doc[:200]},
			{Kind: store.KindDevice, Key: "hub/" + dev, Index: "hub", Data: doc[:400]},
		}
		if _, err := s.Apply(ctx, recs); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGetParallel(b *testing.B) {
	s := openBench(b)
	ctx := context.Background()
	const n = 1000
	recs := make([]store.Record, n)
	for i := range recs {
		recs[i] = store.Record{Kind: store.KindRegistration, Key: deviceKey("device-", i), Data: registrationDoc(i)}
	}
	if _, err := s.Apply(ctx, recs); err != nil {
		b.Fatal(err)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.Get(ctx, store.KindRegistration, recs[i%n].Key); err != nil {
				b.Fatal(err)
			}
			i += 7
		}
	})
}

// BenchmarkPutFullVsEmpty measures what the 1M-record target is about:
// registration latency on a full store relative to an empty one. Puts
// alternate between the two in small rounds so that load on the machine
// falls on both sides alike; it reports both medians and their ratio.
// Run with BERTH_BENCH_PREFILL=1000000; skipped without it.
func BenchmarkPutFullVsEmpty(b *testing.B) {
	if os.Getenv("BERTH_BENCH_PREFILL") == "" {
		b.Skip("set BERTH_BENCH_PREFILL to the number of records in the full store")
	}
	empty := openBench(b)
	full := openBench(b)
	prefill(b, full)
	ctx := context.Background()
	doc := registrationDoc(0)
	var lat [2][]time.Duration
	const round = 50
	i := 0
	for b.Loop() {
		side := (i / round) % 2
		s := []store.Store{empty, full}[side]
		rec := store.Record{Kind: store.KindRegistration, Key: deviceKey("new-", i), Index: "group", Data: doc}
		start := time.Now()
		if _, err := s.Put(ctx, rec, store.Cond{IfNotExists: true}); err != nil {
			b.Fatal(err)
		}
		lat[side] = append(lat[side], time.Since(start))
		i++
	}
	if len(lat[0]) == 0 || len(lat[1]) == 0 {
		return
	}
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(float64(len(d)-1)*p)].Nanoseconds())
	}
	e50, f50 := pct(lat[0], 0.5), pct(lat[1], 0.5)
	e99, f99 := pct(lat[0], 0.99), pct(lat[1], 0.99)
	b.ReportMetric(e50, "empty-p50-ns")
	b.ReportMetric(f50, "full-p50-ns")
	b.ReportMetric(f50/e50, "p50-ratio")
	b.ReportMetric(e99, "empty-p99-ns")
	b.ReportMetric(f99, "full-p99-ns")
	b.ReportMetric(f99/e99, "p99-ratio")
}

// BenchmarkWriteConcurrent has several writers at once, as concurrent
// registrations or Sends to different devices are: each iteration is one
// write call, a registration's Put IfNotExists or an assignment's Apply of
// three records, b.N of them spread over the writers. cpu-µs/op is the
// process's user + system CPU per call (getrusage); writes/s is the
// throughput. Fsyncs per call are counted from outside:
// strace -f -c -e trace=fsync,fdatasync at two -benchtime lengths.
func BenchmarkWriteConcurrent(b *testing.B) {
	doc := registrationDoc(0)
	for _, call := range []string{"put", "apply3"} {
		for _, writers := range []int{1, 4, 16, 64} {
			b.Run(fmt.Sprintf("%s/writers-%d", call, writers), func(b *testing.B) {
				s := openBench(b)
				ctx := context.Background()
				var next atomic.Int64
				var ru0, ru1 syscall.Rusage
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
				b.ResetTimer()
				var wg sync.WaitGroup
				for range writers {
					wg.Go(func() {
						for {
							i := int(next.Add(1) - 1)
							if i >= b.N {
								return
							}
							dev := deviceKey("device-", i)
							var err error
							if call == "put" {
								_, err = s.Put(ctx, store.Record{Kind: store.KindRegistration, Key: dev, Index: "group", Data: doc}, store.Cond{IfNotExists: true})
							} else {
								_, err = s.Apply(ctx, []store.Record{
									{Kind: store.KindRegistration, Key: dev, Index: "group", Data: doc},
									{Kind: store.KindOperation, Key: deviceKey("op-", i), Index: dev, Data: doc[:200]},
									{Kind: store.KindDevice, Key: "hub/" + dev, Index: "hub", Data: doc[:400]},
								})
							}
							if err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
				cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
				b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
			})
		}
	}
}
