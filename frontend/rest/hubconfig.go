package rest

import (
	"net/http"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// Automatic device configurations (docs/configurations.md,
// docs/spec/iothub-protocol.md#automatic-device-configurations): the routes
// only translate; hub.Configurations holds every rule.

// maxConfigurationBody bounds a configuration document: its content is at
// most a desired section (32 KB) and its queries are short; the hub's
// message limit is a generous bound, as for devices.
const maxConfigurationBody = hub.MaxMessageSize

// configurationInput is what berth takes from a PUT /configurations/{id}
// body: the fields a client may set. The read-only ones clients echo
// (createdTimeUtc, lastUpdatedTimeUtc, systemMetrics, metrics.results,
// etag) are ignored: the C# SDK writes unset times without a zone, which
// time.Time refuses, and the condition travels in If-Match.
type configurationInput struct {
	ID              string                   `json:"id"`
	SchemaVersion   string                   `json:"schemaVersion"`
	Labels          map[string]string        `json:"labels"`
	Content         hub.ConfigurationContent `json:"content"`
	TargetCondition string                   `json:"targetCondition"`
	Priority        int                      `json:"priority"`
	Metrics         *struct {
		Queries map[string]string `json:"queries"`
	} `json:"metrics"`
}

// putConfiguration is PUT /configurations/{id}: without If-Match it creates
// (409 ConfigurationAlreadyExists when it exists), with one it replaces
// under that condition (Node's updateConfiguration sends the etag, or "*"
// when forced). 200 with the stored configuration.
func (h *handler) putConfiguration(x *exchange, args []string) {
	body, ok := x.readHubBody(maxConfigurationBody)
	if !ok {
		return
	}
	var in configurationInput
	if err := decodeObject(body, &in); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	// IDs are case-sensitive, so is this comparison.
	if in.ID != "" && in.ID != args[0] {
		x.fail(azerr.Newf(azerr.HubArgumentInvalid, "The id in the body (%s) does not match the one in the URL (%s).", in.ID, args[0]))
		return
	}
	c := &hub.Configuration{
		ID: args[0], SchemaVersion: in.SchemaVersion, Labels: in.Labels, Content: in.Content,
		TargetCondition: in.TargetCondition, Priority: in.Priority,
	}
	if in.Metrics != nil {
		c.Metrics.Queries = in.Metrics.Queries
	}
	out, err := h.hub.Configurations.Put(x.r.Context(), x.hubName(), c, x.r.Header.Get(reqIfMatch))
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, out)
}

// getConfiguration is GET /configurations/{id}: 200 with the configuration
// and its metrics counted now, or 404 ConfigurationNotFound.
func (h *handler) getConfiguration(x *exchange, args []string) {
	c, err := h.hub.Configurations.Get(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, c)
}

// listConfigurations is GET /configurations?top=N: 200 with the hub's
// configurations (an array, possibly empty) in ID order; IoT Hub does not
// page them.
func (h *handler) listConfigurations(x *exchange, _ []string) {
	top, err := listTop(x.r.URL)
	if err != nil {
		x.fail(err)
		return
	}
	cs, err := h.hub.Configurations.List(x.r.Context(), x.hubName(), top)
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, cs)
}

// deleteConfiguration is DELETE /configurations/{id}: 204, under If-Match
// when given (Node's removeConfiguration sends none).
func (h *handler) deleteConfiguration(x *exchange, args []string) {
	if err := h.hub.Configurations.Delete(x.r.Context(), x.hubName(), args[0], x.r.Header.Get(reqIfMatch)); err != nil {
		x.fail(err)
		return
	}
	x.noContent()
}

// testConfigurationQueries is POST /configurations/testQueries: 200 with
// the errors of a target condition and custom metric queries (empty when
// valid); nothing is stored.
func (h *handler) testConfigurationQueries(x *exchange, _ []string) {
	body, ok := x.readHubBody(maxConfigurationBody)
	if !ok {
		return
	}
	var in hub.ConfigurationQueriesTest
	if err := decodeObject(body, &in); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	res, err := h.hub.Configurations.TestQueries(x.hubName(), &in)
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, res)
}

// applyConfigurationContent is POST /devices/{id}/applyConfigurationContent:
// the content's deviceContent and modulesContent are applied to the
// device's and its modules' twins at once. 200 with an empty object.
func (h *handler) applyConfigurationContent(x *exchange, args []string) {
	body, ok := x.readHubBody(maxConfigurationBody)
	if !ok {
		return
	}
	var in hub.ConfigurationContent
	if err := decodeObject(body, &in); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	if err := h.hub.Configurations.ApplyContent(x.r.Context(), x.hubName(), args[0], &in); err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, struct{}{})
}
