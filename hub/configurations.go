package hub

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hubquery"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/throttle"
)

// Automatic device configurations (docs/configurations.md): a target
// condition (the WHERE of a device query), a priority and desired
// properties. Every configuration whose condition a device's twin meets
// is applied: the contents are merged into the twin's desired properties,
// the configuration of higher priority (then the one created last) winning
// a path two of them set, and the twin lists them under "configurations"
// with status Applied. When that set changes (the twin changed, a
// condition or priority changed, a configuration was deleted) the paths
// the configurations no longer set are removed and the new combination is
// written.

// Configuration statuses in a twin's "configurations" section. IoT Hub
// lists a configuration as Targeted until its next run applies it; berth
// applies at once, so its twins list Applied.
const (
	ConfigurationTargeted = "Targeted"
	ConfigurationApplied  = "Applied"
)

// ConfigurationSchemaVersion is the only schema version IoT Hub knows.
const ConfigurationSchemaVersion = "1.0"

// MaxConfigurationIDLength bounds a configuration ID, as IoT Hub does.
const MaxConfigurationIDLength = 128

// Configuration is IoT Hub's Configuration document as the service API
// shows it (docs/spec/iothub-protocol.md#automatic-device-configurations).
type Configuration struct {
	ID                 string               `json:"id"`
	SchemaVersion      string               `json:"schemaVersion"`
	Labels             map[string]string    `json:"labels"`
	Content            ConfigurationContent `json:"content"`
	TargetCondition    string               `json:"targetCondition"`
	CreatedTimeUTC     time.Time            `json:"createdTimeUtc"`
	LastUpdatedTimeUTC time.Time            `json:"lastUpdatedTimeUtc"`
	Priority           int                  `json:"priority"`
	SystemMetrics      ConfigurationMetrics `json:"systemMetrics"`
	Metrics            ConfigurationMetrics `json:"metrics"`
	ETag               string               `json:"etag"`
}

// ConfigurationContent is what a configuration writes. Only the kinds a
// client gave are echoed (the Node SDK's e2e tests compare the content
// they read back with what they wrote).
type ConfigurationContent struct {
	DeviceContent  map[string]json.RawMessage `json:"deviceContent,omitempty"`
	ModulesContent map[string]json.RawMessage `json:"modulesContent,omitempty"`
	ModuleContent  map[string]json.RawMessage `json:"moduleContent,omitempty"`
}

// ConfigurationMetrics are named queries and their results (counts of
// matching twins).
type ConfigurationMetrics struct {
	Results map[string]int    `json:"results"`
	Queries map[string]string `json:"queries"`
}

// TwinConfiguration is one entry of a twin's "configurations" section.
type TwinConfiguration struct {
	Status string `json:"status"`
}

// ConfigurationQueriesTest is the body and answer of POST
// /configurations/testQueries: the errors of a target condition and of
// custom metric queries ("" when the query is valid).
type ConfigurationQueriesTest struct {
	TargetCondition     string            `json:"targetCondition,omitempty"`
	CustomMetricQueries map[string]string `json:"customMetricQueries,omitempty"`
}

// ConfigurationQueriesResult answers a ConfigurationQueriesTest.
type ConfigurationQueriesResult struct {
	TargetConditionError    string            `json:"targetConditionError"`
	CustomMetricQueryErrors map[string]string `json:"customMetricQueryErrors"`
}

// twinConfig is a twin's record of one configuration applied to it.
type twinConfig struct {
	Status string `json:"status"`
}

func renderTwinConfigs(m map[string]*twinConfig) map[string]TwinConfiguration {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]TwinConfiguration, len(m))
	for id, c := range m {
		out[id] = TwinConfiguration{Status: c.Status}
	}
	return out
}

// configsDocument is the twin's "configurations" section as queries see it
// (configurations.[[id]].status), nil when no configuration targets it.
func configsDocument(m map[string]*twinConfig) map[string]any {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]any, len(m))
	for id, c := range m {
		out[id] = map[string]any{"status": c.Status}
	}
	return out
}

// configRecord is a stored configuration: the metrics' results are not
// stored, they are counted when the configuration is read.
type configRecord struct {
	ID              string               `json:"id"`
	SchemaVersion   string               `json:"schemaVersion"`
	Labels          map[string]string    `json:"labels,omitempty"`
	Content         ConfigurationContent `json:"content"`
	TargetCondition string               `json:"targetCondition"`
	Priority        int                  `json:"priority"`
	Metrics         map[string]string    `json:"metrics,omitempty"`
	Created         time.Time            `json:"created"`
	Updated         time.Time            `json:"updated"`
}

// compiledConfig is a configuration ready to evaluate.
type compiledConfig struct {
	rec     configRecord
	etag    string
	target  *hubquery.Query // nil: targets no device (empty condition)
	metrics map[string]*hubquery.Query
	// patch is the deviceContent (or moduleContent) as a
	// desired-properties patch and paths the members it sets; both nil for
	// an IoT Edge deployment (modulesContent), which berth stores but does
	// not apply (docs/configurations.md).
	patch json.RawMessage
	paths [][]string
	// modules: the content is moduleContent, applied to the module twins
	// a FROM devices.modules condition selects.
	modules bool
}

// edge reports whether the configuration is an IoT Edge deployment
// (modulesContent): IoT Hub counts those apart from device and module
// configurations.
func (c *compiledConfig) edge() bool { return len(c.rec.Content.ModulesContent) > 0 }

