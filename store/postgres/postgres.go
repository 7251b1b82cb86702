// Package postgres is a store.Store on PostgreSQL, for deployments that
// already run a database server or want one berth to fail over to another.
//
// Every conditional write is a single SQL statement, so the condition and
// the write are atomic under concurrent writers from any number of berth
// processes: PostgreSQL re-checks the WHERE clause against the newest row
// version when two UPDATEs race (READ COMMITTED), and INSERT … ON CONFLICT
// settles creation races on the primary key.
package postgres

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/berth-iot/berth/store"
)

// schemaVersion is recorded in the berth_schema_version table. Bump it, and
// add a migration step, whenever the schema changes. Version 2 adds the
// triggers that announce changes of KindConfig records (Watch); version 3
// the jsonb copy of twin documents that ListWhere searches (filter.go);
// version 4 announces DPS enrollments, enrollment groups and CA
// certificates too (WatchedKinds), which the DPS service caches.
const schemaVersion = 4

// migrateLockKey serializes schema creation between processes that start at
// the same time; CREATE … IF NOT EXISTS alone is not safe against that race
// in PostgreSQL (it can fail on the catalog's unique indexes).
const migrateLockKey = 0x62657274_68000001 // "berth" + 1

// DefaultConnectTimeout bounds a connection attempt when the DSN sets no
// connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// Option configures Open.
type Option func(*options)

type options struct {
	schema string
}

// WithSchema keeps berth's tables in the named schema (created if missing)
// instead of the first schema on the connection's search_path. Tests use it
// to give each test a database of its own.
func WithSchema(name string) Option {
	return func(o *options) { o.schema = name }
}

// Store is a store.Store on a PostgreSQL database.
type Store struct {
	pool *pgxpool.Pool
	// records is the records table's qualified name (ListWhere).
	records string
	// Statement texts with the table names filled in. pgx prepares each on
	// first use on every connection and caches it (QueryExecModeCacheStatement).
	qGet, qExists, qUpsert, qInsertNew, qUpdate, qDelete string
	qApplyDelete                                         string
	qCount, qCountIdx                                    string
	qListAll, qListAfter, qListIdx, qListIdxAfter        string

	// schema is where the tables are: the one chosen (WithSchema) or the
	// connection's current_schema(); Watch tells its changes apart by it.
	schema       string
	onWatchError func(error)

	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at dsn (a PostgreSQL URL or key=value
// string) and brings berth's schema up to date.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The DSN may carry a password: say what failed, not what it was.
		return nil, fmt.Errorf("postgres: open: parse DSN: %w", err)
	}
	// A database host that drops packets (rather than refusing) would
	// otherwise hold every request for as long as the caller's context
	// allows: bound the dial so that berth answers with its retryable
	// error instead (a DSN's own connect_timeout wins).
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	// Two session settings the store's guarantees rest on, enforced per
	// connection whatever the server or DSN says:
	//   - synchronous_commit: a nil error from a write promises durability,
	//     which "off" silently breaks. Stronger values (remote_write,
	//     remote_apply) are left alone.
	//   - READ COMMITTED: a conditional UPDATE that loses a race must find
	//     zero rows (PostgreSQL re-checks the WHERE clause on the newer row
	//     version); under REPEATABLE READ or SERIALIZABLE it would fail with
	//     a serialization error instead of ErrPreconditionFailed.
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, `SELECT set_config('default_transaction_isolation', 'read committed', false),
			set_config('synchronous_commit', CASE current_setting('synchronous_commit') WHEN 'off' THEN 'on' ELSE current_setting('synchronous_commit') END, false)`)
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	s := newStore(pool, o.schema)
	if err := s.migrate(ctx, o.schema); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	s.schema = o.schema
	if s.schema == "" {
		var cur *string
		if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&cur); err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres: open: %w", err)
		}
		if cur == nil {
			pool.Close()
			return nil, fmt.Errorf("postgres: open: %w", errNoSchema)
		}
		s.schema = *cur
	}
	return s, nil
}

