package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/localconf"
	"github.com/berth-iot/berth/stream"
)

// berth hub monitor-events: the telemetry stream as az iot hub monitor-events
// prints it, one JSON object per line.

// errInProcessStream explains why a berth's telemetry cannot be read.
var errInProcessStream = errors.New("this berth keeps its telemetry stream in-process, with no listener to read it from: " +
	"restart `berth serve` with --stream-listen 127.0.0.1:0 (the default) or with --nats-url pointing at a NATS server, " +
	"or pass --nats-url here")

// nonDecodablePayload is what az prints for a body it cannot decode.
const nonDecodablePayload = "{{non-decodable payload}}"

// Message property choices of --properties, as az names them.
const (
	propSys  = "sys"
	propApp  = "app"
	propAnno = "anno"
	propAll  = "all"
)

// idleTimeout is --timeout: az's "maximum seconds to maintain connection
// without receiving message", as plain seconds (az's form) or a Go
// duration; 0 waits forever.
type idleTimeout time.Duration

func (d *idleTimeout) Set(s string) error {
	s = strings.TrimSpace(s)
	var v time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > int64(time.Duration(1<<63-1)/time.Second) {
			return fmt.Errorf("%q is too long", s)
		}
		v = time.Duration(n) * time.Second
	} else if v, err = time.ParseDuration(s); err != nil {
		return fmt.Errorf("%q: want seconds or a duration such as 30s, 5m", s)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", s)
	}
	*d = idleTimeout(v)
	return nil
}

func (d *idleTimeout) String() string { return time.Duration(*d).String() }
func (d *idleTimeout) Type() string   { return "duration" }

// monitorFlags are the options of monitor-events.
type monitorFlags struct {
	deviceID, moduleID string
	props              []string
	timeout            idleTimeout
	count              int
	fromStart          bool
	startTime          string
	enqueuedTime       int64
	contentType        string
	hub                string
	natsURL            string
	streamName         string
	subjectPrefix      string
}

func newMonitorEventsCmd(g *globals, hf *hubFlags) *cobra.Command {
	mf := monitorFlags{timeout: idleTimeout(5 * time.Minute)}
	cmd := &cobra.Command{
		Use:   "monitor-events",
		Short: "Print device-to-cloud messages as they arrive (like az iot hub monitor-events)",
		Long: `Tail berth's telemetry stream and print each device-to-cloud message as one JSON
object per line, in the shape az iot hub monitor-events prints:

  {"event":{"origin":"<deviceId>","module":"","interface":"","component":"",
            "properties":{"system":{…},"application":{…}},"annotations":{…},
            "payload":…}}

properties and annotations appear only as --properties asks (sys, app, anno, all;
space- or comma-separated). The payload is the body as JSON when it parses as JSON
and its content type (or --content-type) does not say otherwise, else the body as
text. System properties carry az's AMQP names (message_id, content_type, …); the
hub's stamps (iothub-connection-device-id, iothub-enqueuedtime as Unix
milliseconds, …) are annotations.

Messages stored from the start point on are printed (default: only new ones) until
--count messages, --timeout without a message, or Ctrl-C. The stream's location
comes from the local berth's client.json unless --nats-url is given.`,
		Args: func(cmd *cobra.Command, args []string) error {
			// az takes --properties sys app (space-separated); cobra sees
			// the values after the first as arguments.
			if len(args) > 0 && !cmd.Flags().Changed("properties") {
				return fmt.Errorf("unexpected argument %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMonitor(cmd, g, hf, &mf, args)
		},
	}
	f := cmd.Flags()
	deviceIDFlag(cmd, &mf.deviceID)
	f.StringVarP(&mf.moduleID, "module-id", "m", "", "only messages of this module (* and ? are wildcards)")
	f.StringSliceVarP(&mf.props, "properties", "p", nil, "message properties to print: sys, app, anno, all")
	f.VarP(&mf.timeout, "timeout", "t", "stop after this long without a message (seconds, or a duration like 30s); 0 waits forever")
	f.IntVar(&mf.count, "count", 0, "stop after this many messages (default: no limit)")
	f.BoolVar(&mf.fromStart, "from-start", false, "print every message the stream still holds, then new ones")
	f.StringVar(&mf.startTime, "start-time", "", "print messages stored since this time (RFC 3339), then new ones")
	f.Int64Var(&mf.enqueuedTime, "enqueued-time", 0, "like --start-time, in milliseconds since the Unix epoch (az's --enqueued-time)")
	f.StringVar(&mf.contentType, "content-type", "", "treat every payload as this content type (az's --content-type)")
	f.StringVar(&mf.hub, "hub", "", "only messages of this hub host name (default: the hub connection string's, or the local berth's)")
	f.StringVar(&mf.natsURL, "nats-url", "", "NATS URL of the telemetry stream (default: natsUrl from client.json); it may carry a token")
	f.StringVar(&mf.streamName, "stream", "", "JetStream stream name (default: from client.json, or "+stream.DefaultStreamName+")")
	f.StringVar(&mf.subjectPrefix, "subject-prefix", "", "subject prefix of the stream (default: from client.json, or "+stream.DefaultSubjectPrefix+")")
	aliasFlags(f, map[string]string{"message-count": "count", "mc": "count", "props": "properties", "et": "enqueued-time", "ct": "content-type", "to": "timeout"})
	cmd.MarkFlagsMutuallyExclusive("from-start", "start-time", "enqueued-time")
	return cmd
}

// propSet is what --properties asked for.
type propSet struct{ sys, app, anno bool }

func (p propSet) any() bool { return p.sys || p.app || p.anno }

// parseProps validates --properties values (and the space-separated ones
// that arrive as arguments), case-insensitively as az does.
func parseProps(values []string) (propSet, error) {
	var p propSet
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			switch strings.ToLower(strings.TrimSpace(s)) {
			case propSys:
				p.sys = true
			case propApp:
				p.app = true
			case propAnno:
				p.anno = true
			case propAll:
				p.sys, p.app, p.anno = true, true, true
			case "":
			default:
				return p, fmt.Errorf("--properties %q: use sys, app, anno or all", s)
			}
		}
	}
	return p, nil
}