// collection is what the configuration's content is written to: device
// twins or module twins.
func (c *compiledConfig) collection() hubquery.Collection {
	if c.modules {
		return hubquery.Modules
	}
	return hubquery.Devices
}

func configKey(hubName, id string) string { return strings.ToLower(hubName) + "/" + id }

// validConfigurationID reports whether id is a configuration ID IoT Hub
// accepts: 1 to 128 characters, no upper-case letters, no spaces or
// controls, none of & ^ [ ] { } \ | " < > / (printable ASCII only: berth's
// narrowing, IDs travel in URLs and queries).
func validConfigurationID(id string) bool {
	if id == "" || len(id) > MaxConfigurationIDLength {
		return false
	}
	for _, c := range []byte(id) {
		if c <= ' ' || c >= 0x7f || c >= 'A' && c <= 'Z' || strings.IndexByte("&^[]{}\\|\"<>/", c) >= 0 {
			return false
		}
	}
	return true
}

// MaxConfigurationMetrics is how many custom metrics a configuration may
// have, as IoT Hub documents.
const MaxConfigurationMetrics = 5

// parseTargetCondition compiles a target condition: a WHERE expression
// over device twins ("tags.env='prod'"), or, for module configurations, a
// query tail starting with FROM ("FROM devices.modules WHERE …"). Empty
// gives nil: the configuration targets no device.
func parseTargetCondition(tc string) (*hubquery.Query, error) {
	tc = strings.TrimSpace(tc)
	switch tc {
	case "":
		return nil, nil
	case "*": // every device, as IoT Hub documents
		return hubquery.Parse("SELECT * FROM devices")
	}
	prefix := "SELECT * FROM devices WHERE "
	if len(tc) >= 5 && strings.EqualFold(tc[:5], "from ") {
		prefix = "SELECT * "
	}
	q, err := hubquery.Parse(prefix + tc)
	if err != nil {
		var qe *hubquery.Error
		if errors.As(err, &qe) && qe.Pos > len(prefix) {
			// Positions in the condition as the client wrote it.
			return nil, &hubquery.Error{Pos: qe.Pos - len(prefix), Msg: qe.Msg}
		}
		return nil, err
	}
	if len(q.GroupBy) > 0 || q.Top >= 0 {
		return nil, errors.New("a target condition cannot group or limit")
	}
	return q, nil
}

// parseMetricQuery compiles a custom metric query: a whole query, whose
// metric is the number of twins its WHERE accepts.
func parseMetricQuery(src string) (*hubquery.Query, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("the query is empty")
	}
	return hubquery.Parse(src)
}

// decodeTwinValue decodes one JSON value as twins keep them (numbers as
// json.Number).
func decodeTwinValue(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the value")
	}
	return v, nil
}

// setPath sets patch[path...] = v, creating (or replacing with) objects on
// the way.
func setPath(patch map[string]any, path []string, v any) {
	for _, k := range path[:len(path)-1] {
		next, ok := patch[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			patch[k] = next
		}
		patch = next
	}
	patch[path[len(path)-1]] = v
}

const desiredPrefix = "properties.desired"

// contentPatch turns a content section ({"properties.desired": {…}} or
// {"properties.desired.a.b": v, …}) into a desired-properties patch and
// the member paths it sets. It decodes afresh on every call: the patch is
// merged into a twin, which keeps its maps.
func contentPatch(content map[string]json.RawMessage) (map[string]any, [][]string, error) {
	keys := make([]string, 0, len(content))
	for k := range content {
		keys = append(keys, k)
	}
	sort.Strings(keys) // "properties.desired" before its sub-paths
	patch := map[string]any{}
	var paths [][]string
	for _, k := range keys {
		v, err := decodeTwinValue(content[k])
		if err != nil {
			return nil, nil, azerr.Newf(azerr.HubArgumentInvalid, "The content of %q is not valid JSON: %v", k, err)
		}
		switch {
		case k == desiredPrefix:
			obj, ok := v.(map[string]any)
			if !ok {
				return nil, nil, azerr.Newf(azerr.HubArgumentInvalid, "The content of %q must be a JSON object.", k)
			}
			for m, mv := range obj {
				setPath(patch, []string{m}, mv)
				paths = append(paths, []string{m})
			}
		case strings.HasPrefix(k, desiredPrefix+"."):
			path := strings.Split(k[len(desiredPrefix)+1:], ".")
			for _, s := range path {
				if s == "" {
					return nil, nil, azerr.Newf(azerr.HubArgumentInvalid, "The content path %q has an empty member name.", k)
				}
			}
			setPath(patch, path, v)
			paths = append(paths, path)
		default:
			return nil, nil, azerr.Newf(azerr.HubArgumentInvalid, "The content path %q must be %q or start with %q.", k, desiredPrefix, desiredPrefix+".")
		}
	}
	if err := validateTwinPatch(patch, "desired"); err != nil {
		return nil, nil, err
	}
	if n := twinSize(patch); n > MaxDesiredSize {
		return nil, nil, twinTooLarge("desired", n, MaxDesiredSize)
	}
	sort.Slice(paths, func(i, j int) bool { return strings.Join(paths[i], ".") < strings.Join(paths[j], ".") })
	return patch, paths, nil
}

