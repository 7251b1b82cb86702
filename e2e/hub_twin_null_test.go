package e2e

import (
	"reflect"
	"testing"
)

// PATCH /twins/{id} with "desired": null clears every desired property
// (the Node SDK's twin.update({properties:{desired:null}})): the device
// connected over MQTT hears a notification at the next $version that,
// applied to what it had, leaves nothing.
func TestTwinNullDesiredClearsAndNotifies(t *testing.T) {
	b := start(t, t.TempDir())
	d := b.connectTwin("null-dev")
	local, dv := d.deviceDesired("start")

	if _, st, data, _ := b.patchTwin("null-dev", "*", `{"properties":{"desired":{"foo":1,"bar":{"baz":2}}}}`); st != 200 {
		t.Fatalf("PATCH desired: %d %s", st, data)
	}
	applyDesired(t, local, d.next(d.desired, "the patch's notification").Payload())
	tw, st, data, _ := b.patchTwin("null-dev", "*", `{"properties":{"desired":null}}`)
	if st != 200 {
		t.Fatalf("PATCH desired null: %d %s", st, data)
	}
	if props, v, _ := section(t, tw.Properties.Desired); len(props) != 0 || v != dv+2 {
		t.Fatalf("desired after null: %v at $version %d, want none at %d", props, v, dv+2)
	}
	m := d.next(d.desired, "the clearing notification")
	if v := applyDesired(t, local, m.Payload()); v != dv+2 {
		t.Fatalf("notification $version %d, want %d", v, dv+2)
	}
	if len(local) != 0 {
		t.Fatalf("the device applied %s and still has %v", m.Payload(), local)
	}
	if got, v := d.deviceDesired("end"); len(got) != 0 || v != dv+2 || !reflect.DeepEqual(got, local) {
		t.Fatalf("device GET after null: %v at %d", got, v)
	}
}
