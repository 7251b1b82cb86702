package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/berth-iot/berth/server"
)

// listenHint adds the fix to a listener that could not be opened: the
// flag that moves it, and for a port below 1024 (443 of all the ports the
// SDKs hard-code) how to give berth the privilege without running it as
// root.
func listenHint(err error, cfg server.Config) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "listen" || op.Addr == nil {
		return err
	}
	_, port, perr := net.SplitHostPort(op.Addr.String())
	if perr != nil {
		return err
	}
	flag, host := "", ""
	for _, l := range []struct{ flag, addr string }{
		{"--https-addr", cfg.HTTPSAddr}, {"--mqtt-addr", cfg.MQTTAddr}, {"--amqp-addr", cfg.AMQPAddr},
		{"--admin-addr", cfg.AdminAddr}, {"--stream-listen", cfg.StreamListen},
	} {
		if h, p, e := net.SplitHostPort(l.addr); e == nil && p == port {
			flag, host = l.flag, h
			break
		}
	}
	move := "choose another address or port"
	if flag != "" {
		move = "move it with " + flag + " (e.g. " + flag + " " + net.JoinHostPort(host, "1"+port) + ")"
	}
	switch {
	case errors.Is(err, os.ErrPermission):
		exe, _ := os.Executable()
		if exe == "" {
			exe = "berth"
		}
		return fmt.Errorf(`%w

Port %s is below 1024 and needs a privilege. Either give it to berth once
(no root at run time):
    sudo setcap cap_net_bind_service=+ep %s
or run it under systemd with AmbientCapabilities=CAP_NET_BIND_SERVICE
(contrib/systemd/berth.service), or %s
(devices then need that port: the Azure SDKs hard-code 443).`, err, port, exe, move)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w\n\nSomething already listens on port %s (another berth? a web server?): stop it, or %s.", err, port, move)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%w\n\nNo interface has that address: %s.", err, move)
	}
	return err
}

// dialHint says what a refused connection usually means for the client
// commands: no berth is listening there.
func dialHint(err error) error {
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return err
	}
	return fmt.Errorf("%w\n\nIs berth running? Start it with `berth serve`, or point the command at it (--address, --connection-string, --data-dir).", err)
}

// defaultHosts is --host's default; hostsHint speaks only when it was kept.
var defaultHosts = []string{"127.0.0.1", "localhost"}

// hostsHint catches the first thing a user does on a shared machine: move
// the listeners to their own IP with --mqtt-addr and friends but keep
// --host's default. berth then tells devices, connection strings and
// client.json to reach 127.0.0.1 (where another berth may answer) and
// issues its certificate for names the listener is not on, so curl,
// mosquitto and the SDKs fail TLS or talk to the wrong server. A host
// given on purpose (a DNS name for that IP) is left alone.
func hostsHint(cfg server.Config) string {
	if len(cfg.Hosts) != len(defaultHosts) {
		return ""
	}
	for i, h := range cfg.Hosts {
		if h != defaultHosts[i] {
			return ""
		}
	}
	for _, l := range []struct{ flag, addr string }{
		{"--https-addr", cfg.HTTPSAddr}, {"--mqtt-addr", cfg.MQTTAddr}, {"--amqp-addr", cfg.AMQPAddr},
	} {
		host, _, err := net.SplitHostPort(l.addr)
		ip := net.ParseIP(host)
		if err != nil || ip == nil || ip.IsUnspecified() || ip.Equal(net.IPv4(127, 0, 0, 1)) || ip.Equal(net.IPv6loopback) {
			continue
		}
		return fmt.Sprintf(`Note: %s listens on %s, but devices, connection strings and client.json
name %s (the default --host) and the certificate covers only %s:
restart with --host %s (or BERTH_HOST=%s) so that clients reach this berth,
before devices register: the hub's name follows the first --host.
`, l.flag, host, defaultHosts[0], strings.Join(defaultHosts, ", "), host, host)
	}
	return ""
}
