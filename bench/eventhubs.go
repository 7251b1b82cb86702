package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/eventhubs"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/sas"
)

// benchSentProp is the application property a telemetry run stamps on each
// message when an Event Hubs reader measures it: the publish time, Unix ns.
const benchSentProp = "bench-sent"

// EventHubsReadResult is what a consumer on the hub's Event Hubs-compatible
// endpoint saw of a telemetry run: every partition read from "@latest"
// while the devices sent.
type EventHubsReadResult struct {
	Partitions int   `json:"partitions"`
	Received   int64 `json:"received"`
	// Seconds runs from the first event received to the last.
	Seconds float64 `json:"seconds"`
	// Rate is events received per second over Seconds.
	Rate float64 `json:"messagesPerSecond"`
	// Latency is device publish → consumer receive, end to end.
	Latency Latency `json:"latency"`
}

// eventHubsReader reads every partition of a hub with go-amqp, as an Event
// Hubs consumer does (CBS token signed with the key text, selector filter
// "@latest"), and times each event against its bench-sent stamp.
type eventHubsReader struct {
	conn       *goamqp.Conn
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	lat        *Histogram
	received   atomic.Int64
	first      atomic.Int64 // UnixNano
	last       atomic.Int64
	partitions int
}

func startEventHubsReader(ctx context.Context, t *Target, hubName string) (*eventHubsReader, error) {
	if t.HubConnectionString == "" || t.AMQPAddress == "" {
		return nil, errors.New("bench: --read eventhubs needs the hub connection string and AMQP address (client.json)")
	}
	cs, err := hubclient.ParseConnectionString(t.HubConnectionString)
	if err != nil {
		return nil, fmt.Errorf("bench: hub connection string: %w", err)
	}
	conn, err := goamqp.Dial(ctx, "amqps://"+t.AMQPAddress, &goamqp.ConnOptions{
		TLSConfig: &tls.Config{RootCAs: t.RootCAs, ServerName: hubName, MinVersion: tls.VersionTLS12},
		HostName:  hubName,
		SASLType:  goamqp.SASLTypeAnonymous(),
	})
	if err != nil {
		return nil, fmt.Errorf("bench: Event Hubs reader: connect: %w", err)
	}
	r := &eventHubsReader{conn: conn, lat: NewHistogram()}
	fail := func(err error) (*eventHubsReader, error) {
		conn.Close()
		return nil, fmt.Errorf("bench: Event Hubs reader: %w", err)
	}
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		return fail(err)
	}
	entity := eventhubs.EntityName(hubName)
	aud := "sb://" + hubName + "/" + entity
	tok := sas.SignRaw(url.QueryEscape(aud), []byte(cs.SharedAccessKey), cs.SharedAccessKeyName, time.Now().Add(24*time.Hour))
	if err := putToken(ctx, sess, aud, tok); err != nil {
		return fail(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	for p := 0; p < hub.MaxPartitionCount; p++ {
		rcv, err := sess.NewReceiver(ctx, fmt.Sprintf("%s/ConsumerGroups/%s/Partitions/%d", entity, eventhubs.DefaultConsumerGroup, p),
			&goamqp.ReceiverOptions{Credit: 500, Filters: []goamqp.LinkFilter{goamqp.NewSelectorFilter("amqp.annotation.x-opt-offset > '@latest'")}})
		if err != nil {
			// Partitions are 0 … n-1: the first refused one is the end.
			if p == 0 {
				cancel()
				return fail(err)
			}
			break
		}
		r.partitions++
		r.wg.Add(1)
		go r.read(rctx, rcv)
	}
	return r, nil
}

func (r *eventHubsReader) read(ctx context.Context, rcv *goamqp.Receiver) {
	defer r.wg.Done()
	for {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			return
		}
		now := time.Now()
		_ = rcv.AcceptMessage(ctx, m)
		if v, ok := m.ApplicationProperties[benchSentProp].(string); ok {
			if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
				r.lat.Record(now.Sub(time.Unix(0, ns)))
			}
		}
		r.received.Add(1)
		r.first.CompareAndSwap(0, now.UnixNano())
		r.last.Store(now.UnixNano())
	}
}

// finish waits until want events arrived or none came for quiet, then
// stops reading and reports.
func (r *eventHubsReader) finish(ctx context.Context, want int64, quiet time.Duration) *EventHubsReadResult {
	lastN, lastChange := r.received.Load(), time.Now()
	for r.received.Load() < want && time.Since(lastChange) < quiet && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		if n := r.received.Load(); n != lastN {
			lastN, lastChange = n, time.Now()
		}
	}
	r.cancel()
	r.conn.Close()
	r.wg.Wait()
	res := &EventHubsReadResult{Partitions: r.partitions, Received: r.received.Load(), Latency: r.lat.Summary()}
	if f, l := r.first.Load(), r.last.Load(); f != 0 && l > f {
		res.Seconds = round3(time.Duration(l - f).Seconds())
		res.Rate = round3(float64(res.Received) / time.Duration(l-f).Seconds())
	}
	return res
}
