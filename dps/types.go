package dps

import (
	"encoding/json"
	"time"
)

// Wire time format: Azure prints seven fractional digits and Z.
const timeLayout = "2006-01-02T15:04:05.0000000Z"

// Time is a UTC timestamp that marshals the way DPS prints it.
type Time struct{ time.Time }

// MarshalJSON writes 2020-04-10T03:11:13.0276997Z.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return []byte(`"` + t.UTC().Format(timeLayout) + `"`), nil
}

// UnmarshalJSON accepts RFC 3339 with any precision, and times without a
// zone (as UTC), which .NET serializers write. Every Time in a request is
// read-only, so a value that still does not parse is ignored rather than
// failing the request.
func (t *Time) UnmarshalJSON(b []byte) error {
	t.Time = time.Time{}
	var s string
	if json.Unmarshal(b, &s) != nil || s == "" {
		return nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if v, err := time.Parse(layout, s); err == nil {
			t.Time = v.UTC()
			return nil
		}
	}
	return nil
}

// Attestation types.
const (
	AttestationSymmetricKey = "symmetricKey"
	AttestationX509         = "x509"
	AttestationTPM          = "tpm"
	AttestationNone         = "none"
)

// Provisioning statuses of an enrollment.
const (
	ProvisioningEnabled  = "enabled"
	ProvisioningDisabled = "disabled"
)

// Registration statuses.
const (
	StatusUnassigned = "unassigned"
	StatusAssigning  = "assigning"
	StatusAssigned   = "assigned"
	StatusFailed     = "failed"
	StatusDisabled   = "disabled"
)

// Substatuses of an assigned registration.
const (
	SubstatusInitialAssignment = "initialAssignment"
	SubstatusDataMigrated      = "deviceDataMigrated"
	SubstatusDataReset         = "deviceDataReset"
	SubstatusReprovisioned     = "reprovisionedToInitialAssignment"
)

// SymmetricKeyAttestation holds an enrollment's keys.
type SymmetricKeyAttestation struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// AttestationMechanism is Azure's AttestationMechanism. TPM bodies are
// kept verbatim until berth implements TPM.
type AttestationMechanism struct {
	Type         string                   `json:"type"`
	SymmetricKey *SymmetricKeyAttestation `json:"symmetricKey,omitempty"`
	X509         *X509Attestation         `json:"x509,omitempty"`
	TPM          json.RawMessage          `json:"tpm,omitempty"`
}

// Capabilities of a device.
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// ReprovisionPolicy of an enrollment.
type ReprovisionPolicy struct {
	UpdateHubAssignment bool `json:"updateHubAssignment"`
	MigrateDeviceData   bool `json:"migrateDeviceData"`
}

// CustomAllocationDefinition names a custom allocation webhook.
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion"`
}

// InitialTwin is the twin an enrollment gives a new device.
type InitialTwin struct {
	Tags       json.RawMessage        `json:"tags,omitempty"`
	Properties *InitialTwinProperties `json:"properties,omitempty"`
}

// InitialTwinProperties holds the desired properties of an initial twin.
type InitialTwinProperties struct {
	Desired json.RawMessage `json:"desired,omitempty"`
}

// Common is what individual enrollments and groups share.
type Common struct {
	Attestation                *AttestationMechanism       `json:"attestation"`
	Capabilities               *Capabilities               `json:"capabilities,omitempty"`
	IoTHubHostName             string                      `json:"iotHubHostName,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         string                      `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUTC         Time                        `json:"createdDateTimeUtc"`
	LastUpdatedDateTimeUTC     Time                        `json:"lastUpdatedDateTimeUtc"`
	AllocationPolicy           string                      `json:"allocationPolicy,omitempty"`
	IoTHubs                    []string                    `json:"iotHubs,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
}

// IndividualEnrollment is Azure's IndividualEnrollment.
type IndividualEnrollment struct {
	RegistrationID            string             `json:"registrationId"`
	DeviceID                  string             `json:"deviceId,omitempty"`
	RegistrationState         *RegistrationState `json:"registrationState,omitempty"`
	OptionalDeviceInformation json.RawMessage    `json:"optionalDeviceInformation,omitempty"`
	Common
}

// EnrollmentGroup is Azure's EnrollmentGroup.
type EnrollmentGroup struct {
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	Common
}

// GroupRef names the group a registration came through.
type GroupRef struct {
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// RegistrationState is DeviceRegistrationResult (device view) and
// DeviceRegistrationState (service view).
type RegistrationState struct {
	X509                   *GroupRef       `json:"x509,omitempty"`
	SymmetricKey           *GroupRef       `json:"symmetricKey,omitempty"`
	RegistrationID         string          `json:"registrationId"`
	CreatedDateTimeUTC     *Time           `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string          `json:"assignedHub,omitempty"`
	DeviceID               string          `json:"deviceId,omitempty"`
	Status                 string          `json:"status"`
	Substatus              string          `json:"substatus,omitempty"`
	ErrorCode              int             `json:"errorCode,omitempty"`
	ErrorMessage           string          `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC *Time           `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string          `json:"etag,omitempty"`
	Payload                json.RawMessage `json:"payload,omitempty"`
}

// OperationStatus is RegistrationOperationStatus, the answer to register and
// poll requests.
type OperationStatus struct {
	OperationID       string             `json:"operationId"`
	Status            string             `json:"status"`
	RegistrationState *RegistrationState `json:"registrationState,omitempty"`
}

// Terminal reports whether polling should stop.
func (o *OperationStatus) Terminal() bool {
	return o.Status == StatusAssigned || o.Status == StatusFailed || o.Status == StatusDisabled
}
