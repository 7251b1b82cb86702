// Package sas parses, signs and verifies Azure shared access signature
// tokens ("SharedAccessSignature sr=…&sig=…&se=…[&skn=…]") and derives
// per-device keys for symmetric-key enrollment groups.
//
// The signature is always computed over the sr value exactly as it appears in
// the token: every Azure SDK encodes sr differently (raw, %2f, %2F) and signs
// what it sends, so re-encoding it would reject valid tokens.
package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/berth-iot/berth/refusal"
)

// Prefix is the scheme word every token starts with.
const Prefix = "SharedAccessSignature"

// MaxClockSkew is how long after its se a token is still accepted, as the
// Azure validators do.
const MaxClockSkew = 5 * time.Minute

// maxTokenLen bounds what we parse; real tokens are a few hundred bytes.
const maxTokenLen = 4096

// Errors returned by Parse and the checks. They carry no key material.
// Each comes wrapped in a *refusal.Error that names the reason for the
// operator's log; errors.Is still finds these.
var (
	ErrMalformed = errors.New("sas: malformed token")
	ErrExpired   = errors.New("sas: token expired")
	ErrLifetime  = errors.New("sas: token lifetime longer than this berth accepts")
	ErrSignature = errors.New("sas: signature mismatch")
	ErrAudience  = errors.New("sas: token not valid for this resource")
)

// malformed is Parse's refusal.
func malformed(what string) error {
	return refusal.New(refusal.Malformed, fmt.Errorf("%w: %s", ErrMalformed, what))
}

// AudienceError is the refusal of a token whose sr names another
// resource than want (what the check expected, for the log).
func AudienceError(t Token, want string) error {
	return refusal.New(refusal.WrongAudience, fmt.Errorf("%w: sr %q, want %q", ErrAudience, t.Resource, want))
}

// Token is a parsed shared access signature.
type Token struct {
	// RawResource is sr exactly as sent (still percent-encoded, if it was).
	RawResource string
	// Resource is sr percent-decoded.
	Resource string
	// Signature is the decoded base64 signature text.
	Signature string
	// RawExpiry is se as sent; it is part of the string to sign.
	RawExpiry string
	// Expiry is se as a time.
	Expiry time.Time
	// KeyName is skn (decoded), empty when absent.
	KeyName string
}

// Parse parses a token. Field names are matched case-insensitively and may
// come in any order; sr, sig and se are required.
func Parse(s string) (Token, error) {
	var t Token
	if len(s) > maxTokenLen {
		return t, malformed("too long")
	}
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok || len(rest) == 0 || (rest[0] != ' ' && rest[0] != '\t') {
		return t, malformed("missing " + strconv.Quote(Prefix) + " prefix")
	}
	rest = strings.TrimLeft(rest, " \t")
	if rest == "" || strings.ContainsAny(rest, " \t\r\n") {
		return t, malformed("fields")
	}
	var haveSr, haveSig, haveSe bool
	for _, f := range strings.Split(rest, "&") {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return t, malformed("field without '='")
		}
		switch strings.ToLower(k) {
		case "sr":
			if haveSr {
				return t, malformed("duplicate sr")
			}
			dec, err := url.PathUnescape(v)
			if err != nil || v == "" {
				return t, malformed("sr")
			}
			t.RawResource, t.Resource, haveSr = v, dec, true
		case "sig":
			if haveSig {
				return t, malformed("duplicate sig")
			}
			dec, err := url.PathUnescape(v)
			if err != nil || dec == "" {
				return t, malformed("sig")
			}
			t.Signature, haveSig = dec, true
		case "se":
			if haveSe {
				return t, malformed("duplicate se")
			}
			dec, err := url.PathUnescape(v)
			if err != nil {
				return t, malformed("se")
			}
			n, err := strconv.ParseInt(dec, 10, 64)
			if err != nil || n < 0 {
				return t, malformed("se")
			}
			// se is signed as sent, so keep the raw text.
			t.RawExpiry, t.Expiry, haveSe = v, time.Unix(n, 0), true
		case "skn":
			dec, err := url.PathUnescape(v)
			if err != nil {
				return t, malformed("skn")
			}
			t.KeyName = dec
		default:
			// Unknown fields are ignored, as the Azure validators do.
		}
	}
	if !haveSr || !haveSig || !haveSe {
		return t, malformed("sr, sig and se are required")
	}
	return t, nil
}

// Expired reports whether the token is past its expiry plus MaxClockSkew.
func (t Token) Expired(now time.Time) bool {
	return t.Expiry.Add(MaxClockSkew).Before(now)
}

// StringToSign is what the signature covers.
func (t Token) StringToSign() string { return t.RawResource + "\n" + t.RawExpiry }

// VerifyKey reports whether the token was signed with the base64 key. It
// runs in constant time with respect to the signature.
func (t Token) VerifyKey(key string) bool {
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(k) == 0 {
		return false
	}
	return t.VerifyRawKey(k)
}

// VerifyRawKey is VerifyKey for an already-decoded key.
func (t Token) VerifyRawKey(key []byte) bool {
	want := mac(key, t.StringToSign())
	got, err := base64.StdEncoding.DecodeString(t.Signature)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(want, got) == 1
}

