package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
)

// Cloud-to-device messages, shaped like `az iot device c2d-message send`
// and `… purge`. The send goes through berth's REST extension (Azure IoT
// Hub takes C2D sends over AMQP only).

func newC2DCmd(g *globals, hf *hubFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "c2d",
		Short: "Send cloud-to-device messages, purge a device's queue, receive delivery feedback (like az iot device c2d-message)",
	}
	cmd.AddCommand(newC2DSendCmd(g, hf), newC2DPurgeCmd(g, hf), newC2DFeedbackCmd(g, hf))
	return cmd
}

// checkAck normalises --ack.
func checkAck(v string) (string, error) {
	switch s := strings.ToLower(strings.TrimSpace(v)); s {
	case hub.AckNone, hub.AckPositive, hub.AckNegative, hub.AckFull:
		return s, nil
	}
	return "", fmt.Errorf("--ack %q: use none, positive, negative or full", v)
}

// parseExpiry reads --expiry: a lifetime from now (a Go duration such as
// 10m), an RFC 3339 time, or az's --expiry-time-utc form, milliseconds
// since the Unix epoch.
func parseExpiry(v string, now time.Time) (time.Time, error) {
	v = strings.TrimSpace(v)
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--expiry %q: a lifetime must be positive", v)
		}
		return now.Add(d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
		return time.UnixMilli(ms), nil
	}
	return time.Time{}, fmt.Errorf("--expiry %q: want a lifetime such as 10m, an RFC 3339 time such as 2030-01-02T15:04:05Z, or Unix milliseconds", v)
}

// parseAppProps reads az's --props form, "a=1;b=2": names keep their
// order, a value runs from the first '=' to the next ';' (so it may hold
// '='), and a name given again replaces its earlier value in place, as
// az's dictionary does.
func parseAppProps(v string) ([]hub.Property, error) {
	var out []hub.Property
	for _, part := range strings.Split(v, ";") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("--props %q: want name=value pairs separated by ';'", part)
		}
		if i := propIndex(out, name); i >= 0 {
			out[i].Value = value
			continue
		}
		out = append(out, hub.Property{Name: name, Value: value})
	}
	return out, nil
}

func propIndex(ps []hub.Property, name string) int {
	for i, p := range ps {
		if p.Name == name {
			return i
		}
	}
	return -1
}

// c2dFlags are the options of c2d send.
type c2dFlags struct {
	id, data, dataFile                    string
	messageID, correlationID, userID, ack string
	contentType, contentEncoding, expiry  string
	props                                 string
}

// message builds the message the flags describe.
func (f *c2dFlags) message(cmd *cobra.Command, now time.Time) (*hubclient.C2DMessage, error) {
	fs := cmd.Flags()
	m := &hubclient.C2DMessage{
		Body:            []byte(f.data),
		MessageID:       f.messageID,
		CorrelationID:   f.correlationID,
		UserID:          f.userID,
		ContentType:     f.contentType,
		ContentEncoding: f.contentEncoding,
	}
	if fs.Changed("data-file") {
		var r io.Reader = cmd.InOrStdin()
		from := "stdin"
		if f.dataFile != "-" {
			file, err := os.Open(f.dataFile)
			if err != nil {
				return nil, fmt.Errorf("--data-file: %w", err)
			}
			defer file.Close()
			r, from = file, f.dataFile
		}
		// One byte over the hub's limit is enough to know the hub would
		// refuse it; the hub says so with its own message.
		body, err := io.ReadAll(io.LimitReader(r, hub.MaxC2DMessageSize+1))
		if err != nil {
			return nil, fmt.Errorf("--data-file: read %s: %w", from, err)
		}
		if len(body) > hub.MaxC2DMessageSize {
			return nil, fmt.Errorf("--data-file: %s is over the hub's %d bytes limit for a message", from, hub.MaxC2DMessageSize)
		}
		m.Body = body
	}
	if fs.Changed("ack") {
		ack, err := checkAck(f.ack)
		if err != nil {
			return nil, err
		}
		m.Ack = ack
	}
	if fs.Changed("expiry") {
		t, err := parseExpiry(f.expiry, now)
		if err != nil {
			return nil, err
		}
		m.Expiry = t
	}
	if fs.Changed("props") {
		props, err := parseAppProps(f.props)
		if err != nil {
			return nil, err
		}
		m.App = props
	}
	return m, nil
}