// compile validates a configuration and prepares it for evaluation.
func compile(rec configRecord, etag string) (*compiledConfig, error) {
	if !validConfigurationID(rec.ID) {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The configuration ID %q is not valid: 1 to %d lower-case letters, digits and - : + %% _ # * ? ! ( ) , = @ $ ' characters.", rec.ID, MaxConfigurationIDLength)
	}
	if rec.SchemaVersion != ConfigurationSchemaVersion {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The schemaVersion %q is not supported: it must be %q.", rec.SchemaVersion, ConfigurationSchemaVersion)
	}
	if rec.Priority < 0 {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The priority must be 0 or more, not %d.", rec.Priority)
	}
	c := &compiledConfig{rec: rec, etag: etag, metrics: map[string]*hubquery.Query{}}
	kinds := 0
	for _, m := range []map[string]json.RawMessage{rec.Content.DeviceContent, rec.Content.ModuleContent, rec.Content.ModulesContent} {
		if len(m) > 0 {
			kinds++
		}
	}
	if kinds != 1 {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The content must have exactly one of deviceContent, moduleContent and modulesContent.")
	}
	var err error
	if c.target, err = parseTargetCondition(rec.TargetCondition); err != nil {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid target condition: %s", err.Error())
	}
	switch {
	case len(rec.Content.DeviceContent) > 0:
		if c.target != nil && c.target.From != hubquery.Devices {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "The target condition of a device configuration must select devices.")
		}
		if err := c.compileContent(rec.Content.DeviceContent); err != nil {
			return nil, err
		}
	case len(rec.Content.ModuleContent) > 0:
		// The condition's collection is checked by Put (IoT Hub: "must
		// start with FROM devices.modules WHERE"); one stored before
		// berth applied module configurations may select devices, and
		// then targets nothing (matching).
		c.modules = true
		if err := c.compileContent(rec.Content.ModuleContent); err != nil {
			return nil, err
		}
	default:
		for k, raw := range rec.Content.ModulesContent {
			if !json.Valid(raw) {
				return nil, azerr.Newf(azerr.HubArgumentInvalid, "The content of %q is not valid JSON.", k)
			}
		}
	}
	if len(rec.Metrics) > MaxConfigurationMetrics {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "A configuration has at most %d custom metrics, not %d.", MaxConfigurationMetrics, len(rec.Metrics))
	}
	for name, src := range rec.Metrics {
		if name == "" {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "A custom metric has no name.")
		}
		q, err := parseMetricQuery(src)
		if err != nil {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid query of metric %q: %s", name, err.Error())
		}
		c.metrics[name] = q
	}
	return c, nil
}

// compileContent sets the desired patch and paths of a deviceContent or
// moduleContent.
func (c *compiledConfig) compileContent(content map[string]json.RawMessage) error {
	patch, paths, err := contentPatch(content)
	if err != nil {
		return err
	}
	if c.patch, err = json.Marshal(patch); err != nil {
		return fmt.Errorf("hub: encode configuration content: %w", err)
	}
	c.paths = paths
	return nil
}

// appliedPatch decodes the configuration's desired patch afresh.
func (c *compiledConfig) appliedPatch() map[string]any {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(c.patch))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return map[string]any{} // encoded by compile: cannot happen
	}
	return m
}

// Configurations keeps a hub's automatic device configurations and applies
// them to device twins. Device and twin changes are queued
// (DeviceChanged) and applied by Run; a configuration change re-evaluates
// the whole hub. Run also sweeps every hub with configurations
// periodically, which catches what another berth node changed.
type Configurations struct {
	store store.Store
	twins *Twins
	log   *slog.Logger

	mu sync.Mutex
	// cache holds each hub's configurations (key lower(hub)), sorted in
	// order of precedence; a hub is absent until loaded.
	cache   map[string][]*compiledConfig
	pending map[string]map[string]struct{} // lower(hub) → device IDs to reconcile
	sweeps  map[string]bool                // lower(hub) to sweep whole; true: a full sweep
	wake    chan struct{}
}

// maxPendingDevices bounds the device IDs queued for one hub: beyond it
// the hub is swept whole instead.
const maxPendingDevices = 10000

// NewConfigurations returns the configurations service of twins.
func NewConfigurations(st store.Store, twins *Twins, log *slog.Logger) *Configurations {
	if log == nil {
		log = slog.Default()
	}
	return &Configurations{
		store: st, twins: twins, log: log,
		cache: map[string][]*compiledConfig{}, pending: map[string]map[string]struct{}{},
		sweeps: map[string]bool{}, wake: make(chan struct{}, 1),
	}
}

func (c *Configurations) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// DeviceChanged queues a device whose identity or twin changed, to be
// evaluated against the hub's configurations by Run. It never blocks.
func (c *Configurations) DeviceChanged(hubName, id string) {
	h := strings.ToLower(hubName)
	c.mu.Lock()
	if cs, loaded := c.cache[h]; loaded && len(cs) == 0 {
		c.mu.Unlock()
		return // the common case: a hub without configurations
	}
	if _, whole := c.sweeps[h]; !whole {
		p := c.pending[h]
		if p == nil {
			p = map[string]struct{}{}
			c.pending[h] = p
		}
		p[id] = struct{}{}
		if len(p) > maxPendingDevices {
			delete(c.pending, h)
			if _, queued := c.sweeps[h]; !queued {
				c.sweeps[h] = false
			}
		}
	}
	c.mu.Unlock()
	c.signal()
}

