package cli

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/berth-iot/berth/throttle"
)

// throttleFlags are berth serve's --throttle flags (docs/operations.md,
// "Throttling as Azure does it").
type throttleFlags struct {
	profile string
	units   []string
	limits  []string
}

func (t *throttleFlags) register(f *pflag.FlagSet) {
	f.StringVar(&t.profile, "throttle", throttle.Off, `apply Azure's published throttles: azure-s1, azure-s2, azure-s3 or off (429 answers as Azure gives them; docs/operations.md)`)
	f.StringSliceVar(&t.units, "throttle-units", nil, `units of every hub and the DPS ("2"), or of one hub ("HUB=4"); repeat or comma-separate (default 1)`)
	f.StringSliceVar(&t.limits, "throttle-limit", nil, `replace one limit with a fixed rate, "OP=N/PERIOD" or "OP=off", e.g. d2c=10/s, dps-register=100/min, dps-device-poll=5/10s; also with --throttle off`)
}

func (t *throttleFlags) settings() (throttle.Settings, error) {
	s, err := throttle.Parse(t.profile, t.units, t.limits)
	if err != nil {
		// Parse names the flag's value; its errors start "throttle:".
		return throttle.Settings{}, fmt.Errorf("%w (--throttle, --throttle-units, --throttle-limit)", err)
	}
	return s, nil
}
