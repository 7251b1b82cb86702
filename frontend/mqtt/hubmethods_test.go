package mqtt

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// invokeResult is what a Methods.Invoke running beside the test returned.
type invokeResult struct {
	res *hub.MethodResult
	err error
}

func (f *hubFixture) invoke(deviceID string, req *hub.MethodRequest) <-chan invokeResult {
	ch := make(chan invokeResult, 1)
	go func() {
		res, err := f.methods.Invoke(context.Background(), hubName, deviceID, req)
		ch <- invokeResult{res, err}
	}()
	return ch
}

func waitInvoke(t *testing.T, ch <-chan invokeResult) invokeResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Invoke did not return")
		return invokeResult{}
	}
}

// readMethodRequest reads the next packet as a method request.
func (c *rawClient) readMethodRequest() *packets.Packet {
	c.t.Helper()
	return c.readPublish("$iothub/methods/POST/", "a method request")
}

func azCode(err error) azerr.Code {
	var e *azerr.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return azerr.Code{}
}

// TestHubMethodRoundTrip: a direct method reaches the device on
// $iothub/methods/POST/{name}/?$rid={rid} and its answer, at QoS 0 or 1
// and with extra properties, comes back to the caller.
func TestHubMethodRoundTrip(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	if got := c.subscribe(1, 0, "$iothub/methods/POST/#"); got[0] != 0 {
		t.Fatalf("SUBACK %v", got)
	}
	tests := []struct {
		name        string
		respQoS     byte
		status      int
		respTopic   string // %s is the rid
		respBody    string
		wantPayload string
	}{
		{"Node (QoS 0)", 0, 200, "$iothub/methods/res/200/?$rid=%s", `{"ok":true}`, `{"ok":true}`},
		{"C# (QoS 1)", 1, 201, "$iothub/methods/res/201/?$rid=%s", `"done"`, `"done"`},
		{"extra properties (T-26)", 0, 200, "$iothub/methods/res/200/?$rid=%s&random=", ``, `null`},
		{"any status (T-11)", 0, 65535, "$iothub/methods/res/65535/?$rid=%s", `not json`, `"not json"`},
		{"negative status", 0, -1, "$iothub/methods/res/-1/?$rid=%s", `{}`, `{}`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch := f.invoke("dev-1", &hub.MethodRequest{MethodName: "reboot", Payload: []byte(`{"delay": 1}`)})
			pk := c.readMethodRequest()
			rid := fmt.Sprintf("%x", i+1)
			if want := "$iothub/methods/POST/reboot/?$rid=" + rid; pk.TopicName != want {
				t.Fatalf("request topic %q; want %q", pk.TopicName, want)
			}
			if string(pk.Payload) != `{"delay": 1}` || pk.FixedHeader.Qos != 0 {
				t.Errorf("request body %q QoS %d", pk.Payload, pk.FixedHeader.Qos)
			}
			c.publish(tt.respQoS, uint16(20+i), fmt.Sprintf(tt.respTopic, rid), []byte(tt.respBody))
			if tt.respQoS == 1 {
				c.expectPuback(uint16(20 + i))
			}
			r := waitInvoke(t, ch)
			if r.err != nil {
				t.Fatalf("Invoke: %v", r.err)
			}
			if r.res.Status != tt.status || string(r.res.Payload) != tt.wantPayload {
				t.Errorf("result %d %s; want %d %s", r.res.Status, r.res.Payload, tt.status, tt.wantPayload)
			}
		})
	}
	// An answer nobody waits for is ignored; the connection stays.
	c.publish(1, 40, "$iothub/methods/res/200/?$rid=zzz", []byte(`{}`))
	c.expectPuback(40)
	c.expectPing()
}

