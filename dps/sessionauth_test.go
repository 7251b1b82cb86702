package dps_test

import (
	"context"
	"encoding/json"
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

// countingStore counts the enrollment lookups authenticate makes, and the
// operation and registration reads of polls.
type countingStore struct {
	store.Store
	enrollmentGets, groupLists, outcomeGets atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	switch kind {
	case store.KindEnrollment:
		c.enrollmentGets.Add(1)
	case store.KindOperation, store.KindRegistration:
		c.outcomeGets.Add(1)
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
	// Another device's individual enrollment: with none at all, a full
	// authentication of a group member reads nothing either
	// (TestNoIndividualEnrollmentNoLookup).
	f.enroll(t, "someone-else", "", "")
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

// TestNoIndividualEnrollmentNoLookup: while the store holds no individual
// enrollment, a group member's registration does not look its registration
// ID up as one; once an individual enrollment is written (here for that
// very ID, which then takes precedence over the group), it does, and after
// its deletion it stops again.
func TestNoIndividualEnrollmentNoLookup(t *testing.T) {
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
	ctx := context.Background()
	register := func(tok string) (*dps.OperationStatus, int64, error) {
		t.Helper()
		before := cs.enrollmentGets.Load()
		op, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: tok})
		if err != nil {
			return nil, 0, err
		}
		res, err := svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, Token: tok})
		return res, cs.enrollmentGets.Load() - before, err
	}
	groupTok := f.token(t, regID, derived)
	for range 2 {
		res, gets, err := register(groupTok)
		if err != nil {
			t.Fatal(err)
		}
		if gets != 0 {
			t.Errorf("a group member's registration with no individual enrollment read %d enrollments, want 0", gets)
		}
		if g := res.RegistrationState.SymmetricKey; g == nil || g.EnrollmentGroupID != "g1" {
			t.Errorf("registration state %+v, want group g1", res.RegistrationState)
		}
	}
	e := f.enroll(t, regID, "", "")
	res, gets, err := register(f.token(t, regID, e.Attestation.SymmetricKey.PrimaryKey))
	if err != nil {
		t.Fatalf("the individual enrollment's key once it exists: %v", err)
	}
	if gets == 0 || res.RegistrationState.SymmetricKey != nil {
		t.Errorf("with an individual enrollment: %d reads, state %+v; want a read and no group", gets, res.RegistrationState)
	}
	if _, _, err := register(groupTok); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("the group's derived key while an individual enrollment exists: %v, want 401002", err)
	}
	if err := svc.DeleteEnrollment(ctx, regID, "*"); err != nil {
		t.Fatal(err)
	}
	if _, gets, err := register(groupTok); err != nil || gets != 0 {
		t.Errorf("after the individual enrollment's deletion: %d reads, err %v; want 0 and the group", gets, err)
	}
}

