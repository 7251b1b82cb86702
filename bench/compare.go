package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"
)

// Comparison is what `berth bench --compare A,B` prints: the same bench run
// against two berth binaries alternately (A, B, A, B, …), each run a
// throwaway `berth serve` of that binary under the same load from the same
// generator (this binary). On a shared machine the noise between two runs
// minutes apart is often larger than the effect of one change; alternating
// puts both binaries under the same drift, and the ratio of each adjacent
// pair says how much of a difference survives it.
type Comparison struct {
	Bench    string            `json:"bench"`
	Started  time.Time         `json:"started"`
	Seconds  float64           `json:"seconds"`
	Binaries map[string]string `json:"binaries"` // "A", "B" → path
	Rounds   int               `json:"rounds"`
	Runs     []ComparedRun     `json:"runs"`
	// Figures compares every figure both binaries' runs reported.
	Figures []ComparedFigure `json:"figures"`
	// Targets are the project's targets, checked on each binary's median.
	Targets []TargetCheck `json:"targets"`
}

// ComparedRun is one run of the comparison.
type ComparedRun struct {
	Binary  string   `json:"binary"` // A or B
	Round   int      `json:"round"`
	Summary *Summary `json:"summary,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// ComparedFigure is one figure across the runs of both binaries.
type ComparedFigure struct {
	Name    string    `json:"name"`
	A       []float64 `json:"a"`
	B       []float64 `json:"b"`
	MedianA float64   `json:"medianA"`
	MedianB float64   `json:"medianB"`
	// RatioB is MedianB / MedianA.
	RatioB float64 `json:"ratioB"`
	// PairRatios are B/A of each round's adjacent pair; their spread is
	// the noise the ratio has to beat.
	PairRatios []float64 `json:"pairRatios,omitempty"`
}

// NewComparison starts the comparison of binary a with b over rounds rounds.
func NewComparison(bench, a, b string, rounds int) *Comparison {
	return &Comparison{
		Bench:    bench,
		Started:  time.Now().UTC().Truncate(time.Second),
		Binaries: map[string]string{"A": a, "B": b},
		Rounds:   rounds,
		Runs:     []ComparedRun{},
		Targets:  []TargetCheck{},
	}
}

// Add records one run; s may be nil when it failed.
func (c *Comparison) Add(binary string, round int, s *Summary, err error) {
	r := ComparedRun{Binary: binary, Round: round, Summary: s}
	if err != nil {
		r.Error = err.Error()
	}
	c.Runs = append(c.Runs, r)
}

// Evaluate computes the figures and the targets from the runs.
func (c *Comparison) Evaluate() {
	type key struct {
		bin   string
		round int
	}
	vals := map[string]map[key]float64{}
	for _, r := range c.Runs {
		if r.Summary == nil {
			continue
		}
		for name, v := range r.Summary.Figures() {
			if vals[name] == nil {
				vals[name] = map[key]float64{}
			}
			vals[name][key{r.Binary, r.Round}] = v
		}
	}
	names := make([]string, 0, len(vals))
	for n := range vals {
		names = append(names, n)
	}
	sort.Strings(names)
	c.Figures = c.Figures[:0]
	for _, n := range names {
		f := ComparedFigure{Name: n}
		for round := 1; round <= c.Rounds; round++ {
			a, okA := vals[n][key{"A", round}]
			b, okB := vals[n][key{"B", round}]
			if okA {
				f.A = append(f.A, a)
			}
			if okB {
				f.B = append(f.B, b)
			}
			if okA && okB && a != 0 {
				f.PairRatios = append(f.PairRatios, round3(b/a))
			}
		}
		f.MedianA, f.MedianB = median(f.A), median(f.B)
		if f.MedianA != 0 {
			f.RatioB = round3(f.MedianB / f.MedianA)
		}
		c.Figures = append(c.Figures, f)
	}
	// The targets, on the median of each binary's target values.
	c.Targets = c.Targets[:0]
	for _, bin := range []string{"A", "B"} {
		byName := map[string][]float64{}
		var order []TargetCheck
		for _, r := range c.Runs {
			if r.Binary != bin || r.Summary == nil {
				continue
			}
			for _, t := range r.Summary.Targets {
				if _, seen := byName[t.Name]; !seen {
					order = append(order, t)
					byName[t.Name] = nil
				}
				if t.Value != nil {
					byName[t.Name] = append(byName[t.Name], *t.Value)
				}
			}
		}
		for _, t := range order {
			tc := TargetCheck{Name: bin + ": " + t.Name, Goal: t.Goal, Status: StatusNotMeasured}
			if vs := byName[t.Name]; len(vs) > 0 {
				m := round3(median(vs))
				tc.Value = &m
				tc.Status = passFail(meets(t.Name, m))
				tc.Note = fmt.Sprintf("median of %d runs", len(vs))
			}
			c.Targets = append(c.Targets, tc)
		}
	}
}

// meets checks a target value against its goal by the target's name.
func meets(name string, v float64) bool {
	switch name {
	case targetProvision:
		return v >= ProvisionTarget
	case targetTelemetry:
		return v >= TelemetryTarget
	case targetMemory:
		return v <= IdleMemoryTarget
	}
	return false
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Figures are the summary's numbers by name, for comparisons.
func (s *Summary) Figures() map[string]float64 {
	f := map[string]float64{}
	if p := s.Provision; p != nil {
		f["provision.registrationsPerSecond"] = p.Rate
		f["provision.latency.p50Ms"] = p.Latency.P50
		f["provision.latency.p99Ms"] = p.Latency.P99
		f["provision.failed"] = float64(p.Failed)
		if h := p.HubConnect; h != nil {
			f["provision.hubConnectLatency.p50Ms"] = h.P50
			f["provision.hubConnectLatency.p99Ms"] = h.P99
		}
	}
	if h := s.Handshake; h != nil {
		f["tlsHandshakeBaseline.handshakesPerSecond"] = h.Rate
	}
	for _, c := range s.ServerCPU {
		f["serverCpu."+c.Phase+".berthMsPerOperation"] = c.BerthMsPerOp
		if c.StoreProcesses > 0 {
			f["serverCpu."+c.Phase+".storeMsPerOperation"] = c.StoreMsPerOp
		}
		if c.StreamSeconds > 0 {
			f["serverCpu."+c.Phase+".streamMsPerOperation"] = c.StreamMsPerOp
		}
	}
	if t := s.Telemetry; t != nil {
		f["telemetry.messagesPerSecond"] = t.Rate
		f["telemetry.latency.p50Ms"] = t.Latency.P50
		f["telemetry.latency.p99Ms"] = t.Latency.P99
		f["telemetry.failed"] = float64(t.Failed)
	}
	if t := s.MosquittoTelemetry; t != nil {
		f["mosquittoTelemetryBaseline.messagesPerSecond"] = t.Rate
	}
	if c := s.Connect; c != nil {
		f["connect.connectionsPerSecond"] = c.Rate
		if m := c.Memory; m != nil {
			f["connect.memory.kibPerConnection"] = m.PerConnKiB
			f["connect.memory.marginalKibPerConnection"] = m.MarginalKiB
		}
	}
	if c := s.MosquittoConnect; c != nil && c.Memory != nil {
		f["mosquittoConnectBaseline.memory.kibPerConnection"] = c.Memory.PerConnKiB
	}
	for k, v := range s.Ratios {
		f["ratios."+k] = v
	}
	return f
}

// WriteJSON prints c indented.
func (c *Comparison) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(c); err != nil {
		return fmt.Errorf("bench: write comparison: %w", err)
	}
	return nil
}

// WriteText prints the comparison's figures and targets for a human.
func (c *Comparison) WriteText(w io.Writer) {
	fmt.Fprintf(w, "compare %s: A=%s B=%s, %d rounds (A/B alternating)\n", c.Bench, c.Binaries["A"], c.Binaries["B"], c.Rounds)
	for _, r := range c.Runs {
		if r.Error != "" {
			fmt.Fprintf(w, "  run %s round %d failed: %s\n", r.Binary, r.Round, r.Error)
		}
	}
	for _, f := range c.Figures {
		fmt.Fprintf(w, "  %-48s A %v  B %v  B/A %.3f  pairs %v\n", f.Name, f.A, f.B, f.RatioB, f.PairRatios)
	}
	for _, t := range c.Targets {
		fmt.Fprintf(w, "target %q %s: %s", t.Name, t.Goal, t.Status)
		if t.Value != nil {
			fmt.Fprintf(w, " (%.3g)", *t.Value)
		}
		fmt.Fprintln(w)
	}
}
