package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hubquery"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/throttle"
)

// Query page sizes (x-ms-max-item-count): the default when a client names
// none, and the most a page holds, as the Node SDK documents them.
const (
	DefaultQueryPageSize = 1000
	MaxQueryPageSize     = 10000
)

// Item types of a query page (x-ms-item-type), as IoT Hub and the C# SDK
// name them: whole twins, or projections and aggregates.
const (
	QueryItemTwin = "twin"
	QueryItemRaw  = "raw"
)

// QueryPage is one page of a query's results.
type QueryPage struct {
	Items        []any  // JSON values: twins, projections or aggregate rows
	ItemType     string // QueryItemTwin or QueryItemRaw
	Continuation string // the next page's token; "" on the last page
}

// Query answers one page of an IoT Hub query (docs/hub-query.md) over a
// hub's device twins. pageSize <= 0 means DefaultQueryPageSize; larger
// than MaxQueryPageSize means MaxQueryPageSize. The twins are read from
// the store in device-ID order, a batch at a time, so memory stays bounded
// by the page and the batch, whatever the registry's size; an aggregate
// query keeps only its groups. A malformed query or continuation token is
// ArgumentInvalid with the position of the fault.
func (t *Twins) Query(ctx context.Context, hubName, query string, pageSize int, continuation string) (*QueryPage, error) {
	if err := t.reg.throttled(hubName, throttle.HubQuery, 1); err != nil {
		return nil, err
	}
	q, err := hubquery.Parse(query)
	if err != nil {
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid query: %s", err.Error())
	}
	switch {
	case pageSize <= 0:
		pageSize = DefaultQueryPageSize
	case pageSize > MaxQueryPageSize:
		pageSize = MaxQueryPageSize
	}
	page := &QueryPage{ItemType: QueryItemTwin}
	if q.Projected() {
		page.ItemType = QueryItemRaw
	}
	s := &twinScan{t: t, hubName: hubName, count: q.Uses("cloudToDeviceMessageCount"), needles: q.Needles("tags", "properties"), lazy: true,
		returnsCount: q.Selects("cloudToDeviceMessageCount")}
	for _, m := range deviceMembers {
		if q.Uses(m) {
			s.lazy = false
		}
	}
	src, complete := s.source, s.complete
	if f, ok := t.store.(store.Filterer); ok && q.From == hubquery.Devices {
		if preds := pushdown(q); len(preds) > 0 {
			src = s.filteredSource(f, preds)
		}
	}
	switch {
	case q.From == hubquery.Jobs && t.deviceJobs != nil:
		// Device jobs are whole documents as stored: nothing to complete.
		src, complete = t.deviceJobs(hubName), nil
	case q.From == hubquery.Modules:
		m := &moduleScan{t: t, hubName: hubName}
		src, complete = m.source, m.complete
	case q.From != hubquery.Devices:
		// devices.jobs without a jobs engine: an empty collection.
		src = func(context.Context, string, func(string, map[string]any) (bool, error)) error { return nil }
	}
	res, err := q.Run(ctx, src, hubquery.Options{PageSize: pageSize, Continuation: continuation, Complete: complete})
	var qe *hubquery.Error
	switch {
	case errors.Is(err, hubquery.ErrContinuation):
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid continuation token.")
	case errors.As(err, &qe):
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Invalid query: %s", qe.Error())
	case err != nil:
		return nil, err
	}
	page.Items, page.Continuation = res.Items, res.Continuation
	return page, nil
}

// twinScan reads a hub's devices and twins in key order, joining the two
// collections (both keyed by hub + "/" + device ID) batch by batch.
type twinScan struct {
	t       *Twins
	hubName string
	// count says the query filters or groups on
	// cloudToDeviceMessageCount, so every device scanned needs its queue
	// counted; otherwise only the devices returned do (complete).
	count bool
	// needles are texts the stored twin of every device the query can
	// accept contains (hubquery.Query.Needles): a device whose twin lacks
	// one is skipped without decoding either record.
	needles [][]byte

	// returnsCount says the rows returned show cloudToDeviceMessageCount
	// (SELECT *, or a projection of it): only then does complete count
	// the queue of each device returned.
	returnsCount bool
	// c2d, when set, holds the queue lengths of the batch being scanned,
	// counted in one store call (filteredSource), keyed by device key;
	// a device absent from it has an empty queue.
	c2d map[string]int

	// lazy says the query filters and groups on the twin's own members
	// only (tags, properties, version, etag, deviceId): the device record
	// is decoded for the rows returned, not for every device scanned.
	lazy bool

	// remote is the other nodes' presence of the devices of the batch
	// being scanned (one question per batch); nil on a single node.
	remote map[string]PresenceView

	// The device being yielded: complete reads them, synchronously within
	// the yield of the same device.
	rec     store.Record // its device record
	dev     *Device      // decoded, or nil (lazy)
	tw      *twinRecord  // its twin, nil when it has none of its generation
	etag    string       // the twin's
	noTwin  bool         // the device has no twin record of its generation yet
	counted bool
}

