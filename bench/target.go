package bench

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/berth-iot/berth/internal/localconf"
)

// Target is the berth under load and what a device needs to reach it.
type Target struct {
	IDScope        string
	GlobalEndpoint string // DPS host name: TLS server name of both listeners
	MQTTAddress    string // host:port of the MQTT listener (DPS and hub)
	HTTPSAddress   string // host:port of the HTTPS listener
	AMQPAddress    string // host:port of the AMQP listener; "" when off
	HubHostName    string // the hub devices are assigned to
	CAFile         string
	RootCAs        *x509.CertPool
	// ServiceConnectionString authenticates the enrollment group set-up.
	ServiceConnectionString string
	// HubConnectionString reaches the hub's Event Hubs-compatible
	// endpoint (telemetry --read eventhubs).
	HubConnectionString string
	// ServerPID is the server's process, for memory figures; 0 when
	// unknown.
	ServerPID int
	// Mode says how the server runs: "local" (found through client.json),
	// "embedded" (in the bench's process) or "spawned" (a child `berth
	// serve`).
	Mode string
}

// TargetFromInfo describes the berth of a client.json. caFile and
// connStr, when not empty, replace the file's.
func TargetFromInfo(info *localconf.Info, caFile, connStr string) (*Target, error) {
	t := &Target{
		IDScope:                 info.IDScope,
		GlobalEndpoint:          info.GlobalEndpoint,
		MQTTAddress:             info.MQTTAddress,
		HTTPSAddress:            info.HTTPSAddress,
		AMQPAddress:             info.AMQPAddress,
		HubHostName:             info.HubHostName,
		CAFile:                  info.CAFile,
		ServiceConnectionString: info.ServiceConnectionString,
		HubConnectionString:     info.HubConnectionString,
		Mode:                    "local",
	}
	if caFile != "" {
		t.CAFile = caFile
	}
	if connStr != "" {
		t.ServiceConnectionString = connStr
	}
	switch {
	case t.IDScope == "" || t.GlobalEndpoint == "":
		return nil, errors.New("bench: client.json has no ID scope or global endpoint")
	case t.MQTTAddress == "" || t.HTTPSAddress == "":
		return nil, errors.New("bench: client.json has no listener addresses")
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bench: CA file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bench: CA file %s holds no PEM certificate", t.CAFile)
		}
	}
	return t, nil
}

// HubAddress is where to dial a device's assigned hub: this berth's MQTT
// listener when the hub is its own (the listener serves DPS and hub
// sessions alike), else the hub's host name on 8883.
func (t *Target) HubAddress(hub string) string {
	if hub == "" || strings.EqualFold(hub, t.HubHostName) {
		return t.MQTTAddress
	}
	return net.JoinHostPort(hub, "8883")
}

// Check refuses a target that is not on loopback unless allowRemote.
func (t *Target) Check(ctx context.Context, allowRemote bool) error {
	for _, addr := range []string{t.MQTTAddress, t.HTTPSAddress, t.HubAddress("")} {
		if err := CheckLoopback(ctx, nil, addr, allowRemote); err != nil {
			return err
		}
	}
	return nil
}
