package mqtt

import (
	"net/url"
	"reflect"
	"testing"
	"time"
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
