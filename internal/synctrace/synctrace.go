// Package synctrace lets tests check durability from the outside: it runs a
// process under strace and answers, from the trace, whether the bytes that
// carried a marker reached a file and were synced to disk before some later
// event (the acknowledgement). A process kill cannot show a missing fsync
// (the page cache survives it); the system calls can.
//
// The property checked is independent of how a store commits: a write of
// the marker's bytes to a file, then a completed fsync or fdatasync of that
// same file (or sync/syncfs, or the write itself on a file opened O_SYNC or
// O_DSYNC), all before the acknowledgement. sync_file_range is traced but
// never counts: it neither flushes the drive's cache nor the metadata.
//
// Only for tests; Linux with strace on PATH (see docs/testing.md).
package synctrace

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// maxString is strace's -s: long enough that a marker inside a 4 KiB
// SQLite page or a batch of JetStream records is not cut off.
const maxString = 1 << 20

// Available returns nil when strace can trace a child here, else why not:
// strace is missing, or ptrace is forbidden (a container's seccomp policy,
// kernel.yama.ptrace_scope).
func Available() error {
	path, err := exec.LookPath("strace")
	if err != nil {
		return fmt.Errorf("strace not on PATH (install the strace package): %w", err)
	}
	if out, err := exec.Command(path, "-f", "-o", os.DevNull, "true").CombinedOutput(); err != nil {
		return fmt.Errorf("strace cannot trace here (ptrace refused?): %v: %s", err, out)
	}
	return nil
}

// Wrap turns cmd into the same command run under strace, writing the trace
// of every thread and child to out. Call it before cmd.Start.
func Wrap(cmd *exec.Cmd, out string) error {
	path, err := exec.LookPath("strace")
	if err != nil {
		return err
	}
	args := []string{"strace", "-f", "-y", "-s", strconv.Itoa(maxString), "-o", out,
		"-e", "signal=none",
		"-e", "trace=openat,close,rename,renameat,renameat2,unlink,unlinkat,ftruncate,write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,sync,syncfs",
		"--", cmd.Path}
	cmd.Args = append(args, cmd.Args[1:]...)
	cmd.Path = path
	return nil
}

// Call is one traced system call.
type Call struct {
	Name string
	// Path is what strace's -y shows for the first argument: a file's
	// path, "socket:[inode]", "pipe:[inode]"; "" when there is none.
	Path string
	// Args is the text after the first argument: a write's data, still
	// escaped as strace prints it.
	Args string
	Ret  string
	// Start and End order calls: the trace line where the call began and
	// where it returned (equal unless another thread interrupted it).
	Start, End int
}

// Socket reports whether the call was on a socket.
func (c Call) Socket() bool {
	return strings.HasPrefix(c.Path, "socket:[") || strings.HasPrefix(c.Path, "TCP") || strings.HasPrefix(c.Path, "UNIX")
}

func (c Call) write() bool {
	switch c.Name {
	case "write", "pwrite64", "writev", "pwritev", "pwritev2":
		return true
	}
	return false
}

func (c Call) ok() bool { return c.Ret != "" && c.Ret[0] != '-' && c.Ret != "?" }

// Trace is a parsed strace output.
type Trace struct {
	Calls []Call
	// dsync is the set of paths opened with O_SYNC or O_DSYNC.
	dsync map[string]bool
}

// Load reads a trace written by a command Wrap prepared. An empty trace is
// an error: strace could not run the command.
func Load(name string) (*Trace, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t := &Trace{dsync: map[string]bool{}}
	pending := map[string]Call{} // by thread id: a call strace reported <unfinished ...>
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 8*maxString)
	for n := 0; sc.Scan(); n++ {
		pid, rest, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		rest = strings.TrimLeft(rest, " ")
		switch {
		case strings.HasPrefix(rest, "<... "):
			c, ok := pending[pid]
			if !ok {
				continue
			}
			delete(pending, pid)
			_, tail, _ := strings.Cut(rest, "resumed>")
			c.End, c.Ret = n, retOf(tail)
			t.add(c, tail)
		case strings.HasPrefix(rest, "+++"), strings.HasPrefix(rest, "---"):
		default:
			c, ok := parseCall(rest)
			if !ok {
				continue
			}
			c.Start = n
			if strings.HasSuffix(rest, "<unfinished ...>") {
				pending[pid] = c
				continue
			}
			c.End, c.Ret = n, retOf(rest)
			t.add(c, rest)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read trace %s: %w", name, err)
	}
	if len(t.Calls) == 0 {
		return nil, fmt.Errorf("trace %s is empty: strace did not run the command", name)
	}
	return t, nil
}

