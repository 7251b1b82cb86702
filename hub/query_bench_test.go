package hub

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/sqlite"
)

// BenchmarkQuery runs three queries over 10k and 100k device twins on
// SQLite: a tag equality, a reported-property range and a GROUP BY. Each
// device has tags {location: plant-(i%10), floor: i%7} and a reported
// battery of i%100. The figures are in docs/benchmarks.md:
//
//	go test ./hub -run '^$' -bench BenchmarkQuery -benchmem -benchtime 3x
func BenchmarkQuery(b *testing.B) {
	const hubName = "bench.berth.test"
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprintf("sqlite/%dk", n/1000), func(b *testing.B) {
			st, err := sqlite.Open(filepath.Join(b.TempDir(), "q.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			seedQueryBench(b, st, hubName, n)
			twins := NewTwins(st, NewRegistry(st, nil), nil)
			for _, c := range []struct{ name, q string }{
				{"tag-equality", "SELECT * FROM devices WHERE tags.location = 'plant-3' AND tags.floor = 5"},
				{"reported-range", "SELECT deviceId FROM devices WHERE properties.reported.battery >= 40 AND properties.reported.battery < 42"},
				{"group-by", "SELECT tags.location AS location, COUNT() AS n FROM devices GROUP BY tags.location"},
			} {
				b.Run(c.name, func(b *testing.B) {
					b.ReportAllocs()
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
				})
			}
		})
	}
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
