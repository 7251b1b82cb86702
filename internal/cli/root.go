// Package cli is berth's command line: `berth serve`, the operator commands
// (clients of the service REST API, shaped like `az iot dps …`), and the
// device-side helpers a firmware developer needs.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/internal/version"
)

// globals are the flags every command shares.
type globals struct {
	dataDir string // where `berth serve` keeps its state and client.json
	login   string // az's --login: a connection string (az.go)
	// connStrFlag and hubConnStrFlag say whether --connection-string or
	// --hub-connection-string was given on the command line (not from the
	// environment): only then do they win over --login.
	connStrFlag, hubConnStrFlag bool
	dpsName                     string // az's --dps-name, checked against the connection string
	output                      string // -o/--output (output.go)
	query                       string // --query, JMESPath (output.go)
	connStr                     string // service connection string (overrides client.json)
	caFile                      string // CA to trust (overrides client.json)
	address                     string // host:port of the HTTPS listener (overrides client.json)
	stdout                      io.Writer
	stderr                      io.Writer
}

// NewRoot builds the command tree.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "berth",
		Short: "A self-hosted Device Provisioning Service and IoT hub, wire-compatible with Azure",
		Long: `A self-hosted Device Provisioning Service and IoT hub, wire-compatible with Azure.

The operator commands are shaped like az's: -o table|tsv|yaml|…, --query
(JMESPath), and az's own paths run too (berth iot dps enrollment create …,
berth iot hub device-identity list …). See docs/cli.md.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Get().String(),
	}
	root.SetVersionTemplate("berth {{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", localconf.DefaultDataDir(), "berth data directory (env BERTH_DATA_DIR)")
	pf.StringVar(&g.connStr, "connection-string", os.Getenv("BERTH_CONNECTION_STRING"), "service connection string (default: from the data directory of a local berth; env BERTH_CONNECTION_STRING)")
	pf.StringVar(&g.caFile, "ca-file", os.Getenv("BERTH_CA_FILE"), "PEM file of the CA to trust (default: from the data directory; env BERTH_CA_FILE)")
	pf.StringVar(&g.address, "address", os.Getenv("BERTH_ADDRESS"), "host:port to connect to, when it differs from the host name (default: from the data directory; env BERTH_ADDRESS)")

	root.AddCommand(newServeCmd(g))
	addOperatorCommands(root, g)
	addDeviceCommands(root, g)
	addHubCommands(root, g)
	root.AddCommand(newPolicyCmd(g))
	root.AddCommand(newDPSCmd(g))
	root.AddCommand(newBenchCmd(g))
	root.AddCommand(newVersionCmd(g))
	addOutputFlags(root, g)
	addAzFlags(root, g)
	addAzPaths(root, g)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		g.connStrFlag = cmd.Flags().Changed("connection-string")
		g.hubConnStrFlag = cmd.Flags().Changed("hub-connection-string")
		return g.checkOutputFlags()
	}
	requireKnownSubcommands(root)
	addExamples(root)
	addAzAliases(root)
	return root
}

// Execute runs the command line and returns the process exit code.
func Execute(ctx context.Context, args []string) int {
	root := NewRoot(os.Stdout, os.Stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "berth:", dialHint(err))
		return 1
	}
	return 0
}
