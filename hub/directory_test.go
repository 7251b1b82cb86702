package hub_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

func TestDirectory(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	reg := hub.NewRegistry(st, nil)
	d, err := hub.LoadDirectory(ctx, st, reg, "hub.berth.test", now)
	if err != nil {
		t.Fatal(err)
	}
	var seen [][]hub.HubInfo
	d.Watch(func(h []hub.HubInfo) { seen = append(seen, h) })
	if def := d.Default(); def == nil || def.Info.Name != "hub.berth.test" || !def.Info.ApplyAllocationPolicy || def.Info.AllocationWeight != 1 {
		t.Fatalf("default hub: %+v", def)
	}
	if _, ok := d.Default().Settings.Policy(hub.OwnerPolicy); !ok {
		t.Error("default hub has no iothubowner policy")
	}
	b, err := d.Create(ctx, hub.HubInfo{Name: "Hub-B.example", AllocationWeight: 3, Region: "west"}, now)
	if err != nil {
		t.Fatal(err)
	}
	ownerB, ok := b.Settings.Policy(hub.OwnerPolicy)
	ownerA, _ := d.Default().Settings.Policy(hub.OwnerPolicy)
	if !ok || ownerB.PrimaryKey == ownerA.PrimaryKey {
		t.Error("a new hub needs its own policies")
	}
	for _, host := range []string{"hub-b.example", "HUB-B.EXAMPLE:443", "hub-b.example:8883"} {
		if s, ok := d.Lookup(host); !ok || s.Info.Name != "Hub-B.example" {
			t.Errorf("Lookup(%q) = %+v, %v", host, s, ok)
		}
	}
	if _, ok := d.Lookup("hub-c.example"); ok {
		t.Error("unknown hub found")
	}
	if len(seen) != 2 || len(seen[1]) != 2 {
		t.Errorf("watchers saw %v", seen)
	}
	refused := []struct {
		name string
		err  error
		code azerr.Code
	}{
		{"duplicate", func() error { _, err := d.Create(ctx, hub.HubInfo{Name: "hub-b.EXAMPLE"}, now); return err }(), azerr.DPSConflict},
		{"bad name", func() error { _, err := d.Create(ctx, hub.HubInfo{Name: "bad_name!"}, now); return err }(), azerr.DPSBadRequest},
		{"bad weight", func() error {
			_, err := d.Create(ctx, hub.HubInfo{Name: "w.example", AllocationWeight: -1}, now)
			return err
		}(), azerr.DPSBadRequest},
		{"update unknown", func() error { _, err := d.Update(ctx, hub.HubInfo{Name: "nope.example"}); return err }(), azerr.DPSNotFound},
		{"delete default", d.Delete(ctx, "hub.berth.test"), azerr.DPSBadRequest},
		{"delete unknown", d.Delete(ctx, "nope.example"), azerr.DPSNotFound},
	}
	for _, r := range refused {
		if code(r.err) != r.code {
			t.Errorf("%s: %v, want %d", r.name, r.err, r.code)
		}
	}
	if s, err := d.Update(ctx, hub.HubInfo{Name: "hub-b.example", AllocationWeight: 5, ApplyAllocationPolicy: true}); err != nil || s.Info.AllocationWeight != 5 || s.Info.Name != "Hub-B.example" || !s.Info.Created.Equal(now) {
		t.Errorf("update: %+v, %v", s, err)
	}

	// Durable: a second node (or a restart) sees the same hubs and keys.
	d2, err := hub.LoadDirectory(ctx, st, reg, "hub.berth.test", now)
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := d2.Lookup("hub-b.example"); !ok || s.Info.AllocationWeight != 5 {
		t.Errorf("after reload: %+v", d2.List())
	} else if p, _ := s.Settings.Policy(hub.OwnerPolicy); p.PrimaryKey != ownerB.PrimaryKey {
		t.Error("policies not persisted")
	}

	// Deleting a hub deletes its devices and policies; another hub's stay.
	for i := range 3 {
		if _, err := reg.Create(ctx, "hub-b.example", &hub.Device{DeviceID: fmt.Sprint("b", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Create(ctx, "hub.berth.test", &hub.Device{DeviceID: "a0"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, "hub-b.example"); err != nil {
		t.Fatal(err)
	}
	if devs, err := reg.List(ctx, "hub-b.example", "", 10); err != nil || len(devs) != 0 {
		t.Errorf("devices left on a deleted hub: %d (%v)", len(devs), err)
	}
	if _, err := reg.Get(ctx, "hub.berth.test", "a0"); err != nil {
		t.Errorf("another hub's device went too: %v", err)
	}
	// Recreated: a fresh hub with new keys.
	b2, err := d.Create(ctx, hub.HubInfo{Name: "hub-b.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := b2.Settings.Policy(hub.OwnerPolicy); p.PrimaryKey == ownerB.PrimaryKey {
		t.Error("a recreated hub kept the deleted hub's keys")
	}
	// Another default hub name on a later start is added, not swapped.
	d3, err := hub.LoadDirectory(ctx, st, reg, "127.0.0.9", now)
	if err != nil {
		t.Fatal(err)
	}
	if d3.Default().Info.Name != "127.0.0.9" || len(d3.List()) != 3 {
		t.Errorf("new default: %+v", d3.List())
	}
}

func TestValidHubName(t *testing.T) {
	for name, want := range map[string]bool{
		"hub.example": true, "127.0.0.1": true, "::1": true, "a-b.c": true, "localhost": true,
		"": false, ".a": false, "a.": false, "a..b": false, "-a.b": false, "a_b": false, "a b": false, "a/b": false,
	} {
		if got := hub.ValidHubName(name); got != want {
			t.Errorf("ValidHubName(%q) = %v", name, got)
		}
	}
}

func TestDirectoryKeepsSettingsAcrossChanges(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	d, err := hub.LoadDirectory(ctx, st, hub.NewRegistry(st, nil), "a.example", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	held := d.Default().Settings
	if _, err := d.Create(ctx, hub.HubInfo{Name: "b.example"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if d.Default().Settings != held {
		t.Fatal("a change replaced the default hub's policies object: holders go stale")
	}
	// A policy made through the held object is what lookups see.
	if _, _, err := held.PolicySet().Put(ctx, hub.Policy{KeyName: "extra", Rights: []string{hub.RightDeviceConnect}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Default().Settings.Policy("extra"); !ok {
		t.Error("policy not seen through the directory")
	}
}

// TestServedHub: every front end resolves a host name to a hub here, so the
// rules are pinned once: case and a :port do not matter, an unknown name or
// an empty single hub resolves to nothing.
func TestServedHub(t *testing.T) {
	set := &hub.Settings{}
	for _, tt := range []struct {
		def, name string
		want      string
		ok        bool
	}{
		{"hub.example.com", "hub.example.com", "hub.example.com", true},
		{"hub.example.com", "HUB.Example.com:8883", "hub.example.com", true},
		{"127.0.0.1", "127.0.0.1:443", "127.0.0.1", true},
		{"hub.example.com", "other.example.com", "", false},
		{"", "", "", false},
	} {
		got, s, ok := hub.ServedHub(nil, tt.def, set, tt.name)
		if got != tt.want || ok != tt.ok || (ok && s != set) {
			t.Errorf("ServedHub(%q, %q) = %q, %v, %v; want %q, %v", tt.def, tt.name, got, s, ok, tt.want, tt.ok)
		}
	}
	if !hub.SameHost("[::1]:5671", "::1") || hub.SameHost("a.example.com", "b.example.com") {
		t.Error("SameHost: an IPv6 host with a port, or two different hosts")
	}
}
