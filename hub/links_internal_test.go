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
