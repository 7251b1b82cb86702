package dps_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testenv"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
)

// TestGroupChangedOnAnotherNode: two DPS services on one PostgreSQL schema
// (two berth nodes). Node A has the enrollment group cached; node B
// changes its key. Once the store's announcement reaches A (what the
// server's watch does: ForgetAuth), A refuses the old derived key, accepts
// the new one, and forgets the session that authenticated with the old
// one. Without the announcement, or without ForgetAuth, A would keep
// accepting the old key.
func TestGroupChangedOnAnotherNode(t *testing.T) {
	dsn := os.Getenv("BERTH_TEST_POSTGRES")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	ctx := t.Context()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "berth_test_" + hex.EncodeToString(b[:])
	stA, err := postgres.Open(ctx, dsn, postgres.WithSchema(schema))
	if err != nil {
		testenv.Unavailable(t, "PostgreSQL at BERTH_TEST_POSTGRES or 127.0.0.1:5432: %v", err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(c, dsn); err == nil {
			_, _ = conn.Exec(c, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
			_ = conn.Close(c)
		}
	})
	t.Cleanup(func() { _ = stA.Close() })
	stB, err := postgres.Open(ctx, dsn, postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stB.Close() })
	now := time.Now()
	clock := func() time.Time { return now }
	node := func(st store.Store) *dps.Service {
		svc, err := dps.New(st, hub.NewRegistry(st, clock), dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	// A's lookups are counted: a session's poll that authenticates again
	// reads the enrollments.
	csA := &countingStore{Store: stA}
	a, bNode := node(csA), node(stB)

	type change struct {
		kind store.Kind
		key  string
		at   time.Time
	}
	changes := make(chan change, 64)
	listening := make(chan struct{}, 4)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		stA.Watch(wctx, func(kind store.Kind, key string) {
			a.ForgetAuth(kind, key)
			changes <- change{kind, key, time.Now()}
		}, func() {
			a.ForgetAuth("", "")
			listening <- struct{}{}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-listening:
	case <-time.After(30 * time.Second):
		t.Fatal("node A's watch never started listening")
	}
	// waitChange waits for A to hear of a change of the record kind/key.
	waitChange := func(kind store.Kind, key string, since time.Time) {
		t.Helper()
		for {
			select {
			case c := <-changes:
				if c.kind == kind && c.key == key {
					t.Logf("node A heard of node B's change of %s %s %v after B's write returned", kind, key, c.at.Sub(since))
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("node A never heard of node B's change of %s %s", kind, key)
			}
		}
	}
	waitGroup := func(since time.Time) { t.Helper(); waitChange(store.KindGroup, "g1", since) }

	g := &dps.EnrollmentGroup{EnrollmentGroupID: "g1"}
	g.Attestation = symKey(groupKey, "")
	start := time.Now()
	if _, err := bNode.PutGroup(ctx, "g1", g, ""); err != nil {
		t.Fatal(err)
	}
	waitGroup(start)

	regID := "dev-1"
	register := func(groupKey string, sess *dps.SessionAuth) (*dps.OperationStatus, error) {
		derived, err := sas.DeriveKey(groupKey, regID)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := sas.SignEncoded(scope+"/registrations/"+regID, derived, "registration", now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return a.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: tok, Session: sess})
	}
	oldDerived, _ := sas.DeriveKey(groupKey, regID)
	oldTok, _ := sas.SignEncoded(scope+"/registrations/"+regID, oldDerived, "registration", now.Add(time.Hour))
	sess := &dps.SessionAuth{}
	op, err := register(groupKey, sess) // A reads g1 and caches it
	if err != nil {
		t.Fatalf("registration on node A with g1's key: %v", err)
	}
	if _, err := register(groupKey, nil); err != nil {
		t.Fatalf("second registration on node A (from its cache): %v", err)
	}

	// B writes an enrollment and a group that dev-1 has nothing to do
	// with: A's session of dev-1 polls without authenticating again.
	other := &dps.IndividualEnrollment{RegistrationID: "other-1"}
	other.Attestation = symKey(indivKey, "")
	start = time.Now()
	if _, err := bNode.PutEnrollment(ctx, "other-1", other, ""); err != nil {
		t.Fatal(err)
	}
	waitChange(store.KindEnrollment, "other-1", start)
	g2 := &dps.EnrollmentGroup{EnrollmentGroupID: "g2"}
	g2.Attestation = symKey(base64.StdEncoding.EncodeToString([]byte("a key of no device of this test..")), "")
	start = time.Now()
	if _, err := bNode.PutGroup(ctx, "g2", g2, ""); err != nil {
		t.Fatal(err)
	}
	waitChange(store.KindGroup, "g2", start)
	lookups := csA.enrollmentGets.Load() + csA.groupLists.Load()
	if _, err := a.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, Token: oldTok, Session: sess}); err != nil {
		t.Fatalf("node A's poll after node B's unrelated writes: %v", err)
	}
	if n := csA.enrollmentGets.Load() + csA.groupLists.Load() - lookups; n != 0 {
		t.Errorf("node A's poll after node B's unrelated writes looked the enrollments up %d times, want 0", n)
	}

	// B rolls g1's key.
	g.Attestation = symKey(indivKey, "")
	start = time.Now()
	if _, err := bNode.PutGroup(ctx, "g1", g, "*"); err != nil {
		t.Fatal(err)
	}
	waitGroup(start)
	if _, err := register(groupKey, nil); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("node A, after node B rolled g1's key, with the old derived key: %v, want 401002", err)
	}
	if _, err := register(indivKey, nil); err != nil {
		t.Errorf("node A, after node B rolled g1's key, with the new derived key: %v", err)
	}
	_, err = a.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, Token: oldTok, Session: sess})
	if code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("node A's poll on the session of the old key, after node B rolled it: %v, want 401002", err)
	}

	// B deletes g1: A refuses its members.
	start = time.Now()
	if err := bNode.DeleteGroup(ctx, "g1", "*"); err != nil {
		t.Fatal(err)
	}
	waitGroup(start)
	if _, err := register(indivKey, nil); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("node A, after node B deleted g1: %v, want 401002", err)
	}

	// A knows of no individual enrollment and skips the lookup; B
	// enrolls dev-1 on its own, which then takes precedence on A.
	g.Attestation = symKey(groupKey, "")
	start = time.Now()
	if _, err := bNode.PutGroup(ctx, "g1", g, ""); err != nil {
		t.Fatal(err)
	}
	waitGroup(start)
	if _, err := register(groupKey, nil); err != nil {
		t.Fatalf("node A, g1 again: %v", err)
	}
	e := &dps.IndividualEnrollment{RegistrationID: regID}
	e.Attestation = symKey(indivKey, "")
	if _, err := bNode.PutEnrollment(ctx, regID, e, ""); err != nil {
		t.Fatal(err)
	}
	for heard := false; !heard; {
		select {
		case c := <-changes:
			heard = c.kind == store.KindEnrollment && c.key == regID
		case <-time.After(30 * time.Second):
			t.Fatal("node A never heard of node B's individual enrollment")
		}
	}
	if _, err := register(groupKey, nil); code(err) != azerr.DPSInvalidCredentials {
		t.Errorf("node A, g1's derived key after node B enrolled dev-1 individually: %v, want 401002", err)
	}
	indivTok, _ := sas.SignEncoded(scope+"/registrations/"+regID, indivKey, "registration", now.Add(time.Hour))
	if _, err := a.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: indivTok}); err != nil {
		t.Errorf("node A, the individual enrollment node B made: %v", err)
	}
}
