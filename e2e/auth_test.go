package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/internal/svcconn"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
)

// logBuffer collects a berth's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startLogged is start with every log line, debug included, kept.
func startLogged(t *testing.T, cfg server.Config) (*berth, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return startWith(t, t.TempDir(), cfg), logs
}

// doHost is do with the request's Host header set to host (the TLS
// connection still goes to berth and names 127.0.0.1).
func (b *berth) doHost(method, path, host, auth string) (*http.Response, []byte) {
	b.t.Helper()
	req, err := http.NewRequest(method, "https://127.0.0.1"+path, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Host = host
	req.Header.Set("Authorization", auth)
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp, data
}

// ownerPolicy is the DPS owner policy's name and key from client.json.
func (b *berth) ownerPolicy() (name, key string) {
	b.t.Helper()
	cs, err := svcconn.Parse("e2e", b.info.ServiceConnectionString)
	if err != nil {
		b.t.Fatal(err)
	}
	return cs.SharedAccessKeyName, cs.SharedAccessKey
}

// checkDPSError checks a DPS error answer: the status, x-ms-error-code and
// the body's errorCode.
func checkDPSError(t *testing.T, what string, resp *http.Response, body []byte, wantCode int) {
	t.Helper()
	var e struct {
		ErrorCode int `json:"errorCode"`
	}
	if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != wantCode/1000 || e.ErrorCode != wantCode ||
		resp.Header.Get("x-ms-error-code") != fmt.Sprint(wantCode) {
		t.Fatalf("%s: %d x-ms-error-code=%q %s, want %d", what, resp.StatusCode, resp.Header.Get("x-ms-error-code"), body, wantCode)
	}
}

// A DPS service token's audience must name the DPS's configured host, not
// merely the Host header the client sent: with the owner key, a token for
// sr=evil.example.com sent with Host: evil.example.com is refused, 401002
// as Azure answers an invalid token. (berth accepted it: the request's
// Host was added to the audiences.) The same token for a configured host
// is accepted whatever the Host header.
func TestForgedAudienceServiceTokenIsRefused(t *testing.T) {
	b := start(t, t.TempDir())
	name, key := b.ownerPolicy()
	path := "/enrollments/query?api-version=2021-10-01"
	forged, err := sas.Sign("evil.example.com", key, name, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	resp, body := b.doHost("POST", path, "evil.example.com", forged)
	checkDPSError(t, "forged audience", resp, body, 401002)
	resp, body = b.doHost("POST", path, "evil.example.com:443", forged)
	checkDPSError(t, "forged audience with port", resp, body, 401002)

	good, err := sas.Sign("localhost:443", key, name, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := b.doHost("POST", path, "evil.example.com", good); resp.StatusCode != 200 {
		t.Fatalf("configured host (with port) in sr: %d %s", resp.StatusCode, body)
	}

	// The hub's service API binds to the hub name alike.
	hubForged, err := sas.Sign("evil.example.com", dps.NewKey(), "iothubowner", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	resp, body = b.doHost("GET", "/devices?api-version=2021-04-12", "evil.example.com", hubForged)
	checkHubError(t, "hub forged audience", resp.StatusCode, resp.Header, body, 401, "IotHubUnauthorizedAccess")
}

// hubConnectErr connects deviceID to the hub over MQTT with password and
// returns the CONNECT's outcome.
func (b *berth) hubConnectErr(deviceID, password string) error {
	b.t.Helper()
	hubName := b.info.HubHostName
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + b.info.MQTTAddress).
		SetClientID(deviceID).
		SetUsername(hubName + "/" + deviceID + "/?api-version=2021-04-12").
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"})
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(hubWait) {
		b.t.Fatalf("hub connect %s: no CONNACK", deviceID)
	}
	if tok.Error() == nil {
		c.Disconnect(100)
	}
	return tok.Error()
}

// dpsMQTTStatus registers regID over MQTT with password and returns the
// answer's status.
func (b *berth) dpsMQTTStatus(regID, password string) int {
	b.t.Helper()
	d := b.mqttConnect(regID, password)
	st, _, _ := d.request("$dps/registrations/PUT/iotdps-register/?$rid=1", "1", "{}")
	d.c.Disconnect(100)
	return st
}

// signAt is a token for resource, signed with key, expiring at exp.
func signAt(t *testing.T, resource, key, keyName string, exp time.Time) string {
	t.Helper()
	tok, err := sas.Sign(resource, key, keyName, exp)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Every refused device or service authentication is one INFO line naming
// the reason the domain found, whatever the front end (DPS over HTTPS and
// MQTT, the hub over MQTT and HTTPS, both service APIs, X.509); the client
// still sees only Azure's 401 or CONNACK 5. No key, signature or token
// ever reaches the log, at any level.
func TestRefusedAuthenticationsAreLoggedOnceWithTheReason(t *testing.T) {
	b, logs := startLogged(t, server.Config{})
	hubName := b.info.HubHostName
	enrolledKey := b.createEnrollment("enrolled-1")
	hubKey := b.createHubDevice("hub-dev")
	disabledKey := b.createHubDevice("off-dev")
	if resp, data := b.hubDo("PUT", "/devices/off-dev?api-version=2021-04-12",
		map[string]any{"deviceId": "off-dev", "status": "disabled"}, map[string]string{"If-Match": "*"}, nil); resp.StatusCode != 200 {
		t.Fatalf("disable: %d %s", resp.StatusCode, data)
	}
	ownerName, ownerKey := b.ownerPolicy()
	wrongKey := dps.NewKey()
	now := time.Now()
	scope := b.info.IDScope
	regPath := func(id string) string {
		return "/" + scope + "/registrations/" + id + "/register?api-version=2021-06-01"
	}
	hubEvent := "/devices/hub-dev/messages/events?api-version=2020-09-30"
	stranger := testcerts.Valid(t, "stranger", nil, false, now)
	secrets := []string{enrolledKey, hubKey, disabledKey, ownerKey, wrongKey}

	// Each case's tokens are kept so that their signatures can be looked
	// for in the log.
	var tokens []string
	tok := func(s string) string { tokens = append(tokens, s); return s }

	cases := []struct {
		name   string
		reason string
		do     func(t *testing.T)
	}{
		{"DPS device over HTTPS, wrong key", "wrong key", func(t *testing.T) {
			resp, body := b.do("PUT", regPath("enrolled-1"), tok(b.deviceToken("enrolled-1", wrongKey)), "{}", nil, nil)
			checkDPSError(t, "register", resp, body, 401002)
		}},
		{"DPS device over MQTT, unknown registration", "unknown registration", func(t *testing.T) {
			if st := b.dpsMQTTStatus("nobody", tok(b.deviceToken("nobody", wrongKey))); st != 401 {
				t.Fatalf("status %d", st)
			}
		}},
		{"DPS device over MQTT, expired", "expired", func(t *testing.T) {
			expired := tok(signAt(t, scope+"/registrations/enrolled-1", enrolledKey, "registration", now.Add(-time.Hour)))
			if st := b.dpsMQTTStatus("enrolled-1", expired); st != 401 {
				t.Fatalf("status %d", st)
			}
		}},
		{"DPS device over HTTPS, wrong audience", "wrong audience", func(t *testing.T) {
			other := tok(b.deviceToken("enrolled-2", enrolledKey))
			resp, body := b.do("PUT", regPath("enrolled-1"), other, "{}", nil, nil)
			checkDPSError(t, "register", resp, body, 401002)
		}},
		{"DPS device over HTTPS, certificate not enrolled", "certificate not enrolled", func(t *testing.T) {
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{stranger.TLS()}},
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, network, b.info.HTTPSAddress)
				},
			}}
			req, err := http.NewRequest("PUT", "https://127.0.0.1"+regPath("stranger"), strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			checkDPSError(t, "register", resp, body, 401002)
		}},
		{"hub device over MQTT, wrong key", "wrong key", func(t *testing.T) {
			if err := b.hubConnectErr("hub-dev", tok(hubToken(t, hubName, "hub-dev", wrongKey))); err == nil {
				t.Fatal("connected")
			}
		}},
		{"hub device over MQTT, unknown device", "unknown device", func(t *testing.T) {
			if err := b.hubConnectErr("ghost", tok(hubToken(t, hubName, "ghost", hubKey))); err == nil {
				t.Fatal("connected")
			}
		}},
		{"hub device over MQTT, disabled", "disabled", func(t *testing.T) {
			if err := b.hubConnectErr("off-dev", tok(hubToken(t, hubName, "off-dev", disabledKey))); err == nil {
				t.Fatal("connected")
			}
		}},
		{"hub device over HTTPS, expired", "expired", func(t *testing.T) {
			expired := tok(signAt(t, hubName+"/devices/hub-dev", hubKey, "", now.Add(-time.Hour)))
			resp, body := b.do("POST", hubEvent, expired, `{"t":1}`, nil, nil)
			checkHubError(t, "telemetry", resp.StatusCode, resp.Header, body, 401, "IotHubUnauthorizedAccess")
		}},
		{"DPS service API, wrong audience", "wrong audience", func(t *testing.T) {
			resp, body := b.doHost("POST", "/enrollments/query?api-version=2021-10-01", "evil.example.com",
				tok(signAt(t, "evil.example.com", ownerKey, ownerName, now.Add(time.Hour))))
			checkDPSError(t, "query", resp, body, 401002)
		}},
		{"DPS service API, unknown policy", "unknown policy", func(t *testing.T) {
			resp, body := b.do("POST", "/enrollments/query?api-version=2021-10-01",
				tok(signAt(t, "127.0.0.1", ownerKey, "nosuchpolicy", now.Add(time.Hour))), nil, nil, nil)
			checkDPSError(t, "query", resp, body, 401002)
		}},
		{"hub service API, wrong key", "wrong key", func(t *testing.T) {
			resp, body := b.do("GET", "/devices?api-version=2021-04-12", tok(signAt(t, hubName, wrongKey, "iothubowner", now.Add(time.Hour))), nil, nil, nil)
			checkHubError(t, "list devices", resp.StatusCode, resp.Header, body, 401, "IotHubUnauthorizedAccess")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(logs.String())
			c.do(t)
			var refused []string
			for _, line := range strings.Split(logs.String()[before:], "\n") {
				if strings.Contains(line, "level=INFO") && strings.Contains(line, " reason=") {
					refused = append(refused, line)
				}
			}
			if len(refused) != 1 {
				t.Fatalf("%d INFO lines with a reason, want 1:\n%s", len(refused), strings.Join(refused, "\n"))
			}
			if want := "reason=" + quoteLog(c.reason); !strings.Contains(refused[0], want) {
				t.Errorf("log line %q lacks %s", refused[0], want)
			}
		})
	}
	all := logs.String()
	for _, tk := range tokens {
		parsed, err := sas.Parse(tk)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, tk, parsed.Signature, url.QueryEscape(parsed.Signature))
	}
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("the log shows a secret %q", s)
		}
	}
}

