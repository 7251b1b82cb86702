package stream

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/berth-iot/berth/hub"
)

// Header names berth writes besides the system properties. The "berth-"
// prefix and AppPrefix are reserved: no system property may use them, so a
// decoder can sort every header into exactly one bucket.
const (
	// AppPrefix precedes each application property's (encoded) name. It is
	// the prefix IoT Hub's own HTTPS API uses for application properties, so
	// a device property called "app-x" or "message-id" can never be taken for
	// anything else.
	AppPrefix = "iothub-app-"
	// HeaderHub carries the hub host name (the subject has it too, encoded).
	HeaderHub = "berth-hub"
	// HeaderAppOrder lists the application header key suffixes (the part
	// after AppPrefix, verbatim) comma-separated in the order the device sent
	// them. NATS headers are a map on every client, so without it the order
	// would be lost; it is written only when there are two or more
	// application properties.
	HeaderAppOrder = "berth-app-order"
	berthPrefix    = "berth-"
	// natsPrefix is reserved by the NATS server for its own headers
	// (Nats-Msg-Id, Nats-Expected-*, …); such headers are never properties.
	natsPrefix = "nats-"
)

// EnqueuedLayout is how iothub-enqueuedtime is written: RFC 3339 in UTC with
// exactly seven fractional digits, i.e. 100 ns ticks. That is .NET's
// round-trip ("o") format, which is what the Azure SDKs' EnqueuedTimeUtc
// parsers and most people reading IoT Hub output expect; time.RFC3339Nano
// parses it back.
const EnqueuedLayout = "2006-01-02T15:04:05.0000000Z"

// Subject is the NATS subject a message from deviceID on hub is stored
// under: prefix.{hub}.{deviceID}, each of hub and deviceID encoded as one
// subject token by EncodeToken. Both must be non-empty (NATS has no empty
// tokens); Append refuses messages without them.
func Subject(prefix, hub, deviceID string) string {
	return prefix + "." + EncodeToken(hub) + "." + EncodeToken(deviceID)
}

// ParseSubject undoes Subject.
func ParseSubject(prefix, subject string) (hub, deviceID string, err error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", "", fmt.Errorf("stream: subject %q is not under %q", subject, prefix)
	}
	h, d, ok := strings.Cut(rest, ".")
	if !ok || h == "" || d == "" || strings.Contains(d, ".") {
		return "", "", fmt.Errorf("stream: subject %q is not %s.{hub}.{device}", subject, prefix)
	}
	if hub, err = percentDecode(h); err != nil {
		return "", "", fmt.Errorf("stream: subject %q: hub token: %w", subject, err)
	}
	if deviceID, err = percentDecode(d); err != nil {
		return "", "", fmt.Errorf("stream: subject %q: device token: %w", subject, err)
	}
	return hub, deviceID, nil
}

// TelemetrySubject is the subject a telemetry message is stored under:
// prefix.{hub}.{partition}.{deviceID}, hub and deviceID encoded by
// EncodeToken, partition in decimal (docs/telemetry-stream.md). The
// partition token lets a consumer read one partition of a hub with a
// subject filter (prefix.{hub}.{partition}.*), which is how the Event
// Hubs-compatible endpoint reads the one stream.
func TelemetrySubject(prefix, hub string, partition int, deviceID string) string {
	return prefix + "." + EncodeToken(hub) + "." + strconv.Itoa(partition) + "." + EncodeToken(deviceID)
}

// PartitionFilter is the subject filter of one partition of a hub.
func PartitionFilter(prefix, hub string, partition int) string {
	return prefix + "." + EncodeToken(hub) + "." + strconv.Itoa(partition) + ".*"
}

