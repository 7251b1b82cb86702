package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
)

// A change of a config record committed through one store (another berth
// node) reaches a Watch on another store of the same schema, and only
// there: a store of another schema hears nothing, and a change of an
// unwatched kind announces nothing.
func TestWatchAnnouncesConfigChangesOfItsSchema(t *testing.T) {
	admin := adminPool(t)
	schema, other := randomSchema(t), randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	dropSchemaAtCleanup(t, admin, other)
	open := func(schema string) *postgres.Store {
		s, err := postgres.Open(t.Context(), testDSN(), postgres.WithSchema(schema))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	writer, watcher, stranger := open(schema), open(schema), open(other)

	type change struct {
		kind store.Kind
		key  string
	}
	changes := make(chan change, 16)
	resyncs := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watcher.Watch(ctx, func(k store.Kind, key string) { changes <- change{k, key} }, func() { resyncs <- struct{}{} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-resyncs: // listening
	case <-time.After(30 * time.Second):
		t.Fatal("Watch never started listening")
	}

	bg := context.Background()
	if _, err := stranger.Put(bg, store.Record{Kind: store.KindConfig, Key: "elsewhere", Data: []byte(`{}`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(bg, store.Record{Kind: store.KindDevice, Key: "h/d", Data: []byte(`{}`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(bg, store.Record{Kind: store.KindConfig, Key: "hubs", Data: []byte(`[]`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if err := writer.Delete(bg, store.KindConfig, "hubs", ""); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		select {
		case c := <-changes:
			if c != (change{store.KindConfig, "hubs"}) {
				t.Fatalf("change %d: %+v, want config/hubs (the other schema's and the device's must not be announced)", i, c)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("change %d never announced", i)
		}
	}
}

// A database at schema version 1 (before the change triggers) is brought
// to the current version by the next Open, its records kept, and announces
// changes: version 2's two change triggers, and version 3's one that keeps
// the twin document copy.
func TestMigrationFromVersion1AddsTheTriggers(t *testing.T) {
	admin := adminPool(t)
	schema := randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	ctx := t.Context()
	for _, q := range []string{
		`CREATE SCHEMA ` + pgx.Identifier{schema}.Sanitize(),
		`CREATE TABLE ` + pgx.Identifier{schema, "berth_schema_version"}.Sanitize() + ` (version integer NOT NULL)`,
		`INSERT INTO ` + pgx.Identifier{schema, "berth_schema_version"}.Sanitize() + ` VALUES (1)`,
		`CREATE TABLE ` + pgx.Identifier{schema, "records"}.Sanitize() + ` (kind text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,
			idx text COLLATE "C" NOT NULL DEFAULT '', etag text NOT NULL, data bytea NOT NULL, PRIMARY KEY (kind, key))`,
		`INSERT INTO ` + pgx.Identifier{schema, "records"}.Sanitize() + ` VALUES ('config', 'dps', '', 'e1', '{}')`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	s, err := postgres.Open(ctx, testDSN(), postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rec, err := s.Get(ctx, store.KindConfig, "dps"); err != nil || rec.ETag != "e1" {
		t.Fatalf("the version-1 record after migration: %+v, %v", rec, err)
	}
	var v, triggers int
	if err := admin.QueryRow(ctx, `SELECT max(version) FROM `+pgx.Identifier{schema, "berth_schema_version"}.Sanitize()).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = 'records' AND NOT t.tgisinternal`, schema).Scan(&triggers); err != nil {
		t.Fatal(err)
	}
	if v != 4 || triggers != 3 {
		t.Fatalf("schema version %d with %d triggers; want 4 and 3", v, triggers)
	}
}

// A database at schema version 3, whose triggers announce config records
// only, is brought to version 4 by the next Open: a change of an
// enrollment group, a CA certificate or an enrollment (what the DPS
// service caches) is announced from then on.
func TestMigrationFromVersion3AnnouncesDPSKinds(t *testing.T) {
	admin := adminPool(t)
	schema := randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	ctx := t.Context()
	s, err := postgres.Open(ctx, testDSN(), postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	records := pgx.Identifier{schema, "records"}.Sanitize()
	fn := pgx.Identifier{schema, "berth_notify_change"}.Sanitize()
	for _, q := range []string{ // version 3's triggers
		`DROP TRIGGER berth_records_changed ON ` + records,
		`DROP TRIGGER berth_records_deleted ON ` + records,
		`CREATE TRIGGER berth_records_changed AFTER INSERT OR UPDATE ON ` + records + ` FOR EACH ROW WHEN (NEW.kind IN ('config')) EXECUTE FUNCTION ` + fn + `()`,
		`CREATE TRIGGER berth_records_deleted AFTER DELETE ON ` + records + ` FOR EACH ROW WHEN (OLD.kind IN ('config')) EXECUTE FUNCTION ` + fn + `()`,
		`UPDATE ` + pgx.Identifier{schema, "berth_schema_version"}.Sanitize() + ` SET version = 3`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	writer, err := postgres.Open(ctx, testDSN(), postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	watcher, err := postgres.Open(ctx, testDSN(), postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	var v int
	if err := admin.QueryRow(ctx, `SELECT max(version) FROM `+pgx.Identifier{schema, "berth_schema_version"}.Sanitize()).Scan(&v); err != nil || v != 4 {
		t.Fatalf("schema version after Open: %d, %v; want 4", v, err)
	}

	type change struct {
		kind store.Kind
		key  string
	}
	changes := make(chan change, 16)
	resyncs := make(chan struct{}, 16)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watcher.Watch(wctx, func(k store.Kind, key string) { changes <- change{k, key} }, func() { resyncs <- struct{}{} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-resyncs:
	case <-time.After(30 * time.Second):
		t.Fatal("Watch never started listening")
	}
	bg := context.Background()
	want := []change{{store.KindGroup, "g1"}, {store.KindCertificate, "ca1"}, {store.KindEnrollment, "dev-1"}, {store.KindGroup, "g1"}}
	for _, c := range want[:3] {
		if _, err := writer.Put(bg, store.Record{Kind: c.kind, Key: c.key, Data: []byte(`{}`)}, store.Cond{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := writer.Put(bg, store.Record{Kind: store.KindRegistration, Key: "dev-1", Data: []byte(`{}`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if err := writer.Delete(bg, store.KindGroup, "g1", ""); err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		select {
		case c := <-changes:
			if c != w {
				t.Fatalf("change %d: %+v, want %+v (a registration's must not be announced)", i, c, w)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("change %d (%+v) never announced", i, w)
		}
	}
}
