package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/serviceclient"
)

// enrollmentKind is what differs between individual enrollments and
// enrollment groups; enrollmentCmds builds both command sets (create,
// show, list, update, delete) from it, so that they cannot drift apart.
type enrollmentKind[T any] struct {
	use    string // the command: "enrollment", "enrollment-group"
	a      string // the noun with its article: "an individual enrollment"
	plural string // "individual enrollments"
	what   string // the noun in messages and flag help: "enrollment", "group"
	// idHelp and idAlias describe --enrollment-id and its other spelling.
	idHelp, idAlias string
	group           bool // the common flags are a group's (commonFlags.group)

	create func(id string) T
	common func(T) *dps.Common
	etag   func(T) string
	// extraFlags adds the kind's own flags to create (create true) or
	// update; the function it returns applies them to the item read or
	// created. nil for none.
	extraFlags func(cmd *cobra.Command, create bool) func(cmd *cobra.Command, item T)

	// The service API calls, in the serviceclient methods' own shape.
	get         func(c *serviceclient.Client, ctx context.Context, id string) (T, error)
	attestation func(c *serviceclient.Client, ctx context.Context, id string) (*dps.AttestationMechanism, error)
	list        func(c *serviceclient.Client, ctx context.Context, top int) ([]T, error)
	put         func(c *serviceclient.Client, ctx context.Context, item T, ifMatch string) (T, error)
	del         func(c *serviceclient.Client, ctx context.Context, id, ifMatch string) error
}

var individualEnrollments = enrollmentKind[*dps.IndividualEnrollment]{
	use: "enrollment", a: "an individual enrollment", plural: "individual enrollments", what: "enrollment",
	idHelp: "registration ID of the individual enrollment (aliases --registration-id, --eid)", idAlias: "registration-id",
	create: func(id string) *dps.IndividualEnrollment { return &dps.IndividualEnrollment{RegistrationID: id} },
	common: func(e *dps.IndividualEnrollment) *dps.Common { return &e.Common },
	etag:   func(e *dps.IndividualEnrollment) string { return e.ETag },
	extraFlags: func(cmd *cobra.Command, create bool) func(*cobra.Command, *dps.IndividualEnrollment) {
		var deviceID string
		help := "device ID in the IoT hub"
		if create {
			help += " (default: the registration ID)"
		}
		cmd.Flags().StringVar(&deviceID, "device-id", "", help)
		return func(cmd *cobra.Command, e *dps.IndividualEnrollment) {
			if create || cmd.Flags().Changed("device-id") {
				e.DeviceID = deviceID
			}
		}
	},
	get:         (*serviceclient.Client).GetEnrollment,
	attestation: (*serviceclient.Client).EnrollmentAttestation,
	list: func(c *serviceclient.Client, ctx context.Context, top int) ([]*dps.IndividualEnrollment, error) {
		return c.ListEnrollments(ctx, 0, top)
	},
	put: func(c *serviceclient.Client, ctx context.Context, e *dps.IndividualEnrollment, ifMatch string) (*dps.IndividualEnrollment, error) {
		e.RegistrationState = nil // read-only: the service computes it
		return c.PutEnrollment(ctx, e, ifMatch)
	},
	del: (*serviceclient.Client).DeleteEnrollment,
}

var enrollmentGroups = enrollmentKind[*dps.EnrollmentGroup]{
	use: "enrollment-group", a: "an enrollment group", plural: "enrollment groups", what: "group",
	idHelp: "ID of the enrollment group (aliases --group-id, --eid, --gid)", idAlias: "group-id", group: true,
	create:      func(id string) *dps.EnrollmentGroup { return &dps.EnrollmentGroup{EnrollmentGroupID: id} },
	common:      func(eg *dps.EnrollmentGroup) *dps.Common { return &eg.Common },
	etag:        func(eg *dps.EnrollmentGroup) string { return eg.ETag },
	get:         (*serviceclient.Client).GetEnrollmentGroup,
	attestation: (*serviceclient.Client).EnrollmentGroupAttestation,
	list: func(c *serviceclient.Client, ctx context.Context, top int) ([]*dps.EnrollmentGroup, error) {
		return c.ListEnrollmentGroups(ctx, 0, top)
	},
	put: (*serviceclient.Client).PutEnrollmentGroup,
	del: (*serviceclient.Client).DeleteEnrollmentGroup,
}

func newEnrollmentCmd(g *globals) *cobra.Command { return enrollmentCmds(g, individualEnrollments) }

func newEnrollmentGroupCmd(g *globals) *cobra.Command { return enrollmentCmds(g, enrollmentGroups) }

// enrollmentCmds is `berth enrollment` or `berth enrollment-group`.
func enrollmentCmds[T any](g *globals, k enrollmentKind[T]) *cobra.Command {
	cmd := &cobra.Command{
		Use:   k.use,
		Short: "Manage " + k.plural,
	}
	cmd.AddCommand(k.createCmd(g), k.showCmd(g), k.listCmd(g), k.updateCmd(g), k.deleteCmd(g))
	// az's `az iot dps enrollment[-group] registration …`: the same
	// commands as `berth registration …` (list --gid takes the group).
	cmd.AddCommand(newRegistrationCmd(g))
	if k.group {
		cmd.AddCommand(newComputeDeviceKeyCmd(g)) // az.go
	}
	return cmd
}

// idFlag adds --enrollment-id with the kind's alias.
func (k enrollmentKind[T]) idFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVar(id, "enrollment-id", "", k.idHelp)
	// az spells it --enrollment-id/--eid, and a group's also --gid.
	aliases := map[string]string{k.idAlias: "enrollment-id", "eid": "enrollment-id"}
	if k.group {
		aliases["gid"] = "enrollment-id"
	}
	aliasFlags(cmd.Flags(), aliases)
}

