package dps

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/hub"
)

// Allocation policies (docs/spec/dps-protocol.md#allocation).
const (
	AllocationHashed     = "hashed"
	AllocationStatic     = "static"
	AllocationGeoLatency = "geoLatency"
	AllocationCustom     = "custom"
)

// LinkedHub is an IoT hub this DPS may assign devices to.
type LinkedHub struct {
	// Name is the hub's host name, as devices connect to it.
	Name string `json:"name"`
	// AllocationWeight weighs the hub in hashed allocation (default 1;
	// 0 takes no new devices unless an enrollment names the hub).
	AllocationWeight int `json:"allocationWeight"`
	// ApplyAllocationPolicy makes the hub a candidate for enrollments that
	// do not list their own hubs.
	ApplyAllocationPolicy bool `json:"applyAllocationPolicy"`
	// Region is the hub's location label, used by geoLatency: berth has no
	// network latency to measure between regions, so geoLatency prefers
	// hubs whose Region equals the DPS's own (Config.Region).
	Region string `json:"region,omitempty"`
}

// DefaultWebhookTimeout bounds a custom allocation webhook call. The device
// waits for it (the register request is answered once the outcome is
// durable), so it is kept well under the SDKs' own register timeouts.
const DefaultWebhookTimeout = 10 * time.Second

// maxWebhookResponse bounds what a webhook may answer: a hub name, a twin
// (tags 8 KB + desired 32 KB as IoT Hub counts them, more as JSON) and a
// payload that must fit the 96 KB DPS message it travels back in.
const maxWebhookResponse = 256 * 1024

// allocation is the outcome of allocate.
type allocation struct {
	hub string
	// initialTwin, when the webhook answered one, replaces the
	// enrollment's and is applied whatever the reprovision policy says.
	initialTwin *InitialTwin
	// payload is the webhook's, returned to the device in
	// registrationState.payload.
	payload json.RawMessage
}

// SetLinkedHubs replaces the linked hubs (berth hub create|update|delete).
// It keeps the current ones when hubs is empty: a DPS always has a hub.
func (s *Service) SetLinkedHubs(hubs []LinkedHub) {
	if len(hubs) == 0 {
		return
	}
	s.hmu.Lock()
	s.hubs = append([]LinkedHub(nil), hubs...)
	s.hmu.Unlock()
}

func (s *Service) linkedHubs() []LinkedHub {
	s.hmu.RLock()
	defer s.hmu.RUnlock()
	return s.hubs
}

// linked returns the linked hub with this name.
func (s *Service) linked(name string) (LinkedHub, bool) {
	for _, h := range s.linkedHubs() {
		if strings.EqualFold(h.Name, name) {
			return h, true
		}
	}
	return LinkedHub{}, false
}

// LinkedHubs returns the hubs this DPS may assign devices to.
func (s *Service) LinkedHubs() []LinkedHub { return append([]LinkedHub(nil), s.linkedHubs()...) }

// candidates are the hubs an enrollment may be assigned to: the ones it
// lists (its iotHubs, or the legacy iotHubHostName), else every linked hub
// with applyAllocationPolicy.
func (s *Service) candidates(c *Common) ([]LinkedHub, *azerr.Error) {
	var names []string
	switch {
	case len(c.IoTHubs) > 0:
		names = c.IoTHubs
	case c.IoTHubHostName != "":
		names = []string{c.IoTHubHostName}
	}
	if names == nil {
		var out []LinkedHub
		for _, h := range s.linkedHubs() {
			if h.ApplyAllocationPolicy {
				out = append(out, h)
			}
		}
		if len(out) == 0 {
			return nil, azerr.Newf(azerr.DPSNoHub, "No linked IoT hub applies allocation policies.")
		}
		return out, nil
	}
	out := make([]LinkedHub, 0, len(names))
	for _, n := range names {
		h, ok := s.linked(n)
		if !ok {
			return nil, azerr.Newf(azerr.DPSNoHub, "The IoT hub %s named by the enrollment is not linked to this service.", n)
		}
		out = append(out, h)
	}
	return out, nil
}

// allocate picks the hub for a registration by the enrollment's allocation
// policy (the service's, hashed, when it names none).
func (s *Service) allocate(ctx context.Context, who *attested, regID string, prev *RegistrationState, payload json.RawMessage) (*allocation, *azerr.Error) {
	c := who.common()
	if c.AllocationPolicy == AllocationStatic && len(c.IoTHubs) == 0 && c.IoTHubHostName == "" {
		return s.staticHub()
	}
	hubs, aerr := s.candidates(c)
	if aerr != nil {
		return nil, aerr
	}
	switch c.AllocationPolicy {
	case AllocationStatic:
		// The enrollment's one hub.
		return &allocation{hub: hubs[0].Name}, nil
	case AllocationGeoLatency:
		var near []LinkedHub
		for _, h := range hubs {
			if s.region != "" && strings.EqualFold(h.Region, s.region) {
				near = append(near, h)
			}
		}
		if len(near) > 0 {
			hubs = near
		}
		return &allocation{hub: hashedPick(hubs, regID)}, nil
	case AllocationCustom:
		return s.callWebhook(ctx, who, regID, prev, payload, hubs)
	default:
		if len(c.IoTHubs) == 0 && c.IoTHubHostName != "" {
			return &allocation{hub: hubs[0].Name}, nil
		}
		return &allocation{hub: hashedPick(hubs, regID)}, nil
	}
}

