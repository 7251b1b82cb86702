package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hubquery"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/throttle"
)

// Twin is IoT Hub's Twin document as the service API shows it
// (docs/spec/iothub-protocol.md#twins-service-side). Tags and Properties are
// rendered JSON.
type Twin struct {
	DeviceID                  string          `json:"deviceId"`
	ModuleID                  string          `json:"moduleId,omitempty"` // module twins only
	ETag                      string          `json:"etag"`
	DeviceETag                string          `json:"deviceEtag"`
	Status                    string          `json:"status"`
	StatusReason              *string         `json:"statusReason"`
	StatusUpdateTime          time.Time       `json:"statusUpdateTime"`
	ConnectionState           string          `json:"connectionState"`
	LastActivityTime          time.Time       `json:"lastActivityTime"`
	CloudToDeviceMessageCount int             `json:"cloudToDeviceMessageCount"`
	AuthenticationType        string          `json:"authenticationType"`
	X509Thumbprint            *X509Thumbprint `json:"x509Thumbprint"`
	Capabilities              *Capabilities   `json:"capabilities"`
	DeviceScope               *string         `json:"deviceScope,omitempty"`
	ParentScopes              []string        `json:"parentScopes,omitempty"`
	Version                   int64           `json:"version"`
	Tags                      json.RawMessage `json:"tags"`
	Properties                TwinProperties  `json:"properties"`
	// Configurations are the automatic device configurations that target
	// the device, each with its status (docs/configurations.md).
	Configurations map[string]TwinConfiguration `json:"configurations,omitempty"`
}

// TwinProperties holds the desired and reported sections, each with its
// "$metadata" and "$version".
type TwinProperties struct {
	Desired  json.RawMessage `json:"desired"`
	Reported json.RawMessage `json:"reported"`
}

// InitialTwin is the twin a device starts with when DPS creates it: an
// enrollment's (or an allocation webhook's) tags and desired properties.
type InitialTwin struct {
	Tags    json.RawMessage
	Desired json.RawMessage
}

// twinRecord is the stored twin. It names the device generation it belongs
// to: a twin left behind by a deleted device of the same ID is not the new
// device's.
type twinRecord struct {
	GenerationID string         `json:"generationId"`
	Version      int64          `json:"version"`
	Tags         map[string]any `json:"tags"`
	Desired      twinSection    `json:"desired"`
	Reported     twinSection    `json:"reported"`
	// Configs are the automatic configurations applied to the device
	// (configurations.go); ConfigPaths the desired members they wrote (to
	// remove those they no longer write, even once a configuration is
	// gone) and ConfigDigest a digest of what they wrote together.
	Configs      map[string]*twinConfig `json:"configurations,omitempty"`
	ConfigPaths  [][]string             `json:"configPaths,omitempty"`
	ConfigDigest string                 `json:"configDigest,omitempty"`

	tagsSize int // twinSize(Tags), kept up to date by updates
}

type twinSection struct {
	Props   map[string]any `json:"props"`
	Meta    map[string]any `json:"meta"`
	Version int64          `json:"version"`
	// CMeta is Meta's compact form as stored (twinenc.go); decoding
	// expands it into Meta.
	CMeta map[string]any `json:"cmeta,omitempty"`

	// size is twinSize(Props): computed when the record is decoded and
	// then moved by each patch's sizeDelta, so that checking a small
	// patch against the limit does not walk the whole section.
	size int
}

// twinTimeLayout is how $metadata times are written (Azure's 7 digits).
const twinTimeLayout = "2006-01-02T15:04:05.0000000Z"

func newTwinRecord(generationID string, now time.Time) *twinRecord {
	ts := now.UTC().Format(twinTimeLayout)
	return &twinRecord{
		GenerationID: generationID,
		Version:      1,
		Tags:         map[string]any{},
		Desired:      twinSection{Props: map[string]any{}, Meta: map[string]any{"$lastUpdated": ts}, Version: 1},
		Reported:     twinSection{Props: map[string]any{}, Meta: map[string]any{"$lastUpdated": ts}, Version: 1},
	}
}

