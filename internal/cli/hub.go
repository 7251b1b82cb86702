package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/internal/svcconn"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/stream"
)

// The hub commands are shaped like `az iot hub …`: device identities,
// twins, direct methods and cloud-to-device messages through the hub's
// service REST API (package hubclient; hub_twin.go, hub_c2d.go),
// connection strings and SAS tokens, and monitor-events on berth's
// telemetry stream.
// Output is JSON, as az prints it; monitor-events prints one JSON object
// per line so scripts can read it as it comes.

// hubFlags are the options every `berth hub` command shares. They live in
// the tree NewRoot builds, like globals, so two trees never share them.
type hubFlags struct {
	connStr string // hub connection string (overrides client.json)
}

func addHubCommands(root *cobra.Command, g *globals) {
	hf := &hubFlags{}
	cmd := &cobra.Command{
		Use:   "hub",
		Short: "IoT hub: device identities and twins, direct methods, C2D messages, connection strings, SAS tokens, telemetry (like `az iot hub …`)",
	}
	cmd.PersistentFlags().StringVar(&hf.connStr, "hub-connection-string", os.Getenv("BERTH_HUB_CONNECTION_STRING"),
		"hub connection string, HostName=…;SharedAccessKeyName=…;SharedAccessKey=… (default: from the data directory of a local berth; env BERTH_HUB_CONNECTION_STRING)")

	identity := &cobra.Command{
		Use:   "device-identity",
		Short: "Manage device identities in the hub's registry",
	}
	identityConnStr := &cobra.Command{
		Use:   "connection-string",
		Short: "Show a device's connection string",
	}
	identityConnStr.AddCommand(newHubConnStringShowCmd(g, hf, true))
	identity.AddCommand(newDeviceIdentityCreateCmd(g, hf), newDeviceIdentityShowCmd(g, hf), newDeviceIdentityListCmd(g, hf),
		newDeviceIdentityUpdateCmd(g, hf), newDeviceIdentityDeleteCmd(g, hf), identityConnStr)

	connStr := &cobra.Command{
		Use:   "connection-string",
		Short: "Show the hub's or a device's connection string",
	}
	connStr.AddCommand(newHubConnStringShowCmd(g, hf, false))

	cmd.AddCommand(newModuleIdentityCmd(g, hf), newModuleTwinCmd(g, hf)) // hub_module.go
	cmd.AddCommand(identity, newDeviceTwinCmd(g, hf), newInvokeMethodCmd(g, hf), newC2DCmd(g, hf),
		connStr, newHubSASTokenCmd(g, hf), newMonitorEventsCmd(g, hf))
	cmd.AddCommand(newHubManageCmds(g)...) // create|list|show|update|delete (hub_manage.go)
	cmd.AddCommand(newHubQueryCmd(g, hf))  // hub_query.go
	root.AddCommand(cmd)
}

// ---- connection resolution ----

// hubTarget is a resolved hub connection: the connection string and, when
// it names the local berth's hub, that berth's CA and address.
type hubTarget struct {
	connStr string
	cs      hubclient.ConnectionString
	opts    hubclient.Options
}

// resolveHub works out where hub commands go, without any network
// traffic. Flags (and their environment variables) win; whatever they leave
// open comes from the client.json of a local berth, but its address and CA
// only when the connection string names that berth's hub: they would be
// wrong for any other.
func resolveHub(g *globals, hf *hubFlags) (*hubTarget, error) {
	connStr, caFile, address := hf.connStr, g.caFile, g.address
	var info *localconf.Info
	var infoErr error
	if connStr == "" || caFile == "" || address == "" {
		info, infoErr = localconf.Read(g.dataDir)
	}
	if connStr == "" {
		if infoErr != nil {
			return nil, fmt.Errorf("no hub connection string (pass --hub-connection-string or set BERTH_HUB_CONNECTION_STRING): %w", infoErr)
		}
		if info.HubConnectionString == "" {
			return nil, fmt.Errorf("no hub connection string in %s/%s: pass --hub-connection-string, or restart `berth serve`", g.dataDir, localconf.FileName)
		}
		connStr = info.HubConnectionString
	}
	cs, err := hubclient.ParseConnectionString(connStr)
	if err != nil {
		return nil, fmt.Errorf("--hub-connection-string: %w", err)
	}
	opts := hubclient.Options{CAFile: caFile, Address: address}
	switch {
	case info != nil && isLocalHub(info, cs.HostName):
		if caFile == "" {
			opts.CAFile = info.CAFile
		}
		if address == "" {
			opts.Address = info.HTTPSAddress
		}
	case info != nil && caFile == "" && info.CAFile != "":
		// Another hub: maybe one more hub of the local berth (berth hub
		// create), maybe a real one. Trusting the system roots and the
		// local development CA reaches either, at its own host:443.
		roots, err := svcconn.SystemRootsAnd("hub", info.CAFile)
		if err == nil {
			opts.HTTPClient = svcconn.HTTPClientWithRoots(cs.HostName, roots, address)
		}
	}
	return &hubTarget{connStr: connStr, cs: cs, opts: opts}, nil
}

// isLocalHub reports whether host is the hub of the berth info describes.
func isLocalHub(info *localconf.Info, host string) bool {
	if info.HubHostName != "" && strings.EqualFold(info.HubHostName, host) {
		return true
	}
	local, err := hubclient.ParseConnectionString(info.HubConnectionString)
	return err == nil && strings.EqualFold(local.HostName, host)
}