// qualify quotes a table name, in schema when one was chosen.
func qualify(schema, name string) string {
	if schema == "" {
		return pgx.Identifier{name}.Sanitize()
	}
	return pgx.Identifier{schema, name}.Sanitize()
}

func newStore(pool *pgxpool.Pool, schema string) *Store {
	t := qualify(schema, "records")
	cols := `key, idx, etag, data`
	return &Store{
		pool:       pool,
		records:    t,
		qGet:       `SELECT idx, etag, data FROM ` + t + ` WHERE kind = $1 AND key = $2`,
		qExists:    `SELECT EXISTS (SELECT 1 FROM ` + t + ` WHERE kind = $1 AND key = $2)`,
		qUpsert:    `INSERT INTO ` + t + ` (kind, key, idx, etag, data) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, key) DO UPDATE SET idx = EXCLUDED.idx, etag = EXCLUDED.etag, data = EXCLUDED.data`,
		qInsertNew: `INSERT INTO ` + t + ` (kind, key, idx, etag, data) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, key) DO NOTHING`,
		// One round trip that also says whether the row existed, so a
		// failed precondition is told apart from a missing record without
		// a second query.
		qUpdate: `WITH upd AS (UPDATE ` + t + ` SET idx = $3, etag = $4, data = $5 WHERE kind = $1 AND key = $2 AND ($6::text = '*' OR etag = $6::text) RETURNING 1)
			SELECT EXISTS (SELECT 1 FROM upd), EXISTS (SELECT 1 FROM ` + t + ` WHERE kind = $1 AND key = $2)`,
		qApplyDelete: `DELETE FROM ` + t + ` WHERE kind = $1 AND key = $2`,
		qDelete: `WITH del AS (DELETE FROM ` + t + ` WHERE kind = $1 AND key = $2 AND ($3::text IN ('', '*') OR etag = $3::text) RETURNING 1)
			SELECT EXISTS (SELECT 1 FROM del), EXISTS (SELECT 1 FROM ` + t + ` WHERE kind = $1 AND key = $2)`,
		qCount:    `SELECT count(*) FROM ` + t + ` WHERE kind = $1`,
		qCountIdx: `SELECT count(*) FROM ` + t + ` WHERE kind = $1 AND idx = $2`,
		// LIMIT NULL is no limit.
		qListAll:      `SELECT ` + cols + ` FROM ` + t + ` WHERE kind = $1 ORDER BY key LIMIT $2`,
		qListAfter:    `SELECT ` + cols + ` FROM ` + t + ` WHERE kind = $1 AND key > $2 ORDER BY key LIMIT $3`,
		qListIdx:      `SELECT ` + cols + ` FROM ` + t + ` WHERE kind = $1 AND idx = $2 ORDER BY key LIMIT $3`,
		qListIdxAfter: `SELECT ` + cols + ` FROM ` + t + ` WHERE kind = $1 AND idx = $2 AND key > $3 ORDER BY key LIMIT $4`,
	}
}