func decodeTwinRecord(data []byte) (*twinRecord, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var t twinRecord
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("hub: decode twin: %w", err)
	}
	for _, s := range []*twinSection{&t.Desired, &t.Reported} {
		if s.CMeta != nil {
			s.Meta, s.CMeta = expandMeta(s.CMeta, s.Props, metaMark{}), nil
		}
	}
	for _, m := range []*map[string]any{&t.Tags, &t.Desired.Props, &t.Desired.Meta, &t.Reported.Props, &t.Reported.Meta} {
		if *m == nil {
			*m = map[string]any{}
		}
	}
	t.tagsSize, t.Desired.size, t.Reported.size = twinSize(t.Tags), twinSize(t.Desired.Props), twinSize(t.Reported.Props)
	return &t, nil
}

func twinRecordFor(hubName, deviceID string, t *twinRecord) (store.Record, error) {
	data, err := json.Marshal(t)
	if err != nil {
		return store.Record{}, fmt.Errorf("hub: encode twin: %w", err)
	}
	return store.Record{Kind: store.KindTwin, Key: deviceKey(hubName, deviceID), Data: data}, nil
}

// Twins keeps device and module twins and pushes desired-property changes
// to connected devices and modules. Its methods name a twin by TwinID:
// "device" or "device/module".
type Twins struct {
	store store.Store
	reg   *Registry
	links *Links
	now   func() time.Time
	obs   Observer
	// deviceJobs is the devices.jobs collection (Jobs.deviceJobSource),
	// nil without a job service.
	deviceJobs func(hubName string) hubquery.Source
	// changed hears of every tags, desired or reported change of a device
	// twin (the configurations service re-evaluates the device); nil:
	// none. Set before use (NewServices).
	changed func(hubName, id string)

	// locks serialise updates of one device's twin on this node, so that
	// desired notifications leave in version order. Across nodes the
	// store's ETag condition keeps updates from being lost.
	seed  maphash.Seed
	locks [64]sync.Mutex

	cache *twinCache // decoded twins of recent writes, see twinenc.go
}

// NewTwins returns the twin service; links may be nil (no device is ever
// notified).
func NewTwins(st store.Store, reg *Registry, links *Links) *Twins {
	return &Twins{store: st, reg: reg, links: links, now: reg.now, seed: maphash.MakeSeed(), cache: newTwinCache(twinCacheLimit)}
}

func (t *Twins) lock(hubName, id string) func() {
	m := &t.locks[maphash.String(t.seed, deviceKey(hubName, id))%uint64(len(t.locks))]
	m.Lock()
	return m.Unlock
}

// load returns the device and its twin (never to be modified: it may be
// the cached one), creating the twin record when the device has none yet
// (or only a previous generation's).
func (t *Twins) load(ctx context.Context, hubName, id string) (*Device, *cachedTwin, error) {
	d, err := t.reg.identity(ctx, hubName, id)
	if err != nil {
		return nil, nil, err
	}
	key := deviceKey(hubName, id)
	rec, err := t.store.Get(ctx, store.KindTwin, key)
	switch {
	case err == nil:
		if c := t.cache.get(key, rec.ETag); c != nil && c.tw.GenerationID == d.GenerationID {
			return d, c, nil
		}
		tw, err := decodeTwinRecord(rec.Data)
		if err != nil {
			return nil, nil, err
		}
		if tw.GenerationID == d.GenerationID {
			return d, &cachedTwin{etag: rec.ETag, tw: tw, size: len(rec.Data)}, nil
		}
	case !errors.Is(err, store.ErrNotFound):
		return nil, nil, fmt.Errorf("hub: get twin %s: %w", id, err)
	}
	tw := newTwinRecord(d.GenerationID, t.now())
	nrec, err := twinRecordFor(hubName, id, tw)
	if err != nil {
		return nil, nil, err
	}
	cond := store.Cond{IfNotExists: true}
	if rec.ETag != "" {
		cond = store.Cond{IfMatch: rec.ETag}
	}
	nrec, err = t.store.Put(ctx, nrec, cond)
	if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrPreconditionFailed) {
		return nil, nil, errRetryTwin
	}
	if err != nil {
		return nil, nil, fmt.Errorf("hub: create twin %s: %w", id, err)
	}
	return d, &cachedTwin{etag: nrec.ETag, tw: tw, size: len(nrec.Data)}, nil
}

// errRetryTwin says another writer changed the twin between read and
// write; update retries.
var errRetryTwin = errors.New("hub: twin changed concurrently")

