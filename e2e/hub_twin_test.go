package e2e

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
)

// serviceTwin is the part of a Twin document (GET/PATCH /twins/{id}) the
// tests look at, with the sections kept as sent.
type serviceTwin struct {
	DeviceID   string          `json:"deviceId"`
	ETag       string          `json:"etag"`
	Version    int64           `json:"version"`
	Tags       json.RawMessage `json:"tags"`
	Properties struct {
		Desired  json.RawMessage `json:"desired"`
		Reported json.RawMessage `json:"reported"`
	} `json:"properties"`
}

// section splits a desired or reported section into its properties, its
// "$version" and whether it carries "$metadata" (the service view must).
func section(t *testing.T, raw json.RawMessage) (props map[string]any, version int64, hasMeta bool) {
	t.Helper()
	if err := json.Unmarshal(raw, &props); err != nil {
		t.Fatalf("twin section %s: %v", raw, err)
	}
	v, ok := props["$version"].(float64)
	if !ok {
		t.Fatalf("twin section without a numeric $version: %s", raw)
	}
	_, hasMeta = props["$metadata"]
	delete(props, "$version")
	delete(props, "$metadata")
	return props, int64(v), hasMeta
}

// jsonEqual reports whether two JSON texts hold the same value (member
// order aside).
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("not JSON: %v: %q", err, a)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("not JSON: %v: %q", err, b)
	}
	return reflect.DeepEqual(va, vb)
}

func checkJSON(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	if !jsonEqual(t, got, []byte(want)) {
		t.Fatalf("%s:\n got %s\nwant %s", what, got, want)
	}
}

func (b *berth) getTwin(id string) *serviceTwin {
	b.t.Helper()
	var tw serviceTwin
	resp, data := b.hubDo("GET", "/twins/"+id+"?api-version=2021-04-12", nil, nil, &tw)
	if resp.StatusCode != 200 || tw.DeviceID != id || tw.ETag == "" {
		b.t.Fatalf("GET twin %s: %d %s", id, resp.StatusCode, data)
	}
	return &tw
}

// patchTwin sends PATCH /twins/{id} with If-Match quoted, as the Node
// service SDK sends it.
func (b *berth) patchTwin(id, etag, body string) (*serviceTwin, int, []byte, map[string][]string) {
	b.t.Helper()
	var tw serviceTwin
	resp, data := b.hubDo("PATCH", "/twins/"+id+"?api-version=2021-04-12", body, map[string]string{"If-Match": `"` + etag + `"`}, &tw)
	return &tw, resp.StatusCode, data, resp.Header
}

// nested is a patch with n objects nested below the section, the innermost
// holding one boolean: IoT Hub allows 10.
func nested(n int) string {
	var sb strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&sb, `{"p%d":`, i)
	}
	sb.WriteString(`{"leaf":true}`)
	sb.WriteString(strings.Repeat("}", n))
	return sb.String()
}

