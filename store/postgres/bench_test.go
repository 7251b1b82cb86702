package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
)

// BenchmarkWriteConcurrent is store/sqlite's benchmark of the same name on
// PostgreSQL: writers at once, each iteration one Put IfNotExists of a
// 600-byte document, with the pool at pgxpool's default size
// (max(4, CPUs)) and larger. PostgreSQL already shares a WAL flush between
// the backends that commit at the same moment, but no more of them than
// the pool has connections. walsync/op is the server's WAL fsyncs per Put
// (pg_stat_wal, the whole server's: other clients add to it).
func BenchmarkWriteConcurrent(b *testing.B) {
	ctx := context.Background()
	admin, err := pgxpool.New(ctx, testDSN())
	if err == nil {
		err = admin.Ping(ctx)
	}
	if err != nil {
		b.Skipf("PostgreSQL at %s: %v", redact(testDSN()), err)
	}
	defer admin.Close()
	doc := []byte(`{"registrationId":"device-00000001","assignedHub":"berth-hub.azure-devices.net","status":"assigned","payload":{"model":"sensor-v2"},"pad":"` + strings.Repeat("x", 480) + `"}`)
	for _, pool := range []int{0, 16, 32} {
		for _, writers := range []int{1, 16, 32} {
			name := fmt.Sprintf("pool-%d/writers-%d", pool, writers)
			if pool == 0 {
				name = fmt.Sprintf("pool-default/writers-%d", writers)
			}
			b.Run(name, func(b *testing.B) {
				var rb [6]byte
				_, _ = rand.Read(rb[:])
				schema := "berth_bench_" + hex.EncodeToString(rb[:])
				defer func() {
					_, _ = admin.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
				}()
				dsn := testDSN()
				if pool > 0 {
					sep := "?"
					if strings.Contains(dsn, "?") {
						sep = "&"
					}
					dsn += fmt.Sprintf("%spool_max_conns=%d", sep, pool)
				}
				s, err := postgres.Open(ctx, dsn, postgres.WithSchema(schema))
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				var sync0, sync1 int64
				_ = admin.QueryRow(ctx, `SELECT wal_sync FROM pg_stat_wal`).Scan(&sync0)
				b.ResetTimer()
				var next atomic.Int64
				var wg sync.WaitGroup
				for range writers {
					wg.Go(func() {
						for {
							i := next.Add(1) - 1
							if i >= int64(b.N) {
								return
							}
							if _, err := s.Put(ctx, store.Record{Kind: store.KindRegistration, Key: fmt.Sprintf("device-%08d", i), Index: "group", Data: doc}, store.Cond{IfNotExists: true}); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				_ = admin.QueryRow(ctx, `SELECT wal_sync FROM pg_stat_wal`).Scan(&sync1)
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
				b.ReportMetric(float64(sync1-sync0)/float64(b.N), "walsync/op")
			})
		}
	}
}
