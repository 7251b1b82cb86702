// Package dps is berth's Device Provisioning Service domain: enrollments,
// attestation, allocation and registration operations. It knows no wire
// protocol: the MQTT and HTTPS front ends translate requests into calls on
// *Service and turn its *azerr.Error results into their protocol's answer.
package dps

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/refusal"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/throttle"
)

// MaxMessageSize is DPS's message size limit (96 KB).
const MaxMessageSize = 96 * 1024

// DefaultRetryAfter is the retry-after, in seconds, on every 202.
const DefaultRetryAfter = 3

// DeviceRegistry is the part of the hub registry that assignment writes to.
type DeviceRegistry interface {
	// ProvisionRecords returns the records that create or update a device
	// identity (and a new device's twin, from init), for DPS to write with
	// the registration in one transaction, and whether they revoke a
	// credential live sessions may hold (an existing device's changed).
	ProvisionRecords(ctx context.Context, hubName, deviceID string, auth hub.Authentication, twin hub.ProvisionTwin) (recs []store.Record, revoke bool, err error)
	// Get and Delete are the registry's own: a device that reprovisioning
	// moves is deleted from the hub it left as the service API deletes
	// one (reprovision.go).
	Get(ctx context.Context, hubName, deviceID string) (*hub.Device, error)
	Delete(ctx context.Context, hubName, deviceID, ifMatch string) error
	// Provisioned runs once those records, made with auth, are written:
	// the hub closes the device's live sessions that the new credential
	// revokes, on every node when ProvisionRecords said revoke.
	Provisioned(ctx context.Context, hubName, deviceID string, auth hub.Authentication, revoke bool)
}

// Config configures a Service.
type Config struct {
	// IDScope is this DPS's ID scope. Settings.IDScope, when loaded from the
	// store, wins.
	IDScope string
	// Hubs are the host names of linked hubs of weight 1 that apply
	// allocation policies (shorthand for LinkedHubs).
	Hubs []string
	// LinkedHubs are the hubs devices may be assigned to, with their
	// allocation weights; Hubs are added to them.
	LinkedHubs []LinkedHub
	// Region is this DPS's location label for geoLatency allocation.
	Region string
	// DefaultHub is where static allocation without a hub list assigns
	// devices when several hubs are linked (berth's default hub); the
	// first linked hub when empty.
	DefaultHub string
	// WebhookTimeout bounds custom allocation webhook calls
	// (DefaultWebhookTimeout when 0).
	WebhookTimeout time.Duration
	// WebhookClient calls custom allocation webhooks; a client with
	// WebhookTimeout when nil (supply one to trust a private CA).
	WebhookClient *http.Client
	// RetryAfter is the retry-after in seconds on 202 answers.
	RetryAfter int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Settings are this DPS's ID scope and shared access policies, for
	// service tokens (AuthorizeService); nil refuses every one.
	Settings *Settings
	// ServiceHosts are the host names the DPS service API answers to: a
	// service token's sr must name one of them.
	ServiceHosts []string
	// TokenLimits bound every device and service token's time (berth
	// serve --max-token-lifetime).
	TokenLimits sas.Limits
	// Logger logs what no caller hears of (removals retried in the
	// background); nothing is logged when nil.
	Logger *slog.Logger
	// Faults, set only by test servers (dpstest), may refuse a
	// registration before it is authenticated, as a throttled or
	// unavailable Azure DPS does; nil in production.
	Faults Faults
}

// Faults injects failures into registrations (Config.Faults).
type Faults interface {
	// Register runs before each registration request is authenticated; a
	// non-nil error (an *azerr.Error such as DPSThrottled) is the answer.
	Register(ctx context.Context, registrationID string) error
}

