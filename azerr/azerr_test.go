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

// DPS and IoT Hub reuse numbers; each side gets its own message.
func TestSharedNumbersKeepTheirMeaning(t *testing.T) {
	if DPSInvalidEnrollment != HubArgumentInvalid {
		t.Skip("the numbers no longer overlap")
	}
	if m := New(DPSInvalidEnrollment).Message; m != "The enrollment is not valid." {
		t.Errorf("DPS message %q", m)
	}
	if m := NewHub(HubArgumentInvalid).Message; m != "ArgumentInvalid" {
		t.Errorf("hub message %q", m)
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
