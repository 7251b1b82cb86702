// Package policy is the shared access policies of a berth DPS or hub: named
// key pairs with rights, kept in one store record and changed at run time
// (create, update rights, delete, renew keys) without a restart.
package policy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// Policy is a shared access policy.
type Policy struct {
	KeyName      string   `json:"keyName"`
	PrimaryKey   string   `json:"primaryKey"`
	SecondaryKey string   `json:"secondaryKey"`
	Rights       []string `json:"rights"`
}

// Has reports whether the policy grants right. RegistryWrite implies
// RegistryRead, as on IoT Hub's registryReadWrite.
func (p *Policy) Has(right string) bool {
	for _, r := range p.Rights {
		if strings.EqualFold(r, right) || (strings.EqualFold(right, "RegistryRead") && strings.EqualFold(r, "RegistryWrite")) {
			return true
		}
	}
	return false
}

// ConnectionString is the service connection string of the policy for host.
func (p *Policy) ConnectionString(host string) string {
	return "HostName=" + host + ";SharedAccessKeyName=" + p.KeyName + ";SharedAccessKey=" + p.PrimaryKey
}

// NewKey returns a random 256-bit key, base64-encoded (44 characters), as
// Azure generates them.
func NewKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// ValidName reports whether s is a valid policy name: 1–64 ASCII letters,
// digits, '.', '_' or '-' (Azure's rule for key names).
func ValidName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Set is a concurrency-safe, persistent list of policies: the "policies"
// member of one JSON record in the store (other members of that record are
// kept as they are). Reads take no store round-trip; each change is a
// conditional write of the record, so two writers cannot lose each other's
// change. Other berth nodes sharing the store see a change once they
// Reload (berth serve does on the store's change notification).
type Set struct {
	st store.Store
	// rec is the record's kind and key.
	kind store.Kind
	key  string
	// Rights are the rights a policy of this set may have.
	rights []string
	// Limit is the most policies the set holds.
	limit int
	// keep names the right that at least one policy must keep, so that
	// the operator cannot lock themselves out ("" for none).
	keep string

	mu       sync.RWMutex
	list     []Policy // replaced, never modified in place
	watchers []func()
}

// Config describes a Set.
type Config struct {
	Kind   store.Kind
	Key    string
	Rights []string // allowed rights
	Limit  int      // maximum number of policies
	Keep   string   // a right some policy must always have
}

// Load reads the set from the record cfg names, which must exist.
func Load(ctx context.Context, st store.Store, cfg Config) (*Set, error) {
	s := &Set{st: st, kind: cfg.Kind, key: cfg.Key, rights: cfg.Rights, limit: cfg.Limit, keep: cfg.Keep}
	return s, s.Reload(ctx)
}

// Reload rereads the set from the store: another berth node sharing it
// changed the policies (server watches the store for that). The watchers
// are called when the policies differ from the ones held.
func (s *Set) Reload(ctx context.Context) error {
	_, list, _, err := s.read(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	changed := s.list != nil && !slices.EqualFunc(s.list, list, func(a, b Policy) bool {
		return a.KeyName == b.KeyName && a.PrimaryKey == b.PrimaryKey && a.SecondaryKey == b.SecondaryKey && slices.Equal(a.Rights, b.Rights)
	})
	s.list = list
	watchers := slices.Clone(s.watchers)
	s.mu.Unlock()
	if changed {
		for _, w := range watchers {
			w()
		}
	}
	return nil
}

func (s *Set) read(ctx context.Context) (map[string]json.RawMessage, []Policy, string, error) {
	rec, err := s.st.Get(ctx, s.kind, s.key)
	if err != nil {
		return nil, nil, "", fmt.Errorf("policy: read %s: %w", s.key, err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(rec.Data, &doc); err != nil {
		return nil, nil, "", fmt.Errorf("policy: decode %s: %w", s.key, err)
	}
	var list []Policy
	if raw := doc["policies"]; len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, nil, "", fmt.Errorf("policy: decode %s policies: %w", s.key, err)
		}
	}
	return doc, list, rec.ETag, nil
}

// Watch calls fn after every change made through this Set, and after a
// Reload that found the policies changed by another node (berth serve
// rewrites client.json when an owner key is renewed, and closes sessions
// opened with a key that is gone).
func (s *Set) Watch(fn func()) {
	s.mu.Lock()
	s.watchers = append(s.watchers, fn)
	s.mu.Unlock()
}

// Get returns a copy of the named policy (names compare case-insensitively).
func (s *Set) Get(name string) (*Policy, bool) {
	s.mu.RLock()
	list := s.list
	s.mu.RUnlock()
	for i := range list {
		if strings.EqualFold(list[i].KeyName, name) {
			p := list[i]
			p.Rights = slices.Clone(p.Rights)
			return &p, true
		}
	}
	return nil, false
}

// List returns a copy of every policy.
func (s *Set) List() []Policy {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Policy, len(s.list))
	for i, p := range s.list {
		p.Rights = slices.Clone(p.Rights)
		out[i] = p
	}
	return out
}

func invalid(format string, args ...any) error {
	return azerr.Newf(azerr.DPSBadRequest, format, args...)
}