// Service is the DPS domain.
type Service struct {
	store          store.Store
	registry       DeviceRegistry
	idScope        string
	hmu            sync.RWMutex
	hubs           []LinkedHub // replaced, never modified in place
	region         string
	defaultHub     string
	webhook        *http.Client
	webhookTimeout time.Duration
	retry          int
	now            func() time.Time
	settings       *Settings
	serviceHosts   []string
	limits         sas.Limits
	log            *slog.Logger
	removalWake    chan struct{} // RunRemovals: a removal failed
	faults         Faults
	observe        func(result string)
	throttle       *throttle.Throttler // nil: no throttles (SetThrottle)
	// authGen counts enrollment, group and certificate writes; forget
	// says which SessionAuth memories, made at an older generation, each
	// made stale (sessionauth.go).
	authGen atomic.Uint64
	forget  authForget
	// regGen counts registration record deletions: the outcome a
	// SessionAuth remembers at an older generation is forgotten.
	regGen atomic.Uint64
	// cacheGen counts group and certificate changes; groupSnap and
	// certSnap are valid at the generation they carry (authcache.go).
	cacheGen  atomic.Uint64
	groupSnap atomic.Pointer[groupSnapshot]
	certSnap  atomic.Pointer[certSnapshot]
	// indivSnap says whether any individual enrollment exists, valid at
	// the authGen it carries (individualEnrollment).
	indivSnap atomic.Pointer[individualSnapshot]
}

// SetObserver sets who hears of every registration's result (the
// operator's metrics): the operation's status (assigned, failed,
// disabled), "refused" for a refused credential, "invalid" for another
// request error and "error" when berth could not answer. Set it before
// serving.
func (s *Service) SetObserver(f func(result string)) { s.observe = f }

func registrationResult(status string, err error) string {
	var ae *azerr.Error
	switch {
	case err == nil:
		return status
	case errors.As(err, &ae) && ae.Code == azerr.DPSThrottled:
		return "throttled"
	case refusal.Of(err) != nil:
		return "refused"
	case errors.As(err, &ae) && ae.Status() < 500:
		return "invalid"
	}
	return "error"
}

