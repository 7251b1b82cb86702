// Package hub is berth's IoT hub domain: the device identity registry and,
// in later stages, telemetry, twins, direct methods and cloud-to-device
// messages. It knows no wire protocol.
package hub

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/throttle"
)

// Device statuses.
const (
	StatusEnabled  = "enabled"
	StatusDisabled = "disabled"
)

// Authentication types of a device (IoT Hub's AuthenticationMechanism.type).
const (
	AuthSAS                  = "sas"
	AuthSelfSigned           = "selfSigned"
	AuthCertificateAuthority = "certificateAuthority"
	AuthNone                 = "none"
)

// SymmetricKey holds a device's keys.
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// X509Thumbprint holds a device's certificate thumbprints.
type X509Thumbprint struct {
	PrimaryThumbprint   *string `json:"primaryThumbprint"`
	SecondaryThumbprint *string `json:"secondaryThumbprint"`
}

// Authentication is IoT Hub's AuthenticationMechanism.
type Authentication struct {
	SymmetricKey   *SymmetricKey   `json:"symmetricKey,omitempty"`
	X509Thumbprint *X509Thumbprint `json:"x509Thumbprint,omitempty"`
	Type           string          `json:"type"` // sas, selfSigned, certificateAuthority, none
}

// Capabilities of a device.
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// Device is IoT Hub's Device document.
type Device struct {
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId"`
	ETag                       string          `json:"etag"`
	ConnectionState            string          `json:"connectionState"`
	Status                     string          `json:"status"`
	StatusReason               *string         `json:"statusReason"`
	ConnectionStateUpdatedTime time.Time       `json:"connectionStateUpdatedTime"`
	StatusUpdatedTime          time.Time       `json:"statusUpdatedTime"`
	LastActivityTime           time.Time       `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount"`
	Authentication             *Authentication `json:"authentication"`
	Capabilities               *Capabilities   `json:"capabilities"`
	// DeviceScope and ParentScopes are IoT Hub's nested-edge relation
	// (scope.go): an edge device's own scope and its parent's; a child
	// device's parent edge scope, twice.
	DeviceScope  *string  `json:"deviceScope"`
	ParentScopes []string `json:"parentScopes"`
	// Hub is the hub host name the device belongs to (berth's addition; a
	// berth serves several hubs).
	Hub string `json:"-"`
	// moduleID is set on the device view of a module (Registry.identity),
	// never on a stored device.
	moduleID string
}

// Registry is the device identity registry of every hub berth serves.
type Registry struct {
	store store.Store
	now   func() time.Time

	// presence is this node's view of connected devices and their last
	// activity. It is kept in memory, not in the store: writing it would
	// cost an fsync per connect and per message. Reads overlay it on the
	// stored document; with several berth nodes each reports its own
	// connections (documented in docs/hub-wire.md).
	mu       sync.Mutex
	presence map[string]*presence
	// cas anchors certificateAuthority devices (SetCATrust); guarded by mu.
	cas CATrust
	// limits bound every token's time (SetTokenLimits); guarded by mu.
	limits sas.Limits
	// links are the live sessions a change of a device revokes
	// (SetLinks); guarded by mu.
	links *Links
	// faults are a test server's injected failures (SetFaults); nil in
	// production.
	faults Faults
	// throttle is the operator's throttles (SetThrottle); nil for none.
	throttle *throttle.Throttler
	// peers are the other nodes' presence (SetPresencePeers); guarded by
	// mu.
	peers PresencePeers
	// changed hears of every created, updated or provisioned device
	// (SetChangeHook); guarded by mu.
	changed func(hubName, id string)
	// views is what C2D Send needs of each device, cached on a node that
	// is its store's only writer (CacheSendViews, sendview.go).
	views sendViews
}

// SetChangeHook makes the registry call fn (which must not block) after
// every device it creates, updates or provisions: the configurations
// service evaluates the device against the hub's target conditions.
func (r *Registry) SetChangeHook(fn func(hubName, id string)) {
	r.mu.Lock()
	r.changed = fn
	r.mu.Unlock()
}

func (r *Registry) deviceChanged(hubName, id string) {
	r.mu.Lock()
	fn := r.changed
	r.mu.Unlock()
	if fn != nil {
		fn(hubName, id)
	}
}

