package dps

import (
	"context"
	"errors"
	"fmt"

	"github.com/berth-iot/berth/azerr"
)

// Bulk modes of the service API's bulk enrollment operation.
const (
	BulkCreate            = "create"
	BulkUpdate            = "update"
	BulkUpdateIfMatchETag = "updateIfMatchETag"
	BulkDelete            = "delete"
)

// MaxBulkItems is Azure's limit on one bulk operation.
const MaxBulkItems = 10

// BulkError is one failed item of a bulk operation. Exactly one of
// RegistrationID and EnrollmentGroupID is set.
type BulkError struct {
	RegistrationID    string `json:"registrationId,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	ErrorCode         int    `json:"errorCode"`
	ErrorStatus       string `json:"errorStatus"`
}

// BulkResult is BulkEnrollmentOperationResult.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkError `json:"errors"`
}

// BulkEnrollments applies mode to each individual enrollment. Items are
// independent: each succeeds or fails on its own, and the failures are
// reported per item, as Azure does.
func (s *Service) BulkEnrollments(ctx context.Context, mode string, items []*IndividualEnrollment) (*BulkResult, error) {
	if err := checkBulk(mode, len(items)); err != nil {
		return nil, err
	}
	res := &BulkResult{IsSuccessful: true, Errors: []BulkError{}}
	for _, e := range items {
		if e == nil {
			return nil, azerr.Newf(azerr.DPSInvalidBody, "A bulk item is null.")
		}
		id := e.RegistrationID
		err := s.bulkOne(ctx, mode, e.ETag,
			func() error { _, err := s.getEnrollment(ctx, id); return err },
			func(ifMatch string) error { _, err := s.PutEnrollment(ctx, id, e, ifMatch); return err },
			func(ifMatch string) error { return s.DeleteEnrollment(ctx, id, ifMatch) })
		if err != nil {
			be, ierr := bulkError(err)
			if ierr != nil {
				return nil, ierr
			}
			be.RegistrationID = id
			res.IsSuccessful = false
			res.Errors = append(res.Errors, be)
		}
	}
	return res, nil
}

// BulkGroups applies mode to each enrollment group.
func (s *Service) BulkGroups(ctx context.Context, mode string, items []*EnrollmentGroup) (*BulkResult, error) {
	if err := checkBulk(mode, len(items)); err != nil {
		return nil, err
	}
	res := &BulkResult{IsSuccessful: true, Errors: []BulkError{}}
	for _, g := range items {
		if g == nil {
			return nil, azerr.Newf(azerr.DPSInvalidBody, "A bulk item is null.")
		}
		id := g.EnrollmentGroupID
		err := s.bulkOne(ctx, mode, g.ETag,
			func() error { _, err := s.getGroup(ctx, id); return err },
			func(ifMatch string) error { _, err := s.PutGroup(ctx, id, g, ifMatch); return err },
			func(ifMatch string) error { return s.DeleteGroup(ctx, id, ifMatch) })
		if err != nil {
			be, ierr := bulkError(err)
			if ierr != nil {
				return nil, ierr
			}
			be.EnrollmentGroupID = id
			res.IsSuccessful = false
			res.Errors = append(res.Errors, be)
		}
	}
	return res, nil
}

func checkBulk(mode string, n int) error {
	switch mode {
	case BulkCreate, BulkUpdate, BulkUpdateIfMatchETag, BulkDelete:
	default:
		return azerr.Newf(azerr.DPSInvalidBody, "Bulk mode %q is not one of create, update, updateIfMatchETag, delete.", mode)
	}
	if n == 0 || n > MaxBulkItems {
		return azerr.Newf(azerr.DPSInvalidBody, "A bulk operation takes 1 to %d items, not %d.", MaxBulkItems, n)
	}
	return nil
}

// bulkOne runs one item: create refuses an existing record,
// updateIfMatchETag and delete use the item's etag.
func (s *Service) bulkOne(ctx context.Context, mode, etag string, get func() error, put func(ifMatch string) error, del func(ifMatch string) error) error {
	switch mode {
	case BulkCreate:
		err := get()
		if err == nil {
			return azerr.Newf(azerr.DPSConflict, "The enrollment already exists.")
		}
		if !isNotFound(err) {
			return err
		}
		return put("")
	case BulkUpdate:
		return put("")
	case BulkUpdateIfMatchETag:
		if etag == "" {
			return azerr.Newf(azerr.DPSPreconditionFailed, "updateIfMatchETag needs the item's etag.")
		}
		return put(etag)
	default:
		return del(etag)
	}
}

// bulkError turns an item's failure into its report; errors that are not
// the item's fault (the store failing) fail the whole call.
func bulkError(err error) (BulkError, error) {
	var ae *azerr.Error
	if !errors.As(err, &ae) || ae.Status() >= 500 {
		return BulkError{}, fmt.Errorf("dps: bulk operation: %w", err)
	}
	return BulkError{ErrorCode: ae.Code.Number(), ErrorStatus: ae.Message}, nil
}