// New returns a Service. idScope must not be empty; hubs must name at least
// one hub.
func New(st store.Store, registry DeviceRegistry, cfg Config) (*Service, error) {
	if cfg.IDScope == "" {
		return nil, errors.New("dps: no ID scope")
	}
	hubs := append([]LinkedHub(nil), cfg.LinkedHubs...)
	for _, h := range cfg.Hubs {
		hubs = append(hubs, LinkedHub{Name: h, AllocationWeight: 1, ApplyAllocationPolicy: true})
	}
	if len(hubs) == 0 {
		return nil, errors.New("dps: no linked hub")
	}
	if cfg.WebhookTimeout <= 0 {
		cfg.WebhookTimeout = DefaultWebhookTimeout
	}
	if cfg.WebhookClient == nil {
		cfg.WebhookClient = &http.Client{Timeout: cfg.WebhookTimeout}
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = DefaultRetryAfter
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DefaultHub == "" {
		cfg.DefaultHub = hubs[0].Name
	}
	return &Service{store: st, registry: registry, idScope: cfg.IDScope, hubs: hubs, region: cfg.Region, defaultHub: cfg.DefaultHub,
		webhook: cfg.WebhookClient, webhookTimeout: cfg.WebhookTimeout, retry: cfg.RetryAfter, now: cfg.Now,
		settings: cfg.Settings, serviceHosts: slices.Clone(cfg.ServiceHosts), limits: cfg.TokenLimits,
		log: cfg.Logger, removalWake: make(chan struct{}, 1), faults: cfg.Faults}, nil
}

// IDScope returns the service's ID scope.
func (s *Service) IDScope() string { return s.idScope }

// RetryAfter is the retry hint, in seconds, for 202 answers.
func (s *Service) RetryAfter() int { return s.retry }

// RegisterRequest is a device's register call.
type RegisterRequest struct {
	IDScope        string
	RegistrationID string // from the MQTT username or the HTTP path
	Token          string // SAS token as sent ("" when absent)
	// ClientCerts is the TLS client certificate chain, leaf first, for
	// X.509 attestation (used when Token is "").
	ClientCerts []*x509.Certificate
	Body        []byte // DeviceRegistration JSON; empty is allowed
	Force       bool   // forceRegistration
	// Session, when set, remembers a successful authentication for the
	// polls that follow on the same connection (see SessionAuth).
	Session *SessionAuth
}

// OperationRequest is a device's poll call.
type OperationRequest struct {
	IDScope        string
	RegistrationID string
	OperationID    string
	Token          string
	ClientCerts    []*x509.Certificate
	// Session, when set, is the connection's memory of its
	// authentication: a poll after a registration on the same connection
	// skips the enrollment lookup (see SessionAuth).
	Session *SessionAuth
}

// StatusRequest is a device's registration status lookup.
type StatusRequest struct {
	IDScope        string
	RegistrationID string
	Token          string
	ClientCerts    []*x509.Certificate
	Body           []byte
}

// operation is a stored registration operation.
type operation struct {
	OperationID    string          `json:"operationId"`
	RegistrationID string          `json:"registrationId"`
	Status         string          `json:"status"`
	ErrorCode      int             `json:"errorCode,omitempty"`
	ErrorMessage   string          `json:"errorMessage,omitempty"`
	Created        time.Time       `json:"created"`
	Payload        json.RawMessage `json:"payload,omitempty"`
}

// registrationDoc is a stored registration record.
type registrationDoc struct {
	State   RegistrationState `json:"state"`
	GroupID string            `json:"groupId,omitempty"`
	// InitialHub is the hub of the device's first assignment, for the
	// reprovisionedToInitialAssignment substatus.
	InitialHub string `json:"initialHub,omitempty"`
	// LastAssignedHub and LastDeviceID keep where the device was when the
	// latest attempt failed, so the next one reprovisions from there.
	LastAssignedHub string `json:"lastAssignedHub,omitempty"`
	LastDeviceID    string `json:"lastDeviceId,omitempty"`
}

// attested is who a device proved to be.
type attested struct {
	enrollment *IndividualEnrollment
	group      *EnrollmentGroup
	keys       [2]string         // the device's own keys (derived for group members)
	cert       *x509.Certificate // the device's certificate (X.509 attestation)
}

// stampState sets a registration state's times and how the device
// attested: {"x509":{…}} (Azure answers {} for an individual enrollment)
// or {"symmetricKey":{"enrollmentGroupId":…}} for a group member.
func (a *attested) stampState(st *RegistrationState, groupID string, now time.Time) {
	created, updated := Time{now}, Time{now}
	st.CreatedDateTimeUTC, st.LastUpdatedDateTimeUTC = &created, &updated
	switch {
	case a.cert != nil:
		st.X509 = &GroupRef{EnrollmentGroupID: groupID}
	case groupID != "":
		st.SymmetricKey = &GroupRef{EnrollmentGroupID: groupID}
	}
}

// hubAuthentication is how the hub authenticates the device DPS creates:
// its keys, its certificate's thumbprints (an individual X.509
// enrollment's certificates) or its CA (an X.509 group).
func (a *attested) hubAuthentication() hub.Authentication {
	switch {
	case a.cert == nil:
		return hub.Authentication{Type: hub.AuthSAS, SymmetricKey: &hub.SymmetricKey{PrimaryKey: a.keys[0], SecondaryKey: a.keys[1]}}
	case a.group != nil:
		return hub.Authentication{Type: hub.AuthCertificateAuthority}
	}
	tp := &hub.X509Thumbprint{}
	certs := certsOf(a.enrollment.Attestation.X509.ClientCertificates)
	for i, c := range certs {
		s1, _ := Thumbprints(c)
		if i == 0 {
			tp.PrimaryThumbprint = &s1
		} else {
			tp.SecondaryThumbprint = &s1
		}
	}
	return hub.Authentication{Type: hub.AuthSelfSigned, X509Thumbprint: tp}
}

// common is the enrollment's part that individual enrollments and groups
// share (allocation, reprovisioning, initial twin).
func (a *attested) common() *Common {
	if a.enrollment != nil {
		return &a.enrollment.Common
	}
	return &a.group.Common
}

func (a *attested) disabled() bool {
	if a.enrollment != nil {
		return a.enrollment.ProvisioningStatus == ProvisioningDisabled
	}
	return a.group.ProvisioningStatus == ProvisioningDisabled
}

// deviceRequest is what register accepts in its body.
type deviceRequest struct {
	RegistrationID *string         `json:"registrationId"`
	Payload        json.RawMessage `json:"payload"`
	CSR            *string         `json:"csr"`
}

// parseDeviceBody applies the tolerances of
// docs/spec/dps-protocol.md#register-request-body: empty body, payload null,
// unknown fields.
func parseDeviceBody(body []byte, regID string) (json.RawMessage, error) {
	p, _, err := parseDeviceRequest(body, regID)
	return p, err
}

// parseDeviceRequest also reports whether the body carried a csr.
func parseDeviceRequest(body []byte, regID string) (payload json.RawMessage, hasCSR bool, err error) {
	if len(body) > MaxMessageSize {
		return nil, false, azerr.New(azerr.DPSTooLarge)
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, false, nil
	}
	if body[0] != '{' {
		return nil, false, azerr.New(azerr.DPSInvalidBody)
	}
	var req deviceRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return nil, false, azerr.New(azerr.DPSInvalidBody)
	}
	// Nothing may follow the object (dec.More misses a stray '}' or ']').
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, false, azerr.New(azerr.DPSInvalidBody)
	}
	if req.RegistrationID != nil && !strings.EqualFold(*req.RegistrationID, regID) {
		return nil, false, azerr.New(azerr.DPSRegistrationIDMatch)
	}
	p := bytes.TrimSpace(req.Payload)
	if len(p) == 0 || string(p) == "null" {
		return nil, req.CSR != nil, nil
	}
	if p[0] != '{' {
		return nil, false, azerr.Newf(azerr.DPSInvalidBody, "payload must be a JSON object.")
	}
	return p, req.CSR != nil, nil
}

