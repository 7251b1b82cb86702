// Package throttle applies Azure's published operation throttles to berth:
// the rates of an IoT hub tier (S1, S2, S3) scaled by a hub's units, and
// DPS's registration and operation rates. It is an opt-in operator setting
// (berth serve --throttle); off by default.
//
// The package knows no wire and no error format: the domains (dps, hub)
// ask a *Throttler whether an operation may proceed and turn a refusal into
// Azure's answer (docs/operations.md, "Throttling as Azure does it"). All
// state is in the Throttler (no package state), its memory is bounded, and
// time comes from an injectable clock.
package throttle

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Op is an operation class Azure throttles.
type Op uint8

// The operation classes. The names (Op.String) are the flag and metric
// label spellings.
const (
	// DPSRegister is a device registration (PUT register), per DPS.
	DPSRegister Op = iota + 1
	// DPSOperation is a registration's operation status poll or a
	// registration status lookup, per DPS ("Operations").
	DPSOperation
	// DPSDevicePoll is one device's operation status polls, per device.
	DPSDevicePoll
	// HubConnect is a device authentication: a new connection (MQTT
	// CONNECT, an AMQP device link) or an HTTPS device request.
	HubConnect
	// HubD2C is a device-to-cloud send (a batch is one send).
	HubD2C
	// HubC2DSend is a cloud-to-device send by the service.
	HubC2DSend
	// HubC2DReceive is a device's cloud-to-device receive over HTTPS.
	HubC2DReceive
	// HubMethod is a direct method call, metered in 4 KB of payload.
	HubMethod
	// HubTwinRead is a device or module twin read (device or service).
	HubTwinRead
	// HubTwinUpdate is a twin update: reported by the device, desired or
	// tags by the service.
	HubTwinUpdate
	// HubRegistry is an identity registry operation of the service API
	// (create, retrieve, list, update, delete; a bulk operation is one).
	HubRegistry
	// HubQuery is a device (twin) query.
	HubQuery
	// HubConfiguration is an automatic device configuration operation
	// (create, read, list, update, delete, test its queries, apply a
	// content to one device).
	HubConfiguration

	opEnd
)

var opNames = [...]string{
	DPSRegister:   "dps-register",
	DPSOperation:  "dps-operation",
	DPSDevicePoll: "dps-device-poll",
	HubConnect:    "connect",
	HubD2C:        "d2c",
	HubC2DSend:    "c2d-send",
	HubC2DReceive: "c2d-receive",
	HubMethod:     "method",
	HubTwinRead:   "twin-read",
	HubTwinUpdate: "twin-update",
	HubRegistry:   "registry",
	HubQuery:      "query",

	HubConfiguration: "configuration",
}

// Ops returns every operation class, in declaration order.
func Ops() []Op {
	out := make([]Op, 0, opEnd-1)
	for o := Op(1); o < opEnd; o++ {
		out = append(out, o)
	}
	return out
}

