package hub_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/blobstore"
	"github.com/berth-iot/berth/hub"
)

// TestExportThenImport: an export writes every device with its twin to
// devices.txt; importing that file into an empty hub recreates them (keys
// and tags included); import errors go to importErrors.log, line by line.
func TestExportThenImport(t *testing.T) {
	e := newJobEnv(t, "e1", "e2", "e3")
	root := t.TempDir()
	opener := &blobstore.Opener{Root: root}
	e.svc.ImportExport.SetBlobs(func(uri string) (hub.BlobContainer, error) { return opener.Open(uri) }, "node-a")
	ctx := context.Background()
	go e.svc.ImportExport.Run(t.Context())
	if _, err := e.svc.Twins.Patch(ctx, hubName, "e2", []byte(`{"tags":{"site":"x"},"properties":{"desired":{"fw":"2"}}}`), "*"); err != nil {
		t.Fatal(err)
	}
	out := "file://" + filepath.ToSlash(filepath.Join(root, "out"))
	job, err := e.svc.ImportExport.Create(ctx, hubName, &hub.ImportExportRequest{Type: "export", OutputBlobContainerURI: out})
	if err != nil || job.Status != hub.IEEnqueued || job.JobID == "" {
		t.Fatalf("export: %+v, %v", job, err)
	}
	job = waitIE(t, e.svc.ImportExport, job.JobID)
	if job.Status != hub.IECompleted || job.Progress != 100 {
		t.Fatalf("export job %+v", job)
	}
	data, err := os.ReadFile(filepath.Join(root, "out", hub.DevicesBlob))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], `"id":"e2"`) || !strings.Contains(lines[1], `"site":"x"`) || !strings.Contains(lines[1], `"primaryKey":"`) {
		t.Fatalf("devices.txt:\n%s", data)
	}

	// Into another hub: create the devices again, plus one bad line.
	const other = "other.berth.test"
	in := filepath.Join(root, "in")
	if err := os.MkdirAll(in, 0o700); err != nil {
		t.Fatal(err)
	}
	bad := `{"id":"e9","importMode":"delete"}` + "\n" + `not json` + "\n"
	if err := os.WriteFile(filepath.Join(in, hub.DevicesBlob), append(data, bad...), 0o600); err != nil {
		t.Fatal(err)
	}
	job, err = e.svc.ImportExport.Create(ctx, other, &hub.ImportExportRequest{Type: "import",
		InputBlobContainerURI: "file://" + filepath.ToSlash(in), OutputBlobContainerURI: out})
	if err != nil {
		t.Fatal(err)
	}
	if job = waitIE(t, e.svc.ImportExport, job.JobID, other); job.Status != hub.IECompleted {
		t.Fatalf("import job %+v", job)
	}
	d1, _ := e.svc.Registry.Get(ctx, hubName, "e2")
	d2, err := e.svc.Registry.Get(ctx, other, "e2")
	if err != nil || d2.Authentication.SymmetricKey.PrimaryKey != d1.Authentication.SymmetricKey.PrimaryKey {
		t.Fatalf("imported e2: %+v, %v", d2, err)
	}
	tw, err := e.svc.Twins.Get(ctx, other, "e2")
	if err != nil || !strings.Contains(string(tw.Tags), `"site":"x"`) || !strings.Contains(string(tw.Properties.Desired), `"fw":"2"`) {
		t.Fatalf("imported twin: %s %s, %v", tw.Tags, tw.Properties.Desired, err)
	}
	log, err := os.ReadFile(filepath.Join(root, "out", hub.ImportErrorsBlob))
	if err != nil || strings.Count(string(log), "\n") != 2 || !strings.Contains(string(log), `"deviceId":"e9"`) || !strings.Contains(string(log), "DeviceNotFound") {
		t.Fatalf("importErrors.log: %s, %v", log, err)
	}
	list, err := e.svc.ImportExport.List(ctx, hubName)
	if err != nil || len(list) != 1 {
		t.Fatalf("List: %+v, %v", list, err)
	}

	// Containers berth does not take.
	for _, uri := range []string{"file:///etc", "file://" + filepath.ToSlash(filepath.Join(root, "..", "x")), "ftp://h/c", "https:///c"} {
		if _, err := e.svc.ImportExport.Create(ctx, hubName, &hub.ImportExportRequest{Type: "export", OutputBlobContainerURI: uri}); code(err) != azerr.HubArgumentInvalid {
			t.Errorf("%s: %v, want ArgumentInvalid", uri, err)
		}
	}
	if _, err := e.svc.ImportExport.Get(ctx, hubName, "nope"); code(err) != azerr.HubJobNotFound {
		t.Errorf("unknown job: %v", err)
	}
}

func waitIE(t *testing.T, ie *hub.ImportExport, id string, hubs ...string) *hub.ImportExportJob {
	t.Helper()
	h := hubName
	if len(hubs) > 0 {
		h = hubs[0]
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		job, err := ie.Get(context.Background(), h, id)
		if err != nil {
			t.Fatal(err)
		}
		if job.Status != hub.IEEnqueued && job.Status != hub.IERunning {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %s", id, job.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