// Register runs a registration. The answer is always an operation in status
// assigning (HTTP 202): the outcome, written durably before Register
// returns, is reported by OperationStatus.
func (s *Service) Register(ctx context.Context, req RegisterRequest) (_ *OperationStatus, err error) {
	var status string
	if s.observe != nil {
		defer func() { s.observe(registrationResult(status, err)) }()
	}
	if !ValidRegistrationID(req.RegistrationID) {
		return nil, azerr.New(azerr.DPSInvalidRegistration)
	}
	if s.faults != nil {
		if err := s.faults.Register(ctx, req.RegistrationID); err != nil {
			return nil, err
		}
	}
	// DPS-wide rates protect the service, so they are checked before the
	// (costly) authentication, as a front door would.
	if err := s.throttled(throttle.DPSRegister, ""); err != nil {
		return nil, err
	}
	payload, err := parseDeviceBody(req.Body, req.RegistrationID)
	if err != nil {
		return nil, err
	}
	gen, rgen := s.authGen.Load(), s.regGen.Load()
	who, err := s.authenticate(ctx, req.IDScope, req.RegistrationID, req.Token, req.ClientCerts)
	if err != nil {
		return nil, err
	}
	s.remember(req.Session, gen, who, req.IDScope, req.RegistrationID, req.Token, req.ClientCerts)
	now := s.now().UTC()
	op := operation{
		OperationID:    newOperationID(),
		RegistrationID: req.RegistrationID,
		Created:        now,
		Payload:        payload,
	}
	if who.disabled() {
		op.Status = StatusDisabled
		if err := s.putOperation(ctx, &op); err != nil {
			return nil, err
		}
	} else {
		st, err := s.assign(ctx, who, &op, now)
		if err != nil {
			return nil, err
		}
		if st != nil {
			s.rememberOutcome(req.Session, gen, rgen, op.OperationID, st)
		}
	}
	status = op.Status
	return &OperationStatus{OperationID: op.OperationID, Status: StatusAssigning}, nil
}