// Get returns a device's twin as the service API shows it.
func (t *Twins) Get(ctx context.Context, hubName, id string) (_ *Twin, err error) {
	defer observeOp(t.obs, "twin.get", time.Now(), &err)
	if err := t.reg.throttled(hubName, throttle.HubTwinRead, 1); err != nil {
		return nil, err
	}
	for range 5 {
		d, c, err := t.load(ctx, hubName, id)
		if errors.Is(err, errRetryTwin) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if d.moduleID == "" {
			if err := t.reg.countQueue(ctx, hubName, d); err != nil {
				return nil, err
			}
			t.reg.overlayCluster(ctx, hubName, d)
		}
		return t.render(d, c)
	}
	return nil, azerr.Newf(azerr.HubServiceUnavailable, "The twin of %s is changing too often; try again.", id)
}

// DeviceDocument returns what a device's twin GET answers: the desired and
// reported properties with their "$version", without tags or $metadata
// (docs/spec/iothub-protocol.md#twin-documents).
func (t *Twins) DeviceDocument(ctx context.Context, hubName, id string) ([]byte, error) {
	if err := t.reg.fault(ctx, FaultTwin, hubName, id); err != nil {
		return nil, err
	}
	if err := t.reg.throttled(hubName, throttle.HubTwinRead, 1); err != nil {
		return nil, err
	}
	for range 5 {
		_, c, err := t.load(ctx, hubName, id)
		if errors.Is(err, errRetryTwin) {
			continue
		}
		if err != nil {
			return nil, err
		}
		tw := c.tw
		desired, err := sectionJSON(tw.Desired.Props, tw.Desired.Version, nil, c.memo.jsonMemo())
		if err != nil {
			return nil, err
		}
		reported, err := sectionJSON(tw.Reported.Props, tw.Reported.Version, nil, c.memo.jsonMemo())
		if err != nil {
			return nil, err
		}
		return json.Marshal(map[string]json.RawMessage{"desired": desired, "reported": reported})
	}
	return nil, azerr.Newf(azerr.HubServiceUnavailable, "The twin of %s is changing too often; try again.", id)
}

// sectionJSON renders a desired or reported section as IoT Hub does: the
// properties, then "$metadata" (when meta is not nil) and "$version" last.
// memo (may be nil) holds the JSON of the twin's unchanged objects.
func sectionJSON(props map[string]any, version int64, meta map[string]any, memo encMemo) ([]byte, error) {
	e := &twinEncoder{prev: memo}
	b, err := e.object(nil, props)
	if err != nil {
		return nil, fmt.Errorf("hub: render twin section: %w", err)
	}
	b = b[:len(b)-1] // drop '}'
	sep := func() {
		if len(b) > 1 {
			b = append(b, ',')
		}
	}
	if meta != nil {
		sep()
		b = append(b, `"$metadata":`...)
		if b, err = e.object(b, meta); err != nil {
			return nil, fmt.Errorf("hub: render twin metadata: %w", err)
		}
	}
	sep()
	b = fmt.Appendf(b, `"$version":%d}`, version)
	return b, nil
}

func (t *Twins) render(d *Device, c *cachedTwin) (*Twin, error) {
	tw, etag := c.tw, c.etag
	tags, err := (&twinEncoder{prev: c.memo.jsonMemo()}).object(nil, tw.Tags)
	if err != nil {
		return nil, fmt.Errorf("hub: render twin: %w", err)
	}
	desired, err := sectionJSON(tw.Desired.Props, tw.Desired.Version, tw.Desired.Meta, c.memo.jsonMemo())
	if err != nil {
		return nil, err
	}
	reported, err := sectionJSON(tw.Reported.Props, tw.Reported.Version, tw.Reported.Meta, c.memo.jsonMemo())
	if err != nil {
		return nil, err
	}
	out := &Twin{
		DeviceID:                  d.DeviceID,
		ModuleID:                  d.moduleID,
		ETag:                      etag,
		DeviceETag:                d.ETag,
		Status:                    d.Status,
		StatusReason:              d.StatusReason,
		StatusUpdateTime:          d.StatusUpdatedTime,
		ConnectionState:           d.ConnectionState,
		LastActivityTime:          d.LastActivityTime,
		CloudToDeviceMessageCount: d.CloudToDeviceMessageCount,
		AuthenticationType:        "sas",
		Capabilities:              d.Capabilities,
		DeviceScope:               d.DeviceScope,
		ParentScopes:              d.ParentScopes,
		Version:                   tw.Version,
		Tags:                      tags,
		Properties:                TwinProperties{Desired: desired, Reported: reported},
		Configurations:            renderTwinConfigs(tw.Configs),
	}
	if d.Authentication != nil {
		out.AuthenticationType = d.Authentication.Type
		out.X509Thumbprint = d.Authentication.X509Thumbprint
	}
	if out.X509Thumbprint == nil {
		out.X509Thumbprint = &X509Thumbprint{}
	}
	return out, nil
}

