package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
)

// Device twins and direct methods, shaped like `az iot hub device-twin …`
// and `az iot hub invoke-device-method`.

// maxJSONInput bounds a JSON document read from a file or stdin: ten
// times the largest twin section or method payload the hub takes, so
// that a wrong file (a disk image) is refused rather than read whole.
const maxJSONInput = 10 * hub.MaxMethodPayload

// jsonInput reads a flag whose value is JSON, as az's JSON arguments are:
// the JSON itself, "-" for stdin, or else the path of a file holding it.
// Inline JSON is tried first, so `{}` is never looked up as a file.
func jsonInput(cmd *cobra.Command, flag, v string) (json.RawMessage, error) {
	if t := bytes.TrimSpace([]byte(v)); json.Valid(t) {
		return json.RawMessage(t), nil
	}
	var r io.Reader
	from := v
	if v == "-" {
		r, from = cmd.InOrStdin(), "stdin"
	} else {
		f, err := os.Open(v)
		if err != nil {
			return nil, fmt.Errorf("--%s is neither JSON nor a file: %w", flag, err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxJSONInput+1))
	if err != nil {
		return nil, fmt.Errorf("--%s: read %s: %w", flag, from, err)
	}
	if len(data) > maxJSONInput {
		return nil, fmt.Errorf("--%s: %s holds more than %d bytes", flag, from, maxJSONInput)
	}
	if t := bytes.TrimSpace(data); json.Valid(t) {
		return json.RawMessage(t), nil
	}
	return nil, fmt.Errorf("--%s: %s is not valid JSON", flag, from)
}

// twinWrite is what update and replace send: the tags and the desired
// properties, the parts of a twin the service may write.
type twinWrite struct {
	Tags       json.RawMessage   `json:"tags,omitempty"`
	Properties *twinWriteDesired `json:"properties,omitempty"`
}

type twinWriteDesired struct {
	Desired json.RawMessage `json:"desired"`
}

// sendTwin sends w as a merge (PATCH) or, with replace, as the new
// document (PUT), and prints the twin the hub answers.
func sendTwin(cmd *cobra.Command, g *globals, hf *hubFlags, deviceID string, w *twinWrite, etag string, replace bool) error {
	body, err := json.Marshal(w)
	if err != nil {
		return fmt.Errorf("encode the twin: %w", err)
	}
	c, err := hubClient(g, hf)
	if err != nil {
		return err
	}
	write, verb := c.UpdateTwin, "update"
	if replace {
		write, verb = c.ReplaceTwin, "replace"
	}
	tw, err := write(cmd.Context(), deviceID, body, etag)
	if err != nil {
		return fmt.Errorf("%s twin of %s: %w", verb, deviceID, err)
	}
	return g.print(tw)
}

// objectOrEmpty checks a section of a twin document read from --json: an
// object, or absent or null for an empty one (a replace empties what the
// document leaves out, and says so in the request).
func objectOrEmpty(what string, raw json.RawMessage) (json.RawMessage, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return json.RawMessage("{}"), nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(t, &obj); err != nil {
		return nil, fmt.Errorf("--json: %s must be a JSON object", what)
	}
	return json.RawMessage(t), nil
}

func newDeviceTwinCmd(g *globals, hf *hubFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device-twin",
		Short: "Show and change device twins: tags and desired properties",
	}
	cmd.AddCommand(newDeviceTwinShowCmd(g, hf), newDeviceTwinUpdateCmd(g, hf), newDeviceTwinReplaceCmd(g, hf))
	return cmd
}

func newDeviceTwinShowCmd(g *globals, hf *hubFlags) *cobra.Command {
	return newHubDeviceCmd(g, hf, "show", "Show a device twin", "show twin of",
		func(ctx context.Context, c *hubclient.Client, deviceID string) (any, error) {
			return c.GetTwin(ctx, deviceID)
		})
}