// ParseTelemetrySubject undoes TelemetrySubject. It also reads the subjects
// berth wrote before partitions (prefix.{hub}.{deviceID}), with partition
// -1.
func ParseTelemetrySubject(prefix, subject string) (hub string, partition int, deviceID string, err error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", 0, "", fmt.Errorf("stream: subject %q is not under %q", subject, prefix)
	}
	toks := strings.Split(rest, ".")
	switch len(toks) {
	case 2:
		hub, deviceID, err = ParseSubject(prefix, subject)
		return hub, -1, deviceID, err
	case 3:
	default:
		return "", 0, "", fmt.Errorf("stream: subject %q is not %s.{hub}.{partition}.{device}", subject, prefix)
	}
	p, err := strconv.Atoi(toks[1])
	if err != nil || p < 0 || strconv.Itoa(p) != toks[1] || toks[0] == "" || toks[2] == "" {
		return "", 0, "", fmt.Errorf("stream: subject %q is not %s.{hub}.{partition}.{device}", subject, prefix)
	}
	if hub, err = percentDecode(toks[0]); err != nil {
		return "", 0, "", fmt.Errorf("stream: subject %q: hub token: %w", subject, err)
	}
	if deviceID, err = percentDecode(toks[2]); err != nil {
		return "", 0, "", fmt.Errorf("stream: subject %q: device token: %w", subject, err)
	}
	return hub, p, deviceID, nil
}

// EncodeToken makes s one literal NATS subject token: '.', '*', '>' and '%'
// and every byte that is not printable ASCII (space, controls, DEL, UTF-8)
// become %XX with upper-case hex. Anything else, including '-', '_', ':',
// '$', stays as is, so typical device IDs are readable in subjects.
func EncodeToken(s string) string {
	return percentEncode(s, func(c byte) bool {
		return c > ' ' && c < 0x7f && c != '.' && c != '*' && c != '>' && c != '%'
	})
}

// encodeKey turns a property name into a valid NATS header key. nats.go (and
// ADR-4) allow printable ASCII in keys except a handful of separators
// (`"(),/:;<=>?@[\]{}`); those, '%' and anything else become %XX.
func encodeKey(s string) string {
	return percentEncode(s, func(c byte) bool {
		return c > ' ' && c < 0x7f && !strings.ContainsRune(`"(),/:;<=>?@[\]{}%`, rune(c))
	})
}

// encodeValue makes s survive as a NATS header value byte-exactly. Clients
// trim leading and trailing white space, nats.go turns CR and LF into spaces,
// and ADR-4 wants ASCII, so '%', control bytes, DEL, non-ASCII bytes (UTF-8
// is encoded byte by byte, as in URLs) and a space at either end become
// %XX. Ordinary values (JSON content types, IDs, numbers, times) are
// unchanged. Every value berth writes is encoded this way, so a reader always
// percent-decodes exactly once (without turning '+' into a space).
func encodeValue(s string) string {
	last := len(s) - 1
	i := -1
	return percentEncode(s, func(c byte) bool {
		i++
		if c == ' ' {
			return i != 0 && i != last
		}
		return c > ' ' && c < 0x7f && c != '%'
	})
}

const upperHex = "0123456789ABCDEF"

// percentEncode escapes every byte for which keep returns false. keep is
// called once per byte, in order.
func percentEncode(s string, keep func(byte) bool) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if keep(c) {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = make([]byte, i, len(s)+16)
			copy(b, s[:i])
		}
		b = append(b, '%', upperHex[c>>4], upperHex[c&0xf])
	}
	if b == nil {
		return s
	}
	return string(b)
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// percentDecode undoes percentEncode. It is strict about malformed escapes
// (those would mean the data did not come from berth) and lenient about case.
func percentDecode(s string) (string, error) {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("truncated escape in %q", s)
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("bad escape %q in %q", s[i:i+3], s)
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return string(b), nil
}

// reservedSystemName reports whether a system property name would be
// misread on the way back: berth-*, iothub-app-* and the server's Nats-*.
func reservedSystemName(name string) bool {
	l := strings.ToLower(name)
	return strings.HasPrefix(l, berthPrefix) || strings.HasPrefix(l, AppPrefix) || strings.HasPrefix(l, natsPrefix)
}

