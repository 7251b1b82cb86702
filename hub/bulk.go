package hub

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/throttle"
)

// MaxBulkDevices is how many devices one bulk registry operation may name,
// as on IoT Hub.
const MaxBulkDevices = 100

// Import modes of a bulk registry operation, as IoT Hub spells them. They
// are compared without regard to case: the Node service SDK sends
// "create" but "Update", "UpdateIfMatchETag", "Delete" and
// "DeleteIfMatchETag".
const (
	ImportCreate            = "create"
	ImportUpdate            = "update"
	ImportUpdateIfMatchETag = "updateIfMatchETag"
	ImportDelete            = "delete"
	ImportDeleteIfMatchETag = "deleteIfMatchETag"
)

// BulkOperation is one entry of a bulk registry operation: what to do
// (ImportMode), to which device (Device.DeviceID), with which settable
// fields (the rest of Device, as for Create and Update) and, for the
// IfMatchETag modes, under which etag.
type BulkOperation struct {
	ImportMode string
	ETag       string
	Device     *Device
}

// BulkResult is IoT Hub's BulkRegistryOperationResult.
type BulkResult struct {
	IsSuccessful bool          `json:"isSuccessful"`
	Errors       []BulkError   `json:"errors"`
	Warnings     []BulkWarning `json:"warnings"`
}

// BulkError is IoT Hub's DeviceRegistryOperationError: the device, the
// error's name (DeviceNotFound, PreconditionFailed, …) and its message.
type BulkError struct {
	DeviceID    string `json:"deviceId"`
	ErrorCode   string `json:"errorCode"`
	ErrorStatus string `json:"errorStatus"`
}

// BulkWarning is IoT Hub's DeviceRegistryOperationWarning. berth has no
// warnings to give; the type keeps the answer's shape.
type BulkWarning struct {
	DeviceID      string `json:"deviceId"`
	WarningCode   string `json:"warningCode"`
	WarningStatus string `json:"warningStatus"`
}

// Bulk applies up to MaxBulkDevices create, update and delete operations
// (POST /devices). A list that is empty, too long or names a device twice
// is refused whole, before anything is written. Otherwise each operation
// runs in list order through Create, Update or Delete, exactly as the
// single-device calls (so their rules and hooks apply), and one that
// fails leaves the others standing: its error is reported in the result,
// which IsSuccessful says is complete. A failure that is not the device's
// (the store failing) ends the call with that error; the operations before
// it stay applied.
func (r *Registry) Bulk(ctx context.Context, hubName string, ops []BulkOperation) (*BulkResult, error) {
	switch {
	case len(ops) == 0:
		return nil, azerr.Newf(azerr.HubArgumentInvalid, "The bulk registry operation names no device.")
	case len(ops) > MaxBulkDevices:
		return nil, azerr.Newf(azerr.HubTooManyDevices, "The bulk registry operation names %d devices; at most %d are allowed.", len(ops), MaxBulkDevices)
	}
	// One registry operation, whatever it names.
	if err := r.throttled(hubName, throttle.HubRegistry, 1); err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(ops))
	for i, op := range ops {
		if op.Device == nil || op.Device.DeviceID == "" {
			return nil, azerr.Newf(azerr.HubArgumentInvalid, "Entry %d of the bulk registry operation has no id.", i)
		}
		if seen[op.Device.DeviceID] {
			return nil, azerr.Newf(azerr.HubDeviceDefinedMultipleTimes, "Device %s is named more than once in the bulk registry operation.", op.Device.DeviceID)
		}
		seen[op.Device.DeviceID] = true
	}
	res := &BulkResult{IsSuccessful: true, Errors: []BulkError{}, Warnings: []BulkWarning{}}
	for _, op := range ops {
		err := r.bulkOne(ctx, hubName, op)
		if err == nil {
			continue
		}
		var ae *azerr.Error
		if !errors.As(err, &ae) || ae.Code.Status() >= 500 {
			return nil, fmt.Errorf("hub: bulk registry operation, device %s: %w", op.Device.DeviceID, err)
		}
		res.IsSuccessful = false
		name := ae.Code.Name()
		if ae.Code.Service() != azerr.Hub {
			name = azerr.HubArgumentInvalid.Name()
		}
		res.Errors = append(res.Errors, BulkError{DeviceID: op.Device.DeviceID, ErrorCode: name, ErrorStatus: ae.Message})
	}
	return res, nil
}

func (r *Registry) bulkOne(ctx context.Context, hubName string, op BulkOperation) error {
	d := op.Device
	switch mode := op.ImportMode; {
	case strings.EqualFold(mode, ImportCreate):
		_, err := r.create(ctx, hubName, d)
		return err
	case strings.EqualFold(mode, ImportUpdate):
		_, err := r.update(ctx, hubName, d, "")
		return err
	case strings.EqualFold(mode, ImportUpdateIfMatchETag):
		if err := needETag(op); err != nil {
			return err
		}
		_, err := r.update(ctx, hubName, d, op.ETag)
		return err
	case strings.EqualFold(mode, ImportDelete):
		return r.remove(ctx, hubName, d.DeviceID, "")
	case strings.EqualFold(mode, ImportDeleteIfMatchETag):
		if err := needETag(op); err != nil {
			return err
		}
		return r.remove(ctx, hubName, d.DeviceID, op.ETag)
	case mode == "":
		return azerr.Newf(azerr.HubArgumentInvalid, "Device %s: importMode is missing.", d.DeviceID)
	default:
		return azerr.Newf(azerr.HubArgumentInvalid, "Device %s: importMode %q is not supported; berth supports create, update, updateIfMatchETag, delete and deleteIfMatchETag.", d.DeviceID, mode)
	}
}

// needETag refuses an IfMatchETag operation without an etag: it could not
// match any version, and running it unconditionally would drop the
// condition the caller asked for.
func needETag(op BulkOperation) error {
	if strings.TrimSpace(op.ETag) == "" {
		return azerr.Newf(azerr.HubPreconditionFailed, "Device %s: %s needs the device's eTag.", op.Device.DeviceID, op.ImportMode)
	}
	return nil
}
