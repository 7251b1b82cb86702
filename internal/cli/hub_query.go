package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
)

// newHubQueryCmd is `berth hub query -q "…"`, shaped like `az iot hub
// query`: it follows the continuation pages (up to --top items) and prints
// one JSON array. The language is in docs/hub-query.md.
func newHubQueryCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		q        string
		top      int
		pageSize int
	)
	cmd := &cobra.Command{
		Use:   "query",
		Short: "Query device twins with the IoT Hub query language (like az iot hub query)",
		Example: `  berth hub query -q "SELECT * FROM devices WHERE tags.location = 'plant-3'"
  berth hub query -q "SELECT properties.reported.fw AS fw, COUNT() AS n FROM devices GROUP BY properties.reported.fw"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if q == "" {
				return fmt.Errorf("--query-command (-q) is required")
			}
			if top < 0 {
				return fmt.Errorf("--top must not be negative")
			}
			if pageSize < 0 || pageSize > 10000 {
				return fmt.Errorf("--page-size must be between 1 and 10000")
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			items := []json.RawMessage{}
			cont := ""
			for {
				size := pageSize
				if top > 0 && (size == 0 || top-len(items) < size) {
					size = top - len(items)
				}
				page, err := c.Query(cmd.Context(), q, size, cont)
				if err != nil {
					return fmt.Errorf("query: %w", err)
				}
				items = append(items, page.Items...)
				cont = page.Continuation
				if cont == "" || top > 0 && len(items) >= top {
					break
				}
			}
			if top > 0 && len(items) > top {
				items = items[:top]
			}
			return g.print(items)
		},
	}
	cmd.Flags().StringVarP(&q, "query-command", "q", "", `the query, e.g. "SELECT * FROM devices WHERE status = 'enabled'"`)
	cmd.Flags().IntVar(&top, "top", 0, "return at most this many items (default: all)")
	cmd.Flags().IntVar(&pageSize, "page-size", 0, "items per request, x-ms-max-item-count (default: the hub's, 1000)")
	return cmd
}