// deviceMembers are the twin members that come from the device record.
var deviceMembers = []string{"deviceEtag", "status", "statusReason", "statusUpdateTime", "connectionState",
	"lastActivityTime", "cloudToDeviceMessageCount", "authenticationType", "x509Thumbprint", "capabilities",
	"deviceScope", "parentScopes"}

// scanBatch bounds the records read from the store at once: the first
// batch is small, for the common small page, and later ones grow.
const (
	firstScanBatch = 32
	maxScanBatch   = 512
)

func (s *twinScan) source(ctx context.Context, after string, yield func(string, map[string]any) (bool, error)) error {
	st, hubIndex := s.t.store, strings.ToLower(s.hubName)
	prefix := hubIndex + "/"
	devAfter := ""
	if after != "" {
		devAfter = deviceKey(s.hubName, after)
	}
	twAfter := devAfter
	if twAfter == "" {
		twAfter = prefix // exclusive: no key equals it
	}
	var twins []store.Record
	twinsDone := false
	batch := firstScanBatch
	now := s.t.now()
	for {
		devs, err := st.List(ctx, store.KindDevice, store.ListOptions{Index: hubIndex, After: devAfter, Limit: batch})
		if err != nil {
			return fmt.Errorf("hub: query: list devices: %w", err)
		}
		ids := make([]string, len(devs))
		for i, rec := range devs {
			ids[i] = rec.Key[len(prefix):]
		}
		s.remote = s.t.reg.peerPresence(ctx, s.hubName, ids)
		for _, rec := range devs {
			devAfter = rec.Key
			// Advance the twin cursor to this device's key.
			for {
				if len(twins) == 0 && !twinsDone {
					twins, err = st.List(ctx, store.KindTwin, store.ListOptions{After: twAfter, Limit: batch})
					if err != nil {
						return fmt.Errorf("hub: query: list twins: %w", err)
					}
					twinsDone = len(twins) < batch
					if len(twins) > 0 {
						twAfter = twins[len(twins)-1].Key
					}
				}
				if len(twins) > 0 && !strings.HasPrefix(twins[0].Key, prefix) {
					twins, twinsDone = nil, true // past this hub's twins
				}
				if len(twins) == 0 || twins[0].Key >= rec.Key {
					break
				}
				twins = twins[1:]
			}
			var tw *store.Record
			if len(twins) > 0 && twins[0].Key == rec.Key {
				tw = &twins[0]
			}
			more, err := s.visit(ctx, rec, tw, prefix, now, yield)
			if err != nil || !more {
				return err
			}
		}
		if len(devs) < batch {
			return nil
		}
		batch = min(2*batch, maxScanBatch)
	}
}

// visit yields one device's twin document: rec is its device record, trec
// its twin record (nil when it has none). It answers whether to go on.
func (s *twinScan) visit(ctx context.Context, rec store.Record, trec *store.Record, prefix string, now time.Time, yield func(string, map[string]any) (bool, error)) (bool, error) {
	if len(s.needles) > 0 && (trec == nil || !containsAll(trec.Data, s.needles)) {
		return true, nil
	}
	var (
		tw   *twinRecord
		etag string
		err  error
	)
	if trec != nil {
		if tw, err = decodeTwinRecord(trec.Data); err != nil {
			return false, err
		}
		etag = trec.ETag
	}
	// With a lazy scan the device record is decoded only for a row
	// returned (complete), provided the twin is the device's: it names
	// the generation the device record holds.
	var d *Device
	if !s.lazy || tw != nil && (tw.GenerationID == "" || !bytes.Contains(rec.Data, []byte(`"`+tw.GenerationID+`"`))) {
		if d, err = decodeDevice(rec, s.hubName); err != nil {
			return false, err
		}
		s.t.reg.overlay(s.hubName, d)
		s.t.reg.applyPeers(s.hubName, s.remote, d)
		if tw != nil && tw.GenerationID != d.GenerationID {
			tw, etag = nil, "" // a deleted device's leftover
		}
	}
	s.rec, s.dev, s.tw, s.etag, s.noTwin, s.counted = rec, d, tw, etag, tw == nil, false
	if tw == nil {
		gen := ""
		if d != nil {
			gen = d.GenerationID
		}
		tw = newTwinRecord(gen, now)
	}
	var doc map[string]any
	if d == nil {
		doc = twinOwnDocument(rec.Key[len(prefix):], tw, etag)
	} else {
		if s.count {
			if err := s.t.reg.countQueue(ctx, s.hubName, d); err != nil {
				return false, err
			}
			s.counted = true
		}
		doc = twinDocument(d, tw, etag)
	}
	return yield(rec.Key[len(prefix):], doc)
}

