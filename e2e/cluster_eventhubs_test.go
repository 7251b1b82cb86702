package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azeventhubs/v2"
	"github.com/nats-io/nats.go"
)

// Event Hubs readers through TestCluster's NATS server loss
// (docs/telemetry-stream.md, "Readers through a NATS server loss"):
// azeventhubs partition receivers on the berth nodes, some attached before
// the loss and some created right after it, must each get every message
// the devices had acknowledged, in order and once, without being
// restarted by the test.

// ehWatcher is a partition receiver that records what it receives.
type ehWatcher struct {
	name      string
	partition int
	created   time.Time
	pc        *azeventhubs.PartitionClient
	mu        sync.Mutex
	seqs      []int64
	bodies    []string
	at        []time.Time
	err       error
	done      chan struct{}
}

// ehConsumer is an Event Hubs client of node n, with the hub owner's key.
func ehConsumer(t *testing.T, n *clusterNode) *azeventhubs.ConsumerClient {
	t.Helper()
	var keyName, key string
	for _, kv := range strings.Split(n.info.HubConnectionString, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "SharedAccessKeyName":
			keyName = v
		case "SharedAccessKey":
			key = v
		}
	}
	hubName := n.info.HubHostName
	entity, _, _ := strings.Cut(hubName, ".")
	cs := "Endpoint=sb://" + hubName + "/;SharedAccessKeyName=" + keyName + ";SharedAccessKey=" + key + ";EntityPath=" + entity
	c, err := azeventhubs.NewConsumerClientFromConnectionString(cs, "", azeventhubs.DefaultConsumerGroup, &azeventhubs.ConsumerClientOptions{
		TLSConfig:      &tls.Config{RootCAs: n.roots, ServerName: hubName},
		CustomEndpoint: n.info.AMQPAddress,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// watch starts a receiver of partition p from start that records until
// ctx ends. The SDK's own retries are left on, as an application has them;
// the test requires that no message is missing or repeated.
func watch(ctx context.Context, t *testing.T, c *azeventhubs.ConsumerClient, name string, p int, start azeventhubs.StartPosition) *ehWatcher {
	t.Helper()
	pc, err := c.NewPartitionClient(fmt.Sprint(p), &azeventhubs.PartitionClientOptions{StartPosition: start})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close(context.Background()) })
	w := &ehWatcher{name: name, partition: p, created: time.Now(), pc: pc, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			evs, err := pc.ReceiveEvents(rctx, 100, nil)
			cancel()
			now := time.Now()
			w.mu.Lock()
			for _, ev := range evs {
				w.seqs = append(w.seqs, ev.SequenceNumber)
				w.bodies = append(w.bodies, string(ev.Body))
				w.at = append(w.at, now)
			}
			if err != nil && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// has reports whether w received every body of want.
func (w *ehWatcher) missing(want []string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	got := make(map[string]bool, len(w.bodies))
	for _, b := range w.bodies {
		got[b] = true
	}
	n := 0
	for _, b := range want {
		if !got[b] {
			n++
		}
	}
	return n
}

// firstSeq is the sequence number of the first event whose body has
// prefix, or -1.
func (w *ehWatcher) firstSeq(prefix string) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, b := range w.bodies {
		if strings.HasPrefix(b, prefix) {
			return w.seqs[i]
		}
	}
	return -1
}

// check reports sequence numbers that do not grow (an event delivered
// twice, or out of order) and the SDK's error, and returns the longest
// pause between two events after since (for a receiver created after since,
// from its creation to its first event).
func (w *ehWatcher) check(t *testing.T, since time.Time) time.Duration {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		t.Errorf("%s: ReceiveEvents: %v", w.name, w.err)
	}
	for i := 1; i < len(w.seqs); i++ {
		if w.seqs[i] <= w.seqs[i-1] {
			t.Errorf("%s: event %d has sequence number %d after %d (%q after %q): delivered twice or out of order",
				w.name, i, w.seqs[i], w.seqs[i-1], w.bodies[i], w.bodies[i-1])
			break
		}
	}
	var worst time.Duration
	prev := w.created
	if prev.Before(since) {
		prev = since
	}
	for _, at := range w.at {
		if at.After(since) {
			worst = max(worst, at.Sub(prev))
		}
		if at.After(prev) {
			prev = at
		}
	}
	return worst
}

// berthServer is the NATS server that most berth nodes are connected to
// (by the connection name berth gives, on each server's /connz), "" if
// none.
func berthServer(t *testing.T, servers []*natsProc) (*natsProc, int) {
	t.Helper()
	var best *natsProc
	most := 0
	for _, s := range servers {
		resp, err := http.Get("http://" + s.monitor + "/connz?limit=1024")
		if err != nil {
			t.Fatalf("connz of %s: %v", s.name, err)
		}
		var cz struct {
			Conns []struct {
				Name string `json:"name"`
			} `json:"connections"`
		}
		err = json.NewDecoder(resp.Body).Decode(&cz)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("connz of %s: %v", s.name, err)
		}
		n := 0
		for _, c := range cz.Conns {
			if c.Name == "berth" {
				n++
			}
		}
		if n > most {
			best, most = s, n
		}
	}
	return best, most
}

// moveLeader makes server the stream's leader (a step-down with a
// preferred server, nats-server ≥ 2.11) and waits until it is.
func moveLeader(t *testing.T, nc *nats.Conn, streamName, server string, leader func() string) {
	t.Helper()
	if leader() == server {
		return
	}
	req := `{"placement":{"preferred":"` + server + `"}}`
	msg, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+streamName, []byte(req), 10*time.Second)
	if err != nil {
		t.Fatalf("stream leader step-down to %s: %v", server, err)
	}
	if strings.Contains(string(msg.Data), `"error"`) {
		t.Fatalf("stream leader step-down to %s: %s", server, msg.Data)
	}
	eventually(t, "the stream's leader is "+server, func() bool { return leader() == server })
}

func to[T any](v T) *T { return &v }