// idPattern matches IDs as az's --device-id does: exactly, or with * and ?
// as wildcards over the whole ID.
type idPattern struct {
	exact string
	re    *regexp.Regexp // nil: no wildcard
}

func newIDPattern(s string) idPattern {
	p := idPattern{exact: s}
	if strings.ContainsAny(s, "*?") {
		q := regexp.QuoteMeta(s)
		q = strings.ReplaceAll(q, `\*`, ".*")
		q = strings.ReplaceAll(q, `\?`, ".")
		p.re = regexp.MustCompile("^" + q + "$")
	}
	return p
}

func (p idPattern) match(id string) bool {
	return p.exact == "" || id == p.exact || (p.re != nil && p.re.MatchString(id))
}

// streamLocation resolves where the telemetry stream is and which hub's
// messages to show.
func (mf *monitorFlags) streamLocation(g *globals, hf *hubFlags) (stream.Config, string, error) {
	cfg := stream.Config{URL: mf.natsURL, StreamName: mf.streamName, SubjectPrefix: mf.subjectPrefix, ReadOnly: true}
	hubName := mf.hub
	var info *localconf.Info
	if cfg.URL == "" || cfg.StreamName == "" || cfg.SubjectPrefix == "" || hubName == "" {
		var err error
		info, err = localconf.Read(g.dataDir)
		if err != nil && cfg.URL == "" {
			return cfg, "", fmt.Errorf("no telemetry stream to read (pass --nats-url): %w", err)
		}
	}
	if info != nil {
		if cfg.URL == "" {
			if info.NATSURL == "" {
				return cfg, "", errInProcessStream
			}
			cfg.URL = info.NATSURL
		}
		if cfg.StreamName == "" {
			cfg.StreamName = info.StreamName
		}
		if cfg.SubjectPrefix == "" {
			cfg.SubjectPrefix = info.StreamSubjectPrefix
		}
	}
	if hubName == "" {
		// The hub the other hub commands talk to; with none known, every
		// hub's messages.
		if t, err := resolveHub(g, hf); err == nil {
			hubName = t.cs.HostName
		} else if info != nil {
			hubName = info.HubHostName
		}
	}
	return cfg, hubName, nil
}

