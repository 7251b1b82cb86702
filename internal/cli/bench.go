package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/bench"
	"github.com/berth-iot/berth/deviceclient"
	"github.com/berth-iot/berth/internal/localconf"
)

// benchFlags are the flags every bench shares.
type benchFlags struct {
	devices, concurrency int
	embedded, spawn      bool
	baseline             bool
	allowRemote          bool
	serverPID            int
	groupKey             string
	deviceTimeout        time.Duration
	mosquitto            string
	mosquittoHost        string
	cpuProfile           string
	progress             bool
}

func newBenchCmd(g *globals) *cobra.Command {
	bf := &benchFlags{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a berth like a fleet of devices, next to baselines measured in the same run",
		Long: `Load a berth the way real devices do — a new TLS connection per device, the
full DPS flow, one MQTT connection per device — and measure it next to a
baseline taken in the same run: the bare TLS handshake rate of the same
listener, and Mosquitto under the same telemetry load. Every figure is then a
ratio that carries from one machine to another, and the summary checks it
against the project's targets.

The devices are members of a symmetric-key enrollment group, so N devices need
no setup each: the bench creates a group bench-<random> through the service API
(and deletes it afterwards), or uses an existing one given by --group-key.

The target is the local berth of --data-dir (its client.json), or a
throwaway one: --embedded runs it in this process (no binary needed, CPU
profile with --cpuprofile), --spawn as a child ` + "`berth serve`" + ` (memory and CPU
figures are then the server's alone). Only loopback targets are loaded unless
--allow-remote.

Progress goes to stderr, the JSON summary to stdout.`,
	}
	pf := cmd.PersistentFlags()
	pf.IntVar(&bf.devices, "devices", 100, "number of devices")
	pf.IntVar(&bf.concurrency, "concurrency", 32, "devices connecting or provisioning at once")
	pf.BoolVar(&bf.embedded, "embedded", false, "run a throwaway berth in this process (temporary data dir, random 127.x.y.z address)")
	pf.BoolVar(&bf.spawn, "spawn", false, "run a throwaway berth as a child 'berth serve' process of this binary")
	pf.BoolVar(&bf.baseline, "baseline", true, "measure the baselines (bare TLS handshake, Mosquitto) in the same run")
	pf.BoolVar(&bf.allowRemote, "allow-remote", false, "allow a target that is not on a loopback address")
	pf.IntVar(&bf.serverPID, "server-pid", 0, "pid of the berth under test, for memory figures (default: the process listening on its MQTT port)")
	pf.StringVar(&bf.groupKey, "group-key", "", "primary key of an existing symmetric-key enrollment group to provision through (default: create bench-<random>)")
	pf.DurationVar(&bf.deviceTimeout, "device-timeout", time.Minute, "give up on one device's provisioning after this long")
	pf.StringVar(&bf.mosquitto, "mosquitto", bench.DefaultMosquitto, "Mosquitto binary for the baseline")
	pf.StringVar(&bf.mosquittoHost, "mosquitto-host", bench.DefaultMosquittoHost, "loopback address the baseline Mosquitto listens on")
	pf.StringVar(&bf.cpuProfile, "cpuprofile", "", "write a CPU profile of the run to this file (with --embedded; split server from client with go tool pprof -tagfocus bench=server)")
	pf.BoolVar(&bf.progress, "progress", true, "show progress on stderr")
	cmd.MarkFlagsMutuallyExclusive("embedded", "spawn")
	cmd.AddCommand(newBenchProvisionCmd(g, bf), newBenchTelemetryCmd(g, bf), newBenchConnectCmd(g, bf))
	return cmd
}

