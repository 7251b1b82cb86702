package mqtt

import (
	"errors"
	"fmt"
	"testing"

	"github.com/berth-iot/berth/azerr"
)

// TestConnackFor: a refused CONNECT gets the CONNACK code of its azerr
// entry's status class, as IoT Hub answers.
func TestConnackFor(t *testing.T) {
	tests := []struct {
		err  error
		want byte
	}{
		{azerr.Wrap(azerr.HubUnauthorizedAccess, errors.New("wrong key")), connNotAuthorized},
		{fmt.Errorf("ctx: %w", azerr.New(azerr.HubDeviceNotFound)), connNotAuthorized},
		{azerr.New(azerr.HubServiceUnavailable), connServerUnavailable},
		{azerr.New(azerr.HubServerError), connServerUnavailable},
		{errors.New("store: connection refused"), connServerUnavailable},
		{&azerr.Error{Message: "no entry"}, connServerUnavailable},
	}
	for _, tt := range tests {
		if got := connackFor(tt.err); got != tt.want {
			t.Errorf("connackFor(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}