func (s *Store) migrate(ctx context.Context, schema string) error {
	ident := func(name string) string { return qualify(schema, name) }
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLockKey)); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		if schema != "" {
			// Only when missing: CREATE SCHEMA IF NOT EXISTS still demands
			// the CREATE privilege, which a locked-down role given a
			// ready-made schema does not have.
			var found bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&found); err != nil {
				return fmt.Errorf("migrate: look up schema: %w", err)
			}
			if !found {
				if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize()); err != nil {
					return fmt.Errorf("migrate: create schema: %w", err)
				}
			}
		}
		versions := ident("berth_schema_version")
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+versions+` (version integer NOT NULL)`); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		var v int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+versions).Scan(&v); err != nil {
			return fmt.Errorf("migrate: read version: %w", err)
		}
		switch {
		case v == schemaVersion:
			return nil
		case v > schemaVersion:
			return fmt.Errorf("migrate: database schema version %d is newer than this berth supports (%d)", v, schemaVersion)
		}
		// COLLATE "C" makes Key order byte order, as the interface
		// promises, whatever the database's locale; it also lets the
		// primary key serve ORDER BY and range scans.
		var steps []string
		if v < 1 {
			steps = append(steps,
				`CREATE TABLE `+ident("records")+` (
				kind text COLLATE "C" NOT NULL,
				key  text COLLATE "C" NOT NULL,
				idx  text COLLATE "C" NOT NULL DEFAULT '',
				etag text NOT NULL,
				data bytea NOT NULL,
				PRIMARY KEY (kind, key)
			)`,
				`CREATE INDEX `+pgx.Identifier{"records_kind_idx_key"}.Sanitize()+` ON `+ident("records")+` (kind, idx, key)`)
		}
		if v < 2 {
			// Every committed change of a watched kind is announced on
			// ChangesChannel, whoever wrote it (any berth node, or an
			// operator's SQL). The WHEN clauses keep the hot kinds (twins,
			// C2D) free of the function call. The triggers themselves are
			// version 4's (below), which named more kinds.
			fn := ident("berth_notify_change")
			steps = append(steps,
				`CREATE OR REPLACE FUNCTION `+fn+`() RETURNS trigger LANGUAGE plpgsql AS $$
				DECLARE r record;
				BEGIN
					IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
					PERFORM pg_notify('`+ChangesChannel+`', TG_TABLE_SCHEMA || chr(31) || r.kind || chr(31) || r.key);
					RETURN NULL;
				END $$`)
		}
		if v < 3 {
			steps = append(steps, docSchema(ident)...) // filter.go
		}
		if v < 4 {
			// The triggers name the watched kinds; version 4 added
			// some, so they are made again with the current list.
			fn := ident("berth_notify_change")
			kinds := watchedKindsSQL()
			steps = append(steps,
				`DROP TRIGGER IF EXISTS berth_records_changed ON `+ident("records"),
				`DROP TRIGGER IF EXISTS berth_records_deleted ON `+ident("records"),
				`CREATE TRIGGER berth_records_changed AFTER INSERT OR UPDATE ON `+ident("records")+
					` FOR EACH ROW WHEN (NEW.kind IN (`+kinds+`)) EXECUTE FUNCTION `+fn+`()`,
				`CREATE TRIGGER berth_records_deleted AFTER DELETE ON `+ident("records")+
					` FOR EACH ROW WHEN (OLD.kind IN (`+kinds+`)) EXECUTE FUNCTION `+fn+`()`)
		}
		steps = append(steps,
			`DELETE FROM `+versions,
			fmt.Sprintf(`INSERT INTO %s (version) VALUES (%d)`, versions, schemaVersion))
		for _, q := range steps {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("migrate to version %d: %w", schemaVersion, err)
			}
		}
		return nil
	})
}

// newETag returns 64 random bits: unique per write with no shared counter
// to coordinate between berth processes.
func newETag() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// fail wraps err for operation op, making sure an ended context stays
// matchable with errors.Is whatever the driver reported.
func fail(ctx context.Context, op string, kind store.Kind, key string, err error) error {
	target := string(kind)
	if key != "" {
		target += "/" + key
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("postgres: %s %s: %w (%w)", op, target, cerr, err)
	}
	if ctx.Err() == nil && unreachable(err) {
		return fmt.Errorf("postgres: %s %s: %w: %w", op, target, store.ErrUnavailable, err)
	}
	return fmt.Errorf("postgres: %s %s: %w", op, target, err)
}

// unreachable reports whether err means the database could not be reached
// or went away, rather than answering: no SQL error at all (refused or
// lost connection, timeout), or one of PostgreSQL's own "not now" classes
// (08 connection exception, 53 insufficient resources, 57P01–57P03
// shutdown and start-up).
func unreachable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		var netErr net.Error
		var connErr *pgconn.ConnectError
		return errors.As(err, &netErr) || errors.As(err, &connErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) ||
			errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
			errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	}
	c := pgErr.Code
	return strings.HasPrefix(c, "08") || strings.HasPrefix(c, "53") || c == "57P01" || c == "57P02" || c == "57P03"
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{} // nil would be sent as NULL
	}
	return b
}

// readAttempts is how often a read is tried when the database could not
// be reached: a connection the pool kept across a database restart fails
// on its first use, and a read (unlike a write, which may have committed)
// is safe to send again on a fresh one.
const readAttempts = 2

