package hub

import (
	"context"
	"errors"
	"strings"

	"github.com/berth-iot/berth/azerr"
)

// IoT Hub's nested-edge model (docs/hub-wire.md, device scopes): an IoT
// Edge device has a scope of its own, ms-azure-iot-edge://{id}-{generation},
// assigned by the hub and never changed; a device that sits behind an edge
// device carries that edge device's scope as its deviceScope and again as
// its one parentScopes entry; an edge device may itself sit behind another
// one, named in its parentScopes. berth checks that every scope a client
// sets names an edge device of the same hub as it is now (ID and
// generation), and that edge parents make no cycle.

// edgeScopePrefix starts every edge device's scope.
const edgeScopePrefix = "ms-azure-iot-edge://"

// maxEdgeDepth bounds the walk up a chain of edge parents when looking
// for a cycle; IoT Hub allows far fewer layers than this.
const maxEdgeDepth = 32

// EdgeScope is the scope IoT Hub gives an edge device.
func EdgeScope(d *Device) string { return edgeScopePrefix + d.DeviceID + "-" + d.GenerationID }

func isEdge(d *Device) bool { return d.Capabilities != nil && d.Capabilities.IoTEdge }

// applyScope sets dst's deviceScope and parentScopes from what src (a
// create or update body) asks for. A nil DeviceScope or ParentScopes in
// src keeps what dst has (as a missing capabilities does); an empty
// deviceScope or an empty parentScopes list removes the relation.
func (r *Registry) applyScope(ctx context.Context, hubName string, dst, src *Device) error {
	if dst.ParentScopes == nil {
		dst.ParentScopes = []string{}
	}
	own := EdgeScope(dst)
	if isEdge(dst) {
		if s := deref(src.DeviceScope); s != "" && s != own {
			return azerr.Newf(azerr.HubArgumentInvalid, "The deviceScope of edge device %s is its own, %s; it cannot be set.", dst.DeviceID, own)
		}
		dst.DeviceScope = &own
		if src.ParentScopes == nil {
			return nil
		}
		ps := nonEmpty(src.ParentScopes)
		switch len(ps) {
		case 0:
			dst.ParentScopes = []string{}
			return nil
		case 1:
		default:
			return azerr.Newf(azerr.HubArgumentInvalid, "Edge device %s can have one parent; parentScopes names %d.", dst.DeviceID, len(ps))
		}
		if ps[0] == own {
			return azerr.Newf(azerr.HubArgumentInvalid, "Edge device %s cannot be its own parent.", dst.DeviceID)
		}
		if err := r.checkEdgeParent(ctx, hubName, dst.DeviceID, ps[0]); err != nil {
			return err
		}
		dst.ParentScopes = []string{ps[0]}
		return nil
	}

	// Not (or no longer) an edge device: its own scope, if it had one, goes.
	if s := deref(dst.DeviceScope); s == own {
		dst.DeviceScope = nil
	}
	if src.DeviceScope != nil {
		switch s := *src.DeviceScope; {
		case s == "" || s == own:
			dst.DeviceScope = nil
		case s != deref(dst.DeviceScope):
			if _, err := r.edgeByScope(ctx, hubName, s); err != nil {
				return err
			}
			dst.DeviceScope = &s
		}
	}
	scope := deref(dst.DeviceScope)
	// A child's parentScopes is its deviceScope; a client may send it or
	// leave it for the hub to fill in, but not name another.
	if ps := nonEmpty(src.ParentScopes); len(ps) > 0 && (len(ps) != 1 || ps[0] != scope) {
		return azerr.Newf(azerr.HubArgumentInvalid, "The parentScopes of device %s must be its deviceScope (%q) or empty.", dst.DeviceID, scope)
	}
	if scope == "" {
		dst.ParentScopes = []string{}
	} else {
		dst.ParentScopes = []string{scope}
	}
	return nil
}

// checkEdgeParent checks that scope names an edge device of the hub and
// that id is not among its ancestors (which would make a cycle).
func (r *Registry) checkEdgeParent(ctx context.Context, hubName, id, scope string) error {
	p, err := r.edgeByScope(ctx, hubName, scope)
	if err != nil {
		return err
	}
	for range maxEdgeDepth {
		if p.DeviceID == id {
			return azerr.Newf(azerr.HubArgumentInvalid, "Making %s the parent of edge device %s would make a cycle.", scope, id)
		}
		if len(p.ParentScopes) == 0 {
			return nil
		}
		if p, err = r.edgeByScope(ctx, hubName, p.ParentScopes[0]); err != nil {
			// A parent deleted since: the chain ends there.
			var ae *azerr.Error
			if errors.As(err, &ae) && ae.Code == azerr.HubArgumentInvalid {
				return nil
			}
			return err
		}
	}
	return azerr.Newf(azerr.HubArgumentInvalid, "The chain of edge parents above %s is deeper than %d.", scope, maxEdgeDepth)
}

// edgeByScope returns the edge device whose scope is scope, or
// ArgumentInvalid when there is none in this hub (any more).
func (r *Registry) edgeByScope(ctx context.Context, hubName, scope string) (*Device, error) {
	bad := azerr.Newf(azerr.HubArgumentInvalid, "The scope %q is not the scope of an edge device of this hub.", scope)
	rest, ok := strings.CutPrefix(scope, edgeScopePrefix)
	i := strings.LastIndexByte(rest, '-')
	if !ok || i <= 0 {
		return nil, bad
	}
	d, err := r.Get(ctx, hubName, rest[:i])
	if err != nil {
		var ae *azerr.Error
		if errors.As(err, &ae) && ae.Code == azerr.HubDeviceNotFound {
			return nil, bad
		}
		return nil, err
	}
	if !isEdge(d) || EdgeScope(d) != scope {
		return nil, bad
	}
	return d, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
