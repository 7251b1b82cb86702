package storetest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/store/storetest"
)

// memOpener hands the same in-memory store back to a second open in the same
// test, standing in for reopening a database; Close is a no-op in memstore.
func memOpener(wrap func(store.Store) store.Store) func(t *testing.T) store.Store {
	var mu sync.Mutex
	stores := map[*testing.T]store.Store{}
	return func(t *testing.T) store.Store {
		mu.Lock()
		defer mu.Unlock()
		s, ok := stores[t]
		if !ok {
			s = wrap(memstore.New())
			stores[t] = s
		}
		return s
	}
}

func TestMemstore(t *testing.T) {
	storetest.Run(t, memOpener(func(s store.Store) store.Store { return s }))
}

// Mutants: each breaks one documented behaviour. The suite is only worth
// something if it notices.

type ignoreIfMatch struct{ store.Store }

func (s ignoreIfMatch) Put(ctx context.Context, r store.Record, c store.Cond) (store.Record, error) {
	if c.IfMatch != "*" {
		c.IfMatch = ""
	}
	return s.Store.Put(ctx, r, c)
}

type unsortedList struct{ store.Store }

func (s unsortedList) List(ctx context.Context, k store.Kind, o store.ListOptions) ([]store.Record, error) {
	recs, err := s.Store.List(ctx, k, o)
	slices.Reverse(recs)
	return recs, err
}

type ignoreContext struct{ store.Store }

func (s ignoreContext) Get(_ context.Context, k store.Kind, key string) (store.Record, error) {
	return s.Store.Get(context.Background(), k, key)
}

// nonAtomicApply commits record by record. The pause stands for the commit
// a real backend would make per record; without it the gap in memstore is
// too short for any reader to land in.
type nonAtomicApply struct{ store.Store }

func (s nonAtomicApply) Apply(ctx context.Context, recs []store.Record) ([]store.Record, error) {
	var out []store.Record
	for i, r := range recs {
		if i > 0 {
			time.Sleep(50 * time.Microsecond)
		}
		if r.Delete {
			if err := s.Store.Delete(ctx, r.Kind, r.Key, ""); err != nil && !errors.Is(err, store.ErrNotFound) {
				return out, err
			}
			out = append(out, store.Record{Kind: r.Kind, Key: r.Key, Delete: true})
			continue
		}
		got, err := s.Store.Put(ctx, r, store.Cond{})
		if err != nil {
			return out, err
		}
		out = append(out, got)
	}
	return out, nil
}

type truncatingData struct{ store.Store }

func (s truncatingData) Get(ctx context.Context, k store.Kind, key string) (store.Record, error) {
	r, err := s.Store.Get(ctx, k, key)
	if len(r.Data) > 1<<19 {
		r.Data = r.Data[:1<<19]
	}
	return r, err
}

var mutants = map[string]struct {
	wrap    func(store.Store) store.Store
	failing string // a subtest that must fail
}{
	"ignoreIfMatch":   {func(s store.Store) store.Store { return ignoreIfMatch{s} }, "PutIfMatch"},
	"unsortedList":    {func(s store.Store) store.Store { return unsortedList{s} }, "List"},
	"ignoreContext":   {func(s store.Store) store.Store { return ignoreContext{s} }, "ContextCanceled"},
	"nonAtomicApply":  {func(s store.Store) store.Store { return nonAtomicApply{s} }, "ApplyAtomicForReaders"},
	"truncatingData":  {func(s store.Store) store.Store { return truncatingData{s} }, "LargeDocument"},
	"dropsAfterClose": {nil, "Reopen"},
}

// TestMutant is the child half of TestSuiteCatchesMutants.
func TestMutant(t *testing.T) {
	name := os.Getenv("STORETEST_MUTANT")
	if name == "" {
		t.Skip("run by TestSuiteCatchesMutants")
	}
	m := mutants[name]
	if m.wrap == nil {
		// Every open gets a fresh store, as if nothing had been persisted.
		storetest.Run(t, func(*testing.T) store.Store { return memstore.New() })
		return
	}
	storetest.Run(t, memOpener(m.wrap))
}

func TestSuiteCatchesMutants(t *testing.T) {
	if testing.Short() {
		t.Skip("re-runs the suite once per mutant")
	}
	for name, m := range mutants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestMutant$/^"+m.failing+"$", "-test.v")
			cmd.Env = append(os.Environ(), "STORETEST_MUTANT="+name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a store with mutation %s:\n%s", name, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestMutant/"+m.failing) {
				t.Fatalf("mutation %s did not fail %s:\n%s", name, m.failing, out)
			}
		})
	}
}