// assign allocates a hub by the enrollment's allocation and reprovision
// policies, and writes the device identity (with its twin), the
// registration record and the operation in one transaction. It returns
// the registration state written when the device is assigned, nil when
// the registration failed (written by fail).
func (s *Service) assign(ctx context.Context, who *attested, op *operation, now time.Time) (*RegistrationState, error) {
	regKey := Key(op.RegistrationID)
	c := who.common()
	deviceID := op.RegistrationID
	var groupID string
	if who.enrollment != nil && who.enrollment.DeviceID != "" {
		deviceID = who.enrollment.DeviceID
	}
	if who.group != nil {
		groupID = who.group.EnrollmentGroupID
	}

	var prev *registrationDoc
	switch doc, err := s.getRegistration(ctx, regKey); {
	case err == nil:
		prev = doc
	case !isNotFound(err):
		return nil, err
	}
	var prevState *RegistrationState
	switch {
	case prev != nil && prev.State.Status == StatusAssigned && prev.State.AssignedHub != "":
		prevState = &prev.State
	case prev != nil && prev.LastAssignedHub != "":
		// The last attempt failed: the device is still where the one
		// before put it.
		prevState = &RegistrationState{Status: StatusAssigned, AssignedHub: prev.LastAssignedHub, DeviceID: prev.LastDeviceID}
	}
	if deviceID == op.RegistrationID && prevState != nil && prevState.DeviceID != deviceID &&
		strings.EqualFold(prevState.DeviceID, deviceID) {
		// The registration ID is case-insensitive and the hub's device ID
		// is not: a re-registration that spells the ID in another case is
		// the same registration, so it keeps the device first assigned
		// rather than leave that one behind with live keys
		// (docs/provisioning.md, "Registration IDs and case").
		deviceID = prevState.DeviceID
	}
	rp := c.ReprovisionPolicy
	if rp == nil {
		rp = &ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
	}

	var alloc *allocation
	if prevState != nil && !rp.UpdateHubAssignment {
		// neverReprovision: the device stays where it is.
		alloc = &allocation{hub: prevState.AssignedHub}
	} else {
		var aerr *azerr.Error
		alloc, aerr = s.allocate(ctx, who, op.RegistrationID, prevState, op.Payload)
		if aerr != nil {
			return nil, s.fail(ctx, who, op, prev, prevState, aerr, now)
		}
	}
	hubName := alloc.hub

	state := RegistrationState{
		RegistrationID: op.RegistrationID,
		AssignedHub:    hubName,
		DeviceID:       deviceID,
		Status:         StatusAssigned,
		Substatus:      SubstatusInitialAssignment,
		Payload:        alloc.payload,
	}
	who.stampState(&state, groupID, now)
	initialHub := hubName
	if prev != nil {
		if prev.State.CreatedDateTimeUTC != nil {
			state.CreatedDateTimeUTC = prev.State.CreatedDateTimeUTC
		}
		if prev.InitialHub != "" {
			initialHub = prev.InitialHub
		} else if prevState != nil {
			initialHub = prevState.AssignedHub
		}
	}

	// The twin: a new device starts from the enrollment's initial twin
	// (or the webhook's); a device that moves hubs takes its twin along
	// or starts afresh, as the reprovision policy says
	// (docs/spec/dps-protocol.md#reprovisioning).
	enrollmentTwin := toHubTwin(c.InitialTwin)
	twin := hub.ProvisionTwin{Initial: enrollmentTwin}
	if alloc.initialTwin != nil {
		twin.Initial = toHubTwin(alloc.initialTwin)
	}
	switch {
	case prevState == nil:
		// First assignment (or the first since the record was deleted).
	case strings.EqualFold(prevState.AssignedHub, hubName):
		// Re-registration to the same hub keeps the twin and the substatus it
		// had (docs/spec/dps-protocol.md#reprovisioning leaves this open;
		// this is berth's choice).
		if prevState.Substatus != "" {
			state.Substatus = prevState.Substatus
		}
	default:
		switch {
		case alloc.initialTwin != nil:
			// A webhook's twin overrides the migration settings.
			twin.Reset = true
			state.Substatus = SubstatusDataReset
		case rp.MigrateDeviceData:
			twin.MigrateFromHub, twin.MigrateFromDevice = prevState.AssignedHub, prevState.DeviceID
			state.Substatus = SubstatusDataMigrated
		default:
			twin.Reset = true
			state.Substatus = SubstatusDataReset
		}
		if strings.EqualFold(hubName, initialHub) {
			state.Substatus = SubstatusReprovisioned
		}
	}

	// A device that changes hubs leaves the old one (reprovision.go):
	// the intent is written with the assignment, the deletion follows.
	if err := s.settleRemoval(ctx, hubName, deviceID); err != nil {
		return nil, err
	}
	leave, err := s.leaveRecord(ctx, op.RegistrationID, prevState, hubName, now)
	if err != nil {
		return nil, err
	}
	auth := who.hubAuthentication()
	devRecs, revoke, err := s.registry.ProvisionRecords(ctx, hubName, deviceID, auth, twin)
	if err != nil {
		return nil, fmt.Errorf("dps: provision device %s: %w", deviceID, err)
	}
	if leave != nil {
		devRecs = append(devRecs, *leave)
	}
	regData, err := json.Marshal(registrationDoc{State: state, GroupID: groupID, InitialHub: initialHub})
	if err != nil {
		return nil, fmt.Errorf("dps: encode registration: %w", err)
	}
	op.Status = StatusAssigned
	opData, err := json.Marshal(op)
	if err != nil {
		return nil, fmt.Errorf("dps: encode operation: %w", err)
	}
	written, err := s.store.Apply(ctx, append(devRecs,
		store.Record{Kind: store.KindRegistration, Key: regKey, Index: Key(groupID), Data: regData},
		store.Record{Kind: store.KindOperation, Key: op.OperationID, Index: regKey, Data: opData},
	))
	if err != nil {
		return nil, fmt.Errorf("dps: write assignment of %s: %w", op.RegistrationID, err)
	}
	// The assignment is durable: a device that hangs up now must not cut
	// short its removal from the old hub, nor the closing of sessions its
	// new credential revokes.
	s.registry.Provisioned(context.WithoutCancel(ctx), hubName, deviceID, auth, revoke)
	if leave != nil {
		s.removeNow(context.WithoutCancel(ctx), written[len(devRecs)-1])
	}
	// What a poll of this operation answers: the state as written, with
	// the etag the store gave it (getRegistration).
	state.ETag = registrationETag(written[len(devRecs)].ETag)
	return &state, nil
}