func (t *Trace) add(c Call, tail string) {
	if c.Name == "openat" {
		// openat's first argument is the directory; the file is in the
		// return value, which -y decorates: "= 7</path>".
		if i := strings.LastIndex(tail, "= "); i >= 0 {
			if _, p, ok := strings.Cut(tail[i:], "<"); ok {
				p = strings.TrimSuffix(p, ">")
				t.dsync[p] = strings.Contains(c.Args, "O_SYNC") || strings.Contains(c.Args, "O_DSYNC")
			}
		}
	}
	t.Calls = append(t.Calls, c)
}

// parseCall splits `name(fd<path>, rest` into a Call.
func parseCall(s string) (Call, bool) {
	name, args, ok := strings.Cut(s, "(")
	if !ok || name == "" || strings.ContainsAny(name, " <") {
		return Call{}, false
	}
	c := Call{Name: name, Args: args}
	i := 0
	for i < len(args) && (args[i] >= '0' && args[i] <= '9' || args[i] == '-' || args[i] >= 'A' && args[i] <= 'Z' || args[i] == '_') {
		i++
	}
	if i < len(args) && args[i] == '<' {
		for _, end := range []string{">, ", ">)", "> <unfinished"} {
			if j := strings.Index(args[i:], end); j >= 0 {
				c.Path, c.Args = args[i+1:i+j], args[i+j+1:]
				break
			}
		}
	}
	return c, true
}

// retOf is the return value at the end of a completed call's line:
// ") = 0", padded with spaces to a column by strace.
func retOf(s string) string {
	m := retRE.FindStringSubmatch(s)
	if m == nil {
		return "?"
	}
	return m[1]
}

var retRE = regexp.MustCompile(`\)\s+= (\S+)(?: <[^>]*>)?(?: [A-Z].*)?$`)

// FirstWrite is the first successful write whose data holds marker, to a
// file whose path starts with under.
func (t *Trace) FirstWrite(marker, under string) (Call, bool) {
	for _, c := range t.Calls {
		if c.write() && c.ok() && strings.HasPrefix(c.Path, under) && strings.Contains(c.Args, marker) {
			return c, true
		}
	}
	return Call{}, false
}

// WriteContaining is the first successful write anywhere (a pipe, a
// socket, a file) whose data holds s: how a test process marks an event.
func (t *Trace) WriteContaining(s string) (Call, bool) {
	for _, c := range t.Calls {
		if c.write() && c.ok() && strings.Contains(c.Args, s) {
			return c, true
		}
	}
	return Call{}, false
}

// SyncOf is the call that made w durable and returned first: w itself on
// a file opened O_SYNC/O_DSYNC, or an fsync/fdatasync of w's file (or a
// sync/syncfs) that began after w returned. ok is false when nothing in
// the trace made w durable.
func (t *Trace) SyncOf(w Call) (Call, bool) {
	if t.dsync[w.Path] {
		return w, true
	}
	var best Call
	found := false
	for _, c := range t.Calls {
		if c.Start <= w.End || !c.ok() || found && c.End >= best.End {
			continue
		}
		switch c.Name {
		case "fsync", "fdatasync":
			if c.Path != w.Path {
				continue
			}
		case "sync", "syncfs":
		default:
			continue
		}
		best, found = c, true
	}
	return best, found
}

// Between is every call that began after a returned and before b returned.
func (t *Trace) Between(a, b Call, keep func(Call) bool) []Call {
	var out []Call
	for _, c := range t.Calls {
		if c.Start > a.End && c.Start < b.End && keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// SocketWrite keeps writes to sockets (for Between).
func SocketWrite(c Call) bool { return c.write() && c.Socket() }

// Durable checks that the first write of marker to a file under dir was
// made durable, and returns that write and the call that synced it.
func (t *Trace) Durable(marker, dir string) (w, sync Call, err error) {
	w, ok := t.FirstWrite(marker, dir)
	if !ok {
		return w, sync, fmt.Errorf("%q was never written to a file under %s", marker, dir)
	}
	sync, ok = t.SyncOf(w)
	if !ok {
		return w, sync, fmt.Errorf("%q: %s of %s (trace line %d) was never synced", marker, w.Name, w.Path, w.End+1)
	}
	return w, sync, nil
}
