package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
)

// clusterKey is the KindConfig record that holds what every node sharing
// the store must agree on (docs/operations.md#running-a-cluster).
const clusterKey = "cluster"

// clusterIdentity is the one DPS and hub identity of the nodes of a
// cluster: the names devices are given and the CA they trust. The ID scope
// and the policies are in the store already; these are the parts each node
// takes from its own flags and data directory, so a node started with
// other ones would silently serve another endpoint, create another hub or
// present a certificate the devices do not trust.
type clusterIdentity struct {
	// GlobalEndpoint is the first --host: the DPS global endpoint and
	// service host name.
	GlobalEndpoint string `json:"globalEndpoint"`
	// HubName is --hub-name: the hub devices are assigned to.
	HubName string `json:"hubName"`
	// DevelopmentCA is the SHA-256 of berth's development CA certificate
	// (hex), or "" when the nodes serve the operator's certificate.
	DevelopmentCA string    `json:"developmentCA,omitempty"`
	Created       time.Time `json:"createdTime"`
}

// ClusterMismatchError refuses a node whose configuration differs from
// the cluster's on its shared store.
type ClusterMismatchError struct{ msg string }

func (e *ClusterMismatchError) Error() string { return e.msg }

func mismatch(format string, args ...any) error {
	return &ClusterMismatchError{msg: fmt.Sprintf(format, args...) +
		" Every node of one cluster must be started with the same first --host and --hub-name and serve certificates from the same CA (docs/operations.md#running-a-cluster)."}
}

func readClusterIdentity(ctx context.Context, st store.Store) (*clusterIdentity, string, error) {
	rec, err := st.Get(ctx, store.KindConfig, clusterKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("server: read the cluster identity: %w", err)
	}
	var id clusterIdentity
	if err := json.Unmarshal(rec.Data, &id); err != nil {
		return nil, "", fmt.Errorf("server: decode the cluster identity: %w", err)
	}
	return &id, rec.ETag, nil
}

// checkClusterNames refuses, before anything is created, a node whose
// names differ from the cluster's on a shared store. A store that has no
// identity yet but has hubs (a deployment from before the identity
// record) must at least already serve the node's hub: otherwise this node
// would add a second hub that no other node's devices are assigned to.
func (s *Server) checkClusterNames(ctx context.Context) error {
	if s.cfg.AcceptNewHub {
		return nil // checkClusterCA records the new names
	}
	id, _, err := readClusterIdentity(ctx, s.store)
	if err != nil {
		return err
	}
	if id == nil {
		infos, err := readStoredHubs(ctx, s.store)
		if err != nil {
			return err
		}
		for _, h := range infos {
			if sameHost(h.Name, s.cfg.HubName) {
				return nil
			}
		}
		if len(infos) > 0 {
			return mismatch("server: this node's hub (--hub-name, else the first --host) is %q, but the store it shares serves %q and not that hub; starting would create a new hub.", s.cfg.HubName, infos[0].Name)
		}
		return nil
	}
	if !sameHost(id.GlobalEndpoint, s.cfg.Hosts[0]) || !sameHost(id.HubName, s.cfg.HubName) {
		return mismatch("server: this node was started with first --host %q and hub %q, but the cluster on its store was created with first --host %q and --hub-name %q; starting would serve another DPS endpoint and create a new hub, so it is refused (give a node's own address as a further --host).",
			s.cfg.Hosts[0], s.cfg.HubName, id.GlobalEndpoint, id.HubName)
	}
	return nil
}

// checkClusterCA records the cluster's identity on a store that has none
// and refuses a node whose development CA is not the cluster's. Called
// once TLS is set up.
func (s *Server) checkClusterCA(ctx context.Context) error {
	fp := ""
	if s.ca != nil {
		sum := sha256.Sum256(s.ca.Cert.Raw)
		fp = hex.EncodeToString(sum[:])
	}
	for range 3 {
		id, etag, err := readClusterIdentity(ctx, s.store)
		if err != nil {
			return err
		}
		if id != nil && s.cfg.AcceptNewHub && (!sameHost(id.GlobalEndpoint, s.cfg.Hosts[0]) || !sameHost(id.HubName, s.cfg.HubName)) {
			// The operator renames the cluster: record this node's names
			// (the CA is checked as always, below).
			s.log.Warn("server: --accept-new-hub: the cluster's names change; start every other node with the new ones",
				"firstHostWas", id.GlobalEndpoint, "hubWas", id.HubName, "firstHost", s.cfg.Hosts[0], "hub", s.cfg.HubName)
			next := *id
			next.GlobalEndpoint, next.HubName = s.cfg.Hosts[0], s.cfg.HubName
			data, err := json.Marshal(next)
			if err != nil {
				return fmt.Errorf("server: encode the cluster identity: %w", err)
			}
			_, err = s.store.Put(ctx, store.Record{Kind: store.KindConfig, Key: clusterKey, Data: data}, store.Cond{IfMatch: etag})
			if errors.Is(err, store.ErrPreconditionFailed) {
				continue
			}
			if err != nil {
				return fmt.Errorf("server: write the cluster identity: %w", err)
			}
			id = &next
		}
		if id == nil {
			data, err := json.Marshal(clusterIdentity{GlobalEndpoint: s.cfg.Hosts[0], HubName: s.cfg.HubName, DevelopmentCA: fp, Created: time.Now().UTC()})
			if err != nil {
				return fmt.Errorf("server: encode the cluster identity: %w", err)
			}
			_, err = s.store.Put(ctx, store.Record{Kind: store.KindConfig, Key: clusterKey, Data: data}, store.Cond{IfNotExists: true})
			if errors.Is(err, store.ErrExists) {
				continue // another node started at the same time: check against its
			}
			if err != nil {
				return fmt.Errorf("server: write the cluster identity: %w", err)
			}
			return nil
		}
		if err := s.checkClusterNames(ctx); err != nil {
			return err
		}
		switch {
		case id.DevelopmentCA != "" && fp != "" && id.DevelopmentCA != fp:
			return mismatch("server: this node's development CA (%s, SHA-256 %s) is not the cluster's (SHA-256 %s): devices that trust the cluster's CA would refuse this node. Copy ca/ca.crt and ca/ca.key from the data directory of a node of the cluster into this node's, or give every node the operator's certificate with --tls-cert and --tls-key.",
				s.ca.CertFile, fp, id.DevelopmentCA)
		case id.DevelopmentCA == "" && fp != "":
			return mismatch("server: the nodes of this cluster serve the operator's certificate (--tls-cert, --tls-key) and this node would serve one from its own development CA (%s), which devices do not trust.", s.ca.CertFile)
		}
		return nil
	}
	return errors.New("server: the cluster identity keeps changing; try again")
}

