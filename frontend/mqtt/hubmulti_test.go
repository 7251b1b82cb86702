package mqtt

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store/memstore"
)

// TestHubSessionsOfSeveralHubs: with a directory, the username's {hub}
// picks the hub; the same device ID on two hubs is two devices; an unknown
// hub is refused; messages carry the hub they arrived on.
func TestHubSessionsOfSeveralHubs(t *testing.T) {
	const hubB = "Hub-B.berth.test"
	var dir *hub.Directory
	f := newHubFixture(t, func(cfg *Config) {
		var err error
		// The directory's own store: only the device registry must be the
		// fixture's.
		dir, err = hub.LoadDirectory(context.Background(), memstore.New(), cfg.Hub.Registry, hubName, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dir.Create(context.Background(), hub.HubInfo{Name: hubB, AllocationWeight: 1}, testNow); err != nil {
			t.Fatal(err)
		}
		cfg.Hub.Hubs = dir
	})
	f.device(t, "dev-1", hub.StatusEnabled)
	// dev-1 on hub B has other keys.
	keyB := "YjJiMmIyYjJiMmIyYjJiMmIyYjJiMmIyYjJiMmIyYjI="
	if _, err := f.reg.Create(context.Background(), hubB, &hub.Device{DeviceID: "dev-1",
		Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: keyB, SecondaryKey: keyB}}}); err != nil {
		t.Fatal(err)
	}
	tokenB := func(key string) string {
		tok, err := sas.SignEncoded("hub-b.berth.test/devices/dev-1", key, "", testNow.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	userB := "hub-b.berth.test/dev-1/?api-version=2021-04-12"
	cases := []struct {
		name, user, password string
		want                 byte
	}{
		{"hub B with B's key", userB, tokenB(keyB), connAccepted},
		{"hub B with A's key", userB, tokenB(indivKey), connNotAuthorized},
		{"hub A's token on hub B", userB, validToken(t, "dev-1"), connNotAuthorized},
		{"unknown hub", "hub-c.berth.test/dev-1/?api-version=2021-04-12", tokenB(keyB), connNotAuthorized},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := f.ts.dialRaw(t)
			if got := rc.connectHub("dev-1", c.user, c.password, 0); got != c.want {
				t.Fatalf("CONNACK %d, want %d", got, c.want)
			}
		})
	}

	// Both devices connected at once: neither takes the other over.
	a := f.dialHub(t, "dev-1")
	b := f.ts.dialRaw(t)
	if rc := b.connectHub("dev-1", userB, tokenB(keyB), 0); rc != connAccepted {
		t.Fatalf("hub B CONNACK %d", rc)
	}
	a.publish(1, 1, "devices/dev-1/messages/events/", []byte("from A"))
	a.expectPuback(1)
	b.publish(1, 2, "devices/dev-1/messages/events/", []byte("from B"))
	b.expectPuback(2)
	msgs := f.sink.messages()
	if len(msgs) != 2 || msgs[0].Hub != hubName || msgs[1].Hub != hubB {
		var hubs []string
		for _, m := range msgs {
			hubs = append(hubs, m.Hub)
		}
		t.Fatalf("messages stamped with hubs %s; want %s then %s", strings.Join(hubs, ","), hubName, hubB)
	}
	if da, _ := f.reg.Get(context.Background(), hubName, "dev-1"); da.ConnectionState != "Connected" {
		t.Errorf("hub A's dev-1 is %s", da.ConnectionState)
	}
	if db, _ := f.reg.Get(context.Background(), hubB, "dev-1"); db.ConnectionState != "Connected" {
		t.Errorf("hub B's dev-1 is %s", db.ConnectionState)
	}
	a.expectPing()
	b.expectPing()
}
