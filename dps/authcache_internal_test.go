package dps

import (
	"crypto/hmac"
	"crypto/sha256"
	"strings"
	"testing"
)

// hmacSHA256 agrees with crypto/hmac on the stack path (short keys and
// messages) and on the fallback (a key over one block, a long message).
func TestHMACSHA256MatchesCryptoHMAC(t *testing.T) {
	for _, c := range []struct{ key, msg string }{
		{"", ""},
		{"k", "dev-1"},
		{strings.Repeat("k", 64), strings.Repeat("m", hmacMaxMsg)},
		{strings.Repeat("k", 65), "dev-1"},
		{"key", strings.Repeat("m", hmacMaxMsg+1)},
	} {
		h := hmac.New(sha256.New, []byte(c.key))
		h.Write([]byte(c.msg))
		want := h.Sum(nil)
		var got [sha256.Size]byte
		hmacSHA256([]byte(c.key), c.msg, &got)
		if !hmac.Equal(got[:], want) {
			t.Errorf("key %d bytes, msg %d bytes: %x, want %x", len(c.key), len(c.msg), got, want)
		}
	}
}