// A device provisioned through DPS from a group whose initialTwin has tags
// and desired properties finds them in its twin, over the service API and
// over MQTT; it reports over MQTT; the service's desired patches (with
// If-Match) reach it; and the whole twin survives a restart.
func TestTwinFromEnrollmentOverMQTTAndREST(t *testing.T) {
	dir := t.TempDir()
	b := start(t, dir)
	var g dps.EnrollmentGroup
	resp, data := b.do("PUT", "/enrollmentGroups/twin-fleet?api-version=2021-10-01", b.serviceToken(), `{
		"enrollmentGroupId": "twin-fleet",
		"attestation": {"type": "symmetricKey"},
		"initialTwin": {
			"tags": {"site": "plant-7", "location": {"building": "B", "floor": 3}},
			"properties": {"desired": {"interval": 30, "mode": {"fan": "auto", "led": true}}}
		}
	}`, nil, &g)
	if resp.StatusCode != 200 || g.Attestation == nil || g.Attestation.SymmetricKey == nil {
		t.Fatalf("create group: %d %s", resp.StatusCode, data)
	}
	key, err := sas.DeriveKey(g.Attestation.SymmetricKey.PrimaryKey, "twin-dev")
	if err != nil {
		t.Fatal(err)
	}
	op := b.provisionMQTT("twin-dev", key)
	checkAssigned(t, op, "twin-dev", b.info.HubHostName)
	id := op.RegistrationState.DeviceID

	// The service sees the enrollment's initial twin, with $metadata.
	tw := b.getTwin(id)
	checkJSON(t, "initial tags", tw.Tags, `{"site":"plant-7","location":{"building":"B","floor":3}}`)
	desired, dv, meta := section(t, tw.Properties.Desired)
	if !reflect.DeepEqual(desired, map[string]any{"interval": 30.0, "mode": map[string]any{"fan": "auto", "led": true}}) || dv < 1 || !meta {
		t.Fatalf("initial desired: %s", tw.Properties.Desired)
	}
	reported, rv, meta := section(t, tw.Properties.Reported)
	if len(reported) != 0 || rv < 1 || !meta {
		t.Fatalf("initial reported: %s", tw.Properties.Reported)
	}

	// The device GETs the same properties, without tags or $metadata. The
	// Node SDK sends a single space as the GET body.
	d := b.hubConnect(id, key, false)
	d.subscribe("$iothub/twin/res/#", 0)
	d.subscribe("$iothub/twin/PATCH/properties/desired/#", 0)
	m := d.twinRequest("$iothub/twin/GET/?$rid=get-1", " ")
	if m.Topic() != "$iothub/twin/res/200/?$rid=get-1" {
		t.Fatalf("twin GET response topic %q: %s", m.Topic(), m.Payload())
	}
	checkJSON(t, "device twin GET", m.Payload(), fmt.Sprintf(
		`{"desired":{"interval":30,"mode":{"fan":"auto","led":true},"$version":%d},"reported":{"$version":%d}}`, dv, rv))

	// Reported properties: merged, null deletes, each patch a new version
	// given back in the 204's topic.
	m = d.twinRequest("$iothub/twin/PATCH/properties/reported/?$rid=1", `{"firmware":"1.4.2","battery":{"level":87,"charging":false}}`)
	if want := fmt.Sprintf("$iothub/twin/res/204/?$rid=1&$version=%d", rv+1); m.Topic() != want || len(m.Payload()) != 0 {
		t.Fatalf("reported PATCH: got %q %q, want %q and no body", m.Topic(), m.Payload(), want)
	}
	m = d.twinRequest("$iothub/twin/PATCH/properties/reported/?$rid=2", `{"battery":{"charging":null},"uptime":12}`)
	if want := fmt.Sprintf("$iothub/twin/res/204/?$rid=2&$version=%d", rv+2); m.Topic() != want {
		t.Fatalf("second reported PATCH: got %q, want %q", m.Topic(), want)
	}
	tw = b.getTwin(id)
	reported, v, _ := section(t, tw.Properties.Reported)
	if !reflect.DeepEqual(reported, map[string]any{"firmware": "1.4.2", "battery": map[string]any{"level": 87.0}, "uptime": 12.0}) || v != rv+2 {
		t.Fatalf("reported after the device's patches: %s", tw.Properties.Reported)
	}

	// A desired patch with the current etag reaches the device with the new
	// $version, as a patch (null included).
	etag1 := tw.ETag
	tw2, st, data, _ := b.patchTwin(id, etag1, `{"properties":{"desired":{"interval":10,"mode":{"led":null}}}}`)
	if st != 200 {
		t.Fatalf("PATCH desired: %d %s", st, data)
	}
	desired, v, _ = section(t, tw2.Properties.Desired)
	if !reflect.DeepEqual(desired, map[string]any{"interval": 10.0, "mode": map[string]any{"fan": "auto"}}) || v != dv+1 || tw2.ETag == etag1 {
		t.Fatalf("PATCH desired answered %s (etag %q, before %q)", data, tw2.ETag, etag1)
	}
	m = d.next(d.desired, "the desired notification")
	if want := fmt.Sprintf("$iothub/twin/PATCH/properties/desired/?$version=%d", dv+1); m.Topic() != want {
		t.Fatalf("desired notification topic %q, want %q", m.Topic(), want)
	}
	checkJSON(t, "desired notification", m.Payload(), fmt.Sprintf(`{"interval":10,"mode":{"led":null},"$version":%d}`, dv+1))

	// A stale etag is refused and changes nothing; a tags-only patch
	// changes no desired property. Neither notifies the device: the next
	// notification it gets is the next desired change's.
	_, st, data, hdr := b.patchTwin(id, etag1, `{"properties":{"desired":{"interval":99}}}`)
	checkHubError(t, "PATCH with a stale etag", st, hdr, data, 412, "PreconditionFailed")
	if _, st, data, _ = b.patchTwin(id, "*", `{"tags":{"owner":"ops"}}`); st != 200 {
		t.Fatalf("PATCH tags with If-Match *: %d %s", st, data)
	}
	tw3, st, data, _ := b.patchTwin(id, "*", `{"properties":{"desired":{"threshold":5}}}`)
	if st != 200 {
		t.Fatalf("PATCH desired with If-Match *: %d %s", st, data)
	}
	m = d.next(d.desired, "the second desired notification")
	if want := fmt.Sprintf("$iothub/twin/PATCH/properties/desired/?$version=%d", dv+2); m.Topic() != want {
		t.Fatalf("desired notification topic %q, want %q (a refused or tags-only patch notified?)", m.Topic(), want)
	}
	checkJSON(t, "second desired notification", m.Payload(), fmt.Sprintf(`{"threshold":5,"$version":%d}`, dv+2))
	checkJSON(t, "tags after the patches", tw3.Tags, `{"site":"plant-7","location":{"building":"B","floor":3},"owner":"ops"}`)
	desired, _, _ = section(t, tw3.Properties.Desired)
	if !reflect.DeepEqual(desired, map[string]any{"interval": 10.0, "mode": map[string]any{"fan": "auto"}, "threshold": 5.0}) {
		t.Fatalf("desired after the patches (the stale one applied?): %s", tw3.Properties.Desired)
	}
	before := d.twinRequest("$iothub/twin/GET/?$rid=get-2", "")
	if before.Topic() != "$iothub/twin/res/200/?$rid=get-2" {
		t.Fatalf("twin GET response topic %q", before.Topic())
	}
	checkJSON(t, "device twin GET after the patches", before.Payload(), fmt.Sprintf(
		`{"desired":{"interval":10,"mode":{"fan":"auto"},"threshold":5,"$version":%d},`+
			`"reported":{"firmware":"1.4.2","battery":{"level":87},"uptime":12,"$version":%d}}`, dv+2, rv+2))

	// A restart keeps the twin: properties, metadata, versions and etag.
	saved := b.getTwin(id)
	b.stop()
	b = start(t, dir)
	after := b.getTwin(id)
	if after.ETag != saved.ETag || after.Version != saved.Version || !jsonEqual(t, after.Tags, saved.Tags) ||
		!jsonEqual(t, after.Properties.Desired, saved.Properties.Desired) || !jsonEqual(t, after.Properties.Reported, saved.Properties.Reported) {
		t.Fatalf("twin changed across the restart:\nbefore %+v\n after %+v", saved, after)
	}
	d = b.hubConnect(id, key, false)
	d.subscribe("$iothub/twin/res/#", 0)
	m = d.twinRequest("$iothub/twin/GET/?$rid=get-3", " ")
	if m.Topic() != "$iothub/twin/res/200/?$rid=get-3" || !jsonEqual(t, m.Payload(), before.Payload()) {
		t.Fatalf("device twin GET after the restart: %q %s, before %s", m.Topic(), m.Payload(), before.Payload())
	}
}