// hubChanged drops a hub's cached configurations and queues a sweep.
func (c *Configurations) hubChanged(hubName string) {
	h := strings.ToLower(hubName)
	c.mu.Lock()
	delete(c.cache, h)
	delete(c.pending, h)
	c.sweeps[h] = true
	c.mu.Unlock()
	c.signal()
}

// configs returns the hub's configurations in order of precedence:
// highest priority first, then the most recently created, then by ID.
func (c *Configurations) configs(ctx context.Context, hubName string) ([]*compiledConfig, error) {
	h := strings.ToLower(hubName)
	c.mu.Lock()
	cs, ok := c.cache[h]
	c.mu.Unlock()
	if ok {
		return cs, nil
	}
	recs, err := c.store.List(ctx, store.KindConfiguration, store.ListOptions{Index: h})
	if err != nil {
		return nil, fmt.Errorf("hub: list configurations: %w", err)
	}
	cs = make([]*compiledConfig, 0, len(recs))
	for _, r := range recs {
		cc, err := decodeConfig(r)
		if err != nil {
			// A stored configuration berth cannot read is skipped, not
			// fatal for the hub's others.
			c.log.Error("hub: unreadable configuration skipped", "key", r.Key, "error", err.Error())
			continue
		}
		cs = append(cs, cc)
	}
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i].rec, cs[j].rec
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if !a.Created.Equal(b.Created) {
			return a.Created.After(b.Created)
		}
		return a.ID < b.ID
	})
	c.mu.Lock()
	c.cache[h] = cs
	c.mu.Unlock()
	return cs, nil
}

func decodeConfig(r store.Record) (*compiledConfig, error) {
	var rec configRecord
	if err := json.Unmarshal(r.Data, &rec); err != nil {
		return nil, fmt.Errorf("hub: decode configuration: %w", err)
	}
	return compile(rec, r.ETag)
}

// matching returns the configurations whose condition the twin document
// meets, in order of precedence: device configurations for a device twin
// (from devices), module configurations for a module twin (from
// devices.modules).
func matching(doc map[string]any, from hubquery.Collection, cs []*compiledConfig) []*compiledConfig {
	var out []*compiledConfig
	for _, cc := range cs {
		if cc.patch != nil && cc.collection() == from && cc.target != nil && cc.target.From == from && cc.target.Matches(doc) {
			out = append(out, cc)
		}
	}
	return out
}

// errNoTwinChange ends a twin update that has nothing to write.
var errNoTwinChange = errors.New("hub: twin unchanged")

// combined is what the matching configurations write together: every
// one's content, a path two of them set taking the value of the one with
// precedence (IoT Hub: "the Content from the highest priority
// configuration will apply"), the paths they set, and a digest of the
// whole that says whether a twin already has it.
func combined(ms []*compiledConfig) (patch map[string]any, paths [][]string, digest string) {
	patch = map[string]any{}
	seen := map[string]bool{}
	for i := len(ms) - 1; i >= 0; i-- { // lowest precedence first
		overlay(patch, ms[i].appliedPatch())
		for _, p := range ms[i].paths {
			if k := strings.Join(p, "\x00"); !seen[k] {
				seen[k] = true
				paths = append(paths, p)
			}
		}
	}
	if len(ms) == 0 {
		return patch, nil, ""
	}
	b, _ := json.Marshal(patch) // decoded JSON: always encodes; maps in key order
	sum := sha256.Sum256(b)
	return patch, paths, hex.EncodeToString(sum[:16])
}

// apply brings one twin to what the configurations make of it and returns
// the desired patch the device is to hear (nil for none), or
// errNoTwinChange. Every matching configuration is applied (berth applies
// at once, so none stays Targeted); what they wrote before and no longer
// write is removed.
func apply(d *Device, tw *twinRecord, cs []*compiledConfig, now time.Time) (map[string]any, error) {
	var ms []*compiledConfig
	if d.moduleID != "" {
		ms = matching(moduleTwinDocument(d, tw, ""), hubquery.Modules, cs)
	} else {
		ms = matching(twinDocument(d, tw, ""), hubquery.Devices, cs)
	}
	content, paths, digest := combined(ms)
	same := digest == tw.ConfigDigest && len(ms) == len(tw.Configs)
	for _, m := range ms {
		if e, ok := tw.Configs[m.rec.ID]; !ok || e.Status != ConfigurationApplied {
			same = false
		}
	}
	if same {
		return nil, errNoTwinChange
	}
	patch := map[string]any{}
	if digest != tw.ConfigDigest {
		for _, p := range tw.ConfigPaths {
			if len(p) > 0 {
				setPath(patch, p, nil)
			}
		}
		overlay(patch, content)
	}
	var next map[string]*twinConfig
	for _, m := range ms {
		if next == nil {
			next = map[string]*twinConfig{}
		}
		next[m.rec.ID] = &twinConfig{Status: ConfigurationApplied}
	}
	tw.Configs, tw.ConfigPaths, tw.ConfigDigest = next, paths, digest
	if len(patch) == 0 {
		return nil, nil
	}
	// mergeTwin copies what it changes: tw's maps may be the cached twin's.
	props, meta := mergeTwin(tw.Desired.Props, tw.Desired.Meta, patch, metaStamp{lastUpdated: now.Format(twinTimeLayout), version: tw.Desired.Version + 1})
	n := twinSize(props)
	if n > MaxDesiredSize {
		return nil, twinTooLarge("desired", n, MaxDesiredSize)
	}
	// A new section, not a change of the old one's fields: the size kept
	// with it (Twins' size checks) goes with the new props.
	tw.Desired = twinSection{Props: props, Meta: meta, Version: tw.Desired.Version + 1, size: n}
	tw.Version++
	return patch, nil
}