type presence struct {
	conns        int // open connections (a takeover briefly has two)
	stateUpdated time.Time
	lastActivity time.Time
}

// NewRegistry returns a registry on st.
func NewRegistry(st store.Store, now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	return &Registry{store: st, now: now, presence: map[string]*presence{}}
}

// Connected records that a device opened a connection; the returned func
// records its close and must be called exactly once.
func (r *Registry) Connected(hubName, id string) (disconnected func()) {
	k := deviceKey(hubName, id)
	now := r.now().UTC()
	r.mu.Lock()
	p := r.presence[k]
	if p == nil {
		p = &presence{}
		r.presence[k] = p
	}
	if p.conns == 0 {
		p.stateUpdated = now
	}
	p.conns++
	p.lastActivity = now
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			p.conns--
			if p.conns == 0 {
				p.stateUpdated = r.now().UTC()
			}
		})
	}
}

// Active records device activity (a message sent).
func (r *Registry) Active(hubName, id string) {
	k := deviceKey(hubName, id)
	now := r.now().UTC()
	r.mu.Lock()
	p := r.presence[k]
	if p == nil {
		p = &presence{}
		r.presence[k] = p
	}
	p.lastActivity = now
	r.mu.Unlock()
}

// overlay applies this node's presence to a device read from the store.
func (r *Registry) overlay(hubName string, d *Device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.presence[deviceKey(hubName, d.DeviceID)]
	if p == nil {
		return
	}
	d.ConnectionState = "Disconnected"
	if p.conns > 0 {
		d.ConnectionState = "Connected"
	}
	d.ConnectionStateUpdatedTime = p.stateUpdated
	d.LastActivityTime = p.lastActivity
}

// deviceKey is the store key: device IDs are case-sensitive in IoT Hub,
// hub host names are not.
func deviceKey(hubName, id string) string { return strings.ToLower(hubName) + "/" + id }

