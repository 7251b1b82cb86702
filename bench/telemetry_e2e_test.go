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

// Over AMQP and MQTT over WebSockets every message is acknowledged, and
// the same devices run the load over MQTT in the same run for the ratio.
func TestTelemetryOtherTransportsEndToEnd(t *testing.T) {
	e := startBerth(t)
	for _, transport := range []string{TransportAMQP, TransportMQTTWS} {
		t.Run(transport, func(t *testing.T) {
			s, err := RunTelemetry(context.Background(), e.Target, Options{Devices: 3, Concurrency: 3},
				TelemetryConfig{QoS: 1, Size: 64, Messages: 60, Inflight: 2, Transport: transport})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []*TelemetryResult{s.Telemetry, s.MQTTTelemetry} {
				if r == nil {
					t.Fatal("a run is missing")
				}
				if r.Connected != 3 || r.Accepted != 60 || r.Failed != 0 || r.Errors != nil {
					t.Errorf("%s: connected %d, accepted %d, failed %d, errors %v", r.Transport, r.Connected, r.Accepted, r.Failed, r.Errors)
				}
			}
			if s.Telemetry.Transport != transport || s.MQTTTelemetry.Transport != TransportMQTT || s.Ratios["telemetryPerBerthMQTT"] <= 0 {
				t.Errorf("transports %s/%s, ratios %v", s.Telemetry.Transport, s.MQTTTelemetry.Transport, s.Ratios)
			}
		})
	}
	// AMQP has no QoS 0 here: refused before anything runs.
	if _, err := RunTelemetry(context.Background(), e.Target, Options{Devices: 1, Concurrency: 1},
		TelemetryConfig{QoS: 0, Messages: 1, Transport: TransportAMQP}); err == nil {
		t.Error("QoS 0 over AMQP was accepted")
	}
}

func TestConnectHubOverAMQPEndToEnd(t *testing.T) {
	e := startBerth(t)
	s, err := RunConnect(context.Background(), e.Target, Options{Devices: 4, Concurrency: 2}, KindHub, ConnectConfig{Transport: TransportAMQP})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*ConnectResult{s.Connect, s.MQTTConnect} {
		if c == nil || c.Connected != 4 || c.Errors != nil {
			t.Fatalf("connect %+v", c)
		}
	}
	if s.Connect.Transport != TransportAMQP || s.MQTTConnect.Transport != TransportMQTT {
		t.Errorf("transports %s, %s", s.Connect.Transport, s.MQTTConnect.Transport)
	}
}

// --read eventhubs: a consumer on the Event Hubs-compatible endpoint reads
// back every acknowledged message, each with its publish → receive time.
func TestTelemetryReadEventHubs(t *testing.T) {
	e := startBerth(t)
	s, err := RunTelemetry(context.Background(), e.Target, Options{Devices: 4, Concurrency: 2},
		TelemetryConfig{QoS: 1, Size: 64, Messages: 100, Inflight: 1, ReadEventHubs: true})
	if err != nil {
		t.Fatal(err)
	}
	r := s.EventHubsRead
	if r == nil || s.Telemetry == nil {
		t.Fatalf("no results: %+v", s)
	}
	if r.Partitions != 4 || r.Received != s.Telemetry.Accepted || r.Latency.Count != uint64(r.Received) || r.Latency.P50 <= 0 {
		t.Errorf("read %+v, want the %d accepted messages from 4 partitions, each timed", r, s.Telemetry.Accepted)
	}
}
