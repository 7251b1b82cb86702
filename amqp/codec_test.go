package amqp

import (
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every primitive type round-trips with its AMQP type kept.
func TestCodecRoundTrip(t *testing.T) {
	ts := time.UnixMilli(1764938022748).UTC()
	values := []any{
		nil, true, false, uint8(7), uint16(700), uint32(0), uint32(200), uint32(70000),
		uint64(0), uint64(9), uint64(1 << 40), int8(-3), int16(-300), int32(-5), int32(1 << 20),
		int64(-2), int64(-1 << 40), float32(1.5), float64(-2.25), Decimal32{1, 2, 3, 4},
		Decimal64{1, 2, 3, 4, 5, 6, 7, 8}, Decimal128{15: 1}, Char('é'), ts,
		UUID{0x7f, 0xb7, 15: 0xce}, []byte{0, 1, 2}, []byte(strings.Repeat("b", 300)), "", "héllo",
		strings.Repeat("s", 300), Symbol("sym"), List{}, List{uint32(1), "two", List{Symbol("x")}},
		Map{{Symbol("a"), int32(1)}, {"b", nil}, {uint64(3), Map{}}},
		[]Symbol{"a", "bb"}, []string{"0", "1"},
		Array{Code: codeInt, Values: []any{int32(1), int32(-1)}},
		Array{Code: codeUlong, Values: []any{uint64(5)}},
		Described{Descriptor: DescriptorSelectorFilter, Value: "x > '1'"},
		Described{Descriptor: Symbol("com.example:v"), Value: List{true}},
	}
	for _, v := range values {
		b, err := Marshal(v)
		if err != nil {
			t.Fatalf("marshal %#v: %v", v, err)
		}
		got, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("unmarshal %#v (% x): %v", v, b, err)
		}
		if !reflect.DeepEqual(got, v) {
			t.Fatalf("round trip %#v gave %#v", v, got)
		}
	}
}

// Every width variant decodes to the same Go type.
func TestDecodeWidthVariants(t *testing.T) {
	cases := []struct {
		hex  string
		want any
	}{
		{"43", uint32(0)}, {"52 05", uint32(5)}, {"70 00000005", uint32(5)},
		{"44", uint64(0)}, {"53 05", uint64(5)}, {"80 0000000000000005", uint64(5)},
		{"54 fb", int32(-5)}, {"71 fffffffb", int32(-5)}, {"55 fb", int64(-5)},
		{"81 fffffffffffffffb", int64(-5)}, {"56 01", true}, {"41", true}, {"42", false},
		{"a1 02 6869", "hi"}, {"b1 00000002 6869", "hi"}, {"a3 01 78", Symbol("x")},
		{"b3 00000001 78", Symbol("x")}, {"a0 01 ff", []byte{0xff}}, {"b0 00000001 ff", []byte{0xff}},
		{"45", List{}}, {"c0 01 00", List{}}, {"d0 00000004 00000000", List{}},
		{"c1 01 00", Map{}}, {"d1 00000004 00000000", Map{}},
		{"e0 06 02 a3 01 61 01 62", []Symbol{"a", "b"}},
	}
	for _, c := range cases {
		got, err := Unmarshal(unhex(t, c.hex))
		if err != nil {
			t.Fatalf("%s: %v", c.hex, err)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Fatalf("%s: %#v, want %#v", c.hex, got, c.want)
		}
	}
}

// Malformed input is a decode error, never a panic or a large allocation.
func TestDecodeRejectsMalformed(t *testing.T) {
	cases := map[string]string{
		"truncated uint":           "70 0000",
		"unknown constructor":      "ff",
		"string beyond input":      "a1 05 6869",
		"str32 huge length":        "b1 ffffffff 00",
		"list count lie":           "d0 00000008 7fffffff 40404040",
		"list32 size beyond input": "d0 7fffffff 00000001 40",
		"map odd count":            "c1 02 01 40",
		"array huge count":         "f0 00000005 7fffffff 40",
		"bad bool":                 "56 02",
		"bytes left in list":       "c0 03 01 40 40",
		"descriptor of bad type":   "00 a1 01 78 40",
		"empty input":              "",
		"trailing bytes":           "40 40",
	}
	for name, h := range cases {
		if _, err := Unmarshal(unhex(t, h)); !errors.Is(err, ErrDecode) {
			t.Errorf("%s: err = %v, want a decode error", name, err)
		}
	}
	// Nesting deeper than the limit.
	deep := strings.Repeat("00 53 01 ", maxDepth+1) + "40"
	if _, err := Unmarshal(unhex(t, deep)); !errors.Is(err, ErrDecode) {
		t.Errorf("deep nesting: %v", err)
	}
}

