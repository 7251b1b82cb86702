package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"time"
)

// Summary is the JSON a bench prints on stdout when it ends: the run's
// figures, its baselines, the ratios between them and the project's
// targets with pass or fail.
type Summary struct {
	Bench       string           `json:"bench"` // provision, telemetry or connect
	Started     time.Time        `json:"started"`
	Seconds     float64          `json:"seconds"`
	Environment Environment      `json:"environment"`
	Interrupted bool             `json:"interrupted,omitempty"`
	Group       string           `json:"enrollmentGroup,omitempty"`
	Provision   *ProvisionResult `json:"provision,omitempty"`
	Handshake   *HandshakeResult `json:"tlsHandshakeBaseline,omitempty"`
	Telemetry   *TelemetryResult `json:"telemetry,omitempty"`
	// MosquittoTelemetry is the same load against Mosquitto.
	MosquittoTelemetry *TelemetryResult `json:"mosquittoTelemetryBaseline,omitempty"`
	// MQTTTelemetry is, when Telemetry ran over another transport (AMQP,
	// MQTT over WebSockets), the same load on berth over MQTT in the same
	// run: the figure that transport is compared with.
	MQTTTelemetry    *TelemetryResult `json:"berthMqttTelemetry,omitempty"`
	Connect          *ConnectResult   `json:"connect,omitempty"`
	MosquittoConnect *ConnectResult   `json:"mosquittoConnectBaseline,omitempty"`
	// MQTTConnect is, when Connect ran over another transport, the same
	// devices held over MQTT in the same run.
	MQTTConnect *ConnectResult `json:"berthMqttConnect,omitempty"`
	// EventHubsRead is the telemetry run as an Event Hubs consumer read it
	// (--read eventhubs).
	EventHubsRead *EventHubsReadResult `json:"eventHubsRead,omitempty"`
	// ServerCPU is the server side's CPU per operation of the provision
	// and telemetry phases, when its processes are known and apart from
	// the bench's (--spawn, --cluster, --server-pid).
	ServerCPU []*CPUUse `json:"serverCpu,omitempty"`
	// Ratios are berth's figure over its baseline's, by name.
	Ratios  map[string]float64 `json:"ratios,omitempty"`
	Targets []TargetCheck      `json:"targets"`
}

// Environment says where the figures were taken.
type Environment struct {
	Mode         string `json:"serverMode"` // local, embedded, spawned
	MQTTAddress  string `json:"mqttAddress"`
	HTTPSAddress string `json:"httpsAddress"`
	AMQPAddress  string `json:"amqpAddress,omitempty"`
	ServerPID    int    `json:"serverPid,omitempty"`
	// Nodes are a cluster target's nodes (devices spread i % N).
	Nodes  []Node `json:"nodes,omitempty"`
	Store  string `json:"store,omitempty"`
	Stream string `json:"stream,omitempty"`
	// LoadAverage is /proc/loadavg (1, 5, 15 min) when the run started:
	// on a shared machine, how busy it was (absent where unreadable).
	LoadAverage []float64 `json:"loadAverage,omitempty"`
	NumCPU      int       `json:"numCpu"`
	GOMAXPROCS  int       `json:"gomaxprocs"`
	GoVersion   string    `json:"goVersion"`
}

// NewSummary starts the summary of a bench against t.
func NewSummary(bench string, t *Target) *Summary {
	return &Summary{
		Bench:   bench,
		Started: time.Now().UTC().Truncate(time.Second),
		Environment: Environment{
			Mode: t.Mode, MQTTAddress: t.MQTTAddress, HTTPSAddress: t.HTTPSAddress, AMQPAddress: t.AMQPAddress, ServerPID: t.ServerPID,
			Nodes: t.Nodes, Store: t.Store, Stream: t.Stream, LoadAverage: LoadAverage(),
			NumCPU: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
		},
		Targets: []TargetCheck{},
	}
}

// TargetCheck is one of the project's performance targets against what
// this run measured.
type TargetCheck struct {
	Name  string   `json:"name"`
	Goal  string   `json:"goal"`
	Value *float64 `json:"value,omitempty"`
	// Status is "pass", "fail" or "not measured".
	Status string `json:"status"`
	Note   string `json:"note,omitempty"`
}

// Target statuses.
const (
	StatusPass        = "pass"
	StatusFail        = "fail"
	StatusNotMeasured = "not measured"
)