// overlay merges src into dst: objects member by member, anything else
// replaces.
func overlay(dst, src map[string]any) {
	for k, v := range src {
		if sv, ok := v.(map[string]any); ok {
			if dv, ok := dst[k].(map[string]any); ok {
				overlay(dv, sv)
				continue
			}
		}
		dst[k] = v
	}
}

// Reconcile evaluates one device, or one module (id "device/module",
// TwinID), against its hub's configurations now and writes its twin if
// that changes anything. A device's modules are reconciled with it when
// the hub has module configurations: their documents carry the device's
// status.
func (c *Configurations) Reconcile(ctx context.Context, hubName, id string) error {
	cs, err := c.configs(ctx, hubName)
	if err != nil {
		return err
	}
	if err := c.reconcileOne(ctx, hubName, id, cs); err != nil {
		return err
	}
	if strings.Contains(id, "/") || !hasModuleConfigs(cs) {
		return nil
	}
	mods, err := c.twins.reg.listModules(ctx, hubName, id)
	if err != nil {
		return fmt.Errorf("hub: apply configurations to the modules of %s: %w", id, err)
	}
	var errs []error
	for _, m := range mods {
		errs = append(errs, c.reconcileOne(ctx, hubName, TwinID(m.DeviceID, m.ModuleID), cs))
	}
	return errors.Join(errs...)
}

func hasModuleConfigs(cs []*compiledConfig) bool {
	for _, cc := range cs {
		if cc.modules {
			return true
		}
	}
	return false
}

// gone reports whether err says the device or module no longer exists.
func gone(err error) bool {
	var ae *azerr.Error
	return errors.As(err, &ae) && (ae.Code == azerr.HubDeviceNotFound || ae.Code == azerr.HubModuleNotFound)
}

func (c *Configurations) reconcileOne(ctx context.Context, hubName, id string, cs []*compiledConfig) error {
	d, err := c.twins.reg.identity(ctx, hubName, id)
	if gone(err) {
		return nil // deleted meanwhile: nothing to apply
	}
	if err != nil {
		return err
	}
	_, _, err = c.twins.update(ctx, hubName, id, "", func(tw *twinRecord, now time.Time) (map[string]any, error) {
		return apply(d, tw, cs, now)
	})
	switch {
	case errors.Is(err, errNoTwinChange), gone(err):
		return nil
	case err != nil:
		return fmt.Errorf("hub: apply configurations to %s: %w", id, err)
	}
	return nil
}

