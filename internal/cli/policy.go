package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/serviceclient"
)

// `berth policy …` manages the shared access policies of the DPS and, with
// --hub, of its IoT hub, at run time: the verbs of `az iot dps policy …`
// and `az iot hub policy …`. Azure does this through Azure Resource
// Manager; berth through its service API extension (serviceclient's
// policy calls), so the commands need the DPS service connection string of
// a policy with ServiceConfig, found as the enrollment commands find it.

// policyFlags are the options every `berth policy` command shares.
type policyFlags struct {
	hub  string // hub host name; "" for the DPS's policies
	name string
}

func newPolicyCmd(g *globals) *cobra.Command {
	pf := &policyFlags{}
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Manage the shared access policies of the DPS or, with --hub, of its IoT hub (like `az iot dps|hub policy …`)",
		Long: `Manage shared access policies at run time: list, show, create, update,
delete and renew-key. Changes take effect at once, without a restart.

Without --hub the commands work on the DPS's policies (rights ServiceConfig,
EnrollmentRead, EnrollmentWrite, RegistrationStatusRead,
RegistrationStatusWrite); with --hub NAME on the policies of that hub
(RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect). Either way they
authenticate with the DPS service connection string, whose policy must have
ServiceConfig.

Rotating a key without downtime: move the clients to the secondary key
(secondaryConnectionString), renew-key --renew-key primary, move them back to
the new primary, renew-key --renew-key secondary.`,
	}
	cmd.PersistentFlags().StringVar(&pf.hub, "hub", "", "host name of the IoT hub whose policies to manage, as its connection strings give it (alias --hub-name; default: the DPS's policies)")
	cmd.AddCommand(newPolicyListCmd(g, pf), newPolicyShowCmd(g, pf), newPolicyCreateCmd(g, pf),
		newPolicyUpdateCmd(g, pf), newPolicyDeleteCmd(g, pf), newPolicyRenewKeyCmd(g, pf))
	return cmd
}

// policyAliases are other spellings of the policy commands' flags: az's
// (az iot dps policy says --policy-name/--pn, az iot hub policy --hub-name,
// --permissions and --rk) and --key-type, the REST parameter's name. One
// map serves every command: a flag set has a single normalising function.
var policyAliases = map[string]string{
	"hub-name": "hub", "policy-name": "name", "pn": "name",
	"permissions": "rights", "rk": "renew-key", "key-type": "renew-key",
}

// policyWithConnectionStrings is a policy as create and renew-key print it:
// with the service connection strings of both keys, ready to hand out.
type policyWithConnectionStrings struct {
	policy.Policy
	PrimaryConnectionString   string `json:"primaryConnectionString"`
	SecondaryConnectionString string `json:"secondaryConnectionString"`
}

// withConnectionStrings adds the connection strings of p. Their HostName
// is the hub's name for a hub policy, and otherwise the DPS host of the
// connection string the command used, as the client reaches it.
func withConnectionStrings(c *serviceclient.Client, hub string, p *policy.Policy) policyWithConnectionStrings {
	host := hub
	if host == "" {
		host = c.HostName()
	}
	secondary := *p
	secondary.PrimaryKey = p.SecondaryKey
	return policyWithConnectionStrings{
		Policy:                    *p,
		PrimaryConnectionString:   p.ConnectionString(host),
		SecondaryConnectionString: secondary.ConnectionString(host),
	}
}

// whose names the policy set in messages.
func (pf *policyFlags) whose() string {
	if pf.hub == "" {
		return "the DPS"
	}
	return "hub " + pf.hub
}

func newPolicyListCmd(g *globals, pf *policyFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the policies, keys included",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			list, err := c.ListPolicies(cmd.Context(), pf.hub)
			if err != nil {
				return err
			}
			if list == nil {
				list = []policy.Policy{}
			}
			return g.print(list)
		},
	}
	aliasFlags(cmd.Flags(), policyAliases)
	return cmd
}

func newPolicyShowCmd(g *globals, pf *policyFlags) *cobra.Command {
	return namedPolicyCmd(g, pf, &cobra.Command{Use: "show [NAME]", Short: "Show a policy, keys included"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			p, err := c.GetPolicy(ctx, pf.hub, name)
			if err != nil {
				return err
			}
			return g.print(p)
		})
}

// namedPolicyCmd completes cmd as a command on one policy, named by the
// one argument or --name: run gets the name and a client.
func namedPolicyCmd(g *globals, pf *policyFlags, cmd *cobra.Command, run func(ctx context.Context, c *serviceclient.Client, name string) error) *cobra.Command {
	cmd.Args = cobra.MaximumNArgs(1)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		name, err := idArg(args, pf.name, "name")
		if err != nil {
			return err
		}
		c, err := serviceClient(g)
		if err != nil {
			return err
		}
		return run(cmd.Context(), c, name)
	}
	cmd.Flags().StringVarP(&pf.name, "name", "n", "", "name of the policy (alias --policy-name)")
	aliasFlags(cmd.Flags(), policyAliases)
	return cmd
}

