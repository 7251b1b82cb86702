package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/store"
)

// HubInfo describes one IoT hub berth serves, and how the DPS links it.
type HubInfo struct {
	// Name is the hub's host name: what devices put in their connection
	// strings and MQTT usernames and what TLS serves (SNI).
	Name string `json:"name"`
	// AllocationWeight weighs the hub in hashed allocation.
	AllocationWeight int `json:"allocationWeight"`
	// ApplyAllocationPolicy makes the hub a candidate for enrollments that
	// name no hubs of their own.
	ApplyAllocationPolicy bool `json:"applyAllocationPolicy"`
	// Region labels the hub for geoLatency allocation.
	Region  string    `json:"region,omitempty"`
	Created time.Time `json:"createdTime"`
	// PartitionCount is the number of partitions of the hub's Event
	// Hubs-compatible endpoint, fixed at creation (as on Azure); 0, for a
	// hub created before berth had partitions, means
	// DefaultPartitionCount. Use Partitions to read it.
	PartitionCount int `json:"partitionCount,omitempty"`
	// RetentionDays is how long the hub's telemetry is kept, 1 to
	// MaxRetentionDays; 0 means the telemetry stream's own limit.
	RetentionDays int `json:"retentionDays,omitempty"`
	// ConsumerGroups are the consumer groups created besides $Default.
	ConsumerGroups []ConsumerGroup `json:"consumerGroups,omitempty"`
}

// ConsumerGroup is a consumer group of a hub's Event Hubs-compatible
// endpoint.
type ConsumerGroup struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

// DefaultConsumerGroup is the group every hub has.
const DefaultConsumerGroup = "$Default"

// MaxConsumerGroups is how many groups a hub may have besides $Default
// (Azure's standard tier allows 20 in all).
const MaxConsumerGroups = 19

// HasConsumerGroup reports whether a hub has a consumer group, compared
// case-insensitively as Event Hubs does.
func (i HubInfo) HasConsumerGroup(name string) bool {
	if strings.EqualFold(name, DefaultConsumerGroup) {
		return true
	}
	return slices.ContainsFunc(i.ConsumerGroups, func(g ConsumerGroup) bool { return strings.EqualFold(g.Name, name) })
}

