package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
)

// Automatic device configurations, shaped like `az iot hub configuration
// …` (docs/configurations.md).

// jsonArg reads a JSON flag value given inline or, as az allows, from a
// file named after an @.
func jsonArg(flag, v string) ([]byte, error) {
	if strings.HasPrefix(v, "@") {
		b, err := os.ReadFile(v[1:])
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", flag, err)
		}
		v = string(b)
	}
	if !json.Valid([]byte(v)) {
		return nil, fmt.Errorf("--%s is not valid JSON", flag)
	}
	return []byte(v), nil
}

// configurationContent reads --content: {"deviceContent": …} or
// {"content": {"deviceContent": …}}, as az takes it.
func configurationContent(v string) (hub.ConfigurationContent, error) {
	var out hub.ConfigurationContent
	b, err := jsonArg("content", v)
	if err != nil {
		return out, err
	}
	var wrapped struct {
		Content *hub.ConfigurationContent `json:"content"`
	}
	if err := json.Unmarshal(b, &wrapped); err == nil && wrapped.Content != nil {
		return *wrapped.Content, nil
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, fmt.Errorf("--content: %w", err)
	}
	return out, nil
}

// configurationMetrics reads --metrics: {"queries": …} or {"metrics":
// {"queries": …}}.
func configurationMetrics(v string) (map[string]string, error) {
	b, err := jsonArg("metrics", v)
	if err != nil {
		return nil, err
	}
	var m struct {
		Queries map[string]string `json:"queries"`
		Metrics *struct {
			Queries map[string]string `json:"queries"`
		} `json:"metrics"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("--metrics: %w", err)
	}
	if m.Metrics != nil {
		return m.Metrics.Queries, nil
	}
	return m.Queries, nil
}

func newConfigurationCmd(g *globals, hf *hubFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "configuration", Short: "Manage automatic device configurations (like az iot hub configuration)"}
	var id string
	idFlag := func(c *cobra.Command) {
		c.Flags().StringVarP(&id, "config-id", "c", "", "configuration ID (lower case)")
	}
	needID := func() error {
		if id == "" {
			return errors.New("give the configuration with --config-id")
		}
		return nil
	}

	var content, target, labels, metrics string
	var priority int
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a configuration: desired properties applied to the devices its target condition selects",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needID(); err != nil {
				return err
			}
			if content == "" {
				return errors.New("give the content with --content")
			}
			cfg := &hub.Configuration{ID: id, TargetCondition: target, Priority: priority}
			var err error
			if cfg.Content, err = configurationContent(content); err != nil {
				return err
			}
			if labels != "" {
				b, err := jsonArg("labels", labels)
				if err != nil {
					return err
				}
				if err := json.Unmarshal(b, &cfg.Labels); err != nil {
					return fmt.Errorf("--labels must be a JSON object of strings: %w", err)
				}
			}
			if metrics != "" {
				if cfg.Metrics.Queries, err = configurationMetrics(metrics); err != nil {
					return err
				}
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			out, err := c.CreateConfiguration(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("create configuration %s: %w", id, err)
			}
			return printJSON(g.stdout, out)
		},
	}
	idFlag(create)
	create.Flags().StringVar(&content, "content", "", `content, JSON or @file: {"deviceContent":{"properties.desired.x":…}}, or {"moduleContent":…} with a target condition FROM devices.modules WHERE …`)
	create.Flags().StringVar(&target, "target-condition", "", "target condition, the WHERE of a device query (empty: no device)")
	create.Flags().IntVar(&priority, "priority", 0, "priority: the highest among the configurations a device matches is applied")
	create.Flags().StringVar(&labels, "labels", "", `labels, JSON or @file: {"key":"value"}`)
	create.Flags().StringVar(&metrics, "metrics", "", `custom metrics, JSON or @file: {"queries":{"name":"SELECT deviceId FROM devices WHERE …"}}`)

	show := &cobra.Command{
		Use:   "show",
		Short: "Show a configuration with its metrics counted now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needID(); err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			out, err := c.GetConfiguration(cmd.Context(), id)
			if err != nil {
				return fmt.Errorf("show configuration %s: %w", id, err)
			}
			return printJSON(g.stdout, out)
		},
	}
	idFlag(show)

	var top int
	list := &cobra.Command{
		Use:   "list",
		Short: "List the hub's configurations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			out, err := c.ListConfigurations(cmd.Context(), top)
			if err != nil {
				return fmt.Errorf("list configurations: %w", err)
			}
			return printJSON(g.stdout, out)
		},
	}
	list.Flags().IntVar(&top, "top", 0, "at most this many (default: all)")

	var etag string
	del := &cobra.Command{
		Use:   "delete",
		Short: "Delete a configuration (the devices it applied to lose its content and take the next one in line)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needID(); err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			if err := c.DeleteConfiguration(cmd.Context(), id, etag); err != nil {
				return fmt.Errorf("delete configuration %s: %w", id, err)
			}
			return nil
		},
	}
	idFlag(del)
	del.Flags().StringVar(&etag, "etag", "", "delete only if the configuration still has this etag")
	cmd.AddCommand(create, show, list, del)
	return cmd
}