// hubClient resolves the hub and returns a registry client for it.
func hubClient(g *globals, hf *hubFlags) (*hubclient.Client, error) {
	t, err := resolveHub(g, hf)
	if err != nil {
		return nil, err
	}
	return hubclient.New(t.connStr, t.opts)
}

// localHubName is the hub host name when no connection string is needed
// (a token signed with a key given on the command line): the connection
// string's host, or else the local berth's hub.
func localHubName(g *globals, hf *hubFlags) (string, error) {
	if t, err := resolveHub(g, hf); err == nil {
		return t.cs.HostName, nil
	} else if hf.connStr != "" {
		return "", err // a connection string was given and is wrong: say so
	}
	info, err := localconf.Read(g.dataDir)
	if err != nil {
		return "", fmt.Errorf("no hub host name: pass --hub: %w", err)
	}
	if info.HubHostName == "" {
		return "", fmt.Errorf("no hub host name in %s/%s: pass --hub", g.dataDir, localconf.FileName)
	}
	return info.HubHostName, nil
}

// ---- device-identity ----

// deviceIDFlag adds --device-id (-d, as az has it).
func deviceIDFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVarP(id, "device-id", "d", "", "device ID")
}

// checkKey validates a symmetric key flag without ever quoting the key.
func checkKey(flag, v string) error {
	if k, err := base64.StdEncoding.DecodeString(v); err != nil || len(k) == 0 {
		return fmt.Errorf("--%s is not valid base64", flag)
	}
	return nil
}

// checkStatus normalises --status.
func checkStatus(v string) (string, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	if s != hub.StatusEnabled && s != hub.StatusDisabled {
		return "", fmt.Errorf("--status %q: use enabled or disabled", v)
	}
	return s, nil
}

// identityFlags are the settings create and update share.
type identityFlags struct {
	primaryKey, secondaryKey string
	status, statusReason     string
}

func (f *identityFlags) register(cmd *cobra.Command, create bool) {
	fs := cmd.Flags()
	keyHelp := "(base64)"
	if create {
		keyHelp = "(base64); generated by the hub when omitted"
	}
	fs.StringVar(&f.primaryKey, "primary-key", "", "primary symmetric key "+keyHelp)
	fs.StringVar(&f.secondaryKey, "secondary-key", "", "secondary symmetric key "+keyHelp)
	statusHelp := "enabled or disabled"
	if create {
		statusHelp += " (default enabled)"
	}
	fs.StringVar(&f.status, "status", "", statusHelp)
	fs.StringVar(&f.statusReason, "status-reason", "", "why the device has its status")
	aliasFlags(fs, map[string]string{"pk": "primary-key", "sk": "secondary-key", "sta": "status", "star": "status-reason"})
}

// apply writes the flags that were given into d: on create d is new, on
// update it is the device just read, keys included, so that settings not
// given stay as they are.
func (f *identityFlags) apply(cmd *cobra.Command, d *hub.Device) error {
	fs := cmd.Flags()
	if fs.Changed("status") {
		s, err := checkStatus(f.status)
		if err != nil {
			return err
		}
		d.Status = s
	}
	if fs.Changed("status-reason") {
		r := f.statusReason
		d.StatusReason = &r
	}
	if fs.Changed("primary-key") || fs.Changed("secondary-key") {
		if d.Authentication == nil || d.Authentication.Type == "" {
			d.Authentication = &hub.Authentication{Type: "sas"}
		}
		if !strings.EqualFold(d.Authentication.Type, "sas") {
			return fmt.Errorf("--primary-key and --secondary-key need a device with sas authentication, not %s", d.Authentication.Type)
		}
		if d.Authentication.SymmetricKey == nil {
			d.Authentication.SymmetricKey = &hub.SymmetricKey{}
		}
		if fs.Changed("primary-key") {
			if err := checkKey("primary-key", f.primaryKey); err != nil {
				return err
			}
			d.Authentication.SymmetricKey.PrimaryKey = f.primaryKey
		}
		if fs.Changed("secondary-key") {
			if err := checkKey("secondary-key", f.secondaryKey); err != nil {
				return err
			}
			d.Authentication.SymmetricKey.SecondaryKey = f.secondaryKey
		}
	}
	return nil
}

func newDeviceIdentityCreateCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		id string
		f  identityFlags
	)
	cmd := &cobra.Command{
		Use:   "create [DEVICE-ID]",
		Short: "Create a device identity (symmetric keys; prints it with its keys, as az does)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, id, "device-id")
			if err != nil {
				return err
			}
			// Empty keys ask the hub to generate them, as the Node SDK's
			// create sends them.
			d := &hub.Device{
				DeviceID:       deviceID,
				Status:         hub.StatusEnabled,
				Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{}},
			}
			if err := f.apply(cmd, d); err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			// A PUT without If-Match only creates: the hub answers 409
			// DeviceAlreadyExists rather than overwriting keys.
			out, err := c.CreateDevice(cmd.Context(), d)
			if err != nil {
				return fmt.Errorf("create device %s: %w", deviceID, err)
			}
			return printJSON(g.stdout, out)
		},
	}
	deviceIDFlag(cmd, &id)
	f.register(cmd, true)
	return cmd
}

