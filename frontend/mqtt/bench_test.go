package mqtt

import (
	"testing"
)

// Hot-path parsers: every DPS request and every telemetry message goes
// through one of these.

func BenchmarkParseDPSTopic(b *testing.B) {
	topic := "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d"
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, ok := ParseDPSTopic(topic); !ok {
			b.Fatal("not parsed")
		}
	}
}

func BenchmarkParseDPSUsername(b *testing.B) {
	u := "0ne00000A0A/registrations/my-device/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.2"
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := ParseDPSUsername(u); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseHubUsername(b *testing.B) {
	u := "hub.example.lan/my-device/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4"
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, _, err := ParseHubUsername(u); err != nil {
			b.Fatal(err)
		}
	}
}
