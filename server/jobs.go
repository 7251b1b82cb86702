package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-iot/berth/blobstore"
	"github.com/berth-iot/berth/hub"
)

// NodeIDFile holds this berth's node ID in the data directory: the name
// its job leases carry. Kept across restarts, so that a berth that stops
// mid-job takes its own jobs up again at once instead of waiting for their
// leases to run out (docs/hub-jobs.md).
const NodeIDFile = "node-id"

// nodeID reads the data directory's node ID, making one at the first start.
func nodeID(dir string) (string, error) {
	p := filepath.Join(dir, NodeIDFile)
	b, err := os.ReadFile(p)
	if err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("server: node ID: %w", err)
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("server: node ID: %w", err)
	}
	return id, nil
}

// startJobs runs the hub's job runner until bg ends.
func (s *Server) startJobs(bg context.Context) error {
	id, err := nodeID(s.cfg.DataDir)
	if err != nil {
		return err
	}
	s.hubSvc.Jobs.Configure(hub.JobsConfig{NodeID: id, Retention: s.cfg.JobRetention})
	// Import and export jobs reach file:// containers under the data
	// directory's blobs/ only, and http(s) containers anywhere.
	opener := &blobstore.Opener{Root: filepath.Join(s.cfg.DataDir, BlobsDir)}
	s.hubSvc.ImportExport.SetBlobs(func(uri string) (hub.BlobContainer, error) { return opener.Open(uri) }, id)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.hubSvc.Jobs.Run(bg)
	}()
	go func() {
		defer s.wg.Done()
		s.hubSvc.ImportExport.Run(bg)
	}()
	return nil
}

// BlobsDir is the directory under the data directory that file:// blob
// containers of import and export jobs must lie in.
const BlobsDir = "blobs"
