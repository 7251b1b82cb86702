package throttle

import (
	"math"
	"strings"
	"sync"
	"time"
)

// DefaultMaxKeys bounds the per-device buckets (DPS polls) a Throttler
// keeps, and separately its per-hub buckets.
const DefaultMaxKeys = 100_000

// Config configures a Throttler.
type Config struct {
	Settings Settings
	// Now is the clock; time.Now when nil. Tests inject their own.
	Now func() time.Time
	// MaxKeys bounds the buckets kept (DefaultMaxKeys when 0). Past it,
	// idle buckets (full again) are dropped first, then arbitrary ones:
	// a dropped device starts over with a full bucket, so the bound errs
	// on letting a request through, never on refusing one.
	MaxKeys int
	// Observe hears of every refusal (the operator's metrics); hub is ""
	// for the DPS.
	Observe func(op Op, hub string)
	// Nodes, when set, is how many berth nodes of the cluster are alive,
	// this one included (linkbus's presence). The quotas are the
	// cluster's, as Azure's are the hub's: each node lets through
	// 1/Nodes of every hub-wide and DPS-wide rate, so that N nodes
	// together admit the quota, not N times it, with no network round
	// trip per operation (docs/operations.md#throttling-as-azure-does-it
	// says how close that is). Per-device buckets are not divided: a
	// device's session stays on one node. Asked at most once per
	// NodesRefresh.
	Nodes func() int
}

// NodesRefresh is how often a Throttler asks Config.Nodes again.
const NodesRefresh = time.Second

// Throttler decides whether an operation may proceed. A nil *Throttler
// lets everything through, so the domains call it unconditionally.
type Throttler struct {
	s       Settings
	now     func() time.Time
	maxKeys int
	observe func(op Op, hub string)
	nodesFn func() int

	mu      sync.Mutex
	nodes   float64               // live nodes, at least 1 (Config.Nodes)
	nodesAt time.Time             // when nodes was last asked
	shared  map[bucketKey]*bucket // per hub (or DPS) and operation
	devices map[bucketKey]*bucket // per device (DPSDevicePoll)
}

type bucketKey struct {
	op    Op
	scope string // lower-case hub name, "" for the DPS, or a device key
}

// bucket is a token bucket: up to burst tokens, refilled at rate per
// second since last.
type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a Throttler, or nil when the settings throttle nothing.
func New(cfg Config) *Throttler {
	if !cfg.Settings.Enabled() {
		return nil
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	return &Throttler{s: cfg.Settings, now: cfg.Now, maxKeys: cfg.MaxKeys, observe: cfg.Observe, nodesFn: cfg.Nodes,
		nodes: 1, shared: map[bucketKey]*bucket{}, devices: map[bucketKey]*bucket{}}
}

// Settings returns the settings in force.
func (t *Throttler) Settings() Settings {
	if t == nil {
		return Settings{}
	}
	return t.s
}

// Decision is a Throttler's answer.
type Decision struct {
	Allowed bool
	// RetryAfter is, when refused, how long until the request would be
	// allowed (at the current rate, if nothing else takes the tokens).
	RetryAfter time.Duration
	// Limit is the rate that refused it.
	Limit Rate
}

// Allow takes cost tokens of op's bucket for hub ("" for DPS operations)
// and, for per-device operations, device key (a registration ID). A
// refusal takes nothing: a client that keeps retrying is refused while it
// is over the rate, and is let through as soon as the rate allows.
func (t *Throttler) Allow(op Op, hub, key string, cost float64) Decision {
	if t == nil {
		return Decision{Allowed: true}
	}
	if op.dps() {
		hub = ""
	}
	r, ok := t.s.RateFor(op, hub)
	if !ok || r.PerSecond() <= 0 {
		return Decision{Allowed: true}
	}
	if cost <= 0 {
		cost = 1
	}
	k := bucketKey{op: op, scope: strings.ToLower(hub)}
	m := t.shared
	if op.perKey() {
		k.scope = key
		m = t.devices
	}
	now := t.now()

	t.mu.Lock()
	perSecond, burst := r.PerSecond(), r.N
	if !op.perKey() {
		// This node's share of the cluster's quota.
		n := t.liveNodes(now)
		perSecond, burst = perSecond/n, burst/n
	}
	burst = math.Max(burst, 1)
	// A single call dearer than the whole bucket (a large method payload
	// under a small override) costs the whole bucket: it passes once the
	// bucket is full rather than never.
	cost = math.Min(cost, burst)
	b, found := m[k]
	if !found {
		t.makeRoom(m, now)
		b = &bucket{tokens: burst, last: now}
		m[k] = b
	}
	b.refill(now, perSecond, burst)
	allowed := b.tokens >= cost
	var wait time.Duration
	if allowed {
		b.tokens -= cost
	} else {
		wait = time.Duration((cost - b.tokens) / perSecond * float64(time.Second))
	}
	t.mu.Unlock()

	if !allowed && t.observe != nil {
		t.observe(op, hub)
	}
	return Decision{Allowed: allowed, RetryAfter: wait, Limit: r}
}

// liveNodes is Config.Nodes, asked at most once per NodesRefresh; at
// least 1. t.mu is held.
func (t *Throttler) liveNodes(now time.Time) float64 {
	if t.nodesFn == nil {
		return 1
	}
	if t.nodesAt.IsZero() || now.Sub(t.nodesAt) >= NodesRefresh || now.Before(t.nodesAt) {
		t.nodes = math.Max(float64(t.nodesFn()), 1)
		t.nodesAt = now
	}
	return t.nodes
}

func (b *bucket) refill(now time.Time, perSecond, burst float64) {
	if d := now.Sub(b.last); d > 0 {
		b.tokens = math.Min(burst, b.tokens+d.Seconds()*perSecond)
		b.last = now
	}
}

// makeRoom keeps m under maxKeys before an insertion: first it drops every
// bucket that has refilled (forgetting a full bucket changes nothing),
// then, if that was not enough, arbitrary ones, an eighth of the map at a
// time so that the sweep is not paid on every insertion.
func (t *Throttler) makeRoom(m map[bucketKey]*bucket, now time.Time) {
	if len(m) < t.maxKeys {
		return
	}
	for k, b := range m {
		hub := k.scope
		if k.op.perKey() || k.op.dps() {
			hub = ""
		}
		r, ok := t.s.RateFor(k.op, hub)
		if !ok {
			delete(m, k)
			continue
		}
		burst := math.Max(r.N, 1)
		if b.tokens+now.Sub(b.last).Seconds()*r.PerSecond() >= burst {
			delete(m, k)
		}
	}
	for k := range m {
		if len(m) < t.maxKeys-t.maxKeys/8 {
			break
		}
		delete(m, k)
	}
}

// Len is the number of buckets kept, for tests of the bound.
func (t *Throttler) Len() int {
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.shared) + len(t.devices)
}

// Seconds rounds a wait up to whole seconds, at least min: the
// retry-after Azure's clients read is an integer of seconds, and a hint
// shorter than the wait would only earn the client another refusal.
func Seconds(wait time.Duration, min int) int {
	s := int(math.Ceil(wait.Seconds()))
	if s < min {
		s = min
	}
	return s
}