// Get returns a device or DeviceNotFound.
func (r *Registry) Get(ctx context.Context, hubName, id string) (*Device, error) {
	rec, err := r.store.Get(ctx, store.KindDevice, deviceKey(hubName, id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, azerr.Newf(azerr.HubDeviceNotFound, "Device %s not found.", id)
	}
	if err != nil {
		return nil, fmt.Errorf("hub: get device %s: %w", id, err)
	}
	d, err := decodeDevice(rec, hubName)
	if err != nil {
		return nil, err
	}
	r.overlay(hubName, d)
	return d, nil
}

// show returns a device as the service API shows it: Get plus
// cloudToDeviceMessageCount. Get leaves the count out because it is on
// every device's hot path (each authentication, each HTTPS message), and
// only the service views show it.
func (r *Registry) show(ctx context.Context, hubName, id string) (*Device, error) {
	d, err := r.Get(ctx, hubName, id)
	if err != nil {
		return nil, err
	}
	if err := r.countQueue(ctx, hubName, d); err != nil {
		return nil, err
	}
	r.overlayCluster(ctx, hubName, d)
	return d, nil
}

func (r *Registry) countQueue(ctx context.Context, hubName string, d *Device) error {
	n, err := r.store.Count(ctx, store.KindC2D, deviceKey(hubName, d.DeviceID))
	if err != nil {
		return fmt.Errorf("hub: count C2D queue of %s: %w", d.DeviceID, err)
	}
	d.CloudToDeviceMessageCount = n
	return nil
}

// list returns up to limit devices of a hub after the given device ID.
func (r *Registry) list(ctx context.Context, hubName, after string, limit int) ([]*Device, error) {
	opts := store.ListOptions{Index: strings.ToLower(hubName), Limit: limit}
	if after != "" {
		opts.After = deviceKey(hubName, after)
	}
	recs, err := r.store.List(ctx, store.KindDevice, opts)
	if err != nil {
		return nil, fmt.Errorf("hub: list devices: %w", err)
	}
	out := make([]*Device, 0, len(recs))
	for _, rec := range recs {
		d, err := decodeDevice(rec, hubName)
		if err != nil {
			return nil, err
		}
		r.overlay(hubName, d)
		out = append(out, d)
	}
	r.overlayCluster(ctx, hubName, out...)
	return out, nil
}

// ProvisionTwin says what DPS does to the twin of the device it assigns.
type ProvisionTwin struct {
	// Initial is the twin a device starts with: the enrollment's, or a
	// custom allocation webhook's. It is applied to a device the hub does
	// not have yet, and to an existing one when Reset is set.
	Initial *InitialTwin
	// Reset replaces an existing device's twin with Initial
	// (reprovisionAndResetData, or a webhook's initialTwin).
	Reset bool
	// MigrateFromHub and MigrateFromDevice name the twin to copy when a
	// device moves between hubs (reprovisionAndMigrateData): tags, desired
	// and reported properties with their versions. A missing source twin
	// falls back to Initial.
	MigrateFromHub, MigrateFromDevice string
}

// ProvisionRecords returns the store records that create or update a
// device identity on assignment by DPS, so DPS can write them in the same
// transaction as the registration. An existing device keeps its generation
// ID and creation state; its keys and status are replaced. The twin is
// written as tw says.
//
// revoke reports whether writing them revokes a credential live sessions
// may hold: the device existed, and was disabled or had another credential
// than auth (new keys, another group's, another certificate). A device the
// records create, or one re-registered with the credential it has, has
// no session to close; Provisioned is told so and sends no revocation.
func (r *Registry) ProvisionRecords(ctx context.Context, hubName, id string, auth Authentication, tw ProvisionTwin) (recs []store.Record, revoke bool, err error) {
	now := r.now().UTC()
	d, err := r.Get(ctx, hubName, id)
	var ae *azerr.Error
	isNew := false
	switch {
	case err == nil:
		revoke = d.Status != StatusEnabled || Credential(d) != Credential(&Device{Authentication: &auth})
	case errors.As(err, &ae) && ae.Code == azerr.HubDeviceNotFound:
		d = newDevice(id, now)
		isNew = true
	default:
		return nil, false, err
	}
	d.Authentication = &auth
	if d.Status != StatusEnabled {
		d.Status = StatusEnabled
		d.StatusUpdatedTime = now
	}
	rec, err := encodeDevice(hubName, d)
	if err != nil {
		return nil, false, err
	}
	recs = []store.Record{rec}
	if tw.MigrateFromHub != "" {
		moved, ok, err := r.migratedTwin(ctx, tw.MigrateFromHub, tw.MigrateFromDevice, hubName, d)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return append(recs, moved), revoke, nil
		}
	}
	if isNew || tw.Reset || tw.MigrateFromHub != "" {
		twin, err := InitialTwinRecord(hubName, d, tw.Initial, now)
		if err != nil {
			return nil, false, err
		}
		recs = append(recs, twin)
	}
	return recs, revoke, nil
}

// migratedTwin returns the twin of device fromID on hub from as the twin of
// d on hub to, or ok false when there is none to move.
func (r *Registry) migratedTwin(ctx context.Context, from, fromID, to string, d *Device) (store.Record, bool, error) {
	src, err := r.Get(ctx, from, fromID)
	if err != nil {
		var ae *azerr.Error
		if errors.As(err, &ae) && ae.Code == azerr.HubDeviceNotFound {
			return store.Record{}, false, nil
		}
		return store.Record{}, false, err
	}
	rec, err := r.store.Get(ctx, store.KindTwin, deviceKey(from, fromID))
	if errors.Is(err, store.ErrNotFound) {
		return store.Record{}, false, nil
	}
	if err != nil {
		return store.Record{}, false, fmt.Errorf("hub: read twin to migrate: %w", err)
	}
	tw, err := decodeTwinRecord(rec.Data)
	if err != nil {
		return store.Record{}, false, err
	}
	if tw.GenerationID != src.GenerationID {
		return store.Record{}, false, nil
	}
	tw.GenerationID = d.GenerationID
	// The old hub's automatic configurations are not the new hub's: what
	// they wrote moves as data, and the new hub applies its own
	// (configurations.go); keeping their state would make the new hub
	// remove those members as from a configuration it never had.
	tw.Configs, tw.ConfigPaths, tw.ConfigDigest = nil, nil, ""
	out, err := twinRecordFor(to, d.DeviceID, tw)
	return out, err == nil, err
}

// SetLinks makes every change of a device that revokes its credential
// (disabled, deleted, keys or thumbprints replaced) close its live
// sessions through l, on every node.
func (r *Registry) SetLinks(l *Links) {
	r.mu.Lock()
	r.links = l
	r.mu.Unlock()
}

