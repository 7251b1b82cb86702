package topics

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
)

// TestC2DTopicVectors: the Node and Embedded C fixtures of
// docs/spec/iothub-protocol.md#test-vectors (T-21) parse from what C2D
// writes.
func TestC2DTopicVectors(t *testing.T) {
	exp := time.Date(2017, 1, 6, 23, 37, 0, 669e6, time.UTC)
	m := &hub.CloudMessage{To: "/devices/foo/messages/devicebound", Expiry: exp, Ack: "none",
		App: []hub.Property{{Name: "key1", Value: "value1"}, {Name: "key$", Value: "value$"}}}
	got := C2D("foo", m)
	// T-21 (Node): the same encodings, one bag.
	want := "devices/foo/messages/devicebound/%24.to=%2Fdevices%2Ffoo%2Fmessages%2Fdevicebound&%24.exp=2017-01-06T23%3A37%3A00.669Z&key1=value1&key%24=value%24"
	if got != want {
		t.Errorf("C2D\n got %s\nwant %s", got, want)
	}
	if got := C2D("d", &hub.CloudMessage{}); got != "devices/d/messages/devicebound/" {
		t.Errorf("no properties: %q", got)
	}
}

// nodeC2D parses a delivery topic exactly as the Node SDK's
// _onC2DMessage does: the fifth '/'-segment, split on '&', each pair
// split on every '=' keeping the first two parts, both decoded with
// decodeURIComponent (which, unlike a query decoder, leaves '+' alone).
func nodeC2D(t testing.TB, topic string) map[string]string {
	t.Helper()
	parts := strings.Split(topic, "/")
	out := map[string]string{}
	if len(parts) < 5 || parts[4] == "" {
		return out
	}
	if len(parts) != 5 {
		t.Errorf("topic %q has %d segments; Node reads only the fifth", topic, len(parts))
	}
	for pair := range strings.SplitSeq(parts[4], "&") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 {
			t.Errorf("pair %q does not split into key and value on '='", pair)
			continue
		}
		k, err := url.PathUnescape(kv[0])
		if err != nil {
			t.Errorf("key %q: %v", kv[0], err)
		}
		v, err := url.PathUnescape(kv[1])
		if err != nil {
			t.Errorf("value %q: %v", kv[1], err)
		}
		out[k] = v
	}
	return out
}
