package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/synctrace"
	"github.com/berth-iot/berth/internal/testenv"
	"github.com/berth-iot/berth/sas"
)

// TestAckedWritesAreSynced runs a berth in a child process under strace,
// drives every write a device or the service is told succeeded (an
// enrollment group, registrations over HTTPS and MQTT, telemetry over MQTT
// and HTTPS, a reported-property patch, a desired patch, a device, a C2D
// send), each carrying a marker, and checks for every marker that:
//
//   - its bytes were written to a file in the data directory (the SQLite
//     WAL, a JetStream block: whichever, the test does not care),
//   - that file was then fsynced (or fdatasynced, or written O_DSYNC), and
//   - berth wrote nothing to any socket between the write and the sync's
//     return: the acknowledgement (PUBACK, 2xx, the registration's 202, a
//     twin 204 publish) cannot have left before the data was durable.
//
// Operations run one at a time, so the only socket writes in that window
// could be the acknowledgement. That acknowledgements follow the write at
// all (PUBACK after the append) is checked by the front ends' own tests.
// SQLite at synchronous=NORMAL or OFF, or the stream off SyncAlways, fails
// here; a process kill cannot show either.
func TestAckedWritesAreSynced(t *testing.T) {
	if dir := os.Getenv("BERTH_E2E_SYNC_CHILD_DIR"); dir != "" {
		syncChild(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a berth under strace")
	}
	if err := synctrace.Available(); err != nil {
		testenv.Unavailable(t, "cannot check fsync before acknowledgement: %v", err)
	}
	dir := t.TempDir()
	traceFile := filepath.Join(t.TempDir(), "strace.out")
	cmd := exec.Command(os.Args[0], "-test.run=^TestAckedWritesAreSynced$")
	cmd.Env = append(os.Environ(), "BERTH_E2E_SYNC_CHILD_DIR="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := synctrace.Wrap(cmd, traceFile); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { // also drains the child's stdout, so it never blocks on a full pipe
		sc := bufio.NewScanner(stdout)
		ready := false
		for sc.Scan() {
			if !ready && sc.Text() == "berth ready" {
				ready = true
				done <- nil
			}
		}
		if !ready {
			done <- fmt.Errorf("exited before it was ready (%v)", sc.Err())
		}
	}()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("child: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the traced berth did not start within 60 s")
	}

	b := &berth{t: t, dataDir: dir}
	b.load()
	markers := driveDurableWrites(b)

	// The child shuts down when its stdin closes: a clean shutdown may sync
	// what was never synced before, but only after the acknowledgements.
	_ = stdin.Close()
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		exited = true
		if err != nil {
			t.Fatalf("traced berth: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the traced berth did not exit within 60 s of its stdin closing")
	}

	tr, err := synctrace.Load(traceFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range markers {
		w, s, err := tr.Durable(m.marker, dir)
		if err != nil {
			t.Errorf("%s: %v", m.what, err)
			continue
		}
		if early := tr.Between(w, s, synctrace.SocketWrite); len(early) > 0 {
			t.Errorf("%s: berth wrote to %s (trace line %d) after writing the data to %s (line %d) and before the %s that made it durable returned (line %d)",
				m.what, early[0].Path, early[0].Start+1, w.Path, w.End+1, s.Name, s.End+1)
		}
	}
}

// syncChild is the traced berth: it serves from dir until its stdin closes.
func syncChild(t *testing.T, dir string) {
	start(t, dir)
	_, _ = os.Stdout.WriteString("berth ready\n")
	_, _ = bufio.NewReader(os.Stdin).ReadString(0)
}

type durableWrite struct{ what, marker string }

// driveDurableWrites performs, one at a time and each awaiting its
// acknowledgement, every kind of acknowledged write, and returns the marker
// each one stored.
func driveDurableWrites(b *berth) []durableWrite {
	t := b.t
	t.Helper()
	var out []durableWrite
	add := func(what, marker string) { out = append(out, durableWrite{what, marker}) }

	groupKey := b.createGroup("durable-group")
	add("enrollment group PUT 200", "durable-group")

	key, err := sas.DeriveKey(groupKey, "durable-reg-https")
	if err != nil {
		t.Fatal(err)
	}
	op := b.provisionHTTPS("durable-reg-https", key)
	add("registration over HTTPS (202 assigning, then assigned)", "durable-reg-https")
	hubName, deviceID := op.RegistrationState.AssignedHub, op.RegistrationState.DeviceID

	mqttKey, err := sas.DeriveKey(groupKey, "durable-reg-mqtt")
	if err != nil {
		t.Fatal(err)
	}
	b.provisionMQTT("durable-reg-mqtt", mqttKey)
	add("registration over MQTT (PUBACK, res/202, then assigned)", "durable-reg-mqtt")

	d := b.hubConnect(deviceID, key, false)
	d.publish("devices/"+deviceID+"/messages/events/", 1, "durable-d2c-mqtt")
	add("telemetry over MQTT (PUBACK)", "durable-d2c-mqtt")

	resp, data := b.do("POST", "/devices/"+deviceID+"/messages/events?api-version=2021-04-12", hubToken(t, hubName, deviceID, key),
		"durable-d2c-https", nil, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("telemetry over HTTPS: %d %s", resp.StatusCode, data)
	}
	add("telemetry over HTTPS (204)", "durable-d2c-https")

	d.subscribe("$iothub/twin/res/#", 0)
	if m := d.twinRequest("$iothub/twin/PATCH/properties/reported/?$rid=1", `{"r":"durable-reported"}`); !strings.HasPrefix(m.Topic(), "$iothub/twin/res/204/") {
		t.Fatalf("reported patch: %s %s", m.Topic(), m.Payload())
	}
	add("reported properties over MQTT (res/204)", "durable-reported")
	d.c.Disconnect(100)

	tw, status, body, _ := b.patchTwin(deviceID, b.getTwin(deviceID).ETag, `{"properties":{"desired":{"d":"durable-desired"}}}`)
	if status != 200 || tw.DeviceID != deviceID {
		t.Fatalf("desired patch: %d %s", status, body)
	}
	add("desired properties PATCH (200)", "durable-desired")

	b.createHubDevice("durable-device")
	add("registry PUT device (200)", "durable-device")

	b.sendC2D(deviceID, "m", map[string]string{"iothub-messageid": "durable-c2d"})
	add("C2D send (200)", "durable-c2d")
	return out
}