// newHubDeviceCmd builds a command that takes a device ID (argument or
// --device-id), makes one call of the hub and prints its answer; what
// names the call in errors ("show device", "show twin of"…).
func newHubDeviceCmd(g *globals, hf *hubFlags, use, short, what string,
	call func(ctx context.Context, c *hubclient.Client, deviceID string) (any, error)) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   use + " [DEVICE-ID]",
		Short: short,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, id, "device-id")
			if err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			out, err := call(cmd.Context(), c, deviceID)
			if err != nil {
				return fmt.Errorf("%s %s: %w", what, deviceID, err)
			}
			return printJSON(g.stdout, out)
		},
	}
	deviceIDFlag(cmd, &id)
	return cmd
}

func newDeviceIdentityShowCmd(g *globals, hf *hubFlags) *cobra.Command {
	return newHubDeviceCmd(g, hf, "show", "Show a device identity", "show device",
		func(ctx context.Context, c *hubclient.Client, deviceID string) (any, error) {
			return c.GetDevice(ctx, deviceID)
		})
}

func newDeviceIdentityListCmd(g *globals, hf *hubFlags) *cobra.Command {
	var top int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List device identities",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if top < 0 || top > hubclient.MaxTop {
				return fmt.Errorf("--top must be between 1 and %d (the hub's page limit)", hubclient.MaxTop)
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			ds, err := c.ListDevices(cmd.Context(), top)
			if err != nil {
				return fmt.Errorf("list devices: %w", err)
			}
			return printJSON(g.stdout, ds)
		},
	}
	cmd.Flags().IntVar(&top, "top", 0, fmt.Sprintf("list at most this many (default: the hub's limit, %d)", hubclient.MaxTop))
	return cmd
}

func newDeviceIdentityUpdateCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		id, etag string
		f        identityFlags
	)
	cmd := &cobra.Command{
		Use:   "update [DEVICE-ID]",
		Short: "Update a device identity (read, change the given settings, write back if unchanged meanwhile)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, id, "device-id")
			if err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			d, err := c.GetDevice(ctx, deviceID)
			if err != nil {
				return fmt.Errorf("update device %s: read: %w", deviceID, err)
			}
			if err := f.apply(cmd, d); err != nil {
				return err
			}
			ifMatch := d.ETag
			if cmd.Flags().Changed("etag") {
				ifMatch = etag
			}
			if ifMatch == "" {
				// A hub that hands out no etag gives nothing to condition
				// on; an empty If-Match would turn the PUT into a create.
				ifMatch = "*"
			}
			out, err := c.UpdateDevice(ctx, d, ifMatch)
			if err != nil {
				return fmt.Errorf("update device %s: %w", deviceID, err)
			}
			return printJSON(g.stdout, out)
		},
	}
	deviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&etag, "etag", "", `update only if the device still has this etag ("*": any; default: the etag just read)`)
	f.register(cmd, false)
	return cmd
}

func newDeviceIdentityDeleteCmd(g *globals, hf *hubFlags) *cobra.Command {
	var id, etag string
	cmd := &cobra.Command{
		Use:   "delete [DEVICE-ID]",
		Short: "Delete a device identity",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID, err := idArg(args, id, "device-id")
			if err != nil {
				return err
			}
			c, err := hubClient(g, hf)
			if err != nil {
				return err
			}
			if err := c.DeleteDevice(cmd.Context(), deviceID, etag); err != nil {
				return fmt.Errorf("delete device %s: %w", deviceID, err)
			}
			return nil
		},
	}
	deviceIDFlag(cmd, &id)
	// "*" is az's default and what the Node SDK sends: IoT Hub's swagger
	// asks for the wildcard to delete unconditionally.
	cmd.Flags().StringVar(&etag, "etag", "*", "delete only if the device has this etag")
	return cmd
}

// ---- connection strings and tokens ----

// deviceKey picks a device's primary or secondary symmetric key.
func deviceKey(d *hub.Device, keyType string) (string, error) {
	if d.Authentication == nil || d.Authentication.SymmetricKey == nil || !strings.EqualFold(d.Authentication.Type, "sas") {
		typ := "none"
		if d.Authentication != nil {
			typ = d.Authentication.Type
		}
		return "", fmt.Errorf("device %s has no symmetric key (authentication type %s)", d.DeviceID, typ)
	}
	var k string
	switch strings.ToLower(keyType) {
	case "primary":
		k = d.Authentication.SymmetricKey.PrimaryKey
	case "secondary":
		k = d.Authentication.SymmetricKey.SecondaryKey
	default:
		return "", fmt.Errorf("--key-type %q: use primary or secondary", keyType)
	}
	if k == "" {
		return "", fmt.Errorf("device %s has no %s key", d.DeviceID, strings.ToLower(keyType))
	}
	return k, nil
}

// checkKeyType validates --key-type before any request is sent.
func checkKeyType(v string) error {
	switch strings.ToLower(v) {
	case "primary", "secondary":
		return nil
	}
	return fmt.Errorf("--key-type %q: use primary or secondary", v)
}

// connectionString is what az prints for `… connection-string show`.
type connectionString struct {
	ConnectionString string `json:"connectionString"`
}

