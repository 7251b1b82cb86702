package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/serviceclient"
)

// The operator commands are clients of the DPS service REST API, shaped
// like `az iot dps enrollment …`: JSON out, IDs as --enrollment-id (or as
// the one positional argument).

func addOperatorCommands(root *cobra.Command, g *globals) {
	root.AddCommand(newEnrollmentCmd(g), newEnrollmentGroupCmd(g), newRegistrationCmd(g))
}

// serviceClient resolves where operator commands go. Flags (and their
// environment variables) win; whatever they leave open comes from the
// client.json of a local berth, but its address and CA only when the
// connection string names that berth: they would be wrong for any other.
func serviceClient(g *globals) (*serviceclient.Client, error) {
	connStr, cs, info, err := serviceConnectionString(g)
	if err != nil {
		return nil, err
	}
	caFile, address := g.caFile, g.address
	if info != nil {
		if local, err := serviceclient.ParseConnectionString(info.ServiceConnectionString); err == nil && strings.EqualFold(local.HostName, cs.HostName) {
			if caFile == "" {
				caFile = info.CAFile
			}
			if address == "" {
				address = info.HTTPSAddress
			}
		}
	}
	c, err := serviceclient.New(connStr, serviceclient.Options{CAFile: caFile, Address: address})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// serviceConnectionString is the service connection string operator
// commands use: --connection-string (or its environment variable), else the
// local berth's from client.json. info is that client.json when it was
// read (nil when the flags left nothing to look up).
func serviceConnectionString(g *globals) (connStr string, cs serviceclient.ConnectionString, info *localconf.Info, err error) {
	connStr = g.connStr
	if g.login != "" && !g.connStrFlag {
		connStr = g.login // az's --login: over the environment, under the flag
	}
	var infoErr error
	if connStr == "" || g.caFile == "" || g.address == "" {
		info, infoErr = localconf.Read(g.dataDir)
	}
	if connStr == "" {
		if infoErr != nil {
			return "", cs, nil, fmt.Errorf("no service connection string: %w", infoErr)
		}
		if info.ServiceConnectionString == "" {
			return "", cs, nil, fmt.Errorf("no service connection string in %s/%s: pass --connection-string, or restart `berth serve`", g.dataDir, localconf.FileName)
		}
		connStr = info.ServiceConnectionString
	}
	if cs, err = serviceclient.ParseConnectionString(connStr); err != nil {
		return "", cs, nil, fmt.Errorf("--connection-string: %w", err)
	}
	if g.dpsName != "" && !sameName(g.dpsName, cs.HostName) {
		// az finds a DPS by name; here the connection string decides, so
		// a script that names another DPS must not act on this one.
		return "", cs, nil, fmt.Errorf("--dps-name %q is not the DPS of the connection string (%s): pass that DPS's connection string with --connection-string or --login", g.dpsName, cs.HostName)
	}
	return connStr, cs, info, nil
}

// printJSON writes v indented, as az does, without HTML escaping (keys and
// etags are printed verbatim).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("print: %w", err)
	}
	return nil
}

// idArg takes an ID from the one positional argument or the --enrollment-id
// flag (az style), not both.
func idArg(args []string, flag, flagName string) (string, error) {
	switch {
	case len(args) == 1 && flag != "" && args[0] != flag:
		return "", fmt.Errorf("the ID is given twice (%q and --%s %q)", args[0], flagName, flag)
	case len(args) == 1:
		return args[0], nil
	case flag != "":
		return flag, nil
	default:
		return "", fmt.Errorf("give the ID as an argument or with --%s", flagName)
	}
}

// aliasFlags makes each alias another spelling of its flag.
func aliasFlags(fs *pflag.FlagSet, aliases map[string]string) {
	fs.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if to, ok := aliases[name]; ok {
			name = to
		}
		return pflag.NormalizedName(name)
	})
}

// commonFlags are the settings enrollments and groups share.
type commonFlags struct {
	attestation  string
	primaryKey   string
	secondaryKey string
	status       string
	hubHostName  string
	twinTags     string
	twinProps    string
	allocation   string
	iotHubs      []string
	webhookURL   string
	webhookAPI   string
	reprovision  string
	// X.509: certificate files (an individual enrollment's device
	// certificates, a group's signing certificates) or, for groups, names
	// of uploaded CA certificates.
	certPath, secondaryCertPath string
	caName, secondaryCAName     string
	group                       bool // the flags are an enrollment group's
}

