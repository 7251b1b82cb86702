package hub_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store/memstore"
)

// A newer link replaces the older one, which Attach closes and returns;
// the older one's detach then leaves the newer one in place.
func TestLinksAttachReplacesAndCloses(t *testing.T) {
	ls := hub.NewLinks()
	first, second := &fakeLink{}, &fakeLink{}
	replaced, detachFirst := ls.Attach(hubName, "dev-1", "c", first)
	if replaced != nil {
		t.Fatalf("first Attach replaced %v", replaced)
	}
	replaced, detachSecond := ls.Attach(hubName, "dev-1", "c", second)
	if replaced != first || !reflect.DeepEqual(first.closes(), []hub.CloseReason{hub.CloseReplaced}) {
		t.Fatalf("replaced %v, first closed %v", replaced, first.closes())
	}
	detachFirst()
	if ls.Lookup(hubName, "dev-1") != second {
		t.Fatal("the older link's detach removed the newer link")
	}
	detachSecond()
	if ls.Lookup(hubName, "dev-1") != nil {
		t.Fatal("detach left the link")
	}
}

// Revoke closes a link opened with another credential (or any, with
// keep ""), leaves one opened with keep, and tells the other nodes.
func TestLinksRevoke(t *testing.T) {
	ls := hub.NewLinks()
	fwd := &fakeForwarder{}
	ls.SetForwarder(fwd)
	l := &fakeLink{}
	ls.Attach(hubName, "dev-1", "old", l)
	ls.Revoke(hubName, "dev-1", "old")
	if len(l.closes()) != 0 || ls.Lookup(hubName, "dev-1") != l {
		t.Fatal("a revocation that keeps the link's credential closed it")
	}
	ls.Revoke(hubName, "dev-1", "new")
	if !reflect.DeepEqual(l.closes(), []hub.CloseReason{hub.CloseRevoked}) || ls.Lookup(hubName, "dev-1") != nil {
		t.Fatalf("closes %v; the revoked link must be closed and forgotten", l.closes())
	}
	l2 := &fakeLink{}
	ls.Attach(hubName, "dev-2", "any", l2)
	ls.Revoke(hubName, "dev-2", "")
	if len(l2.closes()) != 1 {
		t.Fatal(`keep "" did not close the link`)
	}
	if want := []string{hubName + "/dev-1/old", hubName + "/dev-1/new", hubName + "/dev-2/"}; !reflect.DeepEqual(fwd.revoked, want) {
		t.Fatalf("forwarded %q; want %q", fwd.revoked, want)
	}
	// The receiving side acts on this node only.
	l3 := &fakeLink{}
	ls.Attach(hubName, "dev-3", "x", l3)
	if !ls.RevokeLocal(hubName, "dev-3", "y") || len(fwd.revoked) != 3 {
		t.Fatal("RevokeLocal did not close the link, or forwarded")
	}
}

// A persistent session is kept when its link detaches while live, handed
// to the next Resume once, and dropped by Forget and by a revocation.
func TestLinksKeepPersistentSessions(t *testing.T) {
	ls := hub.NewLinks()
	st := hub.SessionState{Subscriptions: map[string]byte{"$iothub/methods/POST/#": 0}}
	l := &fakeLink{}
	ls.Attach(hubName, "dev-1", "c", l)
	ls.Detach(hubName, "dev-1", l, &st)
	got, ok := ls.Resume(hubName, "dev-1")
	if !ok || !reflect.DeepEqual(got, st) {
		t.Fatalf("Resume = %v, %v", got, ok)
	}
	if _, ok := ls.Resume(hubName, "dev-1"); ok {
		t.Fatal("a session was resumed twice")
	}

	// A link replaced before it detached keeps nothing: its successor
	// took its state already.
	a, b := &fakeLink{}, &fakeLink{}
	ls.Attach(hubName, "dev-2", "c", a)
	ls.Attach(hubName, "dev-2", "c", b)
	ls.Detach(hubName, "dev-2", a, &st)
	if _, ok := ls.Resume(hubName, "dev-2"); ok {
		t.Fatal("a replaced link's state was kept")
	}

	for _, drop := range []func(){
		func() { ls.Forget(hubName, "dev-3") },
		func() { ls.Revoke(hubName, "dev-3", "") },
		func() { ls.Revoke(hubName, "dev-3", "other") },
	} {
		l := &fakeLink{}
		ls.Attach(hubName, "dev-3", "c", l)
		ls.Detach(hubName, "dev-3", l, &st)
		drop()
		if _, ok := ls.Resume(hubName, "dev-3"); ok {
			t.Fatal("a dropped session was resumed")
		}
	}
	// A revocation that keeps the credential keeps the session.
	l = &fakeLink{}
	ls.Attach(hubName, "dev-4", "c", l)
	ls.Detach(hubName, "dev-4", l, &st)
	ls.Revoke(hubName, "dev-4", "c")
	if _, ok := ls.Resume(hubName, "dev-4"); !ok {
		t.Fatal("a revocation of another credential dropped the session")
	}
}

