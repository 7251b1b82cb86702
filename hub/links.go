package hub

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"
	"time"
)

// DeviceLink is a live device connection as the domain sees it: what a
// front end (MQTT today; AMQP and WebSockets later) offers so that the hub
// can push to a device and end its session. Every method must return
// promptly; none may block on the network except InvokeMethod, which waits
// for the device's answer until ctx ends.
type DeviceLink interface {
	// DesiredPatch delivers a desired-properties notification: body is the
	// patch with "$version" (docs/hub-wire.md). Notifications of one device
	// are passed in version order. A link that cannot take one (not
	// subscribed: dropped; queue full: the link closes the connection so
	// that the device resynchronises with GET on reconnect) must not block.
	DesiredPatch(version int64, body []byte)
	// MethodsSubscribed reports whether the device subscribed to direct
	// methods: IoT Hub treats a connected device that did not as offline.
	MethodsSubscribed() bool
	// InvokeMethod sends a direct-method request and waits for the device's
	// answer or for ctx to end (ctx.Err() then).
	InvokeMethod(ctx context.Context, name string, payload []byte) (status int, response []byte, err error)
	// CloudToDevicePending tells the link that the device's
	// cloud-to-device queue has a message it may deliver.
	CloudToDevicePending()
	// Close ends the connection: the hub calls it when a newer connection
	// of the device replaces this one and when the credential the link
	// was opened with is revoked. It must not block; the front end then
	// ends the session as it does when the device goes away (Detach).
	Close(reason CloseReason)
}

// CloseReason says why the hub closes a link, for the front end's log.
type CloseReason int

const (
	// CloseReplaced: a newer connection of the same device authenticated
	// (IoT Hub keeps one per identity, the newest).
	CloseReplaced CloseReason = iota + 1
	// CloseRevoked: the device was disabled or deleted, or the key or
	// thumbprint the link authenticated with was replaced.
	CloseRevoked
	// CloseExpired: the credential the link was opened with is treated as
	// expired before its time (a test server's ExpireTokens); the device
	// reconnects with a fresh one, as when IoT Hub ends a session whose
	// token expired.
	CloseExpired
	// CloseFault: a test server's injected fault drops the connection
	// (hubtest).
	CloseFault
)

func (r CloseReason) String() string {
	switch r {
	case CloseReplaced:
		return "a newer connection of the device authenticated"
	case CloseRevoked:
		return "the device's credential was revoked (disabled, deleted, or keys replaced)"
	case CloseExpired:
		return "the device's credential expired"
	case CloseFault:
		return "a test server dropped the connection"
	}
	return "closed by the hub"
}

