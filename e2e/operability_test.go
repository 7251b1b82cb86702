package e2e

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/server"
)

// admin fetches path from the operator listener, as curl -k would.
func (b *berth) admin(path string) (int, string) {
	b.t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: b.roots, ServerName: "127.0.0.1"},
	}}
	resp, err := c.Get(strings.TrimSuffix(b.srv.AdminURL(), "/") + path)
	if err != nil {
		b.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric is the value of one sample of the exposition text, by its name
// and labels exactly as printed ("" for none), or -1 when absent.
func metric(text, sample string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// The operator listener answers /healthz, /readyz and /metrics without
// credentials, and the metrics count what berth did: connections,
// registrations, refusals by reason, telemetry and its append latency,
// twin operations and C2D outcomes.
func TestOperatorEndpointsAndMetrics(t *testing.T) {
	logs := &logBuffer{}
	b := startWith(t, t.TempDir(), server.Config{AdminAddr: "127.0.0.1:0", Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if code, body := b.admin("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := b.admin("/readyz"); code != 200 || body != "ready\n" {
		t.Fatalf("/readyz: %d %q", code, body)
	}

	key := b.createEnrollment("metered")
	checkAssigned(t, b.provisionMQTT("metered", key), "metered", b.info.HubHostName)
	d := b.mqttConnect("metered", b.deviceToken("metered", dps.NewKey()))
	if st, _, body := d.request("$dps/registrations/PUT/iotdps-register/?$rid=1", "1", "{}"); st != 401 {
		t.Fatalf("wrong key: %d %s", st, body)
	}
	hd := b.hubConnect("metered", key, false)
	hd.publish("devices/metered/messages/events/", 1, "0123456789")
	if resp, body := b.hubDo("PATCH", "/twins/metered?api-version=2021-04-12", map[string]any{"properties": map[string]any{"desired": map[string]any{"x": 1}}}, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("twin patch: %d %s", resp.StatusCode, body)
	}
	if resp, body := b.hubDo("POST", "/devices/metered/messages/deviceBound?api-version=2021-04-12", "hello", nil, nil); resp.StatusCode/100 != 2 {
		t.Fatalf("c2d send: %d %s", resp.StatusCode, body)
	}

	code, text := b.admin("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for sample, min := range map[string]float64{
		`berth_dps_registrations_total{result="assigned"}`:               1,
		`berth_dps_registrations_total{result="refused"}`:                1,
		`berth_auth_failures_total{reason="wrong key"}`:                  1,
		`berth_telemetry_messages_total{hub="hub.berth.test"}`:           1,
		`berth_telemetry_bytes_total{hub="hub.berth.test"}`:              10,
		`berth_telemetry_append_seconds_count`:                           1,
		`berth_hub_operations_total{operation="twin.patch",result="ok"}`: 1,
		`berth_hub_operation_seconds_count{operation="twin.patch"}`:      1,
		`berth_c2d_messages_total{outcome="sent"}`:                       1,
		`berth_c2d_queued_messages`:                                      0,
		`berth_connections_total{kind="tcp",protocol="mqtt"}`:            3,
		`berth_connections_total{kind="tcp",protocol="https"}`:           1,
		`berth_connections_open{protocol="mqtt"}`:                        1,
		`berth_connections_total{kind="dps",protocol="mqtt"}`:            2,
		`berth_connections_total{kind="hub",protocol="mqtt"}`:            1,
		`berth_store_errors_total{operation="get"}`:                      -1, // no failure, no series
		`berth_stream_errors_total`:                                      0,
	} {
		got := metric(text, sample)
		if (min < 0 && got != -1) || (min >= 0 && got < min) {
			t.Errorf("%s = %v, want at least %v", sample, got, min)
		}
	}
	if metric(text, `berth_telemetry_messages_total{hub="hub.berth.test"}`) != 1 {
		t.Errorf("one message counted %v times", metric(text, `berth_telemetry_messages_total{hub="hub.berth.test"}`))
	}
	// The refusal is logged once, as JSON, with its reason.
	var refusals int
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["reason"] == "wrong key" {
			refusals++
		}
	}
	if refusals != 1 {
		t.Errorf("%d JSON log lines with reason \"wrong key\", want 1:\n%s", refusals, logs.String())
	}
}

// A console session with live telemetry open does not hold up shutdown.
func TestShutdownEndsLiveTelemetry(t *testing.T) {
	b := startWith(t, t.TempDir(), server.Config{AdminAddr: "127.0.0.1:0"})
	u := b.consoleSignIn(b.info.HubConnectionString)
	b.createHubDevice("streamed")
	resp, err := u.c.Get(u.base + "/devices/streamed/events")
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %v %v", resp, err)
	}
	defer resp.Body.Close()
	start := time.Now()
	b.stop()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a telemetry stream open", d)
	}
}