// twinChange is one update: it sets the record's fields to new values
// (never modifying the maps it holds: they may be shared with the cached
// previous version, see mergeTwin) and reports whether it changed desired
// properties (and with which patch, for the device's notification).
type twinChange func(tw *twinRecord, now time.Time) (desiredPatch map[string]any, err error)

// update runs change under the device's lock with optimistic concurrency:
// a client If-Match must equal the twin's ETag; without one, a concurrent
// writer (another node) makes it read and try again.
func (t *Twins) update(ctx context.Context, hubName, id, ifMatch string, change twinChange) (*Device, *cachedTwin, error) {
	unlock := t.lock(hubName, id)
	defer unlock()
	want := unquote(ifMatch)
	if want == "*" {
		want = ""
	}
	key := deviceKey(hubName, id)
	for range 5 {
		d, cur, err := t.load(ctx, hubName, id)
		if errors.Is(err, errRetryTwin) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if want != "" && want != cur.etag {
			return nil, nil, azerr.Newf(azerr.HubPreconditionFailed, "The twin's etag does not match If-Match.")
		}
		tw := new(twinRecord)
		*tw = *cur.tw // the maps are shared, change replaces them
		patch, err := change(tw, t.now().UTC())
		if err != nil {
			return nil, nil, err
		}
		data, memo, err := encodeTwinRecord(tw, cur.memo, cur.size)
		if err != nil {
			return nil, nil, err
		}
		rec, err := t.store.Put(ctx, store.Record{Kind: store.KindTwin, Key: key, Data: data}, store.Cond{IfMatch: cur.etag})
		if errors.Is(err, store.ErrPreconditionFailed) || errors.Is(err, store.ErrNotFound) {
			if want != "" {
				return nil, nil, azerr.Newf(azerr.HubPreconditionFailed, "The twin's etag does not match If-Match.")
			}
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("hub: update twin %s: %w", id, err)
		}
		next := &cachedTwin{etag: rec.ETag, tw: tw, memo: memo, size: len(data)}
		t.cache.put(key, next)
		// Durable: now the device may hear of it. Under the lock, so that
		// notifications leave in version order.
		// A device on another node hears of it through the forwarder.
		if patch != nil && t.links != nil {
			body, err := sectionJSON(patch, tw.Desired.Version, nil, nil)
			if err == nil {
				t.links.pushDesiredPatch(hubName, id, tw.Desired.Version, body)
			}
		}
		return d, next, nil
	}
	return nil, nil, azerr.Newf(azerr.HubServiceUnavailable, "The twin of %s is changing too often; try again.", id)
}

// PatchReported merges a device's reported-properties patch and returns the
// new reported $version (docs/spec/iothub-protocol.md#twins-over-mqtt).
func (t *Twins) PatchReported(ctx context.Context, hubName, id string, body []byte) (_ int64, err error) {
	defer observeOp(t.obs, "twin.reported", time.Now(), &err)
	if err = t.reg.fault(ctx, FaultTwin, hubName, id); err != nil {
		return 0, err
	}
	if err = t.reg.throttled(hubName, throttle.HubTwinUpdate, 1); err != nil {
		return 0, err
	}
	patch, err := decodeTwinObject(body)
	if err != nil {
		return 0, err
	}
	stripTwinSystemKeys(patch)
	if err := validateTwinPatch(patch, "reported"); err != nil {
		return 0, err
	}
	_, c, err := t.update(ctx, hubName, id, "", func(tw *twinRecord, now time.Time) (map[string]any, error) {
		n := tw.Reported.size + sizeDelta(tw.Reported.Props, patch)
		if n > MaxReportedSize {
			return nil, twinTooLarge("reported", n, MaxReportedSize)
		}
		props, meta := mergeTwin(tw.Reported.Props, tw.Reported.Meta, patch, metaStamp{lastUpdated: now.Format(twinTimeLayout)})
		tw.Reported = twinSection{Props: props, Meta: meta, Version: tw.Reported.Version + 1, size: n}
		tw.Version++
		return nil, nil
	})
	if err != nil {
		return 0, err
	}
	t.twinChanged(hubName, id)
	return c.tw.Reported.Version, nil
}