func newHubConnStringShowCmd(g *globals, hf *hubFlags, deviceOnly bool) *cobra.Command {
	var id, keyType string
	short := "Show a device's connection string (HostName=…;DeviceId=…;SharedAccessKey=…), or without a device the hub's"
	if deviceOnly {
		short = "Show a device's connection string (HostName=…;DeviceId=…;SharedAccessKey=…)"
	}
	cmd := &cobra.Command{
		Use:   "show [DEVICE-ID]",
		Short: short,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deviceID := id
			if len(args) == 1 || deviceOnly {
				var err error
				if deviceID, err = idArg(args, id, "device-id"); err != nil {
					return err
				}
			}
			if err := checkKeyType(keyType); err != nil {
				return err
			}
			t, err := resolveHub(g, hf)
			if err != nil {
				return err
			}
			if deviceID == "" {
				// az iot hub connection-string show: the policy's own
				// connection string, which this berth has in hand.
				return printJSON(g.stdout, connectionString{ConnectionString: "HostName=" + t.cs.HostName +
					";SharedAccessKeyName=" + t.cs.SharedAccessKeyName + ";SharedAccessKey=" + t.cs.SharedAccessKey})
			}
			c, err := hubclient.New(t.connStr, t.opts)
			if err != nil {
				return err
			}
			d, err := c.GetDevice(cmd.Context(), deviceID)
			if err != nil {
				return fmt.Errorf("device %s: %w", deviceID, err)
			}
			key, err := deviceKey(d, keyType)
			if err != nil {
				return err
			}
			return printJSON(g.stdout, connectionString{ConnectionString: "HostName=" + c.HostName() + ";DeviceId=" + d.DeviceID + ";SharedAccessKey=" + key})
		},
	}
	deviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&keyType, "key-type", "primary", "the device key to use: primary or secondary")
	aliasFlags(cmd.Flags(), map[string]string{"kt": "key-type"})
	return cmd
}