// Twin documents IoT Hub would refuse (objects nested deeper than 10,
// arrays) are refused over MQTT with status 400 in the response topic and
// an errorCode body, and over REST with 400 ArgumentInvalid; neither
// changes the twin. Ten levels are accepted.
func TestTwinRefusesTooDeepAndArrayPatches(t *testing.T) {
	b := start(t, t.TempDir())
	key := b.createHubDevice("deep-dev")
	tw := b.getTwin("deep-dev")
	_, dv, _ := section(t, tw.Properties.Desired)
	_, rv, _ := section(t, tw.Properties.Reported)

	d := b.hubConnect("deep-dev", key, false)
	d.subscribe("$iothub/twin/res/#", 0)
	m := d.twinRequest("$iothub/twin/PATCH/properties/reported/?$rid=ten", nested(10))
	if want := fmt.Sprintf("$iothub/twin/res/204/?$rid=ten&$version=%d", rv+1); m.Topic() != want {
		t.Fatalf("10 nested objects: got %q %s, want %q", m.Topic(), m.Payload(), want)
	}
	for _, c := range []struct{ rid, body string }{
		{"eleven", nested(11)},
		{"array", `{"list":[1,2,3]}`},
		{"inner-array", `{"a":{"b":["x"]}}`},
	} {
		m := d.twinRequest("$iothub/twin/PATCH/properties/reported/?$rid="+c.rid, c.body)
		var e struct {
			ErrorCode int    `json:"errorCode"`
			Message   string `json:"message"`
		}
		if err := json.Unmarshal(m.Payload(), &e); err != nil || m.Topic() != "$iothub/twin/res/400/?$rid="+c.rid || e.ErrorCode != 400004 || e.Message == "" {
			t.Fatalf("reported patch %s: got %q %s, want status 400 with errorCode 400004 and a message", c.rid, m.Topic(), m.Payload())
		}
	}
	m = d.twinRequest("$iothub/twin/GET/?$rid=get", " ")
	checkJSON(t, "twin after the refused patches", m.Payload(), fmt.Sprintf(`{"desired":{"$version":%d},"reported":{%s,"$version":%d}}`,
		dv, strings.TrimSuffix(strings.TrimPrefix(nested(10), "{"), "}"), rv+1))

	for _, c := range []struct{ method, what, body string }{
		{"PATCH", "desired nested 11 deep", `{"properties":{"desired":` + nested(11) + `}}`},
		{"PATCH", "desired with an array", `{"properties":{"desired":{"list":[1]}}}`},
		{"PATCH", "tags with an array", `{"tags":{"zones":["a","b"]}}`},
		{"PUT", "replace with tags nested 11 deep", `{"tags":` + nested(11) + `}`},
	} {
		resp, data := b.hubDo(c.method, "/twins/deep-dev?api-version=2021-04-12", c.body, map[string]string{"If-Match": `"*"`}, nil)
		checkHubError(t, c.what, resp.StatusCode, resp.Header, data, 400, "ArgumentInvalid")
	}
	if _, st, data, _ := b.patchTwin("deep-dev", "*", `{"properties":{"desired":`+nested(10)+`}}`); st != 200 {
		t.Fatalf("desired nested 10 deep: %d %s", st, data)
	}
	after := b.getTwin("deep-dev")
	_, v, _ := section(t, after.Properties.Desired)
	checkJSON(t, "tags after the refused patches", after.Tags, `{}`)
	if v != dv+1 {
		t.Fatalf("desired $version %d after one accepted patch from %d: %s", v, dv, after.Properties.Desired)
	}
}

