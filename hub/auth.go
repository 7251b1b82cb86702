package hub

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/policy"
	"github.com/berth-iot/berth/refusal"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/throttle"
)

// Rights of a hub shared access policy.
const (
	RightRegistryRead   = "RegistryRead"
	RightRegistryWrite  = "RegistryWrite"
	RightServiceConnect = "ServiceConnect"
	RightDeviceConnect  = "DeviceConnect"
)

// OwnerPolicy is the hub's default all-rights policy.
const OwnerPolicy = "iothubowner"

// Policy is a hub shared access policy.
type Policy = policy.Policy

// Rights are the rights a hub policy may have.
var Rights = []string{RightRegistryRead, RightRegistryWrite, RightServiceConnect, RightDeviceConnect}

// MaxPolicies is IoT Hub's limit of shared access policies per hub.
const MaxPolicies = 16

// Settings are a hub's persistent policies.
type Settings struct {
	Name     string
	policies *policy.Set
}

type settingsDoc struct {
	Name     string   `json:"name"`
	Policies []Policy `json:"policies"`
}

// Policy returns a copy of the named policy.
func (s *Settings) Policy(name string) (*Policy, bool) { return s.policies.Get(name) }

// Policies iterates over a snapshot of the policies.
func (s *Settings) Policies(yield func(int, Policy) bool) {
	for i, p := range s.policies.List() {
		if !yield(i, p) {
			return
		}
	}
}

// PolicySet is the policies, for management (berth policy …).
func (s *Settings) PolicySet() *policy.Set { return s.policies }

// LoadOrCreateSettings reads a hub's policies, creating IoT Hub's default
// set on first use.
func LoadOrCreateSettings(ctx context.Context, st store.Store, hubName string) (*Settings, error) {
	key := "hub/" + strings.ToLower(hubName)
	_, err := st.Get(ctx, store.KindConfig, key)
	switch {
	case err == nil:
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("hub: read settings: %w", err)
	default:
		mk := func(name string, rights ...string) Policy {
			return Policy{KeyName: name, PrimaryKey: newKey(), SecondaryKey: newKey(), Rights: rights}
		}
		doc := settingsDoc{Name: hubName, Policies: []Policy{
			mk(OwnerPolicy, RightRegistryRead, RightRegistryWrite, RightServiceConnect, RightDeviceConnect),
			mk("service", RightServiceConnect),
			mk("device", RightDeviceConnect),
			mk("registryRead", RightRegistryRead),
			mk("registryReadWrite", RightRegistryRead, RightRegistryWrite),
		}}
		data, err := json.Marshal(doc)
		if err != nil {
			return nil, fmt.Errorf("hub: encode settings: %w", err)
		}
		_, err = st.Put(ctx, store.Record{Kind: store.KindConfig, Key: key, Data: data}, store.Cond{IfNotExists: true})
		if err != nil && !errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("hub: write settings: %w", err)
		}
	}
	set, err := policy.Load(ctx, st, policy.Config{Kind: store.KindConfig, Key: key, Rights: Rights, Limit: MaxPolicies})
	if err != nil {
		return nil, fmt.Errorf("hub: load policies: %w", err)
	}
	return &Settings{Name: hubName, policies: set}, nil
}

// Identity is an authenticated device connection.
type Identity struct {
	Device *Device
	// Expires is when the credential stops being valid (token se plus
	// skew); the connection is closed then. Zero for no expiry.
	Expires time.Time
	// AuthMethod is the iothub-connection-auth-method property value.
	AuthMethod string
	// policy is PolicyCredential of the hub policy key a policy token
	// was signed with; "" for the device's own credential.
	policy string
}

// Credential is what a front end attaches the session with
// (Links.Attach): the device's own credential (Credential), or for a
// session opened with a hub policy token (DeviceConnect) the policy key
// it was signed with, so that renewing or deleting that key closes the
// session (Links.RevokePolicies) and a change of the device's own keys
// does not.
func (id *Identity) Credential() string {
	if id.policy != "" {
		return id.policy
	}
	return Credential(id.Device)
}

// policyCredentialPrefix marks a link credential that is a policy key.
const policyCredentialPrefix = "policy:"

// PolicyCredential names one key of a hub policy as a link credential:
// hashed, never the key.
func PolicyCredential(keyName, key string) string {
	h := sha256.New()
	h.Write([]byte(strings.ToLower(keyName)))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return policyCredentialPrefix + hex.EncodeToString(h.Sum(nil)[:16])
}