// filteredSource is source for a query whose conditions the store
// evaluates (store.Filterer): it walks the twins that satisfy preds, in
// key order, and reads each one's device record. A device without a twin
// record, or with a deleted device's, satisfies no pushed condition (each
// needs a value in tags or properties), so nothing is missed.
func (s *twinScan) filteredSource(f store.Filterer, preds []store.Pred) hubquery.Source {
	return func(ctx context.Context, after string, yield func(string, map[string]any) (bool, error)) error {
		st, prefix := s.t.store, strings.ToLower(s.hubName)+"/"
		cur := prefix
		if after != "" {
			cur = deviceKey(s.hubName, after)
		}
		batch := firstScanBatch
		now := s.t.now()
		for {
			twins, err := f.ListWhere(ctx, store.KindTwin, store.ListOptions{After: cur, Limit: batch}, preds)
			if err != nil {
				return fmt.Errorf("hub: query: list twins: %w", err)
			}
			ids := make([]string, 0, len(twins))
			for _, t := range twins {
				if strings.HasPrefix(t.Key, prefix) {
					ids = append(ids, t.Key[len(prefix):])
				}
			}
			// The other nodes' presence of this batch's devices, as the
			// unfiltered scan asks it (one request per batch).
			s.remote = s.t.reg.peerPresence(ctx, s.hubName, ids)
			// The batch's device records in one store call, not a Get
			// per twin; module twins (hub/device/module keys) and a
			// deleted device's leftover twin find none.
			keys := make([]string, len(ids))
			for i, id := range ids {
				keys[i] = prefix + id
			}
			devs, err := store.GetMany(ctx, st, store.KindDevice, keys)
			if err != nil {
				return fmt.Errorf("hub: query: get devices: %w", err)
			}
			byKey := make(map[string]store.Record, len(devs))
			for _, d := range devs {
				byKey[d.Key] = d
			}
			s.c2d = nil
			if s.returnsCount && !s.count && len(devs) > 0 {
				// Likewise their queue lengths, when the rows show them.
				dk := make([]string, len(devs))
				for i, d := range devs {
					dk[i] = d.Key
				}
				if s.c2d, err = store.CountMany(ctx, st, store.KindC2D, dk); err != nil {
					return fmt.Errorf("hub: query: count C2D queues: %w", err)
				}
			}
			for i := range twins {
				trec := &twins[i]
				if !strings.HasPrefix(trec.Key, prefix) {
					return nil
				}
				cur = trec.Key
				rec, ok := byKey[trec.Key]
				if !ok {
					continue // a module twin, or a deleted device's leftover
				}
				more, err := s.visit(ctx, rec, trec, prefix, now, yield)
				if err != nil || !more {
					return err
				}
			}
			if len(twins) < batch {
				return nil
			}
			batch = min(2*batch, maxScanBatch)
		}
	}
}

// pushdown maps the query's conditions on tags and desired or reported
// properties to the twin record's layout (twinRecord: tags, desired.props,
// reported.props), for the store to evaluate.
func pushdown(q *hubquery.Query) []store.Pred {
	var out []store.Pred
	for _, c := range q.Conditions() {
		var path []string
		switch {
		case len(c.Path) >= 2 && c.Path[0] == "tags":
			path = append([]string{"tags"}, c.Path[1:]...)
		case len(c.Path) >= 3 && c.Path[0] == "properties" && (c.Path[1] == "desired" || c.Path[1] == "reported"):
			path = append([]string{c.Path[1], "props"}, c.Path[2:]...)
		default:
			continue
		}
		if !store.FilterablePath(path) {
			continue
		}
		out = append(out, store.Pred{Path: path, Op: store.Op(c.Op), Value: c.Value})
	}
	return out
}

