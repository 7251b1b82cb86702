package mqtt

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/berth-iot/berth/frontend/mqtt/topics"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/azerr"
)

// maxPendingMethods bounds the direct-method invocations waiting for one
// device's answers. IoT Hub documents no such limit (only hub-wide throttles,
// docs/spec/iothub-protocol.md#limits); past it an invocation fails with
// 429001 ThrottlingException, so that one device cannot make the hub hold an
// unbounded number of waiting calls.
const maxPendingMethods = 16

// errSessionClosed fails an invocation whose connection went away; the
// domain answers it 404103 DeviceNotOnline.
var errSessionClosed = errors.New("mqtt: the device's connection closed")

// methodAnswer is a device's response to an invocation, or the news that
// its connection closed first.
type methodAnswer struct {
	status int
	body   []byte
	closed bool
}

// MethodsSubscribed reports whether the device subscribed to direct
// methods (hub.DeviceLink).
func (s *hubSession) MethodsSubscribed() bool {
	return s.subs[featureMethods].Load() >= 0
}

// InvokeMethod publishes a method request and waits for the device's
// answer, for ctx to end or for the connection to close (hub.DeviceLink).
// The rid is a short hex counter, as IoT Edge formats it.
func (s *hubSession) InvokeMethod(ctx context.Context, name string, payload []byte) (int, []byte, error) {
	qos := s.subs[featureMethods].Load()
	if qos < 0 {
		return 0, nil, azerr.Newf(azerr.HubDeviceNotOnline, "Device %s is not subscribed to direct methods.", s.twinID)
	}
	ch := make(chan methodAnswer, 1)
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return 0, nil, errSessionClosed
	case len(s.methods) >= maxPendingMethods:
		s.mu.Unlock()
		return 0, nil, azerr.Newf(azerr.HubThrottled, "Device %s has %d direct method calls waiting for an answer, the most berth allows.", s.deviceID, maxPendingMethods)
	}
	s.ridSeq++
	rid := strconv.FormatUint(s.ridSeq, 16)
	if s.methods == nil {
		s.methods = make(map[string]chan methodAnswer, 1)
	}
	s.methods[rid] = ch
	var id uint16
	if qos > 0 {
		id = s.packetIDLocked()
	}
	s.mu.Unlock()
	defer s.forgetMethod(rid)

	if err := s.c.publishID(topics.MethodRequest(name, rid), byte(qos), false, id, payload); err != nil {
		return 0, nil, fmt.Errorf("mqtt: send method request %s: %w", name, err)
	}
	select {
	case a := <-ch:
		if a.closed {
			return 0, nil, errSessionClosed
		}
		return a.status, a.body, nil
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
}

func (s *hubSession) forgetMethod(rid string) {
	s.mu.Lock()
	delete(s.methods, rid)
	if len(s.methods) == 0 {
		// The map goes with the last call: an idle session keeps none.
		s.methods = nil
	}
	s.mu.Unlock()
}

// methodResponse hands a device's answer to the invocation waiting for
// it. An answer nobody waits for (late, or an unknown rid) is dropped, as
// IoT Hub ignores it. A malformed topic closes the connection.
func (s *hubSession) methodResponse(pk *packets.Packet) error {
	status, rid, ok := topics.ParseMethodResponse(pk.TopicName)
	if !ok {
		s.c.srv.log.Info("mqtt: PUBLISH to a malformed method response topic; closing the connection", append(s.logAttrs(), "remote", s.c.remote, "topic", clip(pk.TopicName))...)
		return fmt.Errorf("mqtt: PUBLISH to %q: not a method response topic", clip(pk.TopicName))
	}
	s.mu.Lock()
	ch, found := s.methods[rid]
	if found {
		delete(s.methods, rid)
	}
	s.mu.Unlock()
	if found {
		// The packet's buffer is never reused, so the body may alias it.
		ch <- methodAnswer{status: status, body: pk.Payload}
	} else {
		s.c.srv.log.Debug("mqtt: method response for no pending call ignored", append(s.logAttrs(), "rid", clip(rid), "status", status)...)
	}
	if pk.FixedHeader.Qos == 1 {
		return s.c.puback(pk.PacketID)
	}
	return nil
}
