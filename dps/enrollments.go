package dps

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
)

// Page is one page of a query.
type Page[T any] struct {
	Items []T
	// Continuation is the token for the next page; "" on the last page.
	Continuation string
}

// MaxPageSize bounds a query page.
const MaxPageSize = 1000

// ShowKeys selects whether reads include symmetric keys. Reads hide them;
// the attestationmechanism call and the answer to a PUT show them, as
// Azure's CLI --show-keys flow expects.
type ShowKeys bool

// PutEnrollment creates or replaces an individual enrollment.
func (s *Service) PutEnrollment(ctx context.Context, id string, in *IndividualEnrollment, ifMatch string) (*IndividualEnrollment, error) {
	e := *in // the caller's document is not modified
	e.Common = in.Common.clone()
	if e.RegistrationID == "" {
		e.RegistrationID = id
	}
	if !ValidRegistrationID(e.RegistrationID) {
		return nil, azerr.New(azerr.DPSInvalidRegistration)
	}
	if !strings.EqualFold(e.RegistrationID, id) {
		return nil, azerr.Newf(azerr.DPSInvalidEnrollment, "The registrationId in the body (%s) does not match the one in the path (%s).", e.RegistrationID, id)
	}
	if e.DeviceID != "" && !ValidDeviceID(e.DeviceID) {
		return nil, azerr.Newf(azerr.DPSInvalidEnrollment, "The deviceId %q is not valid.", e.DeviceID)
	}
	var prev *IndividualEnrollment
	if p, err := s.getEnrollment(ctx, id); err == nil {
		prev = p
	} else if !isNotFound(err) {
		return nil, err
	}
	var prevCommon *Common
	if prev != nil {
		prevCommon = &prev.Common
	}
	if err := s.normalize(ctx, &e.Common, prevCommon, false); err != nil {
		return nil, err
	}
	e.RegistrationState = nil
	rec, err := encode(store.KindEnrollment, Key(id), "", &e)
	if err != nil {
		return nil, err
	}
	cond, err := putCond(ifMatch, prev != nil)
	if err != nil {
		return nil, err
	}
	rec, err = s.store.Put(ctx, rec, cond)
	if err != nil {
		return nil, storeErr(err, azerr.DPSEnrollmentNotFound)
	}
	out, err := decodeEnrollment(rec)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// GetEnrollment returns an individual enrollment with its registration
// state, if any.
func (s *Service) GetEnrollment(ctx context.Context, id string, show ShowKeys) (*IndividualEnrollment, error) {
	e, err := s.getEnrollment(ctx, id)
	if err != nil {
		return nil, err
	}
	if reg, err := s.getRegistration(ctx, Key(id)); err == nil {
		st := reg.State
		e.RegistrationState = &st
	}
	if !show {
		hideKeys(e.Attestation)
	}
	return e, nil
}

func (s *Service) getEnrollment(ctx context.Context, id string) (*IndividualEnrollment, error) {
	rec, err := s.store.Get(ctx, store.KindEnrollment, Key(id))
	if err != nil {
		return nil, storeErr(err, azerr.DPSEnrollmentNotFound)
	}
	return decodeEnrollment(rec)
}

// DeleteEnrollment removes an individual enrollment. Its registration record
// stays, as on Azure; it can be deleted on its own.
func (s *Service) DeleteEnrollment(ctx context.Context, id, ifMatch string) error {
	err := s.store.Delete(ctx, store.KindEnrollment, Key(id), StoreETag(ifMatch))
	return storeErr(err, azerr.DPSEnrollmentNotFound)
}

// QueryEnrollments returns a page of individual enrollments.
func (s *Service) QueryEnrollments(ctx context.Context, continuation string, max int) (Page[*IndividualEnrollment], error) {
	var page Page[*IndividualEnrollment]
	recs, next, err := s.list(ctx, store.KindEnrollment, "", continuation, max)
	if err != nil {
		return page, err
	}
	for _, rec := range recs {
		e, err := decodeEnrollment(rec)
		if err != nil {
			return page, err
		}
		hideKeys(e.Attestation)
		page.Items = append(page.Items, e)
	}
	page.Continuation = next
	return page, nil
}

// EnrollmentAttestation returns an enrollment's attestation with its keys.
func (s *Service) EnrollmentAttestation(ctx context.Context, id string) (*AttestationMechanism, error) {
	e, err := s.getEnrollment(ctx, id)
	if err != nil {
		return nil, err
	}
	return e.Attestation, nil
}

// PutGroup creates or replaces an enrollment group.
func (s *Service) PutGroup(ctx context.Context, id string, in *EnrollmentGroup, ifMatch string) (*EnrollmentGroup, error) {
	g := *in // the caller's document is not modified
	g.Common = in.Common.clone()
	if g.EnrollmentGroupID == "" {
		g.EnrollmentGroupID = id
	}
	if !ValidGroupID(g.EnrollmentGroupID) {
		return nil, azerr.Newf(azerr.DPSInvalidEnrollment, "The enrollmentGroupId %q is not valid.", g.EnrollmentGroupID)
	}
	if !strings.EqualFold(g.EnrollmentGroupID, id) {
		return nil, azerr.Newf(azerr.DPSInvalidEnrollment, "The enrollmentGroupId in the body (%s) does not match the one in the path (%s).", g.EnrollmentGroupID, id)
	}
	var prev *EnrollmentGroup
	if p, err := s.getGroup(ctx, id); err == nil {
		prev = p
	} else if !isNotFound(err) {
		return nil, err
	}
	var prevCommon *Common
	if prev != nil {
		prevCommon = &prev.Common
	}
	if err := s.normalize(ctx, &g.Common, prevCommon, true); err != nil {
		return nil, err
	}
	rec, err := encode(store.KindGroup, Key(id), "", &g)
	if err != nil {
		return nil, err
	}
	cond, err := putCond(ifMatch, prev != nil)
	if err != nil {
		return nil, err
	}
	rec, err = s.store.Put(ctx, rec, cond)
	if err != nil {
		return nil, storeErr(err, azerr.DPSEnrollmentNotFound)
	}
	return decodeGroup(rec)
}

// GetGroup returns an enrollment group.
func (s *Service) GetGroup(ctx context.Context, id string, show ShowKeys) (*EnrollmentGroup, error) {
	g, err := s.getGroup(ctx, id)
	if err != nil {
		return nil, err
	}
	if !show {
		hideKeys(g.Attestation)
	}
	return g, nil
}

func (s *Service) getGroup(ctx context.Context, id string) (*EnrollmentGroup, error) {
	rec, err := s.store.Get(ctx, store.KindGroup, Key(id))
	if err != nil {
		return nil, storeErr(err, azerr.DPSEnrollmentNotFound)
	}
	return decodeGroup(rec)
}

// DeleteGroup removes an enrollment group.
func (s *Service) DeleteGroup(ctx context.Context, id, ifMatch string) error {
	err := s.store.Delete(ctx, store.KindGroup, Key(id), StoreETag(ifMatch))
	return storeErr(err, azerr.DPSEnrollmentNotFound)
}

// QueryGroups returns a page of enrollment groups.
func (s *Service) QueryGroups(ctx context.Context, continuation string, max int) (Page[*EnrollmentGroup], error) {
	var page Page[*EnrollmentGroup]
	recs, next, err := s.list(ctx, store.KindGroup, "", continuation, max)
	if err != nil {
		return page, err
	}
	for _, rec := range recs {
		g, err := decodeGroup(rec)
		if err != nil {
			return page, err
		}
		hideKeys(g.Attestation)
		page.Items = append(page.Items, g)
	}
	page.Continuation = next
	return page, nil
}

// GroupAttestation returns a group's attestation with its keys.
func (s *Service) GroupAttestation(ctx context.Context, id string) (*AttestationMechanism, error) {
	g, err := s.getGroup(ctx, id)
	if err != nil {
		return nil, err
	}
	return g.Attestation, nil
}

// GetRegistration returns a registration record (service view).
func (s *Service) GetRegistration(ctx context.Context, id string) (*RegistrationState, error) {
	reg, err := s.getRegistration(ctx, Key(id))
	if err != nil {
		return nil, err
	}
	st := reg.State
	return &st, nil
}

// DeleteRegistration removes a registration record; the device's next
// registration is an initial assignment again. The hub identity stays.
func (s *Service) DeleteRegistration(ctx context.Context, id, ifMatch string) error {
	err := s.store.Delete(ctx, store.KindRegistration, Key(id), StoreETag(ifMatch))
	return storeErr(err, azerr.DPSRegistrationMissing)
}

// QueryRegistrations returns a page of the registration records of a group;
// with groupID "" it lists every registration.
func (s *Service) QueryRegistrations(ctx context.Context, groupID, continuation string, max int) (Page[*RegistrationState], error) {
	var page Page[*RegistrationState]
	if groupID != "" {
		if _, err := s.getGroup(ctx, groupID); err != nil {
			return page, err
		}
	}
	recs, next, err := s.list(ctx, store.KindRegistration, Key(groupID), continuation, max)
	if err != nil {
		return page, err
	}
	for _, rec := range recs {
		var doc registrationDoc
		if err := json.Unmarshal(rec.Data, &doc); err != nil {
			return page, fmt.Errorf("dps: decode registration: %w", err)
		}
		doc.State.ETag = registrationETag(rec.ETag)
		st := doc.State
		page.Items = append(page.Items, &st)
	}
	page.Continuation = next
	return page, nil
}

// list reads a page; the continuation token is the last key, base64url.
func (s *Service) list(ctx context.Context, kind store.Kind, index, continuation string, max int) ([]store.Record, string, error) {
	if max <= 0 || max > MaxPageSize {
		max = MaxPageSize
	}
	var after string
	if continuation != "" {
		b, err := base64.RawURLEncoding.DecodeString(continuation)
		if err != nil {
			return nil, "", azerr.Newf(azerr.DPSBadRequest, "The continuation token is not valid.")
		}
		after = string(b)
	}
	// One extra record tells whether another page exists, so the last page
	// carries no continuation (the SDKs loop while it is present).
	recs, err := s.store.List(ctx, kind, store.ListOptions{Index: index, After: after, Limit: max + 1})
	if err != nil {
		return nil, "", fmt.Errorf("dps: list %s: %w", kind, err)
	}
	if len(recs) <= max {
		return recs, "", nil
	}
	recs = recs[:max]
	return recs, base64.RawURLEncoding.EncodeToString([]byte(recs[len(recs)-1].Key)), nil
}

// normalize validates an enrollment and fills Azure's defaults, keeping the
// previous version's keys and creation time when the body omits them (a
// read-modify-write through GET would otherwise rotate the keys).
func (s *Service) normalize(ctx context.Context, c *Common, prev *Common, group bool) error {
	now := Time{s.now().UTC()}
	a := c.Attestation
	if a == nil {
		return azerr.Newf(azerr.DPSInvalidEnrollment, "The attestation mechanism is required.")
	}
	switch a.Type {
	case AttestationSymmetricKey:
	case AttestationX509:
		var prevX509 *X509Attestation
		if prev != nil && prev.Attestation != nil {
			prevX509 = prev.Attestation.X509
		}
		keepCertificates(a.X509, prevX509)
		if err := s.normalizeX509(ctx, a.X509, group); err != nil {
			return err
		}
		a.SymmetricKey, a.TPM = nil, nil
		return s.normalizeCommon(c, prev, now)
	case AttestationTPM:
		return azerr.Newf(azerr.DPSInvalidEnrollment, "Attestation type %q is not supported by this berth version; use symmetricKey or x509.", a.Type)
	default:
		return azerr.Newf(azerr.DPSInvalidEnrollment, "Attestation type %q is not valid.", a.Type)
	}
	if a.SymmetricKey == nil {
		a.SymmetricKey = &SymmetricKeyAttestation{}
	}
	var prevKeys *SymmetricKeyAttestation
	if prev != nil && prev.Attestation != nil {
		prevKeys = prev.Attestation.SymmetricKey
	}
	for _, k := range []*string{&a.SymmetricKey.PrimaryKey, &a.SymmetricKey.SecondaryKey} {
		if *k == "" {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(*k)
		if err != nil || len(b) < 16 || len(b) > 64 {
			return azerr.Newf(azerr.DPSInvalidEnrollment, "Symmetric keys must be base64 of 16 to 64 bytes.")
		}
	}
	if a.SymmetricKey.PrimaryKey == "" {
		if prevKeys != nil && prevKeys.PrimaryKey != "" {
			a.SymmetricKey.PrimaryKey = prevKeys.PrimaryKey
		} else {
			a.SymmetricKey.PrimaryKey = NewKey()
		}
	}
	if a.SymmetricKey.SecondaryKey == "" {
		if prevKeys != nil && prevKeys.SecondaryKey != "" {
			a.SymmetricKey.SecondaryKey = prevKeys.SecondaryKey
		} else {
			a.SymmetricKey.SecondaryKey = NewKey()
		}
	}
	a.X509, a.TPM = nil, nil
	return s.normalizeCommon(c, prev, now)
}

// normalizeCommon validates and defaults what does not depend on the
// attestation.
func (s *Service) normalizeCommon(c *Common, prev *Common, now Time) error {
	switch c.ProvisioningStatus {
	case "":
		c.ProvisioningStatus = ProvisioningEnabled
	case ProvisioningEnabled, ProvisioningDisabled:
	default:
		return azerr.Newf(azerr.DPSInvalidEnrollment, "provisioningStatus must be enabled or disabled.")
	}
	switch c.AllocationPolicy {
	case "":
		c.AllocationPolicy = "hashed"
	case "hashed", "static", "geoLatency", "custom":
	default:
		return azerr.Newf(azerr.DPSInvalidEnrollment, "allocationPolicy %q is not valid.", c.AllocationPolicy)
	}
	if c.Capabilities == nil {
		c.Capabilities = &Capabilities{}
	}
	if it := c.InitialTwin; it != nil {
		// Refused now rather than failing every assignment later.
		var desired json.RawMessage
		if it.Properties != nil {
			desired = it.Properties.Desired
		}
		if err := hub.ValidateInitialTwin(it.Tags, desired); err != nil {
			var ae *azerr.Error
			msg := err.Error()
			if errors.As(err, &ae) {
				msg = ae.Message
			}
			return azerr.Newf(azerr.DPSInvalidEnrollment, "initialTwin: %s", msg)
		}
	}
	if c.ReprovisionPolicy == nil {
		c.ReprovisionPolicy = &ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
	}
	if c.IoTHubHostName != "" || len(c.IoTHubs) > 0 {
		if _, aerr := s.candidates(c); aerr != nil {
			return azerr.Newf(azerr.DPSInvalidEnrollment, "%s", aerr.Message)
		}
	}
	switch c.AllocationPolicy {
	case AllocationStatic:
		if n := len(c.IoTHubs); n > 1 || (n == 0 && c.IoTHubHostName == "") {
			return azerr.Newf(azerr.DPSInvalidEnrollment, "A static allocation policy needs exactly one IoT hub in iotHubs.")
		}
	case AllocationCustom:
		d := c.CustomAllocationDefinition
		if d == nil || d.WebhookURL == "" {
			return azerr.Newf(azerr.DPSInvalidEnrollment, "A custom allocation policy needs customAllocationDefinition.webhookUrl.")
		}
		if u, err := url.Parse(d.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return azerr.Newf(azerr.DPSInvalidEnrollment, "customAllocationDefinition.webhookUrl must be an http(s) URL.")
		}
	}
	c.CreatedDateTimeUTC = now
	if prev != nil {
		c.CreatedDateTimeUTC = prev.CreatedDateTimeUTC
	}
	c.LastUpdatedDateTimeUTC = now
	c.ETag = ""
	return nil
}

// clone copies what normalize writes to.
func (c Common) clone() Common {
	if c.Attestation != nil {
		a := *c.Attestation
		if a.SymmetricKey != nil {
			k := *a.SymmetricKey
			a.SymmetricKey = &k
		}
		c.Attestation = &a
	}
	return c
}

func hideKeys(a *AttestationMechanism) {
	if a != nil && a.SymmetricKey != nil {
		a.SymmetricKey = &SymmetricKeyAttestation{}
	}
	if a != nil {
		hideCertificates(a.X509)
	}
}

// putCond: a PUT without If-Match is an unconditional create-or-replace;
// with one, the record must exist at that version, and a missing record is
// a failed precondition (RFC 9110 §13.1.1), not "not found".
func putCond(ifMatch string, exists bool) (store.Cond, error) {
	m := StoreETag(ifMatch)
	if m == "" {
		return store.Cond{}, nil
	}
	if !exists {
		return store.Cond{}, azerr.New(azerr.DPSPreconditionFailed)
	}
	return store.Cond{IfMatch: m}, nil
}

func storeErr(err error, notFound azerr.Code) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return azerr.New(notFound)
	case errors.Is(err, store.ErrPreconditionFailed):
		return azerr.New(azerr.DPSPreconditionFailed)
	case errors.Is(err, store.ErrExists):
		return azerr.New(azerr.DPSConflict)
	}
	var ae *azerr.Error
	if errors.As(err, &ae) {
		return err
	}
	return fmt.Errorf("dps: store: %w", err)
}

func encode(kind store.Kind, key, index string, v any) (store.Record, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return store.Record{}, fmt.Errorf("dps: encode %s: %w", kind, err)
	}
	return store.Record{Kind: kind, Key: key, Index: index, Data: data}, nil
}

func decodeEnrollment(rec store.Record) (*IndividualEnrollment, error) {
	var e IndividualEnrollment
	if err := json.Unmarshal(rec.Data, &e); err != nil {
		return nil, fmt.Errorf("dps: decode enrollment %s: %w", rec.Key, err)
	}
	if e.Attestation == nil {
		e.Attestation = &AttestationMechanism{}
	}
	e.ETag = wireETag(rec.ETag)
	return &e, nil
}

func decodeGroup(rec store.Record) (*EnrollmentGroup, error) {
	var g EnrollmentGroup
	if err := json.Unmarshal(rec.Data, &g); err != nil {
		return nil, fmt.Errorf("dps: decode group %s: %w", rec.Key, err)
	}
	if g.Attestation == nil {
		g.Attestation = &AttestationMechanism{}
	}
	g.ETag = wireETag(rec.ETag)
	return &g, nil
}
