package stream

import (
	"os"
	"path/filepath"
	"slices"
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

// TestBlockSyncerResyncsBlockWrittenDuringSync: the server stores the next
// group while berth syncs the last one, so messages may be written to the
// last block while its fsync runs (which vouches only for writes that
// returned before it began) and a new block may appear before the sync
// ends. The next sync must then fsync that block again, not start at the
// new block; TestAckedIsSyncedAcrossBlocks saw this as an acknowledged
// message whose write to 1.blk was never synced.
func TestBlockSyncerResyncsBlockWrittenDuringSync(t *testing.T) {
	js := t.TempDir()
	dir := filepath.Join(js, "$G", "streams", "S", "msgs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "1.blk"), []byte("group 1;"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := newBlockSyncer(js, "$G", "S")
	if err != nil {
		t.Fatal(err)
	}
	var synced []uint64
	during := true // the server writes during the first fsync only
	b.beforeFsync = func(index uint64) {
		synced = append(synced, index)
		if !during {
			return
		}
		during = false
		// During the fsync of 1.blk for group 1: group 2's first message
		// fills 1.blk, its second goes to a new 2.blk.
		f, err := os.OpenFile(filepath.Join(dir, "1.blk"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("group 2, written during the fsync;"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "2.blk"), []byte("group 2;"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	step := func(what string, want ...uint64) {
		t.Helper()
		synced = nil
		if err := b.sync(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !slices.Equal(synced, want) {
			t.Fatalf("%s fsynced blocks %v, want %v", what, synced, want)
		}
	}
	step("group 1's sync", 1, 2)
	// 1.blk again: what group 2 wrote to it while its fsync ran is not
	// covered by that fsync.
	step("group 2's sync", 1, 2)
	step("a sync with no writes since", 2)
}

// TestBlockSyncerNeedsLayout: Open refuses a store without the stream's
// block directory rather than acknowledge what it cannot sync.
func TestBlockSyncerNeedsLayout(t *testing.T) {
	if _, err := newBlockSyncer(t.TempDir(), "$G", "S"); err == nil {
		t.Fatal("no error for a store without the stream's msgs directory")
	}
}
