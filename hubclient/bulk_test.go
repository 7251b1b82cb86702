package hubclient

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/berth-iot/berth/hub"
)

// TestBulkDevices: the body BulkDevices sends, and the three kinds of
// answer: 200 with the result, 400 with a result (some operations
// failed: a result, no error) and 400 or 413 with an error body (the list
// refused whole: an *Error).
func TestBulkDevices(t *testing.T) {
	ctx := context.Background()
	ops := []hub.BulkOperation{
		{ImportMode: hub.ImportCreate, Device: &hub.Device{DeviceID: "b 1", Status: hub.StatusDisabled}},
		{ImportMode: hub.ImportDeleteIfMatchETag, ETag: "AAAAAAAAAAE=", Device: &hub.Device{DeviceID: "b2"}},
	}
	f := newFake(t,
		reply{status: 200, body: `{"isSuccessful":true,"errors":[],"warnings":[]}`},
		reply{status: 400, header: map[string]string{"iothub-errorcode": "BulkRegistryOperationFailure"},
			body: `{"isSuccessful":false,"errors":[{"deviceId":"b2","errorCode":"PreconditionFailed","errorStatus":"stale"}],"warnings":[]}`},
		reply{status: 400, header: map[string]string{"iothub-errorcode": "DeviceDefinedMultipleTimes"},
			body: `{"Message":"ErrorCode:DeviceDefinedMultipleTimes;Device b2 is named more than once.","ExceptionMessage":""}`},
		reply{status: 413, body: `{"Message":"ErrorCode:TooManyDevices;101 devices.","ExceptionMessage":""}`},
	)
	c := f.client()
	res, err := c.BulkDevices(ctx, ops)
	if err != nil || !res.IsSuccessful || len(res.Errors) != 0 {
		t.Fatalf("success: %+v %v", res, err)
	}
	r := f.requests()[0]
	checkCommon(t, r, "api-version="+APIVersion, "")
	if r.Method != http.MethodPost || r.Path != "/devices" {
		t.Errorf("request %s %s", r.Method, r.Path)
	}
	jsonEqual(t, r.Body, `[{"id":"b 1","importMode":"create","status":"disabled"},{"id":"b2","importMode":"deleteIfMatchETag","eTag":"AAAAAAAAAAE="}]`)

	res, err = c.BulkDevices(ctx, ops)
	if err != nil || res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].ErrorCode != "PreconditionFailed" || res.Errors[0].DeviceID != "b2" {
		t.Fatalf("partial failure: %+v %v", res, err)
	}
	for _, want := range []struct {
		status int
		name   string
	}{{400, "DeviceDefinedMultipleTimes"}, {413, "TooManyDevices"}} {
		res, err = c.BulkDevices(ctx, ops)
		var e *Error
		if !errors.As(err, &e) || e.Status != want.status || e.Name != want.name || res != nil {
			t.Errorf("want %d %s: %+v %v", want.status, want.name, res, err)
		}
	}
	if _, err := c.BulkDevices(ctx, nil); err == nil {
		t.Error("no operations: no error")
	}
	if _, err := c.BulkDevices(ctx, []hub.BulkOperation{{ImportMode: hub.ImportCreate}}); err == nil {
		t.Error("an operation without a device: no error")
	}
}
