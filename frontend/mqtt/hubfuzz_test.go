package mqtt

import (
	"strconv"
	"strings"
	"testing"

	"github.com/berth-iot/berth/hub"
)

func FuzzParseTwinTopic(f *testing.F) {
	for _, s := range []string{
		"$iothub/twin/GET/?$rid=id_one",
		"$iothub/twin/PATCH/properties/reported/?$rid=5de34&$version=1",
		"$iothub/twin/GET/?$rid=错误",
		"$iothub/twin/GET/?$version=1&$rid=&$rid=2",
		"$iothub/twin/rez/200",
		"$iothub/twin/res/200?$rid=1",
		"$iothub/contoso/res/200",
		"$iothub/twin/GET",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		kind, rid, ok := ParseTwinTopic(topic)
		if !ok {
			if kind != "" || rid != "" {
				t.Fatalf("not ok but %q, %q", kind, rid)
			}
			return
		}
		if !strings.HasPrefix(topic, twinTopicPrefix) {
			t.Fatalf("accepted %q", topic)
		}
		path, _, _ := strings.Cut(topic, "?")
		switch kind {
		case TwinGet:
			if path != twinGetPath {
				t.Fatalf("GET from path %q", path)
			}
		case TwinPatchReported:
			if path != twinReportedPath {
				t.Fatalf("PATCH from path %q", path)
			}
		case TwinUnknown:
			if !strings.Contains(topic, "?$rid") && !strings.Contains(topic, "&$rid") {
				t.Fatalf("unknown topic %q answered without a $rid key", topic)
			}
		default:
			t.Fatalf("kind %q", kind)
		}
		checkRidAsSent(t, topic, rid)
		// Whatever the rid, the answer topic gives it back to a device.
		for _, v := range []int64{0, 7} {
			m := twinResponseRE.FindStringSubmatch(twinResponseTopic(204, rid, v))
			if m == nil || m[2] != rid || (v > 0) != (m[3] == "7") {
				t.Fatalf("answer topic for rid %q, version %d parses as %q", rid, v, m)
			}
		}
	})
}

func FuzzParseMethodResponseTopic(f *testing.F) {
	for _, s := range []string{
		"$iothub/methods/res/200/?$rid=1",
		"$iothub/methods/res/65535/?$rid=2",
		"$iothub/methods/res/200/?$rid=1&random=",
		"$iothub/methods/res/-1?$rid=ff",
		"$iothub/methods/res/2147483648/?$rid=a",
		"$iothub/methods/POST/foo/?$rid=one",
		"$iothub/methods/res//?$rid=a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		status, rid, ok := ParseMethodResponseTopic(topic)
		if !ok {
			if status != 0 || rid != "" {
				t.Fatalf("not ok but %d, %q", status, rid)
			}
			return
		}
		rest, found := strings.CutPrefix(topic, methodResponsePrefix)
		if !found {
			t.Fatalf("accepted %q", topic)
		}
		st, _, _ := strings.Cut(rest, "?")
		if n, err := strconv.Atoi(strings.TrimSuffix(st, "/")); err != nil || n != status {
			t.Fatalf("status %d from %q", status, st)
		}
		checkRidAsSent(t, topic, rid)
		// The answer to a request this session sent matches its rid.
		if rid != "" {
			if s2, r2, ok2 := ParseMethodResponseTopic(methodResponsePrefix + strconv.Itoa(status) + "/?$rid=" + rid); !ok2 || s2 != status || r2 != rid {
				t.Fatalf("canonical form of %q parses as %d %q %v", topic, s2, r2, ok2)
			}
		}
	})
}

// FuzzC2DTopic: whatever printable-ASCII properties a C2D message has,
// Node's parser reads them back from the delivery topic.
func FuzzC2DTopic(f *testing.F) {
	f.Add("m/1", "k", "a&b=c%d e/f")
	f.Add("", "$.mid", "")
	f.Fuzz(func(t *testing.T, mid, key, value string) {
		for _, s := range []string{mid, key, value} {
			for i := 0; i < len(s); i++ {
				if s[i] < 0x20 || s[i] > 0x7e {
					return // the domain refuses it
				}
			}
		}
		if key == "" || strings.HasPrefix(key, "$.") || key == "iothub-ack" {
			return
		}
		topic := c2dTopic("dev-1", &hub.CloudMessage{MessageID: mid, App: []hub.Property{{Name: key, Value: value}}})
		got := nodeC2D(t, topic)
		want := map[string]string{key: value}
		if mid != "" {
			want["$.mid"] = mid
		}
		if len(got) != len(want) || got[key] != value || got["$.mid"] != want["$.mid"] {
			t.Fatalf("Node reads %q from %q; want %q", got, topic, want)
		}
	})
}

// checkRidAsSent: a parsed $rid is one '&'-separated value, exactly as it
// appears in the topic, so that the answer echoes it byte for byte.
func checkRidAsSent(t *testing.T, topic, rid string) {
	t.Helper()
	if strings.Contains(rid, "&") {
		t.Fatalf("rid %q spans pairs", rid)
	}
	if rid != "" && !strings.Contains(topic, "$rid="+rid) {
		t.Fatalf("rid %q is not in %q as sent", rid, topic)
	}
}