// The project's targets.
const (
	// ProvisionTarget: provisioning over MQTT/TLS at ≥ 60 % of the bare
	// TLS handshake rate of the same listener.
	ProvisionTarget = 0.60
	// TelemetryTarget: QoS 1 telemetry at ≥ 1.0× Mosquitto's rate.
	TelemetryTarget = 1.0
	// IdleMemoryTarget: ≤ 16 KiB of server memory per idle connected
	// device.
	IdleMemoryTarget = 16
)

// Target names.
const (
	targetProvision = "provisioning over MQTT/TLS vs bare TLS handshake"
	targetTelemetry = "telemetry QoS 1 vs Mosquitto"
	targetMemory    = "server memory per idle connected device"
)

// Evaluate computes the ratios and target checks from the results.
func (s *Summary) Evaluate() {
	s.Ratios = map[string]float64{}
	s.Targets = s.Targets[:0]
	switch s.Bench {
	case "provision":
		s.evalProvision()
	case "telemetry":
		s.evalTelemetry()
	case "connect":
		s.evalConnect()
	}
	if b, m := s.Telemetry, s.MQTTTelemetry; b != nil && m != nil && m.Rate > 0 {
		s.Ratios["telemetryPerBerthMQTT"] = round3(b.Rate / m.Rate)
	}
	if b, m := s.Connect, s.MQTTConnect; b != nil && m != nil && b.Memory != nil && m.Memory != nil && m.Memory.PerConnection > 0 {
		s.Ratios["memoryPerBerthMQTT"] = round3(float64(b.Memory.PerConnection) / float64(m.Memory.PerConnection))
	}
	if len(s.Ratios) == 0 {
		s.Ratios = nil
	}
}

func (s *Summary) evalProvision() {
	c := TargetCheck{Name: targetProvision, Goal: fmt.Sprintf("≥ %.2f", ProvisionTarget)}
	p, h := s.Provision, s.Handshake
	switch {
	case p == nil:
		c.Note = "no provisioning run"
	case h == nil:
		c.Note = s.noBaseline()
	case h.Rate <= 0:
		c.Note = "the handshake baseline completed no handshake"
	default:
		r := round3(p.Rate / h.Rate)
		s.Ratios["provisionPerHandshake"] = r
		if p.Transport != "mqtt" {
			c.Note = fmt.Sprintf("the target is for MQTT; over %s the ratio is %.3f", p.Transport, r)
			break
		}
		c.Value = &r
		c.Status = passFail(r >= ProvisionTarget)
		c.Note = errorNote(p.Failed, h.Failed)
	}
	s.Targets = append(s.Targets, finish(c))
}

func (s *Summary) evalTelemetry() {
	c := TargetCheck{Name: targetTelemetry, Goal: fmt.Sprintf("≥ %.1f", TelemetryTarget)}
	b, m := s.Telemetry, s.MosquittoTelemetry
	switch {
	case b == nil:
		c.Note = "no telemetry run"
	case m == nil:
		c.Note = s.noBaseline()
	case m.Rate <= 0:
		c.Note = "Mosquitto accepted no message"
	default:
		r := round3(b.Rate / m.Rate)
		s.Ratios["telemetryPerMosquitto"] = r
		if b.Transport != "" && b.Transport != TransportMQTT {
			c.Note = fmt.Sprintf("the target is for MQTT; over %s the ratio is %.3f (see telemetryPerBerthMQTT)", b.Transport, r)
			break
		}
		if b.QoS != 1 {
			c.Note = fmt.Sprintf("the target is for QoS 1; at QoS %d the ratio is %.3f", b.QoS, r)
			break
		}
		c.Value = &r
		c.Status = passFail(r >= TelemetryTarget)
		c.Note = errorNote(b.Failed, m.Failed)
		if b.OfferedRate > 0 && m.Rate >= b.OfferedRate*0.99 {
			c.Note = joinNotes(c.Note, "both kept up with the offered rate: use --max to compare capacity")
		}
	}
	s.Targets = append(s.Targets, finish(c))
}

func (s *Summary) evalConnect() {
	c := TargetCheck{Name: targetMemory, Goal: fmt.Sprintf("≤ %d KiB", IdleMemoryTarget)}
	b := s.Connect
	switch {
	case b == nil:
		c.Note = "no connect run"
	case b.Memory == nil:
		c.Note = "server memory not read (no server pid)"
	default:
		v := b.Memory.PerConnKiB
		c.Value = &v
		c.Status = passFail(v <= IdleMemoryTarget)
		if b.Memory.IncludesClient {
			c.Note = "the server shares the bench's process: the figure includes the clients' side of each connection (use --spawn or a separate berth serve)"
		}
		if m := s.MosquittoConnect; m != nil && m.Memory != nil && m.Memory.PerConnection > 0 {
			s.Ratios["memoryPerMosquitto"] = round3(float64(b.Memory.PerConnection) / float64(m.Memory.PerConnection))
		}
	}
	s.Targets = append(s.Targets, finish(c))
}

