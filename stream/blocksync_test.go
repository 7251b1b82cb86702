package stream

import (
	"os"
	"path/filepath"
	"testing"
)

// TestBlockSyncerFollowsBlocks: a sync covers the block synced last and
// every block after it, syncs the directory when a block is new or was
// replaced, and finds its way again when blocks were removed.
func TestBlockSyncerFollowsBlocks(t *testing.T) {
	js := t.TempDir()
	dir := filepath.Join(js, "$G", "streams", "S", "msgs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(index string) {
		t.Helper()
		// As the server rewrites a block: a new file renamed over the name.
		tmp := filepath.Join(dir, index+".new")
		if err := os.WriteFile(tmp, []byte(index), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, index+".blk")); err != nil {
			t.Fatal(err)
		}
	}
	remove := func(index string) {
		t.Helper()
		if err := os.Remove(filepath.Join(dir, index+".blk")); err != nil {
			t.Fatal(err)
		}
	}
	write("9")
	write("10") // 10 sorts before 9 by name
	b, err := newBlockSyncer(js, "$G", "S")
	if err != nil {
		t.Fatal(err)
	}
	if b.index != 10 {
		t.Fatalf("starts at block %d, want 10", b.index)
	}
	step := func(what string, wantIndex uint64, wantSyncs, wantDirSyncs int) {
		t.Helper()
		syncs, dirSyncs := b.syncs, b.dirSyncs
		if err := b.sync(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if b.index != wantIndex || b.syncs-syncs != wantSyncs || b.dirSyncs-dirSyncs != wantDirSyncs {
			t.Fatalf("%s: at block %d after %d block and %d directory fsyncs, want %d, %d, %d",
				what, b.index, b.syncs-syncs, b.dirSyncs-dirSyncs, wantIndex, wantSyncs, wantDirSyncs)
		}
	}
	step("first sync", 10, 1, 1)
	step("same block", 10, 1, 0)
	write("11")
	step("a new block", 11, 2, 1) // 10 (its last messages) and 11
	write("11")
	step("the block rewritten", 11, 1, 1)
	remove("11")
	remove("10")
	write("13")
	write("14")
	step("blocks removed, later ones created", 14, 2, 1)
	for _, i := range []string{"9", "13", "14"} {
		remove(i)
	}
	write("1")
	step("everything purged, counting again", 1, 1, 1)
	remove("1")
	step("no block left", 0, 0, 0)
}

// TestBlockSyncerNeedsLayout: Open refuses a store without the stream's
// block directory rather than acknowledge what it cannot sync.
func TestBlockSyncerNeedsLayout(t *testing.T) {
	if _, err := newBlockSyncer(t.TempDir(), "$G", "S"); err == nil {
		t.Fatal("no error for a store without the stream's msgs directory")
	}
}