// startOf resolves --from-start, --start-time and --enqueued-time; zero
// means only new messages.
func (mf *monitorFlags) startOf(cmd *cobra.Command) (time.Time, error) {
	fs := cmd.Flags()
	switch {
	case mf.fromStart:
		// Before anything the stream can hold.
		return time.Unix(0, 0).UTC(), nil
	case fs.Changed("start-time"):
		t, err := time.Parse(time.RFC3339Nano, mf.startTime)
		if err != nil {
			return time.Time{}, fmt.Errorf("--start-time %q: want RFC 3339, e.g. 2024-05-06T07:08:09Z", mf.startTime)
		}
		return t, nil
	case fs.Changed("enqueued-time"):
		if mf.enqueuedTime < 0 {
			return time.Time{}, errors.New("--enqueued-time must not be negative")
		}
		return time.UnixMilli(mf.enqueuedTime).UTC(), nil
	}
	return time.Time{}, nil
}

func runMonitor(cmd *cobra.Command, g *globals, hf *hubFlags, mf *monitorFlags, extraProps []string) error {
	props, err := parseProps(append(append([]string(nil), mf.props...), extraProps...))
	if err != nil {
		return err
	}
	if mf.count < 0 {
		return errors.New("--count must not be negative")
	}
	printEvent, err := g.eventPrinter() // -o and --query, output.go
	if err != nil {
		return err
	}
	start, err := mf.startOf(cmd)
	if err != nil {
		return err
	}
	cfg, hubName, err := mf.streamLocation(g, hf)
	if err != nil {
		return err
	}
	// The stream package logs reconnects and undecodable messages; those
	// are worth seeing, its debug chatter is not, nor the "disconnected"
	// it reports when this command closes the connection itself.
	closing := &atomic.Bool{}
	cfg.Logger = slog.New(quietHandler{Handler: slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}), quiet: closing})

	ctx := cmd.Context()
	openCtx, cancelOpen := context.WithTimeout(ctx, 30*time.Second)
	st, err := stream.Open(openCtx, cfg)
	cancelOpen()
	if err != nil {
		// stream's errors name the server without the URL's credentials.
		return fmt.Errorf("open the telemetry stream: %w", err)
	}
	defer func() {
		closing.Store(true)
		st.Close()
	}()

	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	devices, modules := newIDPattern(mf.deviceID), newIDPattern(mf.moduleID)
	opts := stream.SubscribeOptions{Hub: hubName, StartTime: start}
	if devices.re == nil {
		// An exact ID filters on the server, by subject.
		opts.DeviceID = mf.deviceID
	}
	msgs, err := st.Subscribe(subCtx, opts)
	if err != nil {
		return fmt.Errorf("read the telemetry stream: %w", err)
	}
	// Like az's banner, on stderr so that stdout stays one JSON object per
	// line. It also tells a script (and the tests) the subscription is live.
	if mf.deviceID != "" {
		fmt.Fprintf(g.stderr, "Starting event monitor, filtering on device: %s, use ctrl-c to stop...\n", mf.deviceID)
	} else {
		fmt.Fprintln(g.stderr, "Starting event monitor, use ctrl-c to stop...")
	}

	var idle <-chan time.Time
	var timer *time.Timer
	if mf.timeout > 0 {
		timer = time.NewTimer(time.Duration(mf.timeout))
		defer timer.Stop()
		idle = timer.C
	}
	printed := 0
	for {
		select {
		case <-ctx.Done():
			// Ctrl-C: a normal way to stop a monitor.
			return nil
		case <-idle:
			fmt.Fprintf(g.stderr, "Stopping event monitor: no message for %s.\n", time.Duration(mf.timeout))
			return nil
		case m, ok := <-msgs:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("the telemetry stream closed the subscription")
			}
			if !devices.match(m.DeviceID) || !modules.match(m.ModuleID) {
				continue
			}
			if err := printEvent(formatEvent(m, props, mf.contentType)); err != nil {
				return err
			}
			printed++
			if mf.count > 0 && printed >= mf.count {
				fmt.Fprintf(g.stderr, "Successfully parsed %d message(s).\n", printed)
				return nil
			}
			if timer != nil {
				timer.Reset(time.Duration(mf.timeout))
			}
		}
	}
}

// quietHandler drops every record once quiet is set.
type quietHandler struct {
	slog.Handler
	quiet *atomic.Bool
}