// PolicyCredentials are the link credentials the policies with
// DeviceConnect admit now.
func (s *Settings) PolicyCredentials() map[string]bool {
	out := map[string]bool{}
	for _, p := range s.policies.List() {
		if !p.Has(RightDeviceConnect) {
			continue
		}
		for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
			if k != "" {
				out[PolicyCredential(p.KeyName, k)] = true
			}
		}
	}
	return out
}

// SetTokenLimits sets the operator's bounds on device and service tokens
// (berth serve --max-token-lifetime); until it is called there are none.
func (r *Registry) SetTokenLimits(l sas.Limits) {
	r.mu.Lock()
	r.limits = l
	r.mu.Unlock()
}

func (r *Registry) tokenLimits() sas.Limits {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.limits
}

// denied is every refused device or service credential: 401
// IotHubUnauthorizedAccess, as IoT Hub answers whatever the cause. The
// cause, a *refusal.Error, is for the operator's log and carries no key
// material.
func denied(cause error) error { return azerr.Wrap(azerr.HubUnauthorizedAccess, cause) }

// AuthenticateDevice checks a device's SAS token for hubName/deviceID: a
// device-scoped token signed with the device's key, or a policy token (skn)
// whose policy has DeviceConnect. The sr must be a segment prefix of
// {hub}/devices/{deviceId}. Every failure is IotHubUnauthorizedAccess
// wrapping the *refusal.Error that says why.
func (r *Registry) AuthenticateDevice(ctx context.Context, settings *Settings, hubName, deviceID, token string) (*Identity, error) {
	return r.authenticate(ctx, settings, hubName, deviceID, "", token)
}

// AuthenticateModule is AuthenticateDevice for a module of the device:
// the token's sr must be a segment prefix of
// {hub}/devices/{deviceId}/modules/{moduleId}, and without skn it is
// signed with the module's keys. The module's device must be enabled.
// The Identity's Device is the module's device view (Device.ModuleID).
func (r *Registry) AuthenticateModule(ctx context.Context, settings *Settings, hubName, deviceID, moduleID, token string) (*Identity, error) {
	if moduleID == "" {
		return nil, denied(refusal.Newf(refusal.UnknownDevice, "no module ID"))
	}
	return r.authenticate(ctx, settings, hubName, deviceID, moduleID, token)
}

func (r *Registry) authenticate(ctx context.Context, settings *Settings, hubName, deviceID, moduleID, token string) (*Identity, error) {
	if token == "" {
		return nil, denied(refusal.New(refusal.NoCredential, errors.New("no token")))
	}
	tok, err := sas.Parse(token)
	if err != nil {
		return nil, denied(err)
	}
	resource := hubName + "/devices/" + deviceID
	if moduleID != "" {
		resource += "/modules/" + moduleID
	}
	if !audienceCovers(tok.Resource, resource) {
		return nil, denied(sas.AudienceError(tok, resource))
	}
	now, limits := r.now(), r.tokenLimits()
	if err := limits.CheckTime(tok, now); err != nil {
		return nil, denied(err)
	}
	d, err := r.enabledIdentity(ctx, hubName, deviceID, moduleID)
	if err != nil {
		return nil, err
	}
	id := &Identity{Device: d, Expires: tok.Expiry.Add(sas.MaxClockSkew)}
	if tok.KeyName == "" {
		keys := d.Keys()
		if !slices.ContainsFunc(keys, func(k string) bool { return k != "" }) {
			return nil, denied(refusal.Newf(refusal.WrongCredentialType, "identity %q has no keys (authentication %s)", TwinID(deviceID, moduleID), authType(d)))
		}
		if _, err := tok.Match(keys...); err != nil {
			return nil, denied(err)
		}
		scope := "device"
		if moduleID != "" {
			scope = "module"
		}
		id.AuthMethod = `{"scope":"` + scope + `","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`
		return id, nil
	}
	if settings == nil {
		return nil, denied(refusal.New(refusal.UnknownPolicy, errors.New("no hub policies")))
	}
	p, ok := settings.Policy(tok.KeyName)
	if !ok {
		return nil, denied(refusal.Newf(refusal.UnknownPolicy, "no policy %q", tok.KeyName))
	}
	if !p.Has(RightDeviceConnect) {
		return nil, denied(refusal.Newf(refusal.MissingRight, "policy %s lacks %s", p.KeyName, RightDeviceConnect))
	}
	i, err := tok.Match(p.PrimaryKey, p.SecondaryKey)
	if err != nil {
		return nil, denied(fmt.Errorf("policy %s: %w", p.KeyName, err))
	}
	id.policy = PolicyCredential(p.KeyName, []string{p.PrimaryKey, p.SecondaryKey}[i])
	id.AuthMethod = `{"scope":"hub","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`
	return id, nil
}

