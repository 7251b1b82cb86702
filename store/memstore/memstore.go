// Package memstore is an in-memory store.Store for unit tests of the
// packages above the store. It keeps nothing across restarts, so berth serve
// never uses it.
package memstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"

	"github.com/berth-iot/berth/store"
)

type key struct {
	kind store.Kind
	key  string
}

// Store is an in-memory store.Store.
type Store struct {
	mu   sync.RWMutex
	recs map[key]store.Record
}

var _ store.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store { return &Store{recs: map[key]store.Record{}} }

func newETag() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func clone(r store.Record) store.Record {
	r.Data = append([]byte(nil), r.Data...)
	return r
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, kind store.Kind, k string) (store.Record, error) {
	if err := ctx.Err(); err != nil {
		return store.Record{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.recs[key{kind, k}]
	if !ok {
		return store.Record{}, fmt.Errorf("memstore: get %s/%s: %w", kind, k, store.ErrNotFound)
	}
	return clone(r), nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, rec store.Record, cond store.Cond) (store.Record, error) {
	if err := ctx.Err(); err != nil {
		return store.Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, exists := s.recs[key{rec.Kind, rec.Key}]
	switch {
	case cond.IfNotExists && exists:
		return store.Record{}, fmt.Errorf("memstore: put %s/%s: %w", rec.Kind, rec.Key, store.ErrExists)
	case cond.IfMatch != "" && !exists:
		return store.Record{}, fmt.Errorf("memstore: put %s/%s: %w", rec.Kind, rec.Key, store.ErrNotFound)
	case cond.IfMatch != "" && cond.IfMatch != "*" && cond.IfMatch != cur.ETag:
		return store.Record{}, fmt.Errorf("memstore: put %s/%s: %w", rec.Kind, rec.Key, store.ErrPreconditionFailed)
	}
	rec = clone(rec)
	rec.ETag = newETag()
	s.recs[key{rec.Kind, rec.Key}] = rec
	return clone(rec), nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, kind store.Kind, k, ifMatch string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.recs[key{kind, k}]
	if !ok {
		return fmt.Errorf("memstore: delete %s/%s: %w", kind, k, store.ErrNotFound)
	}
	if ifMatch != "" && ifMatch != "*" && ifMatch != cur.ETag {
		return fmt.Errorf("memstore: delete %s/%s: %w", kind, k, store.ErrPreconditionFailed)
	}
	delete(s.recs, key{kind, k})
	return nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, kind store.Kind, opts store.ListOptions) ([]store.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	var out []store.Record
	for k, r := range s.recs {
		if k.kind != kind || (opts.Index != "" && r.Index != opts.Index) || (opts.After != "" && r.Key <= opts.After) {
			continue
		}
		out = append(out, clone(r))
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	if opts.Limit > 0 && len(out) > opts.Limit {
		out = out[:opts.Limit]
	}
	return out, nil
}

// Count implements store.Store.
func (s *Store) Count(ctx context.Context, kind store.Kind, index string) (int, error) {
	recs, err := s.List(ctx, kind, store.ListOptions{Index: index})
	return len(recs), err
}

// Apply implements store.Store.
func (s *Store) Apply(ctx context.Context, recs []store.Record) ([]store.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]store.Record, len(recs))
	for i, r := range recs {
		if r.Delete {
			delete(s.recs, key{r.Kind, r.Key})
			out[i] = store.Record{Kind: r.Kind, Key: r.Key, Delete: true}
			continue
		}
		r = clone(r)
		r.ETag = newETag()
		s.recs[key{r.Kind, r.Key}] = r
		out[i] = clone(r)
	}
	return out, nil
}

// Close implements store.Store.
func (s *Store) Close() error { return nil }