func (f *commonFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.attestation, "attestation-type", "symmetrickey", "attestation mechanism: symmetrickey or x509 (tpm is not supported by berth yet)")
	fs.StringVar(&f.primaryKey, "primary-key", "", "primary symmetric key (base64); generated by the service when omitted")
	fs.StringVar(&f.secondaryKey, "secondary-key", "", "secondary symmetric key (base64); generated by the service when omitted")
	fs.StringVar(&f.status, "provisioning-status", "", "enabled or disabled (default enabled)")
	fs.StringVar(&f.hubHostName, "iot-hub-host-name", "", "host name of the IoT hub to assign devices to")
	fs.StringVar(&f.twinTags, "initial-twin-tags", "", "initial twin tags (JSON object)")
	fs.StringVar(&f.twinProps, "initial-twin-properties", "", "initial twin desired properties (JSON object)")
	fs.StringVar(&f.allocation, "allocation-policy", "", "hashed, static, geolatency or custom (default hashed)")
	fs.StringSliceVar(&f.iotHubs, "iot-hubs", nil, "host names of the linked hubs devices may be assigned to (comma-separated; default every hub that applies allocation policies)")
	fs.StringVar(&f.webhookURL, "webhook-url", "", "custom allocation webhook URL (with --allocation-policy custom)")
	fs.StringVar(&f.webhookAPI, "api-version", "2021-10-01", "API version sent to the custom allocation webhook")
	fs.StringVar(&f.reprovision, "reprovision-policy", "", "reprovisionandmigratedata (default), reprovisionandresetdata or never")
	// az's short spellings (--cp, --cn, …) are left out: a flag set has
	// one alias table, and the ID flags' aliases already hold it.
	certUse := "x509: the device certificate file, PEM or DER"
	if f.group {
		certUse = "x509: a signing (root or intermediate) CA certificate file, PEM or DER"
	}
	fs.StringVar(&f.certPath, "certificate-path", "", certUse)
	fs.StringVar(&f.secondaryCertPath, "secondary-certificate-path", "", "x509: a secondary certificate file (empty removes it)")
	if f.group {
		fs.StringVar(&f.caName, "ca-name", "", "x509: name of an uploaded CA certificate (berth dps certificate) that authenticates the group's devices once verified")
		fs.StringVar(&f.secondaryCAName, "secondary-ca-name", "", "x509: name of a secondary uploaded CA certificate")
	}
}

// allocationPolicies maps az's spellings to the service's.
var allocationPolicies = map[string]string{
	"hashed": dps.AllocationHashed, "static": dps.AllocationStatic,
	"geolatency": dps.AllocationGeoLatency, "custom": dps.AllocationCustom,
}

// applyAllocation writes the allocation and reprovisioning flags into c.
func (f *commonFlags) applyAllocation(fs *pflag.FlagSet, c *dps.Common) error {
	if fs.Changed("allocation-policy") {
		p, ok := allocationPolicies[strings.ToLower(f.allocation)]
		if !ok {
			return fmt.Errorf("--allocation-policy %q: use hashed, static, geolatency or custom", f.allocation)
		}
		c.AllocationPolicy = p
	}
	if fs.Changed("iot-hubs") {
		c.IoTHubs = f.iotHubs
	}
	if fs.Changed("webhook-url") || fs.Changed("api-version") {
		if c.CustomAllocationDefinition == nil {
			c.CustomAllocationDefinition = &dps.CustomAllocationDefinition{APIVersion: f.webhookAPI}
		}
		if fs.Changed("webhook-url") {
			c.CustomAllocationDefinition.WebhookURL = f.webhookURL
		}
		if fs.Changed("api-version") {
			c.CustomAllocationDefinition.APIVersion = f.webhookAPI
		}
	}
	if fs.Changed("reprovision-policy") {
		switch strings.ToLower(f.reprovision) {
		case "reprovisionandmigratedata":
			c.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
		case "reprovisionandresetdata":
			c.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: false}
		case "never":
			c.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: false, MigrateDeviceData: true}
		default:
			return fmt.Errorf("--reprovision-policy %q: use reprovisionandmigratedata, reprovisionandresetdata or never", f.reprovision)
		}
	}
	return nil
}