// isShared reports whether the store URL names a store several nodes can
// share: only there is a cluster checked and watched.
func isShared(storeURL string) bool {
	return strings.HasPrefix(storeURL, "postgres://") || strings.HasPrefix(storeURL, "postgresql://")
}

// watchStore keeps what this node holds in memory from the shared store
// current with the other nodes' changes: policies (a renewed key works,
// and the old one stops, on every node at once), the hub directory (hubs
// created, updated, deleted) and each hub's policies. The store announces
// each committed change (PostgreSQL LISTEN/NOTIFY, store/postgres.Watch);
// no polling. The DPS service's cached enrollment groups and CA
// certificates, and its per-connection memory of authentications, are
// dropped when another node changes an enrollment, a group or a CA
// certificate: the memories of that registration ID or that group's
// members, every one for a certificate (dps.Service.ForgetAuth). Devices are read from the store on
// every use; device revocation reaches live sessions through linkbus.
func (s *Server) watchStore(ctx context.Context) {
	if s.pg == nil {
		return
	}
	s.pg.SetWatchErrorHandler(func(err error) {
		s.log.Warn("server: lost the store's change notifications; reconnecting, then rereading policies and hubs", "error", err.Error())
	})
	reload := func(what string, fn func(context.Context) error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := fn(rctx); err != nil && !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			s.log.Error("server: could not reload a change made on another node", "what", what, "error", err.Error())
		}
	}
	hubPolicies := func(name string) {
		if h, ok := s.hubs.Lookup(name); ok {
			reload("policies of hub "+name, h.Settings.PolicySet().Reload)
		}
	}
	all := func() {
		s.dps.ForgetAuth("", "")
		reload("DPS policies", s.settings.PolicySet().Reload)
		reload("hubs", s.hubs.Reload)
		for _, h := range s.hubs.List() {
			hubPolicies(h.Name)
		}
	}
	s.pg.Watch(ctx, func(kind store.Kind, key string) {
		switch kind {
		case store.KindEnrollment, store.KindGroup, store.KindCertificate:
			s.dps.ForgetAuth(kind, key)
			return
		case store.KindConfig:
		default:
			return
		}
		switch {
		case key == "dps":
			reload("DPS policies", s.settings.PolicySet().Reload)
		case key == "hubs":
			reload("hubs", s.hubs.Reload)
		case strings.HasPrefix(key, "hub/"):
			hubPolicies(strings.TrimPrefix(key, "hub/"))
		}
	}, all)
}

// watchHubPolicies makes every change of a hub's policies — here or, through
// watchStore, on another node — close this node's device sessions opened
// with a policy key that no longer admits them (renewed, deleted, or
// DeviceConnect taken away), as a device's revocation closes sessions
// opened with its old keys, and detach AMQP service links whose token the
// policies no longer admit.
func (s *Server) watchHubPolicies(infos []hub.HubInfo) {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	if s.policyWatched == nil {
		s.policyWatched = map[*hub.Settings]bool{}
	}
	for _, info := range infos {
		h, ok := s.hubs.Lookup(info.Name)
		if !ok || s.policyWatched[h.Settings] {
			continue
		}
		s.policyWatched[h.Settings] = true
		set, name := h.Settings, info.Name
		set.PolicySet().Watch(func() {
			if n := s.hubSvc.Links.RevokePolicies(name, set.PolicyCredentials()); n > 0 {
				s.log.Info("server: closed device sessions opened with a hub policy key that was renewed or removed", "hub", name, "sessions", n)
			}
			// AMQP service links (CBS put-token with a policy) likewise;
			// Start has set s.amqp before any change can arrive.
			if s.amqp != nil {
				s.amqp.RecheckServiceGrants(name)
			}
		})
	}
}