// complete finishes a document the query returns: its C2D queue count,
// and, for a device whose twin was never read or written, the twin itself,
// created as GET /twins/{id} would so that it carries a real etag.
func (s *twinScan) complete(ctx context.Context, key string, doc map[string]any) error {
	if s.rec.Key != deviceKey(s.hubName, key) {
		return fmt.Errorf("hub: query: completing %s out of order", key)
	}
	d := s.dev
	if d == nil {
		var err error
		if d, err = decodeDevice(s.rec, s.hubName); err != nil {
			return err
		}
		s.t.reg.overlay(s.hubName, d)
		s.t.reg.applyPeers(s.hubName, s.remote, d)
		tw := s.tw
		if tw == nil {
			tw = newTwinRecord(d.GenerationID, s.t.now())
		}
		clear(doc)
		for k, v := range twinDocument(d, tw, s.etag) {
			doc[k] = v
		}
	}
	if s.noTwin {
		for range 5 {
			// d stays the scanned device until load succeeds: a device
			// deleted meanwhile is answered as it was scanned.
			ld, c, err := s.t.load(ctx, s.hubName, key)
			if errors.Is(err, errRetryTwin) {
				continue
			}
			var ae *azerr.Error
			if errors.As(err, &ae) && ae.Code == azerr.HubDeviceNotFound {
				break // deleted meanwhile: answer what was scanned
			}
			if err != nil {
				return err
			}
			d = ld
			clear(doc)
			for k, v := range twinDocument(d, c.tw, c.etag) {
				doc[k] = v
			}
			s.counted = false
			break
		}
	}
	switch {
	case s.counted || !s.returnsCount:
	case s.c2d != nil:
		d.CloudToDeviceMessageCount = s.c2d[s.rec.Key]
	default:
		if err := s.t.reg.countQueue(ctx, s.hubName, d); err != nil {
			return err
		}
	}
	doc["cloudToDeviceMessageCount"] = float64(d.CloudToDeviceMessageCount)
	return nil
}

// twinDocument is a twin as queries see it: the Twin document of GET
// /twins/{id} (Twins.render) as JSON values, numbers as float64 or
// json.Number and times as their JSON strings. The document shares the
// twin record's maps (which may be the cached twin's): queries only read
// them.
func twinDocument(d *Device, tw *twinRecord, etag string) map[string]any {
	doc := twinOwnDocument(d.DeviceID, tw, etag)
	for k, v := range map[string]any{
		"deviceEtag":                d.ETag,
		"status":                    d.Status,
		"statusReason":              nil,
		"statusUpdateTime":          d.StatusUpdatedTime.UTC().Format(time.RFC3339Nano),
		"connectionState":           d.ConnectionState,
		"lastActivityTime":          d.LastActivityTime.UTC().Format(time.RFC3339Nano),
		"cloudToDeviceMessageCount": float64(d.CloudToDeviceMessageCount),
		"authenticationType":        "sas",
		"x509Thumbprint":            map[string]any{"primaryThumbprint": nil, "secondaryThumbprint": nil},
		"capabilities":              map[string]any{"iotEdge": d.Capabilities != nil && d.Capabilities.IoTEdge},
	} {
		doc[k] = v
	}
	if d.StatusReason != nil {
		doc["statusReason"] = *d.StatusReason
	}
	if a := d.Authentication; a != nil {
		doc["authenticationType"] = a.Type
		if th := a.X509Thumbprint; th != nil {
			x := doc["x509Thumbprint"].(map[string]any)
			if th.PrimaryThumbprint != nil {
				x["primaryThumbprint"] = *th.PrimaryThumbprint
			}
			if th.SecondaryThumbprint != nil {
				x["secondaryThumbprint"] = *th.SecondaryThumbprint
			}
		}
	}
	if d.DeviceScope != nil {
		doc["deviceScope"] = *d.DeviceScope
	}
	if len(d.ParentScopes) > 0 {
		ps := make([]any, len(d.ParentScopes))
		for i, p := range d.ParentScopes {
			ps[i] = p
		}
		doc["parentScopes"] = ps
	}
	return doc
}

// twinOwnDocument is the part of a twin document the twin record holds.
func twinOwnDocument(id string, tw *twinRecord, etag string) map[string]any {
	doc := map[string]any{
		"deviceId": id,
		"etag":     etag,
		"version":  float64(tw.Version),
		"tags":     tw.Tags,
		"properties": map[string]any{
			"desired":  sectionDocument(tw.Desired),
			"reported": sectionDocument(tw.Reported),
		},
	}
	if c := configsDocument(tw.Configs); c != nil {
		doc["configurations"] = c
	}
	return doc
}

// sectionDocument is a desired or reported section with its "$metadata"
// and "$version", as sectionJSON renders it.
func sectionDocument(s twinSection) map[string]any {
	out := make(map[string]any, len(s.Props)+2)
	for k, v := range s.Props {
		out[k] = v
	}
	out["$metadata"] = s.Meta
	out["$version"] = float64(s.Version)
	return out
}

func containsAll(data []byte, needles [][]byte) bool {
	for _, n := range needles {
		if !bytes.Contains(data, n) {
			return false
		}
	}
	return true
}