// apply writes the flags that were given into c: on create c is empty, on
// update it is the enrollment just read, attestation keys included, so
// that settings not given stay as they are.
func (f *commonFlags) apply(fs *pflag.FlagSet, c *dps.Common) error {
	x509Flags := fs.Changed("certificate-path") || fs.Changed("secondary-certificate-path") ||
		fs.Changed("ca-name") || fs.Changed("secondary-ca-name")
	if fs.Changed("attestation-type") || c.Attestation == nil || x509Flags {
		typ := strings.ToLower(f.attestation)
		if x509Flags && !fs.Changed("attestation-type") {
			typ = "x509" // the certificate flags say which
		}
		var want string
		switch typ {
		case "symmetrickey":
			want = dps.AttestationSymmetricKey
		case "x509":
			want = dps.AttestationX509
		default:
			return fmt.Errorf("--attestation-type %q: use symmetrickey or x509 (berth does not support tpm yet)", f.attestation)
		}
		if c.Attestation == nil || c.Attestation.Type != want {
			c.Attestation = &dps.AttestationMechanism{Type: want}
		}
	}
	if err := f.applyX509(fs, c.Attestation, x509Flags); err != nil {
		return err
	}
	if fs.Changed("primary-key") || fs.Changed("secondary-key") {
		if c.Attestation.Type != dps.AttestationSymmetricKey {
			return fmt.Errorf("--primary-key and --secondary-key need --attestation-type symmetrickey")
		}
		if c.Attestation.SymmetricKey == nil {
			c.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{}
		}
		if fs.Changed("primary-key") {
			c.Attestation.SymmetricKey.PrimaryKey = f.primaryKey
		}
		if fs.Changed("secondary-key") {
			c.Attestation.SymmetricKey.SecondaryKey = f.secondaryKey
		}
	}
	if fs.Changed("provisioning-status") {
		s := strings.ToLower(f.status)
		if s != dps.ProvisioningEnabled && s != dps.ProvisioningDisabled {
			return fmt.Errorf("--provisioning-status %q: use enabled or disabled", f.status)
		}
		c.ProvisioningStatus = s
	}
	if fs.Changed("iot-hub-host-name") {
		c.IoTHubHostName = f.hubHostName
	}
	if fs.Changed("initial-twin-tags") || fs.Changed("initial-twin-properties") {
		if c.InitialTwin == nil {
			c.InitialTwin = &dps.InitialTwin{}
		}
		if fs.Changed("initial-twin-tags") {
			tags, err := jsonObject("initial-twin-tags", f.twinTags)
			if err != nil {
				return err
			}
			c.InitialTwin.Tags = tags
		}
		if fs.Changed("initial-twin-properties") {
			desired, err := jsonObject("initial-twin-properties", f.twinProps)
			if err != nil {
				return err
			}
			c.InitialTwin.Properties = &dps.InitialTwinProperties{Desired: desired}
		}
	}
	return f.applyAllocation(fs, c)
}

// applyX509 writes the certificate flags into an x509 attestation: an
// individual enrollment's clientCertificates; a group's
// signingCertificates or caReferences (one replaces the other). A
// secondary given alone keeps the primary (on update, the one just read,
// which the service fills back in). Only certificates are sent; the
// service computes their info.
func (f *commonFlags) applyX509(fs *pflag.FlagSet, a *dps.AttestationMechanism, changed bool) error {
	if a.Type != dps.AttestationX509 {
		if changed {
			return errors.New("the certificate flags need --attestation-type x509")
		}
		return nil
	}
	if a.X509 == nil {
		a.X509 = &dps.X509Attestation{}
	}
	x := a.X509
	certs := fs.Changed("certificate-path") || fs.Changed("secondary-certificate-path")
	cas := fs.Changed("ca-name") || fs.Changed("secondary-ca-name")
	switch {
	case certs && cas:
		return errors.New("give --certificate-path or --ca-name, not both")
	case certs:
		target := &x.ClientCertificates
		if f.group {
			target = &x.SigningCertificates
			x.CAReferences = nil
		}
		if *target == nil {
			*target = &dps.X509Certificates{}
		}
		for _, p := range []struct {
			flag, path string
			dst        **dps.X509CertificateWithInfo
		}{{"certificate-path", f.certPath, &(*target).Primary}, {"secondary-certificate-path", f.secondaryCertPath, &(*target).Secondary}} {
			if !fs.Changed(p.flag) {
				continue
			}
			if p.path == "" {
				*p.dst = nil // an empty secondary removes it
				continue
			}
			pemText, _, err := readCertificateFile(p.path)
			if err != nil {
				return fmt.Errorf("--%s: %w", p.flag, err)
			}
			*p.dst = &dps.X509CertificateWithInfo{Certificate: pemText}
		}
	case cas:
		x.SigningCertificates = nil
		if x.CAReferences == nil {
			x.CAReferences = &dps.X509CAReferences{}
		}
		if fs.Changed("ca-name") {
			x.CAReferences.Primary = f.caName
		}
		if fs.Changed("secondary-ca-name") {
			x.CAReferences.Secondary = f.secondaryCAName
		}
	}
	if x.ClientCertificates == nil && x.SigningCertificates == nil && x.CAReferences == nil {
		if f.group {
			return errors.New("--attestation-type x509 needs --certificate-path (a signing CA certificate) or --ca-name (an uploaded CA)")
		}
		return errors.New("--attestation-type x509 needs --certificate-path (the device certificate)")
	}
	return nil
}

