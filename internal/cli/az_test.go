package cli

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hubclient"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/serviceclient"
)

// az's habits against a real berth: its command paths, global flags,
// aliases and output flags.
func TestAzHabitsAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	t.Setenv("BERTH_CONNECTION_STRING", "")
	t.Setenv("BERTH_OUTPUT", "")
	dir := startBerth(t)
	info, err := localconf.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	dpsCS, err := serviceclient.ParseConnectionString(info.ServiceConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	cmd := func(args ...string) (string, error) {
		t.Helper()
		out, _, err := run(t, append([]string{"--data-dir", dir}, args...)...)
		return out, err
	}
	must := func(want string, args ...string) {
		t.Helper()
		out, err := cmd(args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if out != want {
			t.Errorf("%v:\ngot  %q\nwant %q", args, out, want)
		}
	}
	fails := func(want string, args ...string) {
		t.Helper()
		out, err := cmd(args...)
		if err == nil || !strings.Contains(err.Error(), want) || out != "" {
			t.Errorf("%v: err %v, out %q; want an error with %q", args, err, out, want)
		}
	}

	// The paths az spells, and its ID aliases.
	must("", "iot", "dps", "enrollment-group", "create", "--gid", "g1", "-o", "none")
	must("", "dps", "enrollment-group", "create", "--eid", "g2", "--provisioning-status", "disabled", "-o", "none")
	must("", "iot", "dps", "enrollment", "create", "--eid", "e1", "-o", "none")
	must("g1\n", "dps", "enrollment-group", "show", "--eid", "g1", "--query", "enrollmentGroupId", "-o", "tsv")
	must("Id  Status\n--  --------\ng1  enabled\ng2  disabled\n",
		"enrollment-group", "list", "-o", "table", "--query", "[].{id:enrollmentGroupId, status:provisioningStatus}")
	must("e1\n", "iot", "dps", "enrollment", "list", "--query", "[].registrationId", "-o", "tsv")
	fails("404", "iot", "dps", "registration", "show", "--rid", "e1")
	fails("404", "iot", "dps", "enrollment", "registration", "show", "--rid", "e1")
	must("[]\n", "iot", "dps", "enrollment-group", "registration", "list", "--gid", "g1")

	// compute-device-key reads the group's key and derives the member's.
	grp, err := cmd("enrollment-group", "show", "g1", "--show-keys", "--query", "attestation.symmetricKey.primaryKey", "-o", "tsv")
	if err != nil {
		t.Fatal(err)
	}
	want, err := sas.DeriveKey(strings.TrimSpace(grp), "dev-7")
	if err != nil {
		t.Fatal(err)
	}
	must(want+"\n", "iot", "dps", "enrollment-group", "compute-device-key", "--gid", "g1", "--rid", "dev-7", "-o", "tsv")
	must(`"`+want+"\"\n", "enrollment-group", "compute-device-key", "g1", "--registration-id", "dev-7")
	must("provisioningserviceowner\n", "iot", "dps", "policy", "list", "--query", "[?keyName=='provisioningserviceowner'].keyName", "-o", "tsv")

	// --dps-name is checked against the connection string.
	must("g1\n", "enrollment-group", "show", "g1", "--dps-name", dpsCS.HostName, "--query", "enrollmentGroupId", "-o", "tsv")
	fails(`--dps-name "other-dps" is not the DPS`, "enrollment-group", "show", "g1", "--dps-name", "other-dps")

	// --login stands for the connection string, DPS or hub by command.
	other := t.TempDir() // no client.json: everything comes from flags
	remote := []string{"--data-dir", other, "--ca-file", info.CAFile, "--address", info.HTTPSAddress}
	// --login wins over the environment's connection string.
	t.Setenv("BERTH_CONNECTION_STRING", "HostName=elsewhere.example;SharedAccessKeyName=x;SharedAccessKey=eA==")
	out, _, err := run(t, append(remote, "enrollment", "show", "e1", "--login", info.ServiceConnectionString, "--query", "registrationId", "-o", "tsv")...)
	if err != nil || out != "e1\n" {
		t.Errorf("enrollment show --login: %q, %v", out, err)
	}
	out, _, err = run(t, append(remote, "hub", "device-identity", "create", "d1", "--login", info.HubConnectionString, "--query", "deviceId", "-o", "tsv")...)
	if err != nil || out != "d1\n" {
		t.Errorf("hub device-identity create --login: %q, %v", out, err)
	}

	// -n/--hub-name names the hub; another hub's name is refused.
	hubCS, err := hubclient.ParseConnectionString(info.HubConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	must("DeviceId  Status\n--------  -------\nd1        enabled\n",
		"iot", "hub", "device-identity", "list", "-n", hubCS.HostName, "-o", "table", "--query", "[].{deviceId:deviceId, status:status}")
	must("d1\n", "hub", "device-identity", "show", "d1", "--hub-name", "hub", "--query", "deviceId", "-o", "tsv")
	fails(`--hub-name "other-hub" is not the hub`, "hub", "device-identity", "show", "d1", "-n", "other-hub")

	// az's command names.
	out, err = cmd("hub", "generate-sas-token", "-d", "d1", "--query", "sas", "-o", "tsv")
	if err != nil || !strings.HasPrefix(out, "SharedAccessSignature sr=") {
		t.Errorf("hub generate-sas-token: %q, %v", out, err)
	}
	must("0\n", "iot", "hub", "c2d-message", "purge", "-d", "d1", "--query", "totalMessagesPurged", "-o", "tsv")

	// yaml of a real resource.
	out, err = cmd("hub", "device-identity", "show", "d1", "-o", "yaml")
	if err != nil || !strings.HasPrefix(out, "deviceId: d1\n") || !strings.Contains(out, "status: enabled\n") {
		t.Errorf("device-identity show -o yaml: %v\n%s", err, out)
	}
}

// A mistyped subcommand fails with a suggestion at every level; a group
// alone prints its help and succeeds.
func TestUnknownSubcommands(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"enrolment"}, "unknown command \"enrolment\" for \"berth\"\n\nDid you mean this?\n\tenrollment"},
		{[]string{"hub", "devce-identity", "list", "-d", "x"}, "unknown command \"devce-identity\" for \"berth hub\"\n\nDid you mean this?\n\tdevice-identity"},
		{[]string{"iot", "dps", "enrollment-group", "craete"}, "unknown command \"craete\" for \"berth iot dps enrollment-group\"\n\nDid you mean this?\n\tcreate"},
		{[]string{"hub", "xyzzy"}, "unknown command \"xyzzy\" for \"berth hub\"\n\nRun 'berth hub --help' for usage."},
	} {
		out, _, err := run(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) || out != "" {
			t.Errorf("%v: err %v, out %q; want %q", tt.args, err, out, tt.want)
		}
	}
	out, _, err := run(t, "hub", "device-twin")
	if err != nil || !strings.Contains(out, "Available Commands:") {
		t.Errorf("hub device-twin alone: %v\n%s", err, out)
	}
}