// TestSessionRemembersOutcome: the poll that follows a registration on the
// same connection is answered from what the registration wrote, without
// reading the operation and the registration again, and the answer is the
// one the store gives; an older operation, a deleted registration or a
// changed enrollment sends the poll to the store.
func TestSessionRemembersOutcome(t *testing.T) {
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
	tok := f.token(t, regID, derived)
	ctx := context.Background()
	sess := &dps.SessionAuth{}
	register := func() string {
		t.Helper()
		op, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: tok, Session: sess, Body: []byte(`{"payload":{"a":1}}`)})
		if err != nil {
			t.Fatal(err)
		}
		return op.OperationID
	}
	// poll answers the operation's JSON and how many operation and
	// registration records it read.
	poll := func(s *dps.SessionAuth, opID string) (string, int64, error) {
		t.Helper()
		before := cs.outcomeGets.Load()
		op, err := svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: opID, Token: tok, Session: s})
		reads := cs.outcomeGets.Load() - before
		if err != nil {
			return "", reads, err
		}
		return jsonOf(t, op), reads, nil
	}

	first := register()
	mem, reads, err := poll(sess, first)
	if err != nil {
		t.Fatal(err)
	}
	if reads != 0 {
		t.Errorf("the poll after the registration on its connection read %d records, want 0", reads)
	}
	stored, reads, err := poll(nil, first)
	if err != nil {
		t.Fatal(err)
	}
	if reads == 0 {
		t.Error("a poll without a session read nothing")
	}
	if mem != stored {
		t.Errorf("remembered answer\n%s\nstored answer\n%s", mem, stored)
	}

	// A second registration: the first operation is read from the store
	// (which shows the registration record as it is now).
	second := register()
	stored, _, err = poll(nil, first)
	if err != nil {
		t.Fatal(err)
	}
	if got, reads, err := poll(sess, first); err != nil || reads == 0 || got != stored {
		t.Errorf("poll of the older operation: reads %d, err %v, answer %s; want the store's %s", reads, err, got, stored)
	}
	if _, reads, err := poll(sess, second); err != nil || reads != 0 {
		t.Errorf("poll of the latest operation: reads %d, err %v; want 0 reads", reads, err)
	}

	// A changed enrollment group: the store answers.
	g := &dps.EnrollmentGroup{EnrollmentGroupID: "g1"}
	g.Attestation = symKey(groupKey, "")
	if _, err := svc.PutGroup(ctx, "g1", g, "*"); err != nil {
		t.Fatal(err)
	}
	if _, reads, err := poll(sess, second); err != nil || reads == 0 {
		t.Errorf("poll after a group write: reads %d, err %v; want the store read", reads, err)
	}

	// A deleted registration is missing, not remembered.
	third := register()
	if err := svc.DeleteRegistration(ctx, regID, "*"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := poll(sess, third); code(err) != azerr.DPSRegistrationMissing {
		t.Errorf("poll after the registration was deleted: %v, want %v", err, azerr.DPSRegistrationMissing)
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

// TestSessionAuthForgetsOnlyWhatChanged: an enrollment write makes stale
// only the remembered authentications it can change — of the individual
// enrollment's registration ID (also a group member's: the new individual
// enrollment takes precedence), of the group's members — through this
// Service or announced from another node (ForgetAuth); an unrelated
// write costs no session a re-authentication (counted as enrollment
// lookups). Revocation stays immediate: the changed enrollment's session
// is refused, or registered disabled, at its next request.
func TestSessionAuthForgetsOnlyWhatChanged(t *testing.T) {
	cs := &countingStore{Store: memstore.New()}
	now := time.Unix(1700000000, 0)
	clock := func() time.Time { return now }
	svc, err := dps.New(cs, hub.NewRegistry(cs, clock), dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f := &fixture{svc: svc, st: cs, now: now}
	f.group(t, "g1", "")
	f.enroll(t, "indiv-1", "", "")
	lookups := func() int64 { return cs.enrollmentGets.Load() + cs.groupLists.Load() }

	type session struct {
		regID, tok, op string
		auth           *dps.SessionAuth
	}
	register := func(s *session) *dps.OperationStatus {
		t.Helper()
		op, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: s.regID, Token: s.tok, Session: s.auth})
		if err != nil {
			t.Fatal(err)
		}
		s.op = op.OperationID
		st, err := svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: s.regID, OperationID: s.op, Token: s.tok, Session: s.auth})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	open := func(regID, key string) *session {
		t.Helper()
		if key == groupKey {
			k, err := sas.DeriveKey(groupKey, regID)
			if err != nil {
				t.Fatal(err)
			}
			key = k
		}
		s := &session{regID: regID, tok: f.token(t, regID, key), auth: &dps.SessionAuth{}}
		if st := register(s); st.Status != dps.StatusAssigned {
			t.Fatalf("%s: %+v", regID, st)
		}
		return s
	}
	// poll polls once and reports whether it had to authenticate again.
	poll := func(s *session) (bool, error) {
		before := lookups()
		_, err := svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: s.regID, OperationID: s.op, Token: s.tok, Session: s.auth})
		return lookups() != before, err
	}
	member1, member2, indiv := open("dev-1", groupKey), open("dev-2", groupKey), open("indiv-1", indivKey)
	all := []*session{member1, member2, indiv}
	for _, s := range all {
		if again, err := poll(s); err != nil || again {
			t.Fatalf("%s: first poll re-authenticated %v, %v", s.regID, again, err)
		}
	}

	// Unrelated writes, here and announced from another node.
	unrelated := []struct {
		name  string
		write func() error
	}{
		{"another individual enrollment", func() error {
			e := &dps.IndividualEnrollment{RegistrationID: "other-1"}
			e.Attestation = symKey(indivKey, "")
			_, err := svc.PutEnrollment(ctx, "other-1", e, "")
			return err
		}},
		{"another group", func() error {
			g := &dps.EnrollmentGroup{EnrollmentGroupID: "g2"}
			g.Attestation = symKey(indivKey, "")
			_, err := svc.PutGroup(ctx, "g2", g, "")
			return err
		}},
		{"another group deleted", func() error { return svc.DeleteGroup(ctx, "g2", "*") }},
		{"another node's enrollment", func() error {
			svc.ForgetAuth(store.KindEnrollment, "other-2")
			return nil
		}},
		{"another node's group", func() error {
			svc.ForgetAuth(store.KindGroup, "g3")
			return nil
		}},
	}
	for _, u := range unrelated {
		name := u.name
		if err := u.write(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, s := range all {
			if again, err := poll(s); err != nil || again {
				t.Errorf("after %s: %s's poll re-authenticated %v, %v; want neither", name, s.regID, again, err)
			}
		}
	}

	// The individual enrollment disabled: its session authenticates
	// again, and its next registration is disabled; the others' not.
	e, err := svc.GetEnrollment(ctx, "indiv-1", true)
	if err != nil {
		t.Fatal(err)
	}
	e.ProvisioningStatus = "disabled"
	if _, err := svc.PutEnrollment(ctx, "indiv-1", e, "*"); err != nil {
		t.Fatal(err)
	}
	if again, err := poll(indiv); err != nil || !again {
		t.Errorf("after its enrollment changed: re-authenticated %v, %v; want a full authentication", again, err)
	}
	if st := register(indiv); st.Status != dps.StatusDisabled {
		t.Errorf("registration after its enrollment was disabled: %+v", st)
	}
	for _, s := range []*session{member1, member2} {
		if again, err := poll(s); err != nil || again {
			t.Errorf("after indiv-1 changed: %s re-authenticated %v, %v", s.regID, again, err)
		}
	}

	// An individual enrollment for a group member's ID takes precedence:
	// the member's derived key no longer admits it.
	f.enroll(t, "dev-2", "", "")
	if _, err := poll(member2); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("dev-2's poll once an individual enrollment of its own exists: %v; want 401002", err)
	}
	if again, err := poll(member1); err != nil || again {
		t.Errorf("after dev-2's enrollment: dev-1 re-authenticated %v, %v", again, err)
	}

	// The group's key rolled: its members are refused at once.
	g1 := &dps.EnrollmentGroup{EnrollmentGroupID: "g1"}
	g1.Attestation = symKey(indivKey, "")
	if _, err := svc.PutGroup(ctx, "g1", g1, "*"); err != nil {
		t.Fatal(err)
	}
	if _, err := poll(member1); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("dev-1's poll after its group's key was rolled: %v; want 401002", err)
	}

	// Announced from another node: the enrollment's session only.
	indiv2 := open("other-1", indivKey)
	if again, err := poll(indiv2); err != nil || again {
		t.Fatal(again, err)
	}
	svc.ForgetAuth(store.KindEnrollment, "OTHER-1") // keys are lower-case; any case names it
	if again, err := poll(indiv2); err != nil || !again {
		t.Errorf("after another node changed other-1: re-authenticated %v, %v", again, err)
	}
	// A missed announcement (kind ""): everything.
	svc.ForgetAuth("", "")
	if again, err := poll(indiv2); err != nil || !again {
		t.Errorf("after a missed announcement: re-authenticated %v, %v", again, err)
	}
}

// jsonOf is v as JSON.
func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
