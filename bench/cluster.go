package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// A throwaway berth cluster for `berth bench --cluster N`: N child `berth
// serve` processes, each on a loopback address of its own, sharing a fresh
// PostgreSQL database and a NATS JetStream cluster of three servers (child
// processes of this binary), the telemetry stream replicated three times
// (docs/operations.md#running-a-cluster is the deployment this copies).
//
// Why the bench's own NATS cluster and not the machine's NATS: a 3-node
// deployment runs a 3-server NATS cluster with an R3 stream, whose
// replication acks are part of what a cluster costs, and one NATS server
// cannot hold an R3 stream; and berth's subjects between nodes
// (berth.push.hello, presence) are not prefixed, so every berth on a shared
// NATS would count the others' nodes as its peers. The NATS servers run
// with nats-server's defaults, as an operator runs them: a message is
// acknowledged once a majority of the three stored it (not fsynced; the
// replicas are the durability), unlike the embedded single node, which
// fsyncs each message (docs/telemetry-stream.md#durability-and-throughput).

// DefaultClusterPostgres is the PostgreSQL a spawned cluster creates its
// database on: the machine's, as the store and e2e tests use it.
const DefaultClusterPostgres = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ClusterConfig is a spawned cluster.
type ClusterConfig struct {
	Nodes int
	// Exe is the berth binary run as `berth serve`.
	Exe string
	// Hosts are the nodes' loopback addresses (one per node; the NATS
	// servers listen on the first). Empty: random 127.x.y.z.
	Hosts []string
	// Postgres is a URL to a database of a PostgreSQL server where the
	// bench may CREATE and DROP a database berth_bench_<random>.
	Postgres string
	// StreamReplicas of the telemetry stream; default 3.
	StreamReplicas int
}

// Cluster is a spawned berth cluster and its NATS servers and database.
type Cluster struct {
	Target   *Target
	nodes    []*Spawned
	nats     []*natsProc
	natsDir  string
	adminURL string
	database string
}

// The cluster's names: every node serves the same DPS and hub names (its
// first --host and --hub-name), and adds its own address as a further
// --host, as docs/operations.md#running-a-cluster says.
const (
	clusterGlobalEndpoint = "dps.bench.berth.test"
	clusterHubName        = "hub.bench.berth.test"
)

// StartCluster starts the cluster of cfg and waits until every node
// serves. On error, whatever was started is stopped and removed.
func StartCluster(ctx context.Context, cfg ClusterConfig) (c *Cluster, err error) {
	if cfg.Nodes < 1 {
		return nil, errors.New("bench: a cluster needs at least one node")
	}
	if cfg.Postgres == "" {
		cfg.Postgres = DefaultClusterPostgres
	}
	if cfg.StreamReplicas == 0 {
		cfg.StreamReplicas = 3
	}
	hosts := cfg.Hosts
	if len(hosts) == 0 {
		for range cfg.Nodes {
			hosts = append(hosts, RandomLoopback())
		}
	}
	if len(hosts) < cfg.Nodes {
		return nil, fmt.Errorf("bench: %d nodes need %d host addresses, got %d", cfg.Nodes, cfg.Nodes, len(hosts))
	}
	c = &Cluster{}
	defer func() {
		if err != nil {
			_ = c.Close(context.WithoutCancel(ctx))
			c = nil
		}
	}()
	storeURL, err := c.createDatabase(ctx, cfg.Postgres)
	if err != nil {
		return c, err
	}
	natsURL, err := c.startNATS(ctx, cfg.Exe, hosts[0])
	if err != nil {
		return c, err
	}
	args := func(i int) []string {
		return []string{"--host", clusterGlobalEndpoint + "," + hosts[i], "--hub-name", clusterHubName,
			"--store", storeURL, "--nats-url", natsURL, "--stream-replicas", fmt.Sprint(cfg.StreamReplicas)}
	}
	// The first node records the cluster's identity and makes the
	// development CA; the others get a copy of it before they start.
	dir0, err := os.MkdirTemp("", "berth-bench-node-")
	if err != nil {
		return c, fmt.Errorf("bench: data dir: %w", err)
	}
	first, err := spawnServe(ctx, cfg.Exe, dir0, hosts[0], args(0))
	if err != nil {
		return c, fmt.Errorf("bench: cluster node 1: %w", err)
	}
	c.nodes = append(c.nodes, first)
	rest := make([]*Spawned, cfg.Nodes-1)
	errs := make([]error, cfg.Nodes-1)
	var wg sync.WaitGroup
	for k := range rest {
		i := k + 1
		dir, err := os.MkdirTemp("", "berth-bench-node-")
		if err != nil {
			return c, fmt.Errorf("bench: data dir: %w", err)
		}
		if err := copyCA(dir0, dir); err != nil {
			os.RemoveAll(dir)
			return c, err
		}
		wg.Go(func() {
			rest[k], errs[k] = spawnServe(ctx, cfg.Exe, dir, hosts[i], args(i))
		})
	}
	wg.Wait()
	for k, n := range rest {
		if n != nil {
			c.nodes = append(c.nodes, n)
		}
		if errs[k] != nil && err == nil {
			err = fmt.Errorf("bench: cluster node %d: %w", k+2, errs[k])
		}
	}
	if err != nil {
		return c, err
	}
	t := *first.Target
	t.Mode = "cluster"
	t.Store = "postgres database " + c.database
	t.Stream = fmt.Sprintf("NATS cluster of %d servers (child processes), stream R%d", len(c.nats), cfg.StreamReplicas)
	t.StreamPIDs = c.NATSPIDs()
	if cfg.Nodes > 1 {
		for _, n := range c.nodes {
			t.Nodes = append(t.Nodes, Node{MQTTAddress: n.Target.MQTTAddress, HTTPSAddress: n.Target.HTTPSAddress,
				AMQPAddress: n.Target.AMQPAddress, PID: n.Target.ServerPID})
		}
	}
	if storeIsLocal(cfg.Postgres) {
		// Its backends are processes of this machine, whose CPU can be read.
		t.StorePIDs = c.backends
	}
	c.Target = &t
	return c, nil
}

