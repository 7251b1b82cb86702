package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/berth-iot/berth/deviceclient"
)

func target() *Target {
	return &Target{Mode: "embedded", MQTTAddress: "127.1.2.3:8883", HTTPSAddress: "127.1.2.3:443", ServerPID: 7}
}

func TestEvaluateProvision(t *testing.T) {
	tests := []struct {
		name      string
		transport string
		prov      float64
		hs        *HandshakeResult
		status    string
		ratio     float64 // 0: no ratio
	}{
		{name: "pass", transport: "mqtt", prov: 700, hs: &HandshakeResult{Rate: 1000}, status: StatusPass, ratio: 0.7},
		{name: "at the target", transport: "mqtt", prov: 600, hs: &HandshakeResult{Rate: 1000}, status: StatusPass, ratio: 0.6},
		{name: "fail", transport: "mqtt", prov: 480, hs: &HandshakeResult{Rate: 1000}, status: StatusFail, ratio: 0.48},
		{name: "https has a ratio but no target", transport: "https", prov: 500, hs: &HandshakeResult{Rate: 1000}, status: StatusNotMeasured, ratio: 0.5},
		{name: "no baseline", transport: "mqtt", prov: 500, status: StatusNotMeasured},
		{name: "empty baseline", transport: "mqtt", prov: 500, hs: &HandshakeResult{}, status: StatusNotMeasured},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSummary("provision", target())
			s.Provision = &ProvisionResult{Transport: tt.transport, Rate: tt.prov}
			s.Handshake = tt.hs
			s.Evaluate()
			if len(s.Targets) != 1 {
				t.Fatalf("targets %+v", s.Targets)
			}
			c := s.Targets[0]
			if c.Status != tt.status {
				t.Errorf("status %q, want %q (%+v)", c.Status, tt.status, c)
			}
			if got := s.Ratios["provisionPerHandshake"]; got != tt.ratio {
				t.Errorf("ratio %v, want %v", got, tt.ratio)
			}
			if (c.Value != nil) != (tt.status != StatusNotMeasured) {
				t.Errorf("value %v with status %s", c.Value, c.Status)
			}
		})
	}
}

func TestEvaluateTelemetry(t *testing.T) {
	s := NewSummary("telemetry", target())
	s.Telemetry = &TelemetryResult{Server: "berth", QoS: 1, Rate: 1500}
	s.MosquittoTelemetry = &TelemetryResult{Server: "mosquitto", QoS: 1, Rate: 3000}
	s.Evaluate()
	if c := s.Targets[0]; c.Status != StatusFail || *c.Value != 0.5 || s.Ratios["telemetryPerMosquitto"] != 0.5 {
		t.Errorf("half of Mosquitto's rate: %+v, ratios %v", c, s.Ratios)
	}
	s.Telemetry.Rate = 3000
	s.Evaluate()
	if c := s.Targets[0]; c.Status != StatusPass {
		t.Errorf("equal to Mosquitto: %+v", c)
	}
	s.Telemetry.QoS, s.MosquittoTelemetry.QoS = 0, 0
	s.Evaluate()
	if c := s.Targets[0]; c.Status != StatusNotMeasured || !strings.Contains(c.Note, "QoS 1") {
		t.Errorf("QoS 0 is not what the target is about: %+v", c)
	}
}

func TestEvaluateConnect(t *testing.T) {
	s := NewSummary("connect", target())
	s.Connect = &ConnectResult{Memory: &Memory{PerConnection: 12 * 1024, PerConnKiB: 12}}
	s.MosquittoConnect = &ConnectResult{Memory: &Memory{PerConnection: 4 * 1024, PerConnKiB: 4}}
	s.Evaluate()
	if c := s.Targets[0]; c.Status != StatusPass || *c.Value != 12 || s.Ratios["memoryPerMosquitto"] != 3 {
		t.Errorf("12 KiB: %+v, ratios %v", c, s.Ratios)
	}
	s.Connect.Memory = &Memory{PerConnection: 17 * 1024, PerConnKiB: 17, IncludesClient: true}
	s.Evaluate()
	if c := s.Targets[0]; c.Status != StatusFail || !strings.Contains(c.Note, "includes the clients") {
		t.Errorf("17 KiB measured in-process: %+v", c)
	}
	s.Connect.Memory = nil
	s.Evaluate()
	if c := s.Targets[0]; c.Status != StatusNotMeasured {
		t.Errorf("no memory reading: %+v", c)
	}
}

