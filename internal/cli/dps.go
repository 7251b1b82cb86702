package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/pki"
	"github.com/berth-iot/berth/serviceclient"
)

// `berth dps certificate …` manages the CA certificates of the DPS that
// X.509 enrollment groups reference (--ca-name) and their proof of
// possession, with the verbs of `az iot dps certificate …`. Azure does
// this through Azure Resource Manager; berth through its service API
// (serviceclient's certificate calls), so the commands need the DPS
// service connection string of a policy with ServiceConfig.

// certAliases are az's other spellings of --name.
var certAliases = map[string]string{"certificate-name": "name"}

// proofValidity is the lifetime of a verification certificate: it is
// uploaded at once and never used again.
const proofValidity = time.Hour

func newDPSCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dps",
		Short: "Manage the DPS (like `az iot dps …`): CA certificates, connection string; enrollments as az spells them",
	}
	cert := &cobra.Command{
		Use:   "certificate",
		Short: "Manage the CA certificates X.509 enrollment groups reference, and their proof of possession",
		Long: `Upload CA certificates, prove possession of their private keys and manage
them, like ` + "`az iot dps certificate …`" + `. An enrollment group with
--ca-name authenticates devices only through a verified certificate.

Proof of possession: generate-verification-code gives a code; sign a
certificate whose subject CN is that code with the CA's private key; verify
uploads it. create --verify does all three when it has the CA's key: --key,
or, for berth's development CA (the default certificate), the ca.key next
to it. So ` + "`berth dps certificate create --name berth-dev-ca --verify`" + ` makes
berth's development CA a verified CA in one step.`,
	}
	cert.AddCommand(newCertCreateCmd(g), newCertListCmd(g), newCertShowCmd(g), newCertUpdateCmd(g),
		newCertDeleteCmd(g), newCertGenerateCodeCmd(g), newCertVerifyCmd(g))
	connStr := &cobra.Command{
		Use:   "connection-string",
		Short: "Show the DPS's service connection string",
	}
	connStr.AddCommand(newDPSConnStringShowCmd(g))
	cmd.AddCommand(cert, connStr)
	// az's paths: az iot dps enrollment|enrollment-group|registration.
	cmd.AddCommand(newEnrollmentCmd(g), newEnrollmentGroupCmd(g), newRegistrationCmd(g), newPolicyCmd(g))
	return cmd
}

// newDPSConnStringShowCmd is az iot dps connection-string show for the
// local berth: the owner policy's connection string from client.json (or
// --connection-string), with no network traffic. `berth serve` prints it
// only at first start and names this command later.
func newDPSConnStringShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Show the DPS service connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			connStr, _, _, err := serviceConnectionString(g)
			if err != nil {
				return err
			}
			return g.print(connectionString{ConnectionString: connStr})
		},
	}
}

// namedCertCmd completes cmd as a command on one certificate, named by the
// one argument or --name: namedPolicyCmd with the certificate's flag help
// and aliases.
func namedCertCmd(g *globals, cmd *cobra.Command, run func(ctx context.Context, c *serviceclient.Client, name string) error) *cobra.Command {
	namedPolicyCmd(g, &policyFlags{}, cmd, run)
	cmd.Flags().Lookup("name").Usage = "name of the certificate in the DPS (alias --certificate-name)"
	aliasFlags(cmd.Flags(), certAliases)
	return cmd
}

// uploadFlags are create's and update's options.
type uploadFlags struct {
	path, key string
	verify    bool
}

func (uf *uploadFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVarP(&uf.path, "path", "p", "", "CA certificate file, PEM or DER (default: berth's development CA, the data directory's ca/ca.crt)")
	f.StringVar(&uf.key, "key", "", "the CA's private key (PEM), for --verify (default: for berth's development CA, the ca.key next to it)")
	f.BoolVar(&uf.verify, "verify", false, "prove possession of the CA's key at once (generate a code, sign a verification certificate, verify)")
}

// load reads the certificate to upload and, for --verify, the CA with its
// key. berth's development CA needs no --key: its key is next to it.
func (uf *uploadFlags) load(g *globals) (pemText string, ca *pki.CA, err error) {
	path, keyFile := uf.path, uf.key
	dev := devCAFile(g)
	if path == "" {
		path = dev
	}
	pemText, _, err = readCertificateFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("--path: %w", err)
	}
	if !uf.verify {
		if keyFile != "" {
			return "", nil, errors.New("--key is for --verify")
		}
		return pemText, nil, nil
	}
	if keyFile == "" {
		if !sameFile(path, dev) {
			return "", nil, errors.New("--verify needs the CA's private key (--key), except for berth's development CA")
		}
		keyFile = devCAKeyFile(dev)
	}
	ca, _, err = loadCA(path, keyFile)
	if err != nil {
		return "", nil, err
	}
	return pemText, ca, nil
}

// sameFile reports whether a and b name one existing file.
func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// upload puts the certificate and, with a CA key, proves possession.
func (uf *uploadFlags) upload(ctx context.Context, g *globals, c *serviceclient.Client, name, pemText, ifMatch string, ca *pki.CA) error {
	out, _, err := c.PutCertificate(ctx, name, pemText, ifMatch)
	if err != nil {
		return err
	}
	if ca != nil {
		if out, err = proveCertificate(ctx, c, name, ca); err != nil {
			return fmt.Errorf("certificate %s was uploaded but not verified (retry with `berth dps certificate update --verify`): %w", name, err)
		}
	}
	return g.print(out)
}

