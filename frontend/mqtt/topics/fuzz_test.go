package topics

import (
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/berth-iot/berth/hub"
)

// wireKeys maps system property names back to their "$." keys.
var wireKeys = map[string]string{
	hub.PropMessageID: "$.mid", hub.PropCorrelationID: "$.cid", hub.PropUserID: "$.uid", hub.PropTo: "$.to",
	hub.PropExpiry: "$.exp", hub.PropContentType: "$.ct", hub.PropContentEncoding: "$.ce", hub.PropCreationTime: "$.ctime",
	hub.PropComponent: "$.sub", hub.PropInterfaceID: "$.ifid", hub.PropOutputName: "$.on",
}

// bagEscape percent-encodes for a property bag the way Node's
// querystring does (space as %20, never '+').
func bagEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

func FuzzParsePropertyBag(f *testing.F) {
	for _, s := range []string{
		"%24.cid=Corrid1&%24.mid=MessageId1&Foo=Bar&Prop2=Value2&Prop3=Value3/",
		"key1=value1&key2=value2&key%24=value%24&%24.sub=abcd%24",
		"%24.ct=application/json&%24.ce=utf-8",
		"$.ct=application%2Fjson&$.ce=utf-8",
		"a=1&&b=2&",
		"%24.cid&%24.uid&flag",
		"%24.schema=v1&%24.diagid=x&a=1&a=2",
		"a=%zz",
		"=1",
		"t%C3%A9=%E2%82%AC&a=%FF",
		"%24.on=fakeOutputName/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, bag string) {
		// The topic parser hands over the bag less one trailing '/'.
		if d, _, got, ok := ParseTelemetry("devices/d/messages/events/" + bag); !ok || d != "d" || got != strings.TrimSuffix(bag, "/") {
			t.Fatalf("topic with bag %q: device %q bag %q ok %v", bag, d, got, ok)
		}
		sys, app, err := ParsePropertyBag(bag)
		if err != nil {
			if sys != nil || app != nil {
				t.Fatalf("error %v with properties", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, p := range sys {
			if _, ok := wireKeys[p.Name]; !ok || seen["s"+p.Name] {
				t.Fatalf("system property %q unknown or repeated", p.Name)
			}
			seen["s"+p.Name] = true
		}
		for _, p := range app {
			if p.Name == "" || seen["a"+p.Name] {
				t.Fatalf("application property %q empty or repeated", p.Name)
			}
			seen["a"+p.Name] = true
			if _, ok := systemPropertyName(p.Name); ok || p.Name == "$.schema" {
				t.Fatalf("system key %q kept as an application property", p.Name)
			}
		}
		for _, p := range append(slices.Clone(sys), app...) {
			if !utf8.ValidString(p.Name) || !utf8.ValidString(p.Value) {
				t.Fatalf("property %q=%q is not UTF-8", p.Name, p.Value)
			}
		}
		// Encoding what was parsed, as an SDK would, gives it back.
		var pairs []string
		for _, p := range sys {
			pairs = append(pairs, bagEscape(wireKeys[p.Name])+"="+bagEscape(p.Value))
		}
		for _, p := range app {
			pairs = append(pairs, bagEscape(p.Name)+"="+bagEscape(p.Value))
		}
		sys2, app2, err := ParsePropertyBag(strings.Join(pairs, "&"))
		if err != nil || !reflect.DeepEqual(sys, sys2) || !reflect.DeepEqual(app, app2) {
			t.Fatalf("re-encoded bag parses as %v %v (%v); want %v %v", sys2, app2, err, sys, app)
		}
	})
}

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
		kind, rid, ok := ParseTwin(topic)
		if !ok {
			if kind != "" || rid != "" {
				t.Fatalf("not ok but %q, %q", kind, rid)
			}
			return
		}
		if !strings.HasPrefix(topic, TwinPrefix) {
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
			m := twinResponseRE.FindStringSubmatch(TwinResponse(204, rid, v))
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
		status, rid, ok := ParseMethodResponse(topic)
		if !ok {
			if status != 0 || rid != "" {
				t.Fatalf("not ok but %d, %q", status, rid)
			}
			return
		}
		rest, found := strings.CutPrefix(topic, MethodResponsePrefix)
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
			if s2, r2, ok2 := ParseMethodResponse(MethodResponsePrefix + strconv.Itoa(status) + "/?$rid=" + rid); !ok2 || s2 != status || r2 != rid {
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
		topic := C2D("dev-1", &hub.CloudMessage{MessageID: mid, App: []hub.Property{{Name: key, Value: value}}})
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
