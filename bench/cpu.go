package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPU time per operation holds on a shared machine where rates do not:
// when other work takes the cores, a registration takes longer but costs
// the server about the same CPU. The bench reads the server processes'
// utime + stime (/proc/PID/stat) before and after a phase, and, for a
// spawned cluster, those of the PostgreSQL backends serving its database
// (Target.StorePIDs), which is where a cluster's store round trips cost.

// CPUUse is the CPU the server side spent in one phase of a run.
type CPUUse struct {
	Phase      string `json:"phase"` // provision or telemetry
	Operations int64  `json:"operations"`
	// BerthSeconds is the CPU of every berth process (all nodes).
	BerthSeconds float64 `json:"berthSeconds"`
	BerthMsPerOp float64 `json:"berthMsPerOperation"`
	// NodeSeconds is BerthSeconds by node, in the target's node order: how
	// evenly a cluster shared the work.
	NodeSeconds []float64 `json:"nodeSeconds,omitempty"`
	// StoreSeconds is the CPU of the PostgreSQL backends of the
	// cluster's database; absent for SQLite (inside berth's process).
	StoreSeconds float64 `json:"storeSeconds,omitempty"`
	StoreMsPerOp float64 `json:"storeMsPerOperation,omitempty"`
	// StreamSeconds is the CPU of a spawned cluster's NATS servers; absent
	// for the embedded NATS (inside berth's process).
	StreamSeconds  float64 `json:"streamSeconds,omitempty"`
	StreamMsPerOp  float64 `json:"streamMsPerOperation,omitempty"`
	BerthProcesses int     `json:"berthProcesses"`
	StoreProcesses int     `json:"storeProcesses,omitempty"`
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// ReadCPU returns the user + system CPU time process pid has used.
func ReadCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, fmt.Errorf("bench: CPU of process %d: %w", pid, err)
	}
	return parseStatCPU(data)
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/PID/stat line; the command name, field 2, may hold spaces and
// parentheses, so the fields are counted after its last ')'.
func parseStatCPU(stat []byte) (time.Duration, error) {
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bench: malformed /proc/PID/stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("bench: short /proc/PID/stat")
	}
	var ticks int64
	for _, v := range f[11:13] { // fields 14 and 15: f[0] is field 3
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: /proc/PID/stat time %q: %w", v, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// cpuMeter measures one phase.
type cpuMeter struct {
	t                    *Target
	pids                 []int
	berth, store, stream map[int]time.Duration
}

// startCPU reads the CPU of t's processes; nil when t's server processes
// are unknown or are the bench's own (--embedded: the clients would count).
func startCPU(ctx context.Context, t *Target) *cpuMeter {
	pids := t.ServerPIDs()
	if len(pids) == 0 || len(pids) < len(t.Nodes) {
		return nil // a node whose process is unknown would be missing from the sum
	}
	m := &cpuMeter{t: t, pids: pids, berth: map[int]time.Duration{}, store: map[int]time.Duration{}, stream: map[int]time.Duration{}}
	for _, pid := range t.StreamPIDs {
		if c, err := ReadCPU(pid); err == nil {
			m.stream[pid] = c
		}
	}
	for _, pid := range pids {
		if pid == os.Getpid() {
			return nil
		}
		c, err := ReadCPU(pid)
		if err != nil {
			return nil
		}
		m.berth[pid] = c
	}
	if t.StorePIDs != nil {
		for _, pid := range t.StorePIDs(ctx) {
			if c, err := ReadCPU(pid); err == nil {
				m.store[pid] = c
			}
		}
	}
	return m
}

// stop reads the CPU again and returns what the phase cost per operation;
// nil for a nil meter or no operations. A store backend that appeared
// during the phase counts from zero; one that ended is lost.
func (m *cpuMeter) stop(ctx context.Context, phase string, ops int64) *CPUUse {
	if m == nil || ops <= 0 {
		return nil
	}
	u := &CPUUse{Phase: phase, Operations: ops, BerthProcesses: len(m.berth)}
	var berth, store time.Duration
	for _, pid := range m.pids {
		after, err := ReadCPU(pid)
		if err != nil {
			return nil // a node died: no figure rather than a wrong one
		}
		d := after - m.berth[pid]
		berth += d
		if len(m.pids) > 1 {
			u.NodeSeconds = append(u.NodeSeconds, round3(d.Seconds()))
		}
	}
	if m.t.StorePIDs != nil {
		for _, pid := range m.t.StorePIDs(ctx) {
			if after, err := ReadCPU(pid); err == nil {
				store += after - m.store[pid]
				u.StoreProcesses++
			}
		}
	}
	if len(m.stream) > 0 {
		var stream time.Duration
		for pid, before := range m.stream {
			if after, err := ReadCPU(pid); err == nil {
				stream += after - before
			}
		}
		u.StreamSeconds = round3(stream.Seconds())
		u.StreamMsPerOp = msPerOp(stream, ops)
	}
	u.BerthSeconds = round3(berth.Seconds())
	u.BerthMsPerOp = msPerOp(berth, ops)
	if m.t.StorePIDs != nil {
		u.StoreSeconds = round3(store.Seconds())
		u.StoreMsPerOp = msPerOp(store, ops)
	}
	return u
}

// msPerOp is d / ops in milliseconds, to the microsecond.
func msPerOp(d time.Duration, ops int64) float64 {
	return math.Round(float64(d.Microseconds())/float64(ops)) / 1000
}
