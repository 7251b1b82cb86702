package bench

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Server memory is read from Linux's /proc: VmRSS of /proc/{pid}/status.
// The pid of a berth that runs apart from the bench is given with
// --server-pid, or found from the port it listens on: /proc/net/tcp{,6}
// maps the listening socket to its inode, and the process holding
// socket:[inode] among its file descriptors is the server. That works for
// processes of the same user (or any, as root), and needs nothing from
// `berth serve`.

// procRoot is where proc is mounted. The unexported functions take the
// root as a parameter so that tests can give them a fake tree.
const procRoot = "/proc"

// ReadRSS returns the resident set size of process pid in bytes.
func ReadRSS(pid int) (int64, error) {
	return readRSS(procRoot, pid)
}

func readRSS(root string, pid int) (int64, error) {
	data, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("bench: memory of process %d: %w", pid, err)
	}
	return parseVmRSS(data)
}

// parseVmRSS reads "VmRSS:   123456 kB" from a /proc/{pid}/status.
func parseVmRSS(status []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("bench: unexpected VmRSS line %q", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: VmRSS %q: %w", f[0], err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("bench: no VmRSS in process status (a kernel thread, or not Linux)")
}

// FindListenerPID returns the pid of the process listening on TCP
// address addr (ip:port). A socket bound to the unspecified address on
// that port matches too, since that is how `berth serve --mqtt-addr :8883`
// listens.
func FindListenerPID(addr string) (int, error) {
	return findListenerPID(procRoot, addr)
}

func findListenerPID(root, addr string) (int, error) {
	want, err := netip.ParseAddrPort(addr)
	if err != nil {
		return 0, fmt.Errorf("bench: listener address %q: %w", addr, err)
	}
	var inodes []string
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(root, "net", name))
		if err != nil {
			continue // no IPv6, or not Linux: the other table may do
		}
		found, err := listeningInodes(f, want)
		f.Close()
		if err != nil {
			return 0, err
		}
		inodes = append(inodes, found...)
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("bench: no process listens on %s (is berth running? or pass --server-pid)", addr)
	}
	pid, err := pidOfSocket(root, inodes)
	if err != nil {
		return 0, fmt.Errorf("bench: the listener on %s: %w", addr, err)
	}
	return pid, nil
}

// tcpListen is the st column of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// listeningInodes returns the inodes of the listening sockets of a
// /proc/net/tcp{,6} table that accept connections for want.
func listeningInodes(r io.Reader, want netip.AddrPort) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	var inodes []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if len(f) < 10 || f[3] != tcpListen {
			continue
		}
		local, err := parseProcAddr(f[1])
		if err != nil {
			return nil, err
		}
		if local.Port() != want.Port() {
			continue
		}
		ip := local.Addr().Unmap()
		if ip.IsUnspecified() || ip == want.Addr().Unmap() {
			inodes = append(inodes, f[9])
		}
	}
	return inodes, sc.Err()
}

// parseProcAddr parses a local_address of /proc/net/tcp{,6}: the address
// as hex of 32-bit words in host byte order (little-endian on every
// platform berth is built for), a colon, the port as big-endian hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bench: /proc/net/tcp address %q", s)
	}
	raw, err := hex.DecodeString(ipHex)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bench: /proc/net/tcp address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bench: /proc/net/tcp port %q", s)
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// pidOfSocket finds the process with one of the socket inodes among its
// file descriptors.
func pidOfSocket(root string, inodes []string) (int, error) {
	want := map[string]bool{}
	for _, ino := range inodes {
		want["socket:["+ino+"]"] = true
	}
	procs, err := os.ReadDir(root)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", root, err)
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(root, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // gone, or another user's
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && want[link] {
				return pid, nil
			}
		}
	}
	return 0, errors.New("no visible process holds its socket (another user's? pass --server-pid)")
}

// LoadAverage is the 1, 5 and 15 minute load average of /proc/loadavg; nil
// where it cannot be read.
func LoadAverage() []float64 {
	data, err := os.ReadFile(filepath.Join(procRoot, "loadavg"))
	if err != nil {
		return nil
	}
	return parseLoadAvg(data)
}

func parseLoadAvg(data []byte) []float64 {
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return nil
	}
	out := make([]float64, 3)
	for i := range out {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return nil
		}
		out[i] = v
	}
	return out
}
