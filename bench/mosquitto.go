package bench

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/berth-iot/berth/pki"
)

// DefaultMosquitto is where Debian's mosquitto package installs the
// broker.
const DefaultMosquitto = "/usr/sbin/mosquitto"

// DefaultMosquittoHost is the loopback address the baseline broker gets
// by default: its own, so it never collides with a broker the machine
// already runs on 127.0.0.1:8883.
const DefaultMosquittoHost = "127.0.0.77"

// Mosquitto is a broker the bench started for a baseline: a TLS listener
// with a certificate from a throwaway development CA (ECDSA P-256, like
// berth's, so both handshakes cost the same), anonymous access and no
// persistence. Mosquitto never fsyncs, so against it berth's durable QoS 1
// acknowledgement is compared with an in-memory one.
type Mosquitto struct {
	cmd      *exec.Cmd
	dir      string
	exited   chan struct{}
	waitErr  error
	stderr   *tailBuffer
	Endpoint Endpoint
	PID      int
}

// mosquittoWait bounds the wait for the broker to accept connections.
const mosquittoWait = 10 * time.Second

// StartMosquitto runs bin on host (a loopback address) and a free port.
func StartMosquitto(ctx context.Context, bin, host string) (*Mosquitto, error) {
	if err := CheckLoopback(ctx, nil, host, false); err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("bench: mosquitto (apt-get install mosquitto, or --mosquitto PATH, or --baseline=false): %w", err)
	}
	dir, err := os.MkdirTemp("", "berth-bench-mosquitto-")
	if err != nil {
		return nil, fmt.Errorf("bench: mosquitto dir: %w", err)
	}
	m := &Mosquitto{dir: dir, exited: make(chan struct{}), stderr: &tailBuffer{max: 4096}}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	ca, _, err := pki.LoadOrCreateCA(filepath.Join(dir, "ca"))
	if err != nil {
		return nil, fmt.Errorf("bench: mosquitto CA: %w", err)
	}
	if _, _, err := ca.LoadOrCreateServerCert(dir, []string{host}); err != nil {
		return nil, fmt.Errorf("bench: mosquitto certificate: %w", err)
	}
	port, err := freePort(host)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(mosquittoConfig(host, port, dir, currentUser())), 0o600); err != nil {
		return nil, fmt.Errorf("bench: mosquitto config: %w", err)
	}
	m.cmd = exec.Command(bin, "-c", conf)
	m.cmd.Stdout = m.stderr
	m.cmd.Stderr = m.stderr
	m.cmd.SysProcAttr = childProcAttr()
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start mosquitto: %w", err)
	}
	go func() { m.waitErr = m.cmd.Wait(); close(m.exited) }()
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if err := m.waitReady(ctx, addr); err != nil {
		_ = stopProcess(m.cmd.Process, m.exited, 2*time.Second)
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	m.Endpoint = Endpoint{Name: "mosquitto", Address: addr, ServerName: host, RootCAs: roots}
	m.PID = m.cmd.Process.Pid
	ok = true
	return m, nil
}

// mosquittoConfig is the broker's configuration. set_tcp_nodelay matches
// Go's default (Nagle off): with Nagle on, a PUBACK can wait for the
// client's delayed ACK and the baseline would measure that instead of the
// broker. user keeps a broker started by root from switching to the
// mosquitto user, who could not read the key in the bench's 0700 dir.
func mosquittoConfig(host string, port int, dir, userName string) string {
	return fmt.Sprintf(`# written by berth bench
per_listener_settings false
allow_anonymous true
persistence false
set_tcp_nodelay true
user %s
log_dest stderr
log_type error
log_type warning
listener %d %s
certfile %s
keyfile %s
`, userName, port, host, filepath.Join(dir, pki.ServerCertFile), filepath.Join(dir, pki.ServerKeyFile))
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "root"
}

// freePort returns a port nothing listens on at host. Another process
// could take it before mosquitto binds it; then the start fails loudly.
func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("bench: free port on %s: %w", host, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (m *Mosquitto) waitReady(ctx context.Context, addr string) error {
	deadline := time.Now().Add(mosquittoWait)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.exited:
			return fmt.Errorf("bench: mosquitto exited (%v): %s", m.waitErr, m.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: mosquitto not listening on %s after %s: %s", addr, mosquittoWait, m.stderr.String())
		}
	}
}

// Close stops the broker and removes its files.
func (m *Mosquitto) Close() error {
	err := stopProcess(m.cmd.Process, m.exited, 5*time.Second)
	if rerr := os.RemoveAll(m.dir); rerr != nil && err == nil {
		err = fmt.Errorf("bench: remove %s: %w", m.dir, rerr)
	}
	return err
}
