package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/internal/svcconn"
	"net"
	"strconv"
)

// The hub commands are shaped like `az iot hub …`: device identities,
// twins, direct methods and cloud-to-device messages through the hub's
// service REST API (package hubclient; hub_identity.go, hub_twin.go,
// hub_c2d.go), connection strings and SAS tokens (hub_connstr.go), and
// monitor-events on berth's telemetry stream (hub_monitor.go). This file
// holds the tree and how every command finds its hub.
// Output is JSON, as az prints it; monitor-events prints one JSON object
// per line so scripts can read it as it comes.

// hubFlags are the options every `berth hub` command shares. They live in
// the tree NewRoot builds, like globals, so two trees never share them.
type hubFlags struct {
	connStr string // hub connection string (overrides client.json)
	hubName string // az's -n/--hub-name: which hub the command means (checked, see resolveHub)
}

func addHubCommands(root *cobra.Command, g *globals) { root.AddCommand(newHubCmd(g)) }

// newHubCmd is `berth hub`; it is built twice, for `berth hub` and `berth
// iot hub` (az.go), as a command has one parent.
func newHubCmd(g *globals) *cobra.Command {
	hf := &hubFlags{}
	cmd := &cobra.Command{
		Use:   "hub",
		Short: "IoT hub: device identities and twins, direct methods, C2D messages, connection strings, SAS tokens, telemetry (like `az iot hub …`)",
	}
	cmd.PersistentFlags().StringVar(&hf.connStr, "hub-connection-string", os.Getenv("BERTH_HUB_CONNECTION_STRING"),
		"hub connection string, HostName=…;SharedAccessKeyName=…;SharedAccessKey=… (alias --login; default: from the data directory of a local berth; env BERTH_HUB_CONNECTION_STRING)")

	identity := &cobra.Command{
		Use:   "device-identity",
		Short: "Manage device identities in the hub's registry",
	}
	identityConnStr := &cobra.Command{
		Use:   "connection-string",
		Short: "Show a device's connection string",
	}
	identityConnStr.AddCommand(newHubConnStringShowCmd(g, hf, true))
	identity.AddCommand(newDeviceIdentityCreateCmd(g, hf), newDeviceIdentityShowCmd(g, hf), newDeviceIdentityListCmd(g, hf),
		newDeviceIdentityUpdateCmd(g, hf), newDeviceIdentityDeleteCmd(g, hf), identityConnStr)

	connStr := &cobra.Command{
		Use:   "connection-string",
		Short: "Show the hub's or a device's connection string",
	}
	connStr.AddCommand(newHubConnStringShowCmd(g, hf, false))

	cmd.AddCommand(newModuleIdentityCmd(g, hf), newModuleTwinCmd(g, hf)) // hub_module.go
	cmd.AddCommand(identity, newDeviceTwinCmd(g, hf), newInvokeMethodCmd(g, hf), newC2DCmd(g, hf),
		connStr, newHubSASTokenCmd(g, hf), newMonitorEventsCmd(g, hf))
	cmd.AddCommand(newHubManageCmds(g)...)     // create|list|show|update|delete (hub_manage.go)
	cmd.AddCommand(newHubQueryCmd(g, hf))      // hub_query.go
	cmd.AddCommand(newHubJobCmd(g, hf))        // hub_job.go
	cmd.AddCommand(newConfigurationCmd(g, hf)) // hub_configuration.go
	addHubNameFlag(cmd, hf)
	return cmd
}

// addHubNameFlag gives every hub command az's -n/--hub-name, but those
// where a flag already answers to it (hub create|show|… have --name with
// the alias --hub-name; sas-token's --hub names the token's hub).
func addHubNameFlag(c *cobra.Command, hf *hubFlags) {
	for _, sub := range c.Commands() {
		addHubNameFlag(sub, hf)
	}
	fs := c.Flags()
	if !c.Runnable() || fs.Lookup("hub-name") != nil || fs.ShorthandLookup("n") != nil {
		return
	}
	fs.StringVarP(&hf.hubName, "hub-name", "n", "", "host name of the hub (az's --hub-name): must be the hub of the connection string, or the local berth's hub")
}

// ---- connection resolution ----

// hubTarget is a resolved hub connection: the connection string and, when
// it names the local berth's hub, that berth's CA and address.
type hubTarget struct {
	connStr string
	cs      hubclient.ConnectionString
	opts    hubclient.Options
	// amqpPort is the local berth's AMQP port for its own hub, else 0
	// (5671).
	amqpPort int
}

