package topics

import (
	"regexp"
	"testing"
)

func TestParseTwinTopic(t *testing.T) {
	tests := []struct {
		topic, kind, rid string
		ok               bool
	}{
		{"$iothub/twin/GET/?$rid=id_one", TwinGet, "id_one", true},
		{"$iothub/twin/PATCH/properties/reported/?$rid=id_one", TwinPatchReported, "id_one", true},
		{"$iothub/twin/PATCH/properties/reported/?$rid=5de34&$version=1", TwinPatchReported, "5de34", true},
		{"$iothub/twin/GET/?$version=3&$rid=7", TwinGet, "7", true},
		{"$iothub/twin/GET/?$rid=", TwinGet, "", true},
		{"$iothub/twin/GET/", TwinGet, "", true},
		{"$iothub/twin/GET/?$rid=a=b", TwinGet, "a=b", true},
		{"$iothub/twin/GET?$rid=1", TwinUnknown, "1", true},
		{"$iothub/twin/rez/200?$rid=1", TwinUnknown, "1", true},
		{"$iothub/twin/PATCH/properties/desired/?$rid=1", TwinUnknown, "1", true},
		{"$iothub/twin/rez/200", "", "", false},
		{"$iothub/twin/res/200", "", "", false},
		{"$iothub/contoso/res/200?$rid=1", "", "", false},
		{"$iothub/twin", "", "", false},
		{"devices/d/messages/events/", "", "", false},
	}
	for _, tt := range tests {
		kind, rid, ok := ParseTwin(tt.topic)
		if kind != tt.kind || rid != tt.rid || ok != tt.ok {
			t.Errorf("ParseTwin(%q) = %q, %q, %v; want %q, %q, %v", tt.topic, kind, rid, ok, tt.kind, tt.rid, tt.ok)
		}
	}
}

func TestTwinResponseTopic(t *testing.T) {
	for _, tt := range []struct {
		status  int
		rid     string
		version int64
		want    string
	}{
		{204, "id_one", 16, "$iothub/twin/res/204/?$rid=id_one&$version=16"}, // T-13
		{200, "id_one", 0, "$iothub/twin/res/200/?$rid=id_one"},              // T-14
		{400, "错误", 0, "$iothub/twin/res/400/?$rid=错误"},
	} {
		if got := TwinResponse(tt.status, tt.rid, tt.version); got != tt.want {
			t.Errorf("TwinResponse(%d, %q, %d) = %q; want %q", tt.status, tt.rid, tt.version, got, tt.want)
		}
	}
}

// twinResponseRE is the strictest device parser's view of a twin answer
// (docs/spec/iothub-protocol.md#twins-over-mqtt: $rid first, then $version on
// a reported PATCH).
var twinResponseRE = regexp.MustCompile(`^\$iothub/twin/res/(\d+)/\?\$rid=([^&]*)(?:&\$version=(\d+))?$`)
