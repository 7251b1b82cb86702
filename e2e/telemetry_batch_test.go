package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/berth-iot/berth/stream"
)

// An HTTPS batch (application/vnd.microsoft.iothub.json) sent to a real
// berth is stored in the telemetry stream in order, as ONE JetStream atomic
// batch: every stored message carries the same Nats-Batch-Id, which only
// stream.AppendBatch sets for a device's batch. That proves the path from
// the REST front end through hub.Telemetry and the metrics wrapper reaches
// the all-or-nothing append (the stream's own tests show that a batch the
// server refuses part way stores none of it).
func TestHTTPSBatchIsOneAtomicBatch(t *testing.T) {
	b := start(t, t.TempDir())
	const id = "batch-dev"
	key := b.createHubDevice(id)
	hubName := b.info.HubHostName

	const n = 4 // fewer than the committer's own batching threshold
	var parts []string
	for i := range n {
		body := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, `{"i":%d}`, i))
		parts = append(parts, fmt.Sprintf(`{"body":%q,"properties":{"iothub-app-i":"%d"}}`, body, i))
	}
	resp, data := b.do("POST", "/devices/"+id+"/messages/events?api-version=2021-04-12", hubToken(t, hubName, id, key),
		"["+strings.Join(parts, ",")+"]", map[string]string{"Content-Type": "application/vnd.microsoft.iothub.json"}, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("send batch: %d %s", resp.StatusCode, data)
	}

	// The 204 came after the batch was durable: it is all there now.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, err := jetstream.New(b.srv.Stream().Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, stream.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().State.Msgs; got != n {
		t.Fatalf("stream holds %d messages after the 204, want %d", got, n)
	}
	batchID := ""
	for seq := uint64(1); seq <= n; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`{"i":%d}`, seq-1); string(m.Data) != want {
			t.Errorf("message %d body %q, want %q", seq, m.Data, want)
		}
		id := m.Header.Get("Nats-Batch-Id")
		if id == "" || (batchID != "" && id != batchID) {
			t.Fatalf("message %d has Nats-Batch-Id %q (first %q): the batch was not stored as one atomic batch", seq, id, batchID)
		}
		batchID = id
		if seqH := m.Header.Get("Nats-Batch-Sequence"); seqH != fmt.Sprint(seq) {
			t.Errorf("message %d has Nats-Batch-Sequence %q", seq, seqH)
		}
	}
	t.Logf("%d messages stored as atomic batch %s", n, batchID)
}