// Test vectors of docs/spec/amqp-protocol.md#test-vectors (numbered as there): encodings produced
// by another AMQP implementation (rhea), with the values they must decode to.
func TestVectorV1CBSReply(t *testing.T) {
	b := unhex(t, "00537045"+
		"005373d0 0000000c 00000006 4040404040 a10161"+
		"005374d1 0000002e 00000004 a10b 7374617475732d636f6465 71 000000c8 a112 7374617475732d6465736372697074696f6e a102 4f4b")
	m, err := UnmarshalMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header == nil || m.Header.Priority != 4 || m.Properties.CorrelationID != "a" {
		t.Fatalf("header %+v properties %+v", m.Header, m.Properties)
	}
	if v, _ := m.ApplicationProperty("status-code"); v != int32(200) {
		t.Fatalf("status-code %#v", v)
	}
	if v, _ := m.ApplicationProperty("status-description"); v != "OK" {
		t.Fatalf("status-description %#v", v)
	}
	if m.Data != nil || m.HasValue {
		t.Fatal("a body appeared")
	}
	// berth's encoding of the same message decodes to the same sections.
	again, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := UnmarshalMessage(again)
	if err != nil || !reflect.DeepEqual(m, m2) {
		t.Fatalf("re-encoded: %v %+v", err, m2)
	}
}