// twinChanged tells the configurations service of a device or module
// twin's change (id is a TwinID).
func (t *Twins) twinChanged(hubName, id string) {
	if t.changed != nil {
		t.changed(hubName, id)
	}
}

// servicePatch is the part of a Twin document the service may write.
type servicePatch struct {
	Tags       json.RawMessage `json:"tags"`
	Properties *struct {
		Desired  json.RawMessage `json:"desired"`
		Reported json.RawMessage `json:"reported"`
	} `json:"properties"`
}

// serviceWrite is a parsed service twin write. A section is nil when the
// body leaves it out (untouched) and set when it names it; replaceX says the
// section is to be replaced rather than merged into: always for PUT, and
// for a PATCH that sets the whole section to null, which IoT Hub takes as
// "remove every member" (docs/hub-wire.md, twins).
type serviceWrite struct {
	tags, desired               map[string]any
	replaceTags, replaceDesired bool
}

func parseServicePatch(body []byte) (serviceWrite, error) {
	var w serviceWrite
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' {
		// A null or empty body must not read as "replace with nothing".
		return w, azerr.Newf(azerr.HubArgumentInvalid, "The twin must be a JSON object.")
	}
	var p servicePatch
	if err := json.Unmarshal(body, &p); err != nil {
		return w, azerr.Newf(azerr.HubArgumentInvalid, "The twin is not valid JSON: %v", err)
	}
	// section reads one member: absent gives nil, null an empty map to
	// replace with (cleared), an object the patch.
	section := func(raw json.RawMessage, name string) (obj map[string]any, cleared bool, err error) {
		switch t := bytes.TrimSpace(raw); {
		case len(t) == 0:
			return nil, false, nil
		case string(t) == "null":
			return map[string]any{}, true, nil
		}
		obj, err = decodeTwinObject(raw)
		if err != nil {
			return nil, false, err
		}
		stripTwinSystemKeys(obj)
		return obj, false, validateTwinPatch(obj, name)
	}
	var err error
	if w.tags, w.replaceTags, err = section(p.Tags, "tags"); err != nil {
		return w, err
	}
	if p.Properties != nil {
		if w.desired, w.replaceDesired, err = section(p.Properties.Desired, "desired"); err != nil {
			return w, err
		}
	}
	return w, nil
}

// Patch merges tags and desired properties into a twin (PATCH
// /twins/{id}); reported properties are the device's and are ignored. A
// section given as null is cleared: the device hears null for each
// desired member that goes.
func (t *Twins) Patch(ctx context.Context, hubName, id string, body []byte, ifMatch string) (_ *Twin, err error) {
	defer observeOp(t.obs, "twin.patch", time.Now(), &err)
	if err := t.reg.throttled(hubName, throttle.HubTwinUpdate, 1); err != nil {
		return nil, err
	}
	w, err := parseServicePatch(body)
	if err != nil {
		return nil, err
	}
	return t.write(ctx, hubName, id, ifMatch, w)
}

// Replace replaces tags and desired properties (PUT /twins/{id}). The
// device is sent the whole new desired document, with null for every
// property that was removed, so that applying it as a patch gives the new
// document.
func (t *Twins) Replace(ctx context.Context, hubName, id string, body []byte, ifMatch string) (_ *Twin, err error) {
	defer observeOp(t.obs, "twin.replace", time.Now(), &err)
	if err := t.reg.throttled(hubName, throttle.HubTwinUpdate, 1); err != nil {
		return nil, err
	}
	w, err := parseServicePatch(body)
	if err != nil {
		return nil, err
	}
	if w.tags == nil {
		w.tags = map[string]any{}
	}
	if w.desired == nil {
		w.desired = map[string]any{}
	}
	w.replaceTags, w.replaceDesired = true, true
	return t.write(ctx, hubName, id, ifMatch, w)
}