// copyCA copies the development CA of one node's data directory into
// another's (docs/operations.md#running-a-cluster, "The CA").
func copyCA(from, to string) error {
	if err := os.MkdirAll(filepath.Join(to, "ca"), 0o700); err != nil {
		return fmt.Errorf("bench: CA dir: %w", err)
	}
	for _, f := range []string{"ca.crt", "ca.key"} {
		data, err := os.ReadFile(filepath.Join(from, "ca", f))
		if err != nil {
			return fmt.Errorf("bench: copy the cluster's CA: %w", err)
		}
		if err := os.WriteFile(filepath.Join(to, "ca", f), data, 0o600); err != nil {
			return fmt.Errorf("bench: copy the cluster's CA: %w", err)
		}
	}
	return nil
}

// createDatabase creates berth_bench_<random> on the server of admin and
// returns the store URL of it.
func (c *Cluster) createDatabase(ctx context.Context, admin string) (string, error) {
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("bench: --postgres %q: want a postgres:// URL", admin)
	}
	suffix, err := randomSuffix()
	if err != nil {
		return "", err
	}
	name := "berth_bench_" + suffix
	if err := pgExec(ctx, admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("bench: create database on %s: %w", u.Redacted(), err)
	}
	c.adminURL, c.database = admin, name
	u.Path = "/" + name
	return u.String(), nil
}

