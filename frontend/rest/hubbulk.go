package rest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// maxBulkBody bounds a bulk registry body: room for hub.MaxBulkDevices
// devices as clients send them (the Node SDK echoes whatever device
// objects it is given, read-only fields included) with a wide margin, so
// that a list that is merely too long is told TooManyDevices rather than
// MessageTooLarge.
const maxBulkBody = 4 << 20

// bulkDeviceInput is one ExportImportDevice of a bulk body: the settable
// fields of deviceInput, the device ID as "id", the import mode and the
// etag ("eTag"; encoding/json matches names without regard to case, so
// the "etag" of a device the Node SDK read and passes back is taken too).
// Twin fields (twinETag, tags, properties) are not read: berth's bulk
// operation does not take the updateTwin modes.
type bulkDeviceInput struct {
	ID             string              `json:"id"`
	ImportMode     string              `json:"importMode"`
	ETag           string              `json:"eTag"`
	Status         string              `json:"status"`
	StatusReason   *string             `json:"statusReason"`
	Authentication *hub.Authentication `json:"authentication"`
	Capabilities   *hub.Capabilities   `json:"capabilities"`
	DeviceScope    *string             `json:"deviceScope"`
	ParentScopes   []string            `json:"parentScopes"`
}

// bulkDevices is POST /devices, IoT Hub's bulk registry operation (the
// azure-iothub Registry's addDevices, updateDevices and removeDevices):
// 200 with the BulkRegistryOperationResult when every operation succeeded,
// 400 with it (iothub-errorcode BulkRegistryOperationFailure) when some
// failed; the rules are hub.Registry.Bulk's.
func (h *handler) bulkDevices(x *exchange, _ []string) {
	body, ok := x.readHubBody(maxBulkBody)
	if !ok {
		return
	}
	in, err := decodeBulkBody(body)
	if err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	ops := make([]hub.BulkOperation, len(in))
	for i, d := range in {
		ops[i] = hub.BulkOperation{ImportMode: d.ImportMode, ETag: d.ETag, Device: &hub.Device{
			DeviceID:       d.ID,
			Status:         d.Status,
			StatusReason:   d.StatusReason,
			Authentication: d.Authentication,
			Capabilities:   d.Capabilities,
			DeviceScope:    d.DeviceScope,
			ParentScopes:   d.ParentScopes,
		}}
	}
	res, err := h.hub.Registry.Bulk(x.r.Context(), x.hubName(), ops)
	if err != nil {
		x.fail(err)
		return
	}
	status := http.StatusOK
	if !res.IsSuccessful {
		status = http.StatusBadRequest
		x.w.Header()[hdrHubErrorCode] = []string{azerr.HubBulkRegistryOperationFailure.Name()}
	}
	x.writeJSON(status, res)
}

// decodeBulkBody reads the JSON array of a bulk body; anything else (an
// object, trailing data, an entry that is not an object) is refused.
func decodeBulkBody(b []byte) ([]bulkDeviceInput, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '[' {
		return nil, errors.New("the body must be a JSON array of devices")
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("decode body: %w", err)
	}
	out := make([]bulkDeviceInput, len(raw))
	for i, r := range raw {
		if err := decodeObject(r, &out[i]); err != nil {
			return nil, fmt.Errorf("device %d: %w", i, err)
		}
	}
	return out, nil
}
