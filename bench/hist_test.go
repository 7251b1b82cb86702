package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBucketLayout(t *testing.T) {
	// Buckets tile the int64 range without gaps or overlaps, in order.
	prevHi := int64(-1)
	for i := range numBuckets {
		lo, hi := bucketBounds(i)
		if lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if hi < lo {
			t.Fatalf("bucket %d: [%d, %d]", i, lo, hi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d [%d, %d]: bucketOf gives %d and %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		// Relative width bounds the error of a reported percentile.
		if lo > 0 && float64(hi-lo)/float64(lo) > 1.0/128 {
			t.Fatalf("bucket %d [%d, %d] is wider than 1/128 of its values", i, lo, hi)
		}
		prevHi = hi
	}
	if prevHi != math.MaxInt64 {
		t.Fatalf("the last bucket ends at %d, not MaxInt64", prevHi)
	}
}

func TestQuantileMatchesExactSort(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 7, 100, 10000} {
		h := NewHistogram()
		vals := make([]time.Duration, n)
		for i := range vals {
			// Log-uniform from 100 ns to 10 s: every scale a bench sees.
			vals[i] = time.Duration(math.Exp(r.Float64()*math.Log(1e8)) * 100)
			h.Record(vals[i])
		}
		slices.Sort(vals)
		for _, q := range []float64{0, 0.5, 0.95, 0.99, 1} {
			rank := max(int(math.Ceil(q*float64(n))), 1)
			want := vals[rank-1]
			got := h.Quantile(q)
			if got < want || float64(got-want) > float64(want)/128 {
				t.Errorf("n=%d q=%v: got %v, exact %v", n, q, got, want)
			}
		}
		if got := h.Quantile(0); got != vals[0] {
			t.Errorf("n=%d: minimum %v, want exactly %v", n, got, vals[0])
		}
		if got := h.Quantile(1); got != vals[n-1] {
			t.Errorf("n=%d: maximum %v, want exactly %v", n, got, vals[n-1])
		}
	}
}

func TestHistogramSummary(t *testing.T) {
	h := NewHistogram()
	if s := h.Summary(); s != (Latency{}) {
		t.Fatalf("empty histogram: %+v", s)
	}
	if q := h.Quantile(0.5); q != 0 {
		t.Fatalf("empty histogram p50 %v", q)
	}
	for _, d := range []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond, -time.Second} {
		h.Record(d)
	}
	s := h.Summary()
	if s.Count != 4 || s.Min != 0 || s.Max != 3 || s.Mean != 1.5 {
		t.Errorf("summary %+v: want count 4, min 0 (negative counts as zero), max 3, mean 1.5", s)
	}
	if s.P50 < 0.99 || s.P50 > 1.01 {
		t.Errorf("p50 %v ms, want 1", s.P50)
	}
}

func TestHistogramConcurrent(t *testing.T) {
	h := NewHistogram()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				h.Record(time.Duration(g*1000+i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	if h.Count() != 8000 {
		t.Fatalf("count %d, want 8000", h.Count())
	}
	var total uint64
	for i := range h.counts {
		total += h.counts[i].Load()
	}
	if total != 8000 {
		t.Fatalf("buckets hold %d, want 8000", total)
	}
	if got := h.Quantile(1); got != 7999*time.Microsecond {
		t.Fatalf("max %v", got)
	}
	if got := h.Quantile(0); got != 0 {
		t.Fatalf("min %v", got)
	}
}