// resolveHub works out where hub commands go, without any network
// traffic. Flags (and their environment variables) win; whatever they leave
// open comes from the client.json of a local berth, but its address and CA
// only when the connection string names that berth's hub: they would be
// wrong for any other.
func resolveHub(g *globals, hf *hubFlags) (*hubTarget, error) {
	connStr, caFile, address := hf.connStr, g.caFile, g.address
	if g.login != "" && !g.hubConnStrFlag {
		connStr = g.login // az's --login: over the environment, under the flag
	}
	var info *localconf.Info
	var infoErr error
	if connStr == "" || caFile == "" || address == "" {
		info, infoErr = localconf.Read(g.dataDir)
	}
	if connStr == "" {
		if infoErr != nil {
			return nil, fmt.Errorf("no hub connection string (pass --hub-connection-string or set BERTH_HUB_CONNECTION_STRING): %w", infoErr)
		}
		if info.HubConnectionString == "" {
			return nil, fmt.Errorf("no hub connection string in %s/%s: pass --hub-connection-string, or restart `berth serve`", g.dataDir, localconf.FileName)
		}
		connStr = info.HubConnectionString
	}
	cs, err := hubclient.ParseConnectionString(connStr)
	if err != nil {
		return nil, fmt.Errorf("--hub-connection-string: %w", err)
	}
	if hf.hubName != "" && !sameName(hf.hubName, cs.HostName) {
		// az finds any hub's connection string by name through Azure
		// Resource Manager; here the connection string decides, so a
		// script that names another hub must not act on this one.
		return nil, fmt.Errorf("--hub-name %q is not the hub of the connection string (%s): pass that hub's connection string with --hub-connection-string or --login (`berth policy show --hub %s iothubowner` prints it)",
			hf.hubName, cs.HostName, hf.hubName)
	}
	opts := hubclient.Options{CAFile: caFile, Address: address}
	amqpPort := 0
	switch {
	case info != nil && isLocalHub(info, cs.HostName):
		if caFile == "" {
			opts.CAFile = info.CAFile
		}
		if _, port, err := net.SplitHostPort(info.AMQPAddress); err == nil {
			amqpPort, _ = strconv.Atoi(port)
		}
		if address == "" {
			opts.Address = info.HTTPSAddress
		}
	case info != nil && caFile == "" && info.CAFile != "":
		// Another hub: maybe one more hub of the local berth (berth hub
		// create), maybe a real one. Trusting the system roots and the
		// local development CA reaches either, at its own host:443.
		roots, err := svcconn.SystemRootsAnd("hub", info.CAFile)
		if err == nil {
			opts.HTTPClient = svcconn.HTTPClientWithRoots(cs.HostName, roots, address)
		}
	}
	return &hubTarget{connStr: connStr, cs: cs, opts: opts, amqpPort: amqpPort}, nil
}

// isLocalHub reports whether host is the hub of the berth info describes.
func isLocalHub(info *localconf.Info, host string) bool {
	if info.HubHostName != "" && strings.EqualFold(info.HubHostName, host) {
		return true
	}
	local, err := hubclient.ParseConnectionString(info.HubConnectionString)
	return err == nil && strings.EqualFold(local.HostName, host)
}

// hubClient resolves the hub and returns a registry client for it.
func hubClient(g *globals, hf *hubFlags) (*hubclient.Client, error) {
	t, err := resolveHub(g, hf)
	if err != nil {
		return nil, err
	}
	return hubclient.New(t.connStr, t.opts)
}

// localHubName is the hub host name when no connection string is needed
// (a token signed with a key given on the command line): the connection
// string's host, or else the local berth's hub.
func localHubName(g *globals, hf *hubFlags) (string, error) {
	if t, err := resolveHub(g, hf); err == nil {
		return t.cs.HostName, nil
	} else if hf.connStr != "" {
		return "", err // a connection string was given and is wrong: say so
	}
	info, err := localconf.Read(g.dataDir)
	if err != nil {
		return "", fmt.Errorf("no hub host name: pass --hub: %w", err)
	}
	if info.HubHostName == "" {
		return "", fmt.Errorf("no hub host name in %s/%s: pass --hub", g.dataDir, localconf.FileName)
	}
	return info.HubHostName, nil
}
