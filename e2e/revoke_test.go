package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/stream"
)

// revokeWithin is how soon a revoked device's live sessions must end.
const revokeWithin = time.Second

// revocations are the registry changes that revoke the credential a device
// connected with, each made through the service API of b.
var revocations = []struct {
	name   string
	revoke func(b *berth, id, key string)
}{
	{"disabled", func(b *berth, id, key string) {
		b.putDevice(id, map[string]any{"deviceId": id, "status": "disabled", "authentication": sasAuth(key, key+"2")})
	}},
	{"deleted", func(b *berth, id, _ string) {
		if resp, data := b.hubDo("DELETE", "/devices/"+id+"?api-version=2021-04-12", nil, map[string]string{"If-Match": "*"}, nil); resp.StatusCode != 204 {
			b.t.Fatalf("delete %s: %d %s", id, resp.StatusCode, data)
		}
	}},
	{"keys replaced", func(b *berth, id, key string) {
		k1, _ := sas.DeriveKey(key, "new-1")
		k2, _ := sas.DeriveKey(key, "new-2")
		b.putDevice(id, map[string]any{"deviceId": id, "status": "enabled", "authentication": sasAuth(k1, k2)})
	}},
}

func sasAuth(primary, secondary string) map[string]any {
	return map[string]any{"type": "sas", "symmetricKey": map[string]string{"primaryKey": primary, "secondaryKey": secondary}}
}

// putDevice updates a device through the registry API (If-Match *).
func (b *berth) putDevice(id string, body map[string]any) {
	b.t.Helper()
	if resp, data := b.hubDo("PUT", "/devices/"+id+"?api-version=2021-04-12", body, map[string]string{"If-Match": "*"}, nil); resp.StatusCode != 200 {
		b.t.Fatalf("update %s: %d %s", id, resp.StatusCode, data)
	}
}

// checkRevoked checks what must hold once the device's credential is
// revoked at time at: its MQTT session (d, on node dev) ends within
// revokeWithin, telemetry it sends after that is not stored (msgs carries
// the device's stream), and its HTTPS calls are refused.
func checkRevoked(t *testing.T, dev *berth, d *hubDevice, key string, at time.Time, msgs <-chan *hub.Message) {
	t.Helper()
	select {
	case <-d.lost:
		if el := time.Since(at); el > revokeWithin {
			t.Errorf("the MQTT session ended %v after the revocation; want within %v", el, revokeWithin)
		}
	case <-time.After(revokeWithin + 2*time.Second):
		t.Errorf("the MQTT session is still open %v after the revocation", revokeWithin+2*time.Second)
	}
	// Whatever the client makes of it, nothing it publishes now may be
	// acknowledged and stored.
	tok := d.c.Publish("devices/"+d.id+"/messages/events/", 1, false, "after revocation")
	if tok.WaitTimeout(2*time.Second) && tok.Error() == nil {
		t.Error("telemetry after the revocation was acknowledged")
	}
	resp, data := dev.do("POST", "/devices/"+d.id+"/messages/events?api-version=2021-04-12", hubToken(t, dev.info.HubHostName, d.id, key), "https after revocation", nil, nil)
	if resp.StatusCode != 401 {
		t.Errorf("HTTPS telemetry with the revoked credential: %d %s; want 401", resp.StatusCode, data)
	}
	select {
	case m := <-msgs:
		t.Errorf("telemetry after the revocation reached the stream: %q", m.Body)
	case <-time.After(500 * time.Millisecond):
	}
}

// expectStored waits for the device's next stream message.
func expectStored(t *testing.T, msgs <-chan *hub.Message, body string) {
	t.Helper()
	select {
	case m := <-msgs:
		if string(m.Body) != body {
			t.Fatalf("stream message %q; want %q", m.Body, body)
		}
	case <-time.After(hubWait):
		t.Fatalf("%q not in the stream", body)
	}
}

// Disabling a device, deleting it or replacing its keys closes its live
// MQTT session within a second, and its HTTPS calls are refused. Before
// the hub revoked live sessions, the session went on until its token's se
// (telemetry sent after the change was PUBACKed and stored).
func TestRevocationClosesLiveSessions(t *testing.T) {
	b := start(t, t.TempDir())
	for _, rv := range revocations {
		t.Run(rv.name, func(t *testing.T) {
			b.t = t
			id := "revoke-" + randomSuffix()
			key := b.createHubDevice(id)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			msgs, err := b.srv.Stream().Subscribe(ctx, stream.SubscribeOptions{DeviceID: id})
			if err != nil {
				t.Fatal(err)
			}
			d := b.hubConnect(id, key, false)
			d.publish("devices/"+id+"/messages/events/", 1, "before")
			expectStored(t, msgs, "before")

			at := time.Now()
			rv.revoke(b, id, key)
			checkRevoked(t, b, d, key, at, msgs)
		})
	}
}

// A change that keeps the credential (here: the status reason and the
// capabilities) leaves the session alone.
func TestRegistryChangeThatKeepsTheCredentialKeepsTheSession(t *testing.T) {
	b := start(t, t.TempDir())
	id := "keep-" + randomSuffix()
	key := b.createHubDevice(id)
	d := b.hubConnect(id, key, false)
	var dev hub.Device
	if resp, data := b.hubDo("GET", "/devices/"+id+"?api-version=2021-04-12", nil, nil, &dev); resp.StatusCode != 200 {
		t.Fatalf("get: %d %s", resp.StatusCode, data)
	}
	b.putDevice(id, map[string]any{"deviceId": id, "status": "enabled", "statusReason": "checked",
		"authentication": dev.Authentication, "capabilities": map[string]bool{"iotEdge": false}})
	select {
	case err := <-d.lost:
		t.Fatalf("the session ended: %v", err)
	case <-time.After(2 * revokeWithin):
	}
	d.publish("devices/"+id+"/messages/events/", 1, "still here")
}

