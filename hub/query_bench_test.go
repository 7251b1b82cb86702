package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
	"github.com/berth-iot/berth/store/sqlite"
)

// BenchmarkQuery runs three queries over 10k and 100k device twins on
// SQLite and PostgreSQL: a tag equality, a reported-property range and a
// GROUP BY. Each device has tags {location: plant-(i%10), floor: i%7} and a
// reported battery of i%100. Besides time and allocations it reports
// cpu-ms/op, the process's CPU time per query (what the wall time is on an
// idle machine, near enough), and peak-heap-MB, the largest heap sampled
// every millisecond while the queries ran: what the streaming keeps,
// whatever the registry's size. The
// figures are in docs/benchmarks.md:
//
//	go test ./hub -run '^$' -bench BenchmarkQuery -benchmem -benchtime 3x -timeout 30m
//
// PostgreSQL is BERTH_TEST_POSTGRES (default: the local test database), in a
// schema of its own dropped afterwards; unreachable, it is skipped.
func BenchmarkQuery(b *testing.B) {
	const hubName = "bench.berth.test"
	for _, kind := range []string{"sqlite", "postgres"} {
		for _, n := range []int{10000, 100000} {
			b.Run(fmt.Sprintf("%s/%dk", kind, n/1000), func(b *testing.B) {
				st := openQueryBenchStore(b, kind)
				seedQueryBench(b, st, hubName, n)
				twins := NewTwins(st, NewRegistry(st, nil), nil)
				for _, c := range []struct{ name, q string }{
					{"tag-equality", "SELECT * FROM devices WHERE tags.location = 'plant-3' AND tags.floor = 5"},
					{"reported-range", "SELECT deviceId FROM devices WHERE properties.reported.battery >= 40 AND properties.reported.battery < 42"},
					{"group-by", "SELECT tags.location AS location, COUNT() AS n FROM devices GROUP BY tags.location"},
				} {
					b.Run(c.name, func(b *testing.B) {
						b.ReportAllocs()
						runtime.GC()
						stop, cpu0 := samplePeakHeap(), cpuTime()
						for b.Loop() {
							// The whole answer, every page of the default size.
							cont, rows := "", 0
							for {
								p, err := twins.Query(context.Background(), hubName, c.q, 0, cont)
								if err != nil {
									b.Fatal(err)
								}
								rows += len(p.Items)
								if cont = p.Continuation; cont == "" {
									break
								}
							}
							if rows == 0 {
								b.Fatal("no rows")
							}
						}
						b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
						b.ReportMetric(float64(stop())/(1<<20), "peak-heap-MB")
					})
				}
			})
		}
	}
}

func openQueryBenchStore(b *testing.B, kind string) store.Store {
	if kind == "sqlite" {
		st, err := sqlite.Open(filepath.Join(b.TempDir(), "q.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = st.Close() })
		return st
	}
	dsn := os.Getenv("BERTH_TEST_POSTGRES")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	ctx := context.Background()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	schema := "berth_bench_" + hex.EncodeToString(rnd[:])
	st, err := postgres.Open(ctx, dsn, postgres.WithSchema(schema))
	if err != nil {
		b.Skipf("PostgreSQL at BERTH_TEST_POSTGRES or the local test database: %v", err)
	}
	b.Cleanup(func() {
		_ = st.Close()
		if conn, err := pgx.Connect(ctx, dsn); err == nil {
			_, _ = conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
			_ = conn.Close(ctx)
		}
	})
	return st
}

// samplePeakHeap samples the heap's object bytes (runtime/metrics, which
// does not stop the world as ReadMemStats does) every millisecond until
// the returned func is called, which answers the largest value seen.
func samplePeakHeap() func() uint64 {
	done := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var max uint64
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > max {
				max = v
			}
			select {
			case <-done:
				peak <- max
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); return <-peak }
}

// cpuTime is the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func seedQueryBench(b *testing.B, st store.Store, hubName string, n int) {
	ctx := context.Background()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	var recs []store.Record
	flush := func() {
		if _, err := st.Apply(ctx, recs); err != nil {
			b.Fatal(err)
		}
		recs = recs[:0]
	}
	for i := range n {
		d := newDevice("dev-"+strconv.Itoa(i), now)
		d.Authentication = &Authentication{Type: "sas", SymmetricKey: &SymmetricKey{PrimaryKey: "k", SecondaryKey: "k"}}
		drec, err := encodeDevice(hubName, d)
		if err != nil {
			b.Fatal(err)
		}
		tw := newTwinRecord(d.GenerationID, now)
		tw.Tags["location"] = "plant-" + strconv.Itoa(i%10)
		tw.Tags["floor"] = i % 7
		tw.Reported.Props["battery"] = i % 100
		trec, err := twinRecordFor(hubName, d.DeviceID, tw)
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, drec, trec)
		if len(recs) >= 2000 {
			flush()
		}
	}
	if len(recs) > 0 {
		flush()
	}
}