func newC2DSendCmd(g *globals, hf *hubFlags) *cobra.Command {
	var f c2dFlags
	cmd := &cobra.Command{
		Use:   "send [DEVICE-ID]",
		Short: "Queue a cloud-to-device message for a device",
		Long: `Queue a message for a device and print what the hub assigned:
{"messageId", "sequenceNumber", "enqueuedTimeUtc", "expiryTimeUtc"}. The device
receives it when it is connected (MQTT) or polls (HTTPS); the hub keeps at most
50 queued messages a device, of at most 64 KB each.

The body is --data, or the bytes of --data-file (- for stdin); empty without
either. --props sets application properties as az does: "a=1;b=2".

  berth hub c2d send -d d1 --data '{"led":"on"}' --content-type application/json --props "prio=high" --expiry 10m`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, f.id, "device-id")
			if err != nil {
				return err
			}
			m, err := f.message(cmd, time.Now())
			if err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			res, err := c.SendC2D(cmd.Context(), deviceID, m)
			if err != nil {
				return fmt.Errorf("send to device %s: %w", deviceID, err)
			}
			return g.print(res)
		},
	}
	deviceIDFlag(cmd, &f.id)
	fs := cmd.Flags()
	fs.StringVar(&f.data, "data", "", "message body (text)")
	fs.StringVar(&f.dataFile, "data-file", "", "file holding the message body, or - for stdin")
	fs.StringVar(&f.messageID, "message-id", "", "message ID (default: generated by the hub)")
	fs.StringVar(&f.correlationID, "correlation-id", "", "correlation ID")
	fs.StringVar(&f.userID, "user-id", "", "user ID")
	fs.StringVar(&f.ack, "ack", "", "delivery feedback to ask for: none, positive, negative or full (default none)")
	fs.StringVar(&f.contentType, "content-type", "", "content type of the body, e.g. application/json")
	fs.StringVar(&f.contentEncoding, "content-encoding", "", "content encoding of the body, e.g. utf-8")
	fs.StringVar(&f.expiry, "expiry", "", "when the hub stops trying to deliver: a lifetime (10m), an RFC 3339 time, or Unix milliseconds (default: the hub's, 1h)")
	fs.StringVar(&f.props, "props", "", `application properties, "name=value;name=value"`)
	aliasFlags(fs, map[string]string{
		"da": "data", "data-file-path": "data-file", "dfp": "data-file",
		"mid": "message-id", "cid": "correlation-id", "uid": "user-id",
		"ct": "content-type", "ce": "content-encoding",
		"expiry-time-utc": "expiry", "properties": "props",
	})
	cmd.MarkFlagsMutuallyExclusive("data", "data-file")
	return cmd
}

// purgeResult is what c2d purge prints: IoT Hub's PurgeMessageQueueResult,
// as az prints it.
type purgeResult struct {
	TotalMessagesPurged int     `json:"totalMessagesPurged"`
	DeviceID            string  `json:"deviceId"`
	ModuleID            *string `json:"moduleId"`
}

func newC2DPurgeCmd(g *globals, hf *hubFlags) *cobra.Command {
	return newHubDeviceCmd(g, hf, "purge", "Delete every cloud-to-device message queued for a device", "purge the queue of",
		func(ctx context.Context, c *hubclient.Client, deviceID string) (any, error) {
			n, err := c.PurgeC2D(ctx, deviceID)
			if err != nil {
				return nil, err
			}
			return purgeResult{TotalMessagesPurged: n, DeviceID: deviceID}, nil
		})
}
