package bench

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/berth-iot/berth/deviceclient"
	"github.com/berth-iot/berth/internal/testenv"
	"github.com/berth-iot/berth/serviceclient"
)

// The end-to-end tests run the bench against an in-process berth and
// assert counts and errors, never timings: the machine running the tests
// decides those.

func startBerth(t *testing.T) *Embedded {
	t.Helper()
	e, err := StartEmbedded(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return e
}

func TestProvisionEndToEnd(t *testing.T) {
	e := startBerth(t)
	const n = 20
	for _, transport := range []string{deviceclient.TransportMQTT, deviceclient.TransportHTTPS} {
		t.Run(transport, func(t *testing.T) {
			s, err := RunProvision(context.Background(), e.Target, Options{Devices: n, Concurrency: 4, Baseline: true},
				ProvisionConfig{Transport: transport})
			if err != nil {
				t.Fatal(err)
			}
			p, h := s.Provision, s.Handshake
			if p.Assigned != n || p.Failed != 0 || p.Errors != nil || p.Latency.Count != n {
				t.Errorf("provisioning: %d assigned, %d failed, errors %v, %d latencies; want %d, 0, none, %d",
					p.Assigned, p.Failed, p.Errors, p.Latency.Count, n, n)
			}
			if h == nil || h.Succeeded != n || h.Failed != 0 || h.Count != n || h.Concurrency != 4 {
				t.Fatalf("handshake baseline %+v, want %d handshakes at concurrency 4", h, n)
			}
			wantAddr := e.Target.MQTTAddress
			if transport == deviceclient.TransportHTTPS {
				wantAddr = e.Target.HTTPSAddress
			}
			if h.Address != wantAddr {
				t.Errorf("baseline dialled %s, want the %s listener %s", h.Address, transport, wantAddr)
			}
			if s.Ratios["provisionPerHandshake"] <= 0 || len(s.Targets) != 1 {
				t.Errorf("ratios %v, targets %+v", s.Ratios, s.Targets)
			}
			if st := s.Targets[0].Status; transport == "mqtt" && st == StatusNotMeasured || transport == "https" && st != StatusNotMeasured {
				t.Errorf("%s: target status %s", transport, st)
			}
			// The group the run created is gone.
			assertNoGroup(t, e.Target, s.Group)
		})
	}
}

func TestProvisionHubConnect(t *testing.T) {
	// Devices of an existing group (given by key), each connecting to its
	// hub over MQTT once assigned.
	e := startBerth(t)
	g, err := SetupGroup(context.Background(), e.Target, "")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close(context.Background())
	s, err := RunProvision(context.Background(), e.Target, Options{Devices: 3, Concurrency: 3, GroupKey: g.Key},
		ProvisionConfig{Transport: deviceclient.TransportMQTT, HubConnect: true})
	if err != nil {
		t.Fatal(err)
	}
	p := s.Provision
	if p.Assigned != 3 || s.Handshake != nil || s.Group != "" {
		t.Errorf("assigned %d, baseline %v, group %q: want 3 devices of the given group and no baseline", p.Assigned, s.Handshake, s.Group)
	}
	if p.HubConnect == nil || p.HubConnect.Count != 3 || p.Errors != nil {
		t.Errorf("hub connections %+v, errors %v: want 3 and none", p.HubConnect, p.Errors)
	}
}

func TestProvisionInterrupted(t *testing.T) {
	e := startBerth(t)
	ctx, cancel := context.WithCancel(context.Background())
	o := Options{Devices: 100000, Concurrency: 2}
	// Cancel once a few devices are through, as Ctrl-C would.
	var s *Summary
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		s, err = RunProvision(ctx, e.Target, o, ProvisionConfig{Transport: deviceclient.TransportMQTT})
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the run did not end after its context was cancelled")
	}
	if !errors.Is(err, context.Canceled) || s == nil || !s.Interrupted {
		t.Fatalf("err %v, summary %+v: want the partial summary, marked interrupted, and context.Canceled", err, s)
	}
	if s.Provision.Assigned >= 100000 || s.Provision.Failed != 0 {
		t.Errorf("interrupted run: %d assigned, %d failed (cancellations are not failures)", s.Provision.Assigned, s.Provision.Failed)
	}
	assertNoGroup(t, e.Target, s.Group)
}

func TestConnectDPSSessions(t *testing.T) {
	e := startBerth(t)
	s, err := RunConnect(context.Background(), e.Target, Options{Devices: 10, Concurrency: 5}, KindDPS, ConnectConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Connect
	if c.Connected != 10 || c.Errors != nil {
		t.Fatalf("connected %d, errors %v", c.Connected, c.Errors)
	}
	m := c.Memory
	if m == nil || m.PID != os.Getpid() || !m.IncludesClient || m.BeforeBytes <= 0 || m.AfterBytes <= 0 {
		t.Errorf("memory %+v: want this process's RSS, flagged as including the clients", m)
	}
}

func mosquittoOrSkip(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(DefaultMosquitto); err != nil {
		testenv.Unavailable(t, "no mosquitto broker at %s for the baseline test (apt-get install mosquitto): %v", DefaultMosquitto, err)
	}
	return DefaultMosquitto
}

func TestMosquittoBaseline(t *testing.T) {
	bin := mosquittoOrSkip(t)
	m, err := StartMosquitto(context.Background(), bin, DefaultMosquittoHost)
	if err != nil {
		t.Fatal(err)
	}
	pid := m.PID
	defer m.Close()
	devices := []Device{{ID: "d1"}, {ID: "d2"}, {ID: "d3"}}
	for _, qos := range []byte{0, 1} {
		res, err := Telemetry(context.Background(), m.Endpoint, devices,
			TelemetryConfig{QoS: qos, Size: 64, Messages: 300, Inflight: 4, Concurrency: 2}, ProgressOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Connected != 3 || res.Sent != 300 || res.Accepted != 300 || res.Failed != 0 || res.Errors != nil || res.Latency.Count != 300 {
			t.Errorf("QoS %d: connected %d, sent %d, accepted %d, failed %d, errors %v",
				qos, res.Connected, res.Sent, res.Accepted, res.Failed, res.Errors)
		}
	}
	// A rate-limited run by duration ends on time and sends about what was
	// offered (not asserted: timing), but never fails a message.
	res, err := Telemetry(context.Background(), m.Endpoint, devices,
		TelemetryConfig{QoS: 1, Size: 16, Rate: 200, Duration: 300 * time.Millisecond, Concurrency: 3}, ProgressOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Accepted == 0 || res.Accepted != res.Sent || res.Failed != 0 {
		t.Errorf("rate-limited run: sent %d, accepted %d, failed %d", res.Sent, res.Accepted, res.Failed)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("mosquitto (pid %d) still exists after Close: %v", pid, err)
	}
}

func assertNoGroup(t *testing.T, tg *Target, id string) {
	t.Helper()
	if id == "" {
		t.Fatal("the run created no group")
	}
	c, err := serviceclient.New(tg.ServiceConnectionString, serviceclient.Options{CAFile: tg.CAFile, Address: tg.HTTPSAddress})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEnrollmentGroup(context.Background(), id); !serviceclient.IsNotFound(err) {
		t.Errorf("group %s after the run: %v, want not found", id, err)
	}
}
