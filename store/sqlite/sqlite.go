// Package sqlite is the single-file store.Store berth uses by default,
// built on modernc.org/sqlite so the binary stays pure Go.
//
// SQLite admits one writer at a time, so writes go through a pool of exactly
// one connection, one commit at a time: write calls queue in Go (honouring
// their contexts) rather than spinning on SQLITE_BUSY, and the calls that
// queue while a commit is in progress share the next one (group commit: one
// transaction, one fsync, each caller still getting its own answer;
// commit.go). Reads use a separate pool and, thanks to WAL, never
// wait for a write in progress. Every commit is fsynced (synchronous=FULL),
// and a write call returns only after its commit, so a nil error means the
// write survives power loss.
package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/berth-iot/berth/store"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// schemaVersion is stored in PRAGMA user_version. Bump it, and add a step to
// migrate, whenever the schema changes.
const schemaVersion = 2

// busyTimeoutMS covers other processes holding the file (a backup, the
// sqlite3 shell); within this process writers never contend.
const busyTimeoutMS = 10000

// The statements, prepared once per connection. Each must find its rows
// through the primary key or the (kind, idx, key) index; a test checks their
// query plans.
const (
	sqlUpsert = `INSERT INTO records (kind, key, idx, etag, data) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (kind, key) DO UPDATE SET idx = excluded.idx, etag = excluded.etag, data = excluded.data`
	sqlInsertNew = `INSERT INTO records (kind, key, idx, etag, data) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (kind, key) DO NOTHING`
	sqlUpdate   = `UPDATE records SET idx = ?, etag = ?, data = ? WHERE kind = ? AND key = ? AND (? = '*' OR etag = ?)`
	sqlDelete   = `DELETE FROM records WHERE kind = ? AND key = ? AND (? IN ('', '*') OR etag = ?)`
	sqlGet      = `SELECT idx, etag, data FROM records WHERE kind = ? AND key = ?`
	sqlExists   = `SELECT 1 FROM records WHERE kind = ? AND key = ?`
	sqlCount    = `SELECT count(*) FROM records WHERE kind = ?`
	sqlCountIdx = `SELECT count(*) FROM records WHERE kind = ? AND idx = ?`
	// One list statement per shape of ListOptions, so that each walks an
	// index range in key order; LIMIT -1 is SQLite for no limit.
	sqlListAll      = `SELECT key, idx, etag, data FROM records WHERE kind = ? ORDER BY key LIMIT ?`
	sqlListAfter    = `SELECT key, idx, etag, data FROM records WHERE kind = ? AND key > ? ORDER BY key LIMIT ?`
	sqlListIdx      = `SELECT key, idx, etag, data FROM records WHERE kind = ? AND idx = ? ORDER BY key LIMIT ?`
	sqlListIdxAfter = `SELECT key, idx, etag, data FROM records WHERE kind = ? AND idx = ? AND key > ? ORDER BY key LIMIT ?`
)

// readerMmapSize is how much of the database file the readers map into
// memory (PRAGMA mmap_size) instead of copying each page they read into
// their own page cache with a pread(2). A query reads index and record
// pages all over the file, and each reader connection has its own small
// cache; mapped, the pages are the kernel's page cache, shared by every
// reader, and reading one is no system call. Measured (docs/benchmarks.md,
// "Device queries"): a reported-property range over 100k twins took a
// third less CPU. The writer keeps ordinary reads and writes. Beyond this
// size the file is read as before. The cost SQLite documents: an I/O
// error on a mapped page is a fault that ends the process instead of an
// error returned.
const readerMmapSize = 1 << 30

