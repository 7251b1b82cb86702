package devicesim

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseMethod(t *testing.T) {
	for _, tt := range []struct {
		spec, name string
		want       Method
	}{
		{"reboot=echo", "reboot", Method{Echo: true}},
		{"*=echo", "*", Method{Echo: true}},
		{`getInfo={"fw":"1.0","a":"x=y"}`, "getInfo", Method{Payload: json.RawMessage(`{"fw":"1.0","a":"x=y"}`)}},
		{`fail=500:{"error":"busy"}`, "fail", Method{Status: 500, Payload: json.RawMessage(`{"error":"busy"}`)}},
		{`slow@1.5s=echo`, "slow", Method{Echo: true, Delay: 1500 * time.Millisecond}},
		{`n=42`, "n", Method{Payload: json.RawMessage(`42`)}},
		{`s="12:00"`, "s", Method{Payload: json.RawMessage(`"12:00"`)}},
	} {
		name, m, err := ParseMethod(tt.spec)
		if err != nil || name != tt.name || m.Echo != tt.want.Echo || m.Status != tt.want.Status ||
			m.Delay != tt.want.Delay || !bytes.Equal(m.Payload, tt.want.Payload) {
			t.Errorf("ParseMethod(%q) = %q, %+v, %v; want %q, %+v", tt.spec, name, m, err, tt.name, tt.want)
		}
	}
	for _, bad := range []string{"", "reboot", "=echo", "x=not json", "x@soon=echo", "x@-1s=echo", "x=500:"} {
		if _, _, err := ParseMethod(bad); err == nil {
			t.Errorf("ParseMethod(%q) succeeded", bad)
		}
	}
}

func TestTemplate(t *testing.T) {
	tmpl, err := ParseTemplate("")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, Data{DeviceID: "d1", Count: 7, Time: "2026-01-01T00:00:00Z"}); err != nil {
		t.Fatal(err)
	}
	var v struct {
		DeviceID    string  `json:"deviceId"`
		Count       int     `json:"count"`
		Temperature float64 `json:"temperature"`
	}
	if err := json.Unmarshal(b.Bytes(), &v); err != nil || v.DeviceID != "d1" || v.Count != 7 || v.Temperature < 20 || v.Temperature >= 30 {
		t.Errorf("default template gave %s (%v)", b.String(), err)
	}
	for _, bad := range []string{"{{.Nope}}", "{{", "{{rand}}"} {
		tmpl, err := ParseTemplate(bad)
		if err == nil {
			err = tmpl.Execute(&bytes.Buffer{}, Data{})
		}
		if err == nil {
			t.Errorf("template %q accepted", bad)
		}
	}
	if _, err := ParseTemplate("{{randInt 1 6}}"); err != nil || strings.Contains(DefaultTemplate, "\n") {
		t.Errorf("randInt: %v", err)
	}
}
