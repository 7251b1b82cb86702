package topics

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/berth-iot/berth/hub"
)

func TestParsePropertyBag(t *testing.T) {
	type props = []hub.Property
	p := func(kv ...string) props {
		var out props
		for i := 0; i < len(kv); i += 2 {
			out = append(out, hub.Property{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	tests := []struct {
		name    string
		bag     string
		system  props
		app     props
		wantErr bool
	}{
		{name: "empty", bag: ""},
		{
			name:   "T-23 IoT Edge server vector",
			bag:    "%24.cid=Corrid1&%24.mid=MessageId1&Foo=Bar&Prop2=Value2&Prop3=Value3",
			system: p(hub.PropCorrelationID, "Corrid1", hub.PropMessageID, "MessageId1"),
			app:    p("Foo", "Bar", "Prop2", "Value2", "Prop3", "Value3"),
		},
		{
			name:   "T-19 Node sendEvent",
			bag:    "key1=value1&key2=value2&key%24=value%24&%24.sub=abcd%24",
			system: p(hub.PropComponent, "abcd$"),
			app:    p("key1", "value1", "key2", "value2", "key$", "value$"),
		},
		{name: "T-20 Node output name", bag: "%24.on=fakeOutputName", system: p(hub.PropOutputName, "fakeOutputName")},
		{name: "T-7 embedded C", bag: "key=value&key_two=value2", app: p("key", "value", "key_two", "value2")},
		{
			name:   "C SDK unencoded value",
			bag:    "%24.ct=application/json&%24.ce=utf-8",
			system: p(hub.PropContentType, "application/json", hub.PropContentEncoding, "utf-8"),
		},
		{
			name:   "raw $. keys (docs example)",
			bag:    "$.ct=application%2Fjson&$.ce=utf-8",
			system: p(hub.PropContentType, "application/json", hub.PropContentEncoding, "utf-8"),
		},
		{name: "lower-case hex (.NET UrlEncode)", bag: "%24.ct=application%2fjson", system: p(hub.PropContentType, "application/json")},
		{
			name: "every system key",
			bag: "%24.mid=m&%24.cid=c&%24.uid=u&%24.to=%2Fdevices%2Fd&%24.exp=2017-01-06T23%3A37%3A00.669Z&%24.ct=ct&%24.ce=ce" +
				"&%24.ctime=2024-01-02T03%3A04%3A05Z&%24.sub=comp&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.on=out",
			system: p(hub.PropMessageID, "m", hub.PropCorrelationID, "c", hub.PropUserID, "u", hub.PropTo, "/devices/d",
				hub.PropExpiry, "2017-01-06T23:37:00.669Z", hub.PropContentType, "ct", hub.PropContentEncoding, "ce",
				hub.PropCreationTime, "2024-01-02T03:04:05Z", hub.PropComponent, "comp",
				hub.PropInterfaceID, "urn:azureiot:Security:SecurityAgent:1", hub.PropOutputName, "out"),
		},
		{name: "$.schema is the message-schema application property", bag: "%24.schema=temp-v1", app: p(PropMessageSchema, "temp-v1")},
		{name: "unknown $. keys stay application properties", bag: "%24.diagid=abc&$.x=1", app: p("$.diagid", "abc", "$.x", "1")},
		{name: "system keys are case-sensitive", bag: "%24.MID=1", app: p("$.MID", "1")},
		{name: "&& and trailing &", bag: "a=1&&b=2&", app: p("a", "1", "b", "2")},
		{name: "leading &", bag: "&a=1", app: p("a", "1")},
		{
			name:   "keys without = are null, recorded empty (T-22)",
			bag:    "propName=PropValue&%24.cid&%24.uid&flag",
			system: p(hub.PropCorrelationID, "", hub.PropUserID, ""),
			app:    p("propName", "PropValue", "flag", ""),
		},
		{name: "key=", bag: "a=", app: p("a", "")},
		{name: "value split at the first =", bag: "a=b=c", app: p("a", "b=c")},
		{name: "plus is not a space", bag: "a=b+c&d=e%20f", app: p("a", "b+c", "d", "e f")},
		{name: "encoded & and =", bag: "a%26b=c%3Dd%26e", app: p("a&b", "c=d&e")},
		{name: "repeated name: first position, last value", bag: "a=1&b=2&a=3&%24.mid=x&%24.mid=y", system: p(hub.PropMessageID, "y"), app: p("a", "3", "b", "2")},
		{name: "encoded and raw $ are the same key", bag: "$.mid=x&%24.mid=y", system: p(hub.PropMessageID, "y")},
		{name: "UTF-8", bag: "t%C3%A9=%E2%82%AC&raw=é", app: p("té", "€", "raw", "é")},
		{name: "bad escape in value", bag: "a=%zz", wantErr: true},
		{name: "truncated escape in value", bag: "a=100%", wantErr: true},
		{name: "truncated escape in key", bag: "%2=1", wantErr: true},
		{name: "bad escape in a null key", bag: "a=1&%g0", wantErr: true},
		{name: "empty key", bag: "=1", wantErr: true},
		{name: "empty key, no value", bag: "a=1&=", wantErr: true},
		{name: "encoded empty-looking key is fine", bag: "%20=1", app: p(" ", "1")},
		{name: "not UTF-8 after decoding", bag: "a=%FF", wantErr: true},
		{name: "not UTF-8 raw", bag: "a=\xff", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sys, app, err := ParsePropertyBag(tt.bag)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParsePropertyBag(%q) = %v, %v; want an error", tt.bag, sys, app)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePropertyBag(%q): %v", tt.bag, err)
			}
			if !reflect.DeepEqual(sys, tt.system) || !reflect.DeepEqual(app, tt.app) {
				t.Errorf("ParsePropertyBag(%q)\n system %v\n app    %v\nwant\n system %v\n app    %v", tt.bag, sys, app, tt.system, tt.app)
			}
		})
	}
}

// TestParsePropertyBagManyNames covers the indexed path: names beyond
// propIndexThreshold still dedupe and keep their order.
func TestParsePropertyBagManyNames(t *testing.T) {
	bag := ""
	var want []hub.Property
	for i := range 3 * propIndexThreshold {
		bag += fmt.Sprintf("k%d=%d&", i, i)
		want = append(want, hub.Property{Name: fmt.Sprintf("k%d", i), Value: fmt.Sprint(i)})
	}
	bag += "k0=last&k40=again"
	want[0].Value, want[40].Value = "last", "again"
	_, app, err := ParsePropertyBag(bag)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(app, want) {
		t.Errorf("app = %v; want %v", app, want)
	}
}

func TestParseTelemetryTopic(t *testing.T) {
	tests := []struct {
		topic          string
		device, module string
		bag            string
		ok             bool
	}{
		{"devices/d/messages/events", "d", "", "", true},
		{"devices/d/messages/events/", "d", "", "", true},
		{"devices/d/messages/events/a=1", "d", "", "a=1", true},
		{"devices/d/messages/events/a=1/", "d", "", "a=1", true},
		{"devices/d/messages/events/a=1//", "d", "", "a=1/", true},
		{"devices/d/messages/events//", "d", "", "", true},
		{"devices/d/messages/events/%24.ct=application/json", "d", "", "%24.ct=application/json", true},
		{"devices/Device_6/messages/events/%24.cid=Corrid1&%24.mid=MessageId1&Foo=Bar&Prop2=Value2&Prop3=Value3/", "Device_6", "",
			"%24.cid=Corrid1&%24.mid=MessageId1&Foo=Bar&Prop2=Value2&Prop3=Value3", true},
		{"devices/deviceId/modules/moduleId/messages/events/%24.on=fakeOutputName/", "deviceId", "moduleId", "%24.on=fakeOutputName", true},
		{"devices//messages/events/", "", "", "", true},
		{"devices/d/modules//messages/events/", "", "", "", false},
		{"devices/d/messages/eventsX", "", "", "", false},
		{"devices/d/messages/devicebound/", "", "", "", false},
		{"devices/d", "", "", "", false},
		{"devices/d/modules/m", "", "", "", false},
		{"Devices/d/messages/events/", "", "", "", false},
		{"$iothub/twin/GET/?$rid=1", "", "", "", false},
		{"", "", "", "", false},
	}
	for _, tt := range tests {
		d, m, bag, ok := ParseTelemetry(tt.topic)
		if d != tt.device || m != tt.module || bag != tt.bag || ok != tt.ok {
			t.Errorf("ParseTelemetry(%q) = %q, %q, %q, %v; want %q, %q, %q, %v", tt.topic, d, m, bag, ok, tt.device, tt.module, tt.bag, tt.ok)
		}
	}
}

func BenchmarkParsePropertyBag(b *testing.B) {
	bag := "%24.mid=m-1&%24.cid=c-1&%24.ct=application%2Fjson&%24.ce=utf-8&unit=celsius&site=plant%2042"
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ParsePropertyBag(bag); err != nil {
			b.Fatal(err)
		}
	}
}