// Store is a store.Store on one SQLite database file.
type Store struct {
	w *sql.DB // exactly one connection: the writer
	r *sql.DB // readers

	// Writer statements, run by the committer (commit.go).
	upsert, insertNew, update, del, wexists *sql.Stmt
	// c queues every write call and commits them in groups.
	c *committer
	// Reader statements.
	get, exists, count, countIdx           *sql.Stmt
	listAll, listAfter, listIdx, listIdxAt *sql.Stmt

	// queries caches the reader statements ListWhere, GetMany and
	// CountMany build (filter.go): a device query makes a few calls
	// per batch of each shape, and preparing one costs as much as
	// running it.
	queries stmtCache

	closeOnce sync.Once
	closeErr  error

	// explain, when set (tests), is handed ListWhere's query plans.
	explain func(line string)
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path and brings its schema
// up to date.
func Open(path string) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	w, err := sql.Open("sqlite", dsn(abs, "_pragma=journal_mode(WAL)", "_pragma=synchronous(FULL)", "_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &Store{w: w}
	ctx := context.Background()
	if err := migrate(ctx, w); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}

	r, err := sql.Open("sqlite", dsn(abs, "_pragma=query_only(1)", fmt.Sprintf("_pragma=mmap_size(%d)", readerMmapSize)))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	r.SetConnMaxLifetime(0)
	r.SetConnMaxIdleTime(0)
	s.r = r

	prep := []struct {
		db   *sql.DB
		dst  **sql.Stmt
		text string
	}{
		{w, &s.upsert, sqlUpsert},
		{w, &s.insertNew, sqlInsertNew},
		{w, &s.update, sqlUpdate},
		{w, &s.del, sqlDelete},
		{w, &s.wexists, sqlExists},
		{r, &s.get, sqlGet},
		{r, &s.exists, sqlExists},
		{r, &s.count, sqlCount},
		{r, &s.countIdx, sqlCountIdx},
		{r, &s.listAll, sqlListAll},
		{r, &s.listAfter, sqlListAfter},
		{r, &s.listIdx, sqlListIdx},
		{r, &s.listIdxAt, sqlListIdxAfter},
	}
	for _, p := range prep {
		st, err := p.db.PrepareContext(ctx, p.text)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("sqlite: open %s: prepare %q: %w", path, p.text, err)
		}
		*p.dst = st
	}
	s.c = newCommitter(s)
	return s, nil
}

// dsn builds a file: URI so that any character in the path (including '?'
// and '#') is escaped instead of being taken for URI syntax.
func dsn(abs string, params ...string) string {
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}
	q := fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeoutMS)
	for _, p := range params {
		q += "&" + p
	}
	return u.String() + "?" + q
}

