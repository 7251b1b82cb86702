package hub_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store/memstore"
)

const hubName = "hub.berth.test"

func code(err error) azerr.Code {
	var ae *azerr.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return azerr.Code{}
}

func TestRegistryCRUD(t *testing.T) {
	ctx := context.Background()
	reg := hub.NewRegistry(memstore.New(), nil)
	d, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if keys := d.Keys(); len(keys) != 2 || keys[0] == "" || keys[0] == keys[1] || d.GenerationID == "" || d.ETag == "" || d.Status != hub.StatusEnabled {
		t.Fatalf("created: %+v", d)
	}
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev-1"}); code(err) != azerr.HubDeviceAlreadyExists {
		t.Errorf("duplicate create: %v", err)
	}
	// Device IDs are case-sensitive; hub names are not.
	if _, err := reg.Get(ctx, "HUB.berth.test", "DEV-1"); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("case-folded device id found: %v", err)
	}
	if _, err := reg.Get(ctx, "HUB.berth.test", "dev-1"); err != nil {
		t.Errorf("hub name case: %v", err)
	}
	upd, err := reg.Update(ctx, hubName, &hub.Device{DeviceID: "dev-1", Status: hub.StatusDisabled}, d.ETag)
	if err != nil || upd.Status != hub.StatusDisabled || upd.Keys()[0] != d.Keys()[0] {
		t.Fatalf("update: %+v, %v", upd, err)
	}
	// Node's update sends empty keys when the caller set none: keys stay.
	upd2, err := reg.Update(ctx, hubName, &hub.Device{DeviceID: "dev-1", Status: hub.StatusEnabled,
		Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{}}}, "*")
	if err != nil || upd2.Keys()[0] != d.Keys()[0] || upd2.Keys()[1] != d.Keys()[1] {
		t.Fatalf("update with empty keys rotated them: %v", err)
	}
	if _, err := reg.Update(ctx, hubName, &hub.Device{DeviceID: "dev-1"}, d.ETag); code(err) != azerr.HubPreconditionFailed {
		t.Errorf("stale update: %v", err)
	}
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "bad/id"}); code(err) != azerr.HubArgumentInvalid {
		t.Errorf("bad id: %v", err)
	}
	list, err := reg.List(ctx, hubName, "", 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	if err := reg.Delete(ctx, hubName, "dev-1", `"`+d.ETag+`"`); code(err) != azerr.HubPreconditionFailed {
		t.Errorf("delete stale: %v", err)
	}
	if err := reg.Delete(ctx, hubName, "dev-1", "*"); err != nil {
		t.Errorf("delete: %v", err)
	}
	if err := reg.Delete(ctx, hubName, "dev-1", ""); code(err) != azerr.HubDeviceNotFound {
		t.Errorf("delete missing: %v", err)
	}
}

func TestAuthenticateDevice(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1700000000, 0)
	st := memstore.New()
	reg := hub.NewRegistry(st, func() time.Time { return now })
	settings, err := hub.LoadOrCreateSettings(ctx, st, hubName)
	if err != nil {
		t.Fatal(err)
	}
	again, err := hub.LoadOrCreateSettings(ctx, st, hubName)
	if err != nil || again.PolicySet().List()[0].PrimaryKey != settings.PolicySet().List()[0].PrimaryKey {
		t.Fatal("settings not persisted")
	}
	d, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	off, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "off", Status: hub.StatusDisabled})
	if err != nil {
		t.Fatal(err)
	}
	exp := now.Add(time.Hour)
	sign := func(res, key, skn string) string {
		tok, err := sas.Sign(res, key, skn, exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	owner, _ := settings.Policy("iothubowner")
	svc, _ := settings.Policy("service")
	devPol, _ := settings.Policy("device")
	primary, secondary := d.Keys()[0], d.Keys()[1]
	expired, _ := sas.Sign(hubName+"/devices/dev", primary, "", now.Add(-sas.MaxClockSkew-time.Second))
	// offToken is right in every way but the device's status: the only
	// reason to refuse it is that the device is disabled.
	offToken := sign(hubName+"/devices/off", off.Keys()[0], "")
	// why is the refusal's cause (for logs; every refusal looks the same
	// on the wire): a sas error or a substring of the message.
	tests := []struct {
		name, device, token string
		ok                  bool
		why                 any
	}{
		{"device key, Node encoding", "dev", sign(url.QueryEscape(hubName+"/devices/dev"), primary, ""), true, nil},
		{"device key, raw sr", "dev", sign(hubName+"/devices/dev", primary, ""), true, nil},
		{"secondary key", "dev", sign(hubName+"/devices/dev", secondary, ""), true, nil},
		{"upper-case sr", "dev", sign("HUB.BERTH.TEST/devices/dev", primary, ""), true, nil},
		{"hub-scoped sr with device key", "dev", sign(hubName, primary, ""), true, nil},
		{"host:port in sr", "dev", sign(hubName+":443/devices/dev", primary, ""), true, nil},
		{"device policy", "dev", sign(hubName, devPol.PrimaryKey, "device"), true, nil},
		{"owner policy", "dev", sign(hubName+"/devices", owner.PrimaryKey, "iothubowner"), true, nil},
		{"service policy lacks DeviceConnect", "dev", sign(hubName, svc.PrimaryKey, "service"), false, nil},
		{"wrong key", "dev", sign(hubName+"/devices/dev", owner.PrimaryKey, ""), false, sas.ErrSignature},
		{"another device's sr", "dev", sign(hubName+"/devices/other", primary, ""), false, sas.ErrAudience},
		{"prefix not on a segment", "dev", sign(hubName+"/devices/de", primary, ""), false, nil},
		{"longer sr", "dev", sign(hubName+"/devices/dev/modules/m", primary, ""), false, nil},
		{"another hub", "dev", sign("other.hub/devices/dev", primary, ""), false, nil},
		{"expired", "dev", expired, false, sas.ErrExpired},
		{"malformed", "dev", "SharedAccessSignature nope", false, nil},
		{"empty", "dev", "", false, nil},
		{"unknown device", "ghost", sign(hubName+"/devices/ghost", primary, ""), false, nil},
		{"disabled device", "off", offToken, false, "disabled"},
		{"disabled device, wrong key", "off", sign(hubName+"/devices/off", primary, ""), false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := reg.AuthenticateDevice(ctx, settings, hubName, tt.device, tt.token)
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if !id.Expires.Equal(exp.Add(sas.MaxClockSkew)) || id.AuthMethod == "" {
					t.Errorf("identity %+v", id)
				}
				return
			}
			if code(err) != azerr.HubUnauthorizedAccess {
				t.Fatalf("err = %v, want IotHubUnauthorizedAccess", err)
			}
			switch why := tt.why.(type) {
			case error:
				if !errors.Is(err, why) {
					t.Errorf("refused for %v, want %v", err, why)
				}
			case string:
				if !strings.Contains(err.Error(), why) {
					t.Errorf("refused for %v, want %q", err, why)
				}
			}
		})
	}
	// Enabled, the disabled device's token is accepted: it was refused for
	// the status alone.
	off.Status = hub.StatusEnabled
	if _, err := reg.Update(ctx, hubName, off, "*"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.AuthenticateDevice(ctx, settings, hubName, "off", offToken); err != nil {
		t.Errorf("the enabled device's own token: %v", err)
	}
}

