package hub

import (
	"context"
	"sync"
)

// A cloud-to-device Send needs of the device only that it exists and its
// generation ID, and a device's generation ID is set when it is created
// and never changes; only a delete (and a new device of the same ID after
// it) changes that view. So a node that is the only writer of its store
// (SQLite, memstore) keeps the view of devices it has read, and forgets
// it on every delete, which goes through Registry.remove. Reading the
// whole device record per message was a third of Send's CPU
// (docs/benchmarks.md). On a shared store (PostgreSQL, several nodes) the
// cache stays off: the store does not announce device changes to the
// other nodes (store/postgres.WatchedKinds), so each Send reads the
// record, as before.

// sendViewLimit bounds the cache; when full it starts over.
const sendViewLimit = 100_000

type sendViews struct {
	mu  sync.Mutex
	on  bool
	gen uint64            // bumped by every forget, after the delete reached the store
	ids map[string]string // device key → generation ID
}

// CacheSendViews makes the registry keep, in memory, what a C2D Send needs
// of each device (that it exists, its generation ID). Only for a node
// that is its store's only writer: see sendview.go.
func (r *Registry) CacheSendViews() {
	r.views.mu.Lock()
	defer r.views.mu.Unlock()
	r.views.on = true
}

// sendGeneration returns the generation ID of an existing device, or the
// same error as Get. A device not found is never cached.
func (r *Registry) sendGeneration(ctx context.Context, hubName, id string) (string, error) {
	k := deviceKey(hubName, id)
	v := &r.views
	v.mu.Lock()
	on, gen := v.on, v.gen
	g, ok := v.ids[k]
	v.mu.Unlock()
	if ok {
		return g, nil
	}
	d, err := r.Get(ctx, hubName, id)
	if err != nil {
		return "", err
	}
	if !on {
		return d.GenerationID, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	// A delete that ended after gen was taken may have been read past
	// (the record read before it committed): keep nothing then.
	if v.gen == gen {
		if v.ids == nil || len(v.ids) >= sendViewLimit {
			v.ids = make(map[string]string)
		}
		v.ids[k] = d.GenerationID
	}
	return d.GenerationID, nil
}

// forgetSendView drops a device's cached view; called after its delete
// reached the store (or failed: forgetting is always safe).
func (r *Registry) forgetSendView(hubName, id string) {
	v := &r.views
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gen++
	delete(v.ids, deviceKey(hubName, id))
}