// oneCmd completes cmd as a command on one item, named by the one argument
// or --enrollment-id: run gets the ID and a client.
func (k enrollmentKind[T]) oneCmd(g *globals, cmd *cobra.Command, run func(cmd *cobra.Command, c *serviceclient.Client, id string) error) *cobra.Command {
	var idFlag string
	cmd.Args = cobra.MaximumNArgs(1)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		id, err := idArg(args, idFlag, "enrollment-id")
		if err != nil {
			return err
		}
		c, err := serviceClient(g)
		if err != nil {
			return err
		}
		return run(cmd, c, id)
	}
	k.idFlag(cmd, &idFlag)
	return cmd
}

func (k enrollmentKind[T]) createCmd(g *globals) *cobra.Command {
	cf := commonFlags{group: k.group}
	var extra func(*cobra.Command, T)
	cmd := &cobra.Command{Use: "create [ID]", Short: "Create " + k.a}
	// The item is built before the client is resolved: a bad flag is
	// reported without looking for a berth.
	var idFlag string
	cmd.Args = cobra.MaximumNArgs(1)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		id, err := idArg(args, idFlag, "enrollment-id")
		if err != nil {
			return err
		}
		item := k.create(id)
		if extra != nil {
			extra(cmd, item)
		}
		if err := cf.apply(cmd.Flags(), k.common(item)); err != nil {
			return err
		}
		c, err := serviceClient(g)
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		// A PUT without If-Match replaces: refuse to overwrite (and
		// rotate the keys of) one that exists.
		if _, err := k.get(c, ctx, id); err == nil {
			return fmt.Errorf("%s %q already exists; use `berth %s update`", k.noun(), id, k.use)
		} else if !serviceclient.IsNotFound(err) {
			return err
		}
		out, err := k.put(c, ctx, item, "")
		if err != nil {
			return err
		}
		return g.print(out)
	}
	k.idFlag(cmd, &idFlag)
	if k.extraFlags != nil {
		extra = k.extraFlags(cmd, true)
	}
	cf.register(cmd.Flags())
	return cmd
}

// noun is the kind in "… already exists" messages.
func (k enrollmentKind[T]) noun() string {
	if k.group {
		return "enrollment group"
	}
	return "enrollment"
}

func (k enrollmentKind[T]) showCmd(g *globals) *cobra.Command {
	var showKeys bool
	cmd := k.oneCmd(g, &cobra.Command{Use: "show [ID]", Short: "Show " + k.a},
		func(cmd *cobra.Command, c *serviceclient.Client, id string) error {
			ctx := cmd.Context()
			item, err := k.get(c, ctx, id)
			if err != nil {
				return err
			}
			if showKeys {
				if err := k.withKeys(ctx, c, id, item); err != nil {
					return err
				}
			}
			return g.print(item)
		})
	cmd.Flags().BoolVar(&showKeys, "show-keys", false, "include the symmetric keys")
	return cmd
}

// withKeys replaces the attestation of item, read with keys hidden, by the
// one with keys, so that a read-modify-write does not send empty keys
// (which a service could take as "generate new ones").
func (k enrollmentKind[T]) withKeys(ctx context.Context, c *serviceclient.Client, id string, item T) error {
	a, err := k.attestation(c, ctx, id)
	if err != nil {
		return fmt.Errorf("read attestation: %w", err)
	}
	k.common(item).Attestation = a
	return nil
}

func (k enrollmentKind[T]) listCmd(g *globals) *cobra.Command {
	var top int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List " + k.plural,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if top < 0 {
				return errors.New("--top must not be negative")
			}
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			items, err := k.list(c, cmd.Context(), top)
			if err != nil {
				return err
			}
			if items == nil {
				items = []T{}
			}
			return g.print(items)
		},
	}
	cmd.Flags().IntVar(&top, "top", 0, "list at most this many (default all)")
	return cmd
}

func (k enrollmentKind[T]) updateCmd(g *globals) *cobra.Command {
	var etag string
	cf := commonFlags{group: k.group}
	var extra func(*cobra.Command, T)
	cmd := k.oneCmd(g, &cobra.Command{Use: "update [ID]", Short: "Update " + k.a + " (read, change the given settings, write back if unchanged meanwhile)"},
		func(cmd *cobra.Command, c *serviceclient.Client, id string) error {
			ctx := cmd.Context()
			item, err := k.get(c, ctx, id)
			if err != nil {
				return err
			}
			if err := k.withKeys(ctx, c, id, item); err != nil {
				return err
			}
			if err := cf.apply(cmd.Flags(), k.common(item)); err != nil {
				return err
			}
			if extra != nil {
				extra(cmd, item)
			}
			ifMatch := k.etag(item)
			if cmd.Flags().Changed("etag") {
				ifMatch = etag
			}
			out, err := k.put(c, ctx, item, ifMatch)
			if err != nil {
				return err
			}
			return g.print(out)
		})
	if k.extraFlags != nil {
		extra = k.extraFlags(cmd, false)
	}
	cmd.Flags().StringVar(&etag, "etag", "", "update only if the "+k.what+" still has this etag (default: the etag just read)")
	cf.register(cmd.Flags())
	return cmd
}

func (k enrollmentKind[T]) deleteCmd(g *globals) *cobra.Command {
	var etag string
	cmd := k.oneCmd(g, &cobra.Command{Use: "delete [ID]", Short: "Delete " + k.a},
		func(cmd *cobra.Command, c *serviceclient.Client, id string) error {
			return k.del(c, cmd.Context(), id, etag)
		})
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the "+k.what+" has this etag")
	return cmd
}
