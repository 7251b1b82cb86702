package hub

import (
	"context"
	"time"
)

// PresenceView is one node's view of a device's connections: whether one
// is open there, when that last changed, and the device's last activity
// there. connectionState and lastActivityTime are what all the nodes'
// views merge to.
type PresenceView struct {
	Connected    bool      `json:"c,omitempty"`
	StateUpdated time.Time `json:"s"`
	LastActivity time.Time `json:"a"`
}

// merge combines two nodes' views: a device connected anywhere is
// Connected (since the change the connected node saw); otherwise the later
// change wins; the last activity is the latest of both.
func (v PresenceView) merge(o PresenceView) PresenceView {
	out := v
	switch {
	case o.Connected && !v.Connected:
		out.Connected, out.StateUpdated = true, o.StateUpdated
	case o.Connected == v.Connected && o.StateUpdated.After(v.StateUpdated):
		out.StateUpdated = o.StateUpdated
	}
	if o.LastActivity.After(v.LastActivity) {
		out.LastActivity = o.LastActivity
	}
	return out
}

// MergePresence combines two nodes' views of a device (see
// PresenceView).
func MergePresence(a, b PresenceView) PresenceView { return a.merge(b) }

// PresencePeers asks the other nodes of a cluster for their views of some
// devices (package linkbus, over NATS). Presence keeps no store record: a
// connect and each message would otherwise cost a write, and a node that
// dies takes its devices' Connected with it, which is the truth.
type PresencePeers interface {
	// Presence returns the other nodes' views merged, for the devices
	// any node knows. It waits for the nodes it knows to be alive, within
	// a short bound, and returns what it has then; it never fails.
	Presence(ctx context.Context, hubName string, ids []string) map[string]PresenceView
}

// SetPresencePeers makes the service views (Show, List, the service's
// twin GET, device queries) report connectionState and lastActivityTime over every node;
// nil (the default) reports this node's. The device's own paths
// (authentication, its twin GET) never ask the other nodes.
func (r *Registry) SetPresencePeers(p PresencePeers) {
	r.mu.Lock()
	r.peers = p
	r.mu.Unlock()
}

// LocalPresence is this node's view of the devices it knows among ids;
// the forwarder's receiving side answers other nodes with it.
func (r *Registry) LocalPresence(hubName string, ids []string) map[string]PresenceView {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]PresenceView{}
	for _, id := range ids {
		if p := r.presence[deviceKey(hubName, id)]; p != nil {
			out[id] = PresenceView{Connected: p.conns > 0, StateUpdated: p.stateUpdated, LastActivity: p.lastActivity}
		}
	}
	return out
}

// overlayCluster applies the other nodes' views to devices already
// overlaid with this node's (overlay): one question to the cluster for
// all of them.
func (r *Registry) overlayCluster(ctx context.Context, hubName string, ds ...*Device) {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.DeviceID
	}
	r.applyPeers(hubName, r.peerPresence(ctx, hubName, ids), ds...)
}

// peerPresence asks the other nodes about ids; nil without peers.
func (r *Registry) peerPresence(ctx context.Context, hubName string, ids []string) map[string]PresenceView {
	r.mu.Lock()
	peers := r.peers
	r.mu.Unlock()
	if peers == nil || len(ids) == 0 {
		return nil
	}
	return peers.Presence(ctx, hubName, ids)
}

// applyPeers merges the other nodes' views (peerPresence) into devices
// already overlaid with this node's.
func (r *Registry) applyPeers(hubName string, remote map[string]PresenceView, ds ...*Device) {
	if len(remote) == 0 {
		return
	}
	ids := make([]string, 0, len(ds))
	for _, d := range ds {
		if _, ok := remote[d.DeviceID]; ok {
			ids = append(ids, d.DeviceID)
		}
	}
	local := r.LocalPresence(hubName, ids)
	for _, d := range ds {
		rv, ok := remote[d.DeviceID]
		if !ok {
			continue
		}
		if lv, ok := local[d.DeviceID]; ok {
			rv = lv.merge(rv)
		}
		d.ConnectionState = "Disconnected"
		if rv.Connected {
			d.ConnectionState = "Connected"
		}
		d.ConnectionStateUpdatedTime, d.LastActivityTime = rv.StateUpdated, rv.LastActivity
	}
}