// validConsumerGroup: 1 to 50 letters, digits, '.', '_' and '-', as
// Azure allows.
func validConsumerGroup(name string) bool {
	if name == "" || len(name) > 50 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CreateConsumerGroup adds a consumer group to a hub; creating one that
// exists (or $Default) is not an error, as an ARM PUT.
func (d *Directory) CreateConsumerGroup(ctx context.Context, hubName, group string, now time.Time) (ConsumerGroup, error) {
	if !validConsumerGroup(group) && !strings.EqualFold(group, DefaultConsumerGroup) {
		return ConsumerGroup{}, badHub("Consumer group name %q is not valid: 1 to 50 letters, digits, '.', '_' and '-'.", group)
	}
	out := ConsumerGroup{Name: group, Created: now.UTC()}
	err := d.change(ctx, func(infos []HubInfo) ([]HubInfo, error) {
		i := slices.IndexFunc(infos, func(h HubInfo) bool { return strings.EqualFold(h.Name, hubName) })
		if i < 0 {
			return nil, azerr.Newf(azerr.DPSNotFound, "Hub %s not found.", hubName)
		}
		if strings.EqualFold(group, DefaultConsumerGroup) {
			out = ConsumerGroup{Name: DefaultConsumerGroup, Created: infos[i].Created}
			return nil, errUnchanged
		}
		for _, g := range infos[i].ConsumerGroups {
			if strings.EqualFold(g.Name, group) {
				out = g
				return nil, errUnchanged
			}
		}
		if len(infos[i].ConsumerGroups) >= MaxConsumerGroups {
			return nil, badHub("Hub %s has the most consumer groups allowed (%d).", infos[i].Name, MaxConsumerGroups+1)
		}
		infos[i].ConsumerGroups = append(slices.Clone(infos[i].ConsumerGroups), out)
		return infos, nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return ConsumerGroup{}, err
	}
	return out, nil
}

// DeleteConsumerGroup removes a consumer group; $Default stays.
func (d *Directory) DeleteConsumerGroup(ctx context.Context, hubName, group string) error {
	return d.change(ctx, func(infos []HubInfo) ([]HubInfo, error) {
		i := slices.IndexFunc(infos, func(h HubInfo) bool { return strings.EqualFold(h.Name, hubName) })
		if i < 0 {
			return nil, azerr.Newf(azerr.DPSNotFound, "Hub %s not found.", hubName)
		}
		if strings.EqualFold(group, DefaultConsumerGroup) {
			return nil, badHub("The consumer group %s cannot be deleted.", DefaultConsumerGroup)
		}
		j := slices.IndexFunc(infos[i].ConsumerGroups, func(g ConsumerGroup) bool { return strings.EqualFold(g.Name, group) })
		if j < 0 {
			return nil, azerr.Newf(azerr.DPSNotFound, "Consumer group %s not found on hub %s.", group, infos[i].Name)
		}
		infos[i].ConsumerGroups = slices.Delete(slices.Clone(infos[i].ConsumerGroups), j, j+1)
		return infos, nil
	})
}

// Event Hubs-compatible endpoint limits (docs/telemetry-stream.md).
const (
	// DefaultPartitionCount is Azure's default for a new hub.
	DefaultPartitionCount = 4
	// MaxPartitionCount is the most an IoT hub's built-in endpoint has
	// on Azure (32).
	MaxPartitionCount = 32
	// MaxRetentionDays is IoT Hub's longest built-in endpoint retention.
	MaxRetentionDays = 7
)

// Partitions is the hub's partition count.
func (i HubInfo) Partitions() int {
	if i.PartitionCount <= 0 {
		return DefaultPartitionCount
	}
	return i.PartitionCount
}

// PartitionOf is the partition of a device's telemetry on a hub with n
// partitions: a stable hash (FNV-1a, 32 bit) of the device ID, so that one
// device's messages all go to one partition and keep their order, on every
// node and across restarts. A module's messages go with its device's.
func PartitionOf(deviceID string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	return int(h.Sum32() % uint32(n))
}

// Partitions is the partition count of the hub a host name names; an
// unknown hub gets DefaultPartitionCount.
func (d *Directory) Partitions(host string) int {
	if s, ok := d.Lookup(host); ok {
		return s.Info.Partitions()
	}
	return DefaultPartitionCount
}

func checkEventHub(info HubInfo) error {
	if info.PartitionCount < 0 || info.PartitionCount > MaxPartitionCount {
		return badHub("partitionCount must be between 1 and %d.", MaxPartitionCount)
	}
	if info.RetentionDays < 0 || info.RetentionDays > MaxRetentionDays {
		return badHub("retentionDays must be between 1 and %d.", MaxRetentionDays)
	}
	return nil
}

// Served is a hub with its shared access policies.
type Served struct {
	Info     HubInfo
	Settings *Settings
}

// MaxHubs bounds the hubs one berth serves (Azure links at most 50 hubs to
// a DPS).
const MaxHubs = 50

const directoryKey = "hubs"

// Directory is the set of hubs berth serves, persistent and changeable at
// run time (berth hub create|update|delete). Lookups take no store
// round-trip. Other berth nodes sharing the store see changes after Reload
// (or a restart).
type Directory struct {
	st  store.Store
	reg *Registry
	// def is this node's default hub (berth serve --hub-name).
	def string

	mu       sync.RWMutex
	hubs     []*Served // in creation order; the first is the default
	watchers []func([]HubInfo)
}

// LoadDirectory reads the hubs, adding defaultHub (with IoT Hub's default
// policies) when it is not one of them yet.
func LoadDirectory(ctx context.Context, st store.Store, reg *Registry, defaultHub string, now time.Time) (*Directory, error) {
	if !ValidHubName(defaultHub) {
		return nil, fmt.Errorf("hub: default hub name %q is not a valid host name", defaultHub)
	}
	d := &Directory{st: st, reg: reg, def: defaultHub}
	err := d.change(ctx, func(infos []HubInfo) ([]HubInfo, error) {
		if slices.ContainsFunc(infos, func(h HubInfo) bool { return strings.EqualFold(h.Name, defaultHub) }) {
			return nil, errUnchanged
		}
		return append(infos, HubInfo{Name: defaultHub, AllocationWeight: 1, ApplyAllocationPolicy: true, Created: now.UTC()}), nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return nil, err
	}
	return d, d.Reload(ctx)
}

// errUnchanged ends a change that has nothing to write.
var errUnchanged = errors.New("hub: nothing to change")

func (d *Directory) read(ctx context.Context) ([]HubInfo, string, error) {
	rec, err := d.st.Get(ctx, store.KindConfig, directoryKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("hub: read hubs: %w", err)
	}
	var infos []HubInfo
	if err := json.Unmarshal(rec.Data, &infos); err != nil {
		return nil, "", fmt.Errorf("hub: decode hubs: %w", err)
	}
	return infos, rec.ETag, nil
}

// write stores the list: created when etag is "", else conditional on it.
func (d *Directory) write(ctx context.Context, infos []HubInfo, etag string) error {
	data, err := json.Marshal(infos)
	if err != nil {
		return fmt.Errorf("hub: encode hubs: %w", err)
	}
	cond := store.Cond{IfNotExists: true}
	if etag != "" {
		cond = store.Cond{IfMatch: etag}
	}
	_, err = d.st.Put(ctx, store.Record{Kind: store.KindConfig, Key: directoryKey, Data: data}, cond)
	return err
}

// Reload rereads the hubs and their policies from the store.
func (d *Directory) Reload(ctx context.Context) error {
	infos, _, err := d.read(ctx)
	if err != nil {
		return err
	}
	// A hub already served keeps its *Settings: front ends and the server
	// hold it, and a new object would leave them with stale policies.
	d.mu.RLock()
	prev := map[string]*Settings{}
	for _, h := range d.hubs {
		prev[strings.ToLower(h.Info.Name)] = h.Settings
	}
	d.mu.RUnlock()
	hubs := make([]*Served, 0, len(infos))
	for _, info := range infos {
		set := prev[strings.ToLower(info.Name)]
		if set == nil {
			var err error
			if set, err = LoadOrCreateSettings(ctx, d.st, info.Name); err != nil {
				return err
			}
		}
		hubs = append(hubs, &Served{Info: info, Settings: set})
	}
	d.mu.Lock()
	d.hubs = hubs
	watchers := slices.Clone(d.watchers)
	d.mu.Unlock()
	for _, w := range watchers {
		w(infosOf(hubs))
	}
	return nil
}

func infosOf(hubs []*Served) []HubInfo {
	out := make([]HubInfo, len(hubs))
	for i, h := range hubs {
		out[i] = h.Info
	}
	return out
}

// Watch calls fn with the hubs now and after every change (the server
// reissues its certificate and relinks the DPS).
func (d *Directory) Watch(fn func([]HubInfo)) {
	d.mu.Lock()
	d.watchers = append(d.watchers, fn)
	hubs := d.hubs
	d.mu.Unlock()
	fn(infosOf(hubs))
}

// Lookup returns the hub a host name names: case-insensitively, ignoring
// a :port, as connection strings and Host headers give it.
func (d *Directory) Lookup(host string) (*Served, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, h := range d.hubs {
		if strings.EqualFold(h.Info.Name, host) {
			return h, true
		}
	}
	return nil, false
}

// Default is this node's default hub (berth serve --hub-name).
func (d *Directory) Default() *Served {
	s, _ := d.Lookup(d.def)
	return s
}

// List returns the hubs in creation order.
func (d *Directory) List() []HubInfo {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return infosOf(d.hubs)
}

// ValidHubName reports whether s can be a hub host name: a DNS name of
// letters, digits, '-' and '.', or an IP address.
func ValidHubName(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// change runs edit on the stored list under optimistic concurrency, then
// reloads.
func (d *Directory) change(ctx context.Context, edit func([]HubInfo) ([]HubInfo, error)) error {
	for range 5 {
		infos, etag, err := d.read(ctx)
		if err != nil {
			return err
		}
		next, err := edit(slices.Clone(infos))
		if err != nil {
			return err
		}
		err = d.write(ctx, next, etag)
		if errors.Is(err, store.ErrPreconditionFailed) || errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return fmt.Errorf("hub: write hubs: %w", err)
		}
		return d.Reload(ctx)
	}
	return azerr.Newf(azerr.DPSConflict, "The hubs are changing concurrently; try again.")
}

func badHub(format string, args ...any) error {
	return azerr.Newf(azerr.DPSBadRequest, format, args...)
}

// Create adds a hub with IoT Hub's default policies.
func (d *Directory) Create(ctx context.Context, info HubInfo, now time.Time) (*Served, error) {
	if !ValidHubName(info.Name) {
		return nil, badHub("Hub name %q is not a valid host name.", info.Name)
	}
	if info.AllocationWeight < 0 || info.AllocationWeight > 1000 {
		return nil, badHub("allocationWeight must be between 0 and 1000.")
	}
	if err := checkEventHub(info); err != nil {
		return nil, err
	}
	info.Created = now.UTC()
	err := d.change(ctx, func(infos []HubInfo) ([]HubInfo, error) {
		if slices.ContainsFunc(infos, func(h HubInfo) bool { return strings.EqualFold(h.Name, info.Name) }) {
			return nil, azerr.Newf(azerr.DPSConflict, "Hub %s already exists.", info.Name)
		}
		if len(infos) >= MaxHubs {
			return nil, badHub("At most %d hubs are allowed.", MaxHubs)
		}
		return append(infos, info), nil
	})
	if err != nil {
		return nil, err
	}
	return d.lookupAfterChange(info.Name)
}

// lookupAfterChange returns a hub just written; a concurrent delete can
// have removed it again.
func (d *Directory) lookupAfterChange(name string) (*Served, error) {
	if s, ok := d.Lookup(name); ok {
		return s, nil
	}
	return nil, azerr.Newf(azerr.DPSConflict, "Hub %s was deleted concurrently.", name)
}

// Update changes a hub's allocation weight, applyAllocationPolicy, region
// and retention. The partition count stays as created (0 keeps it; another
// value is refused), as on Azure: devices' partitions must not move.
func (d *Directory) Update(ctx context.Context, info HubInfo) (*Served, error) {
	if info.AllocationWeight < 0 || info.AllocationWeight > 1000 {
		return nil, badHub("allocationWeight must be between 0 and 1000.")
	}
	if err := checkEventHub(info); err != nil {
		return nil, err
	}
	err := d.change(ctx, func(infos []HubInfo) ([]HubInfo, error) {
		i := slices.IndexFunc(infos, func(h HubInfo) bool { return strings.EqualFold(h.Name, info.Name) })
		if i < 0 {
			return nil, azerr.Newf(azerr.DPSNotFound, "Hub %s not found.", info.Name)
		}
		if info.PartitionCount != 0 && info.PartitionCount != infos[i].Partitions() {
			return nil, badHub("The partition count of hub %s is fixed at creation (%d).", infos[i].Name, infos[i].Partitions())
		}
		info.Name, info.Created, info.PartitionCount = infos[i].Name, infos[i].Created, infos[i].PartitionCount
		info.ConsumerGroups = infos[i].ConsumerGroups
		infos[i] = info
		return infos, nil
	})
	if err != nil {
		return nil, err
	}
	return d.lookupAfterChange(info.Name)
}

// Delete removes a hub with its devices, twins, queues and policies. This
// node's default hub stays: berth always serves it.
func (d *Directory) Delete(ctx context.Context, name string) error {
	var gone HubInfo
	err := d.change(ctx, func(infos []HubInfo) ([]HubInfo, error) {
		i := slices.IndexFunc(infos, func(h HubInfo) bool { return strings.EqualFold(h.Name, name) })
		switch {
		case i < 0:
			return nil, azerr.Newf(azerr.DPSNotFound, "Hub %s not found.", name)
		case strings.EqualFold(infos[i].Name, d.def):
			return nil, badHub("Hub %s is this berth's default hub (--hub-name) and cannot be deleted.", infos[i].Name)
		}
		gone = infos[i]
		return slices.Delete(infos, i, i+1), nil
	})
	if err != nil {
		return err
	}
	// The hub is no longer served; now its data goes. A failure here
	// leaves records no lookup reaches; deleting again is not possible,
	// so they are logged by the caller and cleaned by recreating and
	// deleting the hub.
	for {
		devs, err := d.reg.list(ctx, gone.Name, "", 500)
		if err != nil {
			return fmt.Errorf("hub: delete devices of %s: %w", gone.Name, err)
		}
		if len(devs) == 0 {
			break
		}
		for _, dev := range devs {
			if err := d.reg.remove(ctx, gone.Name, dev.DeviceID, ""); err != nil {
				return fmt.Errorf("hub: delete devices of %s: %w", gone.Name, err)
			}
		}
	}
	if err := d.st.Delete(ctx, store.KindConfig, "hub/"+strings.ToLower(gone.Name), ""); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("hub: delete policies of %s: %w", gone.Name, err)
	}
	return nil
}

// SameHost compares hub host names as connection strings, usernames, CBS
// audiences and Host headers give them: case does not matter, and a
// trailing :port names the same hub (the registry's audience check ignores
// the port too).
func SameHost(a, b string) bool {
	return strings.EqualFold(stripPort(a), stripPort(b))
}

func stripPort(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}

// ServedHub resolves the host name a device or service client names to the
// hub berth serves under it, returning the hub's name as berth spells it
// (so every session of a hub uses one spelling) and its policies. With a
// Directory (several hubs) the name must be one of them; without, it must
// be the single hub def. Every front end resolves hubs here.
func ServedHub(dir *Directory, def string, defSettings *Settings, name string) (string, *Settings, bool) {
	if dir != nil {
		if served, ok := dir.Lookup(name); ok {
			return served.Info.Name, served.Settings, true
		}
		return "", nil, false
	}
	if def != "" && SameHost(name, def) {
		return def, defSettings, true
	}
	return "", nil, false
}
