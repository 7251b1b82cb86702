package cli

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/serviceclient"
)

// `berth hub consumer-group create|list|show|delete` manage the consumer
// groups of a hub's Event Hubs-compatible endpoint (az iot hub
// consumer-group …), through the service API extension as the other hub
// management commands.

func newHubConsumerGroupCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "consumer-group", Short: "Manage the consumer groups of a hub's Event Hubs-compatible endpoint"}
	var hubName, name string
	withGroup := func(c *cobra.Command, needName bool, run func(ctx context.Context, sc *serviceclient.Client, hubName, group string) error) *cobra.Command {
		if needName {
			c.Args = cobra.MaximumNArgs(1)
		} else {
			c.Args = cobra.NoArgs
		}
		c.RunE = func(cmd *cobra.Command, args []string) error {
			group := name
			if needName {
				var err error
				if group, err = idArg(args, name, "name"); err != nil {
					return err
				}
			}
			h := hubName
			if h == "" {
				info, err := localconf.Read(g.dataDir)
				if err != nil || info.HubHostName == "" {
					return errors.New("give the hub with --hub-name")
				}
				h = info.HubHostName
			}
			sc, err := serviceClient(g)
			if err != nil {
				return err
			}
			return run(cmd.Context(), sc, h, group)
		}
		c.Flags().StringVar(&hubName, "hub-name", "", "host name of the hub (default: the local berth's hub)")
		if needName {
			c.Flags().StringVarP(&name, "name", "n", "", "name of the consumer group")
		}
		return c
	}
	cmd.AddCommand(
		withGroup(&cobra.Command{Use: "create [NAME]", Short: "Create a consumer group"}, true,
			func(ctx context.Context, sc *serviceclient.Client, h, group string) error {
				out, err := sc.PutConsumerGroup(ctx, h, group)
				if err != nil {
					return err
				}
				return printJSON(g.stdout, out)
			}),
		withGroup(&cobra.Command{Use: "list", Short: "List the consumer groups, $Default first"}, false,
			func(ctx context.Context, sc *serviceclient.Client, h, _ string) error {
				out, err := sc.ListConsumerGroups(ctx, h)
				if err != nil {
					return err
				}
				return printJSON(g.stdout, out)
			}),
		withGroup(&cobra.Command{Use: "delete [NAME]", Short: "Delete a consumer group ($Default stays)"}, true,
			func(ctx context.Context, sc *serviceclient.Client, h, group string) error {
				return sc.DeleteConsumerGroup(ctx, h, group)
			}),
	)
	return cmd
}
