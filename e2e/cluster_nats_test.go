package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azeventhubs/v2"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/stream"
)

// natsLoss is TestCluster's NATS failure (docs/operations.md#running-a-cluster):
// devices on the live berth nodes send QoS 1 telemetry without pause while
// the NATS server that leads the R3 telemetry stream is shut down. berth
// must keep acknowledging (the append retries through the election, so no
// device is dropped), and every message acknowledged before, during and
// after must be in the stream. The longest wait for a PUBACK across the
// loss is logged: it is what a NATS server loss costs a device.
func natsLoss(t *testing.T, natsURL string, servers []*natsProc, nodes []*clusterNode) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	info, err := js.Stream(ctx, stream.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	ci := info.CachedInfo()
	if ci.Config.Replicas != 3 || ci.Cluster == nil || ci.Cluster.Leader == "" {
		t.Fatalf("telemetry stream: %d replicas, cluster %+v; want R3 with a leader (--stream-replicas 3)", ci.Config.Replicas, ci.Cluster)
	}
	// The server to kill leads the stream and has berth nodes connected
	// to it, so that the loss also moves their connections (and the
	// Event Hubs readers' consumers on them) to another server.
	target, conns := berthServer(t, servers)
	if target == nil {
		t.Fatal("no berth node is connected to any NATS server")
	}
	leaderName := func() string {
		st, err := js.Stream(ctx, stream.DefaultStreamName)
		if err != nil || st.CachedInfo().Cluster == nil {
			return ""
		}
		return st.CachedInfo().Cluster.Leader
	}
	moveLeader(t, nc, stream.DefaultStreamName, target.name, leaderName)
	leader := slices.Index(servers, target)
	t.Logf("%s leads the stream and has %d of the berth nodes' connections", target.name, conns)

	type sender struct {
		id      string
		d       *hubDevice
		mu      sync.Mutex
		acked   []string
		ackedAt []time.Time
		err     error
		done    chan struct{}
	}
	stop := make(chan struct{})
	var senders []*sender
	for i, n := range nodes {
		for j := range 2 {
			// Device i*2+j sends to partition i*2+j (of the hub's 4),
			// so that every partition has traffic.
			var id string
			for id == "" || hub.PartitionOf(id, hub.DefaultPartitionCount) != (i*2+j)%hub.DefaultPartitionCount {
				id = fmt.Sprintf("cluster-natsloss-%d-%d-%s", i, j, randomSuffix())
			}
			key := n.createHubDevice(id)
			s := &sender{id: id, d: n.hubConnect(id, key, false), done: make(chan struct{})}
			senders = append(senders, s)
		}
	}
	since := time.Now().Add(-time.Second)
	for _, s := range senders {
		go func() {
			defer close(s.done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf("%s/%d", s.id, i)
				tok := s.d.c.Publish("devices/"+s.id+"/messages/events/", 1, false, body)
				// Longer than berth's retry budget: a PUBACK that comes
				// late is a cost to measure, not a failure.
				if !tok.WaitTimeout(45*time.Second) || tok.Error() != nil {
					s.mu.Lock()
					s.err = fmt.Errorf("message %d: no PUBACK: %v", i, tok.Error())
					s.mu.Unlock()
					return
				}
				s.mu.Lock()
				s.acked = append(s.acked, body)
				s.ackedAt = append(s.ackedAt, time.Now())
				s.mu.Unlock()
			}
		}()
	}
	count := func() (min int) {
		min = 1 << 30
		for _, s := range senders {
			s.mu.Lock()
			if len(s.acked) < min {
				min = len(s.acked)
			}
			s.mu.Unlock()
		}
		return min
	}
	// Event Hubs receivers on every node and partition, attached before
	// the loss and reading from the partition's start.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var attached, created []*ehWatcher
	clients := make([]*azeventhubs.ConsumerClient, len(nodes))
	for i, n := range nodes {
		clients[i] = ehConsumer(t, n)
		for p := range hub.DefaultPartitionCount {
			attached = append(attached, watch(wctx, t, clients[i], fmt.Sprintf("node %d partition %d, attached before", i, p), p, azeventhubs.StartPosition{Earliest: to(true)}))
		}
	}
	eventually(t, "every device has 20 messages acknowledged", func() bool { return count() >= 20 })
	first := make([]int64, hub.DefaultPartitionCount)
	eventually(t, "every attached receiver has its partition's first message", func() bool {
		for _, w := range attached {
			s := senders[w.partition]
			if first[w.partition] = w.firstSeq(s.id + "/"); first[w.partition] < 0 {
				return false
			}
		}
		return true
	})
	before := count()
	killed := time.Now()
	servers[leader].kill9()
	t.Logf("killed -9 NATS server %s, the stream's leader", target.name)
	// New receivers right after the loss, resuming from a sequence number
	// (the first message of the device of their partition).
	for i := range nodes {
		for p := range hub.DefaultPartitionCount {
			created = append(created, watch(wctx, t, clients[i], fmt.Sprintf("node %d partition %d, created after", i, p), p,
				azeventhubs.StartPosition{SequenceNumber: to(first[p]), Inclusive: true}))
		}
	}
	eventually(t, "every device has 50 more messages acknowledged after the loss", func() bool {
		return count() >= before+50
	})
	close(stop)
	for _, s := range senders {
		<-s.done
	}

	// Nothing dropped, nothing acknowledged missing.
	var worst time.Duration
	total := 0
	for _, s := range senders {
		select {
		case err := <-s.d.lost:
			t.Errorf("device %s was dropped: %v", s.id, err)
		default:
		}
		if s.err != nil {
			t.Errorf("device %s: %v", s.id, s.err)
		}
		for i := 1; i < len(s.ackedAt); i++ {
			if s.ackedAt[i].After(killed) {
				worst = max(worst, s.ackedAt[i].Sub(s.ackedAt[i-1]))
			}
		}
		total += len(s.acked)
	}
	// Every Event Hubs receiver has every acknowledged message of its
	// partition, each once and in order, by itself.
	var worstAttached, worstCreated time.Duration
	for _, w := range append(slices.Clone(attached), created...) {
		s := senders[w.partition]
		s.mu.Lock()
		want := slices.Clone(s.acked)
		s.mu.Unlock()
		start := time.Now()
		for w.missing(want) > 0 && time.Since(start) < 90*time.Second {
			time.Sleep(100 * time.Millisecond)
		}
		if n := w.missing(want); n > 0 {
			t.Errorf("%s: %d of the %d acknowledged messages of %s missing", w.name, n, len(want), s.id)
		}
		if d := w.check(t, killed); slices.Contains(attached, w) {
			worstAttached = max(worstAttached, d)
		} else {
			worstCreated = max(worstCreated, d)
		}
	}
	wcancel()
	t.Logf("Event Hubs: %d receivers attached before the loss, %d created right after it; longest pause after the loss: %v (attached), %v (created)",
		len(attached), len(created), worstAttached.Round(time.Millisecond), worstCreated.Round(time.Millisecond))

	// One reader for every device, opened after the loss (as berth hub
	// monitor-events would be).
	reader, err := stream.Open(ctx, stream.Config{URL: natsURL, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	msgs, err := reader.Subscribe(ctx, stream.SubscribeOptions{StartTime: since})
	if err != nil {
		t.Fatalf("read the stream after the loss: %v", err)
	}
	got := map[string]int{}
	dups := 0
	for _, s := range senders {
		for _, w := range s.acked {
			for got[w] == 0 {
				select {
				case m, ok := <-msgs:
					if !ok {
						t.Fatalf("the stream's reader ended before acknowledged message %q", w)
					}
					if got[string(m.Body)]++; got[string(m.Body)] > 1 {
						dups++
					}
				case <-time.After(hubWait):
					t.Fatalf("acknowledged message %q missing from the stream", w)
				}
			}
		}
	}
	if dups > 0 {
		t.Logf("%d messages stored twice (a retry after a lost ack; at-least-once)", dups)
	}
	t.Logf("%d devices, %d messages acknowledged, all in the stream; longest wait for a PUBACK after the loss: %v",
		len(senders), total, worst.Round(time.Millisecond))
}

// natsNodeEnv carries a NATS server's settings (natsNodeSpec, JSON): the
// test binary re-executes itself as TestCluster with it set and runs that
// server until its stdin closes.
const natsNodeEnv = "BERTH_E2E_NATS_NODE"

type natsNodeSpec struct {
	Name, Host, StoreDir string
	Port, ClusterPort    int
	// MonitorPort serves the server's monitoring endpoints (/connz), so
	// that the test can see which server the berth nodes are connected to.
	MonitorPort int
	Routes      []string
}

func runNATSNode(spec string) {
	var sp natsNodeSpec
	if err := json.Unmarshal([]byte(spec), &sp); err != nil {
		fmt.Println("FAIL", err)
		return
	}
	var routes []*url.URL
	for _, r := range sp.Routes {
		u, err := url.Parse(r)
		if err != nil {
			fmt.Println("FAIL", err)
			return
		}
		routes = append(routes, u)
	}
	ns, err := natsserver.NewServer(&natsserver.Options{
		ServerName: sp.Name, Host: sp.Host, Port: sp.Port,
		JetStream: true, StoreDir: sp.StoreDir, NoSigs: true, NoLog: true,
		HTTPHost: sp.Host, HTTPPort: sp.MonitorPort,
		Cluster: natsserver.ClusterOpts{Name: "berth-e2e", Host: sp.Host, Port: sp.ClusterPort},
		Routes:  routes,
	})
	if err != nil {
		fmt.Println("FAIL", err)
		return
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		fmt.Println("FAIL not ready")
		return
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	ns.Shutdown()
	ns.WaitForShutdown()
}

// natsProc is a NATS server of the cluster in a process of its own.
type natsProc struct {
	name string
	// monitor is the server's monitoring address (host:port).
	monitor string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	done    chan struct{}
}

func (p *natsProc) kill9() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *natsProc) stop() {
	_ = p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.kill9()
	}
}

// freePort is a port free now on ip (the addresses are this suite's own,
// so it stays free until the server binds it).
func freePort(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// natsClusterProcs is natsCluster with each server in a process of its
// own (named berth-e2e-1…3, on .11–.13), so that a test can kill one -9.
func natsClusterProcs(t *testing.T) (string, []*natsProc) {
	t.Helper()
	specs := make([]natsNodeSpec, 3)
	var routes, urls []string
	for i := range specs {
		ip := clusterNet + fmt.Sprint(11+i)
		specs[i] = natsNodeSpec{Name: fmt.Sprintf("berth-e2e-%d", i+1), Host: ip, StoreDir: t.TempDir(),
			Port: freePort(t, ip), ClusterPort: freePort(t, ip), MonitorPort: freePort(t, ip)}
		routes = append(routes, fmt.Sprintf("nats://%s:%d", ip, specs[i].ClusterPort))
		urls = append(urls, fmt.Sprintf("nats://%s:%d", ip, specs[i].Port))
	}
	procs := make([]*natsProc, 3)
	ready := make(chan string, 3)
	for i, sp := range specs {
		sp.Routes = routes
		spec, err := json.Marshal(sp)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestCluster$", "-test.v=false")
		cmd.Env = append(os.Environ(), natsNodeEnv+"="+string(spec))
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
		p := &natsProc{name: sp.Name, monitor: fmt.Sprintf("%s:%d", sp.Host, sp.MonitorPort), cmd: cmd, stdin: stdin, done: make(chan struct{})}
		procs[i] = p
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if l := sc.Text(); strings.HasPrefix(l, "READY") || strings.HasPrefix(l, "FAIL") {
					ready <- sp.Name + " " + l
				}
			}
		}()
		go func() { _ = cmd.Wait(); close(p.done) }()
		t.Cleanup(p.stop)
	}
	for range procs {
		select {
		case l := <-ready:
			if !strings.HasSuffix(l, "READY") {
				t.Fatalf("NATS server did not start: %s", l)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("NATS servers did not start within a minute")
		}
	}
	all := strings.Join(urls, ",")
	nc, err := nats.Connect(all)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := js.AccountInfo(); err == nil {
			return all, procs
		} else if time.Now().After(deadline) {
			t.Fatalf("JetStream of the NATS cluster never answered: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
