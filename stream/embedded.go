package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// embeddedMaxPayload bounds one message on the in-process server. IoT Hub
// allows 256 KiB counted without encoding, but percent-encoding can triple
// names and values in headers (plus berth-app-order repeats the names), so
// the NATS default of 1 MiB could refuse a message the hub accepted.
const embeddedMaxPayload = 4 << 20

// startEmbedded starts an in-process nats-server with JetStream on
// storeDir. It does not listen on any port: berth talks to it through an
// in-process connection, so no one else can reach it and nothing needs TLS
// or credentials.
func startEmbedded(ctx context.Context, cfg Config, syncAlways bool) (*server.Server, error) {
	storeDir, log := cfg.StoreDir, cfg.Logger
	if storeDir == "" {
		return nil, errors.New("stream: embedded server needs Config.StoreDir")
	}
	opts := &server.Options{
		ServerName: "berth",
		DontListen: true,
		JetStream:  true,
		StoreDir:   storeDir,
		// Append's nil error is what lets a front end send PUBACK / 204,
		// and a device deletes its copy on PUBACK, so on a single node
		// "acked" must mean "on disk", as it does for the registry (SQLite
		// synchronous=FULL). berth fsyncs the stream's blocks itself after
		// each group's PubAcks (blocksync.go), so the server runs without
		// SyncAlways (syncAlways false) and writes each message to the OS
		// before its PubAck. SyncAlways (the file store fsyncs each message
		// before the PubAck) is the benchmarks' comparison. Cost measured in
		// BenchmarkAppendEmbedded (see docs/telemetry-stream.md).
		SyncAlways: syncAlways,
		MaxPayload: embeddedMaxPayload,
		// berth owns signals and shutdown.
		NoSigs: true,
	}
	if cfg.ListenAddr != "" {
		host, port, err := net.SplitHostPort(cfg.ListenAddr)
		if err != nil {
			return nil, fmt.Errorf("stream: listen address %q: %w", cfg.ListenAddr, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("stream: listen port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.DontListen = false
		opts.Host, opts.Port = host, p
		// Every client, the in-process one included, presents the token.
		opts.Authorization = cfg.Token
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("stream: configure embedded nats-server: %w", err)
	}
	ns.SetLoggerV2(serverLogger{log}, false, false, false)
	ns.Start()
	wait := 30 * time.Second // JetStream recovery of a large store can take a while
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	if !ns.ReadyForConnections(wait) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("stream: embedded nats-server (store %s) not ready after %s", storeDir, wait.Round(time.Millisecond))
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("stream: embedded nats-server: JetStream did not start on %s (see debug log)", storeDir)
	}
	return ns, nil
}

// serverLogger routes nats-server's log to slog. Notices (startup banners,
// "JetStream started", …) are routine for an embedded component and go to
// debug; warnings and errors keep their level because they are about the
// store that holds acknowledged telemetry (disk full, corrupt block).
type serverLogger struct{ log *slog.Logger }

func (l serverLogger) logf(level slog.Level, format string, v []any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, fmt.Sprintf(format, v...), "component", "nats-server")
}

func (l serverLogger) Noticef(format string, v ...any) { l.logf(slog.LevelDebug, format, v) }
func (l serverLogger) Warnf(format string, v ...any)   { l.logf(slog.LevelWarn, format, v) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.logf(slog.LevelError, format, v) }
func (l serverLogger) Errorf(format string, v ...any)  { l.logf(slog.LevelError, format, v) }
func (l serverLogger) Debugf(format string, v ...any)  { l.logf(slog.LevelDebug, format, v) }
func (l serverLogger) Tracef(format string, v ...any)  { l.logf(slog.LevelDebug-4, format, v) }