func newDeviceTwinUpdateCmd(g *globals, hf *hubFlags) *cobra.Command {
	var id, tags, desired, etag string
	cmd := &cobra.Command{
		Use:   "update [DEVICE-ID]",
		Short: "Merge tags and desired properties into a device twin (null deletes a member)",
		Long: `Merge --tags and --desired into the twin, as a PATCH: members set to null are
deleted, members not named stay as they are. The device is sent the desired
change if it is connected. Prints the twin after the update.

  berth hub device-twin update -d d1 --desired '{"rate":5,"old":null}' --tags '{"floor":3}'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, id, "device-id")
			if err != nil {
				return err
			}
			var w twinWrite
			if w.Tags, err = jsonObject("tags", tags); err != nil {
				return err
			}
			d, err := jsonObject("desired", desired)
			if err != nil {
				return err
			}
			if d != nil {
				w.Properties = &twinWriteDesired{Desired: d}
			}
			if w.Tags == nil && w.Properties == nil {
				return errors.New("nothing to update: give --tags, --desired or both")
			}
			return sendTwin(cmd, g, hf, deviceID, &w, etag, false)
		},
	}
	deviceIDFlag(cmd, &id)
	f := cmd.Flags()
	f.StringVar(&tags, "tags", "", "tags to merge (JSON object)")
	f.StringVar(&desired, "desired", "", "desired properties to merge (JSON object)")
	f.StringVar(&etag, "etag", "", `update only if the twin still has this etag ("*": any; default: unconditionally)`)
	return cmd
}

func newDeviceTwinReplaceCmd(g *globals, hf *hubFlags) *cobra.Command {
	var id, doc, etag string
	cmd := &cobra.Command{
		Use:   "replace [DEVICE-ID]",
		Short: "Replace the tags and desired properties of a device twin",
		Long: `Replace the twin's tags and desired properties with those of --json, as a PUT:
what the document leaves out is emptied. --json is the JSON itself, a file
holding it, or - for stdin; its "tags" and "properties.desired" are sent and
everything else (reported properties, etag, $metadata…) is ignored, so the
output of ` + "`device-twin show`" + ` can be edited and given back:

  berth hub device-twin show d1 > twin.json   # edit twin.json
  berth hub device-twin replace d1 --json twin.json --etag "$(jq -r .etag twin.json)"`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, id, "device-id")
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("json") {
				return errors.New("give the twin with --json (JSON, a file, or - for stdin)")
			}
			raw, err := jsonInput(cmd, "json", doc)
			if err != nil {
				return err
			}
			var in struct {
				Tags       json.RawMessage `json:"tags"`
				Properties *struct {
					Desired json.RawMessage `json:"desired"`
				} `json:"properties"`
			}
			if err := json.Unmarshal(raw, &in); err != nil {
				return errors.New("--json must be a JSON object with tags and properties.desired")
			}
			var w twinWrite
			if w.Tags, err = objectOrEmpty("tags", in.Tags); err != nil {
				return err
			}
			var desired json.RawMessage
			if in.Properties != nil {
				desired = in.Properties.Desired
			}
			d, err := objectOrEmpty("properties.desired", desired)
			if err != nil {
				return err
			}
			w.Properties = &twinWriteDesired{Desired: d}
			return sendTwin(cmd, g, hf, deviceID, &w, etag, true)
		},
	}
	deviceIDFlag(cmd, &id)
	f := cmd.Flags()
	f.StringVar(&doc, "json", "", "the new twin: JSON, a file holding it, or - for stdin")
	f.StringVar(&etag, "etag", "", `replace only if the twin still has this etag ("*": any; default: unconditionally)`)
	return cmd
}

func newInvokeMethodCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		id, name, payload string
		timeout, connect  int
	)
	cmd := &cobra.Command{
		Use:   "invoke-device-method [DEVICE-ID]",
		Short: "Call a direct method on a connected device and print its answer (like az iot hub invoke-device-method)",
		Long: `Call a direct method and print {"status": …, "payload": …}: the status and JSON the
device answered, whatever they are (the command succeeds when the device
answered). It fails with the hub's error when the device does not exist, is not
connected within --connect-timeout (DeviceNotOnline) or does not answer within
--timeout (GatewayTimeout).

--method-payload is the JSON itself, a file holding it, or - for stdin.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, id, "device-id")
			if err != nil {
				return err
			}
			if name == "" {
				return errors.New("give the method with --method-name")
			}
			p, err := jsonInput(cmd, "method-payload", payload)
			if err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			// Both timeouts are sent as given: the hub checks their ranges
			// and says so.
			res, err := c.InvokeMethod(cmd.Context(), deviceID, &hub.MethodRequest{
				MethodName: name, Payload: p, ResponseTimeoutInSeconds: &timeout, ConnectTimeoutInSeconds: &connect,
			})
			if err != nil {
				return fmt.Errorf("invoke method %s on device %s: %w", name, deviceID, err)
			}
			return g.print(res)
		},
	}
	deviceIDFlag(cmd, &id)
	f := cmd.Flags()
	f.StringVar(&name, "method-name", "", "name of the method")
	f.StringVar(&payload, "method-payload", "{}", "JSON payload of the call: JSON, a file holding it, or - for stdin")
	f.IntVar(&timeout, "timeout", int(hub.DefaultMethodResponseTimeout.Seconds()),
		fmt.Sprintf("seconds to wait for the device's answer (%d to %d)", int(hub.MinMethodResponseTimeout.Seconds()), int(hub.MaxMethodResponseTimeout.Seconds())))
	f.IntVar(&connect, "connect-timeout", 0,
		fmt.Sprintf("seconds to wait for the device to connect (0: it must be connected already; at most %d)", int(hub.MaxMethodConnectTimeout.Seconds())))
	aliasFlags(f, map[string]string{"mn": "method-name", "mp": "method-payload", "to": "timeout"})
	return cmd
}