// encodeURIComponent escapes s as JavaScript's encodeURIComponent does,
// which is how the Node SDK puts a device token's sr on the wire (spec
// §7.4): everything but A–Z a–z 0–9 - _ . ! ~ * ' ( ) is percent-encoded,
// upper-case hex, byte by byte of the UTF-8.
func encodeURIComponent(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.!~*'()", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// sasToken is what az iot hub generate-sas-token prints.
type sasToken struct {
	SAS string `json:"sas"`
}

func newHubSASTokenCmd(g *globals, hf *hubFlags) *cobra.Command {
	var (
		deviceID, key, keyType, hubName, policy string
		duration, expiresAt                     int64
	)
	cmd := &cobra.Command{
		Use:   "sas-token",
		Short: "Print a SAS token for a device, or for the hub's policy (like az iot hub generate-sas-token)",
		Long: `Print {"sas": "SharedAccessSignature …"} as az iot hub generate-sas-token does.

With --device-id: a device token, sr = encodeURIComponent({hub}/devices/{deviceId})
and no skn, signed with --key or, without it, with the device's key read from the
registry through the hub connection string (--key-type picks which).

Without --device-id: a hub-scoped token with skn, signed with the hub connection
string's policy (iothubowner for a local berth), or with --key and --policy-name.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			se := time.Now().Add(time.Duration(duration) * time.Second)
			if fs.Changed("expires-at") {
				se = time.Unix(expiresAt, 0)
			} else if duration <= 0 {
				return errors.New("--duration must be positive")
			}
			if err := checkKeyType(keyType); err != nil {
				return err
			}
			if key != "" {
				if err := checkKey("key", key); err != nil {
					return err
				}
			}
			if deviceID == "" && key == "" && fs.Changed("policy-name") {
				return errors.New("--policy-name needs --key: without it the hub connection string's policy signs the token")
			}
			if deviceID != "" && fs.Changed("policy-name") {
				return errors.New("--policy-name is for hub-scoped tokens; a device token has no skn")
			}

			var resource, skn string
			switch {
			case deviceID != "" && key != "":
				if hubName == "" {
					h, err := localHubName(g, hf)
					if err != nil {
						return err
					}
					hubName = h
				}
				resource = hubName + "/devices/" + deviceID
			case deviceID != "":
				c, err := hubClient(g, hf)
				if err != nil {
					return err
				}
				d, err := c.GetDevice(cmd.Context(), deviceID)
				if err != nil {
					return fmt.Errorf("device %s: %w", deviceID, err)
				}
				if key, err = deviceKey(d, keyType); err != nil {
					return err
				}
				if hubName == "" {
					hubName = c.HostName()
				}
				resource = hubName + "/devices/" + d.DeviceID
			case key != "":
				if hubName == "" {
					h, err := localHubName(g, hf)
					if err != nil {
						return err
					}
					hubName = h
				}
				resource, skn = hubName, policy
			default:
				t, err := resolveHub(g, hf)
				if err != nil {
					return err
				}
				if hubName != "" && !strings.EqualFold(hubName, t.cs.HostName) {
					return fmt.Errorf("--hub %s is not the hub of the connection string (%s): its policy key would not be valid there", hubName, t.cs.HostName)
				}
				resource, skn, key = t.cs.HostName, t.cs.SharedAccessKeyName, t.cs.SharedAccessKey
			}
			token, err := sas.Sign(encodeURIComponent(resource), key, skn, se)
			if err != nil {
				return fmt.Errorf("sign: %w", err)
			}
			return printJSON(g.stdout, sasToken{SAS: token})
		},
	}
	f := cmd.Flags()
	deviceIDFlag(cmd, &deviceID)
	f.StringVar(&key, "key", "", "sign with this key (base64) instead of the registry's device key or the connection string's policy key")
	f.StringVar(&keyType, "key-type", "primary", "the device key read from the registry: primary or secondary")
	f.StringVar(&hubName, "hub", "", "hub host name of the token's sr (default: the hub connection string's, or the local berth's)")
	f.StringVar(&policy, "policy-name", "iothubowner", "skn of a hub-scoped token signed with --key")
	f.Int64Var(&duration, "duration", 3600, "lifetime of the token in seconds")
	f.Int64Var(&expiresAt, "expires-at", 0, "absolute expiry as Unix seconds (overrides --duration; reproduces a given token)")
	aliasFlags(f, map[string]string{"du": "duration", "kt": "key-type", "pn": "policy-name", "hub-name": "hub"})
	return cmd
}

// ---- monitor-events ----

// errInProcessStream explains why a berth's telemetry cannot be read.
var errInProcessStream = errors.New("this berth keeps its telemetry stream in-process, with no listener to read it from: " +
	"restart `berth serve` with --stream-listen 127.0.0.1:0 (the default) or with --nats-url pointing at a NATS server, " +
	"or pass --nats-url here")

// nonDecodablePayload is what az prints for a body it cannot decode.
const nonDecodablePayload = "{{non-decodable payload}}"

// Message property choices of --properties, as az names them.
const (
	propSys  = "sys"
	propApp  = "app"
	propAnno = "anno"
	propAll  = "all"
)

// idleTimeout is --timeout: az's "maximum seconds to maintain connection
// without receiving message", as plain seconds (az's form) or a Go
// duration; 0 waits forever.
type idleTimeout time.Duration

func (d *idleTimeout) Set(s string) error {
	s = strings.TrimSpace(s)
	var v time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > int64(time.Duration(1<<63-1)/time.Second) {
			return fmt.Errorf("%q is too long", s)
		}
		v = time.Duration(n) * time.Second
	} else if v, err = time.ParseDuration(s); err != nil {
		return fmt.Errorf("%q: want seconds or a duration such as 30s, 5m", s)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", s)
	}
	*d = idleTimeout(v)
	return nil
}

func (d *idleTimeout) String() string { return time.Duration(*d).String() }
func (d *idleTimeout) Type() string   { return "duration" }

// monitorFlags are the options of monitor-events.
type monitorFlags struct {
	deviceID, moduleID string
	props              []string
	timeout            idleTimeout
	count              int
	fromStart          bool
	startTime          string
	enqueuedTime       int64
	contentType        string
	hub                string
	natsURL            string
	streamName         string
	subjectPrefix      string
}

func newMonitorEventsCmd(g *globals, hf *hubFlags) *cobra.Command {
	mf := monitorFlags{timeout: idleTimeout(5 * time.Minute)}
	cmd := &cobra.Command{
		Use:   "monitor-events",
		Short: "Print device-to-cloud messages as they arrive (like az iot hub monitor-events)",
		Long: `Tail berth's telemetry stream and print each device-to-cloud message as one JSON
object per line, in the shape az iot hub monitor-events prints:

  {"event":{"origin":"<deviceId>","module":"","interface":"","component":"",
            "properties":{"system":{…},"application":{…}},"annotations":{…},
            "payload":…}}

properties and annotations appear only as --properties asks (sys, app, anno, all;
space- or comma-separated). The payload is the body as JSON when it parses as JSON
and its content type (or --content-type) does not say otherwise, else the body as
text. System properties carry az's AMQP names (message_id, content_type, …); the
hub's stamps (iothub-connection-device-id, iothub-enqueuedtime as Unix
milliseconds, …) are annotations.

Messages stored from the start point on are printed (default: only new ones) until
--count messages, --timeout without a message, or Ctrl-C. The stream's location
comes from the local berth's client.json unless --nats-url is given.`,
		Args: func(cmd *cobra.Command, args []string) error {
			// az takes --properties sys app (space-separated); cobra sees
			// the values after the first as arguments.
			if len(args) > 0 && !cmd.Flags().Changed("properties") {
				return fmt.Errorf("unexpected argument %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMonitor(cmd, g, hf, &mf, args)
		},
	}
	f := cmd.Flags()
	deviceIDFlag(cmd, &mf.deviceID)
	f.StringVarP(&mf.moduleID, "module-id", "m", "", "only messages of this module (* and ? are wildcards)")
	f.StringSliceVarP(&mf.props, "properties", "p", nil, "message properties to print: sys, app, anno, all")
	f.VarP(&mf.timeout, "timeout", "t", "stop after this long without a message (seconds, or a duration like 30s); 0 waits forever")
	f.IntVar(&mf.count, "count", 0, "stop after this many messages (default: no limit)")
	f.BoolVar(&mf.fromStart, "from-start", false, "print every message the stream still holds, then new ones")
	f.StringVar(&mf.startTime, "start-time", "", "print messages stored since this time (RFC 3339), then new ones")
	f.Int64Var(&mf.enqueuedTime, "enqueued-time", 0, "like --start-time, in milliseconds since the Unix epoch (az's --enqueued-time)")
	f.StringVar(&mf.contentType, "content-type", "", "treat every payload as this content type (az's --content-type)")
	f.StringVar(&mf.hub, "hub", "", "only messages of this hub host name (default: the hub connection string's, or the local berth's)")
	f.StringVar(&mf.natsURL, "nats-url", "", "NATS URL of the telemetry stream (default: natsUrl from client.json); it may carry a token")
	f.StringVar(&mf.streamName, "stream", "", "JetStream stream name (default: from client.json, or "+stream.DefaultStreamName+")")
	f.StringVar(&mf.subjectPrefix, "subject-prefix", "", "subject prefix of the stream (default: from client.json, or "+stream.DefaultSubjectPrefix+")")
	aliasFlags(f, map[string]string{"message-count": "count", "mc": "count", "props": "properties", "et": "enqueued-time", "ct": "content-type", "to": "timeout"})
	cmd.MarkFlagsMutuallyExclusive("from-start", "start-time", "enqueued-time")
	return cmd
}

// propSet is what --properties asked for.
type propSet struct{ sys, app, anno bool }

func (p propSet) any() bool { return p.sys || p.app || p.anno }

// parseProps validates --properties values (and the space-separated ones
// that arrive as arguments), case-insensitively as az does.
func parseProps(values []string) (propSet, error) {
	var p propSet
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			switch strings.ToLower(strings.TrimSpace(s)) {
			case propSys:
				p.sys = true
			case propApp:
				p.app = true
			case propAnno:
				p.anno = true
			case propAll:
				p.sys, p.app, p.anno = true, true, true
			case "":
			default:
				return p, fmt.Errorf("--properties %q: use sys, app, anno or all", s)
			}
		}
	}
	return p, nil
}