func (o Op) String() string {
	if o > 0 && o < opEnd {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// ParseOp returns the operation class named name (Op.String).
func ParseOp(name string) (Op, bool) {
	for o := Op(1); o < opEnd; o++ {
		if opNames[o] == name {
			return o, true
		}
	}
	return 0, false
}

// dps reports whether o is a DPS operation (no hub, no units).
func (o Op) dps() bool { return o == DPSRegister || o == DPSOperation || o == DPSDevicePoll }

// perKey reports whether o is counted per device rather than per hub or
// DPS.
func (o Op) perKey() bool { return o == DPSDevicePoll }

// MethodMeter is the size in which direct-method payloads are metered:
// a call of 0–4 KB costs one meter, 4–8 KB two, and so on.
const MethodMeter = 4 * 1024

// MethodCost is the cost of a direct method call whose request payload is
// n bytes, in meters (at least one).
func MethodCost(n int) float64 {
	if n <= MethodMeter {
		return 1
	}
	return math.Ceil(float64(n) / MethodMeter)
}

// Rate is N operations per Per. A bucket holds at most N: a burst of one
// period's worth passes at once, then the rate holds.
type Rate struct {
	N   float64
	Per time.Duration
}

// PerSecond is the rate's refill in operations per second.
func (r Rate) PerSecond() float64 {
	if r.Per <= 0 {
		return 0
	}
	return r.N / r.Per.Seconds()
}

func (r Rate) String() string {
	n := trimFloat(r.N)
	switch r.Per {
	case time.Second:
		return n + "/s"
	case time.Minute:
		return n + "/min"
	case time.Hour:
		return n + "/h"
	}
	return n + "/" + r.Per.String()
}

func trimFloat(f float64) string {
	s := fmt.Sprintf("%.2f", f)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// Limit is one row of a tier's table: PerUnit operations per Per for each
// unit, and never less than Min per Per ("the higher of 100/sec or
// 12/sec/unit"). A fixed rate ("100/sec") has PerUnit 0 and Min set.
type Limit struct {
	PerUnit float64
	Min     float64
	Per     time.Duration
}

// For is the limit for a hub (or DPS) of units units.
func (l Limit) For(units int) Rate {
	if units < 1 {
		units = 1
	}
	return Rate{N: math.Max(l.PerUnit*float64(units), l.Min), Per: l.Per}
}

// Profile is a tier's throttles.
type Profile struct {
	Name   string
	Limits map[Op]Limit
}

// Profile names for --throttle.
const (
	Off     = "off"
	AzureS1 = "azure-s1"
	AzureS2 = "azure-s2"
	AzureS3 = "azure-s3"
)

const (
	perSec = time.Second
	perMin = time.Minute
)

// dpsLimits are DPS's rate limits, the same for every profile: DPS has
// one tier (S1). Source: Microsoft's "Azure IoT Hub Device Provisioning
// Service" quotas and limits (azure-docs includes/iot-dps-limits.md,
// ms.date 2024-03-06): operations 1,000/min/service, device registrations
// 1,000/min/service (per unit), device polling 5/10 sec/device.
func dpsLimits(m map[Op]Limit) map[Op]Limit {
	m[DPSRegister] = Limit{PerUnit: 1000, Per: perMin}
	m[DPSOperation] = Limit{PerUnit: 1000, Per: perMin}
	m[DPSDevicePoll] = Limit{Min: 5, Per: 10 * time.Second}
	return m
}

// Profiles returns the built-in profiles. The figures are Microsoft's
// "IoT Hub quotas and throttling" (azure-docs
// articles/iot-hub/iot-hub-devguide-quotas-throttling.md, operation
// throttles table; docs/operations.md reproduces it with the source).
func Profiles() []Profile {
	return []Profile{
		{Name: AzureS1, Limits: dpsLimits(map[Op]Limit{
			HubRegistry:   {PerUnit: 100, Per: perMin},
			HubConnect:    {PerUnit: 12, Min: 100, Per: perSec},
			HubD2C:        {PerUnit: 12, Min: 100, Per: perSec},
			HubC2DSend:    {PerUnit: 100, Per: perMin},
			HubC2DReceive: {PerUnit: 1000, Per: perMin},
			HubMethod:     {PerUnit: 160 * 1024 / MethodMeter, Per: perSec}, // 160 KB/s/unit
			HubQuery:      {PerUnit: 20, Per: perMin},
			HubTwinRead:   {Min: 100, Per: perSec},
			HubTwinUpdate: {Min: 50, Per: perSec},

			HubConfiguration: {PerUnit: 20, Per: perMin}, // 0.33/s/unit
		})},
		{Name: AzureS2, Limits: dpsLimits(map[Op]Limit{
			HubRegistry:   {PerUnit: 100, Per: perMin},
			HubConnect:    {PerUnit: 120, Per: perSec},
			HubD2C:        {PerUnit: 120, Per: perSec},
			HubC2DSend:    {PerUnit: 100, Per: perMin},
			HubC2DReceive: {PerUnit: 1000, Per: perMin},
			HubMethod:     {PerUnit: 480 * 1024 / MethodMeter, Per: perSec}, // 480 KB/s/unit
			HubQuery:      {PerUnit: 20, Per: perMin},
			HubTwinRead:   {PerUnit: 10, Min: 100, Per: perSec},
			HubTwinUpdate: {PerUnit: 5, Min: 50, Per: perSec},

			HubConfiguration: {PerUnit: 20, Per: perMin},
		})},
		{Name: AzureS3, Limits: dpsLimits(map[Op]Limit{
			HubRegistry:   {PerUnit: 5000, Per: perMin},
			HubConnect:    {PerUnit: 6000, Per: perSec},
			HubD2C:        {PerUnit: 6000, Per: perSec},
			HubC2DSend:    {PerUnit: 5000, Per: perMin},
			HubC2DReceive: {PerUnit: 50000, Per: perMin},
			HubMethod:     {PerUnit: 24 * 1024 * 1024 / MethodMeter, Per: perSec}, // 24 MB/s/unit
			HubQuery:      {PerUnit: 1000, Per: perMin},
			HubTwinRead:   {PerUnit: 500, Per: perSec},
			HubTwinUpdate: {PerUnit: 250, Per: perSec},

			HubConfiguration: {PerUnit: 20, Per: perMin}, // the same on S3
		})},
	}
}

// ProfileNamed returns the built-in profile name; Off (or "") is the empty
// profile.
func ProfileNamed(name string) (Profile, error) {
	switch name {
	case "", Off:
		return Profile{Name: Off, Limits: map[Op]Limit{}}, nil
	}
	for _, p := range Profiles() {
		if p.Name == name {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("throttle: unknown profile %q (want %s, %s, %s or %s)", name, AzureS1, AzureS2, AzureS3, Off)
}