// jsonObject validates a flag holding a JSON object; empty clears it.
func jsonObject(flag, v string) (json.RawMessage, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(v), &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("--%s must be a JSON object", flag)
	}
	return json.RawMessage(v), nil
}

// ---- registration ----

func newRegistrationCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "registration",
		Short: "Show and delete device registration records",
	}
	cmd.AddCommand(newRegistrationShowCmd(g), newRegistrationListCmd(g), newRegistrationDeleteCmd(g))
	return cmd
}

// registrationIDFlag adds --registration-id.
func registrationIDFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVar(id, "registration-id", "", "registration ID of the device (alias --rid)")
	aliasFlags(cmd.Flags(), map[string]string{"rid": "registration-id"})
}

func newRegistrationShowCmd(g *globals) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "show [REGISTRATION-ID]",
		Short: "Show a device's registration record",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			regID, err := idArg(args, id, "registration-id")
			if err != nil {
				return err
			}
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			r, err := c.GetRegistration(cmd.Context(), regID)
			if err != nil {
				return err
			}
			return g.print(r)
		},
	}
	registrationIDFlag(cmd, &id)
	return cmd
}

func newRegistrationListCmd(g *globals) *cobra.Command {
	var (
		groupID string
		top     int
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List registration records of an enrollment group (or of every enrollment)",
		Long: `List registration records. With --enrollment-group, those of the devices
provisioned through that group (one paged query). Without it, every record:
the service API has no query for all of them, so this reads the records of
each group and then looks up the record of each individual enrollment.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if top < 0 {
				return errors.New("--top must not be negative")
			}
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			var items []*dps.RegistrationState
			if groupID != "" {
				items, err = c.ListRegistrations(cmd.Context(), groupID, 0, top)
			} else {
				items, err = allRegistrations(cmd.Context(), c)
				if top > 0 && len(items) > top {
					items = items[:top]
				}
			}
			if err != nil {
				return err
			}
			if items == nil {
				items = []*dps.RegistrationState{}
			}
			return g.print(items)
		},
	}
	cmd.Flags().StringVar(&groupID, "enrollment-group", "", "enrollment group ID (default: all registrations)")
	aliasFlags(cmd.Flags(), map[string]string{"group-id": "enrollment-group", "gid": "enrollment-group"})
	cmd.Flags().IntVar(&top, "top", 0, "list at most this many (default all)")
	return cmd
}

// allRegistrations gathers every registration record, sorted by
// registration ID: those of each group's devices, then those of the
// individual enrollments that have one.
func allRegistrations(ctx context.Context, c *serviceclient.Client) ([]*dps.RegistrationState, error) {
	groups, err := c.ListEnrollmentGroups(ctx, 0, 0)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []*dps.RegistrationState
	add := func(r *dps.RegistrationState) {
		if k := strings.ToLower(r.RegistrationID); !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	for _, grp := range groups {
		regs, err := c.ListRegistrations(ctx, grp.EnrollmentGroupID, 0, 0)
		if err != nil {
			return nil, fmt.Errorf("registrations of group %s: %w", grp.EnrollmentGroupID, err)
		}
		for _, r := range regs {
			add(r)
		}
	}
	enrollments, err := c.ListEnrollments(ctx, 0, 0)
	if err != nil {
		return nil, err
	}
	for _, e := range enrollments {
		r, err := c.GetRegistration(ctx, e.RegistrationID)
		if serviceclient.IsNotFound(err) {
			continue // enrolled, never registered
		}
		if err != nil {
			return nil, fmt.Errorf("registration of %s: %w", e.RegistrationID, err)
		}
		add(r)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].RegistrationID < out[j].RegistrationID })
	return out, nil
}

func newRegistrationDeleteCmd(g *globals) *cobra.Command {
	var id, etag string
	cmd := &cobra.Command{
		Use:   "delete [REGISTRATION-ID]",
		Short: "Delete a device's registration record (its next registration is an initial assignment)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			regID, err := idArg(args, id, "registration-id")
			if err != nil {
				return err
			}
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			return c.DeleteRegistration(cmd.Context(), regID, etag)
		},
	}
	registrationIDFlag(cmd, &id)
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the record has this etag")
	return cmd
}