// idPattern matches IDs as az's --device-id does: exactly, or with * and ?
// as wildcards over the whole ID.
type idPattern struct {
	exact string
	re    *regexp.Regexp // nil: no wildcard
}

func newIDPattern(s string) idPattern {
	p := idPattern{exact: s}
	if strings.ContainsAny(s, "*?") {
		q := regexp.QuoteMeta(s)
		q = strings.ReplaceAll(q, `\*`, ".*")
		q = strings.ReplaceAll(q, `\?`, ".")
		p.re = regexp.MustCompile("^" + q + "$")
	}
	return p
}

func (p idPattern) match(id string) bool {
	return p.exact == "" || id == p.exact || (p.re != nil && p.re.MatchString(id))
}

// streamLocation resolves where the telemetry stream is and which hub's
// messages to show.
func (mf *monitorFlags) streamLocation(g *globals, hf *hubFlags) (stream.Config, string, error) {
	cfg := stream.Config{URL: mf.natsURL, StreamName: mf.streamName, SubjectPrefix: mf.subjectPrefix, ReadOnly: true}
	hubName := mf.hub
	var info *localconf.Info
	if cfg.URL == "" || cfg.StreamName == "" || cfg.SubjectPrefix == "" || hubName == "" {
		var err error
		info, err = localconf.Read(g.dataDir)
		if err != nil && cfg.URL == "" {
			return cfg, "", fmt.Errorf("no telemetry stream to read (pass --nats-url): %w", err)
		}
	}
	if info != nil {
		if cfg.URL == "" {
			if info.NATSURL == "" {
				return cfg, "", errInProcessStream
			}
			cfg.URL = info.NATSURL
		}
		if cfg.StreamName == "" {
			cfg.StreamName = info.StreamName
		}
		if cfg.SubjectPrefix == "" {
			cfg.SubjectPrefix = info.StreamSubjectPrefix
		}
	}
	if hubName == "" {
		// The hub the other hub commands talk to; with none known, every
		// hub's messages.
		if t, err := resolveHub(g, hf); err == nil {
			hubName = t.cs.HostName
		} else if info != nil {
			hubName = info.HubHostName
		}
	}
	return cfg, hubName, nil
}

// startOf resolves --from-start, --start-time and --enqueued-time; zero
// means only new messages.
func (mf *monitorFlags) startOf(cmd *cobra.Command) (time.Time, error) {
	fs := cmd.Flags()
	switch {
	case mf.fromStart:
		// Before anything the stream can hold.
		return time.Unix(0, 0).UTC(), nil
	case fs.Changed("start-time"):
		t, err := time.Parse(time.RFC3339Nano, mf.startTime)
		if err != nil {
			return time.Time{}, fmt.Errorf("--start-time %q: want RFC 3339, e.g. 2024-05-06T07:08:09Z", mf.startTime)
		}
		return t, nil
	case fs.Changed("enqueued-time"):
		if mf.enqueuedTime < 0 {
			return time.Time{}, errors.New("--enqueued-time must not be negative")
		}
		return time.UnixMilli(mf.enqueuedTime).UTC(), nil
	}
	return time.Time{}, nil
}

