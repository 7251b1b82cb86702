package cli

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/deviceclient"
	"github.com/berth-iot/berth/devicesim"
	"github.com/berth-iot/berth/internal/localconf"
)

// `berth device simulate` plays one device or a fleet (package devicesim)
// after provisioning each through DPS as `device register` does, or from a
// device connection string.

type simulateFlags struct {
	rf           registerFlags
	deviceCS     string
	devices      int
	interval     time.Duration
	messages     int
	template     string
	methods      []string
	hubAddress   string
	hubTransport string
}

func newSimulateCmd(g *globals) *cobra.Command {
	sf := &simulateFlags{}
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Play a device (or a fleet): provision, connect over MQTT, answer methods, mirror desired properties, complete C2D, send telemetry",
		Long: `Provision a device through DPS as ` + "`berth device register`" + ` does (or take a
device connection string), connect it to its hub over MQTT, and play it until
interrupted:

- direct methods are answered from --method specs, NAME[@DELAY]=ANSWER where
  ANSWER is echo (the request's payload), a JSON value (status 200) or
  STATUS:JSON; NAME * answers any other method. Default: *=echo.
- desired properties are mirrored into reported ones, at start and on every
  desired patch, so an operator sees each patch acknowledged;
- cloud-to-device messages are completed (the MQTT acknowledgement);
- telemetry is sent every --interval from --template, a Go text/template
  with .DeviceID, .Count and .Time, and rand A B and randInt A B
  (default: ` + devicesim.DefaultTemplate + `).

Each event is logged to stderr. With --devices N and --group-key the devices
are REGISTRATION-ID-1 … REGISTRATION-ID-N, each with its derived key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sf.run(cmd.Context(), g)
		},
	}
	sf.rf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&sf.deviceCS, "device-connection-string", "", "HostName=…;DeviceId=…;SharedAccessKey=…: connect with it, without provisioning")
	f.IntVar(&sf.devices, "devices", 1, "simulate this many devices (with --group-key)")
	f.DurationVar(&sf.interval, "interval", 10*time.Second, "time between telemetry messages of each device; 0 for none")
	f.IntVar(&sf.messages, "messages", 0, "stop sending telemetry after this many messages per device (0: no limit)")
	f.StringVar(&sf.template, "template", "", "telemetry body: a Go text/template, or @FILE (default: a JSON object with a temperature)")
	f.StringArrayVar(&sf.methods, "method", nil, "how to answer a direct method: NAME[@DELAY]=echo|JSON|STATUS:JSON, repeatable (default *=echo)")
	f.StringVar(&sf.hubAddress, "hub-address", "", "host:port of the hub's MQTT listener, or its HTTPS listener with --hub-transport mqttws (default: the local berth's, or the hub's host name on 8883 or 443)")
	f.StringVar(&sf.hubTransport, "hub-transport", "mqtt", "how the device reaches its hub: mqtt (8883) or mqttws (MQTT over a WebSocket on 443)")
	f.DurationVar(&sf.rf.timeout, "timeout", 2*time.Minute, "give up provisioning after this long")
	cmd.MarkFlagsMutuallyExclusive("device-connection-string", "registration-id")
	cmd.MarkFlagsOneRequired("key", "group-key", "certificate", "device-connection-string")
	return cmd
}

// device is one simulated device as resolved before it runs.
type simDevice struct {
	regID string // "" with a device connection string
	opts  deviceclient.Options
}

func (sf *simulateFlags) run(ctx context.Context, g *globals) error {
	base := devicesim.Config{
		Interval: sf.interval,
		Messages: sf.messages,
		Methods:  map[string]devicesim.Method{},
		Logger:   slog.New(slog.NewTextHandler(g.stderr, nil)),
	}
	for _, spec := range sf.methods {
		name, m, err := devicesim.ParseMethod(spec)
		if err != nil {
			return fmt.Errorf("--method: %w", err)
		}
		base.Methods[name] = m
	}
	if len(sf.methods) == 0 {
		base.Methods["*"] = devicesim.Method{Echo: true}
	}
	base.Template = sf.template
	if strings.HasPrefix(sf.template, "@") {
		b, err := os.ReadFile(sf.template[1:])
		if err != nil {
			return fmt.Errorf("--template: %w", err)
		}
		base.Template = string(b)
	}
	if _, err := devicesim.ParseTemplate(base.Template); err != nil {
		return fmt.Errorf("--template: %w", err)
	}
	if sf.devices < 1 {
		return errors.New("--devices must be at least 1")
	}
	if sf.devices > 1 && sf.rf.groupKey == "" {
		return errors.New("--devices above 1 needs --group-key: each device's key is derived from it")
	}
	switch strings.ToLower(sf.hubTransport) {
	case "mqtt":
	case "mqttws":
		base.WebSocket = true
	default:
		return fmt.Errorf("--hub-transport %q: use mqtt or mqttws", sf.hubTransport)
	}
	info, _ := localconf.Read(g.dataDir) // optional: a remote hub needs none

	if sf.deviceCS != "" {
		cfg, err := sf.fromConnectionString(g, info, base)
		if err != nil {
			return err
		}
		return devicesim.Run(ctx, cfg)
	}

	var wg sync.WaitGroup
	errs := make([]error, sf.devices)
	for i := range sf.devices {
		rf := sf.rf
		if sf.devices > 1 {
			rf.regID = fmt.Sprintf("%s-%d", sf.rf.regID, i+1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = sf.provisionAndRun(ctx, g, info, &rf, base)
			if errs[i] != nil {
				base.Logger.Error("device stopped", "registrationId", rf.regID, "err", errs[i])
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (sf *simulateFlags) provisionAndRun(ctx context.Context, g *globals, info *localconf.Info, rf *registerFlags, cfg devicesim.Config) error {
	opts, err := rf.options(g)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, rf.timeout)
	op, err := deviceclient.Provision(pctx, opts)
	cancel()
	if err != nil {
		return fmt.Errorf("provision %s: %w", opts.RegistrationID, err)
	}
	st := op.RegistrationState
	cfg.Logger.Info("provisioned", "registrationId", st.RegistrationID, "hub", st.AssignedHub, "deviceId", st.DeviceID)
	cfg.HubHost, cfg.DeviceID = st.AssignedHub, st.DeviceID
	cfg.SymmetricKey, cfg.ClientCertificate = opts.SymmetricKey, opts.ClientCertificate
	if cfg.ClientCertificate != nil {
		cfg.SymmetricKey = ""
	}
	if cfg.RootCAs, err = rootCAs(opts.CAFile); err != nil {
		return err
	}
	cfg.Address = sf.hubMQTTAddress(info, cfg.HubHost, opts.GlobalEndpoint, cfg.WebSocket)
	return devicesim.Run(ctx, cfg)
}

// fromConnectionString is the device of --device-connection-string.
func (sf *simulateFlags) fromConnectionString(g *globals, info *localconf.Info, cfg devicesim.Config) (devicesim.Config, error) {
	fields := map[string]string{}
	for _, part := range strings.Split(sf.deviceCS, ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(part), "="); ok {
			fields[strings.ToLower(k)] = v
		}
	}
	cfg.HubHost, cfg.DeviceID, cfg.SymmetricKey = fields["hostname"], fields["deviceid"], fields["sharedaccesskey"]
	if cfg.HubHost == "" || cfg.DeviceID == "" || cfg.SymmetricKey == "" {
		return cfg, errors.New("--device-connection-string: want HostName=…;DeviceId=…;SharedAccessKey=… (a module's or an X.509 device's is not supported)")
	}
	if _, err := base64.StdEncoding.DecodeString(cfg.SymmetricKey); err != nil {
		return cfg, fmt.Errorf("--device-connection-string: SharedAccessKey: %w", err)
	}
	caFile := g.caFile
	if caFile == "" && info != nil {
		caFile = info.CAFile
	}
	var err error
	if cfg.RootCAs, err = rootCAs(caFile); err != nil {
		return cfg, err
	}
	cfg.Address = sf.hubMQTTAddress(info, cfg.HubHost, "", cfg.WebSocket)
	return cfg, nil
}

// hubMQTTAddress is where the device dials its hub: --hub-address; else,
// for a hub of the local berth (its default hub, or any hub when the
// device provisioned through the local DPS, as berth serves every hub on
// one listener), the local MQTT address; else the hub's host on 8883.
func (sf *simulateFlags) hubMQTTAddress(info *localconf.Info, hub, dpsEndpoint string, ws bool) string {
	if sf.hubAddress != "" {
		return sf.hubAddress
	}
	local, port := "", "8883"
	if info != nil {
		local = info.MQTTAddress
	}
	if ws {
		port, local = "443", ""
		if info != nil {
			local = info.HTTPSAddress
		}
	}
	if local != "" && (strings.EqualFold(hub, info.HubHostName) || (dpsEndpoint != "" && strings.EqualFold(dpsEndpoint, info.GlobalEndpoint))) {
		return local
	}
	return net.JoinHostPort(hub, port)
}

// rootCAs reads a CA file; "" means the system roots.
func rootCAs(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate", file)
	}
	return pool, nil
}
