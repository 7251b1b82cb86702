package bench

import (
	"context"
	"os"
	"testing"
)

func TestTelemetryEndToEnd(t *testing.T) {
	e := startBerth(t)
	o := Options{Devices: 4, Concurrency: 2, Baseline: true}
	if _, err := os.Stat(DefaultMosquitto); err != nil {
		o.Baseline = false // the berth half still runs
	}
	s, err := RunTelemetry(context.Background(), e.Target, o,
		TelemetryConfig{QoS: 1, Size: 128, Messages: 200, Inflight: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*TelemetryResult{s.Telemetry, s.MosquittoTelemetry} {
		if r == nil {
			continue
		}
		if r.Connected != 4 || r.Sent != 200 || r.Accepted != 200 || r.Failed != 0 || r.Errors != nil {
			t.Errorf("%s: connected %d, sent %d, accepted %d, failed %d, errors %v; want 4 devices and 200 acknowledged messages",
				r.Server, r.Connected, r.Sent, r.Accepted, r.Failed, r.Errors)
		}
	}
	if o.Baseline && (s.MosquittoTelemetry == nil || s.Ratios["telemetryPerMosquitto"] <= 0) {
		t.Errorf("no Mosquitto baseline: %+v", s.Ratios)
	}
	assertNoGroup(t, e.Target, s.Group)
}

func TestConnectHubEndToEnd(t *testing.T) {
	e := startBerth(t)
	s, err := RunConnect(context.Background(), e.Target, Options{Devices: 6, Concurrency: 3}, KindHub, ConnectConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Connect; c.Connected != 6 || c.Errors != nil || s.Provision.Assigned != 6 {
		t.Fatalf("provisioned %d, connected %d, errors %v", s.Provision.Assigned, c.Connected, c.Errors)
	}
}