func runMonitor(cmd *cobra.Command, g *globals, hf *hubFlags, mf *monitorFlags, extraProps []string) error {
	props, err := parseProps(append(append([]string(nil), mf.props...), extraProps...))
	if err != nil {
		return err
	}
	if mf.count < 0 {
		return errors.New("--count must not be negative")
	}
	start, err := mf.startOf(cmd)
	if err != nil {
		return err
	}
	cfg, hubName, err := mf.streamLocation(g, hf)
	if err != nil {
		return err
	}
	// The stream package logs reconnects and undecodable messages; those
	// are worth seeing, its debug chatter is not, nor the "disconnected"
	// it reports when this command closes the connection itself.
	closing := &atomic.Bool{}
	cfg.Logger = slog.New(quietHandler{Handler: slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}), quiet: closing})

	ctx := cmd.Context()
	openCtx, cancelOpen := context.WithTimeout(ctx, 30*time.Second)
	st, err := stream.Open(openCtx, cfg)
	cancelOpen()
	if err != nil {
		// stream's errors name the server without the URL's credentials.
		return fmt.Errorf("open the telemetry stream: %w", err)
	}
	defer func() {
		closing.Store(true)
		st.Close()
	}()

	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	devices, modules := newIDPattern(mf.deviceID), newIDPattern(mf.moduleID)
	opts := stream.SubscribeOptions{Hub: hubName, StartTime: start}
	if devices.re == nil {
		// An exact ID filters on the server, by subject.
		opts.DeviceID = mf.deviceID
	}
	msgs, err := st.Subscribe(subCtx, opts)
	if err != nil {
		return fmt.Errorf("read the telemetry stream: %w", err)
	}
	// Like az's banner, on stderr so that stdout stays one JSON object per
	// line. It also tells a script (and the tests) the subscription is live.
	if mf.deviceID != "" {
		fmt.Fprintf(g.stderr, "Starting event monitor, filtering on device: %s, use ctrl-c to stop...\n", mf.deviceID)
	} else {
		fmt.Fprintln(g.stderr, "Starting event monitor, use ctrl-c to stop...")
	}

	var idle <-chan time.Time
	var timer *time.Timer
	if mf.timeout > 0 {
		timer = time.NewTimer(time.Duration(mf.timeout))
		defer timer.Stop()
		idle = timer.C
	}
	printed := 0
	for {
		select {
		case <-ctx.Done():
			// Ctrl-C: a normal way to stop a monitor.
			return nil
		case <-idle:
			fmt.Fprintf(g.stderr, "Stopping event monitor: no message for %s.\n", time.Duration(mf.timeout))
			return nil
		case m, ok := <-msgs:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("the telemetry stream closed the subscription")
			}
			if !devices.match(m.DeviceID) || !modules.match(m.ModuleID) {
				continue
			}
			if err := writeEvent(g.stdout, formatEvent(m, props, mf.contentType)); err != nil {
				return err
			}
			printed++
			if mf.count > 0 && printed >= mf.count {
				fmt.Fprintf(g.stderr, "Successfully parsed %d message(s).\n", printed)
				return nil
			}
			if timer != nil {
				timer.Reset(time.Duration(mf.timeout))
			}
		}
	}
}

// quietHandler drops every record once quiet is set.
type quietHandler struct {
	slog.Handler
	quiet *atomic.Bool
}

func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return !h.quiet.Load() && h.Handler.Enabled(ctx, l)
}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.quiet.Load() {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietHandler{Handler: h.Handler.WithAttrs(attrs), quiet: h.quiet}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{Handler: h.Handler.WithGroup(name), quiet: h.quiet}
}

// writeEvent prints ev as one line of JSON with a single Write, and flushes
// a writer that buffers, so a reader of a pipe sees each message as it
// arrives.
func writeEvent(w io.Writer, ev monitorEvent) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ev); err != nil {
		return fmt.Errorf("print event: %w", err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("print event: %w", err)
	}
	if f, ok := w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			return fmt.Errorf("print event: %w", err)
		}
	}
	return nil
}

// monitorEvent is one message as az iot hub monitor-events prints it.
type monitorEvent struct {
	Event eventBody `json:"event"`
}

// eventBody keeps az's key order: origin, module, interface, component,
// properties, annotations, payload.
type eventBody struct {
	Origin      string           `json:"origin"`
	Module      string           `json:"module"`
	Interface   string           `json:"interface"`
	Component   string           `json:"component"`
	Properties  *eventProperties `json:"properties,omitempty"`
	Annotations *orderedObject   `json:"annotations,omitempty"`
	Payload     any              `json:"payload"`
}

// eventProperties: az leaves "system" out when a message has none, but
// always prints "application" when asked for it.
type eventProperties struct {
	System      *orderedObject `json:"system,omitempty"`
	Application *orderedObject `json:"application,omitempty"`
}

// orderedObject is a JSON object whose keys keep the order they were set
// in (Go maps would sort them): application properties in the device's
// order, as az shows them. Setting a key again replaces its value in place.
type orderedObject struct {
	keys []string
	vals map[string]any
}

func (o *orderedObject) set(k string, v any) {
	if o.vals == nil {
		o.vals = map[string]any{}
	}
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

func (o *orderedObject) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, err := marshalNoEscape(k)
		if err != nil {
			return nil, err
		}
		vb, err := marshalNoEscape(o.vals[k])
		if err != nil {
			return nil, err
		}
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// marshalNoEscape is json.Marshal without HTML escaping, like the encoder
// that prints the event: property values are shown verbatim.
func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// amqpSystemName maps IoT Hub's system property names to the AMQP message
// property names az prints under "system"; every other system property
// (what the hub stamps, dt-subject, …) reaches az as a message annotation.
func amqpSystemName(name string) (string, bool) {
	switch name {
	case hub.PropMessageID:
		return "message_id", true
	case hub.PropCorrelationID:
		return "correlation_id", true
	case hub.PropUserID:
		return "user_id", true
	case hub.PropTo:
		return "to", true
	case hub.PropExpiry:
		return "absolute_expiry_time", true
	case hub.PropContentType:
		return "content_type", true
	case hub.PropContentEncoding:
		return "content_encoding", true
	}
	return "", false
}

// epochMillis turns an RFC 3339 time into Unix milliseconds, the way AMQP
// timestamps reach az; a value that is not a time stays as it is.
func epochMillis(v string) any {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UnixMilli()
	}
	return v
}