// fail ends a registration in status failed: the operation and the
// registration record (which the service API shows, as Azure does) say
// why, in one transaction. The hub the device was on is remembered for the
// next attempt's reprovisioning.
func (s *Service) fail(ctx context.Context, who *attested, op *operation, prev *registrationDoc, prevState *RegistrationState, aerr *azerr.Error, now time.Time) error {
	op.Status = StatusFailed
	op.ErrorCode = aerr.Code.Number()
	op.ErrorMessage = aerr.Message
	var groupID string
	if who.group != nil {
		groupID = who.group.EnrollmentGroupID
	}
	state := RegistrationState{
		RegistrationID: op.RegistrationID,
		Status:         StatusFailed,
		ErrorCode:      op.ErrorCode,
		ErrorMessage:   op.ErrorMessage,
	}
	who.stampState(&state, groupID, now)
	doc := registrationDoc{State: state, GroupID: groupID}
	if prev != nil {
		if prev.State.CreatedDateTimeUTC != nil {
			doc.State.CreatedDateTimeUTC = prev.State.CreatedDateTimeUTC
		}
		doc.InitialHub = prev.InitialHub
	}
	if prevState != nil {
		doc.LastAssignedHub, doc.LastDeviceID = prevState.AssignedHub, prevState.DeviceID
	}
	regData, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("dps: encode registration: %w", err)
	}
	opData, err := json.Marshal(op)
	if err != nil {
		return fmt.Errorf("dps: encode operation: %w", err)
	}
	regKey := Key(op.RegistrationID)
	if _, err := s.store.Apply(ctx, []store.Record{
		{Kind: store.KindRegistration, Key: regKey, Index: Key(groupID), Data: regData},
		{Kind: store.KindOperation, Key: op.OperationID, Index: regKey, Data: opData},
	}); err != nil {
		return fmt.Errorf("dps: write failed registration of %s: %w", op.RegistrationID, err)
	}
	return nil
}

// toHubTwin converts an enrollment's initial twin for the hub.
func toHubTwin(it *InitialTwin) *hub.InitialTwin {
	if it == nil {
		return nil
	}
	out := &hub.InitialTwin{Tags: it.Tags}
	if it.Properties != nil {
		out.Desired = it.Properties.Desired
	}
	return out
}

func (s *Service) putOperation(ctx context.Context, op *operation) error {
	data, err := json.Marshal(op)
	if err != nil {
		return fmt.Errorf("dps: encode operation: %w", err)
	}
	_, err = s.store.Put(ctx, store.Record{Kind: store.KindOperation, Key: op.OperationID, Index: Key(op.RegistrationID), Data: data}, store.Cond{})
	if err != nil {
		return fmt.Errorf("dps: write operation: %w", err)
	}
	return nil
}