func TestMessageSize(t *testing.T) {
	m := &hub.Message{
		Body:   make([]byte, 10),
		System: []hub.Property{{Name: hub.PropMessageID, Value: "abc"}},
		App:    []hub.Property{{Name: "k", Value: "vv"}},
	}
	if got := m.Size(); got != 10+3+1+2 {
		t.Errorf("Size = %d", got)
	}
	if v, ok := m.SystemValue(hub.PropMessageID); !ok || v != "abc" {
		t.Errorf("SystemValue = %q %v", v, ok)
	}
}

func TestPresence(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1700000000, 0)
	st := memstore.New()
	reg := hub.NewRegistry(st, func() time.Time { return now })
	if _, err := reg.Create(ctx, hubName, &hub.Device{DeviceID: "p"}); err != nil {
		t.Fatal(err)
	}
	first := reg.Connected(hubName, "p")
	second := reg.Connected(hubName, "p") // a takeover overlaps briefly
	now = now.Add(time.Minute)
	reg.Active(hubName, "p")
	d, _ := reg.Get(ctx, hubName, "p")
	if d.ConnectionState != "Connected" || !d.LastActivityTime.Equal(now) {
		t.Fatalf("connected: %+v", d)
	}
	// An update while connected must not store the presence: a restarted
	// node (a fresh registry on the same store) sees the device offline.
	if _, err := reg.Update(ctx, hubName, &hub.Device{DeviceID: "p", Status: hub.StatusEnabled}, "*"); err != nil {
		t.Fatal(err)
	}
	if d, _ := hub.NewRegistry(st, nil).Get(ctx, hubName, "p"); d.ConnectionState != "Disconnected" || !d.LastActivityTime.IsZero() {
		t.Fatalf("presence was stored: %+v", d)
	}
	first()
	first() // idempotent
	if d, _ := reg.Get(ctx, hubName, "p"); d.ConnectionState != "Connected" {
		t.Fatalf("one of two connections closed: %s", d.ConnectionState)
	}
	second()
	d, _ = reg.Get(ctx, hubName, "p")
	if d.ConnectionState != "Disconnected" || !d.LastActivityTime.Equal(now) {
		t.Fatalf("disconnected: %+v", d)
	}
	list, _ := reg.List(ctx, hubName, "", 10)
	if len(list) != 1 || list[0].ConnectionState != "Disconnected" {
		t.Fatalf("list: %+v", list)
	}
}

func TestStamp(t *testing.T) {
	m := &hub.Message{System: []hub.Property{{Name: hub.PropMessageID, Value: "m"}}}
	now := time.Date(2026, 11, 23, 8, 0, 0, 123456789, time.FixedZone("x", 3600))
	hub.Stamp(m, hubName, &hub.Identity{Device: &hub.Device{DeviceID: "d", GenerationID: "g"}, AuthMethod: "am"}, now)
	want := map[string]string{
		hub.PropMessageID:        "m",
		hub.PropConnDeviceID:     "d",
		hub.PropConnGenerationID: "g",
		hub.PropConnAuthMethod:   "am",
		hub.PropEnqueuedTime:     "2026-11-23T07:00:00.123Z",
		hub.PropMessageSource:    "Telemetry",
	}
	for k, v := range want {
		if got, ok := m.SystemValue(k); !ok || got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if m.Hub != hubName || m.DeviceID != "d" || !m.Enqueued.Equal(now.Truncate(time.Millisecond)) {
		t.Errorf("message fields: %+v", m)
	}
}
