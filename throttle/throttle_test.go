package throttle

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// clock is a test clock moved by hand: no test here waits.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newClock() *clock { return &clock{t: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)} }

func mustParse(t *testing.T, profile string, units, limits []string) Settings {
	t.Helper()
	s, err := Parse(profile, units, limits)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestProfileTable holds the built-in profiles to Microsoft's published
// figures, written here as literals (per minute or per second, as the
// docs give them) so that a wrong constant in profile.go fails: IoT Hub
// quotas and throttling (operation throttles) and the DPS limits.
func TestProfileTable(t *testing.T) {
	type row struct {
		op    Op
		units int
		want  string
	}
	cases := map[string][]row{
		AzureS1: {
			{HubRegistry, 1, "100/min"}, {HubRegistry, 3, "300/min"},
			// the higher of 100/sec or 12/sec/unit: 2 units are still
			// 100/s, 9 units 108/s (Microsoft's own examples)
			{HubConnect, 1, "100/s"}, {HubConnect, 2, "100/s"}, {HubConnect, 9, "108/s"},
			{HubD2C, 1, "100/s"}, {HubD2C, 9, "108/s"},
			{HubC2DSend, 1, "100/min"}, {HubC2DSend, 2, "200/min"},
			{HubC2DReceive, 1, "1000/min"},
			{HubMethod, 1, "40/s"}, // 160 KB/s in 4 KB meters
			{HubQuery, 1, "20/min"},
			{HubConfiguration, 1, "20/min"}, {HubConfiguration, 3, "60/min"},
			{HubTwinRead, 1, "100/s"}, {HubTwinRead, 10, "100/s"}, // not per unit on S1
			{HubTwinUpdate, 1, "50/s"}, {HubTwinUpdate, 10, "50/s"},
			{DPSRegister, 1, "1000/min"}, {DPSOperation, 1, "1000/min"},
			{DPSDevicePoll, 1, "5/10s"}, {DPSDevicePoll, 4, "5/10s"},
		},
		AzureS2: {
			{HubRegistry, 1, "100/min"},
			{HubConnect, 1, "120/s"}, {HubConnect, 2, "240/s"},
			{HubD2C, 1, "120/s"},
			{HubC2DSend, 1, "100/min"},
			{HubC2DReceive, 1, "1000/min"},
			{HubMethod, 1, "120/s"}, // 480 KB/s
			{HubQuery, 1, "20/min"},
			{HubTwinRead, 1, "100/s"}, {HubTwinRead, 20, "200/s"}, // higher of 100/s or 10/s/unit
			{HubTwinUpdate, 1, "50/s"}, {HubTwinUpdate, 20, "100/s"},
			{DPSRegister, 1, "1000/min"},
		},
		AzureS3: {
			{HubRegistry, 1, "5000/min"},
			{HubConnect, 1, "6000/s"}, {HubD2C, 2, "12000/s"},
			{HubC2DSend, 1, "5000/min"},
			{HubC2DReceive, 1, "50000/min"},
			{HubMethod, 1, "6144/s"}, // 24 MB/s
			{HubQuery, 1, "1000/min"},
			{HubConfiguration, 1, "20/min"}, // not raised on S3
			{HubTwinRead, 1, "500/s"}, {HubTwinUpdate, 1, "250/s"},
			{DPSRegister, 1, "1000/min"}, {DPSDevicePoll, 1, "5/10s"},
		},
	}
	for profile, rows := range cases {
		for _, r := range rows {
			s := mustParse(t, profile, []string{fmt.Sprint(r.units)}, nil)
			got, ok := s.RateFor(r.op, "hub.example")
			if !ok || got.String() != r.want {
				t.Errorf("%s %s with %d units = %v (%v), want %s", profile, r.op, r.units, got, ok, r.want)
			}
		}
	}
	// Every profile throttles every operation class.
	for _, p := range Profiles() {
		for _, op := range Ops() {
			if _, ok := p.Limits[op]; !ok {
				t.Errorf("%s has no limit for %s", p.Name, op)
			}
		}
	}
}

func TestMethodCost(t *testing.T) {
	for n, want := range map[int]float64{0: 1, 1: 1, 4096: 1, 4097: 2, 8192: 2, 8193: 3, 160 * 1024: 40} {
		if got := MethodCost(n); got != want {
			t.Errorf("MethodCost(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	s := mustParse(t, AzureS1, []string{"2", "Big.Hub=9"}, []string{"d2c=10/s", "dps-device-poll=5/10s", "query=off"})
	if r, _ := s.RateFor(HubConnect, "other"); r.String() != "100/s" {
		t.Errorf("connect on a 2-unit hub = %v", r)
	}
	if r, _ := s.RateFor(HubConnect, "big.hub"); r.String() != "108/s" {
		t.Errorf("connect on the 9-unit hub = %v", r)
	}
	if r, _ := s.RateFor(HubC2DSend, "BIG.HUB"); r.String() != "900/min" {
		t.Errorf("hub names are case-insensitive: %v", r)
	}
	if r, _ := s.RateFor(HubD2C, "big.hub"); r.String() != "10/s" {
		t.Errorf("an override is a fixed rate, not scaled by units: %v", r)
	}
	if _, ok := s.RateFor(HubQuery, "x"); ok {
		t.Error("query=off still throttles")
	}
	if r, _ := s.RateFor(DPSRegister, ""); r.String() != "2000/min" {
		t.Errorf("DPS with 2 units = %v", r)
	}
	off := mustParse(t, "", nil, nil)
	if off.Enabled() {
		t.Error("no profile and no limits is enabled")
	}
	only := mustParse(t, Off, nil, []string{"dps-register=3/min"})
	if !only.Enabled() {
		t.Error("an override with profile off throttles nothing")
	}
	if _, ok := only.RateFor(HubD2C, "x"); ok {
		t.Error("profile off throttles d2c")
	}
	if got := strings.Join(only.Describe(""), " "); got != "dps-register=3/min" {
		t.Errorf("Describe = %q", got)
	}
	for _, bad := range []struct {
		profile       string
		units, limits []string
	}{
		{"azure-s4", nil, nil},
		{AzureS1, []string{"0"}, nil},
		{AzureS1, []string{"=2"}, nil},
		{AzureS1, []string{"hub=x"}, nil},
		{AzureS1, nil, []string{"d2c"}},
		{AzureS1, nil, []string{"nope=1/s"}},
		{AzureS1, nil, []string{"d2c=1"}},
		{AzureS1, nil, []string{"d2c=0/s"}},
		{AzureS1, nil, []string{"d2c=-1/s"}},
		{AzureS1, nil, []string{"d2c=1/fortnight"}},
		{AzureS1, nil, []string{"d2c=1/-1s"}},
	} {
		if _, err := Parse(bad.profile, bad.units, bad.limits); err == nil {
			t.Errorf("Parse(%q, %q, %q) accepted", bad.profile, bad.units, bad.limits)
		}
	}
}

func TestNilAndOffThrottleNothing(t *testing.T) {
	var th *Throttler
	if !th.Allow(HubD2C, "h", "", 1).Allowed {
		t.Error("a nil Throttler refused")
	}
	if New(Config{Settings: mustParse(t, Off, nil, nil)}) != nil {
		t.Error("New with nothing to throttle is not nil")
	}
}

// TestBucket: a burst of one period's count passes, the next is refused
// with the wait until one token is back, and the rate then holds.
func TestBucket(t *testing.T) {
	c := newClock()
	var refused []string
	th := New(Config{Settings: mustParse(t, Off, nil, []string{"d2c=10/s", "registry=100/min"}), Now: c.now,
		Observe: func(op Op, hub string) { refused = append(refused, op.String()+"@"+hub) }})
	for i := range 10 {
		if d := th.Allow(HubD2C, "h", "", 1); !d.Allowed {
			t.Fatalf("message %d of the burst refused", i+1)
		}
	}
	d := th.Allow(HubD2C, "h", "", 1)
	if d.Allowed || d.RetryAfter != 100*time.Millisecond || d.Limit.String() != "10/s" {
		t.Fatalf("11th: %+v, want refused, 100ms, 10/s", d)
	}
	if th.Allow(HubD2C, "h", "", 1).Allowed {
		t.Fatal("a refusal gave its token back")
	}
	// Another hub has a bucket of its own.
	if !th.Allow(HubD2C, "other", "", 1).Allowed {
		t.Fatal("another hub shares the bucket")
	}
	c.advance(99 * time.Millisecond)
	if th.Allow(HubD2C, "h", "", 1).Allowed {
		t.Fatal("allowed before a token was back")
	}
	c.advance(time.Millisecond)
	if !th.Allow(HubD2C, "h", "", 1).Allowed {
		t.Fatal("refused once a token was back")
	}
	// Long idle refills to the burst, no more.
	c.advance(time.Hour)
	for i := range 10 {
		if !th.Allow(HubD2C, "H", "", 1).Allowed {
			t.Fatalf("after idling, message %d refused", i+1)
		}
	}
	if th.Allow(HubD2C, "h", "", 1).Allowed {
		t.Fatal("idling filled the bucket over its burst")
	}
	// Per-minute rates: 100 at once, then one every 0.6 s.
	for i := range 100 {
		if !th.Allow(HubRegistry, "h", "", 1).Allowed {
			t.Fatalf("registry op %d refused", i+1)
		}
	}
	if d := th.Allow(HubRegistry, "h", "", 1); d.Allowed || d.RetryAfter != 600*time.Millisecond {
		t.Fatalf("101st registry op: %+v", d)
	}
	if got := len(refused); got != 5 || refused[0] != "d2c@h" || refused[4] != "registry@h" {
		t.Errorf("observed %q", refused)
	}
	// Not throttled: anything goes.
	for range 1000 {
		if !th.Allow(HubTwinRead, "h", "", 1).Allowed {
			t.Fatal("an operation without a limit was refused")
		}
	}
}

func TestCost(t *testing.T) {
	c := newClock()
	th := New(Config{Settings: mustParse(t, Off, nil, []string{"method=40/s"}), Now: c.now})
	if !th.Allow(HubMethod, "h", "", 32).Allowed { // a 128 KB payload
		t.Fatal("32 of 40 meters refused")
	}
	d := th.Allow(HubMethod, "h", "", 9)
	if d.Allowed || d.RetryAfter != 25*time.Millisecond {
		t.Fatalf("9 meters with 8 left: %+v", d)
	}
	// A call dearer than the bucket passes once it is full.
	c.advance(time.Second)
	if !th.Allow(HubMethod, "h", "", 1000).Allowed {
		t.Fatal("a call dearer than the burst never passes")
	}
	if th.Allow(HubMethod, "h", "", 1).Allowed {
		t.Fatal("it did not empty the bucket")
	}
}

// TestDevicePolls: DPS polls are limited per device (5 per 10 s) and per
// DPS; DPS operations ignore the hub argument.
func TestDevicePolls(t *testing.T) {
	c := newClock()
	th := New(Config{Settings: mustParse(t, AzureS1, nil, nil), Now: c.now})
	for i := range 5 {
		if !th.Allow(DPSDevicePoll, "ignored", "dev-1", 1).Allowed {
			t.Fatalf("poll %d refused", i+1)
		}
	}
	d := th.Allow(DPSDevicePoll, "", "dev-1", 1)
	if d.Allowed || d.RetryAfter != 2*time.Second || Seconds(d.RetryAfter, 3) != 3 || Seconds(2100*time.Millisecond, 1) != 3 {
		t.Fatalf("6th poll: %+v", d)
	}
	if !th.Allow(DPSDevicePoll, "", "dev-2", 1).Allowed {
		t.Fatal("another device shares the poll bucket")
	}
}

// TestBoundedMemory: per-device buckets never exceed MaxKeys however many
// devices poll; full (idle) buckets go first.
func TestBoundedMemory(t *testing.T) {
	c := newClock()
	th := New(Config{Settings: mustParse(t, AzureS1, nil, nil), Now: c.now, MaxKeys: 64})
	for i := range 10_000 {
		th.Allow(DPSDevicePoll, "", fmt.Sprintf("dev-%d", i), 1)
		if n := th.Len(); n > 64 {
			t.Fatalf("%d buckets after %d devices", n, i+1)
		}
	}
	// A device just refused keeps its bucket while idle ones are
	// dropped.
	c.advance(time.Minute)
	for range 5 {
		th.Allow(DPSDevicePoll, "", "busy", 1)
	}
	for i := range 63 {
		th.Allow(DPSDevicePoll, "", fmt.Sprintf("new-%d", i), 1)
	}
	if th.Allow(DPSDevicePoll, "", "busy", 1).Allowed {
		t.Fatal("the busy device's bucket was dropped before idle ones")
	}
}

// A cluster's quota is the hub's, not each node's: with three live nodes a
// node admits a third of a hub-wide (or DPS-wide) rate, and the whole of
// it again once it is alone; a device's own bucket is not divided. The
// node count is asked once per NodesRefresh, not per operation.
func TestQuotaIsSharedByTheLiveNodes(t *testing.T) {
	c := newClock()
	nodes, asked := 3, 0
	th := New(Config{Now: c.now, Settings: mustParse(t, Off, nil, []string{"d2c=30/s", "dps-device-poll=5/10s"}),
		Nodes: func() int { asked++; return nodes }})
	admitted := func(op Op, key string, n int) int {
		ok := 0
		for range n {
			if th.Allow(op, "hub.example", key, 1).Allowed {
				ok++
			}
		}
		return ok
	}
	if got := admitted(HubD2C, "", 100); got != 10 {
		t.Fatalf("3 nodes: one node admitted %d of a 30/s burst, want 10", got)
	}
	if asked != 1 {
		t.Fatalf("the node count was asked %d times in one instant, want once", asked)
	}
	// A second later: a third of the rate refilled, 10 tokens.
	c.advance(time.Second)
	if got := admitted(HubD2C, "", 100); got != 10 {
		t.Fatalf("3 nodes, a second later: %d admitted, want 10", got)
	}
	// Per-device buckets are the device's, whichever node holds it.
	if got := admitted(DPSDevicePoll, "dev1", 10); got != 5 {
		t.Fatalf("3 nodes: a device's polls admitted %d, want its own 5", got)
	}
	// The other nodes are gone: after a refresh this node has the whole
	// quota.
	nodes = 1
	c.advance(NodesRefresh)
	if got := admitted(HubD2C, "", 100); got != 30 {
		t.Fatalf("1 node: %d admitted, want the whole 30", got)
	}
	// Nodes that say 0 (no bus yet) count as this one alone.
	nodes = 0
	c.advance(time.Hour)
	if got := admitted(HubD2C, "", 100); got != 30 {
		t.Fatalf("0 nodes reported: %d admitted, want 30", got)
	}
}
