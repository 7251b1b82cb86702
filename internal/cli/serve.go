package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/server"
)

// serveFile is the JSON config file `berth serve --config` reads; its keys
// are the flag names.
type serveFile map[string]any

func newServeCmd(g *globals) *cobra.Command {
	var (
		cfg        server.Config
		configFile string
		logLevel   string
		logFormat  string
		thr        throttleFlags
		memLimit   string
		// jobRetention is --job-retention: 0 keeps every job.
		jobRetention time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run berth: DPS and IoT hub on MQTT (8883) and HTTPS (443)",
		Long: `Run berth. On first start it creates its data directory, a SQLite store,
a development CA and a server certificate, and prints how to connect.

Every flag can also be set in the environment as BERTH_<FLAG> (for example
BERTH_MQTT_ADDR=:18883) or in a JSON file given with --config whose keys are
the flag names. Flags win over the environment, which wins over the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndFile(cmd.Flags(), configFile); err != nil {
				return err
			}
			cfg.DataDir = g.dataDir
			var level slog.Level
			var err error
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			if cfg.Logger, err = newLogger(g.stderr, logFormat, level); err != nil {
				return err
			}
			if cfg.Throttle, err = thr.settings(); err != nil {
				return err
			}
			if err := applyMemoryLimit(memLimit); err != nil {
				return err
			}
			switch {
			case jobRetention < 0:
				return fmt.Errorf("--job-retention %s: give a positive duration, or 0 to keep every job", jobRetention)
			case jobRetention == 0:
				cfg.JobRetention = -1 // kept for ever
			default:
				cfg.JobRetention = jobRetention
			}
			return runServe(cmd.Context(), cfg, g.stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON config file (keys are flag names)")
	f.StringSliceVar(&cfg.Hosts, "host", []string{"127.0.0.1", "localhost"}, "host names and IPs devices use to reach berth; the first is the public name (repeat or comma-separate)")
	f.StringVar(&cfg.HubName, "hub-name", "", "host name of the IoT hub devices are assigned to (default: the first --host)")
	f.BoolVar(&cfg.AcceptNewHub, "accept-new-hub", false, "start although the hub (--hub-name, else the first --host) is not the one the store was created with: the new hub is created and made the default, the previous one stays with its devices (docs/operations.md)")
	f.StringVar(&cfg.Region, "region", "", "this berth's region label: geoLatency allocation prefers hubs with the same --region")
	f.StringVar(&cfg.MQTTAddr, "mqtt-addr", ":8883", "MQTT over TLS listen address")
	f.StringVar(&cfg.HTTPSAddr, "https-addr", ":443", "HTTPS listen address (also AMQP and MQTT over WebSockets at /$iothub/websocket)")
	f.StringVar(&cfg.AMQPAddr, "amqp-addr", ":5671", `AMQP over TLS listen address; "off" for none`)
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "server certificate (PEM, chain); default: issued by berth's development CA")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "server certificate key (PEM)")
	f.StringVar(&cfg.IDScope, "id-scope", "", "ID scope to create on first start (default: generated)")
	f.StringVar(&cfg.StoreURL, "store", "", "store: sqlite:PATH (default DATA_DIR/berth.db) or postgres://…")
	f.IntVar(&cfg.RetryAfter, "retry-after", 3, "retry-after seconds on DPS 202 answers")
	f.StringVar(&cfg.NATSURL, "nats-url", "", "external NATS (JetStream) URLs for the telemetry stream; default: embedded, under DATA_DIR/nats")
	f.IntVar(&cfg.StreamReplicas, "stream-replicas", 0, "replicas of the telemetry stream on an external NATS cluster (1 to 5; default 1 for a new stream; an existing stream's replicas are never lowered)")
	f.StringVar(&cfg.StreamListen, "stream-listen", "127.0.0.1:0", `where the embedded NATS accepts local readers (token in client.json); "none" for in-process only`)
	f.DurationVar(&jobRetention, "job-retention", hub.DefaultJobRetention, "how long a finished job (/jobs/v2 with its device jobs, import and export) is kept after it ended, as IoT Hub's 30 days; 0 keeps every job")
	f.DurationVar(&cfg.MaxTokenLifetime, "max-token-lifetime", 0, "longest lifetime (expiry minus now) of a device or service SAS token berth accepts, e.g. 24h; 0 for no limit, as Azure")
	thr.register(f)
	f.StringVar(&memLimit, "memory-limit", "", "soft memory limit of the Go runtime, as GOMEMLIMIT (e.g. 512MiB, 2GiB): the GC runs more often near it instead of letting the heap double; default: GOMEMLIMIT or none (docs/benchmarks.md, idle connections)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text (logfmt-style key=value) or json (one object a line)")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:8443", `operator listener: console, /metrics, /healthz, /readyz (HTTPS); loopback-only by default, "none" for no listener (docs/operations.md)`)
	return cmd
}

// applyMemoryLimit is --memory-limit: a size in GOMEMLIMIT's syntax (a
// number of bytes with an optional B, KiB, MiB, GiB or TiB suffix); ""
// leaves the runtime's setting (GOMEMLIMIT) alone.
func applyMemoryLimit(v string) error {
	if v == "" {
		return nil
	}
	n, err := parseByteSize(v)
	if err != nil {
		return fmt.Errorf("--memory-limit %q: %w", v, err)
	}
	debug.SetMemoryLimit(n)
	return nil
}

func parseByteSize(v string) (int64, error) {
	num, mult := v, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return 0, errors.New("want a positive size such as 512MiB or 2GiB")
	}
	return n * mult, nil
}

// applyEnvAndFile sets every flag not given on the command line from
// BERTH_<FLAG>, then from the config file.
func applyEnvAndFile(fs *pflag.FlagSet, file string) error {
	var fromFile serveFile
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
		if err := json.Unmarshal(data, &fromFile); err != nil {
			return fmt.Errorf("--config %s: %w", file, err)
		}
		for k := range fromFile {
			if fs.Lookup(k) == nil {
				return fmt.Errorf("--config %s: unknown key %q", file, k)
			}
		}
	}
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Changed {
			return
		}
		env := "BERTH_" + strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(fl.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", env, e)
			}
			return
		}
		if v, ok := fromFile[fl.Name]; ok {
			var s string
			switch v := v.(type) {
			case string:
				s = v
			case []any:
				parts := make([]string, len(v))
				for i, p := range v {
					parts[i] = fmt.Sprint(p)
				}
				s = strings.Join(parts, ",")
			default:
				s = fmt.Sprint(v)
			}
			if e := fs.Set(fl.Name, s); e != nil {
				err = fmt.Errorf("--config key %s: %w", fl.Name, e)
			}
		}
	})
	return err
}

// newLogger is --log-format and --log-level.
func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func runServe(ctx context.Context, cfg server.Config, out io.Writer) error {
	if cfg.AdminAddr == "none" {
		cfg.AdminAddr = ""
	}
	srv, err := server.New(ctx, cfg)
	if err != nil {
		return listenHint(err, cfg)
	}
	if err := srv.Start(); err != nil {
		_ = srv.Shutdown(context.Background())
		return listenHint(err, cfg)
	}
	printBanner(out, srv, cfg.DataDir, cfg.RetryAfter)
	if u := srv.AdminURL(); u != "" {
		fmt.Fprintf(out, "\nOperator console: %s (sign in with a connection string above; /metrics, /healthz, /readyz there too)\n", u)
	}
	if h := hostsHint(cfg); h != "" {
		fmt.Fprintf(out, "\n%s", h)
	}
	select {
	case <-ctx.Done():
	case err = <-srv.Errors():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	return err
}

func printBanner(out io.Writer, srv *server.Server, dataDir string, retryAfter int) {
	info := srv.Info()
	state := "started"
	if srv.FirstRun() {
		state = "started for the first time (new ID scope, keys and CA)"
	}
	fmt.Fprintf(out, "berth %s\n\n", state)
	// The printed commands must work as pasted: name the data directory
	// when it is not the one the CLI finds by default.
	cli := cliName(os.Args[0], exec.LookPath) + dataDirArg(dataDir)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  ID scope\t%s\n", info.IDScope)
	fmt.Fprintf(tw, "  DPS global endpoint\t%s (MQTT %s, HTTPS %s)\n", info.GlobalEndpoint, info.MQTTAddress, info.HTTPSAddress)
	fmt.Fprintf(tw, "  IoT hub\t%s\n", info.HubHostName)
	if info.AMQPAddress != "" {
		fmt.Fprintf(tw, "  AMQP endpoint\tamqps://%s (devices and service; AmqpWs and MqttWs on wss://%s/$iothub/websocket)\n", info.AMQPAddress, info.HTTPSAddress)
	}
	if info.CAFile != "" {
		fmt.Fprintf(tw, "  CA to trust\t%s\n", info.CAFile)
	}
	// The connection strings carry the owner keys. Printed once, at the
	// start that created them; later starts only say where they are, so
	// that a journal or container log of every restart holds no key.
	if srv.FirstRun() {
		fmt.Fprintf(tw, "  service connection string\t%s\n", info.ServiceConnectionString)
		fmt.Fprintf(tw, "  hub connection string\t%s\n", info.HubConnectionString)
		if cs := srv.EventHubConnectionString(); cs != "" {
			fmt.Fprintf(tw, "  Event Hubs-compatible\t%s\n", cs)
		}
	} else {
		where := filepath.Join(dataDir, localconf.FileName)
		fmt.Fprintf(tw, "  service connection string\tin %s, or: %s dps connection-string show\n", where, cli)
		fmt.Fprintf(tw, "  hub connection string\tin %s, or: %s hub connection-string show\n", where, cli)
		fmt.Fprintf(tw, "  Event Hubs-compatible\t%s hub connection-string show --eventhub\n", cli)
	}
	if info.NATSURL != "" {
		fmt.Fprintf(tw, "  telemetry stream\tNATS JetStream %s, subjects %s.> (URL and token in client.json)\n", info.StreamName, info.StreamSubjectPrefix)
	}
	tw.Flush()
	fmt.Fprintf(out, `
Next, in another terminal:
  %[1]s enrollment-group create --enrollment-id my-group      # prints the group's keys
  %[1]s device register --registration-id my-device-1 --group-key <primaryKey>
  %[1]s registration show my-device-1

or as raw MQTT with mosquitto (docs/dps-wire.md has the whole flow, and curl):
  KEY=$(%[1]s device derive-key --group-key <primaryKey> --registration-id my-device-2)
  mosquitto_rr -h %[2]s -p %[3]s --cafile %[4]s -V mqttv311 -q 1 \
    -i my-device-2 -u '%[5]s/registrations/my-device-2/api-version=2019-03-31' \
    -P "$(%[1]s device sas-token --id-scope %[5]s --registration-id my-device-2 --key $KEY)" \
    -t '$dps/registrations/PUT/iotdps-register/?$rid=1' -e '$dps/registrations/res/202/?$rid=1&retry-after=%[6]d' -m '{}'
`, cli, hostOf(info.MQTTAddress), portOf(info.MQTTAddress), info.CAFile, info.IDScope, retryAfter)
}

// cliName is how the banner's commands call berth: "berth" when it is on
// PATH, otherwise the path it was started as (make run starts ./bin/berth,
// and a pasted "berth …" would be "command not found").
func cliName(arg0 string, lookPath func(string) (string, error)) string {
	if _, err := lookPath("berth"); err == nil {
		return "berth"
	}
	if filepath.Base(arg0) == "berth" && strings.ContainsRune(arg0, filepath.Separator) {
		return arg0
	}
	return "berth"
}

// dataDirArg is the --data-dir the banner's commands need: none for
// ~/.berth, which every command finds alone. BERTH_DATA_DIR does not count
// as a default here: given to `make run` or a service unit only, it is not
// set in the terminal where the commands are pasted, and there they would
// act on ~/.berth, perhaps another berth's.
func dataDirArg(dataDir string) string {
	if home, err := os.UserHomeDir(); err == nil && home != "" && dataDir == filepath.Join(home, ".berth") {
		return ""
	}
	return " --data-dir " + dataDir
}

func hostOf(addr string) string {
	h, _, _ := strings.Cut(addr, ":")
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		h = addr[:i]
	}
	return strings.Trim(h, "[]")
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}
