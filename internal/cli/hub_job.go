package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
)

// jobClient is the hub client the job commands use.
type jobClient = *hubclient.Client

// newHubJobCmd is `berth hub job create|show|list|cancel`, shaped like `az
// iot hub job`: twin-update and method jobs over a query condition
// (docs/hub-jobs.md).
func newHubJobCmd(g *globals, hf *hubFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Schedule, show, list and cancel jobs: twin updates and direct methods on the devices a query selects (like az iot hub job)",
	}
	cmd.AddCommand(newHubJobCreateCmd(g, hf), newHubJobShowCmd(g, hf), newHubJobListCmd(g, hf), newHubJobCancelCmd(g, hf))
	return cmd
}

func newHubJobCreateCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		id, jobType, cond, patch, method, payload, start string
		respTimeout, connTimeout                         int
		ttl                                              int64
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Schedule a job",
		Example: `  berth hub job create --job-id fw-2 --job-type scheduleUpdateTwin -q "tags.floor = 3" --twin-patch '{"properties":{"desired":{"fw":"2.0"}}}'
  berth hub job create --job-id reboot-3 --job-type scheduleDeviceMethod -q "tags.floor = 3" --method-name reboot --start-time 2026-12-06T02:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" || cond == "" {
				return fmt.Errorf("--job-id and --query-condition (-q) are required")
			}
			req := &hub.JobRequest{JobID: id, Type: jobType, QueryCondition: cond}
			switch jobType {
			case hub.JobTypeUpdateTwin:
				if patch == "" {
					return fmt.Errorf("a %s job needs --twin-patch", jobType)
				}
				if !json.Valid([]byte(patch)) {
					return fmt.Errorf("--twin-patch is not valid JSON")
				}
				req.UpdateTwin = json.RawMessage(patch)
			case hub.JobTypeDeviceMethod:
				if method == "" {
					return fmt.Errorf("a %s job needs --method-name", jobType)
				}
				if payload == "" {
					payload = "null"
				}
				if !json.Valid([]byte(payload)) {
					return fmt.Errorf("--method-payload is not valid JSON")
				}
				req.CloudToDeviceMethod = &hub.JobMethod{MethodName: method, Payload: json.RawMessage(payload),
					ResponseTimeoutInSeconds: respTimeout, ConnectTimeoutInSeconds: connTimeout}
			default:
				return fmt.Errorf("--job-type must be %s or %s", hub.JobTypeUpdateTwin, hub.JobTypeDeviceMethod)
			}
			if start == "" {
				start = time.Now().UTC().Format(time.RFC3339Nano)
			}
			req.StartTime = &start
			if ttl > 0 {
				req.MaxExecutionTimeInSeconds = &ttl
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			job, err := c.CreateJob(cmd.Context(), id, req)
			if err != nil {
				return fmt.Errorf("job create: %w", err)
			}
			return printJSON(g.stdout, job)
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "job-id", "", "the job's ID (at most 64 letters, digits and dashes)")
	f.StringVar(&jobType, "job-type", "", "scheduleUpdateTwin or scheduleDeviceMethod")
	f.StringVarP(&cond, "query-condition", "q", "", `the devices, as a WHERE clause: "tags.floor = 3", "deviceId IN ['a', 'b']"`)
	f.StringVar(&patch, "twin-patch", "", `scheduleUpdateTwin: the patch, {"tags":{…},"properties":{"desired":{…}}}`)
	f.StringVar(&method, "method-name", "", "scheduleDeviceMethod: the method")
	f.StringVar(&payload, "method-payload", "", "scheduleDeviceMethod: the payload, JSON (default null)")
	f.IntVar(&respTimeout, "method-response-timeout", 0, "scheduleDeviceMethod: seconds each device has to answer (default 30)")
	f.IntVar(&connTimeout, "method-connect-timeout", 0, "scheduleDeviceMethod: seconds to wait for a device to connect (default 0)")
	f.StringVar(&start, "start-time", "", "when the job starts, ISO 8601 (default now)")
	f.Int64Var(&ttl, "ttl", 0, "the job's maximum execution time in seconds (default 3600)")
	return cmd
}

func jobIDCmd(g *globals, hf *hubFlags, use, short string, fn func(c jobClient, cmd *cobra.Command, id string) (*hub.Job, error)) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: "  berth hub job " + use + " --job-id fw-2",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				id = args[0]
			}
			if id == "" {
				return fmt.Errorf("--job-id is required")
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			job, err := fn(c, cmd, id)
			if err != nil {
				return fmt.Errorf("job %s: %w", use, err)
			}
			return printJSON(g.stdout, job)
		},
	}
	cmd.Flags().StringVar(&id, "job-id", "", "the job's ID")
	return cmd
}

func newHubJobShowCmd(g *globals, hf *hubFlags) *cobra.Command {
	return jobIDCmd(g, hf, "show", "Show a job with its device statistics", func(c jobClient, cmd *cobra.Command, id string) (*hub.Job, error) {
		return c.GetJob(cmd.Context(), id)
	})
}

func newHubJobCancelCmd(g *globals, hf *hubFlags) *cobra.Command {
	return jobIDCmd(g, hf, "cancel", "Cancel a job that has not finished", func(c jobClient, cmd *cobra.Command, id string) (*hub.Job, error) {
		return c.CancelJob(cmd.Context(), id)
	})
}

func newHubJobListCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		jobType, status string
		top             int
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the hub's jobs, of one type or status",
		Example: `  berth hub job list
  berth hub job list --job-type scheduleDeviceMethod --job-status running`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if top < 0 {
				return fmt.Errorf("--top must not be negative")
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			jobs := []hub.Job{}
			cont := ""
			for {
				page, err := c.ListJobs(cmd.Context(), jobType, strings.ToLower(status), 0, cont)
				if err != nil {
					return fmt.Errorf("job list: %w", err)
				}
				jobs = append(jobs, page.Jobs...)
				cont = page.Continuation
				if cont == "" || top > 0 && len(jobs) >= top {
					break
				}
			}
			if top > 0 && len(jobs) > top {
				jobs = jobs[:top]
			}
			return printJSON(g.stdout, jobs)
		},
	}
	cmd.Flags().StringVar(&jobType, "job-type", "", "only jobs of this type (scheduleUpdateTwin, scheduleDeviceMethod)")
	cmd.Flags().StringVar(&status, "job-status", "", "only jobs in this status (queued, scheduled, running, completed, failed, cancelled)")
	cmd.Flags().IntVar(&top, "top", 0, "return at most this many jobs (default: all)")
	return cmd
}