func (t *Twins) write(ctx context.Context, hubName, id, ifMatch string, w serviceWrite) (*Twin, error) {
	tags, desired := w.tags, w.desired
	d, c, err := t.update(ctx, hubName, id, ifMatch, func(tw *twinRecord, now time.Time) (map[string]any, error) {
		changed := false
		if tags != nil {
			var nt map[string]any
			var n int
			if w.replaceTags {
				nt = map[string]any{}
				for k, v := range tags {
					if v != nil {
						nt[k] = v
					}
				}
				n = twinSize(nt)
			} else {
				n = tw.tagsSize + sizeDelta(tw.Tags, tags)
				if n <= MaxTagsSize {
					nt, _ = mergeTwin(tw.Tags, nil, tags, metaStamp{})
				}
			}
			if n > MaxTagsSize {
				return nil, twinTooLarge("tags", n, MaxTagsSize)
			}
			tw.Tags, tw.tagsSize = nt, n
			changed = true
		}
		var notify map[string]any
		if desired != nil {
			patch := desired
			st := metaStamp{lastUpdated: now.Format(twinTimeLayout), version: tw.Desired.Version + 1}
			var props, meta map[string]any
			var n int
			if w.replaceDesired {
				// The patch that turns the old document into the new one.
				patch = replacementPatch(tw.Desired.Props, desired)
				props, meta = mergeTwin(map[string]any{}, map[string]any{}, desired, st)
				n = twinSize(props)
			} else {
				n = tw.Desired.size + sizeDelta(tw.Desired.Props, patch)
				if n <= MaxDesiredSize {
					props, meta = mergeTwin(tw.Desired.Props, tw.Desired.Meta, patch, st)
				}
			}
			if n > MaxDesiredSize {
				return nil, twinTooLarge("desired", n, MaxDesiredSize)
			}
			tw.Desired = twinSection{Props: props, Meta: meta, Version: tw.Desired.Version + 1, size: n}
			notify = patch
			changed = true
		}
		if changed {
			tw.Version++
		}
		return notify, nil
	})
	if err != nil {
		return nil, err
	}
	t.twinChanged(hubName, id)
	return t.render(d, c)
}

// replacementPatch is the merge patch that turns from into to: members
// only in from become null, objects in both are diffed member by member
// (a device merges patches, so a nested member left out would survive),
// anything else is to's value.
func replacementPatch(from, to map[string]any) map[string]any {
	out := map[string]any{}
	for k := range from {
		if _, ok := to[k]; !ok {
			out[k] = nil
		}
	}
	for k, v := range to {
		if v == nil {
			continue // not a property: a replacement names what it keeps
		}
		nv, nObj := v.(map[string]any)
		ov, oObj := from[k].(map[string]any)
		if nObj && oObj {
			out[k] = replacementPatch(ov, nv)
			continue
		}
		if nObj {
			v = cloneTwin(nv)
		}
		out[k] = v
	}
	return out
}

// InitialTwinRecord returns the twin record of a device DPS creates, with
// the enrollment's initial twin, for DPS to write in its assignment
// transaction.
func InitialTwinRecord(hubName string, d *Device, init *InitialTwin, now time.Time) (store.Record, error) {
	tw := newTwinRecord(d.GenerationID, now)
	if init != nil {
		for _, s := range []struct {
			raw     json.RawMessage
			name    string
			apply   func(map[string]any)
			isDesir bool
		}{
			{init.Tags, "tags", func(p map[string]any) { tw.Tags, _ = mergeTwin(tw.Tags, nil, p, metaStamp{}) }, false},
			{init.Desired, "desired", func(p map[string]any) {
				tw.Desired.Props, tw.Desired.Meta = mergeTwin(tw.Desired.Props, tw.Desired.Meta, p, metaStamp{lastUpdated: now.UTC().Format(twinTimeLayout), version: tw.Desired.Version})
			}, true},
		} {
			if t := bytes.TrimSpace(s.raw); len(t) == 0 || string(t) == "null" {
				continue
			}
			obj, err := decodeTwinObject(s.raw)
			if err != nil {
				return store.Record{}, err
			}
			stripTwinSystemKeys(obj)
			if err := validateTwinPatch(obj, s.name); err != nil {
				return store.Record{}, err
			}
			s.apply(obj)
		}
	}
	return twinRecordFor(hubName, d.DeviceID, tw)
}