// encode builds the NATS message for m. now stamps iothub-enqueuedtime when
// the hub set neither m.Enqueued nor that system property.
func encode(prefix string, m *hub.Message, now time.Time) (*nats.Msg, error) {
	if m.Hub == "" || m.DeviceID == "" {
		return nil, errors.New("stream: message without hub or device ID")
	}
	if m.Partition < 0 || m.Partition >= hub.MaxPartitionCount {
		return nil, fmt.Errorf("stream: message from %s in partition %d, not 0..%d", m.DeviceID, m.Partition, hub.MaxPartitionCount-1)
	}
	msg := &nats.Msg{
		Subject: TelemetrySubject(prefix, m.Hub, m.Partition, m.DeviceID),
		// Two header lines per property at most, plus the fixed ones.
		Header: make(nats.Header, len(m.System)+len(m.App)+5),
		Data:   m.Body,
	}
	// Direct map writes: nats.Header's methods don't canonicalise either,
	// but assigning makes it obvious that case is kept ("Temp" ≠ "temp").
	msg.Header[HeaderHub] = []string{encodeValue(m.Hub)}

	var haveDev, haveMod bool
	for _, p := range m.System {
		if reservedSystemName(p.Name) || p.Name == "" {
			return nil, fmt.Errorf("stream: system property name %q is reserved", p.Name)
		}
		switch p.Name {
		case hub.PropEnqueuedTime:
			// m.Enqueued is authoritative when set; see below.
			if !m.Enqueued.IsZero() {
				continue
			}
		case hub.PropConnDeviceID:
			haveDev = true
		case hub.PropConnModuleID:
			haveMod = true
		}
		k := encodeKey(p.Name)
		msg.Header[k] = append(msg.Header[k], encodeValue(p.Value))
	}
	// The hub stamps these on every message
	// (docs/spec/iothub-protocol.md#properties-the-hub-stamps); make sure a
	// stored message carries them even if a front end forgot, since consumers
	// filter on them.
	if !haveDev {
		msg.Header[hub.PropConnDeviceID] = []string{encodeValue(m.DeviceID)}
	}
	if !haveMod && m.ModuleID != "" {
		msg.Header[hub.PropConnModuleID] = []string{encodeValue(m.ModuleID)}
	}
	if !m.Enqueued.IsZero() {
		msg.Header[hub.PropEnqueuedTime] = []string{m.Enqueued.UTC().Format(EnqueuedLayout)}
	} else if _, ok := msg.Header[hub.PropEnqueuedTime]; !ok {
		msg.Header[hub.PropEnqueuedTime] = []string{now.UTC().Format(EnqueuedLayout)}
	}

	var order []string
	if len(m.App) > 1 {
		order = make([]string, 0, len(m.App))
	}
	for _, p := range m.App {
		suffix := encodeKey(p.Name)
		k := AppPrefix + suffix
		msg.Header[k] = append(msg.Header[k], encodeValue(p.Value))
		if order != nil {
			order = append(order, suffix)
		}
	}
	if order != nil {
		// Suffixes are header-key-safe ASCII without ',' (encodeKey escapes
		// it), so they need no value encoding and the list splits cleanly.
		msg.Header[HeaderAppOrder] = []string{strings.Join(order, ",")}
	}
	return msg, nil
}

