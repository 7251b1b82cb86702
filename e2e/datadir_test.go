package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/stream"
)

// A second berth on a running berth's data directory is refused, naming
// the first one's PID, and changes nothing: the first keeps serving, its
// client.json stays, and every message it acknowledged (before and after
// the attempt) is in the stream after a restart.
func TestSecondServeOnDataDirRefused(t *testing.T) {
	dir := t.TempDir()
	b := start(t, dir)
	groupKey := b.createGroup("lock-group")
	key, err := sas.DeriveKey(groupKey, "lock-dev")
	if err != nil {
		t.Fatal(err)
	}
	op := b.provisionHTTPS("lock-dev", key)
	hubName, deviceID := op.RegistrationState.AssignedHub, op.RegistrationState.DeviceID
	send := func(body string) {
		t.Helper()
		resp, data := b.do("POST", "/devices/"+deviceID+"/messages/events?api-version=2021-04-12",
			hubToken(t, hubName, deviceID, key), body, nil, nil)
		if resp.StatusCode != 204 {
			t.Fatalf("send %s: %d %s", body, resp.StatusCode, data)
		}
	}
	send(`{"n":1}`)
	clientJSON, err := os.ReadFile(filepath.Join(dir, localconf.FileName))
	if err != nil {
		t.Fatal(err)
	}

	second, err := server.New(context.Background(), server.Config{
		DataDir: dir, Hosts: []string{"127.0.0.1"}, HubName: "hub.berth.test",
		MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0",
	})
	if err == nil {
		_ = second.Start()
		_ = second.Shutdown(context.Background())
		t.Fatal("a second berth started on a data directory in use")
	}
	var inUse *server.DataDirInUseError
	if !errors.As(err, &inUse) || inUse.PID != os.Getpid() {
		t.Fatalf("second berth: %v; want the data directory in use by PID %d", err, os.Getpid())
	}
	if now, _ := os.ReadFile(filepath.Join(dir, localconf.FileName)); !bytes.Equal(now, clientJSON) {
		t.Fatal("the refused berth rewrote client.json")
	}

	send(`{"n":2}`) // the first one still serves
	b.stop()
	b = start(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	replay, err := b.srv.Stream().Subscribe(ctx, stream.SubscribeOptions{DeviceID: deviceID, StartTime: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`{"n":1}`, `{"n":2}`} {
		select {
		case m := <-replay:
			if string(m.Body) != want {
				t.Fatalf("after restart: %s, want %s", m.Body, want)
			}
		case <-ctx.Done():
			t.Fatalf("acknowledged message %s lost", want)
		}
	}
}