// OperationStatus answers a poll: status assigning never outlives Register,
// so the answer is the stored outcome.
func (s *Service) OperationStatus(ctx context.Context, req OperationRequest) (*OperationStatus, error) {
	if !ValidRegistrationID(req.RegistrationID) {
		return nil, azerr.New(azerr.DPSInvalidRegistration)
	}
	if err := s.throttled(throttle.DPSOperation, ""); err != nil {
		return nil, err
	}
	if !s.recall(req.Session, req.IDScope, req.RegistrationID, req.Token, req.ClientCerts, s.now()) {
		gen := s.authGen.Load()
		who, err := s.authenticate(ctx, req.IDScope, req.RegistrationID, req.Token, req.ClientCerts)
		if err != nil {
			return nil, err
		}
		s.remember(req.Session, gen, who, req.IDScope, req.RegistrationID, req.Token, req.ClientCerts)
	}
	// Per device only once authenticated: another client must not be able
	// to spend a device's polls by naming it.
	if err := s.throttled(throttle.DPSDevicePoll, Key(req.RegistrationID)); err != nil {
		return nil, err
	}
	if req.OperationID == "" || len(req.OperationID) > 256 {
		return nil, azerr.New(azerr.DPSOperationNotFound)
	}
	if st := s.recallOutcome(req.Session, req.RegistrationID, req.OperationID); st != nil {
		// The poll that follows a registration on the same connection:
		// its outcome was durable before Register answered.
		st.RegistrationID = req.RegistrationID
		return &OperationStatus{OperationID: req.OperationID, Status: StatusAssigned, RegistrationState: st}, nil
	}
	rec, err := s.store.Get(ctx, store.KindOperation, req.OperationID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, azerr.New(azerr.DPSOperationNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("dps: get operation: %w", err)
	}
	var op operation
	if err := json.Unmarshal(rec.Data, &op); err != nil {
		return nil, fmt.Errorf("dps: decode operation: %w", err)
	}
	// An operation belongs to one registration; another device's ID must
	// not reveal it.
	if !strings.EqualFold(op.RegistrationID, req.RegistrationID) {
		return nil, azerr.New(azerr.DPSOperationNotFound)
	}
	out := &OperationStatus{OperationID: op.OperationID, Status: op.Status}
	switch op.Status {
	case StatusAssigned:
		reg, err := s.getRegistration(ctx, Key(op.RegistrationID))
		if err != nil {
			if isNotFound(err) {
				// The record was deleted since; the operation's outcome
				// no longer exists.
				return nil, azerr.New(azerr.DPSRegistrationMissing)
			}
			return nil, err
		}
		st := reg.State
		st.RegistrationID = req.RegistrationID
		out.RegistrationState = &st
	case StatusFailed:
		created := Time{op.Created}
		out.RegistrationState = &RegistrationState{
			RegistrationID:         req.RegistrationID,
			CreatedDateTimeUTC:     &created,
			LastUpdatedDateTimeUTC: &created,
			Status:                 StatusFailed,
			ErrorCode:              op.ErrorCode,
			ErrorMessage:           op.ErrorMessage,
		}
	default:
		out.RegistrationState = &RegistrationState{RegistrationID: req.RegistrationID, Status: op.Status}
	}
	return out, nil
}

// RegistrationStatus is the device's registration status lookup.
func (s *Service) RegistrationStatus(ctx context.Context, req StatusRequest) (*RegistrationState, error) {
	if !ValidRegistrationID(req.RegistrationID) {
		return nil, azerr.New(azerr.DPSInvalidRegistration)
	}
	if _, hasCSR, err := parseDeviceRequest(req.Body, req.RegistrationID); err != nil {
		return nil, err
	} else if hasCSR {
		// Certificates are issued only by register
		// (docs/spec/dps-protocol.md#device-api-over-https).
		return nil, azerr.Newf(azerr.DPSInvalidBody, "csr is not allowed in a registration status lookup.")
	}
	if err := s.throttled(throttle.DPSOperation, ""); err != nil {
		return nil, err
	}
	if _, err := s.authenticate(ctx, req.IDScope, req.RegistrationID, req.Token, req.ClientCerts); err != nil {
		return nil, err
	}
	reg, err := s.getRegistration(ctx, Key(req.RegistrationID))
	if err != nil {
		return nil, err
	}
	st := reg.State
	return &st, nil
}

func (s *Service) getRegistration(ctx context.Context, key string) (*registrationDoc, error) {
	rec, err := s.store.Get(ctx, store.KindRegistration, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, azerr.New(azerr.DPSRegistrationMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("dps: get registration: %w", err)
	}
	var doc registrationDoc
	if err := json.Unmarshal(rec.Data, &doc); err != nil {
		return nil, fmt.Errorf("dps: decode registration: %w", err)
	}
	doc.State.ETag = registrationETag(rec.ETag)
	return &doc, nil
}

func isNotFound(err error) bool {
	var ae *azerr.Error
	return errors.As(err, &ae) && ae.Status() == 404
}

// authenticate checks a device's SAS token against its enrollment: an
// individual enrollment with this registration ID wins; otherwise the first
// symmetric-key group whose derived key validates. A refusal is 401000
// (no or unreadable token) or 401002 wrapping the *refusal.Error that says
// why, for the log.
func (s *Service) authenticate(ctx context.Context, scope, regID, token string, certs []*x509.Certificate) (*attested, error) {
	if token == "" && len(certs) > 0 {
		if !strings.EqualFold(scope, s.idScope) {
			return nil, errInvalidCertificate(refusal.Newf(refusal.UnknownScope, "ID scope %q", scope))
		}
		return s.authenticateX509(ctx, regID, certs, s.now())
	}
	deny := func(err error) error { return azerr.Wrap(deniedCode(err), err) }
	if token == "" {
		return nil, deny(refusal.New(refusal.NoCredential, errors.New("no token and no client certificate")))
	}
	tok, err := sas.Parse(token)
	if err != nil {
		return nil, deny(err)
	}
	if !strings.EqualFold(scope, s.idScope) {
		return nil, deny(refusal.Newf(refusal.UnknownScope, "ID scope %q", scope))
	}
	if tok.KeyName != "" && !strings.EqualFold(tok.KeyName, "registration") {
		return nil, deny(refusal.Newf(refusal.UnknownPolicy, "skn %q is not \"registration\"", tok.KeyName))
	}
	if want := scope + "/registrations/" + regID; !tok.ResourceIs(want) {
		return nil, deny(sas.AudienceError(tok, want))
	}
	if err := s.limits.CheckTime(tok, s.now()); err != nil {
		return nil, deny(err)
	}
	e, err := s.individualEnrollment(ctx, regID)
	switch {
	case err == nil:
		sk := e.Attestation.SymmetricKey
		if e.Attestation.Type != AttestationSymmetricKey || sk == nil {
			return nil, deny(refusal.Newf(refusal.WrongCredentialType, "enrollment %s attests by %s, not a symmetric key", regID, e.Attestation.Type))
		}
		if _, err := tok.Match(sk.PrimaryKey, sk.SecondaryKey); err != nil {
			return nil, deny(fmt.Errorf("individual enrollment %s: %w", regID, err))
		}
		return &attested{enrollment: e, keys: [2]string{sk.PrimaryKey, sk.SecondaryKey}}, nil
	case !isNotFound(err):
		return nil, err
	}
	all, err := s.enrollmentGroups(ctx)
	if err != nil {
		return nil, err
	}
	// The string to sign and the signature are the same for every group:
	// worked out once, not per group and key.
	sts := tok.StringToSign()
	sig, _ := base64.StdEncoding.DecodeString(tok.Signature) // not base64: no key verifies
	var found *attested
	groups := 0
	for _, g := range all {
		if g.Attestation.Type != AttestationSymmetricKey || g.Attestation.SymmetricKey == nil {
			continue
		}
		groups++
		if keys, ok := g.groupKeyMatch(regID, sts, sig); ok {
			found = &attested{group: g.EnrollmentGroup, keys: keys}
			break
		}
	}
	switch {
	case found != nil:
		return found, nil
	case groups == 0:
		return nil, deny(refusal.Newf(refusal.UnknownRegistration, "no individual enrollment %s and no symmetric-key enrollment group", regID))
	}
	// A wrong key and a registration ID no group meant look alike: a
	// group member's key is derived from its ID.
	return nil, deny(refusal.New(refusal.WrongKey, fmt.Errorf("%w: no individual enrollment %s, and no derived key of the %d symmetric-key enrollment groups verifies",
		sas.ErrSignature, regID, groups)))
}