// systemRank orders system properties when decoding. NATS headers are
// unordered and IoT Hub presents system properties as a dictionary, so berth
// does not store their order; decode returns them in the order of hub's
// Prop constants, any others after them by name.
func systemRank(name string) int {
	switch name {
	case hub.PropMessageID:
		return 0
	case hub.PropCorrelationID:
		return 1
	case hub.PropUserID:
		return 2
	case hub.PropTo:
		return 3
	case hub.PropExpiry:
		return 4
	case hub.PropContentType:
		return 5
	case hub.PropContentEncoding:
		return 6
	case hub.PropCreationTime:
		return 7
	case hub.PropComponent:
		return 8
	case hub.PropInterfaceID:
		return 9
	case hub.PropSchema:
		return 10
	case hub.PropOutputName:
		return 11
	case hub.PropConnDeviceID:
		return 12
	case hub.PropConnModuleID:
		return 13
	case hub.PropConnGenerationID:
		return 14
	case hub.PropConnAuthMethod:
		return 15
	case hub.PropEnqueuedTime:
		return 16
	case hub.PropMessageSource:
		return 17
	}
	return 100
}

// decode turns a stored message back into a hub.Message. stored is the
// stream's own timestamp, used only when iothub-enqueuedtime is missing or
// unreadable (a message some other producer put on the subject).
func decode(prefix, subject string, h nats.Header, body []byte, stored time.Time) (*hub.Message, error) {
	hubName, part, dev, err := ParseTelemetrySubject(prefix, subject)
	if err != nil {
		return nil, err
	}
	m := &hub.Message{Hub: hubName, DeviceID: dev, Partition: part, Body: body}
	if m.Body == nil {
		m.Body = []byte{}
	}
	var order string
	app := make(map[string][]string)
	for k, vs := range h {
		lk := strings.ToLower(k)
		switch {
		case k == HeaderAppOrder:
			if len(vs) > 0 {
				order = vs[0]
			}
		case strings.HasPrefix(k, AppPrefix):
			app[strings.TrimPrefix(k, AppPrefix)] = vs
		case strings.HasPrefix(lk, berthPrefix), strings.HasPrefix(lk, natsPrefix):
			// berth-hub duplicates the subject; others are not properties.
		default:
			name, err := percentDecode(k)
			if err != nil {
				return nil, fmt.Errorf("stream: header %q: %w", k, err)
			}
			for _, v := range vs {
				v, err := percentDecode(v)
				if err != nil {
					return nil, fmt.Errorf("stream: header %q: %w", k, err)
				}
				m.System = append(m.System, hub.Property{Name: name, Value: v})
			}
		}
	}
	slices.SortStableFunc(m.System, func(a, b hub.Property) int {
		if ra, rb := systemRank(a.Name), systemRank(b.Name); ra != rb {
			return ra - rb
		}
		return strings.Compare(a.Name, b.Name)
	})
	if v, ok := m.SystemValue(hub.PropConnModuleID); ok {
		m.ModuleID = v
	}
	m.Enqueued = stored.UTC()
	if v, ok := m.SystemValue(hub.PropEnqueuedTime); ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			m.Enqueued = t.UTC()
		}
	}

	appendApp := func(suffix string, v string) error {
		name, err := percentDecode(suffix)
		if err != nil {
			return fmt.Errorf("stream: header %q: %w", AppPrefix+suffix, err)
		}
		if v, err = percentDecode(v); err != nil {
			return fmt.Errorf("stream: header %q: %w", AppPrefix+suffix, err)
		}
		m.App = append(m.App, hub.Property{Name: name, Value: v})
		return nil
	}
	if order != "" {
		for _, suffix := range strings.Split(order, ",") {
			vs := app[suffix]
			if len(vs) == 0 {
				continue // listed but absent: tolerate a foreign or edited message
			}
			if err := appendApp(suffix, vs[0]); err != nil {
				return nil, err
			}
			app[suffix] = vs[1:]
		}
	}
	// Whatever the order header did not account for (no header: one
	// property, or a message from another producer) follows by name.
	rest := make([]string, 0, len(app))
	for suffix, vs := range app {
		if len(vs) > 0 {
			rest = append(rest, suffix)
		}
	}
	slices.Sort(rest)
	for _, suffix := range rest {
		for _, v := range app[suffix] {
			if err := appendApp(suffix, v); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
