// Package localconf is the small file `berth serve` writes into its data
// directory so that the CLI on the same machine (operator and device
// commands) finds the running berth with no flags: its addresses, ID scope,
// CA and service connection string.
package localconf

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// FileName is the file's name inside the data directory.
const FileName = "client.json"

// Info describes a running berth to its local clients. The file holds the
// owner policy's key, so it is written 0600.
type Info struct {
	IDScope                 string `json:"idScope"`
	GlobalEndpoint          string `json:"globalEndpoint"`        // DPS host name devices use (TLS server name)
	HubHostName             string `json:"hubHostName"`           // default hub's host name
	MQTTAddress             string `json:"mqttAddress"`           // host:port to dial for MQTT
	HTTPSAddress            string `json:"httpsAddress"`          // host:port to dial for HTTPS
	AMQPAddress             string `json:"amqpAddress,omitempty"` // host:port to dial for AMQPS; "" when off
	CAFile                  string `json:"caFile"`                // PEM of the CA that signed the server certificate
	ServiceConnectionString string `json:"serviceConnectionString"`
	// HubConnectionString is the hub's iothubowner connection string.
	HubConnectionString string `json:"hubConnectionString"`
	// NATSURL is where the telemetry stream can be read (it carries the
	// embedded server's token); "" when it cannot be read from outside.
	NATSURL string `json:"natsUrl,omitempty"`
	// StreamSubjectPrefix is the telemetry stream's subject prefix.
	StreamSubjectPrefix string `json:"streamSubjectPrefix,omitempty"`
	// StreamName is the telemetry stream's JetStream name.
	StreamName string `json:"streamName,omitempty"`
}

// DefaultDataDir is $BERTH_DATA_DIR, or ~/.berth.
func DefaultDataDir() string {
	if d := os.Getenv("BERTH_DATA_DIR"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return ".berth"
	}
	return filepath.Join(home, ".berth")
}

// Write stores info in dir atomically.
func Write(dir string, info *Info) error {
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return fmt.Errorf("localconf: encode: %w", err)
	}
	tmp, err := os.CreateTemp(dir, FileName+".*")
	if err != nil {
		return fmt.Errorf("localconf: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("localconf: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("localconf: write: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("localconf: write: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, FileName)); err != nil {
		return fmt.Errorf("localconf: %w", err)
	}
	return nil
}

// Read loads the info of the berth whose data directory is dir.
func Read(dir string) (*Info, error) {
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		return nil, fmt.Errorf("localconf: no running berth found in %s (start one with `berth serve`, or pass --connection-string): %w", dir, err)
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("localconf: %s: %w", filepath.Join(dir, FileName), err)
	}
	return &info, nil
}
