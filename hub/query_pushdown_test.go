package hub_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testenv"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/store/postgres"
	"github.com/berth-iot/berth/store/sqlite"
)

// TestQueryPushdownAgreesWithScan runs the same queries over the same
// twins on memstore, which has no ListWhere (every twin is scanned and
// evaluated in Go), and on SQLite and PostgreSQL, where the conditions on
// tags and properties are pushed down: the answers, page by page, must be
// the same. The twins hold values of every type at the paths compared,
// numbers written as integers and as decimals, a device without a twin
// record, a deleted device's leftover twin and another hub's twins.
func TestQueryPushdownAgreesWithScan(t *testing.T) {
	stores := map[string]store.Store{"memstore": memstore.New()}
	sq, err := sqlite.Open(filepath.Join(t.TempDir(), "q.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	stores["sqlite"] = sq
	if pg := openPushdownPostgres(t); pg != nil {
		stores["postgres"] = pg
	}
	ctx := context.Background()
	now := func() time.Time { return time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC) }
	for name, st := range stores {
		if _, ok := st.(store.Filterer); ok == (name == "memstore") {
			t.Fatalf("%s: Filterer %v", name, ok)
		}
		reg := hub.NewRegistry(st, now)
		twins := hub.NewTwins(st, reg, nil)
		for _, h := range []string{"q.example", "r.example"} {
			for i := range 40 {
				id := fmt.Sprintf("d%02d", i)
				if _, err := reg.Create(ctx, h, &hub.Device{DeviceID: id}); err != nil {
					t.Fatal(err)
				}
				if i == 39 {
					continue // never a twin record
				}
				var floor any = i % 5
				switch i % 7 {
				case 3:
					floor = fmt.Sprint(i % 5) // a string
				case 4:
					floor = float64(i%5) + 0.5
				case 5:
					floor = i%2 == 0
				}
				patch := map[string]any{"tags": map[string]any{"site": fmt.Sprintf("s%d", i%3), "floor": floor, "on": i%2 == 0}}
				if i%6 == 0 {
					patch["tags"].(map[string]any)["site"] = map[string]any{"x": 1}
				}
				if i%4 == 0 {
					patch["properties"] = map[string]any{"desired": map[string]any{"fw": fmt.Sprintf("1.%d", i%4), "cfg": map[string]any{"n": i}}}
				}
				b, _ := json.Marshal(patch)
				if _, err := twins.Patch(ctx, h, id, b, "*"); err != nil {
					t.Fatal(err)
				}
				if i%4 != 2 {
					continue
				}
				// Modules: one with a twin record, one never read.
				for _, mid := range []string{"m1", "$edgeAgent"} {
					if _, err := reg.CreateModule(ctx, h, &hub.Module{DeviceID: id, ModuleID: mid}); err != nil {
						t.Fatal(err)
					}
				}
				mp, _ := json.Marshal(map[string]any{"tags": map[string]any{"role": fmt.Sprintf("r%d", i%3)},
					"properties": map[string]any{"desired": map[string]any{"rate": i}}})
				if _, err := twins.Patch(ctx, h, hub.TwinID(id, "m1"), mp, "*"); err != nil {
					t.Fatal(err)
				}
			}
		}
		// A deleted device's leftover twin, under a device of the same ID.
		if err := reg.Delete(ctx, "q.example", "d10", "*"); err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Create(ctx, "q.example", &hub.Device{DeviceID: "d10"}); err != nil {
			t.Fatal(err)
		}
	}
	queries := []string{
		"SELECT deviceId FROM devices WHERE tags.site = 's1'",
		"SELECT deviceId FROM devices WHERE tags.floor = 2",
		"SELECT deviceId FROM devices WHERE tags.floor = '2'",
		"SELECT deviceId FROM devices WHERE tags.floor >= 2 AND tags.floor < 3.5",
		"SELECT deviceId FROM devices WHERE 2 < tags.floor",
		"SELECT deviceId FROM devices WHERE tags.floor > '1'",
		"SELECT deviceId FROM devices WHERE tags.on = true AND tags.site = 's0'",
		"SELECT deviceId FROM devices WHERE tags.floor = true",
		"SELECT deviceId FROM devices WHERE tags.floor < true",
		"SELECT deviceId FROM devices WHERE tags.site.x = 1",
		"SELECT deviceId FROM devices WHERE properties.desired.fw = '1.0'",
		"SELECT deviceId FROM devices WHERE properties.desired.cfg.n >= 20 AND tags.site <> 's2'",
		"SELECT deviceId FROM devices WHERE TAGS.site = 's2' OR tags.floor = 1",
		"SELECT deviceId FROM devices WHERE tags.site = 's1' AND NOT (tags.floor = 1)",
		"SELECT deviceId FROM devices WHERE tags.site = 's1' AND tags.site = 's2'",
		"SELECT deviceId, tags.floor FROM devices WHERE tags.site = 's0' AND status = 'enabled'",
		"SELECT * FROM devices WHERE tags.site = 's2'",
		"SELECT tags.floor AS f, COUNT() AS n FROM devices WHERE tags.on = false GROUP BY tags.floor",
		"SELECT * FROM devices.modules",
		"SELECT deviceId, moduleId FROM devices.modules WHERE tags.role = 'r1'",
		"SELECT moduleId, properties.desired.rate FROM devices.modules WHERE properties.desired.rate >= 20",
		"SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' AND deviceId IN ['d02', 'd10', 'd14']",
		"SELECT moduleId, COUNT() AS n FROM devices.modules GROUP BY moduleId",
	}
	for _, q := range queries {
		for _, size := range []int{0, 3} {
			var want string
			for _, name := range []string{"memstore", "sqlite", "postgres"} {
				st, ok := stores[name]
				if !ok {
					continue
				}
				got := allPages(t, hub.NewTwins(st, hub.NewRegistry(st, now), nil), "q.example", q, size)
				if name == "memstore" {
					want = got
					continue
				}
				if got != want {
					t.Errorf("%s, page size %d:\n%s: %s\nmemstore: %s", q, size, name, got, want)
				}
			}
		}
	}
}

// allPages is every page of a query, each page's items as JSON without
// their etags (each store makes its own).
func allPages(t *testing.T, twins *hub.Twins, hubName, q string, size int) string {
	t.Helper()
	out, cont := "", ""
	for range 100 {
		p, err := twins.Query(context.Background(), hubName, q, size, cont)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		for _, it := range p.Items {
			if m, ok := it.(map[string]any); ok {
				delete(m, "etag")
				delete(m, "deviceEtag")
			}
		}
		b, _ := json.Marshal(p.Items)
		out += string(b) + "|"
		if cont = p.Continuation; cont == "" {
			return out
		}
	}
	t.Fatalf("%s: no last page", q)
	return ""
}

// openPushdownPostgres is a PostgreSQL store in a schema of its own, or
// nil (a skip of that part) when there is none and none is required.
func openPushdownPostgres(t *testing.T) store.Store {
	dsn := os.Getenv("BERTH_TEST_POSTGRES")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	ctx := context.Background()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	schema := "berth_test_" + hex.EncodeToString(rnd[:])
	st, err := postgres.Open(ctx, dsn, postgres.WithSchema(schema))
	if err != nil {
		if testenv.ServicesRequired() {
			t.Fatalf("PostgreSQL: %v", err)
		}
		t.Logf("PostgreSQL not reachable, its part skipped: %v", err)
		return nil
	}
	t.Cleanup(func() {
		_ = st.Close()
		if conn, err := pgx.Connect(ctx, dsn); err == nil {
			_, _ = conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
			_ = conn.Close(ctx)
		}
	})
	return st
}

// readCounter is a store that counts the twin and device records the
// query reads from it, by the way it reads them.
type readCounter struct {
	store.Store
	mu       sync.Mutex
	listed   map[store.Kind]int // by List: a scan
	filtered int                // twins by ListWhere
	got      int                // device records by GetMany
}

func (c *readCounter) List(ctx context.Context, kind store.Kind, opts store.ListOptions) ([]store.Record, error) {
	recs, err := c.Store.List(ctx, kind, opts)
	c.mu.Lock()
	c.listed[kind] += len(recs)
	c.mu.Unlock()
	return recs, err
}

func (c *readCounter) ListWhere(ctx context.Context, kind store.Kind, opts store.ListOptions, preds []store.Pred) ([]store.Record, error) {
	recs, err := c.Store.(store.Filterer).ListWhere(ctx, kind, opts, preds)
	c.mu.Lock()
	c.filtered += len(recs)
	c.mu.Unlock()
	return recs, err
}

func (c *readCounter) GetMany(ctx context.Context, kind store.Kind, keys []string) ([]store.Record, error) {
	recs, err := c.Store.(store.Batcher).GetMany(ctx, kind, keys)
	c.mu.Lock()
	c.got += len(recs)
	c.mu.Unlock()
	return recs, err
}

func (c *readCounter) CountMany(ctx context.Context, kind store.Kind, indexes []string) (map[string]int, error) {
	return c.Store.(store.Batcher).CountMany(ctx, kind, indexes)
}

// TestQueryPushdownReadsOnlyMatches: a query whose conditions the store
// evaluates reads from it only the twins that match and their devices,
// on SQLite and PostgreSQL, whichever plan the store picks (two
// equalities of about the same frequency, one much rarer than the other,
// an equality and a range), page by page. A query that fell back to
// scanning every twin (the store no longer a Filterer, the conditions no
// longer pushed down) would read all 600.
func TestQueryPushdownReadsOnlyMatches(t *testing.T) {
	stores := map[string]store.Store{}
	sq, err := sqlite.Open(filepath.Join(t.TempDir(), "q.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	stores["sqlite"] = sq
	if pg := openPushdownPostgres(t); pg != nil {
		stores["postgres"] = pg
	}
	ctx := context.Background()
	now := func() time.Time { return time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC) }
	const n = 600
	for name, st := range stores {
		reg := hub.NewRegistry(st, now)
		twins := hub.NewTwins(st, reg, nil)
		for i := range n {
			id := fmt.Sprintf("d%03d", i)
			if _, err := reg.Create(ctx, "q.example", &hub.Device{DeviceID: id}); err != nil {
				t.Fatal(err)
			}
			patch := fmt.Sprintf(`{"tags":{"location":"plant-%d","floor":%d,"serial":%d},"properties":{"desired":{"battery":%d}}}`, i%10, i%7, i, i%100)
			if _, err := twins.Patch(ctx, "q.example", id, []byte(patch), "*"); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []struct {
			q    string
			want int
		}{
			{"SELECT * FROM devices WHERE tags.location = 'plant-3' AND tags.floor = 5", 9},
			{"SELECT deviceId FROM devices WHERE tags.floor = 5 AND tags.serial = 33", 1},
			{"SELECT deviceId FROM devices WHERE tags.location = 'plant-3' AND properties.desired.battery >= 50", 30},
		} {
			// Whole answers in a page read exactly the matches; pages of
			// 4 read at most a batch (32) more per page, as each page
			// starts a new read at its continuation.
			for _, size := range []int{0, 4} {
				rc := &readCounter{Store: st, listed: map[store.Kind]int{}}
				got, pages := 0, 0
				for cont := ""; ; {
					p, err := hub.NewTwins(rc, hub.NewRegistry(rc, now), nil).Query(ctx, "q.example", c.q, size, cont)
					if err != nil {
						t.Fatalf("%s: %s: %v", name, c.q, err)
					}
					got += len(p.Items)
					pages++
					if cont = p.Continuation; cont == "" {
						break
					}
				}
				most := c.want
				if size > 0 {
					most += 32 * pages
				}
				if got != c.want || len(rc.listed) != 0 || rc.filtered < c.want || rc.filtered > most || rc.got != rc.filtered {
					t.Errorf("%s: %s, page size %d: %d rows (want %d); read %d twins by ListWhere, %d devices by GetMany, listed %v; want %d to %d, nothing listed",
						name, c.q, size, got, c.want, rc.filtered, rc.got, rc.listed, c.want, most)
				}
			}
		}
	}
}