// The registry revokes on every change that no longer admits the
// credential a link was opened with, and only then.
func TestRegistryChangesRevokeLinks(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	reg := hub.NewRegistry(st, func() time.Time { return time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC) })
	svc := hub.NewServices(st, reg, nil, nil, nil)
	d, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	attach := func() *fakeLink {
		l := &fakeLink{}
		cur, err := reg.Get(ctx, hubName, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		svc.Links.Attach(hubName, "dev-1", hub.Credential(cur), l)
		return l
	}
	update := func(edit func(*hub.Device)) {
		cur, err := reg.Get(ctx, hubName, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		edit(cur)
		if _, err := reg.Update(ctx, hubName, cur, "*"); err != nil {
			t.Fatal(err)
		}
	}
	l := attach()
	update(func(d *hub.Device) { d.Capabilities = &hub.Capabilities{IoTEdge: true} })
	if len(l.closes()) != 0 {
		t.Fatal("a change that keeps the keys closed the link")
	}
	update(func(d *hub.Device) {
		d.Authentication.SymmetricKey.SecondaryKey = d.Authentication.SymmetricKey.PrimaryKey
	})
	if len(l.closes()) != 1 {
		t.Fatal("replacing a key did not close the link")
	}
	l = attach()
	update(func(d *hub.Device) { d.Status = hub.StatusDisabled })
	if len(l.closes()) != 1 {
		t.Fatal("disabling did not close the link")
	}
	update(func(d *hub.Device) { d.Status = hub.StatusEnabled })
	l = attach()
	if err := reg.Delete(ctx, hubName, d.DeviceID, "*"); err != nil {
		t.Fatal(err)
	}
	if len(l.closes()) != 1 {
		t.Fatal("deleting did not close the link")
	}
}

// A session opened with a hub policy key outlives changes of the device's
// own keys, ends when the device is disabled, and ends when the policy key
// no longer admits it (RevokePolicies), only on its hub.
func TestLinksPolicySessions(t *testing.T) {
	ls := hub.NewLinks()
	cred := hub.PolicyCredential("device", "key-1")
	viaPolicy, own := &fakeLink{}, &fakeLink{}
	ls.Attach(hubName, "dev-1", cred, viaPolicy)
	ls.Attach(hubName, "dev-2", "own", own)
	ls.Revoke(hubName, "dev-1", "new-device-keys")
	if len(viaPolicy.closes()) != 0 {
		t.Fatal("a change of the device's keys closed a session opened with a policy key")
	}
	if n := ls.RevokePolicies("other.hub", map[string]bool{}); n != 0 {
		t.Fatalf("another hub's policy change closed %d sessions", n)
	}
	if n := ls.RevokePolicies(hubName, map[string]bool{cred: true}); n != 0 {
		t.Fatalf("closed %d sessions whose policy key is still valid", n)
	}
	if n := ls.RevokePolicies(hubName, map[string]bool{hub.PolicyCredential("device", "key-2"): true}); n != 1 ||
		!reflect.DeepEqual(viaPolicy.closes(), []hub.CloseReason{hub.CloseRevoked}) || len(own.closes()) != 0 {
		t.Fatalf("renewed key: closed %d, policy session %v, own-key session %v", n, viaPolicy.closes(), own.closes())
	}
	again := &fakeLink{}
	ls.Attach(hubName, "dev-1", cred, again)
	ls.Revoke(hubName, "dev-1", "")
	if len(again.closes()) != 1 {
		t.Fatal("disabling the device left its policy-key session open")
	}
}

// A DPS assignment revokes, and tells the other nodes, only when it
// replaces a credential live sessions may hold: a device it creates, or
// one it re-registers with the credential it has, sends nothing; new keys
// close the session opened with the old ones. A device deleted a moment
// ago and created again replaces the deletion's revocation, so that its
// new sessions are not closed as revoked.
func TestProvisioningRevokesOnlyAChangedCredential(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	reg := hub.NewRegistry(st, nil)
	svc := hub.NewServices(st, reg, nil, nil, nil)
	f := &fakeForwarder{}
	svc.Links.SetForwarder(f)
	sent := func() []string {
		f.mu.Lock()
		defer f.mu.Unlock()
		return append([]string(nil), f.revoked...)
	}
	sasAuth := func(key string) hub.Authentication {
		return hub.Authentication{Type: hub.AuthSAS, SymmetricKey: &hub.SymmetricKey{PrimaryKey: key, SecondaryKey: key}}
	}
	provision := func(auth hub.Authentication) {
		t.Helper()
		recs, revoke, err := reg.ProvisionRecords(ctx, hubName, "p1", auth, hub.ProvisionTwin{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Apply(ctx, recs); err != nil {
			t.Fatal(err)
		}
		reg.Provisioned(ctx, hubName, "p1", auth, revoke)
	}
	cred := func(a hub.Authentication) string { return hub.Credential(&hub.Device{Authentication: &a}) }
	oldKey, newKey := sasAuth("b2xkb2xkb2xkb2xkb2xkb2xkb2xkb2xkb2xkb2xkb2w="), sasAuth("bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmU=")

	provision(oldKey)
	if s := sent(); len(s) != 0 {
		t.Fatalf("a new device's registration sent revocations %q", s)
	}
	l := &fakeLink{}
	svc.Links.Attach(hubName, "p1", cred(oldKey), l)
	provision(oldKey)
	if s := sent(); len(s) != 0 || len(l.closes()) != 0 {
		t.Fatalf("a re-registration with the same key sent %q and closed %v", s, l.closes())
	}
	provision(newKey)
	if s := sent(); !reflect.DeepEqual(s, []string{hubName + "/p1/" + cred(newKey)}) ||
		!reflect.DeepEqual(l.closes(), []hub.CloseReason{hub.CloseRevoked}) {
		t.Fatalf("a re-registration with a new key sent %q and closed %v", s, l.closes())
	}

	if err := reg.Delete(ctx, hubName, "p1", "*"); err != nil {
		t.Fatal(err)
	}
	provision(oldKey)
	if s := sent(); len(s) != 3 || s[2] != hubName+"/p1/"+cred(oldKey) {
		t.Fatalf("created again after a delete: sent %q; want the deletion's revocation replaced", s)
	}
	again := &fakeLink{}
	svc.Links.Attach(hubName, "p1", cred(oldKey), again)
	if len(again.closes()) != 0 {
		t.Fatalf("the device created again had its session closed: %v", again.closes())
	}
}
