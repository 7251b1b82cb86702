package bench

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// The latency histogram is log-linear, like HdrHistogram: values below
// 2^subBits nanoseconds have a bucket each, and every power of two above is
// split into 2^(subBits-1) equal buckets. Every recorded value therefore
// lands in a bucket less than 1/2^(subBits-1) (0.8 %) wide relative to
// itself, whether a run records twenty durations or twenty million, and the
// histogram is a fixed 57 KiB: a bench of any size keeps bounded memory,
// which an exact sort over every duration would not.
const (
	subBits    = 8
	subCount   = 1 << subBits            // buckets below the first split: 0…255 ns exactly
	halfCount  = subCount / 2            // buckets per power of two above
	numBuckets = subCount + 55*halfCount // non-negative int64s have at most 63 bits: 55 powers of two above 2^8
)

// Histogram records durations. It is safe for concurrent use: recording is
// lock-free, so the workers of a run share one without contention on a
// mutex, and a progress display can read it while they write.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64 // nanoseconds; wraps only after 584 years of latency
	min    atomic.Int64  // valid when n > 0
	max    atomic.Int64
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	h := &Histogram{}
	h.min.Store(math.MaxInt64)
	return h
}

// bucketOf is the index of the bucket that holds v (≥ 0).
func bucketOf(v int64) int {
	u := uint64(v)
	if u < subCount {
		return int(u)
	}
	// Shift so that the top subBits bits remain: u>>e is in [128, 255].
	e := bits.Len64(u) - subBits
	return subCount + (e-1)*halfCount + int(u>>e) - halfCount
}

// bucketBounds returns the smallest and largest value of bucket i.
func bucketBounds(i int) (lo, hi int64) {
	if i < subCount {
		return int64(i), int64(i)
	}
	e := (i-subCount)/halfCount + 1
	m := int64((i-subCount)%halfCount + halfCount)
	lo = m << e
	return lo, lo + (1 << e) - 1
}

// Record adds one duration; negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(uint64(v))
	for cur := h.min.Load(); v < cur && !h.min.CompareAndSwap(cur, v); cur = h.min.Load() {
	}
	for cur := h.max.Load(); v > cur && !h.max.CompareAndSwap(cur, v); cur = h.max.Load() {
	}
}

// Count is the number of recorded durations.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Quantile returns the duration below or at which a fraction q (0…1) of the
// recorded durations lie: the largest value of the bucket holding the
// ceil(q·n)-th smallest, clamped to the exact minimum and maximum (so the
// 0th and 100th percentiles are exact). Zero when nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	lo, hi := h.min.Load(), h.max.Load()
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	if rank == 1 {
		return time.Duration(lo) // the smallest value is known exactly
	}
	var seen uint64
	for i := bucketOf(lo); i <= bucketOf(hi); i++ {
		seen += h.counts[i].Load()
		if seen >= rank {
			_, top := bucketBounds(i)
			return time.Duration(min(max(top, lo), hi))
		}
	}
	// Counts still being added by a concurrent Record: the maximum is the
	// honest answer.
	return time.Duration(hi)
}

// Summary returns count, mean, min, percentiles and max in milliseconds.
func (h *Histogram) Summary() Latency {
	n := h.n.Load()
	if n == 0 {
		return Latency{}
	}
	return Latency{
		Count: n,
		Min:   ms(time.Duration(h.min.Load())),
		Mean:  ms(time.Duration(h.sum.Load() / n)),
		P50:   ms(h.Quantile(0.50)),
		P95:   ms(h.Quantile(0.95)),
		P99:   ms(h.Quantile(0.99)),
		Max:   ms(time.Duration(h.max.Load())),
	}
}

// Latency is a latency distribution in milliseconds. The percentiles are
// exact to within 0.8 % (the histogram's bucket width); min and max are
// exact.
type Latency struct {
	Count uint64  `json:"count"`
	Min   float64 `json:"minMs"`
	Mean  float64 `json:"meanMs"`
	P50   float64 `json:"p50Ms"`
	P95   float64 `json:"p95Ms"`
	P99   float64 `json:"p99Ms"`
	Max   float64 `json:"maxMs"`
}

// ms converts to milliseconds rounded to the microsecond, which is all the
// precision a JSON reader of a bench needs.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}