// update applies change to the stored list and, once it is durable, to the
// in-memory one. A concurrent writer makes it read and try again.
func (s *Set) update(ctx context.Context, change func([]Policy) ([]Policy, error)) error {
	for range 5 {
		doc, list, etag, err := s.read(ctx)
		if err != nil {
			return err
		}
		next, err := change(slices.Clone(list))
		if err != nil {
			return err
		}
		if err := s.check(next); err != nil {
			return err
		}
		raw, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("policy: encode: %w", err)
		}
		doc["policies"] = raw
		data, err := json.Marshal(doc)
		if err != nil {
			return fmt.Errorf("policy: encode: %w", err)
		}
		_, err = s.st.Put(ctx, store.Record{Kind: s.kind, Key: s.key, Data: data}, store.Cond{IfMatch: etag})
		if errors.Is(err, store.ErrPreconditionFailed) {
			continue
		}
		if err != nil {
			return fmt.Errorf("policy: write %s: %w", s.key, err)
		}
		s.mu.Lock()
		s.list = next
		watchers := slices.Clone(s.watchers)
		s.mu.Unlock()
		for _, w := range watchers {
			w()
		}
		return nil
	}
	return azerr.Newf(azerr.DPSConflict, "The policies are changing concurrently; try again.")
}

// check validates a whole list before it is written.
func (s *Set) check(list []Policy) error {
	if s.limit > 0 && len(list) > s.limit {
		return invalid("At most %d shared access policies are allowed.", s.limit)
	}
	if s.keep != "" && !slices.ContainsFunc(list, func(p Policy) bool { return p.Has(s.keep) }) {
		return invalid("At least one policy must keep the %s right.", s.keep)
	}
	return nil
}

func (s *Set) normaliseRights(rights []string) ([]string, error) {
	if len(rights) == 0 {
		return nil, invalid("A policy needs at least one right (%s).", strings.Join(s.rights, ", "))
	}
	var out []string
	for _, r := range rights {
		i := slices.IndexFunc(s.rights, func(a string) bool { return strings.EqualFold(a, r) })
		if i < 0 {
			return nil, invalid("Right %q is not one of %s.", r, strings.Join(s.rights, ", "))
		}
		if !slices.Contains(out, s.rights[i]) {
			out = append(out, s.rights[i])
		}
	}
	return out, nil
}

func checkKey(k string) error {
	if k == "" {
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) < 16 || len(b) > 64 {
		return invalid("Keys must be base64 of 16 to 64 bytes.")
	}
	return nil
}

// Put creates a policy or updates an existing one's rights (and keys, when
// given). Keys not given are generated for a new policy and kept for an
// existing one. created reports a new policy.
func (s *Set) Put(ctx context.Context, p Policy) (out *Policy, created bool, err error) {
	if !ValidName(p.KeyName) {
		return nil, false, invalid("Policy name %q is not valid: 1 to 64 letters, digits, '.', '_' or '-'.", p.KeyName)
	}
	rights, err := s.normaliseRights(p.Rights)
	if err != nil {
		return nil, false, err
	}
	for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
		if err := checkKey(k); err != nil {
			return nil, false, err
		}
	}
	err = s.update(ctx, func(list []Policy) ([]Policy, error) {
		i := slices.IndexFunc(list, func(q Policy) bool { return strings.EqualFold(q.KeyName, p.KeyName) })
		created = i < 0
		np := Policy{KeyName: p.KeyName, PrimaryKey: p.PrimaryKey, SecondaryKey: p.SecondaryKey, Rights: rights}
		if created {
			if np.PrimaryKey == "" {
				np.PrimaryKey = NewKey()
			}
			if np.SecondaryKey == "" {
				np.SecondaryKey = NewKey()
			}
			out = &np
			return append(list, np), nil
		}
		np.KeyName = list[i].KeyName
		if np.PrimaryKey == "" {
			np.PrimaryKey = list[i].PrimaryKey
		}
		if np.SecondaryKey == "" {
			np.SecondaryKey = list[i].SecondaryKey
		}
		list[i] = np
		out = &np
		return list, nil
	})
	if err != nil {
		return nil, false, err
	}
	return out, created, nil
}

// Delete removes a policy.
func (s *Set) Delete(ctx context.Context, name string) error {
	return s.update(ctx, func(list []Policy) ([]Policy, error) {
		i := slices.IndexFunc(list, func(q Policy) bool { return strings.EqualFold(q.KeyName, name) })
		if i < 0 {
			return nil, azerr.Newf(azerr.DPSNotFound, "Policy %s not found.", name)
		}
		return slices.Delete(list, i, i+1), nil
	})
}

// Key kinds for RenewKey (az iot hub policy renew-key --renew-key).
const (
	RenewPrimary   = "primary"
	RenewSecondary = "secondary"
	RenewSwap      = "swap"
)

// RenewKey replaces the primary or secondary key with a new one, or swaps
// them. Tokens signed with the replaced key stop working at once; the usual
// rotation is: move clients to the secondary key, renew the primary, move
// them back, renew the secondary.
func (s *Set) RenewKey(ctx context.Context, name, which string) (*Policy, error) {
	var out *Policy
	err := s.update(ctx, func(list []Policy) ([]Policy, error) {
		i := slices.IndexFunc(list, func(q Policy) bool { return strings.EqualFold(q.KeyName, name) })
		if i < 0 {
			return nil, azerr.Newf(azerr.DPSNotFound, "Policy %s not found.", name)
		}
		p := list[i]
		switch strings.ToLower(which) {
		case RenewPrimary:
			p.PrimaryKey = NewKey()
		case RenewSecondary:
			p.SecondaryKey = NewKey()
		case RenewSwap:
			p.PrimaryKey, p.SecondaryKey = p.SecondaryKey, p.PrimaryKey
		default:
			return nil, invalid("Key %q is not primary, secondary or swap.", which)
		}
		list[i] = p
		out = &p
		return list, nil
	})
	return out, err
}
