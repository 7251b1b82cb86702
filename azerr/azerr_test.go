package azerr

import (
	"errors"
	"fmt"
	"testing"
)

func TestStatusAndNames(t *testing.T) {
	tests := []struct {
		code   Code
		status int
		name   string
	}{
		{DPSInvalidCredentials, 401, "IotHubUnauthorizedAccess"},
		{DPSCustomAllocation, 400, ""},
		{HubDeviceNotFound, 404, "DeviceNotFound"},
		{HubMessageTooLarge, 413, "MessageTooLarge"},
		{HubGatewayTimeout, 504, "GatewayTimeout"},
	}
	for _, tt := range tests {
		if got := tt.code.Status(); got != tt.status {
			t.Errorf("%d.Status() = %d, want %d", tt.code, got, tt.status)
		}
		if got := tt.code.Name(); got != tt.name {
			t.Errorf("%d.Name() = %q, want %q", tt.code, got, tt.name)
		}
	}
}

// Numbers DPS and IoT Hub share (412001 …) get each side's own message.
func TestSharedNumbersKeepTheirMeaning(t *testing.T) {
	if DPSPreconditionFailed != HubPreconditionFailed {
		t.Fatal("the shared 412001 changed; revisit this test")
	}
	if m := New(DPSPreconditionFailed).Message; m != "Precondition failed." {
		t.Errorf("DPS message %q", m)
	}
	if m := NewHub(HubPreconditionFailed).Message; m == "Precondition failed." || m == "" {
		t.Errorf("hub message %q", m)
	}
	// berth's own DPS codes do not collide with hub codes.
	for _, c := range []Code{DPSInvalidBody, DPSInvalidRegistration, DPSRegistrationIDMatch, DPSInvalidEnrollment} {
		if c.Name() != "" {
			t.Errorf("%d has the hub name %q", c, c.Name())
		}
	}
}

func TestAs(t *testing.T) {
	base := Newf(DPSNotFound, "x")
	if got := As(fmt.Errorf("wrapped: %w", base), DPSInternal); got != base {
		t.Errorf("As lost the azerr.Error: %v", got)
	}
	plain := errors.New("disk on fire")
	got := As(plain, DPSInternal)
	if got.Code != DPSInternal || got.Message == plain.Error() || !errors.Is(got, plain) {
		t.Errorf("As(plain) = %+v", got)
	}
}
