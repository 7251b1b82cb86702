package mqtt

import (
	"fmt"
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
)

func TestParseHubUsername(t *testing.T) {
	tests := []struct {
		name     string
		username string
		hub      string
		device   string
		module   string
		query    url.Values
		wantErr  bool
	}{
		// docs/spec/iothub-protocol.md#mqtt-connect table, one row per SDK.
		{
			name:     "embedded C T-1",
			username: "myiothub.azure-devices.net/my_device/?api-version=2020-09-30&DeviceClientType=azsdk-c%2F1.5.0",
			hub:      "myiothub.azure-devices.net", device: "my_device",
			query: url.Values{"api-version": {"2020-09-30"}, "DeviceClientType": {"azsdk-c/1.5.0"}},
		},
		{
			name:     "embedded C T-2 module with encoded model-id",
			username: "myiothub.azure-devices.net/my_device/my_module_id/?api-version=2020-09-30&DeviceClientType=azrtos&model-id=dtmi%3AYOUR_COMPANY_NAME_HERE%3Asample_device%3B1",
			hub:      "myiothub.azure-devices.net", device: "my_device", module: "my_module_id",
			query: url.Values{"api-version": {"2020-09-30"}, "DeviceClientType": {"azrtos"}, "model-id": {"dtmi:YOUR_COMPANY_NAME_HERE:sample_device;1"}},
		},
		{
			name:     "C SDK",
			username: "myhub.azure-devices.net/dev-1/?api-version=2020-09-30&DeviceClientType=iothubclient%2F1.11.0%20%28native%3B%20Linux%3B%20x86_64%29&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1",
			hub:      "myhub.azure-devices.net", device: "dev-1",
			query: url.Values{"api-version": {"2020-09-30"}, "DeviceClientType": {"iothubclient/1.11.0 (native; Linux; x86_64)"}, "model-id": {"dtmi:com:example:Thermostat;1"}},
		},
		{
			name:     "Node raw model-id before DeviceClientType",
			username: "hub.berth.test/dev-1/?api-version=2021-04-12&model-id=dtmi:com:example:Thermostat;1&DeviceClientType=azure-iot-device%2F1.18.2%20(node%20v20.11.0%3B%20Linux%3B%20x64)",
			hub:      "hub.berth.test", device: "dev-1",
			query: url.Values{"api-version": {"2021-04-12"}, "model-id": {"dtmi:com:example:Thermostat;1"}, "DeviceClientType": {"azure-iot-device/1.18.2 (node v20.11.0; Linux; x64)"}},
		},
		{
			name:     "C# with auth-chain",
			username: "hub.azure-devices.net/dev-1/?api-version=2020-09-30&DeviceClientType=Microsoft.Azure.Devices.Client%2F1.41.0%20%28.NET%206.0%3B%20Linux%29&auth-chain=leaf;edge1&model-id=dtmi:x:y;1",
			hub:      "hub.azure-devices.net", device: "dev-1",
			query: url.Values{"api-version": {"2020-09-30"}, "DeviceClientType": {"Microsoft.Azure.Devices.Client/1.41.0 (.NET 6.0; Linux)"}, "auth-chain": {"leaf;edge1"}, "model-id": {"dtmi:x:y;1"}},
		},
		{
			name:     "Python",
			username: "hub.azure-devices.net/dev-1/?api-version=2019-10-01&DeviceClientType=py-azure-iot-device%2F2.12.0%28ubuntu%29",
			hub:      "hub.azure-devices.net", device: "dev-1",
			query: url.Values{"api-version": {"2019-10-01"}, "DeviceClientType": {"py-azure-iot-device/2.12.0(ubuntu)"}},
		},
		{
			name:     "docs raw MQTT",
			username: "hub.azure-devices.net/dev-1/?api-version=2021-04-12",
			hub:      "hub.azure-devices.net", device: "dev-1",
			query: url.Values{"api-version": {"2021-04-12"}},
		},
		{
			name:     "bare (SAS doc, mosquitto_pub)",
			username: "hub.azure-devices.net/dev-1",
			hub:      "hub.azure-devices.net", device: "dev-1", query: url.Values{},
		},
		{
			name:     "bare with trailing slash",
			username: "hub.azure-devices.net/dev-1/",
			hub:      "hub.azure-devices.net", device: "dev-1", query: url.Values{},
		},
		{
			name:     "question mark form without api-version",
			username: "hub/dev-1/?DeviceClientType=mosquitto",
			hub:      "hub", device: "dev-1", query: url.Values{"DeviceClientType": {"mosquitto"}},
		},
		{
			name:     "question mark form with empty query",
			username: "hub/dev-1/?",
			hub:      "hub", device: "dev-1", query: url.Values{},
		},
		// Legacy forms accepted by IoT Edge.
		{
			name:     "legacy device",
			username: "hub/dev-1/api-version=2016-11-14&DeviceClientType=azure-iot-device%2F1.1.0",
			hub:      "hub", device: "dev-1",
			query: url.Values{"api-version": {"2016-11-14"}, "DeviceClientType": {"azure-iot-device/1.1.0"}},
		},
		{
			name:     "T-25 legacy module",
			username: "iotHub1/device1/module1/api-version=2010-01-01&DeviceClientType=customDeviceClient2",
			hub:      "iotHub1", device: "device1", module: "module1",
			query: url.Values{"api-version": {"2010-01-01"}, "DeviceClientType": {"customDeviceClient2"}},
		},
		{
			name:     "T-25 device with model-id",
			username: "iotHub1/device1/?api-version=2010-01-01&DeviceClientType=customDeviceClient1&model-id=testModelId",
			hub:      "iotHub1", device: "device1",
			query: url.Values{"api-version": {"2010-01-01"}, "DeviceClientType": {"customDeviceClient1"}, "model-id": {"testModelId"}},
		},
		{
			name:     "Azure ML six segments",
			username: "hub/dev-1/mod-1/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1-preview-003",
			hub:      "hub", device: "dev-1", module: "mod-1",
			query: url.Values{"api-version": {"2017-06-30"}, "DeviceClientType": {"Microsoft.Azure.Devices.Client/1.5.1-preview-003"}},
		},
		{
			// The tail matches in any case (IoT Edge compares it
			// ignoring case); the keys and values are the canonical ones.
			name:     "Azure ML six segments, any case",
			username: "0/0/0/ApI-version=2017-06-30/DeviCeClientTYpe=MiCrosoft.AZure.DeviCes.Client/1.5.1-preview-003",
			hub:      "0", device: "0", module: "0",
			query: url.Values{"api-version": {"2017-06-30"}, "DeviceClientType": {"Microsoft.Azure.Devices.Client/1.5.1-preview-003"}},
		},
		{
			// berth's choice: a missing api-version is accepted; the module
			// itself is refused later, at CONNECT.
			name:     "T-25 module without api-version accepted (berth's choice)",
			username: "iotHub1/device1/module1/?version=2010-01-01&DeviceClientType=customDeviceClient1",
			hub:      "iotHub1", device: "device1", module: "module1",
			query: url.Values{"version": {"2010-01-01"}, "DeviceClientType": {"customDeviceClient1"}},
		},
		// Query details.
		{
			name:     "duplicate keys: first wins",
			username: "hub/d/?api-version=first&api-version=second&x=1&x=2",
			hub:      "hub", device: "d",
			query: url.Values{"api-version": {"first"}, "x": {"1"}},
		},
		{
			name:     "plus is not a space",
			username: "hub/d/?DeviceClientType=a+b%20c",
			hub:      "hub", device: "d", query: url.Values{"DeviceClientType": {"a+b c"}},
		},
		{
			name:     "invalid escape kept raw, empty pairs skipped, key without value",
			username: "hub/d/?DeviceClientType=100%&&api-version=%zz&flag&",
			hub:      "hub", device: "d",
			query: url.Values{"DeviceClientType": {"100%"}, "api-version": {"%zz"}, "flag": {""}},
		},
		{
			name:     "keys are not decoded",
			username: "hub/d/?model%2Did=x",
			hub:      "hub", device: "d", query: url.Values{"model%2Did": {"x"}},
		},
		{
			name:     "question mark inside device ID is kept",
			username: "hub/?dev/?api-version=1",
			hub:      "hub", device: "?dev", query: url.Values{"api-version": {"1"}},
		},
		{name: "empty", username: "", wantErr: true},
		{name: "hub only", username: "hub.azure-devices.net", wantErr: true},
		{name: "empty device, bare", username: "hub/", wantErr: true},
		{name: "empty hub", username: "/dev-1/?api-version=1", wantErr: true},
		{name: "T-25 empty device", username: "iotHub1//?api-version=2010-01-01&DeviceClientType=customDeviceClient1", wantErr: true},
		{name: "T-25 device/module without query", username: "iotHub1/device1/module1", wantErr: true},
		{name: "T-25 question mark without slash", username: "iotHub1/device1/module1?api-version=2010-01-01?DeviceClientType=customDeviceClient1", wantErr: true},
		{name: "empty module", username: "hub/dev-1//?api-version=1", wantErr: true},
		{name: "five segments with question mark", username: "hub/dev-1/mod/x/?api-version=1", wantErr: true},
		{name: "raw slash in query", username: "hub/dev-1/?api-version=1&DeviceClientType=mything/1.0", wantErr: true},
		{name: "legacy without api-version key", username: "hub/dev-1/foo-api-version=1", wantErr: true},
		{name: "legacy with empty api-version", username: "hub/dev-1/api-version=&x=1", wantErr: true},
		{name: "legacy module with empty module", username: "hub/dev-1//api-version=1", wantErr: true},
		{name: "four segments without api-version", username: "hub/dev-1/mod/x", wantErr: true},
		{name: "six segments, other tail", username: "hub/dev-1/mod-1/api-version=2017-06-30/DeviceClientType=Other/1.0", wantErr: true},
		{
			// Syntactically a legacy module username: the listener
			// tries the DPS form first (see conn.newSession).
			name:     "DPS username reads as a legacy module",
			username: "0ne00000A0A/registrations/dev-1/api-version=2019-03-31",
			hub:      "0ne00000A0A", device: "registrations", module: "dev-1",
			query: url.Values{"api-version": {"2019-03-31"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, d, m, q, err := ParseHubUsername(tt.username)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseHubUsername(%q) = %q, %q, %q, %v; want an error", tt.username, h, d, m, q)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseHubUsername(%q): %v", tt.username, err)
			}
			if h != tt.hub || d != tt.device || m != tt.module {
				t.Errorf("hub, device, module = %q, %q, %q; want %q, %q, %q", h, d, m, tt.hub, tt.device, tt.module)
			}
			if !reflect.DeepEqual(q, tt.query) {
				t.Errorf("query = %#v; want %#v", q, tt.query)
			}
		})
	}
}

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
		{name: "$.schema is the message-schema application property", bag: "%24.schema=temp-v1", app: p(propMessageSchema, "temp-v1")},
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
		d, m, bag, ok := parseTelemetryTopic(tt.topic)
		if d != tt.device || m != tt.module || bag != tt.bag || ok != tt.ok {
			t.Errorf("parseTelemetryTopic(%q) = %q, %q, %q, %v; want %q, %q, %q, %v", tt.topic, d, m, bag, ok, tt.device, tt.module, tt.bag, tt.ok)
		}
	}
}

