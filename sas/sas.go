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
)

// Prefix is the scheme word every token starts with.
const Prefix = "SharedAccessSignature"

// MaxClockSkew is how long after its se a token is still accepted, as the
// Azure validators do.
const MaxClockSkew = 5 * time.Minute

// maxTokenLen bounds what we parse; real tokens are a few hundred bytes.
const maxTokenLen = 4096

// Errors returned by Parse and Verify. They carry no key material.
var (
	ErrMalformed = errors.New("sas: malformed token")
	ErrExpired   = errors.New("sas: token expired")
	ErrSignature = errors.New("sas: signature mismatch")
	ErrAudience  = errors.New("sas: token not valid for this resource")
)

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
		return t, fmt.Errorf("%w: too long", ErrMalformed)
	}
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok || len(rest) == 0 || (rest[0] != ' ' && rest[0] != '\t') {
		return t, fmt.Errorf("%w: missing %q prefix", ErrMalformed, Prefix)
	}
	rest = strings.TrimLeft(rest, " \t")
	if rest == "" || strings.ContainsAny(rest, " \t\r\n") {
		return t, fmt.Errorf("%w: fields", ErrMalformed)
	}
	var haveSr, haveSig, haveSe bool
	for _, f := range strings.Split(rest, "&") {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return t, fmt.Errorf("%w: field without '='", ErrMalformed)
		}
		switch strings.ToLower(k) {
		case "sr":
			if haveSr {
				return t, fmt.Errorf("%w: duplicate sr", ErrMalformed)
			}
			dec, err := url.PathUnescape(v)
			if err != nil || v == "" {
				return t, fmt.Errorf("%w: sr", ErrMalformed)
			}
			t.RawResource, t.Resource, haveSr = v, dec, true
		case "sig":
			if haveSig {
				return t, fmt.Errorf("%w: duplicate sig", ErrMalformed)
			}
			dec, err := url.PathUnescape(v)
			if err != nil || dec == "" {
				return t, fmt.Errorf("%w: sig", ErrMalformed)
			}
			t.Signature, haveSig = dec, true
		case "se":
			if haveSe {
				return t, fmt.Errorf("%w: duplicate se", ErrMalformed)
			}
			dec, err := url.PathUnescape(v)
			if err != nil {
				return t, fmt.Errorf("%w: se", ErrMalformed)
			}
			n, err := strconv.ParseInt(dec, 10, 64)
			if err != nil || n < 0 {
				return t, fmt.Errorf("%w: se", ErrMalformed)
			}
			// se is signed as sent, so keep the raw text.
			t.RawExpiry, t.Expiry, haveSe = v, time.Unix(n, 0), true
		case "skn":
			dec, err := url.PathUnescape(v)
			if err != nil {
				return t, fmt.Errorf("%w: skn", ErrMalformed)
			}
			t.KeyName = dec
		default:
			// Unknown fields are ignored, as the Azure validators do.
		}
	}
	if !haveSr || !haveSig || !haveSe {
		return t, fmt.Errorf("%w: sr, sig and se are required", ErrMalformed)
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

// Verify checks expiry and tries each base64 key in turn. It returns the index
// of the key that matched.
func (t Token) Verify(now time.Time, keys ...string) (int, error) {
	if t.Expired(now) {
		return -1, ErrExpired
	}
	for i, k := range keys {
		if k != "" && t.VerifyKey(k) {
			return i, nil
		}
	}
	return -1, ErrSignature
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
