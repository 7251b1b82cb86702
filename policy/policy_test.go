package policy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

var cfg = policy.Config{Kind: store.KindConfig, Key: "svc", Rights: []string{"Admin", "Read", "Write"}, Limit: 4, Keep: "Admin"}

func newSet(t *testing.T) (*policy.Set, store.Store) {
	t.Helper()
	st := memstore.New()
	doc := `{"idScope":"0ne1","policies":[{"keyName":"owner","primaryKey":"cHJpbWFyeWtleXByaW1hcnk=","secondaryKey":"c2Vjb25kYXJ5a2V5c2Vjbw==","rights":["Admin","Read","Write"]}]}`
	if _, err := st.Put(context.Background(), store.Record{Kind: cfg.Kind, Key: cfg.Key, Data: []byte(doc)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	s, err := policy.Load(context.Background(), st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

func code(err error) azerr.Code {
	var ae *azerr.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return azerr.Code{}
}

func TestPutDeleteRenew(t *testing.T) {
	s, st := newSet(t)
	ctx := context.Background()
	p, created, err := s.Put(ctx, policy.Policy{KeyName: "reader", Rights: []string{"read", "READ"}})
	if err != nil || !created || len(p.PrimaryKey) != 44 || p.PrimaryKey == p.SecondaryKey || fmt.Sprint(p.Rights) != "[Read]" {
		t.Fatalf("create: %+v %v %v", p, created, err)
	}
	// Update rights: keys stay.
	q, created, err := s.Put(ctx, policy.Policy{KeyName: "READER", Rights: []string{"Read", "Write"}})
	if err != nil || created || q.PrimaryKey != p.PrimaryKey || q.KeyName != "reader" || !q.Has("Write") {
		t.Fatalf("update: %+v %v %v", q, created, err)
	}
	// Renew: primary changes, secondary stays; swap exchanges them.
	r, err := s.RenewKey(ctx, "reader", policy.RenewPrimary)
	if err != nil || r.PrimaryKey == p.PrimaryKey || r.SecondaryKey != p.SecondaryKey {
		t.Fatalf("renew primary: %+v %v", r, err)
	}
	w, err := s.RenewKey(ctx, "reader", policy.RenewSwap)
	if err != nil || w.PrimaryKey != r.SecondaryKey || w.SecondaryKey != r.PrimaryKey {
		t.Fatalf("swap: %+v %v", w, err)
	}
	if got, _ := s.Get("reader"); got.PrimaryKey != w.PrimaryKey {
		t.Errorf("Get after swap: %+v", got)
	}
	// Durable, and the record's other members are kept.
	again, err := policy.Load(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := again.Get("reader"); !ok || got.PrimaryKey != w.PrimaryKey {
		t.Errorf("reloaded: %+v %v", got, ok)
	}
	rec, _ := st.Get(ctx, cfg.Kind, cfg.Key)
	var doc map[string]any
	_ = json.Unmarshal(rec.Data, &doc)
	if doc["idScope"] != "0ne1" {
		t.Errorf("record lost its other members: %s", rec.Data)
	}
	if err := s.Delete(ctx, "reader"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Get("reader"); ok {
		t.Error("deleted policy still there")
	}
}

func TestRefused(t *testing.T) {
	s, _ := newSet(t)
	ctx := context.Background()
	cases := []struct {
		name string
		do   func() error
		code azerr.Code
	}{
		{"bad name", func() error {
			_, _, err := s.Put(ctx, policy.Policy{KeyName: "a b", Rights: []string{"Read"}})
			return err
		}, azerr.DPSBadRequest},
		{"long name", func() error {
			_, _, err := s.Put(ctx, policy.Policy{KeyName: strings.Repeat("a", 65), Rights: []string{"Read"}})
			return err
		}, azerr.DPSBadRequest},
		{"no rights", func() error { _, _, err := s.Put(ctx, policy.Policy{KeyName: "x"}); return err }, azerr.DPSBadRequest},
		{"unknown right", func() error {
			_, _, err := s.Put(ctx, policy.Policy{KeyName: "x", Rights: []string{"Fly"}})
			return err
		}, azerr.DPSBadRequest},
		{"bad key", func() error {
			_, _, err := s.Put(ctx, policy.Policy{KeyName: "x", Rights: []string{"Read"}, PrimaryKey: "short"})
			return err
		}, azerr.DPSBadRequest},
		{"delete unknown", func() error { return s.Delete(ctx, "nobody") }, azerr.DPSNotFound},
		{"renew unknown", func() error { _, err := s.RenewKey(ctx, "nobody", "primary"); return err }, azerr.DPSNotFound},
		{"renew what", func() error { _, err := s.RenewKey(ctx, "owner", "tertiary"); return err }, azerr.DPSBadRequest},
		{"delete the last admin", func() error { return s.Delete(ctx, "owner") }, azerr.DPSBadRequest},
		{"demote the last admin", func() error {
			_, _, err := s.Put(ctx, policy.Policy{KeyName: "owner", Rights: []string{"Read"}})
			return err
		}, azerr.DPSBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.do(); code(err) != c.code {
				t.Fatalf("got %v, want %d", err, c.code)
			}
			if got, ok := s.Get("owner"); !ok || !got.Has("Admin") {
				t.Errorf("owner changed: %+v", got)
			}
		})
	}
	for i := range 3 {
		if _, _, err := s.Put(ctx, policy.Policy{KeyName: fmt.Sprint("p", i), Rights: []string{"Read"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Put(ctx, policy.Policy{KeyName: "fifth", Rights: []string{"Read"}}); code(err) != azerr.DPSBadRequest {
		t.Errorf("over the limit: %v", err)
	}
}

func TestConcurrentPutsLoseNothing(t *testing.T) {
	s, st := newSet(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := s.Put(ctx, policy.Policy{KeyName: fmt.Sprint("c", i), Rights: []string{"Read"}}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	again, _ := policy.Load(ctx, st, cfg)
	if n := len(again.List()); n != 4 {
		t.Errorf("%d policies stored after 3 concurrent creates, want 4", n)
	}
}

func TestHasImpliesRegistryRead(t *testing.T) {
	p := policy.Policy{Rights: []string{"RegistryWrite"}}
	if !p.Has("registryread") || !p.Has("RegistryWrite") || p.Has("ServiceConnect") {
		t.Error("Has")
	}
}

func TestWatchHearsChanges(t *testing.T) {
	s, _ := newSet(t)
	ctx := context.Background()
	n := 0
	s.Watch(func() { n++ })
	if _, err := s.RenewKey(ctx, "owner", policy.RenewPrimary); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Put(ctx, policy.Policy{KeyName: "owner", Rights: []string{"Fly"}}); err == nil {
		t.Fatal("bad right accepted")
	}
	if n != 1 {
		t.Errorf("watcher called %d times, want 1 (refused changes do not count)", n)
	}
}

// Another node's change, read by Reload, replaces the policies held and
// calls the watchers once; a Reload that finds nothing new calls none.
func TestReloadSeesAnotherNodesChange(t *testing.T) {
	here, st := newSet(t)
	there, err := policy.Load(context.Background(), st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	here.Watch(func() { calls++ })
	old, _ := here.Get("owner")
	renewed, err := there.RenewKey(context.Background(), "owner", policy.RenewPrimary)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := here.Get("owner"); p.PrimaryKey != old.PrimaryKey || calls != 0 {
		t.Fatal("the change reached this Set before its Reload")
	}
	for range 2 {
		if err := here.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if p, _ := here.Get("owner"); p.PrimaryKey != renewed.PrimaryKey || calls != 1 {
		t.Fatalf("after Reload: key renewed %v, watchers called %d times; want the renewed key and 1 call", p.PrimaryKey == renewed.PrimaryKey, calls)
	}
}