func TestClassifyHubFilter(t *testing.T) {
	tests := []struct {
		filter string
		want   hubFeature
		ok     bool
	}{
		{"devices/dev-1/messages/devicebound/#", featureC2D, true},
		{"devices/+/messages/devicebound/#", featureC2D, true},
		{"$iothub/twin/res/#", featureTwinResponses, true},
		{"$iothub/twin/PATCH/properties/desired/#", featureDesired, true},
		{"$iothub/methods/POST/#", featureMethods, true},
		{"devices/dev-2/messages/devicebound/#", 0, false},
		{"devices/DEV-1/messages/devicebound/#", 0, false},
		{"devices/#", 0, false},
		{"devices/dev-1/modules/m/#", 0, false},
		{"devices/dev-1/messages/events/", 0, false},
		{"$iothub/twin/res/200/?$rid=1", featureTwinResponses, true}, // mosquitto_rr -e
		{"$iothub/twin/res/+/?$rid=1", 0, false},
		{"$iothub/#", 0, false},
		{"#", featureC2D, true}, // Microsoft's mosquitto sample
		{"+/+/messages/devicebound/#", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := classifyHubFilter(tt.filter, "dev-1")
		if got != tt.want || ok != tt.ok {
			t.Errorf("classifyHubFilter(%q) = %d, %v; want %d, %v", tt.filter, got, ok, tt.want, tt.ok)
		}
	}
}

func TestHubKeepAliveLimit(t *testing.T) {
	tests := []struct {
		client uint16
		want   time.Duration
	}{
		{0, 1767 * time.Second},
		{1, 1500 * time.Millisecond},
		{60, 90 * time.Second},
		{180, 270 * time.Second},
		{1177, 1765500 * time.Millisecond},
		{1178, 1767 * time.Second},
		{65535, 1767 * time.Second},
	}
	for _, tt := range tests {
		if got := hubKeepAlive(tt.client); got != tt.want {
			t.Errorf("hubKeepAlive(%d) = %v; want %v", tt.client, got, tt.want)
		}
	}
}

func TestSameHost(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"hub.berth.test", "hub.berth.test", true},
		{"HUB.Berth.Test", "hub.berth.test", true},
		{"hub.berth.test:8883", "hub.berth.test", true},
		{"other.berth.test", "hub.berth.test", false},
		{"hub.berth.test.evil", "hub.berth.test", false},
		{"", "hub.berth.test", false},
	}
	for _, tt := range tests {
		if got := sameHost(tt.a, tt.b); got != tt.want {
			t.Errorf("sameHost(%q, %q) = %v; want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
