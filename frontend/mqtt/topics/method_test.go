package topics

import (
	"testing"
)

func TestParseMethodResponseTopic(t *testing.T) {
	tests := []struct {
		topic  string
		status int
		rid    string
		ok     bool
	}{
		{"$iothub/methods/res/200/?$rid=2", 200, "2", true},         // T-11
		{"$iothub/methods/res/65535/?$rid=2", 65535, "2", true},     // T-11
		{"$iothub/methods/res/200/?$rid=1&random=", 200, "1", true}, // T-26
		{"$iothub/methods/res/200/?$rid=1&$random", 200, "1", true}, // IoT Edge
		{"$iothub/methods/res/200/?random=&$rid=1", 200, "1", true}, // any order
		{"$iothub/methods/res/500?$rid=a", 500, "a", true},          // no '/'
		{"$iothub/methods/res/-3/?$rid=a", -3, "a", true},           // any integer
		{"$iothub/methods/res/200/", 200, "", true},                 // no rid: matches nothing
		{"$iothub/methods/res/+1/?$rid=a", 0, "", false},            // sign only as '-'
		{"$iothub/methods/res/2147483648/?$rid=a", 0, "", false},    // over 32 bits
		{"$iothub/methods/res/ok/?$rid=a", 0, "", false},            //
		{"$iothub/methods/res/200/x/?$rid=a", 0, "", false},         //
		{"$iothub/methods/res//?$rid=a", 0, "", false},              //
		{"$iothub/methods/POST/foo/?$rid=one", 0, "", false},        // T-9
		{"devices/d/messages/devicebound/?$rid=one", 0, "", false},  //
		{"$iothub/methods/res/200/?$rid=a/b", 200, "a/b", true},     // rid as sent
		{"$iothub/methods/res/0200/?$rid=a", 200, "a", true},        //
		{"$iothub/methods/res/ 200/?$rid=a", 0, "", false},          //
		{"$iothub/methods/res/200/?$rid=x&$rid=y", 200, "x", true},  // first wins
		{"$iothub/methods/res/200/?$rid=%31", 200, "%31", true},     // not decoded
		{"$iothub/methods/res/200/?$rid", 200, "", true},            //
		{"$iothub/methods/res/200/?a=b", 200, "", true},             //
		{"$iothub/methods/res/200?", 200, "", true},                 //
		{"$iothub/methods/res/", 0, "", false},                      //
		{"$iothub/methods/res", 0, "", false},                       //
		{"$iothub/methods/res/200/?$rid=1?x", 200, "1?x", true},     //
		{"$iothub/methods/res/-/?$rid=1", 0, "", false},             //
		{"$iothub/methods/res/1e3/?$rid=1", 0, "", false},           //
		{"$iothub/methods/res/0x10/?$rid=1", 0, "", false},          //
		{"$iothub/methods/res/-2147483648/?$rid=1", -2147483648, "1", true},
	}
	for _, tt := range tests {
		status, rid, ok := ParseMethodResponse(tt.topic)
		if status != tt.status || rid != tt.rid || ok != tt.ok {
			t.Errorf("ParseMethodResponse(%q) = %d, %q, %v; want %d, %q, %v", tt.topic, status, rid, ok, tt.status, tt.rid, tt.ok)
		}
	}
	// T-26: the request topic for rid 123, method test.
	if got := MethodRequest("test", "123"); got != "$iothub/methods/POST/test/?$rid=123" {
		t.Errorf("MethodRequest = %q", got)
	}
}
