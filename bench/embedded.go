package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/server"
)

// A throwaway berth for the bench: on an address of its own in 127/8
// (Linux routes all of 127.0.0.0/8 to lo, so any of them can be bound
// without setup and nothing else is on it), ephemeral ports, a temporary
// data directory that is removed afterwards. Either in the bench's own
// process (Embedded), which needs no binary and can be CPU-profiled, or as
// a child `berth serve` (Spawned), whose memory and CPU are the server's
// alone.

// RandomLoopback returns a random address in 127/8 outside 127.0.0.0/24,
// where other local services usually live.
func RandomLoopback() string {
	return fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(254), rand.IntN(256), 1+rand.IntN(254))
}

// ServerLabel and ClientLabel are the pprof labels of the server's and the
// load generator's goroutines in an embedded run, so that one CPU profile
// of the process can be split: go tool pprof -tagfocus bench=server.
var (
	ServerLabel = pprof.Labels("bench", "server")
	ClientLabel = pprof.Labels("bench", "client")
)

// Embedded is a berth running in the bench's process.
type Embedded struct {
	srv    *server.Server
	dir    string
	Target *Target
}

// StartEmbedded starts an in-process berth. logger receives its logs (nil:
// errors to stderr). All of its goroutines carry ServerLabel.
func StartEmbedded(ctx context.Context, logger *slog.Logger) (*Embedded, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	dir, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: data dir: %w", err)
	}
	host := RandomLoopback()
	e := &Embedded{dir: dir}
	pprof.Do(ctx, ServerLabel, func(ctx context.Context) {
		e.srv, err = server.New(ctx, server.Config{
			DataDir:      dir,
			Hosts:        []string{host},
			MQTTAddr:     net.JoinHostPort(host, "0"),
			HTTPSAddr:    net.JoinHostPort(host, "0"),
			AMQPAddr:     net.JoinHostPort(host, "0"),
			StreamListen: "none",
			Logger:       logger,
		})
		if err == nil {
			if err = e.srv.Start(); err != nil {
				_ = e.srv.Shutdown(context.WithoutCancel(ctx))
			}
		}
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: embedded berth: %w", err)
	}
	e.Target, err = TargetFromInfo(e.srv.Info(), "", "")
	if err != nil {
		_ = e.Close(ctx)
		return nil, err
	}
	e.Target.Mode = "embedded"
	e.Target.ServerPID = os.Getpid()
	return e, nil
}

// Close shuts the berth down and removes its data.
func (e *Embedded) Close(ctx context.Context) error {
	err := e.srv.Shutdown(ctx)
	if rerr := os.RemoveAll(e.dir); rerr != nil && err == nil {
		err = fmt.Errorf("bench: remove %s: %w", e.dir, rerr)
	}
	return err
}

// Spawned is a child `berth serve`.
type Spawned struct {
	cmd     *exec.Cmd
	dir     string
	exited  chan struct{}
	waitErr error
	stderr  *tailBuffer
	Target  *Target
}

// spawnWait bounds the wait for a child berth to come up.
const spawnWait = 30 * time.Second

// Spawn starts exe (a berth binary) as `berth serve` on a throwaway data
// directory and a random loopback address, and waits until it serves.
func Spawn(ctx context.Context, exe string) (*Spawned, error) {
	return SpawnOn(ctx, exe, RandomLoopback())
}

// SpawnOn is Spawn on the given loopback address.
func SpawnOn(ctx context.Context, exe, host string) (*Spawned, error) {
	dir, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: data dir: %w", err)
	}
	return spawnServe(ctx, exe, dir, host, []string{"--host", host})
}

// spawnServe starts `exe serve` on the data directory dir (removed by
// Close, or at once when the start fails), its listeners on ephemeral
// ports of host, with the further flags args, and waits until it serves.
func spawnServe(ctx context.Context, exe, dir, host string, args []string) (*Spawned, error) {
	// Not CommandContext: the child must outlive a cancelled ctx long
	// enough to be stopped with SIGTERM by Close, like any berth.
	cmd := exec.Command(exe, append([]string{"serve", "--data-dir", dir,
		"--mqtt-addr", net.JoinHostPort(host, "0"), "--https-addr", net.JoinHostPort(host, "0"), "--amqp-addr", net.JoinHostPort(host, "0"),
		// No operator listener: its default port, 127.0.0.1:8443, may be
		// another berth's.
		"--stream-listen", "none", "--admin-addr", "none", "--log-level", "error"}, args...)...)
	// The child's settings come from these flags alone.
	cmd.Env = filterEnv(os.Environ(), "BERTH_")
	s := &Spawned{cmd: cmd, dir: dir, exited: make(chan struct{}), stderr: &tailBuffer{max: 4096}}
	cmd.Stdout = io.Discard
	cmd.Stderr = s.stderr
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: start %s serve: %w", exe, err)
	}
	go func() { s.waitErr = cmd.Wait(); close(s.exited) }()
	info, err := s.waitReady(ctx)
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	s.Target, err = TargetFromInfo(info, "", "")
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	s.Target.Mode = "spawned"
	s.Target.ServerPID = cmd.Process.Pid
	return s, nil
}

// waitReady waits for the child's client.json (written once both
// listeners are up).
func (s *Spawned) waitReady(ctx context.Context) (*localconf.Info, error) {
	deadline := time.NewTimer(spawnWait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if info, err := localconf.Read(s.dir); err == nil {
			return info, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.exited:
			return nil, fmt.Errorf("bench: berth serve exited (%v): %s", s.waitErr, s.stderr.String())
		case <-deadline.C:
			return nil, fmt.Errorf("bench: berth serve not ready after %s: %s", spawnWait, s.stderr.String())
		case <-tick.C:
		}
	}
}

// Close stops the child (SIGTERM, then SIGKILL after 10 s) and removes its
// data.
func (s *Spawned) Close() error {
	err := stopProcess(s.cmd.Process, s.exited, 10*time.Second)
	if rerr := os.RemoveAll(s.dir); rerr != nil && err == nil {
		err = fmt.Errorf("bench: remove %s: %w", s.dir, rerr)
	}
	return err
}

// stopProcess asks p to stop and kills it if it has not exited (exited
// closed) within grace.
func stopProcess(p *os.Process, exited <-chan struct{}, grace time.Duration) error {
	select {
	case <-exited:
		return nil
	default:
	}
	if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("bench: stop process %d: %w", p.Pid, err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exited:
		return nil
	case <-t.C:
	}
	if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("bench: kill process %d: %w", p.Pid, err)
	}
	<-exited
	return fmt.Errorf("bench: process %d ignored SIGTERM for %s and was killed", p.Pid, grace)
}

// filterEnv drops the variables starting with prefix.
func filterEnv(env []string, prefix string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if len(kv) < len(prefix) || kv[:len(prefix)] != prefix {
			out = append(out, kv)
		}
	}
	return out
}

// tailBuffer keeps the last max bytes written: a child's stderr, for the
// error message when it fails to start.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strconv.Quote(string(b.buf))
}
