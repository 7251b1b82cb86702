package cli

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/sas"
)

// The habits az users bring, in one place: the command paths az spells
// (`az iot dps enrollment create` → `berth iot dps enrollment create` or
// `berth dps enrollment create`), its global --login and --dps-name, and an
// unknown subcommand that fails with a suggestion instead of printing help
// and exiting 0 (cobra does that by default below the root). The output
// flags, -o and --query, are in output.go; per-command aliases (--eid,
// --gid, --rid, -d, --mn, …) stay beside their flags.

// addAzFlags adds az's global --login and --dps-name.
func addAzFlags(root *cobra.Command, g *globals) {
	pf := root.PersistentFlags()
	pf.StringVar(&g.login, "login", "", "az's --login: a connection string, the DPS's for DPS commands and the hub's for hub commands (--connection-string or --hub-connection-string on the command line wins; their environment variables do not)")
	pf.StringVar(&g.dpsName, "dps-name", "", "az's --dps-name: the DPS host name, checked against the connection string's (berth serves one DPS)")
}

// addAzPaths adds `berth iot …`, hidden (it repeats the tree), so that a
// command copied from az's documentation runs with `az` replaced by
// `berth`. Commands have one parent, so the subtrees are built again.
func addAzPaths(root *cobra.Command, g *globals) {
	iot := &cobra.Command{
		Use:    "iot",
		Short:  "az's spelling: `berth iot dps …`, `berth iot hub …` and `berth iot device …` are `berth dps …`, `berth hub …` and `berth device …`",
		Hidden: true,
	}
	iot.AddCommand(newDPSCmd(g), newHubCmd(g), newDeviceCmd(g))
	root.AddCommand(iot)
}

// requireKnownSubcommands makes every command that only groups others fail
// on an unknown subcommand, naming the closest ones (cobra's own
// suggestions, Levenshtein distance 2 or a shared prefix), and print its
// help when given none.
func requireKnownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		requireKnownSubcommands(sub)
	}
	// The root is left to cobra, which already fails with suggestions
	// there (and keeps its usage line "berth [command]").
	if !c.HasParent() || !c.HasSubCommands() || c.Runnable() {
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.SuggestionsMinimumDistance = 2 // cobra sets its default only on its own path
	// Flags meant for a mistyped subcommand must not hide the real error.
	c.FParseErrWhitelist.UnknownFlags = true
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		return unknownCommandError(cmd, args[0])
	}
}

func unknownCommandError(cmd *cobra.Command, name string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "unknown command %q for %q", name, cmd.CommandPath())
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		b.WriteString("\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t"))
	}
	fmt.Fprintf(&b, "\n\nRun '%s --help' for usage.", cmd.CommandPath())
	return errors.New(b.String())
}

// sameName reports whether name means host: the host itself, or its first
// DNS label (az's names are the labels: my-hub for my-hub.azure-devices.net).
func sameName(name, host string) bool {
	if strings.EqualFold(name, host) {
		return true
	}
	if net.ParseIP(host) != nil {
		return false
	}
	label, _, ok := strings.Cut(host, ".")
	return ok && strings.EqualFold(name, label)
}

// azCommandAliases are az's names of commands berth names otherwise, by
// examples key (exampleKey).
var azCommandAliases = map[string][]string{
	"hub sas-token": {"generate-sas-token"},
	"hub c2d":       {"c2d-message"},
}

// addAzAliases gives commands az's other names.
func addAzAliases(c *cobra.Command) {
	for _, sub := range c.Commands() {
		addAzAliases(sub)
	}
	if a, ok := azCommandAliases[exampleKey(c)]; ok {
		c.Aliases = append(c.Aliases, a...)
	}
}

// newComputeDeviceKeyCmd is az's `enrollment-group compute-device-key`:
// the device key of a group member, from the group's key read through the
// service API (berth device derive-key does it offline from a key).
func newComputeDeviceKeyCmd(g *globals) *cobra.Command {
	var groupID, regID string
	cmd := &cobra.Command{
		Use:   "compute-device-key [GROUP-ID]",
		Short: "Print the device key of a member of a symmetric-key enrollment group (reads the group's key)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := idArg(args, groupID, "enrollment-id")
			if err != nil {
				return err
			}
			if regID == "" {
				return errors.New("give the device's --registration-id")
			}
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			att, err := c.EnrollmentGroupAttestation(cmd.Context(), id)
			if err != nil {
				return err
			}
			if att.SymmetricKey == nil || att.SymmetricKey.PrimaryKey == "" {
				return fmt.Errorf("enrollment group %q has no symmetric key (attestation %s)", id, att.Type)
			}
			key, err := sas.DeriveKey(att.SymmetricKey.PrimaryKey, regID)
			if err != nil {
				return err
			}
			return g.print(key) // az prints it as a JSON string; -o tsv bare
		},
	}
	cmd.Flags().StringVar(&groupID, "enrollment-id", "", "ID of the enrollment group (aliases --eid, --gid, --group-id)")
	cmd.Flags().StringVar(&regID, "registration-id", "", "registration ID of the device (alias --rid)")
	aliasFlags(cmd.Flags(), map[string]string{"eid": "enrollment-id", "gid": "enrollment-id", "group-id": "enrollment-id", "rid": "registration-id"})
	return cmd
}
