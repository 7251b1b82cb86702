package postgres_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
)

// TestMigrateFromVersion1: a schema written by a berth before the jsonb
// document column gets it at the next start, for the twins it already
// holds (one of which is not JSON: it keeps no document, and the
// migration still succeeds).
func TestMigrateFromVersion1(t *testing.T) {
	admin := adminPool(t)
	schema := randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	ctx := t.Context()
	id := func(n string) string { return pgx.Identifier{schema, n}.Sanitize() }
	for _, q := range []string{
		`CREATE SCHEMA ` + pgx.Identifier{schema}.Sanitize(),
		`CREATE TABLE ` + id("berth_schema_version") + ` (version integer NOT NULL)`,
		`INSERT INTO ` + id("berth_schema_version") + ` VALUES (1)`,
		`CREATE TABLE ` + id("records") + ` (kind text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL, idx text COLLATE "C" NOT NULL DEFAULT '', etag text NOT NULL, data bytea NOT NULL, PRIMARY KEY (kind, key))`,
		`INSERT INTO ` + id("records") + ` VALUES ('twin', 'h/old', '', 'e1', convert_to('{"tags":{"a":"p3"}}', 'UTF8'))`,
		`INSERT INTO ` + id("records") + ` VALUES ('twin', 'h/bad', '', 'e2', convert_to('not JSON', 'UTF8'))`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s, err := postgres.Open(ctx, testDSN(), postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.ListWhere(ctx, store.KindTwin, store.ListOptions{}, []store.Pred{{Path: []string{"tags", "a"}, Op: store.OpEq, Value: "p3"}})
	if err != nil || len(got) != 1 || got[0].Key != "h/old" {
		t.Fatalf("after the migration: %v, %v; want h/old", got, err)
	}
}
