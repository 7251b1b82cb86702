package eventhubs_test

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azeventhubs/v2"
	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// putToken authorises s's connection for aud with the hub owner's key
// (CBS, signed Event Hubs style), as the SDKs do before a receiver.
func (b *berth) putToken(ctx context.Context, s *goamqp.Session, aud string) {
	b.t.Helper()
	owner, _ := b.srvHubSettings().Policy(hub.OwnerPolicy)
	sig := sas.SignRaw(url.QueryEscape(aud), []byte(owner.PrimaryKey), owner.KeyName, time.Now().Add(time.Hour))
	snd, err := s.NewSender(ctx, "$cbs", nil)
	if err != nil {
		b.t.Fatal(err)
	}
	defer snd.Close(ctx)
	rcv, err := s.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply"})
	if err != nil {
		b.t.Fatal(err)
	}
	defer rcv.Close(ctx)
	replyTo := "cbs-reply"
	if err := snd.Send(ctx, &goamqp.Message{
		Properties:            &goamqp.MessageProperties{MessageID: "put-1", ReplyTo: &replyTo},
		ApplicationProperties: map[string]any{"operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": aud},
		Value:                 sig,
	}, nil); err != nil {
		b.t.Fatal(err)
	}
	resp, err := rcv.Receive(ctx, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	if got := resp.ApplicationProperties["status-code"]; got != int32(200) {
		b.t.Fatalf("put-token %s: %v %v", aud, got, resp.ApplicationProperties["status-description"])
	}
}

// A receiver that desires com.microsoft:enable-receiver-runtime-metric
// (JS trackLastEnqueuedEventProperties, .NET TrackLastEnqueuedEventProperties;
// azeventhubs for Go has no such option, so go-amqp asks here) gets the
// partition's last enqueued event with every event, as delivery
// annotations; one that does not, gets none.
func TestRuntimeMetric(t *testing.T) {
	b := newBerth(t)
	b.device("rt-dev")
	for i := range 3 {
		b.sendMQTT("rt-dev", "", fmt.Sprintf("m%d", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	p := partitionOf("rt-dev")
	address := "ehhub/ConsumerGroups/$Default/Partitions/" + p
	s := b.amqpSession(ctx, goamqp.SASLTypeAnonymous())
	b.putToken(ctx, s, "sb://"+ehHub+"/"+address)

	receive := func(caps []string, n int) []*goamqp.Message {
		t.Helper()
		rcv, err := s.NewReceiver(ctx, address, &goamqp.ReceiverOptions{
			DesiredCapabilities: caps,
			Filters:             []goamqp.LinkFilter{goamqp.NewSelectorFilter("amqp.annotation.x-opt-offset > '-1'")},
			Credit:              10,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer rcv.Close(ctx)
		var out []*goamqp.Message
		for range n {
			m, err := rcv.Receive(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = rcv.AcceptMessage(ctx, m)
			out = append(out, m)
		}
		return out
	}

	before := time.Now().Add(-time.Second)
	got := receive([]string{"com.microsoft:georeplication", "com.microsoft:enable-receiver-runtime-metric"}, 3)
	lastSeq := got[2].Annotations["x-opt-sequence-number"].(int64)
	lastTime := got[2].Annotations["x-opt-enqueued-time"].(time.Time)
	for i, m := range got {
		da := m.DeliveryAnnotations
		// The first event of the backlog already carries the
		// partition's end, not itself.
		if da["last_enqueued_sequence_number"] != lastSeq || da["last_enqueued_offset"] != strconv.FormatInt(lastSeq, 10) {
			t.Errorf("event %d: delivery annotations %v; want the last event, sequence number %d", i, da, lastSeq)
		}
		if at, ok := da["last_enqueued_time_utc"].(time.Time); !ok || !at.Equal(lastTime) {
			t.Errorf("event %d: last_enqueued_time_utc %v, want %v (a timestamp)", i, da["last_enqueued_time_utc"], lastTime)
		}
		if at, ok := da["runtime_info_retrieval_time_utc"].(time.Time); !ok || at.Before(before) {
			t.Errorf("event %d: runtime_info_retrieval_time_utc %v, want a timestamp of this run", i, da["runtime_info_retrieval_time_utc"])
		}
	}

	// A live event raises it.
	b.sendMQTT("rt-dev", "", "m3")
	got = receive([]string{"com.microsoft:enable-receiver-runtime-metric"}, 4)
	if seq := got[3].Annotations["x-opt-sequence-number"].(int64); got[3].DeliveryAnnotations["last_enqueued_sequence_number"] != seq || seq <= lastSeq {
		t.Errorf("after a new event %d: last enqueued %v", seq, got[3].DeliveryAnnotations["last_enqueued_sequence_number"])
	}

	for _, m := range receive(nil, 4) {
		if len(m.DeliveryAnnotations) != 0 {
			t.Errorf("a receiver that did not ask got delivery annotations %v", m.DeliveryAnnotations)
		}
	}
}

// An empty partition (docs/amqp-wire.md, "Event Hubs"): is_partition_empty,
// sequence numbers -1, offset "-1", the Unix epoch. Azure does not document
// its own values; berth's are positions that mean "before the first event",
// so a consumer that resumes after LastEnqueuedSequenceNumber (or the
// offset) of an empty partition gets the first event sent later.
func TestEmptyPartition(t *testing.T) {
	b := newBerth(t)
	id := ""
	for i := 0; id == "" || partitionOf(id) != "2"; i++ {
		id = fmt.Sprintf("empty-%d", i)
	}
	b.device(id)
	c := b.consumer(b.ehConnStr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pp, err := c.GetPartitionProperties(ctx, "2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !pp.IsEmpty || pp.BeginningSequenceNumber != -1 || pp.LastEnqueuedSequenceNumber != -1 ||
		pp.LastEnqueuedOffset != "-1" || !pp.LastEnqueuedOn.Equal(time.UnixMilli(0)) {
		t.Fatalf("empty partition: %+v", pp)
	}
	bySeq, err := c.NewPartitionClient("2", &azeventhubs.PartitionClientOptions{
		StartPosition: azeventhubs.StartPosition{SequenceNumber: &pp.LastEnqueuedSequenceNumber}})
	if err != nil {
		t.Fatal(err)
	}
	defer bySeq.Close(ctx)
	byOffset, err := c.NewPartitionClient("2", &azeventhubs.PartitionClientOptions{
		StartPosition: azeventhubs.StartPosition{Offset: &pp.LastEnqueuedOffset}})
	if err != nil {
		t.Fatal(err)
	}
	defer byOffset.Close(ctx)
	b.sendMQTT(id, "", "first")
	for name, pc := range map[string]*azeventhubs.PartitionClient{"sequence number": bySeq, "offset": byOffset} {
		if evs := receive(t, pc, 1); string(evs[0].Body) != "first" {
			t.Errorf("after the empty partition's %s: %q", name, evs[0].Body)
		}
	}
	pp, err = c.GetPartitionProperties(ctx, "2", nil)
	if err != nil || pp.IsEmpty || pp.LastEnqueuedSequenceNumber < 1 || pp.BeginningSequenceNumber != pp.LastEnqueuedSequenceNumber {
		t.Errorf("after one event: %+v, %v", pp, err)
	}
}
