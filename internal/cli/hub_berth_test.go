package cli

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/berth-iot/berth/server"
)

// startBerth runs a berth on loopback with ephemeral ports; its client.json
// in the returned data directory is what the commands find.
func startBerth(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	srv, err := server.New(context.Background(), server.Config{
		DataDir:   dir,
		Hosts:     []string{"127.0.0.1"},
		HubName:   "hub.berth.test",
		MQTTAddr:  "127.0.0.1:0",
		HTTPSAddr: "127.0.0.1:0",
		AMQPAddr:  "127.0.0.1:0",
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return dir
}

// TestHubTwinC2DMethodAgainstBerth: the commands against berth's own REST
// routes, through the local berth's client.json: the contract the fakes
// stand for.
func TestHubTwinC2DMethodAgainstBerth(t *testing.T) {
	clearHubEnv(t)
	dir := startBerth(t)
	b := berthRunner{t: t, pre: []string{"--data-dir", dir, "hub"}}
	must, fails, get := b.must, b.fails, jsonAt

	must("device-identity", "create", "d1")

	tw := must("device-twin", "update", "d1", "--tags", `{"floor":3}`, "--desired", `{"rate":5,"mode":"eco"}`)
	if get(tw, "tags", "floor") != 3.0 || get(tw, "properties", "desired", "rate") != 5.0 {
		t.Errorf("twin after update: %v", tw)
	}
	tw = must("device-twin", "show", "d1")
	etag, _ := tw["etag"].(string)
	if etag == "" || get(tw, "properties", "desired", "mode") != "eco" {
		t.Fatalf("twin shown: %v", tw)
	}
	fails("412 Precondition Failed", "device-twin", "update", "d1", "--desired", `{"rate":6}`, "--etag", "not-"+etag)
	tw = must("device-twin", "replace", "d1", "--json", `{"tags":{"room":"a"},"properties":{"desired":{"rate":7}}}`, "--etag", etag)
	if get(tw, "tags", "floor") != nil || get(tw, "tags", "room") != "a" ||
		get(tw, "properties", "desired", "mode") != nil || get(tw, "properties", "desired", "rate") != 7.0 {
		t.Errorf("twin after replace: %v", tw)
	}
	fails("404 Not Found (DeviceNotFound)", "device-twin", "show", "nope")

	sent := must("c2d", "send", "d1", "--data", "hello", "--message-id", "m1", "--ack", "full", "--expiry", "10m", "--props", "a=1;b=2")
	if sent["messageId"] != "m1" || sent["sequenceNumber"] == nil || sent["enqueuedTimeUtc"] == nil {
		t.Errorf("send result: %v", sent)
	}
	if exp, err := time.Parse(time.RFC3339, sent["expiryTimeUtc"].(string)); err != nil || time.Until(exp) < 9*time.Minute || time.Until(exp) > 11*time.Minute {
		t.Errorf("expiry %v (%v), want in 10 minutes", sent["expiryTimeUtc"], err)
	}
	must("c2d", "send", "d1", "--data-file", writeTemp(t, "body.bin", []byte{0, 1, 2}))
	fails("404 Not Found (DeviceNotFound)", "c2d", "send", "nope", "--data", "x")
	fails("400 Bad Request", "c2d", "send", "d1", "--props", "bad name=1")
	if got := must("c2d", "purge", "d1"); got["totalMessagesPurged"] != 2.0 || got["deviceId"] != "d1" {
		t.Errorf("purge result: %v", got)
	}

	// No device connects here (the e2e suite answers methods over MQTT):
	// the hub's errors reach the user.
	fails("404 Not Found (DeviceNotOnline)", "invoke-device-method", "d1", "--mn", "reboot")
	fails("404 Not Found (DeviceNotFound)", "invoke-device-method", "nope", "--mn", "reboot")
	fails("400 Bad Request", "invoke-device-method", "d1", "--mn", "reboot", "--to", "1")
}
