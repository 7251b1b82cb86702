package store

import (
	"context"
	"errors"
	"slices"
)

// Batcher is implemented by the stores that read many records of a kind
// in one round trip (SQLite and PostgreSQL, held to it by the conformance
// suite): the device query reads the device records of a page of matching
// twins with one call instead of one Get each.
type Batcher interface {
	// GetMany returns the records of kind whose keys are among keys, in
	// key order; keys that name no record are left out.
	GetMany(ctx context.Context, kind Kind, keys []string) ([]Record, error)
	// CountMany is Count for each of indexes: the number of records of
	// kind with that index, absent from the map when there are none.
	CountMany(ctx context.Context, kind Kind, indexes []string) (map[string]int, error)
}

// GetMany is Batcher.GetMany on any store: one call when s implements
// Batcher, else one Get per key.
func GetMany(ctx context.Context, s Store, kind Kind, keys []string) ([]Record, error) {
	if b, ok := s.(Batcher); ok {
		return b.GetMany(ctx, kind, keys)
	}
	var out []Record
	for _, k := range sortedUnique(keys) {
		rec, err := s.Get(ctx, kind, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}

// CountMany is Batcher.CountMany on any store.
func CountMany(ctx context.Context, s Store, kind Kind, indexes []string) (map[string]int, error) {
	if b, ok := s.(Batcher); ok {
		return b.CountMany(ctx, kind, indexes)
	}
	out := map[string]int{}
	for _, idx := range sortedUnique(indexes) {
		n, err := s.Count(ctx, kind, idx)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			out[idx] = n
		}
	}
	return out, nil
}

func sortedUnique(keys []string) []string {
	s := append([]string(nil), keys...)
	slices.Sort(s)
	out := s[:0]
	for i, k := range s {
		if i == 0 || k != s[i-1] {
			out = append(out, k)
		}
	}
	return out
}
