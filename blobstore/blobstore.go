// Package blobstore reads and writes the blobs of IoT Hub's import and
// export jobs (docs/hub-jobs.md#import-and-export). IoT Hub takes an Azure
// Storage container URI with a SAS token; berth takes:
//
//   - file:///dir — a directory under the server's blob root (Root), and
//     nowhere else: a service policy must not be able to make berth read
//     or write any file it can reach;
//   - http:// or https:// container URLs, SAS query included: a blob is
//     the container's path plus "/" plus its name, with the container's
//     query. Written with PUT and x-ms-blob-type: BlockBlob (which Azure
//     Blob Storage and Azurite require and other servers ignore), read with
//     GET. So a real Azure container's SAS URI works unchanged.
package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// MaxBlob bounds a blob berth reads: an import of 1M devices of 1 KB each.
const MaxBlob = 1 << 30

// ErrNotFound is a blob that does not exist.
var ErrNotFound = errors.New("blobstore: blob not found")

// Container is a blob container.
type Container interface {
	Read(ctx context.Context, name string) (io.ReadCloser, error)
	Write(ctx context.Context, name string, data []byte) error
}

// Opener opens container URIs.
type Opener struct {
	// Root is the directory file:// containers must lie in; "" refuses
	// file:// containers.
	Root string
	// Client makes the http(s) requests (nil: one with a 60 s timeout).
	Client *http.Client
}

// Open returns the container a URI names, or an error saying why berth
// does not take it.
func (o *Opener) Open(uri string) (Container, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("the container URI is not a URL: %w", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "file":
		if o.Root == "" {
			return nil, errors.New("file:// containers are not enabled on this berth")
		}
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("a file:// container names no host (file:///dir), not %q", u.Host)
		}
		root, err := filepath.Abs(o.Root)
		if err != nil {
			return nil, err
		}
		dir := filepath.Clean(filepath.FromSlash(u.Path))
		rel, err := filepath.Rel(root, dir)
		if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
			return nil, fmt.Errorf("file:// containers must be under %s", root)
		}
		return fileContainer(dir), nil
	case "http", "https":
		if u.Host == "" {
			return nil, errors.New("the container URL names no host")
		}
		c := o.Client
		if c == nil {
			c = &http.Client{Timeout: 60 * time.Second}
		}
		return &httpContainer{base: u, c: c}, nil
	}
	return nil, fmt.Errorf("container URIs are file:// or http(s)://, not %q", u.Scheme)
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return fmt.Errorf("blobstore: bad blob name %q", name)
	}
	return nil
}

type fileContainer string

func (d fileContainer) Read(_ context.Context, name string) (io.ReadCloser, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(string(d), name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	return f, err
}

// Write writes the blob whole or not at all (a temporary file renamed),
// synced, so a reader never sees half a blob.
func (d fileContainer) Write(_ context.Context, name string, data []byte) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	f, err := os.CreateTemp(string(d), "."+name+".*")
	if err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("blobstore: write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("blobstore: sync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(string(d), name)); err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	return nil
}

type httpContainer struct {
	base *url.URL
	c    *http.Client
}

func (h *httpContainer) blobURL(name string) string {
	u := *h.base
	u.Path = path.Join("/", u.Path, name)
	u.RawPath = ""
	return u.String()
}

// redacted is the blob's URL without its query (a SAS token is a secret).
func (h *httpContainer) redacted(name string) string {
	u := *h.base
	u.Path = path.Join("/", u.Path, name)
	u.RawPath, u.RawQuery = "", ""
	return u.String()
}

func (h *httpContainer) Read(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.blobURL(name), nil)
	if err != nil {
		return nil, fmt.Errorf("blobstore: GET %s: %w", h.redacted(name), err)
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("blobstore: GET %s: %w", h.redacted(name), redactErr(err))
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w", h.redacted(name), ErrNotFound)
	case resp.StatusCode/100 != 2:
		resp.Body.Close()
		return nil, fmt.Errorf("blobstore: GET %s: %s", h.redacted(name), resp.Status)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, MaxBlob), resp.Body}, nil
}

func (h *httpContainer) Write(ctx context.Context, name string, data []byte) error {
	if err := validName(name); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, h.blobURL(name), bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("blobstore: PUT %s: %w", h.redacted(name), err)
	}
	req.Header.Set("x-ms-blob-type", "BlockBlob")
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := h.c.Do(req)
	if err != nil {
		return fmt.Errorf("blobstore: PUT %s: %w", h.redacted(name), redactErr(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("blobstore: PUT %s: %s", h.redacted(name), resp.Status)
	}
	return nil
}

// redactErr drops the URL (with its SAS query) a *url.Error carries.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
