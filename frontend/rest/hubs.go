package rest

import (
	"bytes"
	"net/http"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/hub"
)

// Hub management, a berth extension of the DPS service API: the hubs one
// berth serves and how the DPS links them (Azure creates hubs and links
// them to a DPS through Azure Resource Manager, which berth does not
// serve). `berth hub create|list|show|update|delete` use these routes:
//
//	GET    /hubs         list (200, in creation order)
//	GET    /hubs/{name}  read (200)
//	PUT    /hubs/{name}  create (201) or update (200)
//	DELETE /hubs/{name}  delete (204), with the hub's devices, twins,
//	                     queues and policies; the default hub is refused
//
// They are authorized exactly as the policy routes (policy.go): a DPS
// service token with ServiceConfig, checked before the name and the body,
// and errors in the DPS format. They have one or two segments, the hub
// policy routes (/hubs/{hubName}/policies…) three or more, so the two
// never fit the same path; no DPS device route has fewer than three.

// hubWire is a hub as the routes answer it. It spells every field out,
// region included when empty, so that the answer's shape does not depend
// on the hub.
type hubWire struct {
	Name                  string    `json:"name"`
	AllocationWeight      int       `json:"allocationWeight"`
	ApplyAllocationPolicy bool      `json:"applyAllocationPolicy"`
	Region                string    `json:"region"`
	CreatedTime           time.Time `json:"createdTime"`
	// The Event Hubs-compatible endpoint: partitions (fixed at creation)
	// and the hub's own retention (0: the telemetry stream's).
	PartitionCount int `json:"partitionCount"`
	RetentionDays  int `json:"retentionDays"`
}

func toHubWire(i hub.HubInfo) hubWire {
	return hubWire{Name: i.Name, AllocationWeight: i.AllocationWeight, ApplyAllocationPolicy: i.ApplyAllocationPolicy,
		Region: i.Region, CreatedTime: i.Created, PartitionCount: i.Partitions(), RetentionDays: i.RetentionDays}
}

// hubBody is the body of PUT /hubs/{name}. A field left out takes its
// default on create (weight 1 and a candidate for allocation, as Azure
// links a hub) and keeps its value on update, so a partial body changes
// only what it names. name is optional; when given it must name the hub
// of the path, so that a hub read, edited and written back works
// (createdTime and unknown fields are ignored).
type hubBody struct {
	Name                  string  `json:"name"`
	AllocationWeight      *int    `json:"allocationWeight"`
	ApplyAllocationPolicy *bool   `json:"applyAllocationPolicy"`
	Region                *string `json:"region"`
	PartitionCount        *int    `json:"partitionCount"`
	RetentionDays         *int    `json:"retentionDays"`
}

// apply sets the fields the body gives.
func (b *hubBody) apply(i *hub.HubInfo) {
	if b.AllocationWeight != nil {
		i.AllocationWeight = *b.AllocationWeight
	}
	if b.ApplyAllocationPolicy != nil {
		i.ApplyAllocationPolicy = *b.ApplyAllocationPolicy
	}
	if b.Region != nil {
		i.Region = *b.Region
	}
	if b.PartitionCount != nil {
		i.PartitionCount = *b.PartitionCount
	}
	if b.RetentionDays != nil {
		i.RetentionDays = *b.RetentionDays
	}
}

// hubManagementRoutes is the hub management API.
func (h *handler) hubManagementRoutes() routes {
	const config = dps.RightServiceConfig
	return routes{
		newRoute(http.MethodGet, "hubs", h.authorized(config, h.withHubs(listHubs))),
		newRoute(http.MethodGet, "hubs/{name}", h.authorized(config, h.withHubs(h.getHub))),
		newRoute(http.MethodPut, "hubs/{name}", h.authorized(config, h.withHubs(h.putHub))),
		newRoute(http.MethodDelete, "hubs/{name}", h.authorized(config, h.withHubs(deleteHub))),
		// Consumer groups of the Event Hubs-compatible endpoint, under the
		// path ARM gives them (…/IotHubs/{hub}/eventHubEndpoints/events/ConsumerGroups/{name}).
		newRoute(http.MethodGet, "hubs/{name}/eventHubEndpoints/events/ConsumerGroups", h.authorized(config, h.withHubs(h.listConsumerGroups))),
		newRoute(http.MethodGet, "hubs/{name}/eventHubEndpoints/events/ConsumerGroups/{group}", h.authorized(config, h.withHubs(h.getConsumerGroup))),
		newRoute(http.MethodPut, "hubs/{name}/eventHubEndpoints/events/ConsumerGroups/{group}", h.authorized(config, h.withHubs(h.putConsumerGroup))),
		newRoute(http.MethodDelete, "hubs/{name}/eventHubEndpoints/events/ConsumerGroups/{group}", h.authorized(config, h.withHubs(deleteConsumerGroup))),
	}
}

// consumerGroupWire is a consumer group as ARM answers it.
type consumerGroupWire struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	Properties struct {
		Created time.Time `json:"created"`
	} `json:"properties"`
}

func toGroupWire(g hub.ConsumerGroup) consumerGroupWire {
	w := consumerGroupWire{Name: g.Name, Type: "Microsoft.Devices/IotHubs/EventHubEndpoints/ConsumerGroups"}
	w.Properties.Created = g.Created
	return w
}

func groupsOf(info hub.HubInfo) []hub.ConsumerGroup {
	return append([]hub.ConsumerGroup{{Name: hub.DefaultConsumerGroup, Created: info.Created}}, info.ConsumerGroups...)
}

