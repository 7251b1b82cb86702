package rest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
)

// readBody reads a request body of at most dps.MaxMessageSize bytes (DPS's
// 96 KB message limit). On failure it has answered the request (413, 415 or
// 400) and returns ok false; the caller must then do nothing more, so an
// oversized register never reaches the domain and writes nothing.
func (x *exchange) readBody() (body []byte, ok bool) {
	r := x.r
	// A declared length over the limit is refused before reading a byte.
	if r.ContentLength > dps.MaxMessageSize {
		x.fail(azerr.Wrap(azerr.DPSTooLarge, fmt.Errorf("content-length %d", r.ContentLength)))
		return nil, false
	}
	// Content-Type only matters when there is a body: C# and the
	// Embedded-C samples send empty register bodies, whatever their headers.
	if r.ContentLength != 0 {
		if err := checkContentType(r.Header.Get(reqContentType)); err != nil {
			x.fail(azerr.Wrap(azerr.DPSUnsupportedMedia, err))
			return nil, false
		}
	}
	// MaxBytesReader also covers chunked bodies, whose length is unknown
	// up front, and tells the server to close the connection rather than
	// drain an oversized body.
	b, err := io.ReadAll(http.MaxBytesReader(x.w, r.Body, dps.MaxMessageSize))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		x.fail(azerr.Wrap(azerr.DPSTooLarge, err))
		return nil, false
	case err != nil:
		// The client stopped sending; the answer likely goes nowhere, but
		// it is an answer.
		x.fail(azerr.Wrap(azerr.DPSBadRequest, fmt.Errorf("read body: %w", err)))
		return nil, false
	}
	return b, true
}

// checkContentType accepts JSON, with or without a charset parameter, and
// no Content-Type at all (raw clients and curl without -H). A charset other
// than UTF-8 is refused: JSON bodies are UTF-8. Content-Encoding is not
// looked at: Azure's own curl example sends the meaningless
// "Content-Encoding: utf-8".
func checkContentType(ct string) error {
	if strings.TrimSpace(ct) == "" {
		return nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Errorf("content-type %q: %w", ct, err)
	}
	if mt != "application/json" {
		return fmt.Errorf("content-type %q is not application/json", mt)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
		return fmt.Errorf("charset %q is not utf-8", cs)
	}
	return nil
}

// decodeBody reads the body and decodes it, as one JSON object, into v.
// A missing body, malformed JSON, a non-object or trailing data is a 400
// with DPSInvalidBody. Unknown fields are ignored: the SDKs send read-only
// and newer fields the domain does not model.
func (x *exchange) decodeBody(v any) bool {
	b, ok := x.readBody()
	if !ok {
		return false
	}
	if err := decodeObject(b, v); err != nil {
		x.fail(azerr.Wrap(azerr.DPSInvalidBody, err))
		return false
	}
	return true
}

func decodeObject(b []byte, v any) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return errors.New("empty body")
	}
	if b[0] != '{' {
		return errors.New("body is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode body: %w", err)
	}
	// Token, unlike More, also catches a stray closing bracket after the
	// object.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}
