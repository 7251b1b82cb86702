package sas

import (
	"testing"
	"time"
)

// The Event Hubs SDKs sign with the key text's UTF-8 bytes
// (docs/spec/amqp-protocol.md, test vectors V-7 and V-8).
func TestVerifyTextVectors(t *testing.T) {
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	now := time.Unix(1699999000, 0)
	for _, tc := range []struct{ sr, sig string }{
		{"sb%3A%2F%2Fehns.example.net%2Fmyhub", "X5DbZk1l%2BMQJxoJckuHmFCcwxk%2Bg%2BytYvHFmKe%2Bn3qA%3D"},
		{"amqps%3a%2f%2fehns.example.net%2fmyhub", "lci%2BB0obweU9%2BtUuW914lIww0u4XKZTanNph6rjjmzo%3D"},
	} {
		tok, err := Parse("SharedAccessSignature sr=" + tc.sr + "&sig=" + tc.sig + "&se=1700000000&skn=iothubowner")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (Limits{}).VerifyText(tok, now, "other", key); err != nil {
			t.Errorf("%s: VerifyText: %v", tc.sr, err)
		}
		// The IoT Hub way (decoded key) does not verify it.
		if _, err := (Limits{}).Verify(tok, now, key); err == nil {
			t.Errorf("%s: verified with the decoded key", tc.sr)
		}
	}
}