// DPS re-registration with new keys (an individual enrollment whose keys
// were replaced) revokes the keys the device's hub session was opened
// with: the assignment writes the device identity, and the hub closes the
// session like any other registry change.
func TestReprovisioningWithNewKeysClosesTheOldSession(t *testing.T) {
	b := start(t, t.TempDir())
	id := "reprov-" + randomSuffix()
	key := b.createEnrollment(id)
	op := b.provisionHTTPS(id, key)
	checkAssigned(t, op, id, b.info.HubHostName)
	d := b.hubConnect(id, key, false)

	newKey, at := reprovisionWithNewKey(t, b, id, key)
	select {
	case <-d.lost:
		if el := time.Since(at); el > revokeWithin+2*time.Second {
			t.Errorf("the old session ended %v after the re-registration began", el)
		}
	case <-time.After(revokeWithin + 3*time.Second):
		t.Fatal("the session opened with the old keys is still open after re-registration with new ones")
	}
	// The new keys connect.
	b.hubConnect(id, newKey, false).publish("devices/"+id+"/messages/events/", 1, "new keys")
}

// reprovisionWithNewKey replaces the symmetric key of individual
// enrollment id through dps and registers the device again with it; it
// returns the new key and when the registration began.
func reprovisionWithNewKey(t *testing.T, dps *berth, id, key string) (string, time.Time) {
	t.Helper()
	var enr map[string]any
	if resp, data := dps.do("GET", "/enrollments/"+id+"?api-version=2021-10-01", dps.serviceToken(), nil, nil, &enr); resp.StatusCode != 200 {
		t.Fatalf("get enrollment: %d %s", resp.StatusCode, data)
	}
	newKey, _ := sas.DeriveKey(key, "rotated")
	enr["attestation"] = map[string]any{"type": "symmetricKey", "symmetricKey": map[string]string{"primaryKey": newKey, "secondaryKey": newKey}}
	if resp, data := dps.do("PUT", "/enrollments/"+id+"?api-version=2021-10-01", dps.serviceToken(), enr, map[string]string{"If-Match": "*"}, nil); resp.StatusCode != 200 {
		t.Fatalf("replace enrollment keys: %d %s", resp.StatusCode, data)
	}
	at := time.Now()
	checkAssigned(t, dps.provisionHTTPS(id, newKey), id, dps.info.HubHostName)
	return newKey, at
}

// With two nodes, a DPS re-registration with new keys through node A
// closes the session opened with the old keys on node B: a registration
// sends its revocation to the other nodes when it changes the credential
// (it sends none for a new device or an unchanged credential). The device
// registered first, and again with the same key, keeps its session; the
// new keys then connect to B.
func TestReprovisioningWithNewKeysClosesTheOldSessionOnAnotherNode(t *testing.T) {
	cfg := server.Config{StoreURL: sharedStore(t), NATSURL: sharedNATS(t)}
	a := startWith(t, t.TempDir(), cfg)
	b := startWith(t, joinDir(t, a), cfg)
	id := "multi-reprov-" + randomSuffix()
	key := a.createEnrollment(id)
	checkAssigned(t, a.provisionHTTPS(id, key), id, a.info.HubHostName)
	d := b.hubConnect(id, key, false)
	checkAssigned(t, a.provisionHTTPS(id, key), id, a.info.HubHostName)
	select {
	case err := <-d.lost:
		t.Fatalf("re-registering with the same key closed the session: %v", err)
	case <-time.After(revokeWithin):
	}

	newKey, at := reprovisionWithNewKey(t, a, id, key)
	select {
	case <-d.lost:
		if el := time.Since(at); el > revokeWithin+2*time.Second {
			t.Errorf("the old session on the other node ended %v after the re-registration began", el)
		}
	case <-time.After(revokeWithin + 3*time.Second):
		t.Fatal("the session opened on another node with the old keys is still open after re-registration with new ones")
	}
	b.hubConnect(id, newKey, false).publish("devices/"+id+"/messages/events/", 1, "new keys")
}

// With two nodes (one PostgreSQL, one NATS) a revocation made through
// node A closes the device's session on node B within the same second.
func TestRevocationReachesSessionsOnOtherNodes(t *testing.T) {
	cfg := server.Config{StoreURL: sharedStore(t), NATSURL: sharedNATS(t)}
	a := startWith(t, t.TempDir(), cfg)
	b := startWith(t, joinDir(t, a), cfg)
	for _, rv := range revocations {
		t.Run(rv.name, func(t *testing.T) {
			a.t, b.t = t, t
			// IDs of the run's own: other runs may share the NATS.
			id := "multi-revoke-" + randomSuffix()
			key := a.createHubDevice(id)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			msgs, err := a.srv.Stream().Subscribe(ctx, stream.SubscribeOptions{DeviceID: id})
			if err != nil {
				t.Fatal(err)
			}
			d := b.hubConnect(id, key, false)
			d.publish("devices/"+id+"/messages/events/", 1, "before")
			expectStored(t, msgs, "before")

			at := time.Now()
			rv.revoke(a, id, key)
			checkRevoked(t, a, d, key, at, msgs)
		})
	}
}