func TestSameName(t *testing.T) {
	for _, tt := range []struct {
		name, host string
		want       bool
	}{
		{"my-hub", "my-hub.azure-devices.net", true},
		{"MY-HUB.azure-devices.net", "my-hub.azure-devices.net", true},
		{"my", "my-hub.azure-devices.net", false},
		{"127", "127.0.0.1", false},
		{"127.0.0.1", "127.0.0.1", true},
	} {
		if got := sameName(tt.name, tt.host); got != tt.want {
			t.Errorf("sameName(%q, %q) = %v", tt.name, tt.host, got)
		}
	}
}

// Every command has --help examples, and each example parses: its
// command exists, its flags are the command's and its arguments fit.
func TestHelpExamplesParse(t *testing.T) {
	root := NewRoot(io.Discard, io.Discard)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if !c.Runnable() || c.HasSubCommands() || c.Hidden {
			return
		}
		if c.Example == "" {
			t.Errorf("%s: no example", c.CommandPath())
			return
		}
		for _, line := range strings.Split(c.Example, "\n") {
			words := shellWords(strings.TrimSpace(line))
			if len(words) == 0 || words[0] != "berth" {
				t.Errorf("%s: example %q does not start with berth", c.CommandPath(), line)
				continue
			}
			if len(words) > 1 && strings.HasPrefix(words[1], "-") {
				continue // a root flag, like berth --version
			}
			fresh := NewRoot(io.Discard, io.Discard) // flags parsed here stay here
			cmd, rest, err := fresh.Find(words[1:])
			if err != nil || !cmd.Runnable() || exampleKey(cmd) != exampleKey(c) {
				t.Errorf("%s: example %q finds %v (%v)", c.CommandPath(), line, cmd.CommandPath(), err)
				continue
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: example %q: %v", c.CommandPath(), line, err)
				continue
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Errorf("%s: example %q: %v", c.CommandPath(), line, err)
			}
		}
	}
	walk(root)
}

// shellWords splits a line as a shell would for these examples: words
// separated by spaces, single and double quotes grouping.
func shellWords(s string) []string {
	var words []string
	var cur strings.Builder
	in, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}
