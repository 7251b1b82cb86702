package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/deviceclient"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/sas"
)

// The device commands do what device firmware does: derive a group member's
// key, sign a SAS token, run the provisioning flow. They print keys and
// tokens because that is what they were asked for.

func addDeviceCommands(root *cobra.Command, g *globals) { root.AddCommand(newDeviceCmd(g)) }

// newDeviceCmd is `berth device` (built again for `berth iot device`).
func newDeviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Device-side helpers: derive keys, sign tokens, register like firmware, simulate a device",
	}
	cmd.AddCommand(newDeriveKeyCmd(g), newSASTokenCmd(g), newRegisterCmd(g), newDeviceCertCmd(g), newSimulateCmd(g))
	return cmd
}

func newDeriveKeyCmd(g *globals) *cobra.Command {
	var groupKey, regID string
	cmd := &cobra.Command{
		Use:   "derive-key",
		Short: "Print the device key of a symmetric-key enrollment group member",
		Long: `Print base64(HMAC-SHA256(base64decode(group key), registration ID)), the key
a device of a symmetric-key enrollment group signs its tokens with.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := sas.DeriveKey(groupKey, regID)
			if err != nil {
				return fmt.Errorf("--group-key: %w", err)
			}
			_, err = fmt.Fprintln(g.stdout, key)
			return err
		},
	}
	cmd.Flags().StringVar(&groupKey, "group-key", "", "the enrollment group's primary or secondary key (base64)")
	cmd.Flags().StringVar(&regID, "registration-id", "", "the device's registration ID")
	_ = cmd.MarkFlagRequired("group-key")
	_ = cmd.MarkFlagRequired("registration-id")
	return cmd
}

func newSASTokenCmd(g *globals) *cobra.Command {
	var (
		scope, regID, key, resource, keyName string
		expiry, expiresAt                    int64
		encode                               bool
	)
	cmd := &cobra.Command{
		Use:   "sas-token",
		Short: "Print a SAS token (the MQTT password / HTTP Authorization of a device)",
		Long: `Print a shared access signature token, as the Python snippet of the Azure
DPS docs makes it: sr is the resource URL-encoded ({scope}%2Fregistrations%2F{id}),
signed as encoded, with skn=registration.

--resource signs any other resource instead (an IoT hub device token:
{hub}/devices/{deviceId}), with no skn unless --key-name is given.
--encode=false puts sr in the token unencoded, as the Node SDK does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			skn := keyName
			if resource == "" {
				if regID == "" {
					return errors.New("give --registration-id (with --id-scope), or --resource")
				}
				if scope == "" {
					info, err := localconf.Read(g.dataDir)
					if err != nil {
						return fmt.Errorf("no ID scope: pass --id-scope: %w", err)
					}
					scope = info.IDScope
				}
				resource = deviceclient.Resource(scope, regID)
				if !fs.Changed("key-name") {
					skn = deviceclient.KeyName
				}
			} else if fs.Changed("registration-id") || fs.Changed("id-scope") {
				return errors.New("--resource replaces --id-scope and --registration-id; give one or the other")
			}
			se := time.Now().Add(time.Duration(expiry) * time.Second)
			if fs.Changed("expires-at") {
				se = time.Unix(expiresAt, 0)
			} else if expiry <= 0 {
				return errors.New("--expiry must be positive")
			}
			sign := sas.Sign
			if encode {
				sign = sas.SignEncoded
			}
			token, err := sign(resource, key, skn, se)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			_, err = fmt.Fprintln(g.stdout, token)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&scope, "id-scope", "", "ID scope (default: the local berth's)")
	f.StringVar(&regID, "registration-id", "", "registration ID of the device")
	f.StringVar(&key, "key", "", "the device's symmetric key (base64); for a group member, see `berth device derive-key`")
	f.StringVar(&resource, "resource", "", "sign this resource instead of {scope}/registrations/{id}")
	f.StringVar(&keyName, "key-name", "", "skn of the token (default: registration for DPS device tokens, none with --resource)")
	f.Int64Var(&expiry, "expiry", 3600, "lifetime of the token in seconds")
	f.Int64Var(&expiresAt, "expires-at", 0, "absolute expiry as Unix seconds (overrides --expiry; reproduces a given token)")
	f.BoolVar(&encode, "encode", true, "URL-encode sr (%2F), as the Python and C# SDKs and the Azure docs do")
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

// registerFlags are the options of `device register`.
type registerFlags struct {
	regID, key, groupKey string
	certFile             string // X.509: the device certificate; key is then its key file
	transport            string
	scope, endpoint      string
	payload              string
	timeout              time.Duration
	verbose              bool
}

func newRegisterCmd(g *globals) *cobra.Command {
	var rf registerFlags
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Provision a device the way firmware does and print the final operation status",
		Long: `Run Azure's provisioning flow for one device (register, then poll the operation
until it is done) over MQTT (8883) or HTTPS (443), and print the final
operation status with the assigned hub and device ID.

A symmetric-key device gives --key (or --group-key); an X.509 device gives
--certificate (PEM: its certificate, then the chain to present) and --key,
the certificate's private key file (default: the certificate's file name with
.key, as ` + "`berth device certificate create`" + ` writes them). It sends no SAS token,
and its registration ID defaults to the certificate's subject CN.

ID scope, endpoint, address and CA default to those of the local berth
(the client.json in --data-dir).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := rf.options(g)
			if err != nil {
				return err
			}
			if rf.verbose {
				opts.Logger = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), rf.timeout)
			defer cancel()
			op, err := deviceclient.Provision(ctx, opts)
			if op != nil {
				if perr := g.print(op); perr != nil {
					return perr
				}
			}
			return err
		},
	}
	rf.register(cmd)
	f := cmd.Flags()
	f.DurationVar(&rf.timeout, "timeout", 2*time.Minute, "give up after this long")
	f.BoolVarP(&rf.verbose, "verbose", "v", false, "log the protocol steps to stderr (never keys or tokens)")
	cmd.MarkFlagsOneRequired("key", "group-key", "certificate")
	return cmd
}

// register adds the provisioning flags, which register and simulate share.
func (rf *registerFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&rf.regID, "registration-id", "", "registration ID of the device (default with --certificate: its subject CN)")
	f.StringVar(&rf.key, "key", "", "the device's symmetric key (base64); with --certificate, the file of the certificate's private key")
	f.StringVar(&rf.groupKey, "group-key", "", "the enrollment group's key; the device key is derived from it")
	f.StringVar(&rf.certFile, "certificate", "", "X.509 attestation: the device certificate file (PEM, the leaf then its chain)")
	f.StringVar(&rf.transport, "transport", deviceclient.TransportMQTT, "mqtt or https")
	f.StringVar(&rf.scope, "id-scope", "", "ID scope (default: the local berth's)")
	f.StringVar(&rf.endpoint, "global-endpoint", "", "DPS host name (default: the local berth's)")
	f.StringVar(&rf.payload, "payload", "", "custom data for the register request (JSON object)")
	cmd.MarkFlagsMutuallyExclusive("key", "group-key")
	cmd.MarkFlagsMutuallyExclusive("certificate", "group-key")
}

// options resolves the flags into deviceclient options. Flags win; the
// rest comes from the local berth's client.json, whose address and CA are
// used only when the endpoint is that berth's.
func (rf *registerFlags) options(g *globals) (deviceclient.Options, error) {
	opts := deviceclient.Options{
		Transport:      strings.ToLower(rf.transport),
		GlobalEndpoint: rf.endpoint,
		Address:        g.address,
		IDScope:        rf.scope,
		RegistrationID: rf.regID,
		SymmetricKey:   rf.key,
		CAFile:         g.caFile,
	}
	if opts.Transport != deviceclient.TransportMQTT && opts.Transport != deviceclient.TransportHTTPS {
		return opts, fmt.Errorf("--transport %q: use mqtt or https", rf.transport)
	}
	if rf.certFile != "" {
		cert, err := loadDeviceCert(rf.certFile, rf.key)
		if err != nil {
			return opts, err
		}
		opts.SymmetricKey, opts.ClientCertificate = "", cert
		if opts.RegistrationID == "" {
			opts.RegistrationID = cert.Leaf.Subject.CommonName
		}
	} else if opts.RegistrationID == "" {
		return opts, errors.New("give the device's --registration-id")
	}
	if rf.groupKey != "" {
		k, err := sas.DeriveKey(rf.groupKey, rf.regID)
		if err != nil {
			return opts, fmt.Errorf("--group-key: %w", err)
		}
		opts.SymmetricKey = k
	}
	if rf.payload != "" {
		p, err := jsonObject("payload", rf.payload)
		if err != nil {
			return opts, err
		}
		opts.Payload = p
	}
	if opts.IDScope == "" || opts.GlobalEndpoint == "" || opts.Address == "" || opts.CAFile == "" {
		info, err := localconf.Read(g.dataDir)
		if err != nil {
			if opts.IDScope == "" || opts.GlobalEndpoint == "" {
				return opts, fmt.Errorf("pass --id-scope and --global-endpoint: %w", err)
			}
			return opts, nil // a remote DPS on its standard ports, with system roots
		}
		if opts.IDScope == "" {
			opts.IDScope = info.IDScope
		}
		if opts.GlobalEndpoint == "" {
			opts.GlobalEndpoint = info.GlobalEndpoint
		}
		if strings.EqualFold(opts.GlobalEndpoint, info.GlobalEndpoint) {
			if opts.Address == "" {
				opts.Address = info.MQTTAddress
				if opts.Transport == deviceclient.TransportHTTPS {
					opts.Address = info.HTTPSAddress
				}
			}
			if opts.CAFile == "" {
				opts.CAFile = info.CAFile
			}
		}
	}
	return opts, nil
}
