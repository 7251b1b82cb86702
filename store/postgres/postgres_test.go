package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/berth-iot/berth/internal/testenv"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
	"github.com/berth-iot/berth/store/storetest"
)

const defaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

func testDSN() string {
	if dsn := os.Getenv("BERTH_TEST_POSTGRES"); dsn != "" {
		return dsn
	}
	return defaultDSN
}

// redact hides a password in either DSN form before it is logged.
func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return regexp.MustCompile(`password\s*=\s*('(\\.|[^'])*'|\S+)`).ReplaceAllString(dsn, "password=xxxxx")
}

// unreachable reports whether err means no server answered at all, as
// opposed to one that answered and refused (bad password, no such
// database): only the former may skip.
func unreachable(err error) bool {
	var netErr net.Error
	var dnsErr *net.DNSError
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ENOENT) ||
		errors.As(err, &dnsErr) || (errors.As(err, &netErr) && netErr.Timeout())
}

// adminPool connects to the test server for creating and dropping schemas.
// A developer without PostgreSQL gets a skip saying so; make test
// (BERTH_REQUIRE_SERVICES) fails instead.
func adminPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	dsn := testDSN()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		if unreachable(err) {
			testenv.Unavailable(t, "PostgreSQL not reachable at %s (set BERTH_TEST_POSTGRES to a reachable DSN): %v", redact(dsn), err)
		}
		t.Fatalf("PostgreSQL at %s: %v", redact(dsn), err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func randomSchema(t *testing.T) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "berth_test_" + hex.EncodeToString(b[:])
}

// dropSchemaAtCleanup registers the schema's removal. It runs on a fresh
// context because the test's own is canceled by the time cleanups run.
func dropSchemaAtCleanup(t *testing.T, admin *pgxpool.Pool, schema string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
}

func TestConformance(t *testing.T) {
	admin := adminPool(t)
	dsn := testDSN()
	var mu sync.Mutex
	schemas := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T) store.Store {
		mu.Lock()
		schema, ok := schemas[t]
		if !ok {
			schema = randomSchema(t)
			schemas[t] = schema
			dropSchemaAtCleanup(t, admin, schema)
		}
		mu.Unlock()
		s, err := postgres.Open(t.Context(), dsn, postgres.WithSchema(schema))
		if err != nil {
			t.Fatalf("Open(schema %s): %v", schema, err)
		}
		return s
	})
}

// Several berth processes starting against an empty schema at once must
// all come up, with the schema created exactly once.
func TestConcurrentOpenCreatesSchemaOnce(t *testing.T) {
	admin := adminPool(t)
	schema := randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			s, err := postgres.Open(t.Context(), testDSN(), postgres.WithSchema(schema))
			if err == nil {
				err = s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open #%d: %v", i, err)
		}
	}
	var versions int
	if err := admin.QueryRow(t.Context(), `SELECT count(*) FROM `+pgx.Identifier{schema, "berth_schema_version"}.Sanitize()).Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if versions != 1 {
		t.Fatalf("berth_schema_version has %d rows, want 1", versions)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	admin := adminPool(t)
	schema := randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	s, err := postgres.Open(t.Context(), testDSN(), postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if _, err := admin.Exec(t.Context(), `UPDATE `+pgx.Identifier{schema, "berth_schema_version"}.Sanitize()+` SET version = 99`); err != nil {
		t.Fatal(err)
	}
	s, err = postgres.Open(t.Context(), testDSN(), postgres.WithSchema(schema))
	if err == nil {
		_ = s.Close()
		t.Fatal("Open accepted a schema with a newer version")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Fatalf("unexpected error: %v", err)
	}
}

// A schema name that needs quoting must be quoted everywhere, and must not
// be able to reach outside its identifier.
func TestSchemaNameIsQuoted(t *testing.T) {
	admin := adminPool(t)
	schema := randomSchema(t) + `-Odd "name"; DROP TABLE x`
	dropSchemaAtCleanup(t, admin, schema)
	s, err := postgres.Open(t.Context(), testDSN(), postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Put(t.Context(), store.Record{Kind: store.KindConfig, Key: "k", Data: []byte(`{}`)}, store.Cond{IfNotExists: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(t.Context(), store.KindConfig, "k", r.ETag); err != nil {
		t.Fatal(err)
	}
}

// The store's guarantees hold whatever the DSN (or the server's defaults)
// say about durability and isolation: a nil error is durable, and a lost
// race is ErrPreconditionFailed, not a serialization failure.
func TestEnforcesSessionSettings(t *testing.T) {
	admin := adminPool(t)
	schema := randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	const params = "synchronous_commit=off&default_transaction_isolation=serializable"
	dsn := testDSN()
	switch {
	case !strings.Contains(dsn, "://"): // key=value form
		dsn += " " + strings.ReplaceAll(params, "&", " ")
	case strings.Contains(dsn, "?"):
		dsn += "&" + params
	default:
		dsn += "?" + params
	}
	raw, err := pgx.ConnectConfig(t.Context(), mustParse(t, dsn))
	if err != nil {
		t.Fatal(err)
	}
	var sc, iso string
	err = raw.QueryRow(t.Context(), `SELECT current_setting('synchronous_commit'), current_setting('default_transaction_isolation')`).Scan(&sc, &iso)
	_ = raw.Close(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if sc != "off" || iso != "serializable" {
		t.Fatalf("test setup: DSN parameters did not reach the server (synchronous_commit=%q, isolation=%q)", sc, iso)
	}

	s, err := postgres.Open(t.Context(), dsn, postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, want := range map[string]string{"synchronous_commit": "on", "default_transaction_isolation": "read committed"} {
		got, err := postgres.SessionSetting(t.Context(), s, name)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("store's sessions run with %s=%q, want %q", name, got, want)
		}
	}
}

func mustParse(t *testing.T, dsn string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestUnreachableClassification(t *testing.T) {
	// Port 1 on loopback: nothing listens, the kernel refuses at once.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=3")
	if err == nil {
		t.Skip("something listens on 127.0.0.1:1")
	}
	if !unreachable(err) {
		t.Fatalf("a refused connection was not classified as unreachable: %v", err)
	}
	if unreachable(errors.New("FATAL: password authentication failed")) {
		t.Fatal("an authentication failure was classified as unreachable")
	}
}

func TestRedact(t *testing.T) {
	for _, dsn := range []string{
		"postgres://berth:s3cret@db:5432/berth?sslmode=disable",
		"host=db user=berth password=s3cret dbname=berth",
		"host=db password='s3 cret' dbname=berth",
	} {
		if got := redact(dsn); strings.Contains(got, "s3") {
			t.Errorf("redact(%q) = %q", dsn, got)
		}
	}
}
