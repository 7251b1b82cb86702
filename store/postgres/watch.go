package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/store"
)

// ChangesChannel is the LISTEN/NOTIFY channel on which the database
// announces every committed change of a watched kind. The payload is
// schema, kind and key separated by U+001F, so that berths on other
// schemas of the same database ignore it.
const ChangesChannel = "berth_changes"

// WatchedKinds are the kinds whose changes are announced: what berth nodes
// keep in memory (policies, the hub directory, the DPS settings, the
// cluster's identity; the DPS service's enrollment groups and CA
// certificates, and its per-connection memory of an authentication, which
// an enrollment's change ends). Other kinds are read from the store on
// every use. The database's triggers name these kinds: adding one needs a
// schema version that makes them again (postgres.go, migrate).
var WatchedKinds = []store.Kind{store.KindConfig, store.KindEnrollment, store.KindGroup, store.KindCertificate}

func watchedKindsSQL() string {
	q := make([]string, len(WatchedKinds))
	for i, k := range WatchedKinds {
		q[i] = "'" + strings.ReplaceAll(string(k), "'", "''") + "'"
	}
	return strings.Join(q, ", ")
}

// Watch calls changed with the kind and key of every change of a watched
// kind committed by anyone on this store's schema, until ctx ends. It
// holds one database connection of its own (LISTEN), outside the pool.
//
// A notification is delivered only to a listening connection, so when the
// connection is lost Watch reconnects (backing off up to 5 s) and then
// calls resync: whatever changed meanwhile was missed, and the caller
// rereads everything it keeps. resync is also called once the first LISTEN
// is in place, which closes the gap between the caller's first read and
// the start of the watch. Both callbacks run on Watch's goroutine, one at
// a time. Watch returns when ctx ends.
func (s *Store) Watch(ctx context.Context, changed func(kind store.Kind, key string), resync func()) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listen(ctx, changed, resync)
		if ctx.Err() != nil {
			return
		}
		if s.onWatchError != nil {
			s.onWatchError(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// listen runs one LISTEN connection until it fails or ctx ends.
func (s *Store) listen(ctx context.Context, changed func(store.Kind, string), resync func()) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, s.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return fmt.Errorf("postgres: watch: connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{ChangesChannel}.Sanitize()); err != nil {
		return fmt.Errorf("postgres: watch: listen: %w", err)
	}
	resync()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("postgres: watch: %w", err)
		}
		schema, rest, ok1 := strings.Cut(n.Payload, "\x1f")
		kind, key, ok2 := strings.Cut(rest, "\x1f")
		if !ok1 || !ok2 || schema != s.schema {
			continue
		}
		changed(store.Kind(kind), key)
	}
}

// SetWatchErrorHandler sets what Watch does with a lost connection before
// it reconnects (berth logs it); call it before Watch.
func (s *Store) SetWatchErrorHandler(fn func(error)) { s.onWatchError = fn }

var errNoSchema = errors.New("postgres: no current schema (search_path names no existing schema)")
