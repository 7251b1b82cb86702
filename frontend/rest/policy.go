package rest

import (
	"net/http"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/policy"
)

// Shared access policy management, a berth extension of the DPS service
// API. Azure manages policies through Azure Resource Manager, which berth
// does not serve; these routes give `berth policy …` (and any HTTP client)
// the same operations at run time:
//
//	GET    /policies                           list
//	GET    /policies/{name}                    read
//	PUT    /policies/{name}                    create (201) or update (200)
//	DELETE /policies/{name}                    delete (204)
//	POST   /policies/{name}/renewKey?keyType=  primary, secondary or swap
//
// and the same under /hubs/{hubName}/ for the policies of the hub.
//
// Every route needs a DPS service token whose policy has ServiceConfig,
// hub routes included: berth's choice, because the operator who owns the
// DPS owns the whole instance, and a hub policy able to manage policies
// would be a right IoT Hub does not have. The token is checked before the
// hub name and before any body is read, so that a caller without the
// right learns nothing about which hubs exist.
//
// Errors use the DPS error format whatever the set: these are DPS routes,
// and the policy package reports its errors with DPS codes.
//
// The first segments "policies" and "hubs" are literals no other route
// uses but hub management (hubs.go), whose paths are shorter. The DPS device routes (/{idScope}/registrations/…) could fit some
// of these paths (an ID scope spelled "policies" or "hubs" with a policy
// or hub named "registrations"), but they come after the service routes
// in the table, so the literal route wins.

// policyBody is the body of PUT …/policies/{name}. keyName is optional; when
// given it must name the policy of the path, so that a policy read, edited
// and written back works while a body meant for another policy is refused.
type policyBody struct {
	KeyName      string   `json:"keyName"`
	Rights       []string `json:"rights"`
	PrimaryKey   string   `json:"primaryKey"`
	SecondaryKey string   `json:"secondaryKey"`
}

// policySet resolves the policy set a route works on from the route's
// arguments, and returns the arguments that follow it (the policy name).
type policySet func(args []string) (*policy.Set, []string, error)

// policyRoutes is the policy management API of the DPS and of the hub.
func (h *handler) policyRoutes() routes {
	const config = dps.RightServiceConfig
	var rs routes
	for _, scope := range []struct {
		prefix string
		set    policySet
	}{
		{"", h.dpsPolicies},
		{"hubs/{hubName}/", h.hubPolicies},
	} {
		p, set := scope.prefix, scope.set
		rs = append(rs,
			newRoute(http.MethodGet, p+"policies", h.authorized(config, listPolicies(set))),
			newRoute(http.MethodGet, p+"policies/{name}", h.authorized(config, getPolicy(set))),
			newRoute(http.MethodPut, p+"policies/{name}", h.authorized(config, putPolicy(set))),
			newRoute(http.MethodDelete, p+"policies/{name}", h.authorized(config, deletePolicy(set))),
			newRoute(http.MethodPost, p+"policies/{name}/renewKey", h.authorized(config, renewPolicyKey(set))),
		)
	}
	return rs
}

// dpsPolicies is the DPS's own policy set.
func (h *handler) dpsPolicies(args []string) (*policy.Set, []string, error) {
	return h.settings.PolicySet(), args, nil
}

// hubPolicies is the policy set of the hub named by args[0] (see
// namedHub). The set is the one the hub routes authenticate with, so a
// change takes effect on the hub at once.
func (h *handler) hubPolicies(args []string) (*policy.Set, []string, error) {
	name := args[0]
	if h.hub == nil {
		return nil, nil, azerr.Newf(azerr.DPSNotFound, "Hub %s not found: this berth serves no IoT hub.", name)
	}
	s, err := h.namedHub(name)
	if err != nil {
		return nil, nil, err
	}
	if s.Settings == nil {
		return nil, nil, azerr.Newf(azerr.DPSNotFound, "Hub %s has no shared access policies.", s.Info.Name)
	}
	return s.Settings.PolicySet(), args[1:], nil
}

// withPolicySet resolves the set, answering the error itself, and runs
// next with it.
func withPolicySet(set policySet, next func(x *exchange, s *policy.Set, args []string)) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		s, rest, err := set(args)
		if err != nil {
			x.fail(err)
			return
		}
		next(x, s, rest)
	}
}

// listPolicies serves GET …/policies: every policy, keys included (the
// caller has ServiceConfig, which can create and renew them anyway).
func listPolicies(set policySet) func(*exchange, []string) {
	return withPolicySet(set, func(x *exchange, s *policy.Set, _ []string) {
		list := s.List()
		if list == nil {
			list = []policy.Policy{} // "[]", not "null"
		}
		x.writeJSON(http.StatusOK, list)
	})
}

// getPolicy serves GET …/policies/{name}.
func getPolicy(set policySet) func(*exchange, []string) {
	return withPolicySet(set, func(x *exchange, s *policy.Set, args []string) {
		p, ok := s.Get(args[0])
		if !ok {
			x.fail(azerr.Newf(azerr.DPSNotFound, "Policy %s not found.", args[0]))
			return
		}
		x.writeJSON(http.StatusOK, p)
	})
}

// putPolicy serves PUT …/policies/{name}: 201 with the new policy, 200
// with the updated one. Keys left out are generated for a new policy and
// kept for an existing one.
func putPolicy(set policySet) func(*exchange, []string) {
	return withPolicySet(set, func(x *exchange, s *policy.Set, args []string) {
		var b policyBody
		if !x.decodeBody(&b) {
			return
		}
		name := args[0]
		if b.KeyName != "" && !strings.EqualFold(b.KeyName, name) {
			x.fail(azerr.Newf(azerr.DPSBadRequest, "The body names policy %q but the path names %q.", b.KeyName, name))
			return
		}
		p, created, err := s.Put(x.r.Context(), policy.Policy{
			KeyName: name, Rights: b.Rights, PrimaryKey: b.PrimaryKey, SecondaryKey: b.SecondaryKey,
		})
		if err != nil {
			x.fail(err)
			return
		}
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		x.writeJSON(status, p)
	})
}

// deletePolicy serves DELETE …/policies/{name}: 204.
func deletePolicy(set policySet) func(*exchange, []string) {
	return withPolicySet(set, func(x *exchange, s *policy.Set, args []string) {
		if err := s.Delete(x.r.Context(), args[0]); err != nil {
			x.fail(err)
			return
		}
		x.noContent()
	})
}

// renewPolicyKey serves POST …/policies/{name}/renewKey?keyType=…: 200 with
// the policy and its new keys. A body is ignored.
func renewPolicyKey(set policySet) func(*exchange, []string) {
	return withPolicySet(set, func(x *exchange, s *policy.Set, args []string) {
		keyType := x.r.URL.Query().Get("keyType")
		if keyType == "" {
			x.fail(azerr.Newf(azerr.DPSBadRequest, "The keyType query parameter is required: %s, %s or %s.",
				policy.RenewPrimary, policy.RenewSecondary, policy.RenewSwap))
			return
		}
		p, err := s.RenewKey(x.r.Context(), args[0], keyType)
		if err != nil {
			x.fail(err)
			return
		}
		x.writeJSON(http.StatusOK, p)
	})
}