func newBenchProvisionCmd(g *globals, bf *benchFlags) *cobra.Command {
	var pc bench.ProvisionConfig
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Provision N devices (register → poll → assigned) and compare with the bare TLS handshake rate",
		Long: `Provision --devices devices, --concurrency at a time, each on a new TLS
connection through the full register → poll → assigned flow, over MQTT or
HTTPS. Reports registrations per second, latency percentiles (new connection →
assigned) and errors by kind, next to the bare TLS handshake rate of the same
listener at the same count and concurrency.

Devices poll as soon as they hear their operation id: berth assigns before it
answers, so the retry-after wait is idle time on the device that would make
the run measure the wait. --honor-retry-after waits it, as the SDKs do.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pc.Transport = strings.ToLower(pc.Transport)
			if pc.Transport != deviceclient.TransportMQTT && pc.Transport != deviceclient.TransportHTTPS {
				return fmt.Errorf("--transport %q: use mqtt or https", pc.Transport)
			}
			return bf.run(cmd.Context(), g, func(ctx context.Context, t *bench.Target, o bench.Options) (*bench.Summary, error) {
				return bench.RunProvision(ctx, t, o, pc)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&pc.Transport, "transport", deviceclient.TransportMQTT, "mqtt or https")
	f.BoolVar(&pc.HubConnect, "hub-connect", false, "after assignment, connect each device to its hub over MQTT (and disconnect)")
	f.BoolVar(&pc.HonorRetryAfter, "honor-retry-after", false, "wait the server's retry-after before polling, as the SDKs do")
	return cmd
}

func newBenchTelemetryCmd(g *globals, bf *benchFlags) *cobra.Command {
	var (
		tc      bench.TelemetryConfig
		maxRate bool
		qos     int
	)
	cmd := &cobra.Command{
		Use:   "telemetry",
		Short: "Send device-to-cloud telemetry from N connected devices and compare with Mosquitto",
		Long: `Provision --devices devices, connect each to the hub over MQTT (one
connection per device), and publish --size byte messages on their telemetry
topics at --rate messages per second in total, or as fast as the
acknowledgements allow (--max, the default), for --duration or until
--messages are sent. Reports messages per second accepted (QoS 1: acknowledged
with PUBACK, which berth sends once the message is durable) and the publish →
PUBACK latency, then runs the same load against Mosquitto.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			if maxRate && fs.Changed("rate") {
				return errors.New("--rate and --max exclude each other")
			}
			if maxRate || tc.Rate < 0 {
				tc.Rate = 0
			}
			if qos != 0 && qos != 1 {
				return fmt.Errorf("--qos %d: IoT Hub accepts 0 and 1", qos)
			}
			tc.QoS = byte(qos)
			if tc.Size < 0 {
				return errors.New("--size must not be negative")
			}
			if err := bench.CheckTransport(tc.Transport); err != nil {
				return err
			}
			if fs.Changed("messages") && !fs.Changed("duration") {
				tc.Duration = 0 // the message count alone ends the run
			}
			return bf.run(cmd.Context(), g, func(ctx context.Context, t *bench.Target, o bench.Options) (*bench.Summary, error) {
				return bench.RunTelemetry(ctx, t, o, tc)
			})
		},
	}
	f := cmd.Flags()
	f.Float64Var(&tc.Rate, "rate", 0, "total messages per second over all devices (default: as fast as possible)")
	f.BoolVar(&maxRate, "max", false, "send as fast as the acknowledgements allow (the default when --rate is not given)")
	f.IntVar(&qos, "qos", 1, "MQTT QoS of the messages: 0 or 1")
	f.IntVar(&tc.Size, "size", 256, "payload size in bytes")
	f.DurationVar(&tc.Duration, "duration", 10*time.Second, "how long to send")
	f.Int64Var(&tc.Messages, "messages", 0, "stop after this many messages in total")
	f.IntVar(&tc.Inflight, "inflight", 1, "unacknowledged messages a device may have at once")
	f.StringVar(&tc.Transport, "transport", bench.TransportMQTT, "mqtt, mqtt-ws (MQTT over a WebSocket on the HTTPS listener) or amqp (unsettled transfers, accepted once durable); another than mqtt also runs the load over mqtt in the same run, to compare with")
	return cmd
}