// noBaseline says why a baseline is missing.
func (s *Summary) noBaseline() string {
	if s.Interrupted {
		return "interrupted before the baseline"
	}
	return "no baseline (--baseline=false)"
}

func finish(c TargetCheck) TargetCheck {
	if c.Status == "" {
		c.Status = StatusNotMeasured
	}
	return c
}

func passFail(ok bool) string {
	if ok {
		return StatusPass
	}
	return StatusFail
}

func errorNote(runFailed, baseFailed int64) string {
	if runFailed == 0 && baseFailed == 0 {
		return ""
	}
	return fmt.Sprintf("errors: %d in the run, %d in the baseline (see errors)", runFailed, baseFailed)
}

func joinNotes(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// WriteJSON prints s indented.
func (s *Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return fmt.Errorf("bench: write summary: %w", err)
	}
	return nil
}

// WriteText prints the headline figures and the targets for a human, on
// stderr next to the progress.
func (s *Summary) WriteText(w io.Writer) {
	if p := s.Provision; p != nil {
		fmt.Fprintf(w, "provision %s: %d/%d assigned, %.1f/s, p50 %.1f ms, p99 %.1f ms\n",
			p.Transport, p.Assigned, p.Devices, p.Rate, p.Latency.P50, p.Latency.P99)
	}
	if h := s.Handshake; h != nil {
		fmt.Fprintf(w, "bare TLS handshake: %.1f/s, p50 %.1f ms, p99 %.1f ms\n", h.Rate, h.Latency.P50, h.Latency.P99)
	}
	for _, t := range []*TelemetryResult{s.Telemetry, s.MQTTTelemetry, s.MosquittoTelemetry} {
		if t != nil {
			fmt.Fprintf(w, "telemetry %s %s QoS %d: %d accepted, %.1f msg/s, p50 %.2f ms, p99 %.2f ms\n",
				t.Server, t.Transport, t.QoS, t.Accepted, t.Rate, t.Latency.P50, t.Latency.P99)
		}
	}
	if e := s.EventHubsRead; e != nil {
		fmt.Fprintf(w, "Event Hubs read (%d partitions): %d received, %.1f msg/s, publish → receive p50 %.2f ms, p99 %.2f ms\n",
			e.Partitions, e.Received, e.Rate, e.Latency.P50, e.Latency.P99)
	}
	for _, c := range []*ConnectResult{s.Connect, s.MQTTConnect, s.MosquittoConnect} {
		if c != nil {
			fmt.Fprintf(w, "connect %s %s: %d/%d connected, %.1f/s", c.Server, c.Transport, c.Connected, c.Devices, c.Rate)
			if m := c.Memory; m != nil {
				fmt.Fprintf(w, ", %.1f KiB per connection (RSS; second half alone %.1f KiB)", m.PerConnKiB, m.MarginalKiB)
			}
			fmt.Fprintln(w)
		}
	}
	for _, c := range s.ServerCPU {
		fmt.Fprintf(w, "server CPU, %s: berth %.3f ms per operation (%d processes", c.Phase, c.BerthMsPerOp, c.BerthProcesses)
		if len(c.NodeSeconds) > 0 {
			fmt.Fprintf(w, ", seconds by node %v", c.NodeSeconds)
		}
		fmt.Fprint(w, ")")
		if c.StoreProcesses > 0 {
			fmt.Fprintf(w, ", PostgreSQL %.3f ms (%d backends)", c.StoreMsPerOp, c.StoreProcesses)
		}
		if c.StreamSeconds > 0 {
			fmt.Fprintf(w, ", NATS %.3f ms", c.StreamMsPerOp)
		}
		fmt.Fprintln(w)
	}
	if len(s.Environment.LoadAverage) == 3 {
		la := s.Environment.LoadAverage
		fmt.Fprintf(w, "load average at the start: %.2f %.2f %.2f (%d CPUs)\n", la[0], la[1], la[2], s.Environment.NumCPU)
	}
	for _, t := range s.Targets {
		fmt.Fprintf(w, "target %q %s: %s", t.Name, t.Goal, t.Status)
		if t.Value != nil {
			fmt.Fprintf(w, " (%.3g)", *t.Value)
		}
		if t.Note != "" {
			fmt.Fprintf(w, " — %s", t.Note)
		}
		fmt.Fprintln(w)
	}
}
