package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/serviceclient"
)

// `berth hub create|list|show|update|delete` manage the IoT hubs one berth
// serves and how its DPS links them (az does this with `az iot hub
// create` and `az iot dps linked-hub …`). Like `berth policy` they go
// through berth's service API extension (serviceclient's hub calls), so
// they need the DPS service connection string of a policy with
// ServiceConfig, found as the enrollment commands find it — not the hub
// connection string the other `berth hub` commands use.

// hubManageAliases are other spellings of the flags: az's --hub-name and
// --apply-allocation-policies.
var hubManageAliases = map[string]string{
	"hub-name":                  "name",
	"apply-allocation-policies": "apply-allocation-policy",
	"retention-day":             "retention-days",
}

// newHubManageCmds are the hub management commands, for `berth hub`.
func newHubManageCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{newHubCreateCmd(g), newHubListCmd(g), newHubShowCmd(g), newHubUpdateCmd(g), newHubDeleteCmd(g), newHubConsumerGroupCmd(g)}
}

// namedHubCmd completes cmd as a command on one hub, named by the one
// argument or --name: run gets the name and a DPS service client. It is
// namedPolicyCmd with the hub's flag help and aliases.
func namedHubCmd(g *globals, cmd *cobra.Command, run func(ctx context.Context, c *serviceclient.Client, name string) error) *cobra.Command {
	namedPolicyCmd(g, &policyFlags{}, cmd, run)
	cmd.Flags().Lookup("name").Usage = "host name of the hub, as its connection strings and devices give it (alias --hub-name)"
	// Replaces the policy aliases, where --hub-name means another flag.
	aliasFlags(cmd.Flags(), hubManageAliases)
	return cmd
}

// linkFlags are how the DPS links a hub: create's and update's options.
type linkFlags struct {
	weight     int
	apply      bool
	region     string
	partitions int
	retention  int
}

func (lf *linkFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&lf.weight, "allocation-weight", 1, "weight of the hub in the DPS's hashed allocation (0 to 1000)")
	f.BoolVar(&lf.apply, "apply-allocation-policy", true, "make the hub a candidate for enrollments that name no hubs of their own")
	f.StringVar(&lf.region, "region", "", "region label, for geoLatency allocation")
	f.IntVar(&lf.retention, "retention-days", 0, "days the hub's telemetry is kept on its Event Hubs-compatible endpoint (1 to 7; 0: the telemetry stream's limit) (alias --retention-day)")
}

// spec is the HubSpec of the flags cmd was given (all of them when all):
// what is not set keeps its value on update.
func (lf *linkFlags) spec(cmd *cobra.Command, name string, all bool) serviceclient.HubSpec {
	s := serviceclient.HubSpec{Name: name}
	fs := cmd.Flags()
	if all || fs.Changed("allocation-weight") {
		s.AllocationWeight = &lf.weight
	}
	if all || fs.Changed("apply-allocation-policy") {
		s.ApplyAllocationPolicy = &lf.apply
	}
	if all || fs.Changed("region") {
		s.Region = &lf.region
	}
	// Left out, the service's defaults apply (4 partitions, the
	// stream's retention).
	if fs.Lookup("partition-count") != nil && fs.Changed("partition-count") {
		s.PartitionCount = &lf.partitions
	}
	if fs.Changed("retention-days") {
		s.RetentionDays = &lf.retention
	}
	return s
}

// createdHub is a hub as create prints it: with the connection string of
// its iothubowner policy, ready for `berth hub … --hub-connection-string`
// and the service SDKs.
type createdHub struct {
	hub.HubInfo
	ConnectionString string `json:"connectionString"`
}

func newHubCreateCmd(g *globals) *cobra.Command {
	var lf linkFlags
	cmd := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create an IoT hub, link it to the DPS and print it with its iothubowner connection string",
		Long: `Create an IoT hub served by this berth, with its own device registry,
shared access policies (IoT Hub's defaults) and telemetry subject, and link
it to the DPS. The name is the hub's host name: devices reach the hub by it
(TLS SNI, HTTP Host, MQTT username), so it must resolve to berth for them
(DNS or /etc/hosts). With berth's own CA the server certificate is reissued
at once to name the new hub; an operator's certificate must already name it.`,
	}
	namedHubCmd(g, cmd, func(ctx context.Context, c *serviceclient.Client, name string) error {
		// A PUT of an existing hub changes its links: refuse, as az does,
		// rather than change a hub in use.
		if _, err := c.GetHub(ctx, name); err == nil {
			return fmt.Errorf("hub %q already exists; use `berth hub update`", name)
		} else if !serviceclient.IsNotFound(err) {
			return err
		}
		out, _, err := c.PutHub(ctx, lf.spec(cmd, name, true))
		if err != nil {
			return err
		}
		owner, err := c.GetPolicy(ctx, out.Name, hub.OwnerPolicy)
		if err != nil {
			return fmt.Errorf("hub %s was created, but its %s policy could not be read (try `berth policy show --hub %s %s`): %w",
				out.Name, hub.OwnerPolicy, out.Name, hub.OwnerPolicy, err)
		}
		return g.print(createdHub{HubInfo: *out, ConnectionString: owner.ConnectionString(out.Name)})
	})
	lf.register(cmd)
	cmd.Flags().IntVar(&lf.partitions, "partition-count", hub.DefaultPartitionCount, "partitions of the hub's Event Hubs-compatible endpoint (1 to 32), fixed at creation")
	return cmd
}

func newHubListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the IoT hubs this berth serves, in creation order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			list, err := c.ListHubs(cmd.Context())
			if err != nil {
				return err
			}
			if list == nil {
				list = []hub.HubInfo{}
			}
			return g.print(list)
		},
	}
}

func newHubShowCmd(g *globals) *cobra.Command {
	return namedHubCmd(g, &cobra.Command{Use: "show [NAME]", Short: "Show an IoT hub and how the DPS links it"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			h, err := c.GetHub(ctx, name)
			if err != nil {
				return err
			}
			return g.print(h)
		})
}

func newHubUpdateCmd(g *globals) *cobra.Command {
	var lf linkFlags
	cmd := &cobra.Command{Use: "update [NAME]", Short: "Change how the DPS links an IoT hub (what is not given stays)"}
	namedHubCmd(g, cmd, func(ctx context.Context, c *serviceclient.Client, name string) error {
		s := lf.spec(cmd, name, false)
		if s.AllocationWeight == nil && s.ApplyAllocationPolicy == nil && s.Region == nil && s.RetentionDays == nil {
			return errors.New("nothing to update: give --allocation-weight, --apply-allocation-policy, --region or --retention-days")
		}
		// Update never creates: a typo in the name must not add a hub.
		if _, err := c.GetHub(ctx, name); err != nil {
			return err
		}
		out, _, err := c.PutHub(ctx, s)
		if err != nil {
			return err
		}
		return g.print(out)
	})
	lf.register(cmd)
	return cmd
}

func newHubDeleteCmd(g *globals) *cobra.Command {
	return namedHubCmd(g, &cobra.Command{
		Use:   "delete [NAME]",
		Short: "Delete an IoT hub with its devices, twins, queued messages and policies (not the default hub)",
	}, func(ctx context.Context, c *serviceclient.Client, name string) error {
		return c.DeleteHub(ctx, name)
	})
}