// TestHubMethodFailures: a device that is not subscribed, does not answer
// or goes away.
func TestHubMethodFailures(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	f.device(t, "dev-2", "")
	req := func() *hub.MethodRequest { return &hub.MethodRequest{MethodName: "m", Payload: []byte(`1`)} }

	t.Run("not connected", func(t *testing.T) {
		r := waitInvoke(t, f.invoke("dev-2", req()))
		if azCode(r.err) != azerr.HubDeviceNotOnline {
			t.Fatalf("error %v; want 404103", r.err)
		}
	})
	c := f.dialHub(t, "dev-1")
	t.Run("not subscribed", func(t *testing.T) {
		r := waitInvoke(t, f.invoke("dev-1", req()))
		if azCode(r.err) != azerr.HubDeviceNotOnline {
			t.Fatalf("error %v; want 404103", r.err)
		}
		c.expectNothing()
	})
	c.subscribe(1, 1, "$iothub/methods/POST/#")
	link := f.links.Lookup(hubName, "dev-1")
	t.Run("device silent, short deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, _, err := link.InvokeMethod(ctx, "m", []byte("1"))
			done <- err
		}()
		pk := c.readMethodRequest()
		if pk.FixedHeader.Qos != 1 {
			t.Errorf("request at QoS %d; the subscription was granted 1", pk.FixedHeader.Qos)
		}
		c.puback(pk.PacketID)
		if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v; want the deadline", err)
		}
	})
	t.Run("too many pending", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errs := make(chan error, maxPendingMethods)
		for range maxPendingMethods {
			go func() {
				_, _, err := link.InvokeMethod(ctx, "m", nil)
				errs <- err
			}()
		}
		for range maxPendingMethods {
			c.puback(c.readMethodRequest().PacketID)
		}
		_, _, err := link.InvokeMethod(ctx, "m", nil)
		if azCode(err) != azerr.HubThrottled {
			t.Errorf("error %v; want 429001", err)
		}
		cancel()
		for range maxPendingMethods {
			if err := <-errs; !errors.Is(err, context.Canceled) {
				t.Errorf("error %v; want canceled", err)
			}
		}
		// Every call is forgotten; the next one goes through.
		c.expectNothing()
	})
	t.Run("response timeout", func(t *testing.T) {
		t.Parallel() // IoT Hub's shortest response timeout is 5 s
		f := newHubFixture(t, nil)
		f.device(t, "dev-1", "")
		c := f.dialHub(t, "dev-1")
		c.subscribe(1, 0, "$iothub/methods/POST/#")
		five := 5
		ch := f.invoke("dev-1", &hub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: &five})
		c.readMethodRequest()
		r := waitInvoke(t, ch)
		if azCode(r.err) != azerr.HubGatewayTimeout {
			t.Fatalf("error %v; want 504101", r.err)
		}
	})
	t.Run("device disconnects mid-call", func(t *testing.T) {
		ch := f.invoke("dev-1", req())
		c.readMethodRequest()
		start := time.Now()
		c.nc.Close()
		r := waitInvoke(t, ch)
		if azCode(r.err) != azerr.HubDeviceNotOnline {
			t.Fatalf("error %v; want 404103", r.err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("failed after %v; want promptly", el)
		}
	})
}

// TestHubMethodConnectTimeout: an invocation with connectTimeoutInSeconds
// waits for the device to subscribe, and an unsubscribe ends delivery.
func TestHubMethodConnectTimeout(t *testing.T) {
	f := newHubFixture(t, nil)
	f.device(t, "dev-1", "")
	c := f.dialHub(t, "dev-1")
	ten := 10
	ch := f.invoke("dev-1", &hub.MethodRequest{MethodName: "late", ConnectTimeoutInSeconds: &ten})
	// The subscription wakes the waiting invocation.
	c.subscribe(1, 0, "$iothub/methods/POST/#")
	pk := c.readMethodRequest()
	if pk.TopicName != "$iothub/methods/POST/late/?$rid=1" {
		t.Fatalf("topic %q", pk.TopicName)
	}
	c.publish(0, 0, "$iothub/methods/res/200/?$rid=1", []byte(`{}`))
	if r := waitInvoke(t, ch); r.err != nil || r.res.Status != 200 {
		t.Fatalf("result %+v, %v", r.res, r.err)
	}

	link := f.links.Lookup(hubName, "dev-1")
	if !link.MethodsSubscribed() {
		t.Fatal("MethodsSubscribed = false after SUBSCRIBE")
	}
	unsub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 2, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "$iothub/methods/POST/#"}}}
	c.send(unsub.UnsubscribeEncode)
	if ack := c.read(); ack.FixedHeader.Type != packets.Unsuback {
		t.Fatalf("got %s", packetName(ack.FixedHeader.Type))
	}
	if link.MethodsSubscribed() {
		t.Fatal("MethodsSubscribed = true after UNSUBSCRIBE")
	}
	r := waitInvoke(t, f.invoke("dev-1", &hub.MethodRequest{MethodName: "m"}))
	if azCode(r.err) != azerr.HubDeviceNotOnline {
		t.Fatalf("error %v; want 404103", r.err)
	}
}