// formatEvent builds what monitor-events prints for m.
func formatEvent(m *hub.Message, props propSet, ctHint string) monitorEvent {
	ev := eventBody{Origin: m.DeviceID, Module: m.ModuleID}
	if v, ok := m.SystemValue(hub.PropConnDeviceID); ok && v != "" {
		ev.Origin = v
	}
	// az reads the interface from iothub-interface-name (PnP v1) or
	// dt-dataschema (v2), and the component from dt-subject.
	if v, ok := m.SystemValue(hub.PropInterfaceID); ok && v != "" {
		ev.Interface = v
	} else if v, ok := m.SystemValue(hub.PropSchema); ok {
		ev.Interface = v
	}
	ev.Component, _ = m.SystemValue(hub.PropComponent)

	var system, annotations orderedObject
	sysVals := map[string]any{}
	for _, p := range m.System {
		if name, ok := amqpSystemName(p.Name); ok {
			// az drops empty AMQP properties.
			if p.Value == "" {
				continue
			}
			var v any = p.Value
			if p.Name == hub.PropExpiry {
				v = epochMillis(p.Value)
			}
			sysVals[name] = v
			continue
		}
		var v any = p.Value
		if p.Name == hub.PropEnqueuedTime {
			v = epochMillis(p.Value)
		}
		annotations.set(p.Name, v)
	}
	// az lists the AMQP properties in attribute order, which is
	// alphabetical.
	for _, name := range slices.Sorted(maps.Keys(sysVals)) {
		system.set(name, sysVals[name])
	}

	if props.any() {
		ev.Properties = &eventProperties{}
		if props.sys && len(system.keys) > 0 {
			ev.Properties.System = &system
		}
		if props.app {
			app := &orderedObject{}
			for _, p := range m.App {
				app.set(p.Name, p.Value)
			}
			ev.Properties.Application = app
		}
	}
	if props.anno {
		ev.Annotations = &annotations
	}

	ct, _ := m.SystemValue(hub.PropContentType)
	if ctHint != "" {
		ct = ctHint
	}
	ce, _ := m.SystemValue(hub.PropContentEncoding)
	ev.Payload = payloadOf(m.Body, ct, ce)
	return monitorEvent{Event: ev}
}

// payloadOf decodes a body for printing. Text: UTF-8, or UTF-16/UTF-32 when
// the content encoding says so; anything else is az's non-decodable
// marker. JSON: the text when it parses and the content type is unset or a
// JSON type (az requires application/json, but most MQTT devices never set
// $.ct, and their JSON is still JSON); kept as raw JSON so numbers and key
// order print exactly as the device sent them.
func payloadOf(body []byte, contentType, contentEncoding string) any {
	text, ok := decodeText(body, contentEncoding)
	if !ok {
		return nonDecodablePayload
	}
	ct := strings.ToLower(contentType)
	if (ct == "" || strings.Contains(ct, "json")) && json.Valid([]byte(text)) {
		return json.RawMessage(text)
	}
	return text
}

// decodeText decodes body per its content encoding.
func decodeText(body []byte, encoding string) (string, bool) {
	enc := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(encoding), "_", "-"))
	switch {
	case strings.HasPrefix(enc, "utf-16") || strings.HasPrefix(enc, "utf16"):
		return decodeUTF16(body, strings.HasSuffix(enc, "be"))
	case strings.HasPrefix(enc, "utf-32") || strings.HasPrefix(enc, "utf32"):
		return decodeUTF32(body, strings.HasSuffix(enc, "be"))
	}
	if !utf8.Valid(body) {
		return "", false
	}
	return string(body), true
}

// decodeUTF16 decodes UTF-16 with an optional byte order mark, little
// endian by default as Python's (and so az's) "utf-16" codec does on the
// machines az runs on.
func decodeUTF16(b []byte, bigEndian bool) (string, bool) {
	if len(b)%2 != 0 {
		return "", false
	}
	if len(b) >= 2 {
		switch {
		case b[0] == 0xFF && b[1] == 0xFE:
			b, bigEndian = b[2:], false
		case b[0] == 0xFE && b[1] == 0xFF:
			b, bigEndian = b[2:], true
		}
	}
	u := make([]uint16, len(b)/2)
	for i := range u {
		if bigEndian {
			u[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
		} else {
			u[i] = uint16(b[2*i+1])<<8 | uint16(b[2*i])
		}
	}
	s := string(utf16.Decode(u))
	if strings.ContainsRune(s, utf8.RuneError) {
		return "", false
	}
	return s, true
}

// decodeUTF32 is decodeUTF16 for UTF-32.
func decodeUTF32(b []byte, bigEndian bool) (string, bool) {
	if len(b)%4 != 0 {
		return "", false
	}
	if len(b) >= 4 {
		switch {
		case b[0] == 0xFF && b[1] == 0xFE && b[2] == 0 && b[3] == 0:
			b, bigEndian = b[4:], false
		case b[0] == 0 && b[1] == 0 && b[2] == 0xFE && b[3] == 0xFF:
			b, bigEndian = b[4:], true
		}
	}
	var sb strings.Builder
	for i := 0; i < len(b); i += 4 {
		var r uint32
		if bigEndian {
			r = uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3])
		} else {
			r = uint32(b[i+3])<<24 | uint32(b[i+2])<<16 | uint32(b[i+1])<<8 | uint32(b[i])
		}
		if r > utf8.MaxRune || (r >= 0xD800 && r <= 0xDFFF) {
			return "", false
		}
		sb.WriteRune(rune(r))
	}
	return sb.String(), true
}
