package cli

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
)

// Module identities and module twins, shaped like `az iot hub
// module-identity …` and `az iot hub module-twin …`.

// moduleCmd is one module command: --device-id and --module-id, then run
// with the hub client.
func moduleCmd(g *globals, use, short string, run func(cmd *cobra.Command, deviceID, moduleID string) (any, error)) *cobra.Command {
	var dev, mod string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dev == "" {
				return errors.New("give the device with --device-id")
			}
			if mod == "" && cmd.Flags().Lookup("module-id") != nil {
				return errors.New("give the module with --module-id")
			}
			v, err := run(cmd, dev, mod)
			if err != nil {
				return err
			}
			if v == nil {
				return nil
			}
			return g.print(v)
		},
	}
	deviceIDFlag(cmd, &dev)
	if use != "list" {
		cmd.Flags().StringVarP(&mod, "module-id", "m", "", "module ID")
	}
	return cmd
}

func newModuleIdentityCmd(g *globals, hf *hubFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "module-identity", Short: "Manage the module identities of a device"}
	var managedBy, primary, secondary, etag string
	create := moduleCmd(g, "create", "Create a module identity (keys generated unless given)",
		func(cmd *cobra.Command, d, m string) (any, error) {
			c, err := hubClient(g, hf)
			if err != nil {
				return nil, err
			}
			auth, err := moduleKeys(primary, secondary)
			if err != nil {
				return nil, err
			}
			return c.CreateModule(cmd.Context(), &hub.Module{DeviceID: d, ModuleID: m, ManagedBy: managedBy, Authentication: auth})
		})
	update := moduleCmd(g, "update", "Update a module identity's keys or managedBy",
		func(cmd *cobra.Command, d, m string) (any, error) {
			c, err := hubClient(g, hf)
			if err != nil {
				return nil, err
			}
			auth, err := moduleKeys(primary, secondary)
			if err != nil {
				return nil, err
			}
			if etag == "" {
				etag = "*"
			}
			return c.UpdateModule(cmd.Context(), &hub.Module{DeviceID: d, ModuleID: m, ManagedBy: managedBy, Authentication: auth}, etag)
		})
	for _, c := range []*cobra.Command{create, update} {
		c.Flags().StringVar(&managedBy, "managed-by", "", "managedBy label (IoT Edge writes IotEdge)")
		c.Flags().StringVar(&primary, "primary-key", "", "primary symmetric key (base64; default: generated, or kept on update)")
		c.Flags().StringVar(&secondary, "secondary-key", "", "secondary symmetric key (base64; default: generated, or kept on update)")
	}
	update.Flags().StringVar(&etag, "etag", "", `update only if the module still has this etag (default "*": any)`)
	show := moduleCmd(g, "show", "Show a module identity, keys included",
		func(cmd *cobra.Command, d, m string) (any, error) {
			c, err := hubClient(g, hf)
			if err != nil {
				return nil, err
			}
			return c.GetModule(cmd.Context(), d, m)
		})
	list := moduleCmd(g, "list", "List the modules of a device",
		func(cmd *cobra.Command, d, _ string) (any, error) {
			c, err := hubClient(g, hf)
			if err != nil {
				return nil, err
			}
			return c.ListModules(cmd.Context(), d)
		})
	var delEtag string
	del := moduleCmd(g, "delete", "Delete a module identity (its connections are closed)",
		func(cmd *cobra.Command, d, m string) (any, error) {
			c, err := hubClient(g, hf)
			if err != nil {
				return nil, err
			}
			if err := c.DeleteModule(cmd.Context(), d, m, delEtag); err != nil {
				return nil, fmt.Errorf("delete module %s/%s: %w", d, m, err)
			}
			return nil, nil
		})
	del.Flags().StringVar(&delEtag, "etag", "", "delete only if the module still has this etag")
	cmd.AddCommand(create, show, list, update, del)
	return cmd
}

// moduleKeys is the authentication of --primary-key/--secondary-key: nil
// (generate, or keep on update) when neither is given.
func moduleKeys(primary, secondary string) (*hub.Authentication, error) {
	if primary == "" && secondary == "" {
		return nil, nil
	}
	for flag, v := range map[string]string{"primary-key": primary, "secondary-key": secondary} {
		if v != "" {
			if err := checkKey(flag, v); err != nil {
				return nil, err
			}
		}
	}
	return &hub.Authentication{Type: hub.AuthSAS, SymmetricKey: &hub.SymmetricKey{PrimaryKey: primary, SecondaryKey: secondary}}, nil
}

func newModuleTwinCmd(g *globals, hf *hubFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "module-twin", Short: "Show and change module twins: tags and desired properties"}
	show := moduleCmd(g, "show", "Show a module twin",
		func(cmd *cobra.Command, d, m string) (any, error) {
			c, err := hubClient(g, hf)
			if err != nil {
				return nil, err
			}
			return c.GetModuleTwin(cmd.Context(), d, m)
		})
	var tags, desired, etag string
	update := moduleCmd(g, "update", "Merge tags and desired properties into a module twin (null deletes a member)",
		func(cmd *cobra.Command, d, m string) (any, error) {
			var w twinWrite
			var err error
			if w.Tags, err = jsonObject("tags", tags); err != nil {
				return nil, err
			}
			des, err := jsonObject("desired", desired)
			if err != nil {
				return nil, err
			}
			if des != nil {
				w.Properties = &twinWriteDesired{Desired: des}
			}
			if w.Tags == nil && w.Properties == nil {
				return nil, errors.New("nothing to update: give --tags, --desired or both")
			}
			body, err := jsonMarshal(&w)
			if err != nil {
				return nil, err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return nil, err
			}
			return c.UpdateModuleTwin(cmd.Context(), d, m, body, etag)
		})
	update.Flags().StringVar(&tags, "tags", "", "tags to merge (JSON object)")
	update.Flags().StringVar(&desired, "desired", "", "desired properties to merge (JSON object)")
	update.Flags().StringVar(&etag, "etag", "", `update only if the twin still has this etag ("*": any; default: unconditionally)`)
	cmd.AddCommand(show, update)
	return cmd
}

func jsonMarshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode the twin: %w", err)
	}
	return b, nil
}