// keyFlags are the optional keys of create and update.
type keyFlags struct {
	rights                   []string
	primaryKey, secondaryKey string
}

func (kf *keyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&kf.rights, "rights", nil, "rights of the policy, comma-separated or repeated (DPS: ServiceConfig, EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite; hub: RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect)")
	f.StringVar(&kf.primaryKey, "primary-key", "", "primary key (base64 of 16 to 64 bytes); default: generated for a new policy, kept on update")
	f.StringVar(&kf.secondaryKey, "secondary-key", "", "secondary key (base64 of 16 to 64 bytes); default: generated for a new policy, kept on update")
}

// policy is the policy to PUT: name, rights and the keys given.
func (kf *keyFlags) policy(name string) policy.Policy {
	var rights []string
	for _, r := range kf.rights {
		if r = strings.TrimSpace(r); r != "" {
			rights = append(rights, r)
		}
	}
	return policy.Policy{KeyName: name, Rights: rights, PrimaryKey: kf.primaryKey, SecondaryKey: kf.secondaryKey}
}

func newPolicyCreateCmd(g *globals, pf *policyFlags) *cobra.Command {
	var kf keyFlags
	cmd := namedPolicyCmd(g, pf, &cobra.Command{Use: "create [NAME]", Short: "Create a policy and print it with its connection strings"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			p := kf.policy(name)
			if len(p.Rights) == 0 {
				return errors.New("give the policy's rights with --rights")
			}
			// A PUT of an existing policy replaces its rights (and keys, when
			// given): refuse, as az does, rather than change a policy in use.
			if _, err := c.GetPolicy(ctx, pf.hub, name); err == nil {
				return fmt.Errorf("policy %q of %s already exists; use `berth policy update`", name, pf.whose())
			} else if !serviceclient.IsNotFound(err) {
				return err
			}
			out, _, err := c.PutPolicy(ctx, pf.hub, p)
			if err != nil {
				return err
			}
			return g.print(withConnectionStrings(c, pf.hub, out))
		})
	kf.register(cmd)
	return cmd
}

func newPolicyUpdateCmd(g *globals, pf *policyFlags) *cobra.Command {
	var kf keyFlags
	cmd := &cobra.Command{Use: "update [NAME]", Short: "Change a policy's rights, or set its keys (what is not given stays)"}
	namedPolicyCmd(g, pf, cmd, func(ctx context.Context, c *serviceclient.Client, name string) error {
		fs := cmd.Flags()
		if !fs.Changed("rights") && !fs.Changed("primary-key") && !fs.Changed("secondary-key") {
			return errors.New("nothing to update: give --rights, --primary-key or --secondary-key")
		}
		p := kf.policy(name)
		if fs.Changed("rights") && len(p.Rights) == 0 {
			return errors.New("--rights is empty: a policy needs at least one right")
		}
		// Update never creates: a typo in the name must not add a policy.
		// The rights not given are the ones just read.
		cur, err := c.GetPolicy(ctx, pf.hub, name)
		if err != nil {
			return err
		}
		if !fs.Changed("rights") {
			p.Rights = cur.Rights
		}
		out, _, err := c.PutPolicy(ctx, pf.hub, p)
		if err != nil {
			return err
		}
		return g.print(out)
	})
	kf.register(cmd)
	return cmd
}

func newPolicyDeleteCmd(g *globals, pf *policyFlags) *cobra.Command {
	return namedPolicyCmd(g, pf, &cobra.Command{Use: "delete [NAME]", Short: "Delete a policy (the DPS keeps at least one policy with ServiceConfig)"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			return c.DeletePolicy(ctx, pf.hub, name)
		})
}

func newPolicyRenewKeyCmd(g *globals, pf *policyFlags) *cobra.Command {
	var keyType string
	cmd := namedPolicyCmd(g, pf, &cobra.Command{
		Use:   "renew-key [NAME]",
		Short: "Replace a policy's primary or secondary key, or swap them, and print its connection strings",
		Long: `Replace the primary or the secondary key with a new one, or swap the two.
Tokens and connection strings with a replaced key are refused at once, so
renew the key the clients are not using: move them to the secondary key,
renew the primary, move them back, renew the secondary.`,
	}, func(ctx context.Context, c *serviceclient.Client, name string) error {
		kt := strings.ToLower(keyType)
		if kt != policy.RenewPrimary && kt != policy.RenewSecondary && kt != policy.RenewSwap {
			return fmt.Errorf("--renew-key %q: use %s, %s or %s", keyType, policy.RenewPrimary, policy.RenewSecondary, policy.RenewSwap)
		}
		out, err := c.RenewPolicyKey(ctx, pf.hub, name, kt)
		if err != nil {
			return err
		}
		return g.print(withConnectionStrings(c, pf.hub, out))
	})
	cmd.Flags().StringVar(&keyType, "renew-key", "", "primary, secondary or swap (alias --rk, --key-type)")
	return cmd
}
