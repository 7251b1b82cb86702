package dps

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// MaxRegistrationIDLen is Azure's limit on registration IDs.
const MaxRegistrationIDLen = 128

// ValidRegistrationID applies Azure's rule: up to 128 characters,
// alphanumerics and - . _ :, first character alphanumeric, last character
// alphanumeric or '-'. Registration IDs never contain '/', which the MQTT
// username parser relies on.
func ValidRegistrationID(id string) bool {
	if len(id) == 0 || len(id) > MaxRegistrationIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case isAlnum(c):
		case c == '-':
			if i == 0 {
				return false
			}
		case c == '.' || c == '_' || c == ':':
			if i == 0 || i == len(id)-1 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// ValidGroupID applies the same character rules to enrollment group IDs.
func ValidGroupID(id string) bool { return ValidRegistrationID(id) }

// ValidDeviceID applies IoT Hub's device ID rule: up to 128 ASCII
// alphanumerics and - . % _ * ? ! ( ) , : = @ $ '.
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if isAlnum(c) || strings.IndexByte("-.%_*?!(),:=@$'", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Key is the store key of a registration or enrollment ID: IDs are
// case-insensitive, the original case is kept in the document.
func Key(id string) string { return strings.ToLower(id) }

// NewIDScope returns an ID scope in the form every Azure scope has been seen
// in: "0ne" and eight upper-case hex digits.
func NewIDScope() string {
	var b [4]byte
	mustRand(b[:])
	return "0ne" + strings.ToUpper(hex.EncodeToString(b[:]))
}

// NewKey returns a symmetric key as DPS generates one: 64 random bytes,
// base64.
func NewKey() string {
	var b [64]byte
	mustRand(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// newOperationID returns an ID shaped like Azure's
// ("4.d0a671905ea5b2c8.42d78160-4c78-479e-8be7-61d5e55dac0d"): topic- and
// URL-safe.
func newOperationID() string {
	var a [8]byte
	var u [16]byte
	mustRand(a[:])
	mustRand(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	// "5." + 16 hex digits + "." + a UUID, built in one buffer: one
	// allocation per registration, where fmt.Sprintf made seven.
	var b [2 + 16 + 1 + 36]byte
	n := copy(b[:], "5.")
	n += hex.Encode(b[n:], a[:])
	b[n] = '.'
	n++
	for i, part := range [][]byte{u[0:4], u[4:6], u[6:8], u[8:10], u[10:]} {
		if i > 0 {
			b[n] = '-'
			n++
		}
		n += hex.Encode(b[n:], part)
	}
	return string(b[:n])
}

// NewTrackingID returns a UUID for error bodies.
func NewTrackingID() string {
	var u [16]byte
	mustRand(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}

// wireETag turns a store ETag into the quoted form Azure puts in enrollment
// documents ("\"…\"").
func wireETag(storeETag string) string { return `"` + storeETag + `"` }

// registrationETag is Azure's registration-state etag: base64 of the quoted
// etag.
func registrationETag(storeETag string) string {
	return base64.StdEncoding.EncodeToString([]byte(wireETag(storeETag)))
}

// StoreETag turns whatever a client sends in If-Match (quoted, unquoted,
// base64-of-quoted for registrations, or *) into the store's form.
func StoreETag(ifMatch string) string {
	s := strings.TrimSpace(ifMatch)
	if s == "" {
		return ""
	}
	if s == "*" || s == `"*"` {
		return "*"
	}
	s = strings.Trim(s, `"`)
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) > 2 && b[0] == '"' && b[len(b)-1] == '"' {
		return string(b[1 : len(b)-1])
	}
	return s
}

func mustRand(b []byte) {
	// crypto/rand.Read never fails on supported platforms (Go 1.24+ it
	// crashes the program instead), so there is no error to handle.
	_, _ = rand.Read(b)
}