// storeIsLocal reports whether the PostgreSQL of admin is on loopback.
func storeIsLocal(admin string) bool {
	u, err := url.Parse(admin)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" || h == "" || strings.HasPrefix(h, "/") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// backends lists the PostgreSQL server processes connected to the
// cluster's database (pg_stat_activity), for their CPU; nil when the
// query fails. The query's own backend is on the admin database, not
// counted.
func (c *Cluster) backends(ctx context.Context) []int {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.adminURL)
	if err != nil {
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE datname = $1", c.database)
	if err != nil {
		return nil
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil
	}
	out := make([]int, len(pids))
	for i, p := range pids {
		out[i] = int(p)
	}
	return out
}

// pgExec runs one statement on a connection of its own.
func pgExec(ctx context.Context, dsn, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// natsServers is the size of the bench's NATS cluster: the smallest that
// holds an R3 stream and survives the loss of one server.
const natsServers = 3

// NATSNode is one server of the bench's NATS cluster, run by `berth bench
// nats-server` (a hidden command): the nats-server module berth embeds, in
// a process of its own so that its CPU is counted apart from the bench's.
type NATSNode struct {
	Name, Host, StoreDir string
	Port, ClusterPort    int
	Routes               []string
}

// RunNATSNode serves n until ctx ends.
func RunNATSNode(ctx context.Context, n NATSNode) error {
	var routes []*url.URL
	for _, r := range n.Routes {
		u, err := url.Parse(r)
		if err != nil {
			return fmt.Errorf("bench: NATS route %q: %w", r, err)
		}
		routes = append(routes, u)
	}
	ns, err := natsserver.NewServer(&natsserver.Options{
		ServerName: n.Name, Host: n.Host, Port: n.Port,
		JetStream: true, StoreDir: n.StoreDir, NoSigs: true, NoLog: true,
		Cluster: natsserver.ClusterOpts{Name: "berth-bench", Host: n.Host, Port: n.ClusterPort},
		Routes:  routes,
	})
	if err != nil {
		return fmt.Errorf("bench: NATS server %s: %w", n.Name, err)
	}
	go ns.Start()
	<-ctx.Done()
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

// startNATS starts a JetStream cluster of natsServers child processes on
// host and returns the URLs of all of them, once JetStream answers.
func (c *Cluster) startNATS(ctx context.Context, exe, host string) (string, error) {
	dir, err := os.MkdirTemp("", "berth-bench-nats-")
	if err != nil {
		return "", fmt.Errorf("bench: NATS store dir: %w", err)
	}
	c.natsDir = dir
	ports := make([]int, 2*natsServers)
	for i := range ports {
		if ports[i], err = freePort(host); err != nil {
			return "", err
		}
	}
	var routes, urls []string
	for i := range natsServers {
		routes = append(routes, "nats://"+net.JoinHostPort(host, fmt.Sprint(ports[2*i+1])))
		urls = append(urls, "nats://"+net.JoinHostPort(host, fmt.Sprint(ports[2*i])))
	}
	for i := range natsServers {
		cmd := exec.Command(exe, "bench", "nats-server", "--name", fmt.Sprintf("berth-bench-%d", i+1), "--host", host,
			"--port", fmt.Sprint(ports[2*i]), "--cluster-port", fmt.Sprint(ports[2*i+1]),
			"--routes", strings.Join(routes, ","), "--store-dir", filepath.Join(dir, fmt.Sprint(i+1)))
		cmd.Env = filterEnv(os.Environ(), "BERTH_")
		cmd.Stdout = io.Discard
		p := &natsProc{cmd: cmd, exited: make(chan struct{}), stderr: &tailBuffer{max: 4096}}
		cmd.Stderr = p.stderr
		cmd.SysProcAttr = childProcAttr()
		if err := cmd.Start(); err != nil {
			return "", fmt.Errorf("bench: start NATS server %d: %w", i+1, err)
		}
		go func() { _ = cmd.Wait(); close(p.exited) }()
		c.nats = append(c.nats, p)
	}
	all := strings.Join(urls, ",")
	// The cluster answers JetStream requests once every server is up and
	// it has elected its meta leader.
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for {
		for i, p := range c.nats {
			select {
			case <-p.exited:
				return "", fmt.Errorf("bench: NATS server %d exited: %s", i+1, p.stderr.String())
			default:
			}
		}
		if lastErr = jetStreamAnswers(ctx, all); lastErr == nil {
			return all, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return "", fmt.Errorf("bench: JetStream of the bench's NATS cluster never answered: %w", lastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// jetStreamAnswers reports whether the JetStream of urls answers.
func jetStreamAnswers(ctx context.Context, urls string) error {
	nc, err := nats.Connect(urls, nats.Timeout(2*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = js.AccountInfo(nats.Context(ctx))
	return err
}

// natsProc is a NATS server child process.
type natsProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	stderr *tailBuffer
}

// NATSPIDs are the NATS servers' processes, for their CPU.
func (c *Cluster) NATSPIDs() []int {
	var pids []int
	for _, p := range c.nats {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// Close stops the nodes (SIGTERM, in parallel), then the NATS servers, and
// drops the database and removes every data directory.
func (c *Cluster) Close(ctx context.Context) error {
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Go(func() { errs[i] = n.Close() })
	}
	wg.Wait()
	for _, p := range c.nats {
		if err := stopProcess(p.cmd.Process, p.exited, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if c.natsDir != "" {
		if err := os.RemoveAll(c.natsDir); err != nil {
			errs = append(errs, fmt.Errorf("bench: remove %s: %w", c.natsDir, err))
		}
	}
	if c.database != "" {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if err := pgExec(cctx, c.adminURL, "DROP DATABASE IF EXISTS "+pgx.Identifier{c.database}.Sanitize()+" WITH (FORCE)"); err != nil {
			errs = append(errs, fmt.Errorf("bench: drop database %s: %w", c.database, err))
		}
	}
	return errors.Join(errs...)
}
