package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/serviceclient"
)

// Group is the symmetric-key enrollment group the bench's devices belong
// to. Its members need no per-device setup: each derives its key from the
// group key and its registration ID, as group-provisioned firmware does.
type Group struct {
	ID string // "" when the group was given by key (--group-key)
	// Key is the group's primary key.
	Key string
	// Prefix starts every registration ID of the run.
	Prefix  string
	client  *serviceclient.Client
	created bool
}

// randomSuffix is a short random hex string, so that runs against one
// berth never reuse a registration ID.
func randomSuffix() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("bench: random: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// randomKey is a base64 64-byte key, the size DPS generates.
func randomKey() (string, error) {
	var b [64]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("bench: random: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b[:]), nil
}

// SetupGroup prepares the run's group. With groupKey, the group exists
// already and only its key is needed; otherwise a group bench-<random> is
// created through the service API of t with keys the bench generates.
func SetupGroup(ctx context.Context, t *Target, groupKey string) (*Group, error) {
	suffix, err := randomSuffix()
	if err != nil {
		return nil, err
	}
	g := &Group{Key: groupKey, Prefix: "bench-" + suffix + "-"}
	if groupKey != "" {
		if _, err := sas.DeriveKey(groupKey, "probe"); err != nil {
			return nil, fmt.Errorf("bench: --group-key: %w", err)
		}
		return g, nil
	}
	if t.ServiceConnectionString == "" {
		return nil, errors.New("bench: no service connection string to create an enrollment group (pass --group-key of an existing one)")
	}
	c, err := serviceclient.New(t.ServiceConnectionString, serviceclient.Options{CAFile: t.CAFile, Address: t.HTTPSAddress})
	if err != nil {
		return nil, fmt.Errorf("bench: service client: %w", err)
	}
	primary, err := randomKey()
	if err != nil {
		return nil, err
	}
	secondary, err := randomKey()
	if err != nil {
		return nil, err
	}
	g.ID, g.Key, g.client = "bench-"+suffix, primary, c
	eg := &dps.EnrollmentGroup{EnrollmentGroupID: g.ID, Common: dps.Common{
		Attestation: &dps.AttestationMechanism{Type: "symmetricKey",
			SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: primary, SecondaryKey: secondary}},
	}}
	if _, err := c.PutEnrollmentGroup(ctx, eg, ""); err != nil {
		return nil, fmt.Errorf("bench: create enrollment group %s: %w", g.ID, err)
	}
	g.created = true
	return g, nil
}

// Device returns the registration ID and derived key of device i.
func (g *Group) Device(i int) (id, key string, err error) {
	id = g.Prefix + strconv.Itoa(i)
	key, err = sas.DeriveKey(g.Key, id)
	if err != nil {
		return "", "", fmt.Errorf("bench: derive key: %w", err)
	}
	return id, key, nil
}

// Close deletes the group if the bench created it. The registrations and
// hub devices of its members stay, as they would on Azure.
func (g *Group) Close(ctx context.Context) error {
	if !g.created {
		return nil
	}
	g.created = false
	if err := g.client.DeleteEnrollmentGroup(ctx, g.ID, ""); err != nil {
		return fmt.Errorf("bench: delete enrollment group %s: %w", g.ID, err)
	}
	return nil
}
