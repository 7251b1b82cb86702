package refusal_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/refusal"
)

// A refusal is found through the Azure error and any wrapping around it,
// and logs as its reason and detail.
func TestOfAndLogAttrs(t *testing.T) {
	sentinel := errors.New("sas: signature mismatch")
	r := refusal.New(refusal.WrongKey, sentinel)
	err := fmt.Errorf("rendered: %w", azerr.Wrap(azerr.DPSInvalidCredentials, fmt.Errorf("policy owner: %w", r)))
	got := refusal.Of(err)
	if got != r || !errors.Is(err, sentinel) {
		t.Fatalf("Of = %v, errors.Is(sentinel) = %v", got, errors.Is(err, sentinel))
	}
	if want := []any{"reason", refusal.WrongKey, "detail", "sas: signature mismatch"}; !slices.Equal(got.LogAttrs(), want) {
		t.Errorf("LogAttrs = %v, want %v", got.LogAttrs(), want)
	}
	if want := []any{"reason", refusal.Disabled}; !slices.Equal(refusal.New(refusal.Disabled, nil).LogAttrs(), want) {
		t.Errorf("without detail: %v", refusal.New(refusal.Disabled, nil).LogAttrs())
	}
	if refusal.Of(azerr.New(azerr.DPSInternal)) != nil || refusal.Of(nil) != nil {
		t.Error("a refusal found where there is none")
	}
}
