package hub

import (
	"testing"
	"time"
)

type nullLink struct{ DeviceLink }

// Kept sessions are bounded in number (the least recently kept goes
// first) and in time.
func TestKeptSessionsAreBounded(t *testing.T) {
	ls := NewLinks()
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	ls.now = func() time.Time { return now }
	ls.maxKept = 2
	keep := func(id string) {
		l := nullLink{}
		ls.Attach("h", id, "c", l)
		ls.Detach("h", id, l, &SessionState{})
	}
	keep("a")
	keep("b")
	keep("c")
	if _, ok := ls.Resume("h", "a"); ok {
		t.Error("the oldest session was kept beyond the bound")
	}
	if _, ok := ls.Resume("h", "b"); !ok {
		t.Error("a session within the bound was dropped")
	}
	now = now.Add(KeptSessionLifetime + time.Second)
	if _, ok := ls.Resume("h", "c"); ok {
		t.Error("an expired session was resumed")
	}
	if len(ls.kept) != 0 || ls.order.Len() != 0 {
		t.Errorf("%d sessions still kept", len(ls.kept))
	}
}

type closeRecorder struct {
	DeviceLink
	closed []CloseReason
}

func (c *closeRecorder) Close(r CloseReason) { c.closed = append(c.closed, r) }

// A link that authenticated before a revocation and attaches after it is
// closed at once; one with the credential the revocation keeps is not,
// nor is any once the revocation is old.
func TestAttachAfterRevocation(t *testing.T) {
	ls := NewLinks()
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	ls.now = func() time.Time { return now }
	ls.Revoke("h", "d", "new")
	old := &closeRecorder{}
	ls.Attach("h", "d", "old", old)
	if len(old.closed) != 1 || old.closed[0] != CloseRevoked || ls.Lookup("h", "d") != nil {
		t.Fatalf("a link with the revoked credential: closed %v", old.closed)
	}
	fresh := &closeRecorder{}
	ls.Attach("h", "d", "new", fresh)
	if len(fresh.closed) != 0 || ls.Lookup("h", "d") != fresh {
		t.Fatal("a link with the kept credential was closed")
	}
	ls.Revoke("h", "gone", "")
	now = now.Add(revocationMemory)
	later := &closeRecorder{}
	ls.Attach("h", "gone", "any", later)
	if len(later.closed) != 0 {
		t.Fatal("a revocation older than revocationMemory closed a new link")
	}
}
