package bench

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tberth\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 100 kB\n"
	got, err := parseVmRSS([]byte(status))
	if err != nil || got != 12345*1024 {
		t.Fatalf("parseVmRSS = %d, %v; want %d", got, err, 12345*1024)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthreadd\n")); err == nil {
		t.Fatal("a status without VmRSS was accepted")
	}
	if _, err := parseVmRSS([]byte("VmRSS:\t12 MB\n")); err == nil {
		t.Fatal("a VmRSS in an unknown unit was accepted")
	}
}

func TestParseProcAddr(t *testing.T) {
	tests := map[string]string{
		"0100007F:22B3":                         "127.0.0.1:8883",
		"4D00007F:01BB":                         "127.0.0.77:443",
		"00000000:22B3":                         "0.0.0.0:8883",
		"00000000000000000000000000000000:22B3": "[::]:8883",
		"00000000000000000000000001000000:22B3": "[::1]:8883",
		"0000000000000000FFFF00000100007F:0050": "[::ffff:127.0.0.1]:80",
	}
	for in, want := range tests {
		got, err := parseProcAddr(in)
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("parseProcAddr(%s) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "XYZ:22B3", "0100007F:XYZ", "01007F:22B3"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q) succeeded", bad)
		}
	}
}

const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:22B3 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0
   3: 0200007F:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
`

func TestListeningInodes(t *testing.T) {
	tests := map[string]string{
		"127.0.0.1:8883": "1111", // the listener, not the established connection on the same port
		"127.0.0.2:8883": "4444",
		"127.0.0.9:443":  "3333", // bound to 0.0.0.0: accepts for every address
		"127.0.0.9:8883": "",
	}
	for addr, want := range tests {
		got, err := listeningInodes(strings.NewReader(procNetTCP), netip.MustParseAddrPort(addr))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") != want {
			t.Errorf("%s: inodes %v, want %q", addr, got, want)
		}
	}
}

func TestFindListenerPIDFakeProc(t *testing.T) {
	root := t.TempDir()
	mustWrite := func(path, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(filepath.Join(root, "net", "tcp"), procNetTCP)
	for pid, links := range map[string][]string{"17": {"/dev/null", "socket:[2222]"}, "42": {"socket:[9]", "socket:[1111]"}} {
		fd := filepath.Join(root, pid, "fd")
		if err := os.MkdirAll(fd, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, l := range links {
			if err := os.Symlink(l, filepath.Join(fd, string(rune('3'+i)))); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustWrite(filepath.Join(root, "self", "status"), "") // not a pid: skipped
	pid, err := findListenerPID(root, "127.0.0.1:8883")
	if err != nil || pid != 42 {
		t.Fatalf("findListenerPID = %d, %v; want 42", pid, err)
	}
	if _, err := findListenerPID(root, "127.0.0.1:9999"); err == nil {
		t.Fatal("found a listener on a port nobody listens on")
	}
	if _, err := findListenerPID(root, "127.0.0.2:8883"); err == nil {
		t.Fatal("found a process for a socket no process holds")
	}
}

func TestFindListenerPIDSelf(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pid, err := FindListenerPID(ln.Addr().String())
	if err != nil || pid != os.Getpid() {
		t.Fatalf("FindListenerPID(%s) = %d, %v; want this process, %d", ln.Addr(), pid, err, os.Getpid())
	}
	rss, err := ReadRSS(pid)
	if err != nil || rss <= 0 {
		t.Fatalf("ReadRSS = %d, %v", rss, err)
	}
}
