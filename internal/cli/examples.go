package cli

import (
	"strings"

	"github.com/spf13/cobra"
)

// examples are the `--help` examples, by command path without "berth ",
// kept in one table so that every command has some and a test can parse
// each of them (TestHelpExamplesParse). `berth iot …` and `berth dps
// enrollment…` share the examples of the commands they repeat.
var examples = map[string]string{
	"serve": `berth serve
berth serve --mqtt-addr 127.0.0.1:8883 --https-addr 127.0.0.1:8443 --amqp-addr off --admin-addr 127.0.0.1:9443
berth serve --log-format json --log-level debug`,
	"version": `berth version
berth version --json`,

	"enrollment create": `berth enrollment create --enrollment-id my-device --device-id my-device
berth enrollment create my-x509-device --attestation-type x509 --certificate-path my-x509-device.crt
berth iot dps enrollment create --eid my-device --initial-twin-properties '{"interval":30}'`,
	"enrollment show": `berth enrollment show my-device
berth enrollment show --eid my-device --show-keys --query attestation.symmetricKey.primaryKey -o tsv`,
	"enrollment list": `berth enrollment list -o table
berth enrollment list --query "[].{id:registrationId, status:provisioningStatus}" -o table`,
	"enrollment update": `berth enrollment update my-device --provisioning-status disabled
berth enrollment update my-device --reprovision-policy never`,
	"enrollment delete": `berth enrollment delete my-device`,

	"enrollment-group create": `berth enrollment-group create --enrollment-id my-group
berth enrollment-group create x509-group --attestation-type x509 --ca-name berth-dev-ca
berth iot dps enrollment-group create --gid my-group --allocation-policy hashed --iot-hubs hub-a,hub-b`,
	"enrollment-group show": `berth enrollment-group show my-group
berth enrollment-group show --gid my-group --show-keys --query attestation.symmetricKey.primaryKey -o tsv`,
	"enrollment-group list":   `berth enrollment-group list -o table`,
	"enrollment-group update": `berth enrollment-group update my-group --initial-twin-tags '{"site":"lab"}'`,
	"enrollment-group delete": `berth enrollment-group delete my-group`,
	"enrollment-group compute-device-key": `berth enrollment-group compute-device-key my-group --registration-id my-device-1 -o tsv
berth iot dps enrollment-group compute-device-key --gid my-group --rid my-device-1`,

	"registration show":   `berth registration show my-device-1 -o yaml`,
	"registration list":   `berth registration list --enrollment-group my-group -o table`,
	"registration delete": `berth registration delete my-device-1`,

	"device derive-key": `berth device derive-key --group-key <group-key> --registration-id my-device-1`,
	"device sas-token":  `berth device sas-token --registration-id my-device-1 --key <device-key> --expiry 600`,
	"device register": `berth device register --registration-id my-device-1 --group-key <group-key>
berth device register --registration-id my-device --key <enrollment-key> --transport https
berth device register --certificate my-x509-device.crt`,
	"device certificate create": `berth device certificate create --registration-id my-x509-device
berth device certificate create --registration-id my-device --self-signed`,
	"device simulate": `berth device simulate --registration-id my-device-1 --group-key <group-key>
berth device simulate --registration-id sim --group-key <group-key> --devices 10 --interval 5s
berth device simulate --certificate my-x509-device.crt --hub-transport mqttws
berth device simulate --device-connection-string "HostName=my-hub;DeviceId=d1;SharedAccessKey=<key>" --method reboot=echo`,

	"dps connection-string show":                 `berth dps connection-string show --query connectionString -o tsv`,
	"dps certificate create":                     `berth dps certificate create --name berth-dev-ca --verify`,
	"dps certificate list":                       `berth dps certificate list -o table`,
	"dps certificate show":                       `berth dps certificate show berth-dev-ca`,
	"dps certificate update":                     `berth dps certificate update berth-dev-ca --path new-ca.crt`,
	"dps certificate delete":                     `berth dps certificate delete berth-dev-ca`,
	"dps certificate generate-verification-code": `berth dps certificate generate-verification-code --name my-ca`,
	"dps certificate verify":                     `berth dps certificate verify --name my-ca --path verification.crt`,

	"policy list":      `berth policy list -o table`,
	"policy show":      `berth policy show provisioningserviceowner`,
	"policy create":    `berth policy create --name reader --rights EnrollmentRead,RegistrationStatusRead`,
	"policy update":    `berth policy update reader --rights EnrollmentRead`,
	"policy delete":    `berth policy delete reader`,
	"policy renew-key": `berth policy renew-key reader --renew-key secondary`,

	"hub create": `berth hub create --name 127.0.0.2
berth hub create --name hub-b.example --allocation-weight 3 --region west
berth hub create --name hub-c.example --partition-count 8 --retention-days 1`,
	"hub list":   `berth hub list -o table`,
	"hub show":   `berth hub show 127.0.0.2`,
	"hub update": `berth hub update 127.0.0.2 --allocation-weight 0`,
	"hub delete": `berth hub delete 127.0.0.2`,

	"hub consumer-group create": `berth hub consumer-group create analytics
berth hub consumer-group create --name analytics --hub-name 127.0.0.2`,
	"hub consumer-group list":   `berth hub consumer-group list -o table`,
	"hub consumer-group delete": `berth hub consumer-group delete analytics`,

	"hub device-identity create": `berth hub device-identity create -d my-device
berth iot hub device-identity create -n my-hub -d my-device --pk <base64> --sk <base64>`,
	"hub device-identity show":                   `berth hub device-identity show -d my-device --query authentication.symmetricKey -o yaml`,
	"hub device-identity list":                   `berth hub device-identity list --query "[].{id:deviceId, state:connectionState}" -o table`,
	"hub device-identity update":                 `berth hub device-identity update -d my-device --status disabled --status-reason "lost"`,
	"hub device-identity delete":                 `berth hub device-identity delete -d my-device`,
	"hub device-identity connection-string show": `berth hub device-identity connection-string show -d my-device -o tsv`,
	"hub connection-string show": `berth hub connection-string show --query connectionString -o tsv
berth hub connection-string show --eventhub --query connectionString -o tsv`,
	"hub sas-token": `berth hub sas-token -d my-device
berth hub sas-token -d my-device --key <device-key> --duration 600`,

	"hub device-twin show":    `berth hub device-twin show -d my-device --query properties.reported`,
	"hub device-twin update":  `berth hub device-twin update -d my-device --desired '{"interval":30}' --tags '{"floor":3}'`,
	"hub device-twin replace": `berth hub device-twin replace -d my-device --json twin.json`,
	"hub invoke-device-method": `berth hub invoke-device-method -d my-device --method-name reboot --method-payload '{"delay":1}'
berth hub invoke-device-method -d my-device --mn getInfo --to 10 --query payload`,
	"hub c2d send": `berth hub c2d send -d my-device --data hello --props "color=red;size=2"
berth hub c2d send -d my-device --data-file firmware.bin --ack full`,
	"hub c2d purge":    `berth hub c2d purge -d my-device`,
	"hub c2d feedback": `berth hub c2d feedback --wait 30s -o table`,
	"hub monitor-events": `berth hub monitor-events --properties all
berth hub monitor-events -d my-device --timeout 60
berth hub monitor-events --query "event.{device:origin, t:payload.temperature}" -o tsv`,
	"hub configuration create": `berth hub configuration create -c fw-eco --priority 3 --target-condition "tags.site='north'" --content '{"deviceContent":{"properties.desired.mode":"eco"}}'
berth hub configuration create -c fw-all --target-condition "*" --content @content.json --metrics '{"queries":{"eco":"SELECT deviceId FROM devices WHERE properties.reported.mode = 'eco'"}}'
berth hub configuration create -c sensor-rate --target-condition "FROM devices.modules WHERE moduleId = 'sensor'" --content '{"moduleContent":{"properties.desired.rate":5}}'`,
	"hub configuration show":   `berth hub configuration show -c fw-eco --query systemMetrics.results`,
	"hub configuration list":   `berth hub configuration list -o table --query "[].{id:id, priority:priority, target:targetCondition}"`,
	"hub configuration delete": `berth hub configuration delete -c fw-eco`,
	"hub query":                `berth hub query -q "SELECT * FROM devices WHERE status = 'enabled'" --query "[].deviceId" -o tsv`,

	"hub module-identity create": `berth hub module-identity create -d my-device -m my-module`,
	"hub module-identity show":   `berth hub module-identity show -d my-device -m my-module`,
	"hub module-identity list":   `berth hub module-identity list -d my-device -o table`,
	"hub module-identity update": `berth hub module-identity update -d my-device -m my-module --managed-by IotEdge`,
	"hub module-identity delete": `berth hub module-identity delete -d my-device -m my-module`,
	"hub module-twin show":       `berth hub module-twin show -d my-device -m my-module`,
	"hub module-twin update":     `berth hub module-twin update -d my-device -m my-module --desired '{"rate":5}'`,

	"bench provision": `berth bench provision --embedded --devices 200
berth bench provision --cluster 1,3 --rounds 2 --devices 400 -o none`,
	"bench telemetry": `berth bench telemetry --embedded --devices 10 --duration 30s --rate 500
berth bench telemetry --nodes /var/lib/berth-2,/var/lib/berth-3 --devices 300`,
	"bench connect": `berth bench connect --embedded --devices 1000
berth bench connect --cluster 3 --devices 2000 --spawn-hosts 127.0.41.1,127.0.41.2,127.0.41.3`,
}

// exampleKey is the examples key of a command: its path without "berth",
// the az prefix "iot" and the "dps" that az puts before enrollment
// commands.
func exampleKey(c *cobra.Command) string {
	p := strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")
	p = strings.TrimPrefix(p, "iot ")
	for _, az := range []string{"dps enrollment ", "dps enrollment-group ", "dps registration ", "dps policy "} {
		if strings.HasPrefix(p, az) {
			p = strings.TrimPrefix(p, "dps ")
			break
		}
	}
	for _, az := range []string{"enrollment registration ", "enrollment-group registration "} {
		if strings.HasPrefix(p, az) {
			return strings.TrimPrefix(p, az[:strings.Index(az, " ")+1])
		}
	}
	return p
}

// addExamples sets the examples of every command that has none of its own.
func addExamples(c *cobra.Command) {
	for _, sub := range c.Commands() {
		addExamples(sub)
	}
	if c.Example != "" {
		return
	}
	if ex, ok := examples[exampleKey(c)]; ok {
		lines := strings.Split(ex, "\n")
		for i, l := range lines {
			lines[i] = "  " + l
		}
		c.Example = strings.Join(lines, "\n")
	}
}