// revoke closes the device's sessions that d (its stored state after a
// change; nil once deleted) no longer admits, and those that attach within
// a minute with a credential it does not admit (Links.Attach). A credential that is still
// the same keeps its sessions: renaming a status reason or changing
// capabilities disconnects no one.
func (r *Registry) revoke(hubName, id string, d *Device) {
	r.mu.Lock()
	l := r.links
	r.mu.Unlock()
	if l == nil {
		return
	}
	keep := ""
	if d != nil && d.Status == StatusEnabled {
		keep = Credential(d)
	}
	l.Revoke(hubName, id, keep)
}

// Provisioned runs after DPS has written an assignment of the device (the
// records of ProvisionRecords, made with auth): a re-registration that
// replaced its keys or thumbprints, or enabled it again, closes the
// sessions opened with the old ones, on every node. The device is not
// read back: ProvisionRecords always writes it enabled with auth, and the
// credential sessions are judged by is auth's alone (Credential), so what
// was just written is what a read would say. A change that lands after the
// assignment revokes on its own (update, delete), as it would have without
// DPS.
//
// revoke is ProvisionRecords's: when it is false (a new device, or the
// credential it had) no session can hold another credential and nothing
// is sent to the other nodes, unless this node remembers a revocation of
// the last minute that auth's credential does not pass (the device was
// deleted and is created again, or changed meanwhile): that one is
// replaced everywhere, or the device's own new sessions would be closed
// as revoked (Links.Attach).
func (r *Registry) Provisioned(_ context.Context, hubName, id string, auth Authentication, revoke bool) {
	d := &Device{Status: StatusEnabled, Authentication: &auth}
	if revoke || r.revokedRecently(hubName, id, Credential(d)) {
		r.revoke(hubName, id, d)
	}
	r.deviceChanged(hubName, id)
}

// revokedRecently reports whether this node's links remember a recent
// revocation of the device that does not admit credential.
func (r *Registry) revokedRecently(hubName, id, credential string) bool {
	r.mu.Lock()
	l := r.links
	r.mu.Unlock()
	return l != nil && l.revokedRecently(hubName, id, credential)
}

// create adds a device; it fails with DeviceAlreadyExists if it exists.
// Keys are generated when the authentication type is sas and none are given.
func (r *Registry) create(ctx context.Context, hubName string, d *Device) (*Device, error) {
	now := r.now().UTC()
	nd := newDevice(d.DeviceID, now)
	if err := r.apply(nd, d, now); err != nil {
		return nil, err
	}
	if err := r.applyScope(ctx, hubName, nd, d); err != nil {
		return nil, err
	}
	rec, err := encodeDevice(hubName, nd)
	if err != nil {
		return nil, err
	}
	rec, err = r.store.Put(ctx, rec, store.Cond{IfNotExists: true})
	if errors.Is(err, store.ErrExists) {
		return nil, azerr.Newf(azerr.HubDeviceAlreadyExists, "A device with ID '%s' is already registered.", d.DeviceID)
	}
	if err != nil {
		return nil, fmt.Errorf("hub: create device %s: %w", d.DeviceID, err)
	}
	out, err := decodeDevice(rec, hubName)
	if err != nil {
		return nil, err
	}
	// A device created again after a delete: its new credential is the
	// one links may keep (a connection with the deleted device's keys,
	// authenticated just before the delete, may not).
	r.revoke(hubName, d.DeviceID, out)
	r.deviceChanged(hubName, d.DeviceID)
	return out, nil
}