// staticHub is the hub of a static enrollment that names none (Microsoft's
// own SDK tests write such enrollments, and Azure assigns them): the one
// linked hub, or with several the DPS's default hub (berth's default hub,
// --hub-name), whatever its weight and applyAllocationPolicy, as an
// enrollment that names a hub may also name any linked hub. Static means
// one fixed place: spreading the devices, or moving them when hubs are
// added, would not be static (docs/provisioning.md).
func (s *Service) staticHub() (*allocation, *azerr.Error) {
	hubs := s.linkedHubs()
	if len(hubs) == 1 {
		return &allocation{hub: hubs[0].Name}, nil
	}
	if h, ok := s.linked(s.defaultHub); ok {
		return &allocation{hub: h.Name}, nil
	}
	return nil, azerr.Newf(azerr.DPSNoHub, "The static enrollment names no IoT hub and the default hub %s is not linked.", s.defaultHub)
}

// hashedPick spreads registrations over hubs in proportion to their
// weights by weighted rendezvous hashing (highest random weight): every hub
// h of weight w > 0 scores w / -ln(u), where u in (0, 1) is drawn from the
// first 64 bits of SHA-256(lower(h) "\n" lower(regID)), and the highest
// score wins. A hub then wins with probability w / (sum of weights), for
// any shape of ID (SHA-256 leaves no pattern of the ID in the bits used);
// the pick is stable for an ID and a set of hubs and weights; and adding a
// hub moves only the devices it wins, its share, all onto it (removing
// one moves only its own). Hubs of weight 0 are used only when all weights
// are 0, then as if all were 1. The function is documented in
// docs/provisioning.md: devices and tools may rely on it.
func hashedPick(hubs []LinkedHub, regID string) string {
	anyWeight := false
	for _, h := range hubs {
		anyWeight = anyWeight || h.AllocationWeight > 0
	}
	id := strings.ToLower(regID)
	best, bestName, bestScore := "", "", math.Inf(-1)
	for _, h := range hubs {
		w := h.AllocationWeight
		if !anyWeight {
			w = 1
		}
		if w <= 0 {
			continue
		}
		name := strings.ToLower(h.Name)
		score := float64(w) / -math.Log(unitHash(name, id))
		// Equal scores (practically never) go to the smaller name, so
		// the order of the hub list does not matter.
		if score > bestScore || (score == bestScore && name < bestName) {
			best, bestName, bestScore = h.Name, name, score
		}
	}
	return best
}

// unitHash maps a hub and a registration ID (both lower-case) to a number
// uniform in the open interval (0, 1): the top 53 bits of the first 64 bits
// of SHA-256(hub "\n" regID), centred in their step so that neither 0 nor
// 1 occurs.
func unitHash(hubName, regID string) float64 {
	var buf [320]byte // a host name (253) and a registration ID (128) mostly fit: no allocation
	b := append(append(append(buf[:0], hubName...), '\n'), regID...)
	sum := sha256.Sum256(b)
	x := binary.BigEndian.Uint64(sum[:8])
	return (float64(x>>11) + 0.5) / (1 << 53)
}

// webhookRequest is Azure's AllocationRequest
// (docs/spec/dps-protocol.md#webhook-request).
type webhookRequest struct {
	IndividualEnrollment *IndividualEnrollment `json:"individualEnrollment,omitempty"`
	EnrollmentGroup      *EnrollmentGroup      `json:"enrollmentGroup,omitempty"`
	DeviceRuntimeContext runtimeContext        `json:"deviceRuntimeContext"`
	LinkedHubs           []string              `json:"linkedHubs"`
}

type runtimeContext struct {
	RegistrationID        string          `json:"registrationId"`
	CurrentIoTHubHostName string          `json:"currentIotHubHostName,omitempty"`
	CurrentDeviceID       string          `json:"currentDeviceId,omitempty"`
	SymmetricKey          *struct{}       `json:"symmetricKey,omitempty"`
	Payload               json.RawMessage `json:"payload,omitempty"`
}

// webhookResponse is Azure's AllocationResponse
// (docs/spec/dps-protocol.md#webhook-response).
type webhookResponse struct {
	IoTHubHostName string          `json:"iotHubHostName"`
	InitialTwin    *InitialTwin    `json:"initialTwin"`
	Payload        json.RawMessage `json:"payload"`
}

