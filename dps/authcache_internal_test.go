package dps

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
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

// The IDs kept to tell which memories a change made stale are bounded:
// past maxForgotten of them, they are dropped and every memory made
// before is stale, as after a change of everything.
func TestForgottenIDsAreBounded(t *testing.T) {
	s := &Service{}
	gen := s.authGen.Load()
	for i := range maxForgotten {
		s.forgetEnrollment(fmt.Sprintf("dev-%d", i))
	}
	if s.stale(gen, "unrelated", "") {
		t.Fatal("stale before the bound was reached")
	}
	s.forgetGroup("one-more")
	if n := len(s.forget.enrollments) + len(s.forget.groups); n != 0 {
		t.Errorf("%d IDs kept past the bound", n)
	}
	if !s.stale(gen, "unrelated", "") {
		t.Error("a memory from before is not stale once the IDs were dropped")
	}
	if s.stale(s.authGen.Load(), "dev-1", "") {
		t.Error("a memory made after is stale")
	}
}
