package hubclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/berth-iot/berth/hub"
)

// bulkEntry is one ExportImportDevice of a bulk body: the settable fields
// of a device, its ID as "id", the import mode and, for the IfMatchETag
// modes, the etag.
type bulkEntry struct {
	ID             string              `json:"id"`
	ImportMode     string              `json:"importMode"`
	ETag           string              `json:"eTag,omitempty"`
	Status         string              `json:"status,omitempty"`
	StatusReason   *string             `json:"statusReason,omitempty"`
	Authentication *hub.Authentication `json:"authentication,omitempty"`
	Capabilities   *hub.Capabilities   `json:"capabilities,omitempty"`
	DeviceScope    *string             `json:"deviceScope,omitempty"`
	ParentScopes   []string            `json:"parentScopes,omitempty"`
}

// BulkDevices creates, updates and deletes up to hub.MaxBulkDevices
// devices in one request (POST /devices, IoT Hub's bulk registry
// operation; import modes hub.ImportCreate, ImportUpdate,
// ImportUpdateIfMatchETag, ImportDelete, ImportDeleteIfMatchETag). Each
// operation stands or fails on its own: the result lists the failures
// with IsSuccessful false, and the error is nil (the hub answers such a
// list with 400 and the result). A list the hub refuses whole (empty,
// over 100, a device named twice) is an *Error.
func (c *Client) BulkDevices(ctx context.Context, ops []hub.BulkOperation) (*hub.BulkResult, error) {
	if len(ops) == 0 {
		return nil, errors.New("hubclient: BulkDevices: no operations")
	}
	body := make([]bulkEntry, len(ops))
	for i, op := range ops {
		if op.Device == nil || op.Device.DeviceID == "" {
			return nil, fmt.Errorf("hubclient: BulkDevices: operation %d names no device", i)
		}
		d := op.Device
		body[i] = bulkEntry{ID: d.DeviceID, ImportMode: op.ImportMode, ETag: op.ETag, Status: d.Status, StatusReason: d.StatusReason,
			Authentication: d.Authentication, Capabilities: d.Capabilities, DeviceScope: d.DeviceScope, ParentScopes: d.ParentScopes}
	}
	return call[hub.BulkResult](ctx, c, request{method: http.MethodPost, path: []string{"devices"}, body: body, bulkResult: true}, "bulk result")
}

// bulkFailure reads a 400 answer: a BulkRegistryOperationResult (it has
// "isSuccessful") is returned with ok; anything else is put back for
// decodeError.
func bulkFailure(resp *http.Response) ([]byte, bool) {
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	resp.Body = io.NopCloser(bytes.NewReader(data))
	if err != nil {
		return nil, false
	}
	var probe struct {
		IsSuccessful *bool `json:"isSuccessful"`
	}
	if json.Unmarshal(data, &probe) != nil || probe.IsSuccessful == nil {
		return nil, false
	}
	return data, true
}
