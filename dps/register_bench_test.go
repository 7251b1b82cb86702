package dps_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/store/sqlite"
)

// BenchmarkRegister measures a whole registration (Register: authenticate,
// assign, write the device, the registration and the operation) of a device
// that registered before, so every iteration does the same work: an
// individual enrollment, or a member of the last of 1 or 20 symmetric-key
// enrollment groups (the others' derived keys do not verify), on memstore
// and on SQLite. cpu-µs/op is the process's user + system CPU per
// registration (getrusage), steadier than wall time on a shared machine.
func BenchmarkRegister(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) store.Store
	}{
		{"memstore", func(*testing.B) store.Store { return memstore.New() }},
		{"sqlite", func(b *testing.B) store.Store {
			st, err := sqlite.Open(filepath.Join(b.TempDir(), "berth.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = st.Close() })
			return st
		}},
	}
	for _, sto := range stores {
		for _, c := range []struct {
			kind   string
			groups int
		}{{"individual", 1}, {"group", 1}, {"group", 20}} {
			b.Run(fmt.Sprintf("%s/%s/groups-%d", sto.name, c.kind, c.groups), func(b *testing.B) {
				st := sto.open(b)
				now := time.Unix(1700000000, 0)
				clock := func() time.Time { return now }
				svc, err := dps.New(st, hub.NewRegistry(st, clock), dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				for i := range c.groups {
					g := &dps.EnrollmentGroup{EnrollmentGroupID: fmt.Sprintf("g%02d", i)}
					key := groupKey
					if i < c.groups-1 {
						key = indivKey
					}
					g.Attestation = symKey(key, "")
					if _, err := svc.PutGroup(ctx, g.EnrollmentGroupID, g, ""); err != nil {
						b.Fatal(err)
					}
				}
				regID, key := "dev-1", ""
				if c.kind == "individual" {
					e := &dps.IndividualEnrollment{RegistrationID: regID}
					e.Attestation = symKey(indivKey, "")
					if _, err := svc.PutEnrollment(ctx, regID, e, ""); err != nil {
						b.Fatal(err)
					}
					key = indivKey
				} else {
					key, _ = sas.DeriveKey(groupKey, regID)
				}
				tok, err := sas.SignEncoded(scope+"/registrations/"+regID, key, "registration", now.Add(time.Hour))
				if err != nil {
					b.Fatal(err)
				}
				req := dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: tok}
				if _, err := svc.Register(ctx, req); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				var ru0, ru1 syscall.Rusage
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
				for b.Loop() {
					if _, err := svc.Register(ctx, req); err != nil {
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

// callCounter counts a store's reads (Get, List) and transactions (Put,
// Apply, Delete).
type callCounter struct {
	store.Store
	reads, writes atomic.Int64
}

func (c *callCounter) Get(ctx context.Context, kind store.Kind, key string) (store.Record, error) {
	c.reads.Add(1)
	return c.Store.Get(ctx, kind, key)
}

func (c *callCounter) List(ctx context.Context, kind store.Kind, o store.ListOptions) ([]store.Record, error) {
	c.reads.Add(1)
	return c.Store.List(ctx, kind, o)
}

func (c *callCounter) Put(ctx context.Context, rec store.Record, cond store.Cond) (store.Record, error) {
	c.writes.Add(1)
	return c.Store.Put(ctx, rec, cond)
}

func (c *callCounter) Apply(ctx context.Context, recs []store.Record) ([]store.Record, error) {
	c.writes.Add(1)
	return c.Store.Apply(ctx, recs)
}

func (c *callCounter) Delete(ctx context.Context, kind store.Kind, key, ifMatch string) error {
	c.writes.Add(1)
	return c.Store.Delete(ctx, kind, key, ifMatch)
}

// BenchmarkRegisterAndPoll measures the domain's side of one device's
// provisioning over MQTT: Register, then the poll of its operation on the
// same connection (a fresh SessionAuth per iteration, as each device has
// its own connection), for a member of one symmetric-key enrollment group
// that registered before, on memstore and on SQLite. cpu-µs/op as in
// BenchmarkRegister; reads/op and writes/op are the store calls
// (Get and List; transactions).
func BenchmarkRegisterAndPoll(b *testing.B) {
	for _, sto := range []string{"memstore", "sqlite"} {
		b.Run(sto, func(b *testing.B) {
			cc := &callCounter{Store: memstore.New()}
			if sto == "sqlite" {
				s, err := sqlite.Open(filepath.Join(b.TempDir(), "berth.db"))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = s.Close() })
				cc.Store = s
			}
			var st store.Store = cc
			now := time.Unix(1700000000, 0)
			clock := func() time.Time { return now }
			svc, err := dps.New(st, hub.NewRegistry(st, clock), dps.Config{IDScope: scope, Hubs: []string{hubName}, Now: clock})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			g := &dps.EnrollmentGroup{EnrollmentGroupID: "g00"}
			g.Attestation = symKey(groupKey, "")
			if _, err := svc.PutGroup(ctx, g.EnrollmentGroupID, g, ""); err != nil {
				b.Fatal(err)
			}
			regID := "dev-1"
			key, _ := sas.DeriveKey(groupKey, regID)
			tok, err := sas.SignEncoded(scope+"/registrations/"+regID, key, "registration", now.Add(time.Hour))
			if err != nil {
				b.Fatal(err)
			}
			provision := func() {
				sess := &dps.SessionAuth{}
				op, err := svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: regID, Token: tok, Session: sess})
				if err != nil {
					b.Fatal(err)
				}
				res, err := svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: regID, OperationID: op.OperationID, Token: tok, Session: sess})
				if err != nil || res.Status != dps.StatusAssigned {
					b.Fatalf("poll: %v, %v", res, err)
				}
			}
			provision()
			b.ReportAllocs()
			r0, w0 := cc.reads.Load(), cc.writes.Load()
			var ru0, ru1 syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			for b.Loop() {
				provision()
			}
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
			b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(cc.reads.Load()-r0)/float64(b.N), "reads/op")
			b.ReportMetric(float64(cc.writes.Load()-w0)/float64(b.N), "writes/op")
		})
	}
}