func newBenchConnectCmd(g *globals, bf *benchFlags) *cobra.Command {
	var (
		cc   bench.ConnectConfig
		kind string
	)
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Hold N idle connected devices and measure the server's memory per connection",
		Long: `Provision --devices devices and connect each to the hub over MQTT, then
read the server's resident memory (VmRSS of /proc/PID/status) before and after
and report the difference per connection; the same against Mosquitto as the
baseline. --kind dps holds DPS sessions (connected and subscribed) instead,
which need no provisioning.

The server's pid is --server-pid, or the process listening on the berth's MQTT
port (found through /proc/net/tcp and /proc/*/fd), or the child of --spawn.
With --embedded the server shares this process, so its figure includes the
clients' side of every connection: prefer --spawn or a separate berth serve.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kind != bench.KindHub && kind != bench.KindDPS {
				return fmt.Errorf("--kind %q: use hub or dps", kind)
			}
			if err := bench.CheckTransport(cc.Transport); err != nil {
				return err
			}
			return bf.run(cmd.Context(), g, func(ctx context.Context, t *bench.Target, o bench.Options) (*bench.Summary, error) {
				if t.ServerPID == 0 {
					pid, err := bench.FindListenerPID(t.MQTTAddress)
					if err != nil {
						return nil, err
					}
					t.ServerPID = pid
				}
				return bench.RunConnect(ctx, t, o, kind, cc)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", bench.KindHub, "hub (provisioned devices on the hub) or dps (DPS sessions)")
	f.DurationVar(&cc.Settle, "settle", 3*time.Second, "wait before each memory reading")
	f.DurationVar(&cc.Hold, "hold", 0, "keep the connections open this long after the reading")
	f.StringVar(&cc.Transport, "transport", bench.TransportMQTT, "--kind hub: mqtt, mqtt-ws or amqp (CBS put-token and a telemetry link, as the device SDK holds it); another than mqtt also holds the devices over mqtt first, to compare with")
	return cmd
}

// run resolves the target, runs one bench and prints its summary.
func (bf *benchFlags) run(ctx context.Context, g *globals, fn func(context.Context, *bench.Target, bench.Options) (*bench.Summary, error)) error {
	// Flags first, so that a typo costs no server start.
	switch {
	case bf.cpuProfile != "" && !bf.embedded:
		return errors.New("--cpuprofile profiles this process: use it with --embedded")
	case bf.devices <= 0:
		return errors.New("--devices must be positive")
	case bf.concurrency <= 0:
		return errors.New("--concurrency must be positive")
	}
	log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	t, closeTarget, err := bf.target(ctx, g, log)
	if err != nil {
		return err
	}
	defer closeTarget()
	o := bench.Options{
		Devices:       bf.devices,
		Concurrency:   bf.concurrency,
		GroupKey:      bf.groupKey,
		Baseline:      bf.baseline,
		MosquittoBin:  bf.mosquitto,
		MosquittoHost: bf.mosquittoHost,
		AllowRemote:   bf.allowRemote,
		DeviceTimeout: bf.deviceTimeout,
		Log:           log,
	}
	if bf.progress {
		o.Progress = bench.ProgressOptions{W: g.stderr, TTY: isTerminal(g.stderr)}
	}
	if bf.cpuProfile != "" {
		stop, err := startCPUProfile(bf.cpuProfile)
		if err != nil {
			return err
		}
		defer stop(log)
	}
	var s *bench.Summary
	// The load generator's goroutines carry ClientLabel and the embedded
	// server's ServerLabel, so one profile can be split in two.
	pprof.Do(ctx, bench.ClientLabel, func(ctx context.Context) {
		s, err = fn(ctx, t, o)
	})
	if s != nil {
		s.WriteText(g.stderr)
		if perr := s.WriteJSON(g.stdout); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

// target finds or starts the berth under test; the returned function
// stops what was started.
func (bf *benchFlags) target(ctx context.Context, g *globals, log *slog.Logger) (*bench.Target, func(), error) {
	switch {
	case bf.embedded:
		e, err := bench.StartEmbedded(ctx, slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelError})))
		if err != nil {
			return nil, nil, err
		}
		return e.Target, func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := e.Close(sctx); err != nil {
				log.Warn("bench: stop the embedded berth", "error", err)
			}
		}, nil
	case bf.spawn:
		exe, err := os.Executable()
		if err != nil {
			return nil, nil, fmt.Errorf("--spawn: find the berth binary: %w", err)
		}
		s, err := bench.Spawn(ctx, exe)
		if err != nil {
			return nil, nil, err
		}
		return s.Target, func() {
			if err := s.Close(); err != nil {
				log.Warn("bench: stop the spawned berth", "error", err)
			}
		}, nil
	}
	info, err := localconf.Read(g.dataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (or run a throwaway berth with --embedded or --spawn)", err)
	}
	t, err := bench.TargetFromInfo(info, g.caFile, g.connStr)
	if err != nil {
		return nil, nil, err
	}
	if g.address != "" {
		t.HTTPSAddress = g.address
	}
	t.ServerPID = bf.serverPID
	return t, func() {}, nil
}

// startCPUProfile starts writing a CPU profile to path.
func startCPUProfile(path string) (func(*slog.Logger), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func(log *slog.Logger) {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			log.Warn("bench: write CPU profile", "error", err)
		}
	}, nil
}

// isTerminal reports whether w is a terminal, where progress can redraw
// its line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
