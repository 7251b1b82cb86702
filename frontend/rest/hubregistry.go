package rest

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// maxListTop is IoT Hub's page limit for GET /devices?top=N; a top outside
// 1..maxListTop (or none) means maxListTop
// (docs/spec/iothub-protocol.md#device-registry).
const maxListTop = 1000

// maxRegistryBody bounds a device document. Real ones are well under a
// kilobyte (an ID, two keys or thumbprints); the hub's message limit is a
// generous, already-documented bound.
const maxRegistryBody = hub.MaxMessageSize

// deviceInput is what berth takes from a PUT /devices/{id} body: the
// fields a client may set. The read-only fields (generationId, the times,
// connectionState, cloudToDeviceMessageCount) are ignored rather than
// decoded into hub.Device: clients echo a device they read, and the C# SDK
// writes never-set times as "0001-01-01T00:00:00" (no zone), which
// time.Time would refuse. The body's etag is ignored too: the condition
// travels in If-Match, where every SDK puts it.
type deviceInput struct {
	DeviceID       string              `json:"deviceId"`
	Status         string              `json:"status"`
	StatusReason   *string             `json:"statusReason"`
	Authentication *hub.Authentication `json:"authentication"`
	Capabilities   *hub.Capabilities   `json:"capabilities"`
	DeviceScope    *string             `json:"deviceScope"`
	ParentScopes   []string            `json:"parentScopes"`
}

// putDevice is PUT /devices/{id}: without If-Match it creates the device
// (409 DeviceAlreadyExists when it exists), with one it updates it under
// that condition; Node's update sends If-Match: "*". The answer is 200 with
// the stored device, keys included, as IoT Hub answers both.
func (h *handler) putDevice(x *exchange, args []string) {
	id := args[0]
	body, ok := x.readHubBody(maxRegistryBody)
	if !ok {
		return
	}
	var in deviceInput
	if err := decodeObject(body, &in); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	// Device IDs are case-sensitive, so is this comparison.
	switch in.DeviceID {
	case "":
		in.DeviceID = id
	case id:
	default:
		x.fail(azerr.Newf(azerr.HubArgumentInvalid, "The deviceId in the body (%s) does not match the one in the URL (%s).", in.DeviceID, id))
		return
	}
	d := &hub.Device{
		DeviceID:       in.DeviceID,
		Status:         in.Status,
		StatusReason:   in.StatusReason,
		Authentication: in.Authentication,
		Capabilities:   in.Capabilities,
		DeviceScope:    in.DeviceScope,
		ParentScopes:   in.ParentScopes,
	}
	reg, name := h.hub.Registry, x.hubName()
	var out *hub.Device
	var err error
	// If-Match is passed as received: the registry strips quotes and
	// treats * and "*" as "any version".
	if ifMatch := strings.TrimSpace(x.r.Header.Get(reqIfMatch)); ifMatch == "" {
		out, err = reg.Create(x.r.Context(), name, d)
	} else {
		out, err = reg.Update(x.r.Context(), name, d, ifMatch)
	}
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, out)
}

// getDevice is GET /devices/{id}: 200 with the device, or 404
// DeviceNotFound. The etag is in the body, unquoted, exactly as the
// registry returns it: Node's Registry quotes it itself (ensureQuoted)
// when it sends it back in If-Match.
func (h *handler) getDevice(x *exchange, args []string) {
	d, err := h.hub.Registry.Show(x.r.Context(), x.hubName(), args[0])
	if err != nil {
		x.fail(err)
		return
	}
	x.writeJSON(http.StatusOK, d)
}

// deleteDevice is DELETE /devices/{id}: 204. If-Match (an etag, * or "*")
// goes to the registry as received; without one the delete is
// unconditional.
func (h *handler) deleteDevice(x *exchange, args []string) {
	if err := h.hub.Registry.Delete(x.r.Context(), x.hubName(), args[0], x.r.Header.Get(reqIfMatch)); err != nil {
		x.fail(err)
		return
	}
	x.noContent()
}

// listDevices is GET /devices?top=N: 200 with up to N devices in ID order.
func (h *handler) listDevices(x *exchange, _ []string) {
	top, err := listTop(x.r.URL)
	if err != nil {
		x.fail(err)
		return
	}
	ds, err := h.hub.Registry.List(x.r.Context(), x.hubName(), "", top)
	if err != nil {
		x.fail(err)
		return
	}
	if ds == nil {
		ds = []*hub.Device{} // "[]", not "null": the SDKs iterate the array
	}
	x.writeJSON(http.StatusOK, ds)
}

// listTop reads the top query parameter (name matched case-insensitively,
// like the path). Out of range or absent means maxListTop, as on IoT Hub; a
// value that is not an integer at all is refused, since silently listing
// a thousand devices for "top=ten" hides the client's bug.
func listTop(u *url.URL) (int, error) {
	v, _ := queryValue(u, "top")
	if v == "" {
		return maxListTop, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		// Out of int range is still an integer: clamp it.
		if errors.Is(err, strconv.ErrRange) {
			return maxListTop, nil
		}
		return 0, azerr.Newf(azerr.HubArgumentInvalid, "The top parameter must be an integer.")
	}
	if n < 1 || n > maxListTop {
		return maxListTop, nil
	}
	return n, nil
}

// queryValue returns the first value of a query parameter, trimmed, its
// name matched case-insensitively like the path; present says whether the
// parameter is there at all, with or without a value ("?reject").
func queryValue(u *url.URL, name string) (v string, present bool) {
	for k, vs := range u.Query() {
		if strings.EqualFold(k, name) {
			if len(vs) > 0 {
				v = strings.TrimSpace(vs[0])
			}
			return v, true
		}
	}
	return "", false
}

// deviceStatistics is IoT Hub's RegistryStatistics.
type deviceStatistics struct {
	Total    int `json:"totalDeviceCount"`
	Enabled  int `json:"enabledDeviceCount"`
	Disabled int `json:"disabledDeviceCount"`
}

// statisticsPage is how many devices one registry read counts.
const statisticsPage = 1000

// deviceStatistics is GET /statistics/devices. The registry has no count
// operation, so this pages through every device of the hub: linear in the
// registry size, which is fine for the registries berth serves and is
// only paid by the caller who asks.
func (h *handler) deviceStatistics(x *exchange, _ []string) {
	var st deviceStatistics
	after := ""
	for {
		ds, err := h.hub.Registry.List(x.r.Context(), x.hubName(), after, statisticsPage)
		if err != nil {
			x.fail(fmt.Errorf("rest: device statistics after %q: %w", after, err))
			return
		}
		for _, d := range ds {
			st.Total++
			if d.Status == hub.StatusEnabled {
				st.Enabled++
			} else {
				st.Disabled++
			}
		}
		if len(ds) < statisticsPage {
			break
		}
		after = ds[len(ds)-1].DeviceID
	}
	x.writeJSON(http.StatusOK, st)
}