// Match tries each base64 key in turn (empty ones are skipped) and returns
// the index of the one that signed the token. It checks the signature
// only: the time is Limits.CheckTime's.
func (t Token) Match(keys ...string) (int, error) {
	for i, k := range keys {
		if k != "" && t.VerifyKey(k) {
			return i, nil
		}
	}
	return -1, refusal.New(refusal.WrongKey, ErrSignature)
}

// Verify checks expiry and tries each base64 key in turn, with no
// operator limits: for clients checking what they signed. berth's own
// checks go through Limits.Verify.
func (t Token) Verify(now time.Time, keys ...string) (int, error) {
	return Limits{}.Verify(t, now, keys...)
}

// Limits are what berth requires of a token's time, the same for every
// device and service token: one check, set by the operator (berth serve
// --max-token-lifetime).
type Limits struct {
	// MaxLifetime is the longest se may lie ahead of now, with
	// MaxClockSkew allowed on top for a device whose clock runs ahead; 0
	// accepts any lifetime, as Azure does (the SDKs sign tokens of an
	// hour to a day, but a token of a hundred years is valid there).
	MaxLifetime time.Duration
}

// CheckTime refuses a token past its se plus MaxClockSkew or, under a
// MaxLifetime, one whose se lies too far ahead.
func (l Limits) CheckTime(t Token, now time.Time) error {
	if t.Expired(now) {
		return refusal.New(refusal.Expired, fmt.Errorf("%w: se %s", ErrExpired, t.Expiry.UTC().Format(time.RFC3339)))
	}
	if l.MaxLifetime > 0 && t.Expiry.Sub(now) > l.MaxLifetime+MaxClockSkew {
		return refusal.New(refusal.LifetimeTooLong, fmt.Errorf("%w: se %s is %s ahead, the limit is %s", ErrLifetime,
			t.Expiry.UTC().Format(time.RFC3339), t.Expiry.Sub(now).Round(time.Second), l.MaxLifetime))
	}
	return nil
}

// Verify is the token check that follows the audience check: the time,
// then the keys (see Match).
func (l Limits) Verify(t Token, now time.Time, keys ...string) (int, error) {
	if err := l.CheckTime(t, now); err != nil {
		return -1, err
	}
	return t.Match(keys...)
}

// VerifyText is Verify for tokens signed as the Event Hubs and Service Bus
// SDKs sign them: the HMAC key is the key text's UTF-8 bytes, not its base64
// decoding (docs/spec/amqp-protocol.md, Event Hubs-compatible endpoint).
func (l Limits) VerifyText(t Token, now time.Time, keys ...string) (int, error) {
	if err := l.CheckTime(t, now); err != nil {
		return -1, err
	}
	for i, k := range keys {
		if k != "" && t.VerifyRawKey([]byte(k)) {
			return i, nil
		}
	}
	return -1, refusal.New(refusal.WrongKey, ErrSignature)
}

// ResourceIs reports whether the decoded sr names want, ignoring case and one
// trailing slash.
func (t Token) ResourceIs(want string) bool {
	return strings.EqualFold(strings.TrimSuffix(t.Resource, "/"), want)
}

// Sign builds a token for resource (placed in the token unencoded, as the Node
// SDK does), valid until expiry. keyName may be empty.
func Sign(resource, key, keyName string, expiry time.Time) (string, error) {
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(k) == 0 {
		return "", errors.New("sas: key is not valid base64")
	}
	return SignRaw(resource, k, keyName, expiry), nil
}

// SignEncoded is Sign with sr percent-encoded (upper-case %2F), as the Python
// and C# SDKs and the Azure docs' Python snippet produce.
func SignEncoded(resource, key, keyName string, expiry time.Time) (string, error) {
	return Sign(url.QueryEscape(resource), key, keyName, expiry)
}

// SignRaw signs with a decoded key; resource is placed in the token as given.
func SignRaw(resource string, key []byte, keyName string, expiry time.Time) string {
	se := strconv.FormatInt(expiry.Unix(), 10)
	sig := base64.StdEncoding.EncodeToString(mac(key, resource+"\n"+se))
	var b strings.Builder
	b.Grow(len(Prefix) + len(resource) + len(sig) + 64)
	b.WriteString(Prefix)
	b.WriteString(" sr=")
	b.WriteString(resource)
	b.WriteString("&sig=")
	b.WriteString(url.QueryEscape(sig))
	b.WriteString("&se=")
	b.WriteString(se)
	if keyName != "" {
		b.WriteString("&skn=")
		b.WriteString(url.QueryEscape(keyName))
	}
	return b.String()
}

// DeriveKey returns base64(HMAC-SHA256(base64decode(groupKey), id)): the
// device key of a symmetric-key enrollment group member.
func DeriveKey(groupKey, id string) (string, error) {
	k, err := base64.StdEncoding.DecodeString(groupKey)
	if err != nil || len(k) == 0 {
		return "", errors.New("sas: group key is not valid base64")
	}
	return base64.StdEncoding.EncodeToString(mac(k, id)), nil
}

func mac(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}
