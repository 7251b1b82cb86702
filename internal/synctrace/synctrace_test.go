package synctrace

import (
	"os"
	"path/filepath"
	"testing"
)

// A trace as strace -f -y prints it: threads interleave, a call can be
// split into <unfinished ...> and <... resumed>, return values are padded.
const sample = `10 openat(AT_FDCWD</d>, "/d/s.blk", O_RDWR|O_CREAT|O_CLOEXEC, 0640) = 5</d/s.blk>
10 openat(AT_FDCWD</d>, "/d/o.log", O_WRONLY|O_CREAT|O_DSYNC|O_CLOEXEC, 0640) = 6</d/o.log>
10 pwrite64(5</d/s.blk>, "\262\0m-1;\n", 8, 0) = 8
11 write(7<socket:[99]>, "\27\3\3", 3 <unfinished ...>
10 fsync(5</d/s.blk> <unfinished ...>
11 <... write resumed>)              = 3
10 <... fsync resumed>)              = 0
10 pwrite64(5</d/s.blk>, "m-2;", 4, 8) = 4
10 write(1<pipe:[5]>, "[ack 2]\n", 8) = 8
10 fdatasync(5</d/s.blk>)            = -1 EIO (Input/output error)
10 write(6</d/o.log>, "m-3;", 4)     = 4
10 +++ exited with 0 +++
`

func TestParseAndCheck(t *testing.T) {
	name := filepath.Join(t.TempDir(), "trace")
	if err := os.WriteFile(name, []byte(sample), 0o600); err != nil {
		t.Fatal(err)
	}
	tr, err := Load(name)
	if err != nil {
		t.Fatal(err)
	}
	w, s, err := tr.Durable("m-1;", "/d/")
	if err != nil || s.Name != "fsync" || s.Start != 4 || s.End != 6 {
		t.Fatalf("m-1: %+v %+v %v", w, s, err)
	}
	if early := tr.Between(w, s, SocketWrite); len(early) != 1 || early[0].Path != "socket:[99]" || early[0].Ret != "3" {
		t.Errorf("socket writes between m-1's write and its fsync: %+v", early)
	}
	if _, _, err := tr.Durable("m-2;", "/d/"); err == nil {
		t.Error("m-2: a failed fdatasync counted as durable")
	}
	if ack, ok := tr.WriteContaining("[ack 2]"); !ok || ack.Path != "pipe:[5]" {
		t.Errorf("ack: %+v %v", ack, ok)
	}
	if _, s, err := tr.Durable("m-3;", "/d/"); err != nil || s.Name != "write" {
		t.Errorf("m-3 on an O_DSYNC file: %+v %v", s, err)
	}
	if _, _, err := tr.Durable("m-4;", "/d/"); err == nil {
		t.Error("m-4 was never written")
	}
}