// quoteLog is v as slog's text handler writes a value with spaces.
func quoteLog(v string) string {
	if strings.ContainsAny(v, " =\"") {
		return fmt.Sprintf("%q", v)
	}
	return v
}

// berth serve --max-token-lifetime bounds se minus now of every token,
// device and service, on every front end; without it a century-long token
// is accepted, as on Azure.
func TestMaxTokenLifetime(t *testing.T) {
	century := time.Now().Add(100 * 365 * 24 * time.Hour)
	hourAhead := time.Now().Add(50 * time.Minute)

	open := start(t, t.TempDir())
	key := open.createEnrollment("long-lived")
	if st := open.dpsMQTTStatus("long-lived", signAt(t, open.info.IDScope+"/registrations/long-lived", key, "registration", century)); st != 202 {
		t.Fatalf("no limit: a century-long device token got %d", st)
	}
	open.stop()

	b, logs := startLogged(t, server.Config{MaxTokenLifetime: time.Hour})
	scope, hubName := b.info.IDScope, b.info.HubHostName
	key = b.createEnrollment("bounded")
	hubKey := b.createHubDevice("bounded-dev")
	ownerName, ownerKey := b.ownerPolicy()
	hubCS, err := svcconn.Parse("e2e", b.info.HubConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	regPath := "/" + scope + "/registrations/bounded/register?api-version=2021-06-01"

	// Refused: DPS device (HTTPS and MQTT), hub device (MQTT and HTTPS),
	// both service APIs.
	resp, body := b.do("PUT", regPath, signAt(t, scope+"/registrations/bounded", key, "registration", century), "{}", nil, nil)
	checkDPSError(t, "DPS device over HTTPS", resp, body, 401002)
	if st := b.dpsMQTTStatus("bounded", signAt(t, scope+"/registrations/bounded", key, "registration", century)); st != 401 {
		t.Errorf("DPS device over MQTT: %d, want 401", st)
	}
	if err := b.hubConnectErr("bounded-dev", signAt(t, hubName+"/devices/bounded-dev", hubKey, "", century)); err == nil {
		t.Error("hub device over MQTT connected with a century-long token")
	}
	resp, body = b.do("POST", "/devices/bounded-dev/messages/events?api-version=2020-09-30",
		signAt(t, hubName+"/devices/bounded-dev", hubKey, "", century), `{}`, nil, nil)
	checkHubError(t, "hub device over HTTPS", resp.StatusCode, resp.Header, body, 401, "IotHubUnauthorizedAccess")
	resp, body = b.do("POST", "/enrollments/query?api-version=2021-10-01", signAt(t, "127.0.0.1", ownerKey, ownerName, century), nil, nil, nil)
	checkDPSError(t, "DPS service", resp, body, 401002)
	resp, body = b.do("GET", "/devices?api-version=2021-04-12", signAt(t, hubCS.HostName, hubCS.SharedAccessKey, hubCS.SharedAccessKeyName, century), nil, nil, nil)
	checkHubError(t, "hub service", resp.StatusCode, resp.Header, body, 401, "IotHubUnauthorizedAccess")
	if n := strings.Count(logs.String(), `reason="token lifetime too long"`); n != 6 {
		t.Errorf("%d log lines say the lifetime is too long, want 6", n)
	}

	// Accepted within the limit.
	resp, body = b.do("PUT", regPath, signAt(t, scope+"/registrations/bounded", key, "registration", hourAhead), "{}", nil, nil)
	if resp.StatusCode != 202 {
		t.Errorf("DPS device within the limit: %d %s", resp.StatusCode, body)
	}
	if err := b.hubConnectErr("bounded-dev", signAt(t, hubName+"/devices/bounded-dev", hubKey, "", hourAhead)); err != nil {
		t.Errorf("hub device within the limit: %v", err)
	}
	resp, body = b.do("POST", "/enrollments/query?api-version=2021-10-01", signAt(t, "127.0.0.1", ownerKey, ownerName, hourAhead), nil, nil, nil)
	if resp.StatusCode != 200 {
		t.Errorf("DPS service within the limit: %d %s", resp.StatusCode, body)
	}
}

// One registration is one hub device: a group member registered as
// Abuse-UPPER and again as ABUSE-UPPER (registration IDs are
// case-insensitive) is still the hub device Abuse-UPPER, now with the key
// derived from the new spelling; no device ABUSE-UPPER exists, so that key
// opens nothing else.
func TestCaseVariantLeavesNoOrphanDevice(t *testing.T) {
	b := start(t, t.TempDir())
	hubName := b.info.HubHostName
	groupKey := b.createGroup("abuse")
	first, err := sas.DeriveKey(groupKey, "Abuse-UPPER")
	if err != nil {
		t.Fatal(err)
	}
	variant, err := sas.DeriveKey(groupKey, "ABUSE-UPPER")
	if err != nil {
		t.Fatal(err)
	}
	checkAssigned(t, b.provisionHTTPS("Abuse-UPPER", first), "Abuse-UPPER", hubName)
	op := b.provisionMQTT("ABUSE-UPPER", variant)
	if rs := op.RegistrationState; op.Status != "assigned" || rs == nil || rs.DeviceID != "Abuse-UPPER" || rs.RegistrationID != "ABUSE-UPPER" {
		t.Fatalf("variant: %+v %+v, want deviceId Abuse-UPPER", op, rs)
	}
	resp, body := b.hubDo("GET", "/devices/ABUSE-UPPER?api-version=2021-04-12", nil, nil, nil)
	checkHubError(t, "orphan device", resp.StatusCode, resp.Header, body, 404, "DeviceNotFound")
	if resp, body := b.hubDo("GET", "/devices/Abuse-UPPER?api-version=2021-04-12", nil, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("the one device: %d %s", resp.StatusCode, body)
	}
	if err := b.hubConnectErr("Abuse-UPPER", hubToken(t, hubName, "Abuse-UPPER", variant)); err != nil {
		t.Errorf("the variant's key on the one device: %v", err)
	}
	if err := b.hubConnectErr("ABUSE-UPPER", hubToken(t, hubName, "ABUSE-UPPER", variant)); err == nil {
		t.Error("the variant's key opened a second device")
	}
	if err := b.hubConnectErr("Abuse-UPPER", hubToken(t, hubName, "Abuse-UPPER", first)); err == nil {
		t.Error("the replaced key still opens the device")
	}
}
