package stream

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// blockSyncer makes what the embedded server wrote to the telemetry
// stream durable: berth's own fsync, once per group commit, instead of the
// server's SyncAlways (see docs/telemetry-stream.md, "Group commit").
//
// Why: with SyncAlways a single-replica stream fsyncs every message on its
// own, and the only way nats-server offers to share one fsync among many
// messages, an atomic batch, stages each batch in a temporary file store of
// its own (newBatchStore in server/jetstream_batching.go: three
// directories created, two files written O_SYNC, two directory fsyncs, a
// block written and fsynced, the directory tree removed), about a dozen
// journal commits per batch. So the embedded server runs without
// SyncAlways, where its file store writes each message to the OS (write(2),
// no buffering in the process: DefaultPersistMode, fip in
// server/filestore.go) before it sends the PubAck, and berth fsyncs the
// stream's message blocks after the PubAcks of a group and before it
// answers any of the group's callers.
//
// What it syncs: the stream's messages are appended to its last message
// block, {store}/jetstream/{account}/streams/{stream}/msgs/{index}.blk,
// and a full block is followed by index+1. So one sync fsyncs the block it
// synced last and every block after it, and the msgs directory when a block
// is new or was replaced by a rewrite (a compaction writes a new file and
// renames it over the old one). That is what SyncAlways fsyncs per message
// (the block file; the server's index and state files are rebuilt from the
// blocks on recovery), and the directory besides. The layout is nats-server's
// on-disk format (it must read the files of older versions, so it does not
// move); TestAckedIsSynced checks the outcome from the system calls.
//
// An fsync error is sticky, as a write error is in the server's file store:
// after one, whether earlier writes reached the disk is unknown, so every
// later sync fails too and devices keep their messages until berth restarts.
// Other errors (a block that cannot be opened) fail only that sync.
type blockSyncer struct {
	dir string // the stream's msgs directory

	mu    sync.Mutex
	index uint64      // the last block synced; 0 before the first
	file  os.FileInfo // that file then (nil: not synced yet)
	err   error       // sticky
	// syncs and dirSyncs count fsyncs of block files and of the
	// directory, for tests and benchmarks.
	syncs, dirSyncs int
	// beforeFsync, when a test sets it, runs just before each block's
	// fsync: where the server's writes of the next group may land.
	beforeFsync func(index uint64)
}

// newBlockSyncer finds the stream's message blocks under the server's
// JetStream store directory (Server.StoreDir, which ends in "jetstream").
// The directory must exist: the server creates it with the stream, so its
// absence means the layout is not what berth expects, and berth refuses to
// start rather than acknowledge telemetry it did not sync.
func newBlockSyncer(jsDir, account, stream string) (*blockSyncer, error) {
	dir := filepath.Join(jsDir, account, "streams", stream, "msgs")
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("stream: the embedded stream's message blocks: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("stream: the embedded stream's message blocks: %s is not a directory", dir)
	}
	b := &blockSyncer{dir: dir}
	// The stream's definition (meta.inf, meta.sum) and the directories
	// leading to its blocks: the server wrote them without SyncAlways when
	// it created or updated the stream, and a restart after a power cut
	// needs them to find the blocks. Once per start.
	streamDir := filepath.Dir(dir)
	for _, f := range []string{"meta.inf", "meta.sum"} {
		if err := syncPath(filepath.Join(streamDir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("stream: sync the stream's definition: %w", err)
		}
	}
	for d := dir; ; d = filepath.Dir(d) {
		if err := syncPath(d); err != nil {
			return nil, fmt.Errorf("stream: sync the stream's directories: %w", err)
		}
		if d == filepath.Clean(jsDir) || d == filepath.Dir(d) {
			break
		}
	}
	// Start from the last block there is: what earlier runs wrote was
	// synced by them (or by the server's recovery), and this run's
	// messages go to that block or later ones.
	blocks, err := b.list()
	if err != nil {
		return nil, err
	}
	if n := len(blocks); n > 0 {
		b.index = blocks[n-1]
	}
	return b, nil
}

func (b *blockSyncer) path(index uint64) string {
	return filepath.Join(b.dir, strconv.FormatUint(index, 10)+".blk")
}

// list returns the indexes of the block files, ascending.
func (b *blockSyncer) list() ([]uint64, error) {
	entries, err := os.ReadDir(b.dir)
	if err != nil {
		return nil, fmt.Errorf("stream: list message blocks: %w", err)
	}
	var out []uint64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".blk")
		if !ok {
			continue
		}
		if i, err := strconv.ParseUint(name, 10, 64); err == nil {
			out = append(out, i)
		}
	}
	slices.Sort(out) // ReadDir sorts by name, not number
	return out, nil
}