// applyDesired applies a desired notification to a device's copy of its
// desired properties, as the SDKs' samples do: objects merge, null
// deletes. It returns the notification's $version.
func applyDesired(t *testing.T, doc map[string]any, body []byte) int64 {
	t.Helper()
	var patch map[string]any
	if err := json.Unmarshal(body, &patch); err != nil {
		t.Fatalf("desired notification %q: %v", body, err)
	}
	v, ok := patch["$version"].(float64)
	if !ok {
		t.Fatalf("desired notification without $version: %s", body)
	}
	delete(patch, "$version")
	var merge func(dst, p map[string]any)
	merge = func(dst, p map[string]any) {
		for k, pv := range p {
			switch pv := pv.(type) {
			case nil:
				delete(dst, k)
			case map[string]any:
				sub, ok := dst[k].(map[string]any)
				if !ok {
					sub = map[string]any{}
					dst[k] = sub
				}
				merge(sub, pv)
			default:
				dst[k] = pv
			}
		}
	}
	merge(doc, patch)
	return int64(v)
}

// deviceDesired GETs the twin over MQTT and returns the desired section
// without its $version, and that version.
func (d *hubDevice) deviceDesired(rid string) (map[string]any, int64) {
	d.t.Helper()
	m := d.twinRequest("$iothub/twin/GET/?$rid="+rid, " ")
	var doc struct {
		Desired json.RawMessage `json:"desired"`
	}
	if err := json.Unmarshal(m.Payload(), &doc); err != nil || m.Topic() != "$iothub/twin/res/200/?$rid="+rid {
		d.t.Fatalf("twin GET: %q %s", m.Topic(), m.Payload())
	}
	props, v, _ := section(d.t, doc.Desired)
	return props, v
}