func TestSummaryJSON(t *testing.T) {
	s := NewSummary("provision", target())
	s.Provision = &ProvisionResult{Transport: "mqtt", Devices: 20, Assigned: 19, Failed: 1, Rate: 650.5,
		Latency: Latency{Count: 19, P50: 45.1, P99: 80}, Errors: map[string]ErrorKind{"provision: timeout": {Count: 1, Example: "x"}}}
	s.Handshake = &HandshakeResult{Rate: 1000.25, Succeeded: 20}
	s.Evaluate()
	var buf bytes.Buffer
	if err := s.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, buf.String())
	}
	// The names scripts and the docs rely on.
	for _, path := range []string{
		"bench", "environment.serverMode", "environment.numCpu",
		"provision.registrationsPerSecond", "provision.latency.p50Ms", "provision.latency.p99Ms",
		"provision.errors.provision: timeout.count", "tlsHandshakeBaseline.handshakesPerSecond",
		"ratios.provisionPerHandshake", "targets",
	} {
		if !hasPath(m, path) {
			t.Errorf("summary has no %s:\n%s", path, buf.String())
		}
	}
	for _, absent := range []string{"telemetry", "connect", "interrupted", "mosquittoTelemetryBaseline"} {
		if _, ok := m[absent]; ok {
			t.Errorf("summary of a provisioning run has %s", absent)
		}
	}
	if !strings.Contains(buf.String(), `"goal": "≥ 0.60"`) {
		t.Errorf("goal not written verbatim (HTML escaping?):\n%s", buf.String())
	}
	var text bytes.Buffer
	s.WriteText(&text)
	for _, want := range []string{"19/20 assigned", "650.5/s", "pass (0.65)", "errors: 1 in the run"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text summary lacks %q:\n%s", want, text.String())
		}
	}
}

func hasPath(m map[string]any, path string) bool {
	var cur any = m
	for _, k := range splitPath(path) {
		obj, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		if cur, ok = obj[k]; !ok {
			return false
		}
	}
	return true
}

// splitPath splits on dots, except inside an error kind ("provision: timeout").
func splitPath(p string) []string {
	if before, after, ok := strings.Cut(p, ".errors."); ok {
		kind, rest, _ := strings.Cut(after, ".")
		return append(append(strings.Split(before, "."), "errors", kind), rest)
	}
	return strings.Split(p, ".")
}

func TestClassify(t *testing.T) {
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Err: err} }
	tests := []struct {
		err  error
		want string
	}{
		{context.Canceled, "canceled"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{errTimeout, "timeout"},
		{fmt.Errorf("deviceclient: register: %w", &deviceclient.Error{Status: 429}), "dps-429"},
		{fmt.Errorf("x: %w", deviceclient.ErrNotAssigned), "not-assigned"},
		{fmt.Errorf("connect: %w", packets.ErrorRefusedNotAuthorised), "connack-not-authorized"},
		{packets.ErrorRefusedServerUnavailable, "connack-server-unavailable"},
		{opErr(syscall.ECONNREFUSED), "connection-refused"},
		{opErr(syscall.ECONNRESET), "connection-reset"},
		{opErr(syscall.EMFILE), "fd-limit"},
		{opErr(syscall.EADDRNOTAVAIL), "no-ephemeral-port"},
		{fmt.Errorf("read: %w", io.EOF), "eof"},
		{errors.New("paho: connection lost before Publish completed"), "connection-lost"},
		{errors.New("something else"), "other"},
	}
	for _, tt := range tests {
		if got := Classify(tt.err); got != tt.want {
			t.Errorf("Classify(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
	var e Errors
	e.Add("provision", errTimeout)
	e.Add("provision", errTimeout)
	e.Add("connect", errors.New(strings.Repeat("x", 1000)))
	snap := e.Snapshot()
	if e.Total() != 3 || snap["provision: timeout"].Count != 2 || len(snap["connect: other"].Example) > maxExample+len("…") {
		t.Errorf("errors %+v", snap)
	}
	if (&Errors{}).Snapshot() != nil {
		t.Error("no errors should give a nil snapshot (no key in the JSON)")
	}
}

func TestProgressOutput(t *testing.T) {
	var plain bytes.Buffer
	p := ProgressOptions{W: &plain, Interval: time.Hour}.Start("provision mqtt", 10, 0)
	for range 7 {
		p.Add(true)
	}
	p.Add(false)
	p.Done()
	p.Done() // idempotent
	if out := plain.String(); strings.Contains(out, "\r") || !strings.Contains(out, "provision mqtt 8/10  80%") ||
		!strings.Contains(out, "errors 1") || strings.Count(out, "\n") != 1 {
		t.Errorf("log output %q", out)
	}
	var tty bytes.Buffer
	p = ProgressOptions{W: &tty, TTY: true, Interval: time.Hour}.Start("telemetry berth", 0, time.Second)
	p.Add(true)
	p.Done()
	if out := tty.String(); !strings.HasPrefix(out, "\r") || !strings.Contains(out, "[") || !strings.HasSuffix(out, "\n") {
		t.Errorf("terminal output %q", out)
	}
	// No writer: nothing runs, Done returns.
	ProgressOptions{}.Start("x", 1, 0).Done()
}