// Sweep evaluates every device of a hub and reconciles those whose twin
// is not what the configurations make of it. The scan only reads; a twin
// is written only where something changes. Only a full sweep (after a
// configuration changed, and at start) reconciles every twin a
// configuration targets or targeted, which a change of priority or
// content needs; otherwise (the periodic sweep) a twin is reconciled when
// the set of configurations it matches differs from the one it lists.
func (c *Configurations) Sweep(ctx context.Context, hubName string, full bool) error {
	cs, err := c.configs(ctx, hubName)
	if err != nil {
		return err
	}
	var todo []string
	check := func(from hubquery.Collection) func(string, map[string]any) (bool, error) {
		return func(id string, doc map[string]any) (bool, error) {
			ms := matching(doc, from, cs)
			have, _ := doc["configurations"].(map[string]any)
			same := len(ms) == len(have) && !(full && len(ms) > 0)
			for _, m := range ms {
				e, _ := have[m.rec.ID].(map[string]any)
				if e == nil || e["status"] != ConfigurationApplied {
					same = false
				}
			}
			if !same {
				todo = append(todo, id)
			}
			return true, nil
		}
	}
	if err := (&twinScan{t: c.twins, hubName: hubName}).source(ctx, "", check(hubquery.Devices)); err != nil {
		return fmt.Errorf("hub: sweep configurations: %w", err)
	}
	// Module twins too, also when no module configuration is left: their
	// twins may still list a deleted one.
	if err := (&moduleScan{t: c.twins, hubName: hubName}).source(ctx, "", check(hubquery.Modules)); err != nil {
		return fmt.Errorf("hub: sweep configurations of modules: %w", err)
	}
	var errs []error
	for _, id := range todo {
		if err := c.reconcileOne(ctx, hubName, id, cs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Settle applies everything queued now (what Run does when woken), for
// tests and for Run.
func (c *Configurations) Settle(ctx context.Context) {
	c.mu.Lock()
	sweeps, pending := c.sweeps, c.pending
	c.sweeps, c.pending = map[string]bool{}, map[string]map[string]struct{}{}
	c.mu.Unlock()
	for h, full := range sweeps {
		if err := c.Sweep(ctx, h, full); err != nil && ctx.Err() == nil {
			c.log.Error("hub: configurations sweep failed", "hub", h, "error", err.Error())
		}
	}
	for h, ids := range pending {
		if _, done := sweeps[h]; done {
			continue
		}
		for id := range ids {
			if err := c.Reconcile(ctx, h, id); err != nil && ctx.Err() == nil {
				c.log.Error("hub: applying configurations failed", "hub", h, "device", id, "error", err.Error())
			}
		}
	}
}

// Run applies queued changes as they come and, at start and every
// interval, reloads every hub's configurations from the store and sweeps
// the hubs that have any (or had: their twins may still name a deleted
// one). It returns when ctx ends.
func (c *Configurations) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	// At start, what changed while berth was down (or before this node
	// started) is applied at once rather than after the first interval.
	c.refresh(ctx, true)
	c.Settle(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-t.C:
			c.refresh(ctx, false)
		}
		c.Settle(ctx)
	}
}

// refresh forgets the cached configurations and queues a sweep (full or
// not) of every hub that has or had some.
func (c *Configurations) refresh(ctx context.Context, full bool) {
	recs, err := c.store.List(ctx, store.KindConfiguration, store.ListOptions{})
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("hub: list configurations failed", "error", err.Error())
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for h, cs := range c.cache {
		if len(cs) > 0 {
			c.sweeps[h] = c.sweeps[h] || full
		}
	}
	for _, r := range recs {
		c.sweeps[r.Index] = c.sweeps[r.Index] || full
	}
	c.cache = map[string][]*compiledConfig{}
}

// ---- the service API ----
//
// Each call is one throttled configuration operation (throttle.HubConfiguration,
// 20/min/unit on every tier, as IoT Hub counts "configurations and edge
// deployments"); the background application of configurations is not.

// Get returns one configuration with its metrics counted now.
func (c *Configurations) Get(ctx context.Context, hubName, id string) (*Configuration, error) {
	if err := c.twins.reg.throttled(hubName, throttle.HubConfiguration, 1); err != nil {
		return nil, err
	}
	rec, err := c.store.Get(ctx, store.KindConfiguration, configKey(hubName, id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, azerr.Newf(azerr.HubConfigurationNotFound, "The configuration '%s' does not exist.", id)
	}
	if err != nil {
		return nil, fmt.Errorf("hub: get configuration %s: %w", id, err)
	}
	cc, err := decodeConfig(rec)
	if err != nil {
		return nil, err
	}
	out, err := c.render(ctx, hubName, []*compiledConfig{cc}, true)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// List returns a hub's configurations in ID order, at most top (<= 0: all),
// with their metrics.
func (c *Configurations) List(ctx context.Context, hubName string, top int) ([]*Configuration, error) {
	if err := c.twins.reg.throttled(hubName, throttle.HubConfiguration, 1); err != nil {
		return nil, err
	}
	recs, err := c.store.List(ctx, store.KindConfiguration, store.ListOptions{Index: strings.ToLower(hubName), Limit: top})
	if err != nil {
		return nil, fmt.Errorf("hub: list configurations: %w", err)
	}
	cs := make([]*compiledConfig, 0, len(recs))
	for _, r := range recs {
		cc, err := decodeConfig(r)
		if err != nil {
			return nil, err
		}
		cs = append(cs, cc)
	}
	return c.render(ctx, hubName, cs, true)
}

// render renders cs and, with count, counts their metrics in one scan of
// the hub's twins (without, every result is 0).
func (c *Configurations) render(ctx context.Context, hubName string, cs []*compiledConfig, count bool) ([]*Configuration, error) {
	out := make([]*Configuration, len(cs))
	for i, cc := range cs {
		r := cc.rec
		sysQ := map[string]string{
			"targetedCount": "",
			"appliedCount":  fmt.Sprintf("SELECT deviceId FROM devices WHERE configurations.[[%s]].status = '%s'", r.ID, ConfigurationApplied),
		}
		if cc.modules {
			sysQ["appliedCount"] = fmt.Sprintf("SELECT deviceId, moduleId FROM devices.modules WHERE configurations.[[%s]].status = '%s'", r.ID, ConfigurationApplied)
		}
		if tc := strings.TrimSpace(r.TargetCondition); tc != "" {
			if cc.target != nil && cc.target.From != hubquery.Devices {
				sysQ["targetedCount"] = "SELECT deviceId " + tc
			} else {
				sysQ["targetedCount"] = "SELECT deviceId FROM devices WHERE " + tc
			}
		}
		labels := r.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		queries := r.Metrics
		if queries == nil {
			queries = map[string]string{}
		}
		out[i] = &Configuration{
			ID: r.ID, SchemaVersion: r.SchemaVersion, Labels: labels, Content: r.Content,
			TargetCondition: r.TargetCondition, CreatedTimeUTC: r.Created, LastUpdatedTimeUTC: r.Updated,
			Priority: r.Priority, ETag: cc.etag,
			SystemMetrics: ConfigurationMetrics{Results: map[string]int{"targetedCount": 0, "appliedCount": 0}, Queries: sysQ},
			Metrics:       ConfigurationMetrics{Results: map[string]int{}, Queries: queries},
		}
		for name := range cc.metrics {
			out[i].Metrics.Results[name] = 0
		}
	}
	if len(cs) == 0 || !count {
		return out, nil
	}
	count1 := func(from hubquery.Collection) func(string, map[string]any) (bool, error) {
		return func(_ string, doc map[string]any) (bool, error) {
			confs, _ := doc["configurations"].(map[string]any)
			for i, cc := range cs {
				if cc.collection() == from {
					if cc.target != nil && cc.target.From == from && cc.target.Matches(doc) {
						out[i].SystemMetrics.Results["targetedCount"]++
					}
					if e, _ := confs[cc.rec.ID].(map[string]any); e != nil && e["status"] == ConfigurationApplied {
						out[i].SystemMetrics.Results["appliedCount"]++
					}
				}
				for name, q := range cc.metrics {
					if q.From == from && q.Matches(doc) {
						out[i].Metrics.Results[name]++
					}
				}
			}
			return true, nil
		}
	}
	if err := (&twinScan{t: c.twins, hubName: hubName}).source(ctx, "", count1(hubquery.Devices)); err != nil {
		return nil, fmt.Errorf("hub: count configuration metrics: %w", err)
	}
	modules := false
	for _, cc := range cs {
		modules = modules || cc.modules
		for _, q := range cc.metrics {
			modules = modules || q.From == hubquery.Modules
		}
	}
	if modules {
		if err := (&moduleScan{t: c.twins, hubName: hubName}).source(ctx, "", count1(hubquery.Modules)); err != nil {
			return nil, fmt.Errorf("hub: count configuration metrics over modules: %w", err)
		}
	}
	return out, nil
}

// Put creates a configuration (ifMatch "") or replaces one under ifMatch
// (an etag, or "*" for any). A replacement may change the labels, target
// condition, priority and metrics, never the content, as IoT Hub allows.
func (c *Configurations) Put(ctx context.Context, hubName string, in *Configuration, ifMatch string) (*Configuration, error) {
	if in == nil {
		return nil, azerr.Newf(azerr.HubArgumentNull, "The configuration is missing.")
	}
	if err := c.twins.reg.throttled(hubName, throttle.HubConfiguration, 1); err != nil {
		return nil, err
	}
	now := c.twins.now().UTC()
	rec := configRecord{
		ID: in.ID, SchemaVersion: in.SchemaVersion, Labels: in.Labels, Content: in.Content,
		TargetCondition: in.TargetCondition, Priority: in.Priority, Metrics: in.Metrics.Queries,
		Created: now, Updated: now,
	}
	if rec.SchemaVersion == "" {
		rec.SchemaVersion = ConfigurationSchemaVersion
	}
	compiled, err := compile(rec, "")
	if err != nil {
		return nil, err
	}
	if compiled.modules && compiled.target != nil && compiled.target.From != hubquery.Modules {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The target condition of a module configuration must start with FROM devices.modules WHERE.")
	}
	key := configKey(hubName, in.ID)
	cond := store.Cond{IfNotExists: true}
	if ifMatch = strings.TrimSpace(ifMatch); ifMatch == "" {
		if err := c.checkCount(ctx, hubName, compiled.edge()); err != nil {
			return nil, err
		}
	} else {
		cur, err := c.store.Get(ctx, store.KindConfiguration, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil, azerr.Newf(azerr.HubConfigurationNotFound, "The configuration '%s' does not exist.", in.ID)
		}
		if err != nil {
			return nil, fmt.Errorf("hub: get configuration %s: %w", in.ID, err)
		}
		if want := unquote(ifMatch); want != "*" && want != cur.ETag {
			return nil, azerr.Newf(azerr.HubPreconditionFailed, "The configuration's etag does not match If-Match.")
		}
		var old configRecord
		if err := json.Unmarshal(cur.Data, &old); err != nil {
			return nil, fmt.Errorf("hub: decode configuration %s: %w", in.ID, err)
		}
		same, err := sameContent(old.Content, rec.Content)
		if err != nil {
			return nil, err
		}
		if !same {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "The content of configuration '%s' cannot be changed; create a new configuration instead.", in.ID)
		}
		rec.Content = old.Content
		rec.Created = old.Created
		cond = store.Cond{IfMatch: cur.ETag}
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("hub: encode configuration: %w", err)
	}
	saved, err := c.store.Put(ctx, store.Record{Kind: store.KindConfiguration, Key: key, Index: strings.ToLower(hubName), Data: data}, cond)
	switch {
	case errors.Is(err, store.ErrExists):
		return nil, azerr.Newf(azerr.HubConfigurationAlreadyExists, "A configuration with ID '%s' already exists.", in.ID)
	case errors.Is(err, store.ErrPreconditionFailed):
		return nil, azerr.Newf(azerr.HubPreconditionFailed, "The configuration's etag does not match If-Match.")
	case errors.Is(err, store.ErrNotFound):
		return nil, azerr.Newf(azerr.HubConfigurationNotFound, "The configuration '%s' does not exist.", in.ID)
	case err != nil:
		return nil, fmt.Errorf("hub: put configuration %s: %w", in.ID, err)
	}
	c.hubChanged(hubName)
	cc, err := decodeConfig(saved)
	if err != nil {
		return nil, err
	}
	// Not counted: a hub-wide scan per write would make a configuration
	// PUT as slow as the registry is large, and the answer would count
	// what the background has not applied yet anyway (IoT Hub answers
	// zeros too, before its first run).
	out, err := c.render(ctx, hubName, []*compiledConfig{cc}, false)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// MaxConfigurations is how many automatic device and module
// configurations a hub may have, and apart from them how many IoT Edge
// deployments: IoT Hub's limit for paid hubs (docs/configurations.md).
const MaxConfigurations = 100

// checkCount refuses a new configuration beyond MaxConfigurations of its
// kind (device and module configurations, or IoT Edge deployments) with
// IoT Hub's 413101 ConfigurationCountLimitExceeded. Checked before the
// write: two creates at the same moment on two nodes may both pass it.
func (c *Configurations) checkCount(ctx context.Context, hubName string, edge bool) error {
	recs, err := c.store.List(ctx, store.KindConfiguration, store.ListOptions{Index: strings.ToLower(hubName)})
	if err != nil {
		return fmt.Errorf("hub: count configurations: %w", err)
	}
	n := 0
	for _, r := range recs {
		var rec configRecord
		if err := json.Unmarshal(r.Data, &rec); err != nil {
			return fmt.Errorf("hub: decode configuration: %w", err)
		}
		if (len(rec.Content.ModulesContent) > 0) == edge {
			n++
		}
	}
	if n >= MaxConfigurations {
		kind := "automatic device and module configurations"
		if edge {
			kind = "IoT Edge deployments"
		}
		return azerr.Newf(azerr.HubConfigurationCountLimitExceeded, "The hub has %d %s, the limit; delete one before creating another.", n, kind)
	}
	return nil
}

// sameContent compares two contents as JSON values.
func sameContent(a, b ConfigurationContent) (bool, error) {
	canon := func(v ConfigurationContent) ([]byte, error) {
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		var x any
		if err := json.Unmarshal(raw, &x); err != nil {
			return nil, err
		}
		return json.Marshal(x) // maps marshal in key order
	}
	ca, err := canon(a)
	if err != nil {
		return false, fmt.Errorf("hub: compare configuration content: %w", err)
	}
	cb, err := canon(b)
	if err != nil {
		return false, fmt.Errorf("hub: compare configuration content: %w", err)
	}
	return bytes.Equal(ca, cb), nil
}

// Delete removes a configuration under ifMatch ("" or "*": any). The
// twins it applied to lose its content and take the next configuration in
// line, when Run next sweeps the hub.
func (c *Configurations) Delete(ctx context.Context, hubName, id, ifMatch string) error {
	if err := c.twins.reg.throttled(hubName, throttle.HubConfiguration, 1); err != nil {
		return err
	}
	want := unquote(strings.TrimSpace(ifMatch))
	if want == "*" {
		want = ""
	}
	err := c.store.Delete(ctx, store.KindConfiguration, configKey(hubName, id), want)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return azerr.Newf(azerr.HubConfigurationNotFound, "The configuration '%s' does not exist.", id)
	case errors.Is(err, store.ErrPreconditionFailed):
		return azerr.Newf(azerr.HubPreconditionFailed, "The configuration's etag does not match If-Match.")
	case err != nil:
		return fmt.Errorf("hub: delete configuration %s: %w", id, err)
	}
	c.hubChanged(hubName)
	return nil
}

// TestQueries reports what is wrong with a target condition and custom
// metric queries, without storing anything.
func (c *Configurations) TestQueries(hubName string, in *ConfigurationQueriesTest) (*ConfigurationQueriesResult, error) {
	if err := c.twins.reg.throttled(hubName, throttle.HubConfiguration, 1); err != nil {
		return nil, err
	}
	out := &ConfigurationQueriesResult{CustomMetricQueryErrors: map[string]string{}}
	if in == nil {
		return out, nil
	}
	if _, err := parseTargetCondition(in.TargetCondition); err != nil {
		out.TargetConditionError = err.Error()
	}
	for name, q := range in.CustomMetricQueries {
		if _, err := parseMetricQuery(q); err != nil {
			out.CustomMetricQueryErrors[name] = err.Error()
		}
	}
	return out, nil
}

// ApplyContent applies configuration content to one device at once, as
// IoT Hub's applyConfigurationContent does for IoT Edge deployments:
// deviceContent to the device's twin, modulesContent to the twins of its
// modules (each must exist). Everything is checked before anything is
// written.
func (c *Configurations) ApplyContent(ctx context.Context, hubName, deviceID string, content *ConfigurationContent) error {
	if err := c.twins.reg.throttled(hubName, throttle.HubConfiguration, 1); err != nil {
		return err
	}
	if content == nil || len(content.DeviceContent) == 0 && len(content.ModulesContent) == 0 {
		return azerr.Newf(azerr.HubArgumentInvalid, "The content must have deviceContent or modulesContent.")
	}
	if len(content.ModuleContent) > 0 {
		return azerr.Newf(azerr.HubArgumentInvalid, "moduleContent applies to modules chosen by a target condition; give modulesContent, by module ID.")
	}
	reg := c.twins.reg
	if _, err := reg.Get(ctx, hubName, deviceID); err != nil {
		return err
	}
	type write struct {
		twinID string
		patch  map[string]any
	}
	var writes []write
	if len(content.DeviceContent) > 0 {
		p, _, err := contentPatch(content.DeviceContent)
		if err != nil {
			return err
		}
		writes = append(writes, write{deviceID, p})
	}
	mods := make([]string, 0, len(content.ModulesContent))
	for m := range content.ModulesContent {
		mods = append(mods, m)
	}
	sort.Strings(mods)
	for _, m := range mods {
		var section map[string]json.RawMessage
		if err := json.Unmarshal(content.ModulesContent[m], &section); err != nil {
			return azerr.Newf(azerr.HubArgumentInvalid, "The content of module %q must be a JSON object of desired paths.", m)
		}
		p, _, err := contentPatch(section)
		if err != nil {
			return err
		}
		if _, err := reg.getModule(ctx, hubName, deviceID, m); err != nil {
			return err
		}
		writes = append(writes, write{deviceID + "/" + m, p})
	}
	for _, w := range writes {
		if _, err := c.twins.write(ctx, hubName, w.twinID, "", serviceWrite{desired: w.patch}); err != nil {
			return err
		}
	}
	return nil
}
