package blobstore_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/berth-iot/berth/blobstore"
)

func TestFileContainersOnlyUnderRoot(t *testing.T) {
	root := t.TempDir()
	o := &blobstore.Opener{Root: root}
	ctx := t.Context()
	c, err := o.Open("file://" + filepath.ToSlash(filepath.Join(root, "a", "b")))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, "devices.txt", []byte("x\n")); err != nil {
		t.Fatal(err)
	}
	r, err := c.Read(ctx, "devices.txt")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	if string(b) != "x\n" {
		t.Errorf("read back %q", b)
	}
	if _, err := c.Read(ctx, "missing.txt"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}
	for _, name := range []string{"../x", "a/b", "", ".."} {
		if err := c.Write(ctx, name, nil); err == nil {
			t.Errorf("blob name %q accepted", name)
		}
	}
	for _, uri := range []string{
		"file:///etc",
		"file://" + filepath.ToSlash(filepath.Join(root, "..")),
		"file://" + filepath.ToSlash(root) + "/../x",
		"file://host/dir",
		"ftp://h/c",
		"https:///c",
		"::",
	} {
		if _, err := o.Open(uri); err == nil {
			t.Errorf("%s accepted", uri)
		}
	}
	if _, err := (&blobstore.Opener{}).Open("file://" + filepath.ToSlash(root)); err == nil {
		t.Error("file:// accepted with no root")
	}
	if _, err := os.Stat(filepath.Join(root, "a", "b", "devices.txt")); err != nil {
		t.Error(err)
	}
}

// TestHTTPContainer: blobs are the container path plus the name, with the
// container's query (a SAS token), PUT with x-ms-blob-type; the query
// never shows in an error.
func TestHTTPContainer(t *testing.T) {
	var mu sync.Mutex
	blobs := map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Query().Get("sig") != "secret" {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		switch r.Method {
		case http.MethodPut:
			if r.Header.Get("x-ms-blob-type") != "BlockBlob" {
				http.Error(w, "blob type", http.StatusBadRequest)
				return
			}
			b, _ := io.ReadAll(r.Body)
			blobs[r.URL.Path] = string(b)
			w.WriteHeader(http.StatusCreated)
		case http.MethodGet:
			b, ok := blobs[r.URL.Path]
			if !ok {
				http.NotFound(w, r)
				return
			}
			_, _ = io.WriteString(w, b)
		}
	}))
	defer srv.Close()
	ctx := t.Context()
	o := &blobstore.Opener{}
	c, err := o.Open(srv.URL + "/container?sv=1&sig=secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, "devices.txt", []byte("line\n")); err != nil {
		t.Fatal(err)
	}
	if blobs["/container/devices.txt"] != "line\n" {
		t.Fatalf("stored %v", blobs)
	}
	r, err := c.Read(ctx, "devices.txt")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	if string(b) != "line\n" {
		t.Errorf("read %q", b)
	}
	if _, err := c.Read(ctx, "nope.txt"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	bad, _ := o.Open(srv.URL + "/container?sig=wrong")
	err = bad.Write(ctx, "devices.txt", nil)
	if err == nil || strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), "sig=") {
		t.Errorf("refused write: %v (must not show the query)", err)
	}
}
