package dps_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/throttle"
)

// Registrations over the DPS rate are 429001 with the wait until a token
// is back, never less than the 202s' retry-after (3 s, as Azure); a
// refused request costs nothing, and the rate lets the next one through
// once the clock has moved. Polls are limited per device as well.
func TestThrottleRegistrationsAndPolls(t *testing.T) {
	f := newFixture(t)
	f.group(t, "grp", "")
	s, err := throttle.Parse(throttle.AzureS1, nil, []string{"dps-register=2/min"})
	if err != nil {
		t.Fatal(err)
	}
	f.svc.SetThrottle(throttle.New(throttle.Config{Settings: s, Now: func() time.Time { return f.now }}))
	ctx := context.Background()
	register := func(id string) (*dps.OperationStatus, error) {
		key, _ := sas.DeriveKey(groupKey, id)
		return f.svc.Register(ctx, dps.RegisterRequest{IDScope: scope, RegistrationID: id, Token: f.token(t, id, key), Body: []byte(`{"registrationId":"` + id + `"}`)})
	}
	for _, id := range []string{"m-1", "m-2"} {
		if _, err := register(id); err != nil {
			t.Fatal(err)
		}
	}
	_, err = register("m-3")
	var ae *azerr.Error
	if !errors.As(err, &ae) || ae.Code != azerr.DPSThrottled || ae.RetryAfter != 30*time.Second {
		t.Fatalf("3rd registration within the minute: %v (%+v), want 429001 with a 30 s wait", err, ae)
	}
	f.now = f.now.Add(29 * time.Second)
	if _, err := register("m-3"); code(err) != azerr.DPSThrottled {
		t.Fatalf("after 29 s: %v", err)
	}
	f.now = f.now.Add(time.Second)
	op, err := register("m-3")
	if err != nil {
		t.Fatalf("after 30 s: %v", err)
	}
	// S1's 5 polls per 10 s per device.
	key, _ := sas.DeriveKey(groupKey, "m-3")
	poll := func() error {
		_, err := f.svc.OperationStatus(ctx, dps.OperationRequest{IDScope: scope, RegistrationID: "m-3", OperationID: op.OperationID, Token: f.token(t, "m-3", key)})
		return err
	}
	for i := range 5 {
		if err := poll(); err != nil {
			t.Fatalf("poll %d: %v", i+1, err)
		}
	}
	err = poll()
	if !errors.As(err, &ae) || ae.Code != azerr.DPSThrottled || ae.RetryAfter != 3*time.Second {
		t.Fatalf("6th poll: %v, want 429001 with retry-after 3 s (2 s rounded up to the 202s' 3)", err)
	}
}
