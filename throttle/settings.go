package throttle

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Settings are what the operator chose: a profile, units (berth-wide and
// per hub) and individual limits that replace a profile's.
type Settings struct {
	// Profile is the tier whose throttles apply (ProfileNamed).
	Profile Profile
	// Units is every hub's (and the DPS's) number of units, unless
	// HubUnits names the hub; at least 1.
	Units int
	// HubUnits are units by hub host name, in lower case.
	HubUnits map[string]int
	// Overrides replace the profile's limit of an operation with a fixed
	// rate (not scaled by units) for every hub; a nil *Rate turns the
	// operation's throttle off.
	Overrides map[Op]*Rate
}

// Parse reads berth serve's flags: --throttle profile, --throttle-units
// ("N" for every hub, "hub=N" for one) and --throttle-limit ("op=N/period"
// or "op=off"), e.g. "d2c=10/s", "dps-register=100/min",
// "dps-device-poll=5/10s". Overrides apply with profile off too: then only
// they throttle.
func Parse(profile string, units, limits []string) (Settings, error) {
	p, err := ProfileNamed(profile)
	if err != nil {
		return Settings{}, err
	}
	s := Settings{Profile: p, Units: 1, HubUnits: map[string]int{}, Overrides: map[Op]*Rate{}}
	for _, u := range units {
		name, n, hasName := strings.Cut(u, "=")
		if !hasName {
			n, name = name, ""
		}
		v, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil || v < 1 {
			return Settings{}, fmt.Errorf("throttle: units %q: want a whole number of at least 1, as N or HUB=N", u)
		}
		if !hasName {
			s.Units = v
			continue
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			return Settings{}, fmt.Errorf("throttle: units %q: no hub name before '='", u)
		}
		s.HubUnits[name] = v
	}
	for _, l := range limits {
		name, value, ok := strings.Cut(l, "=")
		if !ok {
			return Settings{}, fmt.Errorf("throttle: limit %q: want OP=N/PERIOD or OP=off", l)
		}
		op, ok := ParseOp(strings.TrimSpace(name))
		if !ok {
			return Settings{}, fmt.Errorf("throttle: limit %q: unknown operation %q (one of %s)", l, name, strings.Join(opList(), ", "))
		}
		value = strings.TrimSpace(value)
		if value == Off {
			s.Overrides[op] = nil
			continue
		}
		r, err := ParseRate(value)
		if err != nil {
			return Settings{}, fmt.Errorf("throttle: limit %q: %w", l, err)
		}
		s.Overrides[op] = &r
	}
	return s, nil
}

func opList() []string {
	var out []string
	for _, o := range Ops() {
		out = append(out, o.String())
	}
	return out
}

// ParseRate reads "N/s", "N/min", "N/h" or "N/DURATION" (a Go duration,
// "5/10s").
func ParseRate(v string) (Rate, error) {
	ns, per, ok := strings.Cut(v, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/PERIOD (10/s, 100/min, 5/10s)", v)
	}
	n, err := strconv.ParseFloat(ns, 64)
	if err != nil || n <= 0 || n > 1e12 {
		return Rate{}, fmt.Errorf("rate %q: %q is not a positive number", v, ns)
	}
	var d time.Duration
	switch per {
	case "s", "sec":
		d = time.Second
	case "min":
		d = time.Minute
	case "h":
		d = time.Hour
	default:
		if d, err = time.ParseDuration(per); err != nil || d <= 0 {
			return Rate{}, fmt.Errorf("rate %q: period %q is not s, min, h or a duration", v, per)
		}
	}
	return Rate{N: n, Per: d}, nil
}

// Enabled reports whether any throttle applies.
func (s Settings) Enabled() bool {
	if len(s.Profile.Limits) > 0 {
		return true
	}
	for _, r := range s.Overrides {
		if r != nil {
			return true
		}
	}
	return false
}

// units is the hub's units (the DPS's for hub "").
func (s Settings) units(hub string) int {
	if n, ok := s.HubUnits[strings.ToLower(hub)]; ok {
		return n
	}
	if s.Units < 1 {
		return 1
	}
	return s.Units
}

// RateFor is the rate that applies to op on hub ("" for the DPS), and
// false when op is not throttled.
func (s Settings) RateFor(op Op, hub string) (Rate, bool) {
	if r, ok := s.Overrides[op]; ok {
		if r == nil {
			return Rate{}, false
		}
		return *r, true
	}
	l, ok := s.Profile.Limits[op]
	if !ok {
		return Rate{}, false
	}
	if op.dps() {
		hub = ""
	}
	return l.For(s.units(hub)), true
}

// Describe lists the limits in force for hub, for the start-up log and
// docs: "d2c=100/s" and so on, in operation order.
func (s Settings) Describe(hub string) []string {
	var out []string
	for _, op := range Ops() {
		if r, ok := s.RateFor(op, hub); ok {
			out = append(out, op.String()+"="+r.String())
		}
	}
	return out
}

// HubsWithUnits returns the hubs given their own units, sorted.
func (s Settings) HubsWithUnits() []string {
	return slices.Sorted(maps.Keys(s.HubUnits))
}