// redactAttestation keeps the attestation type only: the webhook is told
// how the device attested, never its keys (as Azure does).
func redactAttestation(a *AttestationMechanism) *AttestationMechanism {
	if a == nil {
		return nil
	}
	return &AttestationMechanism{Type: a.Type}
}

// callWebhook runs custom allocation: POST the AllocationRequest to the
// enrollment's webhookUrl and check its answer. Every failure ends the
// registration in status failed: 400207 when the webhook cannot be reached
// or answers non-2xx ("Custom allocation failed with status code: N", as
// Azure words it), 400208 when it answers a hub that is not one of
// linkedHubs or a body that is not an AllocationResponse (berth's choice;
// docs/spec/dps-protocol.md#webhook-response leaves it open).
func (s *Service) callWebhook(ctx context.Context, who *attested, regID string, prev *RegistrationState, payload json.RawMessage, hubs []LinkedHub) (*allocation, *azerr.Error) {
	c := who.common()
	if c.CustomAllocationDefinition == nil || c.CustomAllocationDefinition.WebhookURL == "" {
		return nil, azerr.Newf(azerr.DPSCustomAllocation, "Custom allocation failed: the enrollment has no webhookUrl.")
	}
	req := webhookRequest{DeviceRuntimeContext: runtimeContext{RegistrationID: regID, SymmetricKey: &struct{}{}, Payload: payload}}
	for _, h := range hubs {
		req.LinkedHubs = append(req.LinkedHubs, h.Name)
	}
	if prev != nil && prev.Status == StatusAssigned {
		req.DeviceRuntimeContext.CurrentIoTHubHostName = prev.AssignedHub
		req.DeviceRuntimeContext.CurrentDeviceID = prev.DeviceID
	}
	if who.enrollment != nil {
		e := *who.enrollment
		e.Attestation = redactAttestation(e.Attestation)
		req.IndividualEnrollment = &e
	} else {
		g := *who.group
		g.Attestation = redactAttestation(g.Attestation)
		req.EnrollmentGroup = &g
	}
	body, err := json.Marshal(&req)
	if err != nil {
		return nil, azerr.Newf(azerr.DPSCustomAllocation, "Custom allocation failed: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.webhookTimeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.CustomAllocationDefinition.WebhookURL, bytes.NewReader(body))
	if err != nil {
		return nil, azerr.Newf(azerr.DPSCustomAllocation, "Custom allocation failed: the webhook URL is not valid.")
	}
	hreq.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := s.webhook.Do(hreq)
	if err != nil {
		why := "the webhook could not be reached"
		if errors.Is(err, context.DeadlineExceeded) {
			why = fmt.Sprintf("the webhook did not answer within %s", s.webhookTimeout)
		}
		return nil, azerr.Newf(azerr.DPSCustomAllocation, "Custom allocation failed: %s.", why)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, azerr.Newf(azerr.DPSCustomAllocation, "Custom allocation failed with status code: %d", resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxWebhookResponse+1))
	if err != nil {
		return nil, azerr.Newf(azerr.DPSCustomAllocation, "Custom allocation failed: reading the webhook's answer: %v", err)
	}
	invalid := func(format string, args ...any) *azerr.Error {
		return azerr.Newf(azerr.DPSNoHub, "Custom allocation returned an invalid response: "+format, args...)
	}
	if len(raw) > maxWebhookResponse {
		return nil, invalid("over %d bytes.", maxWebhookResponse)
	}
	var ans webhookResponse
	if err := json.Unmarshal(raw, &ans); err != nil {
		return nil, invalid("not an AllocationResponse JSON object.")
	}
	h, ok := s.linked(ans.IoTHubHostName)
	inList := false
	for _, c := range hubs {
		inList = inList || strings.EqualFold(c.Name, ans.IoTHubHostName)
	}
	switch {
	case ans.IoTHubHostName == "":
		return nil, invalid("no iotHubHostName.")
	case !ok || !inList:
		return nil, invalid("the IoT hub %s is not one of the linked hubs %s.", ans.IoTHubHostName, strings.Join(req.LinkedHubs, ", "))
	}
	if p := bytes.TrimSpace(ans.Payload); len(p) > 0 && string(p) != "null" {
		if p[0] != '{' {
			return nil, invalid("payload must be a JSON object.")
		}
		ans.Payload = p
	} else {
		ans.Payload = nil
	}
	if it := ans.InitialTwin; it != nil {
		var desired json.RawMessage
		if it.Properties != nil {
			desired = it.Properties.Desired
		}
		if err := hub.ValidateInitialTwin(it.Tags, desired); err != nil {
			return nil, invalid("initialTwin: %v", err)
		}
	}
	return &allocation{hub: h.Name, initialTwin: ans.InitialTwin, payload: ans.Payload}, nil
}