func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return !h.quiet.Load() && h.Handler.Enabled(ctx, l)
}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.quiet.Load() {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietHandler{Handler: h.Handler.WithAttrs(attrs), quiet: h.quiet}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{Handler: h.Handler.WithGroup(name), quiet: h.quiet}
}

// writeEvent prints ev as one line of JSON with a single Write, and flushes
// a writer that buffers, so a reader of a pipe sees each message as it
// arrives.
func writeEvent(w io.Writer, ev monitorEvent) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ev); err != nil {
		return fmt.Errorf("print event: %w", err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("print event: %w", err)
	}
	if f, ok := w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			return fmt.Errorf("print event: %w", err)
		}
	}
	return nil
}

// monitorEvent is one message as az iot hub monitor-events prints it.
type monitorEvent struct {
	Event eventBody `json:"event"`
}

// eventBody keeps az's key order: origin, module, interface, component,
// properties, annotations, payload.
type eventBody struct {
	Origin      string           `json:"origin"`
	Module      string           `json:"module"`
	Interface   string           `json:"interface"`
	Component   string           `json:"component"`
	Properties  *eventProperties `json:"properties,omitempty"`
	Annotations *orderedObject   `json:"annotations,omitempty"`
	Payload     any              `json:"payload"`
}

// eventProperties: az leaves "system" out when a message has none, but
// always prints "application" when asked for it.
type eventProperties struct {
	System      *orderedObject `json:"system,omitempty"`
	Application *orderedObject `json:"application,omitempty"`
}

// orderedObject is a JSON object whose keys keep the order they were set
// in (Go maps would sort them): application properties in the device's
// order, as az shows them. Setting a key again replaces its value in place.
type orderedObject struct {
	keys []string
	vals map[string]any
}

func (o *orderedObject) set(k string, v any) {
	if o.vals == nil {
		o.vals = map[string]any{}
	}
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

func (o *orderedObject) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, err := marshalNoEscape(k)
		if err != nil {
			return nil, err
		}
		vb, err := marshalNoEscape(o.vals[k])
		if err != nil {
			return nil, err
		}
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// marshalNoEscape is json.Marshal without HTML escaping, like the encoder
// that prints the event: property values are shown verbatim.
func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// amqpSystemName maps IoT Hub's system property names to the AMQP message
// property names az prints under "system"; every other system property
// (what the hub stamps, dt-subject, …) reaches az as a message annotation.
func amqpSystemName(name string) (string, bool) {
	switch name {
	case hub.PropMessageID:
		return "message_id", true
	case hub.PropCorrelationID:
		return "correlation_id", true
	case hub.PropUserID:
		return "user_id", true
	case hub.PropTo:
		return "to", true
	case hub.PropExpiry:
		return "absolute_expiry_time", true
	case hub.PropContentType:
		return "content_type", true
	case hub.PropContentEncoding:
		return "content_encoding", true
	}
	return "", false
}

// epochMillis turns an RFC 3339 time into Unix milliseconds, the way AMQP
// timestamps reach az; a value that is not a time stays as it is.
func epochMillis(v string) any {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UnixMilli()
	}
	return v
}

// formatEvent builds what monitor-events prints for m.
func formatEvent(m *hub.Message, props propSet, ctHint string) monitorEvent {
	ev := eventBody{Origin: m.DeviceID, Module: m.ModuleID}
	if v, ok := m.SystemValue(hub.PropConnDeviceID); ok && v != "" {
		ev.Origin = v
	}
	// az reads the interface from iothub-interface-name (PnP v1) or
	// dt-dataschema (v2), and the component from dt-subject.
	if v, ok := m.SystemValue(hub.PropInterfaceID); ok && v != "" {
		ev.Interface = v
	} else if v, ok := m.SystemValue(hub.PropSchema); ok {
		ev.Interface = v
	}
	ev.Component, _ = m.SystemValue(hub.PropComponent)

	var system, annotations orderedObject
	sysVals := map[string]any{}
	for _, p := range m.System {
		if name, ok := amqpSystemName(p.Name); ok {
			// az drops empty AMQP properties.
			if p.Value == "" {
				continue
			}
			var v any = p.Value
			if p.Name == hub.PropExpiry {
				v = epochMillis(p.Value)
			}
			sysVals[name] = v
			continue
		}
		var v any = p.Value
		if p.Name == hub.PropEnqueuedTime {
			v = epochMillis(p.Value)
		}
		annotations.set(p.Name, v)
	}
	// az lists the AMQP properties in attribute order, which is
	// alphabetical.
	for _, name := range slices.Sorted(maps.Keys(sysVals)) {
		system.set(name, sysVals[name])
	}

	if props.any() {
		ev.Properties = &eventProperties{}
		if props.sys && len(system.keys) > 0 {
			ev.Properties.System = &system
		}
		if props.app {
			app := &orderedObject{}
			for _, p := range m.App {
				app.set(p.Name, p.Value)
			}
			ev.Properties.Application = app
		}
	}
	if props.anno {
		ev.Annotations = &annotations
	}

	ct, _ := m.SystemValue(hub.PropContentType)
	if ctHint != "" {
		ct = ctHint
	}
	ce, _ := m.SystemValue(hub.PropContentEncoding)
	ev.Payload = payloadOf(m.Body, ct, ce)
	return monitorEvent{Event: ev}
}

