package deviceclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/berth-iot/berth/sas"
)

// The pure parts of the protocol: names, topics, tokens and bodies, exactly
// as docs/spec/dps-protocol.md gives them (MQTT, HTTPS, SAS tokens), so that
// they can be checked against its test vectors without a server.

// API versions: the MQTT username carries the one every Azure SDK but the C
// SDK sends; the HTTPS paths the one of the docs' curl examples.
const (
	MQTTAPIVersion  = "2019-03-31"
	HTTPSAPIVersion = "2021-06-01"
)

// DefaultClientVersion is the ClientVersion this client reports.
const DefaultClientVersion = "berth/0.1"

// KeyName is the skn of device tokens.
const KeyName = "registration"

// Topics of the DPS MQTT API.
const (
	ResponseFilter = "$dps/registrations/res/#"
	registerPrefix = "$dps/registrations/PUT/iotdps-register/?$rid="
	pollPrefix     = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="
	responsePrefix = "$dps/registrations/res/"
)

// Resource is the sr of a device token before encoding:
// {idScope}/registrations/{registrationId}.
func Resource(idScope, registrationID string) string {
	return idScope + "/registrations/" + registrationID
}

// Username is the MQTT username: {idScope}/registrations/{registrationId}/api-version=2019-03-31,
// followed by &ClientVersion={clientVersion} percent-encoded the way Node's
// encodeURIComponent does (berth/0.1 → berth%2F0.1) unless clientVersion is
// empty.
func Username(idScope, registrationID, clientVersion string) string {
	u := Resource(idScope, registrationID) + "/api-version=" + MQTTAPIVersion
	if clientVersion != "" {
		u += "&ClientVersion=" + encodeURIComponent(clientVersion)
	}
	return u
}

// encodeURIComponent escapes everything but A–Z a–z 0–9 - _ . ! ~ * ' ( ),
// as JavaScript's function of that name does.
func encodeURIComponent(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("-_.!~*'()", c) >= 0:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// Token is the device SAS token for password and Authorization: sr is the
// resource URL-encoded with upper-case escapes (%2F, as Python's quote_plus,
// the C# SDK and the Azure docs' snippet write it), skn=registration.
func Token(idScope, registrationID, key string, expiry time.Time) (string, error) {
	t, err := sas.SignEncoded(Resource(idScope, registrationID), key, KeyName, expiry)
	if err != nil {
		return "", fmt.Errorf("deviceclient: device token: %w", err)
	}
	return t, nil
}

// RegisterTopic is the topic of a register request.
func RegisterTopic(rid string) string { return registerPrefix + rid }

// PollTopic is the topic of an operation status request. The operation ID
// is query-escaped: Azure's are topic safe already, and escaping keeps an
// odd one from breaking the query.
func PollTopic(rid, operationID string) string {
	return pollPrefix + rid + "&operationId=" + url.QueryEscape(operationID)
}

// Response is what a response topic says.
type Response struct {
	Status int
	// RID is $rid exactly as in the topic (not decoded: servers echo it
	// byte for byte).
	RID string
	// RetryAfter is the server's retry hint; HasRetryAfter reports whether
	// there was one.
	RetryAfter    time.Duration
	HasRetryAfter bool
}

// ErrNotResponse is returned by ParseResponseTopic for topics that are not
// DPS responses.
var ErrNotResponse = errors.New("deviceclient: not a DPS response topic")

// ParseResponseTopic parses
// $dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]. The query
// keys may come in any order (the Embedded C parser accepts retry-after
// first, docs/spec/dps-protocol.md#test-vectors, vector 6); retry-after is
// matched case-insensitively, as C# does.
func ParseResponseTopic(topic string) (Response, error) {
	var r Response
	rest, ok := strings.CutPrefix(topic, responsePrefix)
	if !ok {
		return r, ErrNotResponse
	}
	status, query, ok := strings.Cut(rest, "/")
	if !ok {
		return r, fmt.Errorf("%w: %q has no query", ErrNotResponse, topic)
	}
	n, err := strconv.Atoi(status)
	if err != nil || n < 100 || n > 599 {
		return r, fmt.Errorf("deviceclient: response topic %q: status %q", topic, status)
	}
	r.Status = n
	query = strings.TrimPrefix(query, "?")
	for _, kv := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == "$rid":
			r.RID = v
		case strings.EqualFold(k, "retry-after"):
			s, err := strconv.Atoi(v)
			if err != nil || s < 0 {
				return r, fmt.Errorf("deviceclient: response topic %q: retry-after %q", topic, v)
			}
			r.RetryAfter, r.HasRetryAfter = time.Duration(s)*time.Second, true
		}
	}
	return r, nil
}

// RegisterBody is the register request body: {"registrationId":…} or
// {"registrationId":…,"payload":…} with the payload bytes as given
// (docs/spec/dps-protocol.md#test-vectors, vector 11). A payload must be a
// JSON object, as DPS requires.
func RegisterBody(registrationID string, payload json.RawMessage) ([]byte, error) {
	id, err := json.Marshal(registrationID)
	if err != nil {
		return nil, fmt.Errorf("deviceclient: encode register body: %w", err)
	}
	b := append([]byte(`{"registrationId":`), id...)
	if p := bytes.TrimSpace(payload); len(p) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(p, &obj); err != nil || obj == nil {
			return nil, errors.New("deviceclient: payload must be a JSON object")
		}
		b = append(append(b, `,"payload":`...), p...)
	}
	return append(b, '}'), nil
}