// AuthorizeService checks a hub service SAS token (policy.Set.Authorize)
// for the hub hubName, whose policies are settings: sr names the hub,
// optionally followed by a segment prefix of path (the request's decoded
// path segments), and skn a policy of this hub with one of rights. Every
// failure is 401 IotHubUnauthorizedAccess, as for device tokens.
func (r *Registry) AuthorizeService(settings *Settings, hubName, token string, path []string, rights ...string) (*Policy, error) {
	if settings == nil {
		return nil, denied(refusal.New(refusal.UnknownPolicy, errors.New("no hub policies")))
	}
	p, err := settings.policies.Authorize(token, policy.Request{
		Hosts:  []string{hubName},
		Path:   path,
		Rights: rights,
		Now:    r.now(),
		Limits: r.tokenLimits(),
	})
	if err != nil {
		return nil, denied(err)
	}
	return p, nil
}

// AuthorizeEventHubs checks a token for the hub's Event Hubs-compatible
// endpoint: a policy token signed as the Event Hubs SDKs sign (the key
// text's bytes are the HMAC key, sr with a scheme), whose audience covers
// path (the entity path and below). The policy must grant ServiceConnect,
// as IoT Hub requires to read the built-in endpoint.
func (r *Registry) AuthorizeEventHubs(settings *Settings, hubName, token string, path []string) (*Policy, error) {
	if settings == nil {
		return nil, denied(refusal.New(refusal.UnknownPolicy, errors.New("no hub policies")))
	}
	p, err := settings.policies.Authorize(token, policy.Request{
		Hosts:   []string{hubName},
		Path:    path,
		Rights:  []string{RightServiceConnect},
		Now:     r.now(),
		Limits:  r.tokenLimits(),
		TextKey: true,
	})
	if err != nil {
		return nil, denied(err)
	}
	return p, nil
}

func authType(d *Device) string {
	if d.Authentication == nil {
		return "none"
	}
	return d.Authentication.Type
}

// enabledDevice returns the device a connection claims to be, or a
// refusal when it is unknown or disabled (indistinguishable from a bad
// credential to the device, as on IoT Hub); a registry failure is returned
// as is.
func (r *Registry) enabledDevice(ctx context.Context, hubName, deviceID string) (*Device, error) {
	return r.enabledIdentity(ctx, hubName, deviceID, "")
}

// enabledIdentity is enabledDevice for a device or, with moduleID, the
// device view of its module.
func (r *Registry) enabledIdentity(ctx context.Context, hubName, deviceID, moduleID string) (*Device, error) {
	// Every device and module authentication, SAS or X.509, passes here;
	// a device's connect fault applies to its modules too.
	if err := r.fault(ctx, FaultConnect, hubName, deviceID); err != nil {
		return nil, err
	}
	if err := r.throttled(hubName, throttle.HubConnect, 1); err != nil {
		return nil, err
	}
	d, err := r.identity(ctx, hubName, TwinID(deviceID, moduleID))
	if err != nil {
		var ae *azerr.Error
		if errors.As(err, &ae) && (ae.Code == azerr.HubDeviceNotFound || ae.Code == azerr.HubModuleNotFound) {
			return nil, denied(refusal.Newf(refusal.UnknownDevice, "no device or module %q on %s", TwinID(deviceID, moduleID), hubName))
		}
		return nil, err
	}
	if d.Status != StatusEnabled {
		return nil, denied(refusal.Newf(refusal.Disabled, "device %q is %s", deviceID, d.Status))
	}
	return d, nil
}

// audienceCovers reports whether the decoded sr is a segment prefix of
// resource, {hub}/devices/{deviceId}[/modules/{moduleId}], comparing case-insensitively (IoT Hub
// documents the URI as lower-cased; device IDs are compared
// case-insensitively by Microsoft's own gateway).
func audienceCovers(sr, resource string) bool {
	want := strings.Split(resource, "/")
	got := strings.Split(strings.TrimSuffix(sr, "/"), "/")
	if len(got) > len(want) || len(got) == 0 {
		return false
	}
	// A token signed for host:port (a connection string whose HostName
	// carries a port) names the same hub.
	if h, _, ok := strings.Cut(got[0], ":"); ok {
		got[0] = h
	}
	for i := range got {
		if !strings.EqualFold(got[i], want[i]) {
			return false
		}
	}
	return true
}

// CATrust supplies the CA certificates that anchor the chains of
// certificateAuthority devices (berth's DPS: its verified CA certificates
// and its X.509 enrollment groups' signing certificates).
type CATrust interface {
	TrustedCAs(ctx context.Context) ([]*x509.Certificate, error)
}

