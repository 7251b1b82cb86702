package bench

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/berth-iot/berth/internal/localconf"
)

// Target is the berth under load and what a device needs to reach it.
type Target struct {
	IDScope        string
	GlobalEndpoint string // DPS host name: TLS server name of both listeners
	MQTTAddress    string // host:port of the MQTT listener (DPS and hub)
	HTTPSAddress   string // host:port of the HTTPS listener
	AMQPAddress    string // host:port of the AMQP listener; "" when off
	HubHostName    string // the hub devices are assigned to
	CAFile         string
	RootCAs        *x509.CertPool
	// ServiceConnectionString authenticates the enrollment group set-up.
	ServiceConnectionString string
	// HubConnectionString reaches the hub's Event Hubs-compatible
	// endpoint (telemetry --read eventhubs).
	HubConnectionString string
	// ServerPID is the server's process, for memory figures; 0 when
	// unknown.
	ServerPID int
	// Mode says how the server runs: "local" (found through client.json),
	// "embedded" (in the bench's process), "spawned" (a child `berth
	// serve`) or "cluster" (N child `berth serve` on one PostgreSQL and
	// one NATS cluster).
	Mode string
	// Nodes are the listeners of every node of a cluster, the first being
	// the addresses above; empty for one berth. Device i provisions
	// through and connects to node i % len(Nodes): every node serves the
	// same DPS and hub, so a device reaches its node's address with the
	// same TLS names (docs/operations.md#running-a-cluster).
	Nodes []Node
	// Store and Stream describe a spawned cluster's shared services, for
	// the summary ("" otherwise).
	Store, Stream string
	// StorePIDs, when set, lists the store's server processes working for
	// this target (a spawned cluster's PostgreSQL backends), whose CPU
	// the summary adds (CPUUse).
	StorePIDs func(ctx context.Context) []int
	// StreamPIDs are the NATS servers of a spawned cluster, whose CPU the
	// summary adds too.
	StreamPIDs []int
}

// Node is one berth node's listeners, and its process when known.
type Node struct {
	MQTTAddress  string `json:"mqttAddress"`
	HTTPSAddress string `json:"httpsAddress"`
	AMQPAddress  string `json:"amqpAddress,omitempty"`
	PID          int    `json:"pid,omitempty"`
}

// NodeCount is how many berth nodes the target spreads devices over.
func (t *Target) NodeCount() int { return max(len(t.Nodes), 1) }

// ForDevice is the target as device i sees it: the same DPS, hub and
// credentials, the listeners of node i % NodeCount.
func (t *Target) ForDevice(i int) *Target {
	if len(t.Nodes) <= 1 {
		return t
	}
	n := t.Nodes[i%len(t.Nodes)]
	c := *t
	c.MQTTAddress, c.HTTPSAddress, c.AMQPAddress, c.ServerPID = n.MQTTAddress, n.HTTPSAddress, n.AMQPAddress, n.PID
	return &c
}

// ServerPIDs are the processes of every node whose pid is known.
func (t *Target) ServerPIDs() []int {
	if len(t.Nodes) == 0 {
		if t.ServerPID == 0 {
			return nil
		}
		return []int{t.ServerPID}
	}
	var pids []int
	for _, n := range t.Nodes {
		if n.PID != 0 {
			pids = append(pids, n.PID)
		}
	}
	return pids
}

// AddNodes makes t a cluster target of its own node and others: each
// entry is a data directory holding the node's client.json, or a host (or
// IP) whose listeners are on the ports of t's own. The nodes must be of
// t's cluster (same ID scope and hub), which is checked for data
// directories; a host is taken on trust.
func (t *Target) AddNodes(entries []string) error {
	self := Node{MQTTAddress: t.MQTTAddress, HTTPSAddress: t.HTTPSAddress, AMQPAddress: t.AMQPAddress, PID: t.ServerPID}
	nodes := []Node{self}
	for _, e := range entries {
		if fi, err := os.Stat(e); err == nil && fi.IsDir() {
			info, err := localconf.Read(e)
			if err != nil {
				return fmt.Errorf("bench: --nodes %s: %w", e, err)
			}
			if info.IDScope != t.IDScope || !strings.EqualFold(info.HubHostName, t.HubHostName) {
				return fmt.Errorf("bench: --nodes %s: ID scope %s and hub %s, not the cluster's %s and %s",
					e, info.IDScope, info.HubHostName, t.IDScope, t.HubHostName)
			}
			n := Node{MQTTAddress: info.MQTTAddress, HTTPSAddress: info.HTTPSAddress, AMQPAddress: info.AMQPAddress}
			if n != self {
				nodes = append(nodes, n)
			}
			continue
		}
		if strings.ContainsAny(e, ":/") {
			return fmt.Errorf("bench: --nodes %q: give a node's data directory or its host (its ports are the first node's)", e)
		}
		n := Node{MQTTAddress: onHost(e, t.MQTTAddress), HTTPSAddress: onHost(e, t.HTTPSAddress), AMQPAddress: onHost(e, t.AMQPAddress)}
		if n.MQTTAddress != self.MQTTAddress {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) > 1 {
		t.Nodes = nodes
	}
	return nil
}

// onHost is addr's port on host; "" stays "".
func onHost(host, addr string) string {
	if addr == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(host, port)
}

// TargetFromInfo describes the berth of a client.json. caFile and
// connStr, when not empty, replace the file's.
func TargetFromInfo(info *localconf.Info, caFile, connStr string) (*Target, error) {
	t := &Target{
		IDScope:                 info.IDScope,
		GlobalEndpoint:          info.GlobalEndpoint,
		MQTTAddress:             info.MQTTAddress,
		HTTPSAddress:            info.HTTPSAddress,
		AMQPAddress:             info.AMQPAddress,
		HubHostName:             info.HubHostName,
		CAFile:                  info.CAFile,
		ServiceConnectionString: info.ServiceConnectionString,
		HubConnectionString:     info.HubConnectionString,
		Mode:                    "local",
	}
	if caFile != "" {
		t.CAFile = caFile
	}
	if connStr != "" {
		t.ServiceConnectionString = connStr
	}
	switch {
	case t.IDScope == "" || t.GlobalEndpoint == "":
		return nil, errors.New("bench: client.json has no ID scope or global endpoint")
	case t.MQTTAddress == "" || t.HTTPSAddress == "":
		return nil, errors.New("bench: client.json has no listener addresses")
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bench: CA file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bench: CA file %s holds no PEM certificate", t.CAFile)
		}
	}
	return t, nil
}

// HubAddress is where to dial a device's assigned hub: this berth's MQTT
// listener when the hub is its own (the listener serves DPS and hub
// sessions alike), else the hub's host name on 8883.
func (t *Target) HubAddress(hub string) string {
	if hub == "" || strings.EqualFold(hub, t.HubHostName) {
		return t.MQTTAddress
	}
	return net.JoinHostPort(hub, "8883")
}

// Check refuses a target (any of its nodes) that is not on loopback unless
// allowRemote.
func (t *Target) Check(ctx context.Context, allowRemote bool) error {
	for i := range t.NodeCount() {
		n := t.ForDevice(i)
		for _, addr := range []string{n.MQTTAddress, n.HTTPSAddress, n.HubAddress("")} {
			if err := CheckLoopback(ctx, nil, addr, allowRemote); err != nil {
				return err
			}
		}
	}
	return nil
}
