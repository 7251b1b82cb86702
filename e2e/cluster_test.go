package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/stream"
)

// The cluster suite: three berth processes on their own loopback
// addresses, one fresh PostgreSQL schema (reached through a proxy the test
// can cut) and a three-server NATS cluster with JetStream from the
// nats-server module, each server in a process of its own (the test binary
// re-executed), so that one can be killed -9. Real clients: paho over
// MQTT/TLS, net/http on the service and device APIs
// (docs/operations.md#running-a-cluster).

// clusterNodeEnv carries a node process's server.Config (JSON): the test
// binary re-executes itself as TestCluster with it set.
const clusterNodeEnv = "BERTH_E2E_CLUSTER_NODE"

// Loopback addresses of this suite: NATS servers on .11–.13, berth nodes on
// .21–.23, the PostgreSQL proxy on .2 (every port ephemeral), in 127.0.23.0/24
// or the /24 whose first three octets BERTH_E2E_CLUSTER_NET gives
// ("127.0.47.", for a machine where another suite uses .23).
var clusterNet = envOr("BERTH_E2E_CLUSTER_NET", "127.0.23.")

// runClusterNode is one berth node of TestCluster, in a process of its
// own so that the test can kill -9 it (TestCluster re-executed with
// clusterNodeEnv set). It serves until its stdin closes (the parent ends
// it, or dies).
func runClusterNode(spec string) {
	var cfg server.Config
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		fmt.Println("FAIL", err)
		return
	}
	// BERTH_E2E_CLUSTER_LOG=info or debug shows more of the nodes' logs.
	level := slog.LevelWarn
	_ = level.UnmarshalText([]byte(os.Getenv("BERTH_E2E_CLUSTER_LOG")))
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		fmt.Println("FAIL", err)
		return
	}
	if err := srv.Start(); err != nil {
		fmt.Println("FAIL", err)
		return
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
}