// proveCertificate runs proof of possession for the uploaded certificate
// name with its CA: a fresh verification code, a certificate with that
// code as subject CN signed by the CA's key, verify. The verification
// certificate's key is thrown away: only the CA's signature matters.
func proveCertificate(ctx context.Context, c *serviceclient.Client, name string, ca *pki.CA) (*dps.Certificate, error) {
	withCode, err := c.GenerateVerificationCode(ctx, name)
	if err != nil {
		return nil, err
	}
	code := withCode.Properties.VerificationCode
	if code == "" {
		return nil, errors.New("the service gave no verification code")
	}
	proof, _, err := ca.IssueClientCert(code, proofValidity)
	if err != nil {
		return nil, err
	}
	return c.VerifyCertificate(ctx, name, string(proof))
}

func newCertCreateCmd(g *globals) *cobra.Command {
	var uf uploadFlags
	cmd := namedCertCmd(g, &cobra.Command{Use: "create [NAME]", Short: "Upload a CA certificate (and with --verify prove possession of its key)"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			pemText, ca, err := uf.load(g)
			if err != nil {
				return err
			}
			// A PUT of an existing certificate replaces it and drops its
			// verification: refuse, as the other creates do.
			if _, err := c.GetCertificate(ctx, name); err == nil {
				return fmt.Errorf("certificate %q already exists; use `berth dps certificate update`", name)
			} else if !serviceclient.IsNotFound(err) {
				return err
			}
			return uf.upload(ctx, g, c, name, pemText, "", ca)
		})
	uf.register(cmd)
	return cmd
}

func newCertUpdateCmd(g *globals) *cobra.Command {
	var (
		uf   uploadFlags
		etag string
	)
	cmd := &cobra.Command{Use: "update [NAME]", Short: "Replace an uploaded CA certificate (it is unverified until proven again; --verify does that)"}
	namedCertCmd(g, cmd, func(ctx context.Context, c *serviceclient.Client, name string) error {
		pemText, ca, err := uf.load(g)
		if err != nil {
			return err
		}
		// Update never creates: a typo in the name must not add a CA.
		cur, err := c.GetCertificate(ctx, name)
		if err != nil {
			return err
		}
		ifMatch := cur.ETag
		if cmd.Flags().Changed("etag") {
			ifMatch = etag
		}
		return uf.upload(ctx, g, c, name, pemText, ifMatch, ca)
	})
	uf.register(cmd)
	cmd.Flags().StringVar(&etag, "etag", "", "replace only if the certificate still has this etag (default: the etag just read)")
	return cmd
}

func newCertListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: `List the uploaded CA certificates ({"value": […]}, as az prints it)`,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := serviceClient(g)
			if err != nil {
				return err
			}
			list, err := c.ListCertificates(cmd.Context())
			if err != nil {
				return err
			}
			if list == nil {
				list = []*dps.Certificate{}
			}
			return g.print(map[string]any{"value": list})
		},
	}
}

func newCertShowCmd(g *globals) *cobra.Command {
	return namedCertCmd(g, &cobra.Command{Use: "show [NAME]", Short: "Show an uploaded CA certificate"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			out, err := c.GetCertificate(ctx, name)
			if err != nil {
				return err
			}
			return g.print(out)
		})
}

func newCertDeleteCmd(g *globals) *cobra.Command {
	var etag string
	cmd := namedCertCmd(g, &cobra.Command{Use: "delete [NAME]", Short: "Delete an uploaded CA certificate (groups referencing it stop authenticating devices)"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			return c.DeleteCertificate(ctx, name, etag)
		})
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the certificate has this etag")
	return cmd
}

func newCertGenerateCodeCmd(g *globals) *cobra.Command {
	return namedCertCmd(g, &cobra.Command{
		Use:   "generate-verification-code [NAME]",
		Short: "Start proof of possession: print the certificate with a new properties.verificationCode",
		Long: `Print the certificate with a new verification code (properties.verificationCode).
Sign a certificate whose subject CN is the code with the CA's private key,
e.g. with openssl:

  openssl req -new -key ca.key -subj "/CN=CODE" -out proof.csr
  openssl x509 -req -in proof.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out proof.pem

and upload it with ` + "`berth dps certificate verify --name NAME --path proof.pem`" + `.`,
	}, func(ctx context.Context, c *serviceclient.Client, name string) error {
		out, err := c.GenerateVerificationCode(ctx, name)
		if err != nil {
			return err
		}
		return g.print(out)
	})
}

func newCertVerifyCmd(g *globals) *cobra.Command {
	var path string
	cmd := namedCertCmd(g, &cobra.Command{Use: "verify [NAME]", Short: "Complete proof of possession with a verification certificate (CN = the code, signed by the CA)"},
		func(ctx context.Context, c *serviceclient.Client, name string) error {
			proof, _, err := readCertificateFile(path)
			if err != nil {
				return fmt.Errorf("--path: %w", err)
			}
			out, err := c.VerifyCertificate(ctx, name, proof)
			if err != nil {
				return err
			}
			return g.print(out)
		})
	cmd.Flags().StringVarP(&path, "path", "p", "", "the verification certificate, PEM or DER")
	_ = cmd.MarkFlagRequired("path")
	return cmd
}
