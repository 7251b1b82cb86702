package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
)

// HubMismatchError refuses a start on an embedded (SQLite) store whose
// hub (--hub-name, else the first --host) is not the hub the store was
// created with: starting would silently add a second, empty hub and make
// it the default (docs/operations.md#the-hub-of-a-data-directory).
type HubMismatchError struct {
	// Stored is the store's hub, Given this start's.
	Stored, Given string
	msg           string
}

func (e *HubMismatchError) Error() string { return e.msg }

// sameHost reports whether two host names name the same host as DNS and
// TLS do: letters in any case, an absolute name's trailing dot, an IP
// address in any of its spellings (::1, 0:0:0:0:0:0:0:1).
func sameHost(a, b string) bool {
	if ia, ib := net.ParseIP(a), net.ParseIP(b); ia != nil || ib != nil {
		return ia != nil && ib != nil && ia.Equal(ib)
	}
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}

// readStoredHubs is the hub directory as stored, nil on a new store.
func readStoredHubs(ctx context.Context, st store.Store) ([]hub.HubInfo, error) {
	rec, err := st.Get(ctx, store.KindConfig, "hubs")
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server: read hubs: %w", err)
	}
	var infos []hub.HubInfo
	if err := json.Unmarshal(rec.Data, &infos); err != nil {
		return nil, fmt.Errorf("server: decode hubs: %w", err)
	}
	return infos, nil
}

// checkLocalHub refuses, before anything is created, a start on an
// embedded store whose hub differs from the one the store was created
// with, unless the operator said so (--accept-new-hub). A store from
// before the identity record is judged by its hubs: the start's hub must
// be one of them. The first --host alone may change: on one node it is
// only the DPS global endpoint's name (recordLocalIdentity logs it).
func (s *Server) checkLocalHub(ctx context.Context) error {
	if s.cfg.AcceptNewHub {
		return nil
	}
	id, _, err := readClusterIdentity(ctx, s.store)
	if err != nil {
		return err
	}
	stored := ""
	if id != nil {
		if sameHost(id.HubName, s.cfg.HubName) {
			return nil
		}
		stored = id.HubName
	} else {
		infos, err := readStoredHubs(ctx, s.store)
		if err != nil || len(infos) == 0 {
			return err
		}
		for _, h := range infos {
			if sameHost(h.Name, s.cfg.HubName) {
				return nil
			}
		}
		stored = infos[0].Name
	}
	given := s.cfg.HubName
	infos, err := readStoredHubs(ctx, s.store)
	if err != nil {
		return err
	}
	exists := false
	for _, h := range infos {
		exists = exists || sameHost(h.Name, given)
	}
	effect := fmt.Sprintf("starting would create a second, empty hub %q, make it the default and let the DPS assign new devices to either", given)
	add := fmt.Sprintf("to add %q beside it, run `berth hub create --name %s` against the running berth; ", given, given)
	if exists {
		effect = fmt.Sprintf("starting would make %q, which the store also serves, the default hub in its place", given)
		add = ""
	}
	return &HubMismatchError{Stored: stored, Given: given, msg: fmt.Sprintf(
		"server: this data directory's hub is %q, but this start's hub (--hub-name, else the first --host) is %q; %s, so it is refused. "+
			"To keep the hub under a new first --host, add --hub-name %s; %s"+
			"to make %q the default hub (%q stays, with its devices), start once with --accept-new-hub (docs/operations.md#the-hub-of-a-data-directory).",
		stored, given, effect, stored, add, given, stored)}
}

// recordLocalIdentity records, on an embedded store, the names this start
// serves: the hub the next start is checked against (checkLocalHub) and
// the first --host, whose change is logged.
func (s *Server) recordLocalIdentity(ctx context.Context) error {
	for range 3 {
		id, etag, err := readClusterIdentity(ctx, s.store)
		if err != nil {
			return err
		}
		next := clusterIdentity{GlobalEndpoint: s.cfg.Hosts[0], HubName: s.cfg.HubName, Created: time.Now().UTC()}
		cond := store.Cond{IfNotExists: true}
		if id != nil {
			if sameHost(id.HubName, next.HubName) && sameHost(id.GlobalEndpoint, next.GlobalEndpoint) {
				return nil
			}
			if !sameHost(id.GlobalEndpoint, next.GlobalEndpoint) {
				s.log.Info("server: the DPS global endpoint (the first --host) changed; devices and service clients must use the new name",
					"was", id.GlobalEndpoint, "now", next.GlobalEndpoint)
			}
			if !sameHost(id.HubName, next.HubName) {
				s.log.Warn("server: --accept-new-hub: the default hub changed; the previous hub stays, with its devices",
					"was", id.HubName, "now", next.HubName)
			}
			next.Created, next.DevelopmentCA = id.Created, id.DevelopmentCA
			cond = store.Cond{IfMatch: etag}
		}
		data, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("server: encode the identity: %w", err)
		}
		_, err = s.store.Put(ctx, store.Record{Kind: store.KindConfig, Key: clusterKey, Data: data}, cond)
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrPreconditionFailed) {
			continue
		}
		if err != nil {
			return fmt.Errorf("server: write the identity: %w", err)
		}
		return nil
	}
	return errors.New("server: the identity record keeps changing; try again")
}