// retryRead runs a read again when it failed only because the database
// was unreachable.
func retryRead[T any](ctx context.Context, read func() (T, error)) (T, error) {
	v, err := read()
	for i := 1; i < readAttempts && err != nil && errors.Is(err, store.ErrUnavailable) && ctx.Err() == nil; i++ {
		v, err = read()
	}
	return v, err
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	return retryRead(ctx, func() (store.Record, error) { return s.get(ctx, kind, key) })
}

func (s *Store) get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	if err := ctx.Err(); err != nil {
		return store.Record{}, fail(ctx, "get", kind, key, err)
	}
	rec := store.Record{Kind: kind, Key: key}
	err := s.pool.QueryRow(ctx, s.qGet, string(kind), key).Scan(&rec.Index, &rec.ETag, &rec.Data)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Record{}, fmt.Errorf("postgres: get %s/%s: %w", kind, key, store.ErrNotFound)
	}
	if err != nil {
		return store.Record{}, fail(ctx, "get", kind, key, err)
	}
	rec.Data = nonNil(rec.Data)
	return rec, nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, rec store.Record, cond store.Cond) (store.Record, error) {
	// pgx may send a statement before it notices the context is done; a
	// canceled call must not write.
	if err := ctx.Err(); err != nil {
		return store.Record{}, fail(ctx, "put", rec.Kind, rec.Key, err)
	}
	rec.ETag = newETag()
	data := nonNil(rec.Data)
	kind := string(rec.Kind)
	switch {
	case cond.IfNotExists && cond.IfMatch != "":
		// Contradictory: whichever way the record stands, one condition fails.
		var exists bool
		if err := s.pool.QueryRow(ctx, s.qExists, kind, rec.Key).Scan(&exists); err != nil {
			return store.Record{}, fail(ctx, "put", rec.Kind, rec.Key, err)
		}
		if exists {
			return store.Record{}, fmt.Errorf("postgres: put %s/%s: %w", rec.Kind, rec.Key, store.ErrExists)
		}
		return store.Record{}, fmt.Errorf("postgres: put %s/%s: %w", rec.Kind, rec.Key, store.ErrNotFound)
	case cond.IfNotExists:
		tag, err := s.pool.Exec(ctx, s.qInsertNew, kind, rec.Key, rec.Index, rec.ETag, data)
		if err != nil {
			return store.Record{}, fail(ctx, "put", rec.Kind, rec.Key, err)
		}
		if tag.RowsAffected() == 0 {
			return store.Record{}, fmt.Errorf("postgres: put %s/%s: %w", rec.Kind, rec.Key, store.ErrExists)
		}
	case cond.IfMatch != "":
		var updated, existed bool
		if err := s.pool.QueryRow(ctx, s.qUpdate, kind, rec.Key, rec.Index, rec.ETag, data, cond.IfMatch).Scan(&updated, &existed); err != nil {
			return store.Record{}, fail(ctx, "put", rec.Kind, rec.Key, err)
		}
		if !updated {
			return store.Record{}, notDone("put", rec.Kind, rec.Key, existed)
		}
	default:
		if _, err := s.pool.Exec(ctx, s.qUpsert, kind, rec.Key, rec.Index, rec.ETag, data); err != nil {
			return store.Record{}, fail(ctx, "put", rec.Kind, rec.Key, err)
		}
	}
	return rec, nil
}

func notDone(op string, kind store.Kind, key string, existed bool) error {
	if existed {
		return fmt.Errorf("postgres: %s %s/%s: %w", op, kind, key, store.ErrPreconditionFailed)
	}
	return fmt.Errorf("postgres: %s %s/%s: %w", op, kind, key, store.ErrNotFound)
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, kind store.Kind, key, ifMatch string) error {
	if err := ctx.Err(); err != nil {
		return fail(ctx, "delete", kind, key, err)
	}
	var deleted, existed bool
	if err := s.pool.QueryRow(ctx, s.qDelete, string(kind), key, ifMatch).Scan(&deleted, &existed); err != nil {
		return fail(ctx, "delete", kind, key, err)
	}
	if !deleted {
		return notDone("delete", kind, key, existed)
	}
	return nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, kind store.Kind, opts store.ListOptions) ([]store.Record, error) {
	return retryRead(ctx, func() ([]store.Record, error) { return s.list(ctx, kind, opts) })
}

