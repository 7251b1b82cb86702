package dps_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
)

// countingStore counts the enrollment lookups authenticate makes.
type countingStore struct {
	store.Store
	enrollmentGets, groupLists atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	if kind == store.KindEnrollment {
		c.enrollmentGets.Add(1)
	}
	return c.Store.Get(ctx, kind, key)
}

func (c *countingStore) List(ctx context.Context, kind store.Kind, o store.ListOptions) ([]store.Record, error) {
	if kind == store.KindGroup {
		c.groupLists.Add(1)
	}
	return c.Store.List(ctx, kind, o)
}

// TestSessionAuthSkipsPollLookup: a poll on the connection that registered
// does not look the enrollment up again; a change to the enrollments, or
// the token expiring, makes it authenticate in full again.
func TestSessionAuthSkipsPollLookup(t *testing.T) {
	cs := &countingStore{Store: memstore.New()}
	now := time.Unix(1700000000, 0)
	clock := func() time.Time { return now }
	svc, err := dps.New(cs, hub.NewRegistry(cs, clock), dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{svc: svc, st: cs, now: now}
	f.group(t, "g1", "")
	regID := "dev-1"
	derived, err := sas.DeriveKey(groupKey, regID)
	if err != nil {
		t.Fatal(err)
	}
	tok := f.token(t, regID, derived) // expires now+1h
	ctx := context.Background()
	sess := &dps.SessionAuth{}
	op, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: tok, Session: sess})
	if err != nil {
		t.Fatal(err)
	}
	poll := func(s *dps.SessionAuth) error {
		_, err := svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, Token: tok, Session: s})
		return err
	}
	lookups := func() int64 { return cs.enrollmentGets.Load() + cs.groupLists.Load() }

	before := lookups()
	for range 3 {
		if err := poll(sess); err != nil {
			t.Fatal(err)
		}
	}
	if n := lookups() - before; n != 0 {
		t.Errorf("3 polls on the registering session made %d enrollment lookups, want 0", n)
	}
	before = lookups()
	if err := poll(nil); err != nil {
		t.Fatal(err)
	}
	if lookups() == before {
		t.Error("a poll without a session skipped the lookup")
	}
	// Another session's memory is its own.
	before = lookups()
	if err := poll(&dps.SessionAuth{}); err != nil || lookups() == before {
		t.Errorf("a fresh session's poll: err %v, lookups %d; want a full authentication", err, lookups()-before)
	}

	// Deleting the group through the service forgets every session.
	if err := svc.DeleteGroup(ctx, "g1", "*"); err != nil {
		t.Fatal(err)
	}
	if err := poll(sess); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("poll after the group was deleted: %v, want 401002", err)
	}

	// An expired token is refused even when remembered.
	f.group(t, "g1", "")
	sess2 := &dps.SessionAuth{}
	if err := poll(sess2); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	if err := poll(sess2); err == nil {
		t.Error("a remembered session's poll with an expired token succeeded")
	}
}

// BenchmarkPoll measures a poll (OperationStatus) of a group member after
// its registration, with the connection's SessionAuth (what the MQTT front
// end passes) and without it (what every poll cost before), with 1 and 20
// symmetric-key enrollment groups (the device's group is the last one
// walked).
func BenchmarkPoll(b *testing.B) {
	for _, groups := range []int{1, 20} {
		for _, withSession := range []bool{false, true} {
			name := fmt.Sprintf("groups-%d/session-%v", groups, withSession)
			b.Run(name, func(b *testing.B) {
				st := memstore.New()
				now := time.Unix(1700000000, 0)
				clock := func() time.Time { return now }
				svc, err := dps.New(st, hub.NewRegistry(st, clock), dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				for i := range groups {
					g := &dps.EnrollmentGroup{EnrollmentGroupID: fmt.Sprintf("g%02d", i)}
					key := groupKey
					if i < groups-1 {
						key = indivKey // another group's key: its derived key does not verify
					}
					g.Attestation = symKey(key, "")
					if _, err := svc.PutGroup(ctx, g.EnrollmentGroupID, g, ""); err != nil {
						b.Fatal(err)
					}
				}
				regID := "dev-1"
				derived, _ := sas.DeriveKey(groupKey, regID)
				tok, err := sas.SignEncoded(scope+"/registrations/"+regID, derived, "registration", now.Add(time.Hour))
				if err != nil {
					b.Fatal(err)
				}
				var sess *dps.SessionAuth
				if withSession {
					sess = &dps.SessionAuth{}
				}
				op, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: tok, Session: sess})
				if err != nil {
					b.Fatal(err)
				}
				req := dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, Token: tok, Session: sess}
				b.ReportAllocs()
				var ru0, ru1 syscall.Rusage
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
				for b.Loop() {
					if _, err := svc.OperationStatus(ctx, req); err != nil {
						b.Fatal(err)
					}
				}
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
				cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
				b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
			})
		}
	}
}

// pausingStore holds the next enrollment-group List, after it has read
// the store, until resume is closed.
type pausingStore struct {
	store.Store
	armed  atomic.Bool
	read   chan struct{}
	resume chan struct{}
}

func (p *pausingStore) List(ctx context.Context, kind store.Kind, o store.ListOptions) ([]store.Record, error) {
	recs, err := p.Store.List(ctx, kind, o)
	if kind == store.KindGroup && p.armed.CompareAndSwap(true, false) {
		close(p.read)
		<-p.resume
	}
	return recs, err
}

// TestGroupCacheNeverKeepsAStaleSnapshot: a registration reads the groups,
// the group's key is rolled before that read is cached, and the next
// registration must not use what the first one read: a snapshot is tagged
// with the generation from before its read, so a write during the read
// makes it stale.
func TestGroupCacheNeverKeepsAStaleSnapshot(t *testing.T) {
	ps := &pausingStore{Store: memstore.New(), read: make(chan struct{}), resume: make(chan struct{})}
	now := time.Unix(1700000000, 0)
	clock := func() time.Time { return now }
	svc, err := dps.New(ps, hub.NewRegistry(ps, clock), dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{svc: svc, st: ps, now: now}
	f.group(t, "g1", "")
	ctx := context.Background()
	regID := "dev-1"
	tokenFor := func(groupKey string) string {
		derived, err := sas.DeriveKey(groupKey, regID)
		if err != nil {
			t.Fatal(err)
		}
		return f.token(t, regID, derived)
	}
	oldTok, newTok := tokenFor(groupKey), tokenFor(indivKey)

	ps.armed.Store(true)
	first := make(chan error, 1)
	go func() {
		_, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: oldTok})
		first <- err
	}()
	<-ps.read // the first registration has read g1 with the old key
	g := &dps.EnrollmentGroup{EnrollmentGroupID: "g1"}
	g.Attestation = symKey(indivKey, "")
	if _, err := svc.PutGroup(ctx, "g1", g, "*"); err != nil {
		t.Fatal(err)
	}
	close(ps.resume)
	if err := <-first; err != nil {
		t.Fatalf("the registration that read g1 before the roll: %v", err)
	}
	if _, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: oldTok}); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("the old key after the roll: %v, want 401002", err)
	}
	if _, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: newTok}); err != nil {
		t.Errorf("the new key after the roll: %v", err)
	}
}