// Credential names the credential a device authenticates with as it is
// stored now: its authentication type, keys and thumbprints, hashed (a
// link keeps this, never a key). A link is revoked when the device's
// credential no longer matches the one it was opened with. Every node
// computes the same value, so it can cross between nodes.
func Credential(d *Device) string {
	h := sha256.New()
	if a := d.Authentication; a != nil {
		h.Write([]byte(a.Type))
		if k := a.SymmetricKey; k != nil {
			h.Write([]byte{0})
			h.Write([]byte(k.PrimaryKey))
			h.Write([]byte{0})
			h.Write([]byte(k.SecondaryKey))
		}
		if t := a.X509Thumbprint; t != nil {
			for _, p := range []*string{t.PrimaryThumbprint, t.SecondaryThumbprint} {
				h.Write([]byte{1})
				if p != nil {
					// Thumbprints compare case-insensitively.
					h.Write([]byte(strings.ToLower(*p)))
				}
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// SessionState is what a persistent device session (MQTT CleanSession 0)
// keeps between its connections: the subscriptions, by the front end's
// own filter names, and the QoS each was granted. Undelivered and
// unacknowledged cloud-to-device messages are not part of it: they wait in
// the durable queue and go out again once the subscription is back.
type SessionState struct {
	Subscriptions map[string]byte
}

// Bounds of the persistent sessions a node keeps for devices that are not
// connected (see Links.Detach). A session costs a few hundred bytes.
const (
	// MaxKeptSessions bounds how many; beyond it the least recently kept
	// is forgotten.
	MaxKeptSessions = 100_000
	// KeptSessionLifetime is how long one is kept after its connection
	// ended.
	KeptSessionLifetime = 24 * time.Hour
	// revocationMemory is how long a revocation is remembered for links
	// attached after it: a connection that authenticated just before a
	// revocation (with the old credential) and attaches just after it must
	// not survive it. Authentication plus attach take at most a front
	// end's connect timeout (10 s by default).
	revocationMemory = time.Minute
	// revocationsPruned is how many remembered revocations trigger
	// dropping the expired ones.
	revocationsPruned = 4096
)

// Links is this node's directory of live device sessions. Front ends
// attach a DeviceLink when a device session starts; the domain looks links
// up to push desired properties, invoke methods and wake C2D delivery, and
// closes them when a newer connection replaces them or their credential is
// revoked. It also keeps the state of persistent sessions between
// connections.
//
// With several berth nodes each knows its own connections only; a
// Forwarder (SetForwarder) carries pushes and revocations to the others.
type Links struct {
	mu    sync.Mutex
	links map[string]*attached
	fwd   Forwarder
	// changed is closed and replaced whenever a link is attached or says
	// its subscriptions changed, waking Wait.
	changed chan struct{}

	// kept are persistent sessions whose connection ended, by device key,
	// least recently kept first in order.
	kept     map[string]*list.Element
	order    *list.List // of *keptSession
	maxKept  int
	keptLife time.Duration
	now      func() time.Time

	// revoked are the recent revocations by device key (revocationMemory).
	revoked map[string]revocation
}

type revocation struct {
	keep string
	at   time.Time
}

type attached struct {
	link       DeviceLink
	credential string
	// at is when the link was attached: across nodes the newest attach
	// of a device wins (ReplaceLocal).
	at time.Time
}

type keptSession struct {
	key        string
	credential string
	state      SessionState
	until      time.Time
}

// NewLinks returns an empty directory.
func NewLinks() *Links {
	return &Links{
		links: map[string]*attached{}, changed: make(chan struct{}),
		kept: map[string]*list.Element{}, order: list.New(),
		maxKept: MaxKeptSessions, keptLife: KeptSessionLifetime, now: time.Now,
		revoked: map[string]revocation{},
	}
}

// Attach makes l the device's live link: a newer connection replaces an
// older one, as IoT Hub keeps one per identity. The replaced link, if any,
// is closed (CloseReplaced) and returned. credential is Credential of the
// device as it authenticated: a revocation closes the link when the
// device's credential is no longer that one.
//
// A link whose credential a revocation of the last minute no longer
// admits is closed at once (CloseRevoked): it authenticated before the
// revocation reached the store.
//
// detach forgets the link unless a newer one has replaced it; front ends
// with persistent sessions use Detach instead.
func (ls *Links) Attach(hubName, deviceID, credential string, l DeviceLink) (replaced DeviceLink, detach func()) {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	if old := ls.links[k]; old != nil && old.link != l {
		replaced = old.link
	}
	at := ls.now()
	ls.links[k] = &attached{link: l, credential: credential, at: at}
	revoked := false
	if r, ok := ls.revoked[k]; ok && at.Sub(r.at) < revocationMemory && revokes(r.keep, credential) {
		delete(ls.links, k)
		revoked = true
	}
	ls.wakeLocked()
	fwd, _ := ls.fwd.(SessionForwarder)
	ls.mu.Unlock()
	if replaced != nil {
		replaced.Close(CloseReplaced)
	}
	if revoked {
		l.Close(CloseRevoked)
	} else if fwd != nil {
		// IoT Hub keeps one session per identity across the whole hub:
		// the other nodes close theirs.
		fwd.Attached(hubName, deviceID, at)
	}
	var once sync.Once
	return replaced, func() { once.Do(func() { ls.Detach(hubName, deviceID, l, nil) }) }
}

// Detach forgets l unless a newer link of the device has replaced it. When
// l was still the live link and keep is not nil, keep is remembered as the
// device's persistent session (bounded by MaxKeptSessions and
// KeptSessionLifetime) for its next connection to Resume. Done in one step,
// so that a connection that replaced l meanwhile (and took l's state
// itself) is never handed an older state.
func (ls *Links) Detach(hubName, deviceID string, l DeviceLink, keep *SessionState) {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	a := ls.links[k]
	if a == nil || a.link != l {
		return
	}
	delete(ls.links, k)
	if keep != nil {
		ls.keepLocked(k, a.credential, *keep)
	}
}

func (ls *Links) keepLocked(k, credential string, st SessionState) {
	ls.forgetLocked(k)
	ks := &keptSession{key: k, credential: credential, state: st, until: ls.now().Add(ls.keptLife)}
	ls.kept[k] = ls.order.PushBack(ks)
	for ls.order.Len() > ls.maxKept {
		ls.forgetLocked(ls.order.Front().Value.(*keptSession).key)
	}
}

func (ls *Links) forgetLocked(k string) {
	if e, ok := ls.kept[k]; ok {
		ls.order.Remove(e)
		delete(ls.kept, k)
	}
}

// Resume takes the device's kept persistent session, if one is kept and
// has not expired: the state is handed over once (a second Resume finds
// nothing until the session is kept again).
func (ls *Links) Resume(hubName, deviceID string) (SessionState, bool) {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	e, ok := ls.kept[k]
	if !ok {
		return SessionState{}, false
	}
	ks := e.Value.(*keptSession)
	ls.forgetLocked(k)
	if ls.now().After(ks.until) {
		return SessionState{}, false
	}
	return ks.state, true
}

// Forget drops the device's kept persistent session: a clean session
// (MQTT CleanSession 1) starts from nothing and leaves nothing behind.
func (ls *Links) Forget(hubName, deviceID string) {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	ls.forgetLocked(k)
	ls.mu.Unlock()
}

// Revoke closes the device's sessions opened with a credential other than
// keep, on this node and, through the forwarder, on every other one; keep
// "" closes them all (the device was disabled or deleted). Its kept
// persistent session is dropped likewise. The registry calls it after
// every change of a device.
func (ls *Links) Revoke(hubName, deviceID, keep string) {
	ls.RevokeLocal(hubName, deviceID, keep)
	if f := ls.forwarder(); f != nil {
		f.Revoke(hubName, deviceID, keep)
	}
}

// RevokeLocal is Revoke on this node only; the forwarder's receiving side
// calls it. It reports whether a live link was closed.
func (ls *Links) RevokeLocal(hubName, deviceID, keep string) bool {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	ls.rememberRevocationLocked(k, keep)
	var victim DeviceLink
	if a := ls.links[k]; a != nil && revokes(keep, a.credential) {
		// Forgotten at once, so that pushes stop now and a method waits
		// for the device's next connection instead.
		victim = a.link
		delete(ls.links, k)
	}
	if e, ok := ls.kept[k]; ok && revokes(keep, e.Value.(*keptSession).credential) {
		ls.forgetLocked(k)
	}
	ls.mu.Unlock()
	if victim != nil {
		victim.Close(CloseRevoked)
	}
	return victim != nil
}

// ReplaceLocal closes the device's link on this node when another node
// attached one at a later time: the forwarder's receiving side calls it,
// so that one session per device survives across nodes, the newest.
// Attach times of different nodes are compared as wall clock times; on a
// tie, remoteWins decides (the forwarder orders its nodes), so that both
// nodes keep the same one. The kept persistent session is dropped too:
// the device's session now lives on the other node. It reports whether a
// link was closed.
func (ls *Links) ReplaceLocal(hubName, deviceID string, at time.Time, remoteWins bool) bool {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	var victim DeviceLink
	if a := ls.links[k]; a != nil {
		mine, theirs := a.at.UnixNano(), at.UnixNano()
		if mine < theirs || mine == theirs && remoteWins {
			victim = a.link
			delete(ls.links, k)
		}
	}
	ls.forgetLocked(k)
	ls.mu.Unlock()
	if victim != nil {
		victim.Close(CloseReplaced)
	}
	return victim != nil
}

// revokes reports whether a device revocation that keeps credential keep
// ("" for none) ends a session opened with credential. A session opened
// with a hub policy key is not the device's credential: only disabling or
// deleting the device ends it (RevokePolicies ends it when the key goes).
func revokes(keep, credential string) bool {
	if keep == "" {
		return true
	}
	return credential != keep && !strings.HasPrefix(credential, policyCredentialPrefix)
}

// RevokePolicies closes this node's sessions of hubName opened with a hub
// policy key that valid (Settings.PolicyCredentials) no longer admits: the
// key was renewed or the policy deleted or stripped of DeviceConnect. The
// server calls it on every node when the hub's policies change there
// (locally, or announced by the store). It returns how many it closed.
func (ls *Links) RevokePolicies(hubName string, valid map[string]bool) int {
	prefix := strings.ToLower(hubName) + "/"
	ls.mu.Lock()
	var victims []DeviceLink
	for k, a := range ls.links {
		if strings.HasPrefix(k, prefix) && strings.HasPrefix(a.credential, policyCredentialPrefix) && !valid[a.credential] {
			victims = append(victims, a.link)
			delete(ls.links, k)
		}
	}
	for k, e := range ls.kept {
		if c := e.Value.(*keptSession).credential; strings.HasPrefix(k, prefix) && strings.HasPrefix(c, policyCredentialPrefix) && !valid[c] {
			ls.forgetLocked(k)
		}
	}
	ls.mu.Unlock()
	for _, l := range victims {
		l.Close(CloseRevoked)
	}
	return len(victims)
}

// revokedRecently reports whether a revocation remembered for the device
// (revocationMemory) would close a link attached now with credential.
func (ls *Links) revokedRecently(hubName, deviceID, credential string) bool {
	k := deviceKey(hubName, deviceID)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	r, ok := ls.revoked[k]
	return ok && ls.now().Sub(r.at) < revocationMemory && revokes(r.keep, credential)
}

func (ls *Links) rememberRevocationLocked(k, keep string) {
	now := ls.now()
	if len(ls.revoked) >= revocationsPruned {
		for rk, r := range ls.revoked {
			if now.Sub(r.at) >= revocationMemory {
				delete(ls.revoked, rk)
			}
		}
	}
	ls.revoked[k] = revocation{keep: keep, at: now}
}

// Changed tells waiters that a device's link changed its subscriptions.
func (ls *Links) Changed() {
	ls.mu.Lock()
	ls.wakeLocked()
	ls.mu.Unlock()
}

func (ls *Links) wakeLocked() {
	close(ls.changed)
	ls.changed = make(chan struct{})
}

// Lookup returns the device's live link, or nil.
func (ls *Links) Lookup(hubName, deviceID string) DeviceLink {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if a := ls.links[deviceKey(hubName, deviceID)]; a != nil {
		return a.link
	}
	return nil
}

// Wait returns the device's live link once ok(link) holds, or nil when ctx
// ends first.
func (ls *Links) Wait(ctx context.Context, hubName, deviceID string, ok func(DeviceLink) bool) DeviceLink {
	k := deviceKey(hubName, deviceID)
	for {
		ls.mu.Lock()
		a, ch := ls.links[k], ls.changed
		ls.mu.Unlock()
		if a != nil && ok(a.link) {
			return a.link
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}
