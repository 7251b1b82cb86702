package bench

import (
	"errors"
	"testing"
)

func TestComparisonEvaluate(t *testing.T) {
	run := func(rate, mosq float64) *Summary {
		s := &Summary{Bench: "telemetry",
			Telemetry:          &TelemetryResult{QoS: 1, Rate: rate},
			MosquittoTelemetry: &TelemetryResult{QoS: 1, Rate: mosq}}
		s.Evaluate()
		return s
	}
	c := NewComparison("telemetry", "/a", "/b", 3)
	c.Add("A", 1, run(1000, 10000), nil)
	c.Add("B", 1, run(10000, 10000), nil)
	c.Add("A", 2, run(800, 8000), nil)
	c.Add("B", 2, nil, errors.New("spawn failed"))
	c.Add("A", 3, run(1200, 12000), nil)
	c.Add("B", 3, run(12000, 12000), nil)
	c.Evaluate()

	var rate *ComparedFigure
	for i := range c.Figures {
		if c.Figures[i].Name == "telemetry.messagesPerSecond" {
			rate = &c.Figures[i]
		}
	}
	if rate == nil {
		t.Fatalf("no telemetry rate among %+v", c.Figures)
	}
	if rate.MedianA != 1000 || rate.MedianB != 11000 || rate.RatioB != 11 {
		t.Errorf("medians A %v B %v ratio %v, want 1000, 11000, 11", rate.MedianA, rate.MedianB, rate.RatioB)
	}
	// Round 2 has no B: only the rounds with both give a pair ratio.
	if len(rate.PairRatios) != 2 || rate.PairRatios[0] != 10 || rate.PairRatios[1] != 10 {
		t.Errorf("pair ratios %v, want [10 10]", rate.PairRatios)
	}
	want := map[string]string{"A: " + targetTelemetry: StatusFail, "B: " + targetTelemetry: StatusPass}
	if len(c.Targets) != 2 {
		t.Fatalf("targets %+v, want one per binary", c.Targets)
	}
	for _, tc := range c.Targets {
		if want[tc.Name] != tc.Status {
			t.Errorf("target %q: %s, want %s", tc.Name, tc.Status, want[tc.Name])
		}
	}
	if c.Runs[3].Error == "" {
		t.Error("the failed run lost its error")
	}
}