// sync makes every message the server acknowledged before the call durable.
// Concurrent calls are serialised.
func (b *blockSyncer) sync() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	err := b.syncLocked()
	var failed *fsyncError
	if errors.As(err, &failed) {
		b.err = fmt.Errorf("stream: berth acknowledges no more telemetry until it restarts: %w", err)
		return b.err
	}
	return err
}

// fsyncError is a failed fsync, after which the state of earlier writes
// is unknown (an error is reported once, and the kernel may have dropped
// the pages it could not write).
type fsyncError struct{ err error }

func (e *fsyncError) Error() string { return e.err.Error() }
func (e *fsyncError) Unwrap() error { return e.err }

func (b *blockSyncer) syncLocked() error {
	dirty := false // the directory changed: a new or replaced block
	prevIndex, prevFile := b.index, b.file
	start := b.index
	if start == 0 {
		start = 1
	}
	// The last block there is before any fsync, and so where the next
	// sync must start, rather than at the last block this one reaches.
	// An fsync vouches only for writes that returned before it began, and
	// the server goes on storing the next group while this one is synced:
	// those writes go to the block that is last now (the fsync below may
	// be under way while they land in it) and, once it is full, to blocks
	// created during this sync. The next sync syncs this block again and
	// every later one. Older blocks take no more appends: the server
	// writes only its last block and creates the next one after its last
	// write to it, both under the store's lock (storeRawMsg, writeMsgRecord
	// and newMsgBlockForWrite in server/filestore.go).
	// TestAckedIsSyncedAcrossBlocks caught the race this closes: messages
	// written to 1.blk during its fsync, the same sync going on to a new
	// 2.blk, and the next group's sync starting at 2.blk.
	last := start
	for {
		if _, err := os.Lstat(b.path(last + 1)); err != nil {
			break
		}
		last++
	}
	synced := 0
	for idx := start; ; idx++ {
		fi, err := b.syncFile(idx)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return err
		}
		if idx != prevIndex || prevFile == nil || !os.SameFile(fi, prevFile) {
			dirty = true
		}
		if synced == 0 || idx <= last {
			b.index, b.file = idx, fi
		}
		synced++
	}
	if synced == 0 {
		// The block synced last is gone (its messages were removed or
		// purged) and no block follows it in sequence: find the ones
		// there are and sync those after it, or all of them if none is
		// (after a purge of everything the server may count again).
		blocks, err := b.list()
		if err != nil {
			return err
		}
		var after []uint64
		for _, i := range blocks {
			if i > b.index {
				after = append(after, i)
			}
		}
		if len(after) == 0 {
			after = blocks
		}
		if len(after) == 0 {
			// No block at all: everything stored was removed (a purge)
			// before this sync, so nothing is left to make durable.
			b.index, b.file = 0, nil
			return nil
		}
		for _, i := range after {
			fi, err := b.syncFile(i)
			if err != nil {
				return err
			}
			b.index, b.file = i, fi
		}
		dirty = true
	}
	if dirty {
		b.dirSyncs++
		return syncPath(b.dir)
	}
	return nil
}

// syncFile fsyncs block index and returns what it is (os.SameFile tells
// a block rewritten under the same name).
func (b *blockSyncer) syncFile(index uint64) (os.FileInfo, error) {
	f, err := os.Open(b.path(index))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if b.beforeFsync != nil {
		b.beforeFsync(index)
	}
	if err := f.Sync(); err != nil {
		return nil, &fsyncError{fmt.Errorf("fsync %s: %w", f.Name(), err)}
	}
	b.syncs++
	return f.Stat()
}

// syncPath fsyncs a file or a directory (so the names in it are durable).
func syncPath(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return &fsyncError{fmt.Errorf("fsync %s: %w", dir, err)}
	}
	return nil
}