func TestVectorV2TwinAnnotations(t *testing.T) {
	m, err := UnmarshalMessage(unhex(t, "005372d1 0000001c 00000004 a306 737461747573 71 000000cc a307 76657273696f6e 55 02"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Annotation("status"); v != int32(204) {
		t.Fatalf("status %#v", v)
	}
	if v, _ := m.Annotation("version"); v != int64(2) {
		t.Fatalf("version %#v", v)
	}
	// berth writes the same types: int for status, long for version, symbol keys.
	out, _ := (&Message{Annotations: Map{{Symbol("status"), int32(204)}, {Symbol("version"), int64(2)}}}).Marshal()
	want := unhex(t, "005372 c1 19 04 a306 737461747573 71 000000cc a307 76657273696f6e 55 02")
	if hex.EncodeToString(out) != hex.EncodeToString(want) {
		t.Fatalf("encoding\n got %x\nwant %x", out, want)
	}
}

func TestVectorV3MethodRequest(t *testing.T) {
	m, err := UnmarshalMessage(unhex(t, "005373d0 0000001a 00000006 4040404040 98 7fb78b46ab514d55ad789e1fd3fa36ce"+
		"005374d1 0000001a 00000002 a111 496f546875622d6d6574686f646e616d65 a101 6d"+
		"005375a0 04 6e756c6c"))
	if err != nil {
		t.Fatal(err)
	}
	u, ok := m.Properties.CorrelationID.(UUID)
	if !ok || u.String() != "7fb78b46-ab51-4d55-ad78-9e1fd3fa36ce" {
		t.Fatalf("correlation-id %#v", m.Properties.CorrelationID)
	}
	if v, _ := m.ApplicationProperty("IoThub-methodname"); v != "m" {
		t.Fatalf("method name %#v", v)
	}
	if len(m.Data) != 1 || string(m.Data[0]) != "null" {
		t.Fatalf("data %q", m.Data)
	}
}

func TestVectorV4SelectorFilter(t *testing.T) {
	b := unhex(t, "00 80 0000468c00000004 a1 2c 616d71702e616e6e6f746174696f6e2e782d6f70742d73657175656e63652d6e756d626572203e3d20273027")
	v, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Described{Descriptor: DescriptorSelectorFilter, Value: "amqp.annotation.x-opt-sequence-number >= '0'"}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("%#v", v)
	}
	// The symbolic descriptor names the same filter.
	if c, ok := descriptorCode(Symbol("apache.org:selector-filter:string")); !ok || c != DescriptorSelectorFilter {
		t.Fatal("symbolic selector descriptor unknown")
	}
}

func TestVectorV5StringArray(t *testing.T) {
	v, err := Unmarshal(unhex(t, "f0 00000009 00000002 a1 01 30 01 31"))
	if err != nil || !reflect.DeepEqual(v, []string{"0", "1"}) {
		t.Fatalf("%#v %v", v, err)
	}
	// A []string encodes as an array of str, never a list (a list breaks azeventhubs).
	b, _ := Marshal([]string{"0", "1"})
	if b[0] != codeArray8 || b[3] != codeStr32 {
		t.Fatalf("encoded as % x", b)
	}
}

func TestVectorV6PlainInitialResponse(t *testing.T) {
	resp := append([]byte{0}, []byte("0ne0000AMQ1/registrations/capdev1\x00SharedAccessSignature sr=x")...)
	init := &SASLInit{Mechanism: MechPLAIN, InitialResponse: resp, Hostname: "dps.amqp.test"}
	b, err := appendFrame(nil, frameSASL, 0, init, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := decodeFrameBody(b[8:])
	if err != nil || !reflect.DeepEqual(p, init) {
		t.Fatalf("%#v %v", p, err)
	}
}

func TestVectorV9CBSPutToken(t *testing.T) {
	m := &Message{
		Properties: &Properties{MessageID: "4ead6b06-26a8-4055-abdf-44d5de2b9769", To: "$cbs", ReplyTo: "cbs"},
		ApplicationProperties: Map{{"operation", "put-token"}, {"type", "servicebus.windows.net:sastoken"},
			{"name", "hub.amqp.test%2Fdevices%2Fcapdev1"}},
		Value: "SharedAccessSignature sr=hub.amqp.test%2Fdevices%2Fcapdev1&sig=x&se=1", HasValue: true,
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalMessage(b)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("%+v %v", got, err)
	}
	// A string message-id stays a string (a reply's correlation-id must have the same type).
	if _, ok := got.Properties.MessageID.(string); !ok {
		t.Fatal("message-id changed type")
	}
}

func TestVectorV10RedirectDetach(t *testing.T) {
	d := &Detach{Handle: 0, Closed: true, Error: &Error{Condition: ErrCondLinkRedirect, Description: "redirected",
		Info: Map{{Symbol("hostname"), "ehns.amqp.test"}, {Symbol("network-host"), "ehns.amqp.test"},
			{Symbol("port"), int32(5671)}, {Symbol("address"), "amqps://ehns.amqp.test:5671/hub/$management"}}}}
	b, err := appendFrame(nil, frameAMQP, 0, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := decodeFrameBody(b[8:])
	if err != nil || !reflect.DeepEqual(p, d) {
		t.Fatalf("%#v %v", p, err)
	}
}

// Every performative round-trips through a frame.
func TestPerformativesRoundTrip(t *testing.T) {
	one, two := uint32(1), uint32(2)
	ch := uint16(3)
	perfs := []marshaler{
		&Open{ContainerID: "c", Hostname: "h", MaxFrameSize: 65536, ChannelMax: 255, IdleTimeout: 30000,
			Properties: Map{{Symbol("product"), "x"}}, DesiredCapabilities: []Symbol{"a"}},
		&Begin{RemoteChannel: &ch, NextOutgoingID: 1, IncomingWindow: 2048, OutgoingWindow: 5, HandleMax: 9},
		&Attach{Name: "l", Handle: 1, Role: RoleReceiver, SndSettleMode: SndSettled, RcvSettleMode: RcvFirst,
			Source: &Source{Address: "hub/ConsumerGroups/$Default/Partitions/0",
				Filter: Map{{Symbol("apache.org:selector-filter:string"), Described{DescriptorSelectorFilter, "x"}}}},
			Target: &Target{Address: "t"}, InitialDeliveryCount: &two, MaxMessageSize: 1 << 20,
			Properties: Map{{Symbol("com.microsoft:epoch"), int64(7)}}},
		&Flow{NextIncomingID: &one, IncomingWindow: 10, NextOutgoingID: 4, OutgoingWindow: 5, Handle: &two,
			DeliveryCount: &one, LinkCredit: &two, Drain: true, Echo: true},
		&Transfer{Handle: 1, DeliveryID: &one, DeliveryTag: []byte{1}, MessageFormat: &two, Settled: true, More: true},
		&Disposition{Role: RoleReceiver, First: 1, Last: &two, Settled: true, State: Rejected{Error: &Error{Condition: "c"}}},
		&Disposition{Role: RoleSender, First: 1, State: Modified{DeliveryFailed: true, MessageAnnotations: Map{{Symbol("a"), "b"}}}},
		&Disposition{Role: RoleSender, First: 1, State: Received{SectionNumber: 1, SectionOffset: 2}},
		&Detach{Handle: 1, Closed: true, Error: &Error{Condition: ErrCondStolen, Description: "d"}},
		&End{Error: &Error{Condition: ErrCondWindowViolation}}, &End{}, &Close{}, &Close{Error: &Error{Condition: "x"}},
		&SASLMechanisms{Mechanisms: []Symbol{MechMSSBCBS, MechPLAIN}},
		&SASLChallenge{Challenge: []byte{1}}, &SASLResponse{Response: []byte{2}},
		&SASLOutcome{Code: SASLAuth},
	}
	for _, p := range perfs {
		b, err := appendFrame(nil, frameAMQP, 0, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeFrameBody(b[8:])
		if err != nil {
			t.Fatalf("%T: %v", p, err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Fatalf("%T:\n got %#v\nwant %#v", p, got, p)
		}
	}
	// sasl-server-mechanisms is an array of symbols even for one mechanism.
	b, _ := appendFrame(nil, frameSASL, 0, &SASLMechanisms{Mechanisms: []Symbol{MechANONYMOUS}}, nil)
	if b[8+3] != codeList8 || b[8+6] != codeArray8 {
		t.Fatalf("sasl-mechanisms % x", b)
	}
}

func TestPerformativeFieldTypesChecked(t *testing.T) {
	// attach with a string handle.
	bad, _ := Marshal(Described{Descriptor: uint64(descAttach), Value: List{"n", "1", false}})
	if _, err := decodeFrameBody(bad); !errors.Is(err, ErrDecode) {
		t.Fatalf("wrong field type: %v", err)
	}
	// attach without a name.
	missing, _ := Marshal(Described{Descriptor: uint64(descAttach), Value: List{nil, uint32(1), false}})
	var ae *Error
	if _, err := decodeFrameBody(missing); !errors.As(err, &ae) || ae.Condition != ErrCondInvalidField {
		t.Fatalf("missing field: %v", err)
	}
}

func TestMessageSectionOrder(t *testing.T) {
	valueThenProps := unhex(t, "005377 40"+"005373 45")
	if _, err := UnmarshalMessage(valueThenProps); !errors.Is(err, ErrDecode) {
		t.Fatalf("out of order: %v", err)
	}
	mixed := unhex(t, "005375 a000"+"005377 40")
	if _, err := UnmarshalMessage(mixed); !errors.Is(err, ErrDecode) {
		t.Fatalf("mixed body: %v", err)
	}
	twoData := unhex(t, "005375 a00161"+"005375 a00162")
	m, err := UnmarshalMessage(twoData)
	if err != nil || len(m.Data) != 2 {
		t.Fatalf("two data sections: %v", err)
	}
	symbolKeys := unhex(t, "005374 c1 05 02 a301 61 40")
	if _, err := UnmarshalMessage(symbolKeys); !errors.Is(err, ErrDecode) {
		t.Fatalf("symbol key in application-properties: %v", err)
	}
}