// SetCATrust sets where certificateAuthority devices' CAs come from; until
// it is set, such devices are refused.
func (r *Registry) SetCATrust(t CATrust) {
	r.mu.Lock()
	r.cas = t
	r.mu.Unlock()
}

// AuthenticateDeviceCert authenticates a device by its TLS client certificate
// chain, leaf first
// (docs/spec/iothub-protocol.md#x509-device-authentication): a selfSigned
// device's leaf must have one of its thumbprints (SHA-1 or SHA-256, any
// case); a certificateAuthority device's leaf must name the device as its
// subject CN and chain to a trusted CA. The leaf must be valid now; the
// connection ends when it expires. Every failure is IotHubUnauthorizedAccess;
// the cause is for logs only.
func (r *Registry) AuthenticateDeviceCert(ctx context.Context, hubName, deviceID string, chain []*x509.Certificate) (*Identity, error) {
	return r.authenticateCert(ctx, hubName, deviceID, "", chain)
}

// AuthenticateModuleCert is AuthenticateDeviceCert for a module: a
// selfSigned module's leaf must have one of its thumbprints. A
// certificateAuthority module is refused: which subject names a module is
// not established (docs/hub-wire.md, Modules).
func (r *Registry) AuthenticateModuleCert(ctx context.Context, hubName, deviceID, moduleID string, chain []*x509.Certificate) (*Identity, error) {
	if moduleID == "" {
		return nil, denied(refusal.Newf(refusal.UnknownDevice, "no module ID"))
	}
	return r.authenticateCert(ctx, hubName, deviceID, moduleID, chain)
}

func (r *Registry) authenticateCert(ctx context.Context, hubName, deviceID, moduleID string, chain []*x509.Certificate) (*Identity, error) {
	if len(chain) == 0 {
		return nil, denied(refusal.New(refusal.NoCredential, errors.New("no client certificate")))
	}
	leaf := chain[0]
	now := r.now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, denied(refusal.Newf(refusal.Expired, "client certificate valid from %s to %s",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	d, err := r.enabledIdentity(ctx, hubName, deviceID, moduleID)
	if err != nil {
		return nil, err
	}
	id := &Identity{Device: d, Expires: leaf.NotAfter}
	scope := "device"
	if moduleID != "" {
		scope = "module"
	}
	a := d.Authentication
	switch {
	case a == nil:
		return nil, denied(refusal.Newf(refusal.WrongCredentialType, "device %q has no authentication", deviceID))
	case a.Type == AuthSelfSigned && a.X509Thumbprint != nil:
		s1 := sha1.Sum(leaf.Raw)
		s2 := sha256.Sum256(leaf.Raw)
		got := []string{hex.EncodeToString(s1[:]), hex.EncodeToString(s2[:])}
		for _, want := range []*string{a.X509Thumbprint.PrimaryThumbprint, a.X509Thumbprint.SecondaryThumbprint} {
			if want == nil || *want == "" {
				continue
			}
			for _, g := range got {
				if subtle.ConstantTimeCompare([]byte(strings.ToLower(*want)), []byte(g)) == 1 {
					id.AuthMethod = `{"scope":"` + scope + `","type":"x509","issuer":"iothub","acceptingIpFilterRule":null}`
					return id, nil
				}
			}
		}
		return nil, denied(refusal.New(refusal.WrongCertificate, errors.New("certificate thumbprint is not the device's")))
	case a.Type == AuthCertificateAuthority && moduleID != "":
		return nil, denied(refusal.Newf(refusal.WrongCredentialType, "certificateAuthority modules are not supported"))
	case a.Type == AuthCertificateAuthority:
		// Ordinal, as IoT Edge compares them.
		if leaf.Subject.CommonName != deviceID {
			return nil, denied(refusal.Newf(refusal.WrongCertificate, "certificate CN %q is not the device ID", leaf.Subject.CommonName))
		}
		r.mu.Lock()
		cas := r.cas
		r.mu.Unlock()
		if cas == nil {
			return nil, denied(refusal.New(refusal.NotEnrolled, errors.New("no CA is trusted")))
		}
		anchors, err := cas.TrustedCAs(ctx)
		if err != nil {
			return nil, fmt.Errorf("hub: trusted CAs: %w", err)
		}
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		for _, c := range anchors {
			roots.AddCert(c)
		}
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, denied(refusal.Newf(refusal.NotEnrolled, "certificate chain: %w", err))
		}
		id.AuthMethod = `{"scope":"device","type":"x509","issuer":"iothub","acceptingIpFilterRule":null}`
		return id, nil
	}
	return nil, denied(refusal.Newf(refusal.WrongCredentialType, "device authenticates with %s, not a certificate", a.Type))
}
