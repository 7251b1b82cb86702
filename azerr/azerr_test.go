package azerr

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestTable: every entry is renderable on every wire.
func TestTable(t *testing.T) {
	if len(Codes()) == 0 {
		t.Fatal("empty table")
	}
	names := map[Service]map[string]Code{}
	for _, c := range Codes() {
		if c.Service() != DPS && c.Service() != Hub {
			t.Errorf("%v: service %v", c, c.Service())
		}
		if st := c.Status(); st < 400 || st > 599 || c.Number()/1000 != st {
			t.Errorf("%v: status %d", c, st)
		}
		if c.Name() == "" || strings.ContainsAny(c.Name(), " ;:") {
			// The hub's legacy body is "ErrorCode:{name};{message}".
			t.Errorf("%v: name %q", c, c.Name())
		}
		if c.Message() == "" || strings.Contains(c.Message(), ";") {
			t.Errorf("%v: message %q", c, c.Message())
		}
		if got, ok := Lookup(c.Service(), c.Number()); !ok || got != c {
			t.Errorf("Lookup(%v, %d) = %v, %v", c.Service(), c.Number(), got, ok)
		}
		if names[c.Service()] == nil {
			names[c.Service()] = map[string]Code{}
		}
		if other, dup := names[c.Service()][c.Name()]; dup {
			t.Errorf("%v and %v share a name", c, other)
		}
		names[c.Service()][c.Name()] = c
	}
	if _, ok := Lookup(Hub, 400101); ok {
		t.Error("Lookup found a DPS number under the hub")
	}
}

// TestSharedNumbersKeepTheirMeaning: DPS and IoT Hub reuse numbers; each
// side is its own entry, with its own name and message.
func TestSharedNumbersKeepTheirMeaning(t *testing.T) {
	pairs := []struct{ dps, hub Code }{
		{DPSInvalidCredentials, HubUnauthorizedAccess},
		{DPSPreconditionFailed, HubPreconditionFailed},
		{DPSThrottled, HubThrottled},
		{DPSMethodNotAllowed, HubMethodNotAllowed},
	}
	for _, p := range pairs {
		if p.dps.Number() != p.hub.Number() {
			t.Fatalf("%v and %v no longer share a number; revisit this test", p.dps, p.hub)
		}
		if p.dps == p.hub || p.dps.Service() != DPS || p.hub.Service() != Hub {
			t.Errorf("%v and %v are not two entries", p.dps, p.hub)
		}
	}
	if n := DPSInvalidCredentials.Name(); n == HubUnauthorizedAccess.Name() {
		t.Errorf("DPS 401002 has the hub's name %q", n)
	}
	if HubUnauthorizedAccess.Name() != "IotHubUnauthorizedAccess" || HubDeviceNotFound.Name() != "DeviceNotFound" {
		t.Error("hub names changed; the SDKs key off them")
	}
	// One message per entry, whichever constructor made the error.
	for _, e := range []*Error{New(HubDeviceNotFound), Wrap(HubDeviceNotFound, errors.New("x")), NewHub(HubDeviceNotFound), WrapHub(HubDeviceNotFound, nil)} {
		if e.Message != HubDeviceNotFound.Message() {
			t.Errorf("message %q", e.Message)
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

// TestFor: an answer in one service's form never carries the other's
// entry, nor a message that is not the service's to show.
func TestFor(t *testing.T) {
	own := Newf(HubDeviceNotFound, "Device d not found.")
	if got := For(fmt.Errorf("ctx: %w", own), HubServerError); got != own {
		t.Errorf("For changed a hub error: %v", got)
	}
	for _, err := range []error{New(DPSPreconditionFailed), &Error{Message: "no entry"}, errors.New("boom")} {
		got := For(err, HubServerError)
		if got.Code != HubServerError || got.Message != HubServerError.Message() || !errors.Is(got, err) {
			t.Errorf("For(%v) = %+v", err, got)
		}
	}
}

func TestFormat(t *testing.T) {
	if got := fmt.Sprintf("%d|%v|%s", HubDeviceNotFound, HubDeviceNotFound, DPSInvalidCredentials); got != "404001|404001 DeviceNotFound|401002 InvalidCredentials" {
		t.Errorf("got %q", got)
	}
	if got := New(HubGatewayTimeout).Error(); !strings.HasPrefix(got, "504101 ") {
		t.Errorf("Error() = %q", got)
	}
}

type unreachableErr struct{}

func (unreachableErr) Error() string     { return "the database is down" }
func (unreachableErr) Unavailable() bool { return true }

// A backing service that cannot be reached is each service's 503, which
// the SDKs retry, not a 500.
func TestAsUnavailableIsTheServicesRetryable503(t *testing.T) {
	err := fmt.Errorf("read device: %w", unreachableErr{})
	if got := As(err, DPSInternal); got.Code != DPSServiceUnavailable || !errors.Is(got, err) {
		t.Errorf("DPS: %v, want %v wrapping the cause", got.Code, DPSServiceUnavailable)
	}
	if got := For(err, HubServerError); got.Code != HubServiceUnavailable {
		t.Errorf("hub: %v, want %v", got.Code, HubServiceUnavailable)
	}
	if got := As(errors.New("disk on fire"), HubServerError); got.Code != HubServerError {
		t.Errorf("a plain failure: %v, want %v", got.Code, HubServerError)
	}
}