func migrate(ctx context.Context, w *sql.DB) error {
	// BEGIN IMMEDIATE (the writer's _txlock) so that two processes opening a
	// new file at once do not both create the schema.
	tx, err := w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var v int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("migrate: read user_version: %w", err)
	}
	switch {
	case v == schemaVersion:
		return nil
	case v > schemaVersion:
		return fmt.Errorf("migrate: database schema version %d is newer than this berth supports (%d)", v, schemaVersion)
	}
	steps := []string{
		`CREATE TABLE IF NOT EXISTS records (
			kind TEXT NOT NULL,
			key  TEXT NOT NULL,
			idx  TEXT NOT NULL DEFAULT '',
			etag TEXT NOT NULL,
			data BLOB,
			PRIMARY KEY (kind, key)
		)`,
		`CREATE INDEX IF NOT EXISTS records_kind_idx_key ON records (kind, idx, key)`,
	}
	// Version 2: the value index of filterable kinds (filter.go).
	steps = append(steps, valueIndexSchema...)
	steps = append(steps, fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion))
	for _, q := range steps {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("migrate to version %d: %w", schemaVersion, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// newETag returns 64 random bits: unique per write without any state to
// persist, so ETags cannot repeat across restarts or after delete+recreate.
func newETag() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// fail wraps err for operation op. If the context ended, the context's error
// is what the caller needs to see (the driver reports an interrupted
// statement in its own terms), so it is put first and kept matchable.
func fail(ctx context.Context, op string, kind store.Kind, key string, err error) error {
	target := string(kind)
	if key != "" {
		target += "/" + key
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("sqlite: %s %s: %w (%w)", op, target, cerr, err)
	}
	return fmt.Errorf("sqlite: %s %s: %w", op, target, err)
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	rec := store.Record{Kind: kind, Key: key}
	err := s.get.QueryRowContext(ctx, string(kind), key).Scan(&rec.Index, &rec.ETag, &rec.Data)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Record{}, fmt.Errorf("sqlite: get %s/%s: %w", kind, key, store.ErrNotFound)
	}
	if err != nil {
		return store.Record{}, fail(ctx, "get", kind, key, err)
	}
	rec.Data = nonNil(rec.Data)
	return rec, nil
}

func (s *Store) exist(ctx context.Context, kind store.Kind, key string) (bool, error) {
	var one int
	err := s.exists.QueryRowContext(ctx, string(kind), key).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, rec store.Record, cond store.Cond) (store.Record, error) {
	// Checked up front because a write that can complete without waiting
	// would otherwise succeed on an already-canceled context.
	if err := ctx.Err(); err != nil {
		return store.Record{}, fail(ctx, "put", rec.Kind, rec.Key, err)
	}
	if cond.IfNotExists && cond.IfMatch != "" {
		// Contradictory: whichever way the record stands, one condition
		// fails, and nothing is written.
		ok, err := s.exist(ctx, rec.Kind, rec.Key)
		switch {
		case err != nil:
			return store.Record{}, fail(ctx, "put", rec.Kind, rec.Key, err)
		case ok:
			return store.Record{}, fmt.Errorf("sqlite: put %s/%s: %w", rec.Kind, rec.Key, store.ErrExists)
		default:
			return store.Record{}, fmt.Errorf("sqlite: put %s/%s: %w", rec.Kind, rec.Key, store.ErrNotFound)
		}
	}
	rec.ETag = newETag()
	o := &op{kind: opPut, rec: rec, cond: cond, size: len(rec.Data)}
	if err := s.c.submit(ctx, o); err != nil {
		return store.Record{}, s.callerErr(ctx, "put", rec.Kind, rec.Key, err)
	}
	return rec, nil
}

// callerErr is err as a write call returns it: the committer's answers
// are already wrapped; the context's end and a closed store are not.
func (s *Store) callerErr(ctx context.Context, op string, kind store.Kind, key string, err error) error {
	if errors.Is(err, errClosed) || (ctx.Err() != nil && errors.Is(err, ctx.Err())) {
		return fail(ctx, op, kind, key, err)
	}
	return err
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, kind store.Kind, key, ifMatch string) error {
	if err := ctx.Err(); err != nil {
		return fail(ctx, "delete", kind, key, err)
	}
	o := &op{kind: opDelete, rec: store.Record{Kind: kind, Key: key}, match: ifMatch}
	if err := s.c.submit(ctx, o); err != nil {
		return s.callerErr(ctx, "delete", kind, key, err)
	}
	return nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, kind store.Kind, opts store.ListOptions) ([]store.Record, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = -1
	}
	var (
		rows *sql.Rows
		err  error
	)
	switch {
	case opts.Index == "" && opts.After == "":
		rows, err = s.listAll.QueryContext(ctx, string(kind), limit)
	case opts.Index == "":
		rows, err = s.listAfter.QueryContext(ctx, string(kind), opts.After, limit)
	case opts.After == "":
		rows, err = s.listIdx.QueryContext(ctx, string(kind), opts.Index, limit)
	default:
		rows, err = s.listIdxAt.QueryContext(ctx, string(kind), opts.Index, opts.After, limit)
	}
	if err != nil {
		return nil, fail(ctx, "list", kind, "", err)
	}
	defer rows.Close()
	var out []store.Record
	if opts.Limit > 0 {
		out = make([]store.Record, 0, min(opts.Limit, 1024))
	}
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
	var (
		n   int
		err error
	)
	if index == "" {
		err = s.count.QueryRowContext(ctx, string(kind)).Scan(&n)
	} else {
		err = s.countIdx.QueryRowContext(ctx, string(kind), index).Scan(&n)
	}
	if err != nil {
		return 0, fail(ctx, "count", kind, "", err)
	}
	return n, nil
}

// Apply implements store.Store.
func (s *Store) Apply(ctx context.Context, recs []store.Record) ([]store.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: apply %d records: %w", len(recs), err)
	}
	if len(recs) == 0 {
		return []store.Record{}, nil
	}
	size := 0
	for _, r := range recs {
		size += len(r.Data)
	}
	o := &op{kind: opApply, recs: recs, size: size}
	if err := s.c.submit(ctx, o); err != nil {
		return nil, s.callerErr(ctx, "apply", recs[0].Kind, recs[0].Key, err)
	}
	return o.out, nil
}

// Close implements store.Store. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.c != nil {
			s.c.stop() // the writes already queued commit first
		}
		errs := []error{s.queries.close()}
		if s.r != nil {
			errs = append(errs, s.r.Close())
		}
		// The writer last: closing the final connection checkpoints the WAL
		// into the main file.
		errs = append(errs, s.w.Close())
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("sqlite: close: %w", err)
		}
	})
	return s.closeErr
}
