package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/eventhubs"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/sas"
)

// Connection strings and SAS tokens: berth hub connection-string show,
// berth hub device-identity connection-string show, berth hub sas-token.

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
	var eventHub bool
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
			if eventHub {
				if deviceID != "" {
					return errors.New("--eventhub shows the hub's Event Hubs-compatible connection string; give no device")
				}
				p := &hub.Policy{KeyName: t.cs.SharedAccessKeyName, PrimaryKey: t.cs.SharedAccessKey}
				return printJSON(g.stdout, connectionString{ConnectionString: eventhubs.ConnectionString(t.cs.HostName, t.amqpPort, p)})
			}
			if deviceID == "" {
				// az iot hub connection-string show: the policy's own
				// connection string, which this berth has in hand.
				return g.print(connectionString{ConnectionString: "HostName=" + t.cs.HostName +
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
			return g.print(connectionString{ConnectionString: "HostName=" + c.HostName() + ";DeviceId=" + d.DeviceID + ";SharedAccessKey=" + key})
		},
	}
	deviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&keyType, "key-type", "primary", "the device key to use: primary or secondary")
	if !deviceOnly {
		cmd.Flags().BoolVar(&eventHub, "eventhub", false, "show the hub's Event Hubs-compatible connection string (Endpoint=sb://…;EntityPath=…), for Event Hubs consumers")
	}
	aliasFlags(cmd.Flags(), map[string]string{"kt": "key-type"})
	return cmd
}

// encodeURIComponent escapes s as JavaScript's encodeURIComponent does, which
// is how the Node SDK puts a device token's sr on the wire
// (docs/spec/iothub-protocol.md#how-the-sdks-make-tokens): everything but A–Z
// a–z 0–9 - _ . ! ~ * ' ( ) is percent-encoded, upper-case hex, byte by byte
// of the UTF-8.
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
			return g.print(sasToken{SAS: token})
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