// clusterNode is a berth process of the cluster.
type clusterNode struct {
	*berth
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

// startNode starts a berth process with cfg in dataDir and waits until it
// serves.
func startNode(t *testing.T, i int, dataDir string, cfg server.Config) *clusterNode {
	t.Helper()
	ip := clusterNet + fmt.Sprint(20+i)
	cfg.DataDir = dataDir
	cfg.Hosts = []string{"127.0.0.1", "localhost", ip}
	cfg.HubName = "hub.berth.test"
	cfg.MQTTAddr, cfg.HTTPSAddr, cfg.AMQPAddr = ip+":0", ip+":0", ip+":0"
	cfg.AdminAddr = "" // none
	cfg.StreamListen = "none"
	cfg.RetryAfter = 1
	spec, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCluster$", "-test.v=false")
	cmd.Env = append(os.Environ(), clusterNodeEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &clusterNode{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "READY") || strings.HasPrefix(l, "FAIL") {
				ready <- l
			}
		}
		close(ready)
	}()
	go func() { _ = cmd.Wait(); close(n.done) }()
	t.Cleanup(n.stop)
	select {
	case l, ok := <-ready:
		if !ok || l != "READY" {
			t.Fatalf("node %d did not start: %q", i, l)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("node %d did not start within a minute", i)
	}
	n.berth = &berth{t: t, dataDir: dataDir}
	n.load()
	return n
}

// stop ends the process gracefully, or kills it.
func (n *clusterNode) stop() {
	_ = n.stdin.Close()
	select {
	case <-n.done:
	case <-time.After(15 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}

// kill9 kills the process without warning.
func (n *clusterNode) kill9() {
	_ = n.cmd.Process.Kill()
	<-n.done
}

// pgProxy forwards TCP to PostgreSQL until cut: then it closes every
// connection and refuses new ones (accepts and closes at once), as a
// database server that stopped would, until restored.
type pgProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
}

func startPGProxy(t *testing.T, target string) *pgProxy {
	t.Helper()
	ln, err := net.Listen("tcp", clusterNet+"2:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pgProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *pgProxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[u] = struct{}{}
	p.mu.Unlock()
	go func() { _, _ = io.Copy(u, c); u.Close() }()
	_, _ = io.Copy(c, u)
	c.Close()
}

// cut drops every connection and refuses new ones.
func (p *pgProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *pgProxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// through returns dsn with its host replaced by the proxy's address.
func (p *pgProxy) through(t *testing.T, dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

// eventually polls cond every 50 ms until it holds or a generous bound
// passes (a failure, not a timing assertion), and returns how long it
// took, for the log.
func eventually(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	el := time.Since(start)
	t.Logf("%s after %v", what, el.Round(time.Millisecond))
	return el
}

func TestCluster(t *testing.T) {
	if spec := os.Getenv(clusterNodeEnv); spec != "" {
		runClusterNode(spec)
		return
	}
	if spec := os.Getenv(natsNodeEnv); spec != "" {
		runNATSNode(spec)
		return
	}
	dsn := sharedStore(t)
	target, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startPGProxy(t, target.Host)
	// The NATS servers run in processes of their own, so that one can be
	// killed -9 (a graceful shutdown hands its streams' leadership over
	// first, which is not what a lost machine does).
	natsURL, natsServers := natsClusterProcs(t)
	// R3: the telemetry stream survives the loss of one NATS server.
	cfg := server.Config{StoreURL: proxy.through(t, dsn), NATSURL: natsURL, StreamReplicas: 3}

	n1 := startNode(t, 1, t.TempDir(), cfg)
	n2 := startNode(t, 2, joinDir(t, n1.berth), cfg)
	n3 := startNode(t, 3, joinDir(t, n1.berth), cfg)
	nodes := []*clusterNode{n1, n2, n3}
	setT := func(t *testing.T) {
		for _, n := range nodes {
			n.t = t
		}
	}
	if n1.info.IDScope != n3.info.IDScope || n1.info.HubHostName != n3.info.HubHostName {
		t.Fatalf("nodes disagree: %s %s / %s %s", n1.info.IDScope, n1.info.HubHostName, n3.info.IDScope, n3.info.HubHostName)
	}

	t.Run("a node with other names or another CA is refused", func(t *testing.T) {
		for _, c := range []struct {
			name, dir, host, hub, want string
		}{
			{"another hub name", joinDir(t, n1.berth), "127.0.0.1", "other.berth.test", "--hub-name"},
			{"another first host", joinDir(t, n1.berth), "dps.example.lan", "hub.berth.test", "--host"},
			{"another CA", t.TempDir(), "127.0.0.1", "hub.berth.test", "development CA"},
		} {
			_, err := server.New(t.Context(), server.Config{
				DataDir: c.dir, Hosts: []string{c.host}, HubName: c.hub, StoreURL: cfg.StoreURL, NATSURL: natsURL,
				MQTTAddr: clusterNet + "30:0", HTTPSAddr: clusterNet + "30:0", AMQPAddr: clusterNet + "30:0",
			})
			var me *server.ClusterMismatchError
			if !errors.As(err, &me) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: New = %v; want a ClusterMismatchError naming %s", c.name, err, c.want)
			}
		}
		// Nothing was created: the store still serves one hub.
		var hubs []hub.HubInfo
		if resp, data := n1.do("GET", "/hubs", n1.serviceToken(), nil, nil, &hubs); resp.StatusCode != 200 || len(hubs) != 1 {
			t.Fatalf("hubs after the refused nodes: %d %s", resp.StatusCode, data)
		}
	})

	t.Run("a renewed hub policy key works everywhere and the old one nowhere", func(t *testing.T) {
		setT(t)
		hubName := n1.info.HubHostName
		var p hub.Policy
		if resp, data := n1.do("PUT", "/hubs/"+hubName+"/policies/clusterread", n1.serviceToken(), map[string]any{"rights": []string{"RegistryRead"}}, nil, &p); resp.StatusCode != 201 {
			t.Fatalf("create policy on node 1: %d %s", resp.StatusCode, data)
		}
		status := func(n *clusterNode, key string) int {
			tok, err := sas.Sign(hubName, key, "clusterread", time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			resp, _ := n.do("GET", "/devices?top=1&api-version=2021-04-12", tok, nil, nil, nil)
			return resp.StatusCode
		}
		eventually(t, "the new policy accepted on node 3", func() bool { return status(n3, p.PrimaryKey) == 200 })
		old := p.PrimaryKey
		if resp, data := n2.do("POST", "/hubs/"+hubName+"/policies/clusterread/renewKey?keyType=primary", n2.serviceToken(), nil, nil, &p); resp.StatusCode != 200 || p.PrimaryKey == old {
			t.Fatalf("renew on node 2: %d %s", resp.StatusCode, data)
		}
		for _, n := range []*clusterNode{n1, n3} {
			eventually(t, "the old key refused on "+n.info.HTTPSAddress, func() bool { return status(n, old) == 401 })
			eventually(t, "the new key accepted on "+n.info.HTTPSAddress, func() bool { return status(n, p.PrimaryKey) == 200 })
		}
	})

	t.Run("a device session opened with a renewed policy key ends on every node", func(t *testing.T) {
		setT(t)
		hubName := n1.info.HubHostName
		id := "cluster-policy-" + randomSuffix()
		n1.createHubDevice(id)
		var p hub.Policy
		if resp, data := n1.do("PUT", "/hubs/"+hubName+"/policies/clusterdevices", n1.serviceToken(), map[string]any{"rights": []string{"DeviceConnect"}}, nil, &p); resp.StatusCode != 201 {
			t.Fatalf("create policy on node 1: %d %s", resp.StatusCode, data)
		}
		var d *hubDevice
		eventually(t, "the policy's device token accepted on node 3", func() bool {
			tok, err := sas.SignEncoded(hubName+"/devices/"+id, p.PrimaryKey, "clusterdevices", time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if n3.hubConnectErr(id, tok) != nil {
				return false
			}
			d = n3.hubConnectAs(id, hubName+"/"+id+"/?api-version=2021-04-12", tok, false)
			return true
		})
		// The secondary key is untouched: the session stays until the
		// primary, which it was opened with, is renewed.
		if resp, data := n1.do("POST", "/hubs/"+hubName+"/policies/clusterdevices/renewKey?keyType=secondary", n1.serviceToken(), nil, nil, &p); resp.StatusCode != 200 {
			t.Fatalf("renew secondary on node 1: %d %s", resp.StatusCode, data)
		}
		other := id + "-other"
		n1.createHubDevice(other)
		eventually(t, "the new secondary key accepted on node 3", func() bool {
			tok, err := sas.SignEncoded(hubName+"/devices/"+other, p.SecondaryKey, "clusterdevices", time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return n3.hubConnectErr(other, tok) == nil
		})
		select {
		case err := <-d.lost:
			t.Fatalf("renewing the secondary key closed the session opened with the primary: %v", err)
		default:
		}
		if resp, data := n1.do("POST", "/hubs/"+hubName+"/policies/clusterdevices/renewKey?keyType=primary", n1.serviceToken(), nil, nil, nil); resp.StatusCode != 200 {
			t.Fatalf("renew primary on node 1: %d %s", resp.StatusCode, data)
		}
		at := time.Now()
		select {
		case <-d.lost:
			t.Logf("the session on node 3 closed %v after the renewal on node 1", time.Since(at).Round(time.Millisecond))
		case <-time.After(hubWait):
			t.Fatal("the session opened with the renewed key on node 3 is still open")
		}
	})

	t.Run("an AMQP service link authorised with a renewed policy key is detached on every node", func(t *testing.T) {
		setT(t)
		hubName := n1.info.HubHostName
		id := "cluster-amqp-" + randomSuffix()
		n1.createHubDevice(id)
		var p hub.Policy
		if resp, data := n1.do("PUT", "/hubs/"+hubName+"/policies/clusterservice", n1.serviceToken(), map[string]any{"rights": []string{"ServiceConnect"}}, nil, &p); resp.StatusCode != 201 {
			t.Fatalf("create policy on node 1: %d %s", resp.StatusCode, data)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		var snd *goamqp.Sender
		eventually(t, "the policy's service token accepted over AMQP on node 3", func() bool {
			tok, err := sas.Sign(hubName, p.PrimaryKey, "clusterservice", time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			// SASL PLAIN {policy}@sas.root.{hub}, as the service SDKs.
			c, err := goamqp.Dial(ctx, "amqps://"+n3.info.AMQPAddress, &goamqp.ConnOptions{
				SASLType:  goamqp.SASLTypePlain("clusterservice@sas.root."+strings.Split(hubName, ".")[0], tok),
				TLSConfig: &tls.Config{RootCAs: n3.roots, ServerName: "127.0.0.1"},
			})
			if err != nil {
				return false
			}
			t.Cleanup(func() { _ = c.Close() })
			s, err := c.NewSession(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if snd, err = s.NewSender(ctx, "/messages/devicebound", nil); err != nil {
				t.Fatal(err)
			}
			return true
		})
		send := func() error {
			to := "/devices/" + id + "/messages/devicebound"
			return snd.Send(ctx, &goamqp.Message{Properties: &goamqp.MessageProperties{MessageID: randomSuffix(), To: &to}, Data: [][]byte{[]byte("c2d")}}, nil)
		}
		if err := send(); err != nil {
			t.Fatalf("C2D over the service link before the renewal: %v", err)
		}
		if resp, data := n1.do("POST", "/hubs/"+hubName+"/policies/clusterservice/renewKey?keyType=primary", n1.serviceToken(), nil, nil, nil); resp.StatusCode != 200 {
			t.Fatalf("renew primary on node 1: %d %s", resp.StatusCode, data)
		}
		eventually(t, "the service link on node 3 detached", func() bool {
			var le *goamqp.LinkError
			err := send()
			return errors.As(err, &le) && le.RemoteErr != nil && le.RemoteErr.Condition == goamqp.ErrCondUnauthorizedAccess
		})
	})

	t.Run("a hub created on one node is served by the others", func(t *testing.T) {
		setT(t)
		// Not a candidate for allocation: the later subtests expect their
		// devices on the first hub.
		if resp, data := n2.do("PUT", "/hubs/second.berth.test", n2.serviceToken(), map[string]any{"applyAllocationPolicy": false}, nil, nil); resp.StatusCode != 201 {
			t.Fatalf("create hub on node 2: %d %s", resp.StatusCode, data)
		}
		eventually(t, "the new hub served by node 3", func() bool {
			resp, _ := n3.do("GET", "/hubs/second.berth.test", n3.serviceToken(), nil, nil, nil)
			return resp.StatusCode == 200
		})
	})

	t.Run("an enrollment group's key rolled on one node is used by the others", func(t *testing.T) {
		setT(t)
		// Nodes keep enrollment groups in memory (dps/authcache.go); the
		// store's change announcement must reach them.
		const group, regID = "cluster-fleet", "cluster-member-1"
		oldKey := n1.createGroup(group)
		register := func(n *clusterNode, groupKey string) int {
			derived, err := sas.DeriveKey(groupKey, regID)
			if err != nil {
				t.Fatal(err)
			}
			resp, _ := n.do("PUT", "/"+n.info.IDScope+"/registrations/"+regID+"/register?api-version=2021-06-01",
				n.deviceToken(regID, derived), `{"registrationId":"`+regID+`"}`, map[string]string{"Content-Encoding": "utf-8"}, nil)
			return resp.StatusCode
		}
		for _, n := range []*clusterNode{n2, n3} {
			eventually(t, "the new group's member registers on "+n.info.HTTPSAddress, func() bool { return register(n, oldKey) == 202 })
		}
		newKey := dps.NewKey()
		if resp, data := n1.do("PUT", "/enrollmentGroups/"+group+"?api-version=2021-10-01", n1.serviceToken(),
			map[string]any{"enrollmentGroupId": group, "attestation": map[string]any{"type": "symmetricKey",
				"symmetricKey": map[string]any{"primaryKey": newKey, "secondaryKey": dps.NewKey()}}},
			map[string]string{"If-Match": "*"}, nil); resp.StatusCode != 200 {
			t.Fatalf("roll the group's key on node 1: %d %s", resp.StatusCode, data)
		}
		for _, n := range []*clusterNode{n2, n3} {
			eventually(t, "the old group key refused on "+n.info.HTTPSAddress, func() bool { return register(n, oldKey) == 401 })
			if st := register(n, newKey); st != 202 {
				t.Errorf("the new group key on %s: %d, want 202", n.info.HTTPSAddress, st)
			}
		}
	})

	t.Run("a connection on another node replaces the older one", func(t *testing.T) {
		setT(t)
		id := "cluster-one-" + randomSuffix()
		key := n1.createHubDevice(id)
		d1 := n1.hubConnect(id, key, false)
		d3 := n3.hubConnect(id, key, false)
		select {
		case <-d1.lost:
		case <-time.After(hubWait):
			t.Fatal("the older session on node 1 is still open after the device connected to node 3")
		}
		d3.subscribe("$iothub/twin/PATCH/properties/desired/#", 0)
		tw := n2.getTwin(id)
		if _, status, body, _ := n2.patchTwin(id, tw.ETag, `{"properties":{"desired":{"where":"node3"}}}`); status != 200 {
			t.Fatalf("patch through node 2: %d %s", status, body)
		}
		d3.next(d3.desired, "the desired patch on the newer session (node 3)")
		select {
		case err := <-d3.lost:
			t.Fatalf("the newer session on node 3 was closed: %v", err)
		default:
		}
	})

	t.Run("connectionState and lastActivityTime are right from any node", func(t *testing.T) {
		setT(t)
		id := "cluster-presence-" + randomSuffix()
		key := n1.createHubDevice(id)
		before := time.Now().Add(-time.Second)
		d := n3.hubConnect(id, key, false)
		d.publish("devices/"+id+"/messages/events/", 1, "here")
		for _, n := range []*clusterNode{n1, n2} {
			var dev hub.Device
			if resp, data := n.do("GET", "/devices/"+id+"?api-version=2021-04-12", n.hubServiceToken(), nil, nil, &dev); resp.StatusCode != 200 {
				t.Fatalf("get device: %d %s", resp.StatusCode, data)
			}
			if dev.ConnectionState != "Connected" || dev.LastActivityTime.Before(before) {
				t.Errorf("node %s: connectionState %q lastActivityTime %v; want Connected, after %v", n.info.HTTPSAddress, dev.ConnectionState, dev.LastActivityTime, before)
			}
			var tw map[string]any
			if resp, data := n.do("GET", "/twins/"+id+"?api-version=2021-04-12", n.hubServiceToken(), nil, nil, &tw); resp.StatusCode != 200 || tw["connectionState"] != "Connected" {
				t.Errorf("twin from node %s: %d connectionState %v (%s)", n.info.HTTPSAddress, resp.StatusCode, tw["connectionState"], data)
			}
			var rows []map[string]any
			q := map[string]string{"query": "SELECT * FROM devices WHERE connectionState = 'Connected' AND deviceId = '" + id + "'"}
			if resp, data := n.do("POST", "/devices/query?api-version=2021-04-12", n.hubServiceToken(), q, nil, &rows); resp.StatusCode != 200 || len(rows) != 1 {
				t.Errorf("query from node %s: %d %s; want the device, connected", n.info.HTTPSAddress, resp.StatusCode, data)
			}
		}
		d.c.Disconnect(100)
		eventually(t, "Disconnected seen from node 1", func() bool {
			var dev hub.Device
			n1.do("GET", "/devices/"+id+"?api-version=2021-04-12", n1.hubServiceToken(), nil, nil, &dev)
			return dev.ConnectionState == "Disconnected"
		})
	})

	t.Run("disabling a device on one node closes its session on another", func(t *testing.T) {
		setT(t)
		id := "cluster-revoke-" + randomSuffix()
		key := n1.createHubDevice(id)
		d := n2.hubConnect(id, key, false)
		n1.putDevice(id, map[string]any{"deviceId": id, "status": "disabled", "authentication": sasAuth(key, key)})
		select {
		case <-d.lost:
		case <-time.After(hubWait):
			t.Fatal("the disabled device's session on node 2 is still open")
		}
	})

	t.Run("an unreachable store is answered with retryable errors, and berth recovers", func(t *testing.T) {
		setT(t)
		regID := "cluster-dps-" + randomSuffix()
		enrollKey := n1.createEnrollment(regID)
		devID := "cluster-store-" + randomSuffix()
		devKey := n1.createHubDevice(devID)

		proxy.cut()
		restored := false
		defer func() {
			if !restored {
				proxy.restore()
			}
		}()
		// DPS over HTTPS: 503 with retry-after, which the SDKs retry.
		base := "/" + n1.info.IDScope + "/registrations/" + regID
		resp, data := n1.do("PUT", base+"/register?api-version=2021-06-01", n1.deviceToken(regID, enrollKey), `{"registrationId":"`+regID+`"}`, nil, nil)
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Errorf("DPS register with the store down: %d retry-after %q %s; want 503 with retry-after", resp.StatusCode, resp.Header.Get("Retry-After"), data)
		}
		// Hub service API: 503 ServiceUnavailable.
		resp, data = n2.do("GET", "/devices/"+devID+"?api-version=2021-04-12", n2.hubServiceToken(), nil, nil, nil)
		checkHubError(t, "get device with the store down", resp.StatusCode, resp.Header, data, 503, "ServiceUnavailable")
		// MQTT: CONNACK 3, server unavailable.
		if err := n3.hubConnectErr(devID, hubToken(t, n3.info.HubHostName, devID, devKey)); err == nil || !strings.Contains(strings.ToLower(err.Error()), "unavailable") {
			t.Errorf("MQTT CONNECT with the store down: %v; want CONNACK 3 (server unavailable)", err)
		}

		proxy.restore()
		restored = true
		eventually(t, "the hub API answering again", func() bool {
			resp, _ := n2.do("GET", "/devices/"+devID+"?api-version=2021-04-12", n2.hubServiceToken(), nil, nil, nil)
			return resp.StatusCode == 200
		})
		eventually(t, "MQTT CONNECT accepted again", func() bool {
			return n3.hubConnectErr(devID, hubToken(t, n3.info.HubHostName, devID, devKey)) == nil
		})
		// A device retries its registration after retry-after, as the
		// SDKs do, and is assigned.
		eventually(t, "DPS registering again", func() bool {
			resp, _ := n1.do("PUT", base+"/register?api-version=2021-06-01", n1.deviceToken(regID, enrollKey), `{"registrationId":"`+regID+`"}`, nil, nil)
			return resp.StatusCode == 202
		})
		checkAssigned(t, n1.provisionHTTPS(regID, enrollKey), regID, n1.info.HubHostName)
	})

	t.Run("kill -9 of a node loses nothing acknowledged", func(t *testing.T) {
		setT(t)
		id := "cluster-kill-" + randomSuffix()
		key := n1.createHubDevice(id)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		reader, err := stream.Open(ctx, stream.Config{URL: natsURL, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer reader.Close()
		msgs, err := reader.Subscribe(ctx, stream.SubscribeOptions{DeviceID: id, StartTime: time.Now().Add(-time.Minute)})
		if err != nil {
			t.Fatal(err)
		}

		// QoS 1 telemetry to node 2 while it is killed: every message
		// PUBACKed before the kill must be in the stream.
		d := n2.hubConnect(id, key, false)
		var acked []string
		var mu sync.Mutex
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			for i := 0; ; i++ {
				body := fmt.Sprintf("m-%d", i)
				tok := d.c.Publish("devices/"+id+"/messages/events/", 1, false, body)
				if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					return
				}
				mu.Lock()
				acked = append(acked, body)
				mu.Unlock()
			}
		}()
		eventually(t, "20 messages acknowledged by node 2", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= 20
		})
		n2.kill9()
		<-sent
		// The device reconnects to another node, as the SDKs retry
		// through the load balancer, and goes on.
		d1 := n1.hubConnect(id, key, false)
		d1.publish("devices/"+id+"/messages/events/", 1, "after")
		mu.Lock()
		want := append(append([]string{}, acked...), "after")
		mu.Unlock()
		got := map[string]bool{}
		for _, w := range want {
			for !got[w] {
				select {
				case m := <-msgs:
					got[string(m.Body)] = true
				case <-time.After(hubWait):
					t.Fatalf("acknowledged message %q missing from the stream (%d acknowledged before the kill)", w, len(want)-1)
				}
			}
		}
		t.Logf("%d messages acknowledged before the kill, all in the stream", len(want)-1)
	})

	t.Run("losing the NATS server that leads the stream loses nothing acknowledged", func(t *testing.T) {
		setT(t)
		natsLoss(t, natsURL, natsServers, []*clusterNode{n1, n3})
	})
}