// payloadOf decodes a body for printing. Text: UTF-8, or UTF-16/UTF-32 when
// the content encoding says so; anything else is az's non-decodable
// marker. JSON: the text when it parses and the content type is unset or a
// JSON type (az requires application/json, but most MQTT devices never set
// $.ct, and their JSON is still JSON); kept as raw JSON so numbers and key
// order print exactly as the device sent them.
func payloadOf(body []byte, contentType, contentEncoding string) any {
	text, ok := decodeText(body, contentEncoding)
	if !ok {
		return nonDecodablePayload
	}
	ct := strings.ToLower(contentType)
	if (ct == "" || strings.Contains(ct, "json")) && json.Valid([]byte(text)) {
		return json.RawMessage(text)
	}
	return text
}

// decodeText decodes body per its content encoding.
func decodeText(body []byte, encoding string) (string, bool) {
	enc := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(encoding), "_", "-"))
	switch {
	case strings.HasPrefix(enc, "utf-16") || strings.HasPrefix(enc, "utf16"):
		return decodeUTF16(body, strings.HasSuffix(enc, "be"))
	case strings.HasPrefix(enc, "utf-32") || strings.HasPrefix(enc, "utf32"):
		return decodeUTF32(body, strings.HasSuffix(enc, "be"))
	}
	if !utf8.Valid(body) {
		return "", false
	}
	return string(body), true
}

// decodeUTF16 decodes UTF-16 with an optional byte order mark, little
// endian by default as Python's (and so az's) "utf-16" codec does on the
// machines az runs on.
func decodeUTF16(b []byte, bigEndian bool) (string, bool) {
	if len(b)%2 != 0 {
		return "", false
	}
	if len(b) >= 2 {
		switch {
		case b[0] == 0xFF && b[1] == 0xFE:
			b, bigEndian = b[2:], false
		case b[0] == 0xFE && b[1] == 0xFF:
			b, bigEndian = b[2:], true
		}
	}
	u := make([]uint16, len(b)/2)
	for i := range u {
		if bigEndian {
			u[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
		} else {
			u[i] = uint16(b[2*i+1])<<8 | uint16(b[2*i])
		}
	}
	s := string(utf16.Decode(u))
	if strings.ContainsRune(s, utf8.RuneError) {
		return "", false
	}
	return s, true
}

// decodeUTF32 is decodeUTF16 for UTF-32.
func decodeUTF32(b []byte, bigEndian bool) (string, bool) {
	if len(b)%4 != 0 {
		return "", false
	}
	if len(b) >= 4 {
		switch {
		case b[0] == 0xFF && b[1] == 0xFE && b[2] == 0 && b[3] == 0:
			b, bigEndian = b[4:], false
		case b[0] == 0 && b[1] == 0 && b[2] == 0xFE && b[3] == 0xFF:
			b, bigEndian = b[4:], true
		}
	}
	var sb strings.Builder
	for i := 0; i < len(b); i += 4 {
		var r uint32
		if bigEndian {
			r = uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3])
		} else {
			r = uint32(b[i+3])<<24 | uint32(b[i+2])<<16 | uint32(b[i+1])<<8 | uint32(b[i])
		}
		if r > utf8.MaxRune || (r >= 0xD800 && r <= 0xDFFF) {
			return "", false
		}
		sb.WriteRune(rune(r))
	}
	return sb.String(), true
}