// update replaces the mutable fields of an existing device (status,
// authentication, capabilities) under an optional If-Match.
func (r *Registry) update(ctx context.Context, hubName string, d *Device, ifMatch string) (*Device, error) {
	cur, err := r.Get(ctx, hubName, d.DeviceID)
	if err != nil {
		return nil, err
	}
	if err := r.apply(cur, d, r.now().UTC()); err != nil {
		return nil, err
	}
	if err := r.applyScope(ctx, hubName, cur, d); err != nil {
		return nil, err
	}
	rec, err := encodeDevice(hubName, cur)
	if err != nil {
		return nil, err
	}
	rec, err = r.store.Put(ctx, rec, store.Cond{IfMatch: etagOrAny(ifMatch, cur.ETag)})
	switch {
	case errors.Is(err, store.ErrPreconditionFailed):
		return nil, azerr.New(azerr.HubPreconditionFailed)
	case errors.Is(err, store.ErrNotFound):
		return nil, azerr.Newf(azerr.HubDeviceNotFound, "Device %s not found.", d.DeviceID)
	case err != nil:
		return nil, fmt.Errorf("hub: update device %s: %w", d.DeviceID, err)
	}
	out, err := decodeDevice(rec, hubName)
	if err != nil {
		return nil, err
	}
	r.revoke(hubName, d.DeviceID, out)
	if out.Status != StatusEnabled {
		// A module is enabled with its device: its sessions close too.
		if err := r.revokeModules(ctx, hubName, d.DeviceID); err != nil {
			return nil, err
		}
	}
	r.deviceChanged(hubName, d.DeviceID)
	return out, nil
}

// remove removes a device under an optional If-Match.
func (r *Registry) remove(ctx context.Context, hubName, id, ifMatch string) error {
	err := r.store.Delete(ctx, store.KindDevice, deviceKey(hubName, id), unquote(ifMatch))
	r.forgetSendView(hubName, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return azerr.Newf(azerr.HubDeviceNotFound, "Device %s not found.", id)
	case errors.Is(err, store.ErrPreconditionFailed):
		return azerr.New(azerr.HubPreconditionFailed)
	case err != nil:
		return fmt.Errorf("hub: delete device %s: %w", id, err)
	}
	r.revoke(hubName, id, nil)
	// The device's twin, queue and modules go with it. Should this fail half way,
	// nothing leaks to a new device of the same ID: its twin is recreated
	// for its generation; only stale queued messages could remain, and
	// the next delete or purge removes them.
	dk := deviceKey(hubName, id)
	if err := r.store.Delete(ctx, store.KindTwin, dk, ""); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("hub: delete twin of %s: %w", id, err)
	}
	if _, err := purgeC2D(ctx, r.store, dk); err != nil {
		return fmt.Errorf("hub: delete queue of %s: %w", id, err)
	}
	return r.deleteModules(ctx, hubName, id)
}

// Keys returns the symmetric keys of an enabled device, for authenticating
// its connections.
func (d *Device) Keys() []string {
	if d.Authentication == nil || d.Authentication.SymmetricKey == nil {
		return nil
	}
	return []string{d.Authentication.SymmetricKey.PrimaryKey, d.Authentication.SymmetricKey.SecondaryKey}
}

func (r *Registry) apply(dst, src *Device, now time.Time) error {
	if !validDeviceID(src.DeviceID) {
		return azerr.Newf(azerr.HubArgumentInvalid, "Device ID '%s' is not valid.", src.DeviceID)
	}
	if src.Status != "" {
		if src.Status != StatusEnabled && src.Status != StatusDisabled {
			return azerr.Newf(azerr.HubArgumentInvalid, "Status '%s' is not valid.", src.Status)
		}
		if src.Status != dst.Status {
			dst.Status = src.Status
			dst.StatusUpdatedTime = now
		}
	}
	dst.StatusReason = src.StatusReason
	if src.Capabilities != nil {
		dst.Capabilities = src.Capabilities
	}
	auth, err := mergeAuthentication(dst.Authentication, src.Authentication)
	if err != nil {
		return err
	}
	dst.Authentication = auth
	return nil
}