// connectTwin registers a device, connects it and subscribes to twin
// responses and desired notifications, as the SDKs do when an application
// first uses the twin.
func (b *berth) connectTwin(id string) *hubDevice {
	b.t.Helper()
	d := b.hubConnect(id, b.createHubDevice(id), false)
	d.subscribe("$iothub/twin/res/#", 0)
	d.subscribe("$iothub/twin/PATCH/properties/desired/#", 0)
	return d
}

// Concurrent service patches reach the device one notification per
// version, in version order, and applying them in that order gives the
// twin's desired properties.
func TestTwinDesiredNotificationsInVersionOrder(t *testing.T) {
	b := start(t, t.TempDir())
	d := b.connectTwin("order-dev")
	local, dv := d.deviceDesired("start")

	const n = 20
	var calls []<-chan httpResult
	for i := range n {
		calls = append(calls, b.doAsync("PATCH", "/twins/order-dev?api-version=2021-04-12",
			fmt.Sprintf(`{"properties":{"desired":{"k%d":%d,"last":{"by":%d}}}}`, i, i, i)))
	}
	for i, c := range calls {
		if r := awaitHTTP(t, fmt.Sprintf("PATCH %d", i), c); r.status != 200 {
			t.Fatalf("PATCH %d: %d %s", i, r.status, r.body)
		}
	}
	for i := int64(1); i <= n; i++ {
		m := d.next(d.desired, fmt.Sprintf("desired notification %d of %d", i, n))
		if want := fmt.Sprintf("$iothub/twin/PATCH/properties/desired/?$version=%d", dv+i); m.Topic() != want {
			t.Fatalf("notification %d: topic %q, want %q", i, m.Topic(), want)
		}
		if v := applyDesired(t, local, m.Payload()); v != dv+i {
			t.Fatalf("notification %d: body $version %d, want %d", i, v, dv+i)
		}
	}
	got, v := d.deviceDesired("end")
	if v != dv+n || !reflect.DeepEqual(got, local) {
		t.Fatalf("the twin (version %d) %v differs from the notifications applied in order %v", v, got, local)
	}
}

// PUT /twins/{id} replaces the desired properties; the device's
// notification, applied as a patch to what it had, must give the new
// document (hub.Twins.Replace promises it: null for every removed
// property), nested members included.
func TestTwinReplaceNotificationYieldsTheNewDocument(t *testing.T) {
	b := start(t, t.TempDir())
	d := b.connectTwin("replace-dev")
	local, _ := d.deviceDesired("start")

	if _, st, data, _ := b.patchTwin("replace-dev", "*", `{"properties":{"desired":{"a":1,"b":{"c":2,"d":{"e":3}}}}}`); st != 200 {
		t.Fatalf("PATCH desired: %d %s", st, data)
	}
	applyDesired(t, local, d.next(d.desired, "the patch's notification").Payload())
	resp, data := b.hubDo("PUT", "/twins/replace-dev?api-version=2021-04-12", `{"tags":{},"properties":{"desired":{"b":{"x":4,"d":{"f":5}}}}}`, map[string]string{"If-Match": `"*"`}, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("PUT twin: %d %s", resp.StatusCode, data)
	}
	m := d.next(d.desired, "the replacement's notification")
	applyDesired(t, local, m.Payload())
	got, _ := d.deviceDesired("end")
	want := map[string]any{"b": map[string]any{"x": 4.0, "d": map[string]any{"f": 5.0}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("desired after PUT: %v, want %v", got, want)
	}
	if !reflect.DeepEqual(local, want) {
		t.Fatalf("the device applied the replacement's notification %s and has %v; the twin has %v", m.Payload(), local, want)
	}
}