// listConsumerGroups serves GET …/ConsumerGroups: {"value": [...]}, $Default first.
func (h *handler) listConsumerGroups(x *exchange, _ *hub.Directory, args []string) {
	s, err := h.namedHub(args[0])
	if err != nil {
		x.fail(err)
		return
	}
	out := struct {
		Value []consumerGroupWire `json:"value"`
	}{Value: []consumerGroupWire{}}
	for _, g := range groupsOf(s.Info) {
		out.Value = append(out.Value, toGroupWire(g))
	}
	x.writeJSON(http.StatusOK, out)
}

func (h *handler) getConsumerGroup(x *exchange, _ *hub.Directory, args []string) {
	s, err := h.namedHub(args[0])
	if err != nil {
		x.fail(err)
		return
	}
	for _, g := range groupsOf(s.Info) {
		if strings.EqualFold(g.Name, args[1]) {
			x.writeJSON(http.StatusOK, toGroupWire(g))
			return
		}
	}
	x.fail(azerr.Newf(azerr.DPSNotFound, "Consumer group %s not found on hub %s.", args[1], s.Info.Name))
}

// putConsumerGroup serves PUT …/ConsumerGroups/{group}: 200 with the group
// (created, or as it was); the body is ignored, as its only field in ARM
// is the name the path already gives.
func (h *handler) putConsumerGroup(x *exchange, d *hub.Directory, args []string) {
	if _, ok := x.readBody(); !ok {
		return
	}
	s, err := h.namedHub(args[0])
	if err != nil {
		x.fail(err)
		return
	}
	g, err := d.CreateConsumerGroup(x.r.Context(), s.Info.Name, args[1], h.now())
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, toGroupWire(g))
}

func deleteConsumerGroup(x *exchange, d *hub.Directory, args []string) {
	if err := d.DeleteConsumerGroup(x.r.Context(), args[0], args[1]); err != nil {
		x.fail(err)
		return
	}
	x.noContent()
}

// withHubs runs next with the directory, or answers 404 when the berth has
// none (a handler built without one serves a fixed hub).
func (h *handler) withHubs(next func(*exchange, *hub.Directory, []string)) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		if h.hub == nil || h.hub.Hubs == nil {
			x.fail(azerr.Newf(azerr.DPSNotFound, "Hub management is not enabled on this berth."))
			return
		}
		next(x, h.hub.Hubs, args)
	}
}

// namedHub is the hub a path argument names, compared case-insensitively
// as host names are: one of the directory, or the one hub of a berth
// without a directory. Unlike a Host header, a name with a port names no
// hub.
func (h *handler) namedHub(name string) (*hub.Served, error) {
	d := h.hub.Hubs
	if d == nil {
		if strings.EqualFold(name, h.hub.Name) {
			return h.single, nil
		}
		return nil, azerr.Newf(azerr.DPSNotFound, "Hub %s not found: this berth serves the hub %s.", name, h.hub.Name)
	}
	if hub.ValidHubName(name) {
		if s, ok := d.Lookup(name); ok {
			return s, nil
		}
	}
	return nil, azerr.Newf(azerr.DPSNotFound, "Hub %s not found.", name)
}

// listHubs serves GET /hubs.
func listHubs(x *exchange, d *hub.Directory, _ []string) {
	infos := d.List()
	out := make([]hubWire, len(infos)) // "[]", not "null", when empty
	for i, info := range infos {
		out[i] = toHubWire(info)
	}
	x.writeJSON(http.StatusOK, out)
}

// getHub serves GET /hubs/{name}.
func (h *handler) getHub(x *exchange, _ *hub.Directory, args []string) {
	s, err := h.namedHub(args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, toHubWire(s.Info))
}

// putHub serves PUT /hubs/{name}: 201 with a new hub (and IoT Hub's
// default policies), 200 with the updated one. An empty body is allowed,
// as `{}`: a new hub with the defaults, or an update that changes
// nothing.
func (h *handler) putHub(x *exchange, d *hub.Directory, args []string) {
	name := args[0]
	raw, ok := x.readBody()
	if !ok {
		return
	}
	var b hubBody
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := decodeObject(raw, &b); err != nil {
			x.fail(azerr.Wrap(azerr.DPSInvalidBody, err))
			return
		}
	}
	if b.Name != "" && !strings.EqualFold(b.Name, name) {
		x.fail(azerr.Newf(azerr.DPSBadRequest, "The body names hub %q but the path names %q.", b.Name, name))
		return
	}
	ctx := x.r.Context()
	var s *hub.Served
	status := http.StatusOK
	// namedHub only fails for a hub it does not find, which is then
	// created; Create refuses a name that is no host name with a 400.
	cur, err := h.namedHub(name)
	if err == nil {
		info := cur.Info
		b.apply(&info)
		s, err = d.Update(ctx, info)
	} else {
		info := hub.HubInfo{Name: name, AllocationWeight: 1, ApplyAllocationPolicy: true}
		b.apply(&info)
		status = http.StatusCreated
		s, err = d.Create(ctx, info, h.now())
	}
	if err != nil {
		x.fail(err)
		return
	}
	if s == nil {
		// The directory answers with its reloaded state, where another
		// writer may already have deleted the hub again.
		x.fail(azerr.Newf(azerr.DPSConflict, "Hub %s was deleted concurrently.", name))
		return
	}
	x.writeJSON(status, toHubWire(s.Info))
}

// deleteHub serves DELETE /hubs/{name}: 204. Refusals (the default hub,
// an unknown one) are the directory's.
func deleteHub(x *exchange, d *hub.Directory, args []string) {
	if err := d.Delete(x.r.Context(), args[0]); err != nil {
		x.fail(err)
		return
	}
	x.noContent()
}
