package cli

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/berth-iot/berth/server"
)

// A port taken by another program: the error names the flag that moves
// the listener, through the real error chain of server.Start.
func TestServeHintPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := server.Config{
		DataDir: t.TempDir(), Hosts: []string{"127.0.0.1"}, HubName: "hub.berth.test",
		MQTTAddr: ln.Addr().String(), HTTPSAddr: "127.0.0.1:0", AMQPAddr: "127.0.0.1:0", AdminAddr: "none",
		StreamListen: "none",
	}
	err = runServe(context.Background(), cfg, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "already listens on port") || !strings.Contains(err.Error(), "--mqtt-addr") {
		t.Errorf("serve on a taken port: %v", err)
	}
}

// A privileged port refused (EACCES, which a root test cannot provoke):
// setcap, the systemd unit, and the flag.
func TestServeHintPrivilegedPort(t *testing.T) {
	addr := &net.TCPAddr{IP: net.ParseIP("0.0.0.0"), Port: 443}
	err := &net.OpError{Op: "listen", Net: "tcp", Addr: addr, Err: os.NewSyscallError("bind", syscall.EACCES)}
	got := listenHint(err, server.Config{HTTPSAddr: ":443", MQTTAddr: ":8883"}).Error()
	for _, want := range []string{"permission denied", "setcap cap_net_bind_service=+ep", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "--https-addr"} {
		if !strings.Contains(got, want) {
			t.Errorf("hint lacks %q:\n%s", want, got)
		}
	}
	if other := listenHint(os.ErrNotExist, server.Config{}); other != os.ErrNotExist {
		t.Errorf("an unrelated error changed: %v", other)
	}
}

func TestDialHint(t *testing.T) {
	err := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	if got := dialHint(err).Error(); !strings.Contains(got, "Is berth running?") {
		t.Errorf("dial hint: %s", got)
	}
}

// Listeners moved to the user's own IP with --host left at its default:
// the banner says to add --host, since clients would be sent to 127.0.0.1
// and the certificate would not name the listener's IP. Every other
// combination is quiet.
func TestServeHintHostsForMovedListener(t *testing.T) {
	moved := server.Config{Hosts: defaultHosts, HTTPSAddr: "127.0.30.1:443", MQTTAddr: "127.0.30.1:8883", AMQPAddr: "off"}
	got := hostsHint(moved)
	for _, want := range []string{"--https-addr listens on 127.0.30.1", "--host 127.0.30.1", "BERTH_HOST=127.0.30.1"} {
		if !strings.Contains(got, want) {
			t.Errorf("hint lacks %q:\n%s", want, got)
		}
	}
	for name, cfg := range map[string]server.Config{
		"defaults":       {Hosts: defaultHosts, HTTPSAddr: ":443", MQTTAddr: ":8883", AMQPAddr: ":5671"},
		"loopback":       {Hosts: defaultHosts, HTTPSAddr: "127.0.0.1:443", MQTTAddr: "127.0.0.1:8883", AMQPAddr: "[::1]:5671"},
		"host given":     {Hosts: []string{"127.0.30.1"}, HTTPSAddr: "127.0.30.1:443", MQTTAddr: "127.0.30.1:8883", AMQPAddr: "off"},
		"DNS name given": {Hosts: []string{"iot.example.com", "localhost"}, HTTPSAddr: "10.0.0.5:443", MQTTAddr: ":8883", AMQPAddr: ":5671"},
		"any address":    {Hosts: defaultHosts, HTTPSAddr: "0.0.0.0:443", MQTTAddr: "[::]:8883", AMQPAddr: "off"},
	} {
		if h := hostsHint(cfg); h != "" {
			t.Errorf("%s: unexpected hint:\n%s", name, h)
		}
	}
}

// The banner's commands must run as pasted: ./bin/berth (make run) when
// berth is not on PATH, plain berth when it is or when the name is not
// berth's (a test binary).
func TestServeBannerCLIName(t *testing.T) {
	notFound := func(string) (string, error) { return "", exec.ErrNotFound }
	found := func(string) (string, error) { return "/usr/local/bin/berth", nil }
	for _, c := range []struct {
		arg0 string
		look func(string) (string, error)
		want string
	}{
		{"./bin/berth", notFound, "./bin/berth"},
		{"/opt/berth/berth", notFound, "/opt/berth/berth"},
		{"./bin/berth", found, "berth"},
		{"berth", notFound, "berth"},
		{"/tmp/go-build1/cli.test", notFound, "berth"},
	} {
		if got := cliName(c.arg0, c.look); got != c.want {
			t.Errorf("cliName(%q): %q, want %q", c.arg0, got, c.want)
		}
	}
}

// BERTH_DATA_DIR given to the server alone (make run, a unit file) is not
// in the terminal where the banner's commands are pasted: they name the
// directory unless it is ~/.berth.
func TestServeBannerDataDir(t *testing.T) {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory:", err)
	}
	t.Setenv("BERTH_DATA_DIR", "/srv/berth")
	if got := dataDirArg("/srv/berth"); got != " --data-dir /srv/berth" {
		t.Errorf("dataDirArg with BERTH_DATA_DIR: %q", got)
	}
	if got := dataDirArg(home + "/.berth"); got != "" {
		t.Errorf("dataDirArg(~/.berth): %q", got)
	}
}