// mergeAuthentication returns the authentication an identity (device or
// module) has after a write that asks for in, given the stored cur (nil
// for a new identity): sas keys not given are kept, or generated for a new
// identity; thumbprints are checked.
func mergeAuthentication(cur, in *Authentication) (*Authentication, error) {
	auth := in
	if auth == nil {
		auth = &Authentication{Type: AuthSAS}
	}
	if auth.Type == "" {
		auth.Type = AuthSAS
		// Node's create sets selfSigned when only thumbprints are given;
		// other clients may leave the type out.
		if tp := auth.X509Thumbprint; tp != nil && tp.PrimaryThumbprint != nil && *tp.PrimaryThumbprint != "" {
			auth.Type = AuthSelfSigned
		}
	}
	switch auth.Type {
	case AuthSAS:
	case AuthSelfSigned:
		tp := auth.X509Thumbprint
		if tp == nil || tp.PrimaryThumbprint == nil || !validThumbprint(*tp.PrimaryThumbprint) ||
			(tp.SecondaryThumbprint != nil && *tp.SecondaryThumbprint != "" && !validThumbprint(*tp.SecondaryThumbprint)) {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "A selfSigned device needs x509Thumbprint.primaryThumbprint: the SHA-1 (40 hex digits) or SHA-256 (64) of its certificate.")
		}
		auth.SymmetricKey = nil
		return auth, nil
	case AuthCertificateAuthority:
		auth.SymmetricKey, auth.X509Thumbprint = nil, nil
		return auth, nil
	default:
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "Authentication type '%s' is not supported; berth supports sas, selfSigned and certificateAuthority.", auth.Type)
	}
	// Empty keys keep the stored ones: the Node service SDK's update sends
	// {"primaryKey":"","secondaryKey":""} when the caller set no
	// authentication, and disabling a device must not rotate its keys.
	var keys SymmetricKey
	if auth.SymmetricKey != nil {
		keys = *auth.SymmetricKey
	}
	if cur != nil && cur.SymmetricKey != nil {
		if keys.PrimaryKey == "" {
			keys.PrimaryKey = cur.SymmetricKey.PrimaryKey
		}
		if keys.SecondaryKey == "" {
			keys.SecondaryKey = cur.SymmetricKey.SecondaryKey
		}
	}
	if keys.PrimaryKey == "" {
		keys.PrimaryKey = newKey()
	}
	if keys.SecondaryKey == "" {
		keys.SecondaryKey = newKey()
	}
	auth.SymmetricKey = &keys
	return auth, nil
}

// validThumbprint: SHA-1 or SHA-256 in hex, any case.
func validThumbprint(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func newDevice(id string, now time.Time) *Device {
	return &Device{
		DeviceID: id,
		// Azure's generation IDs are .NET ticks of the creation time.
		GenerationID:    fmt.Sprint(now.UnixNano()/100 + 621355968000000000),
		ConnectionState: "Disconnected",
		Status:          StatusEnabled,
		Capabilities:    &Capabilities{},
		ParentScopes:    []string{},
		// Azure reports "0001-01-01T00:00:00Z" for times that never happened.
	}
}

func encodeDevice(hubName string, d *Device) (store.Record, error) {
	// Presence is never stored (see Registry.presence).
	c := *d
	c.ConnectionState = "Disconnected"
	c.ConnectionStateUpdatedTime, c.LastActivityTime = time.Time{}, time.Time{}
	data, err := json.Marshal(&c)
	if err != nil {
		return store.Record{}, fmt.Errorf("hub: encode device: %w", err)
	}
	return store.Record{Kind: store.KindDevice, Key: deviceKey(hubName, d.DeviceID), Index: strings.ToLower(hubName), Data: data}, nil
}

func decodeDevice(rec store.Record, hubName string) (*Device, error) {
	var d Device
	if err := json.Unmarshal(rec.Data, &d); err != nil {
		return nil, fmt.Errorf("hub: decode device %s: %w", rec.Key, err)
	}
	d.ETag = rec.ETag
	d.Hub = hubName
	if d.ParentScopes == nil {
		d.ParentScopes = []string{} // devices stored before scopes existed
	}
	if isEdge(&d) && d.DeviceScope == nil {
		s := EdgeScope(&d) // an edge device stored before scopes existed
		d.DeviceScope = &s
	}
	return &d, nil
}

func validDeviceID(id string) bool {
	return len(id) <= 128 && alnumOr(id, "-.%_*?!(),:=@$'")
}

// alnumOr reports whether s is non-empty and made of ASCII letters, digits
// and the bytes of extra: the shape of IoT Hub's identifier rules.
func alnumOr(s, extra string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(extra, c) >= 0 {
			continue
		}
		return false
	}
	return true
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if s == `"*"` {
		return "*"
	}
	return strings.Trim(s, `"`)
}

// etagOrAny turns an optional If-Match into the store condition: with none,
// the write is conditional on the version just read, so concurrent updates
// cannot be lost between Get and Put.
func etagOrAny(ifMatch, current string) string {
	if m := unquote(ifMatch); m != "" {
		return m
	}
	return current
}

func newKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}