func (s *Store) list(ctx context.Context, kind store.Kind, opts store.ListOptions) ([]store.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, fail(ctx, "list", kind, "", err)
	}
	var limit any // nil: LIMIT NULL, no limit
	if opts.Limit > 0 {
		limit = int64(opts.Limit)
	}
	var (
		rows pgx.Rows
		err  error
	)
	switch {
	case opts.Index == "" && opts.After == "":
		rows, err = s.pool.Query(ctx, s.qListAll, string(kind), limit)
	case opts.Index == "":
		rows, err = s.pool.Query(ctx, s.qListAfter, string(kind), opts.After, limit)
	case opts.After == "":
		rows, err = s.pool.Query(ctx, s.qListIdx, string(kind), opts.Index, limit)
	default:
		rows, err = s.pool.Query(ctx, s.qListIdxAfter, string(kind), opts.Index, opts.After, limit)
	}
	if err != nil {
		return nil, fail(ctx, "list", kind, "", err)
	}
	defer rows.Close()
	var out []store.Record
	for rows.Next() {
		rec := store.Record{Kind: kind}
		if err := rows.Scan(&rec.Key, &rec.Index, &rec.ETag, &rec.Data); err != nil {
			return nil, fail(ctx, "list", kind, "", err)
		}
		rec.Data = nonNil(rec.Data)
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fail(ctx, "list", kind, "", err)
	}
	return out, nil
}

// Count implements store.Store.
func (s *Store) Count(ctx context.Context, kind store.Kind, index string) (int, error) {
	return retryRead(ctx, func() (int, error) { return s.count(ctx, kind, index) })
}

func (s *Store) count(ctx context.Context, kind store.Kind, index string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fail(ctx, "count", kind, "", err)
	}
	var (
		n   int64
		err error
	)
	if index == "" {
		err = s.pool.QueryRow(ctx, s.qCount, string(kind)).Scan(&n)
	} else {
		err = s.pool.QueryRow(ctx, s.qCountIdx, string(kind), index).Scan(&n)
	}
	if err != nil {
		return 0, fail(ctx, "count", kind, "", err)
	}
	return int(n), nil
}

// Apply implements store.Store.
func (s *Store) Apply(ctx context.Context, recs []store.Record) ([]store.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("postgres: apply %d records: %w", len(recs), err)
	}
	if len(recs) == 0 {
		return []store.Record{}, nil
	}
	out := make([]store.Record, len(recs))
	for i, rec := range recs {
		if rec.Delete {
			out[i] = store.Record{Kind: rec.Kind, Key: rec.Key, Delete: true}
			continue
		}
		rec.ETag = newETag()
		out[i] = rec
	}
	// Rows are locked in the order they are written and held to commit, so
	// two Applies naming the same keys in different orders would deadlock.
	// Writing in one canonical order rules that out; the sort is stable so
	// that a key named twice still ends with its last value.
	order := make([]int, len(out))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(out[a].Kind, out[b].Kind), cmp.Compare(out[a].Key, out[b].Key))
	})
	// One statement per record rather than one multi-row upsert: a batch
	// may name the same key twice, which ON CONFLICT DO UPDATE refuses
	// within a single statement. The batch still costs one round trip.
	batch := &pgx.Batch{}
	for _, i := range order {
		rec := out[i]
		if rec.Delete {
			batch.Queue(s.qApplyDelete, string(rec.Kind), rec.Key)
			continue
		}
		batch.Queue(s.qUpsert, string(rec.Kind), rec.Key, rec.Index, rec.ETag, nonNil(rec.Data))
	}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, batch).Close()
	})
	if err != nil {
		return nil, fail(ctx, fmt.Sprintf("apply %d records, first", len(recs)), recs[0].Kind, recs[0].Key, err)
	}
	return out, nil
}

// Close implements store.Store. It waits for queries in progress and is
// safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(s.pool.Close)
	return nil
}
