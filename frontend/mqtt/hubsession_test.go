package mqtt

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
)

// dialSession connects deviceID with CleanSession clean and returns the
// client and CONNACK's Session Present.
func (f *hubFixture) dialSession(t *testing.T, deviceID string, clean bool) (*rawClient, bool) {
	t.Helper()
	c := f.ts.dialRaw(t)
	rc, present := c.connectPresent(hubConnect(deviceID, validToken(t, deviceID), clean))
	if rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	return c, present
}

// checkSubscribedWithoutSubscribing proves c's subscriptions to methods and
// twin responses: a method reaches it and a reported PATCH is answered,
// with no SUBSCRIBE on this connection.
func (f *hubFixture) checkSubscribedWithoutSubscribing(t *testing.T, c *rawClient) {
	t.Helper()
	five := 5
	ch := f.invoke("dev-1", &hub.MethodRequest{MethodName: "ping", ConnectTimeoutInSeconds: &five, ResponseTimeoutInSeconds: &five})
	pk := c.readMethodRequest()
	rid := pk.TopicName[len("$iothub/methods/POST/ping/?$rid="):]
	c.publish(0, 0, "$iothub/methods/res/200/?$rid="+rid, []byte(`{"pong":1}`))
	if r := waitInvoke(t, ch); r.err != nil || r.res.Status != 200 {
		t.Fatalf("method after reconnect: %+v %v", r.res, r.err)
	}
	c.publish(0, 0, "$iothub/twin/PATCH/properties/reported/?$rid=77", []byte(`{"fw":"2"}`))
	if a := c.readTwinAnswer(); a.status != 204 || a.rid != "77" {
		t.Fatalf("reported PATCH after reconnect: %+v", a)
	}
}

// A CleanSession 0 connection's subscriptions outlive it: the Node SDK
// renews its token by reconnecting with CleanSession 0 and subscribes
// again only when the session is not present. berth answers Session
// Present 1 and the device gets methods and twin answers without a new
// SUBSCRIBE. Before berth kept sessions, Session Present was 0 and the
// method answered 404 DeviceNotOnline.
func TestHubPersistentSessionSurvivesReconnect(t *testing.T) {
	for _, how := range []string{"DISCONNECT first", "dropped first", "reconnect before the old one ends"} {
		t.Run(how, func(t *testing.T) {
			f := newHubFixture(t, nil)
			f.device(t, "dev-1", "")
			c, present := f.dialSession(t, "dev-1", false)
			if present {
				t.Fatal("Session Present on the device's first connection")
			}
			c.subscribe(1, 0, "$iothub/methods/POST/#", "$iothub/twin/res/#")
			switch how {
			case "DISCONNECT first":
				c.disconnect()
				waitFor(t, "the session to end", func() bool { return f.ts.srv.ConnCount() == 0 })
			case "dropped first":
				c.nc.Close()
				waitFor(t, "the session to end", func() bool { return f.ts.srv.ConnCount() == 0 })
			}
			c2, present := f.dialSession(t, "dev-1", false)
			if !present {
				t.Fatal("Session Present = 0 for a persistent session berth kept")
			}
			f.checkSubscribedWithoutSubscribing(t, c2)
		})
	}
}

// A CleanSession 1 connection starts without the kept session and leaves
// none behind: the next CleanSession 0 connection finds no session.
func TestHubCleanSessionDropsKeptSession(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c, _ := f.dialSession(t, "dev-1", false)
	c.subscribe(1, 0, "$iothub/methods/POST/#")
	c.disconnect()
	waitFor(t, "the session to end", func() bool { return f.ts.srv.ConnCount() == 0 })

	c, present := f.dialSession(t, "dev-1", true)
	if present {
		t.Fatal("Session Present for a clean session")
	}
	ch := f.invoke("dev-1", &hub.MethodRequest{MethodName: "ping"})
	if r := waitInvoke(t, ch); azCode(r.err).Number() != 404103 {
		t.Fatalf("method on a clean session that did not subscribe: %v; want 404103", r.err)
	}
	c.subscribe(1, 0, "$iothub/methods/POST/#")
	c.disconnect()
	waitFor(t, "the session to end", func() bool { return f.ts.srv.ConnCount() == 0 })

	if _, present := f.dialSession(t, "dev-1", false); present {
		t.Fatal("a clean session's subscriptions were kept")
	}
}

// A revoked device's kept session is dropped with its connection.
func TestHubRevokedDeviceKeepsNoSession(t *testing.T) {
	f := newHubFixture(t, nil)
	d := f.device(t, "dev-1", "")
	c, _ := f.dialSession(t, "dev-1", false)
	c.subscribe(1, 0, "$iothub/methods/POST/#")
	d.Status = hub.StatusDisabled
	if _, err := f.reg.Update(t.Context(), hubName, d, "*"); err != nil {
		t.Fatal(err)
	}
	c.expectClosed(time.Second)
	d.Status = hub.StatusEnabled
	if _, err := f.reg.Update(t.Context(), hubName, d, "*"); err != nil {
		t.Fatal(err)
	}
	if _, present := f.dialSession(t, "dev-1", false); present {
		t.Fatal("a revoked device's session was kept")
	}
}

// disconnect sends DISCONNECT and closes the connection.
func (c *rawClient) disconnect() {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
	c.send(pk.DisconnectEncode)
	c.nc.Close()
}

// A connection the hub closes because its credential was revoked does not
// publish its will: nothing more is accepted on that credential.
func TestHubRevokedConnectionPublishesNoWill(t *testing.T) {
	f := newHubFixture(t, nil)
	d := f.device(t, "dev-1", "")
	c := f.ts.dialRaw(t)
	pk := hubConnect("dev-1", validToken(t, "dev-1"), false)
	pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "devices/dev-1/messages/events/", []byte("bye")
	if rc := c.connectWith(pk); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	d.Status = hub.StatusDisabled
	if _, err := f.reg.Update(t.Context(), hubName, d, "*"); err != nil {
		t.Fatal(err)
	}
	c.expectClosed(time.Second)
	waitFor(t, "the session to end", func() bool { return f.ts.srv.ConnCount() == 0 })
	if n := len(f.sink.messages()); n != 0 {
		t.Fatalf("%d messages stored; the will of a revoked connection must not be", n)
	}
}
