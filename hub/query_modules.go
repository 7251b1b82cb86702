package hub

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// moduleScan is the source of FROM devices.modules: the hub's module
// identities in key order (hub/device/module, so by device ID, then module
// ID), each joined with its twin record (same key) and its device, a
// batch at a time, so memory stays bounded by the batch whatever the
// number of modules. A document's key is "device/module", the ID its twin
// goes by (TwinID), which is what continuation tokens carry.
type moduleScan struct {
	t       *Twins
	hubName string

	// The module being yielded, for complete.
	view   *Device // the device view of the module (as Registry.identity)
	noTwin bool    // it has no twin record of its generation yet
}

func (s *moduleScan) source(ctx context.Context, after string, yield func(string, map[string]any) (bool, error)) error {
	st, prefix := s.t.store, strings.ToLower(s.hubName)+"/"
	cur := prefix // exclusive: no key equals it
	if after != "" {
		cur = prefix + after
	}
	batch := firstScanBatch
	now := s.t.now()
	for {
		mods, err := st.List(ctx, store.KindModule, store.ListOptions{After: cur, Limit: batch})
		if err != nil {
			return fmt.Errorf("hub: query: list modules: %w", err)
		}
		n := len(mods)
		for i, rec := range mods {
			if !strings.HasPrefix(rec.Key, prefix) {
				mods, n = mods[:i], -1 // past this hub's modules
				break
			}
		}
		twKeys := make([]string, len(mods))
		devKeys := make([]string, 0, len(mods))
		for i, rec := range mods {
			twKeys[i] = rec.Key
			devKeys = append(devKeys, rec.Index) // the device's key
		}
		twins, err := store.GetMany(ctx, st, store.KindTwin, twKeys)
		if err != nil {
			return fmt.Errorf("hub: query: get module twins: %w", err)
		}
		devs, err := store.GetMany(ctx, st, store.KindDevice, devKeys)
		if err != nil {
			return fmt.Errorf("hub: query: get devices: %w", err)
		}
		twinOf := make(map[string]store.Record, len(twins))
		for _, r := range twins {
			twinOf[r.Key] = r
		}
		devOf := make(map[string]*Device, len(devs))
		for _, r := range devs {
			d, err := decodeDevice(r, s.hubName)
			if err != nil {
				return err
			}
			devOf[r.Key] = d
		}
		for _, rec := range mods {
			cur = rec.Key
			d, ok := devOf[rec.Index]
			if !ok {
				continue // its device was deleted: so is the module, shortly
			}
			m, err := decodeModule(rec)
			if err != nil {
				return err
			}
			s.t.reg.overlayModule(s.hubName, m)
			view := moduleView(d, m)
			var (
				tw   *twinRecord
				etag string
			)
			if trec, ok := twinOf[rec.Key]; ok {
				if tw, err = decodeTwinRecord(trec.Data); err != nil {
					return err
				}
				etag = trec.ETag
				if tw.GenerationID != m.GenerationID {
					tw, etag = nil, "" // a deleted namesake's leftover
				}
			}
			s.view, s.noTwin = view, tw == nil
			if tw == nil {
				tw = newTwinRecord(m.GenerationID, now)
			}
			more, err := yield(TwinID(m.DeviceID, m.ModuleID), moduleTwinDocument(view, tw, etag))
			if err != nil || !more {
				return err
			}
		}
		if n < batch {
			return nil
		}
		batch = min(2*batch, maxScanBatch)
	}
}

// complete gives a module twin that was never read or written a real
// one, created as GET /twins/{d}/modules/{m} would, so that it carries an
// etag.
func (s *moduleScan) complete(ctx context.Context, key string, doc map[string]any) error {
	if s.view == nil || TwinID(s.view.DeviceID, s.view.moduleID) != key {
		return fmt.Errorf("hub: query: completing module %s out of order", key)
	}
	if !s.noTwin {
		return nil
	}
	for range 5 {
		d, c, err := s.t.load(ctx, s.hubName, key)
		if errors.Is(err, errRetryTwin) {
			continue
		}
		var ae *azerr.Error
		if errors.As(err, &ae) && (ae.Code == azerr.HubDeviceNotFound || ae.Code == azerr.HubModuleNotFound) {
			return nil // deleted meanwhile: answer what was scanned
		}
		if err != nil {
			return err
		}
		clear(doc)
		for k, v := range moduleTwinDocument(d, c.tw, c.etag) {
			doc[k] = v
		}
		return nil
	}
	return nil
}

// moduleView is the device view of a module that Registry.identity builds
// for its twin: the module's generation, etag, authentication and
// presence, under its device's ID and status.
func moduleView(d *Device, m *Module) *Device {
	return &Device{
		DeviceID:          d.DeviceID,
		moduleID:          m.ModuleID,
		GenerationID:      m.GenerationID,
		ETag:              m.ETag,
		ConnectionState:   m.ConnectionState,
		LastActivityTime:  m.LastActivityTime,
		Status:            d.Status,
		StatusReason:      d.StatusReason,
		StatusUpdatedTime: d.StatusUpdatedTime,
		Authentication:    m.Authentication,
		Hub:               d.Hub,
	}
}

// moduleTwinDocument is a module twin as queries see it: the document GET
// /twins/{d}/modules/{m} answers (Twins.render with the module's device
// view), as JSON values. Modules have no C2D queue and no capabilities
// or scopes of their own.
func moduleTwinDocument(view *Device, tw *twinRecord, etag string) map[string]any {
	doc := twinDocument(view, tw, etag)
	doc["moduleId"] = view.moduleID
	doc["capabilities"] = nil
	doc["cloudToDeviceMessageCount"] = float64(0)
	delete(doc, "deviceScope")
	delete(doc, "parentScopes")
	return doc
}
