package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// ConnectConfig is an idle-connection run.
type ConnectConfig struct {
	Concurrency int
	// Settle is how long to wait before each memory reading, so that the
	// server has finished the handshakes' work and freed its garbage.
	Settle time.Duration
	// Hold keeps the connections open this long after the reading.
	Hold time.Duration
	// PID is the server process whose memory is read; 0 skips memory.
	PID int
	// PIDs, when set, are all the processes of a cluster's nodes: their
	// RSS is summed (PID is then the first of them).
	PIDs []int
	// SameProcess says the server runs in the bench's own process: its
	// RSS then includes the clients, and a GC is forced before readings.
	SameProcess bool
	// Transport of the hub devices' connections (kind hub): TransportMQTT
	// (""), TransportMQTTWS or TransportAMQP.
	Transport string
}

// Memory is the server's memory per idle connection.
type Memory struct {
	PID int `json:"pid"`
	// PIDs are a cluster's node processes, whose RSS is summed.
	PIDs   []int  `json:"pids,omitempty"`
	Source string `json:"source"`
	// IncludesClient is set when the server shares the bench's process,
	// so the figure counts the clients' connections too.
	IncludesClient bool  `json:"includesClient,omitempty"`
	BeforeBytes    int64 `json:"rssBeforeBytes"`
	HalfBytes      int64 `json:"rssHalfBytes,omitempty"` // with the first half connected
	AfterBytes     int64 `json:"rssAfterBytes"`
	// PerConnection is (after − before) / connections: the figure the
	// target is checked against.
	PerConnection int64   `json:"bytesPerConnection"`
	PerConnKiB    float64 `json:"kibPerConnection"`
	// Marginal is (after − half) / connections of the second half.
	Marginal    int64   `json:"marginalBytesPerConnection,omitempty"`
	MarginalKiB float64 `json:"marginalKibPerConnection,omitempty"`
}

// ConnectResult is what an idle-connection run measured.
type ConnectResult struct {
	Server    string  `json:"server"`
	Kind      string  `json:"kind"`      // hub or dps
	Transport string  `json:"transport"` // mqtt, mqtt-ws or amqp
	Address   string  `json:"address"`
	Devices   int     `json:"devices"`
	Connected int     `json:"connected"`
	Seconds   float64 `json:"seconds"`
	// Rate is connections established per second.
	Rate    float64              `json:"connectionsPerSecond"`
	Latency Latency              `json:"latency"`
	Memory  *Memory              `json:"memory,omitempty"`
	Errors  map[string]ErrorKind `json:"errors,omitempty"`
}

// Dialer opens the connection of device i; Close ends it.
type Dialer func(ctx context.Context, i int) (io.Closer, error)

// Connect opens n idle connections with dial, holds them, and closes
// them all. With a server pid it reads the server's RSS before, at half
// and with all n connections: the total difference per connection is the
// figure, and the second half alone gives the marginal cost, which no
// fixed cost (heap the server kept from earlier work and now reuses, a
// pool filling up) distorts.
func Connect(ctx context.Context, server, kind, address string, n int, dial Dialer, cfg ConnectConfig, po ProgressOptions) (*ConnectResult, error) {
	if n <= 0 {
		return nil, errors.New("bench: no devices")
	}
	cfg.Concurrency = max(cfg.Concurrency, 1)
	res := &ConnectResult{Server: server, Kind: kind, Address: address, Devices: n}
	var mem *Memory
	if len(cfg.PIDs) > 0 {
		cfg.PID = cfg.PIDs[0]
	}
	if cfg.PID > 0 {
		mem = &Memory{PID: cfg.PID, Source: fmt.Sprintf("/proc/%d/status VmRSS", cfg.PID), IncludesClient: cfg.SameProcess}
		if len(cfg.PIDs) > 1 {
			mem.PIDs = cfg.PIDs
			mem.Source = fmt.Sprintf("sum of /proc/PID/status VmRSS over %d nodes", len(cfg.PIDs))
		}
		before, err := settledRSS(ctx, cfg)
		if err != nil {
			return nil, err
		}
		mem.BeforeBytes = before
	}
	conns := make([]io.Closer, n)
	defer closeAll(conns)
	lat := NewHistogram()
	var errs Errors
	var ok atomic.Int64
	prog := po.Start("connect "+server, int64(n), 0)
	// connect opens connections [from, to) and returns how long it took.
	connect := func(from, to int) time.Duration {
		start := time.Now()
		forEach(ctx, to-from, cfg.Concurrency, func(ctx context.Context, j int) {
			i := from + j
			t0 := time.Now()
			c, err := dial(ctx, i)
			if err != nil {
				if ctx.Err() == nil {
					errs.Add("connect", err)
				}
				prog.Add(false)
				return
			}
			lat.Record(time.Since(t0))
			conns[i] = c
			ok.Add(1)
			prog.Add(true)
		})
		return time.Since(start)
	}
	half := n / 2
	elapsed := connect(0, half)
	var halfConnected int64
	if mem != nil && half > 0 && ctx.Err() == nil {
		halfConnected = ok.Load()
		mid, err := settledRSS(ctx, cfg)
		if err != nil {
			prog.Done()
			return res, err
		}
		mem.HalfBytes = mid
	}
	elapsed += connect(half, n)
	prog.Done()
	res.Connected = int(ok.Load())
	res.Seconds = seconds(elapsed)
	res.Rate = perSecond(ok.Load(), elapsed)
	res.Latency = lat.Summary()
	res.Errors = errs.Snapshot()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if mem != nil && res.Connected > 0 {
		after, err := settledRSS(ctx, cfg)
		if err != nil {
			return res, err
		}
		mem.AfterBytes = after
		mem.PerConnection = (after - mem.BeforeBytes) / int64(res.Connected)
		mem.PerConnKiB = kib(mem.PerConnection)
		if second := int64(res.Connected) - halfConnected; mem.HalfBytes > 0 && second > 0 {
			mem.Marginal = (after - mem.HalfBytes) / second
			mem.MarginalKiB = kib(mem.Marginal)
		}
		res.Memory = mem
	}
	if cfg.Hold > 0 {
		t := time.NewTimer(cfg.Hold)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	return res, nil
}

// kib is bytes in KiB, to one decimal.
func kib(b int64) float64 { return math.Round(float64(b)/1024*10) / 10 }

// settledRSS waits cfg.Settle and reads the server's RSS. In the bench's
// own process it first collects garbage and returns freed memory to the
// OS, which a long-running server would eventually do by itself; another
// process is read as it is.
func settledRSS(ctx context.Context, cfg ConnectConfig) (int64, error) {
	if cfg.Settle > 0 {
		t := time.NewTimer(cfg.Settle)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
		}
	}
	if cfg.SameProcess {
		runtime.GC()
		debug.FreeOSMemory()
	}
	if len(cfg.PIDs) > 1 {
		var sum int64
		for _, pid := range cfg.PIDs {
			rss, err := ReadRSS(pid)
			if err != nil {
				return 0, err
			}
			sum += rss
		}
		return sum, nil
	}
	return ReadRSS(cfg.PID)
}

// closeAll closes every open connection, 64 at a time.
func closeAll(conns []io.Closer) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range conns {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_ = c.Close()
		})
	}
	wg.Wait()
}
