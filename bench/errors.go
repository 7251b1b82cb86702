package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/berth-iot/berth/deviceclient"
)

// ErrorKind is how often one kind of error happened, with the first
// message of that kind (clipped) to start the diagnosis from.
type ErrorKind struct {
	Count   int64  `json:"count"`
	Example string `json:"example"`
}

// Errors counts errors by kind: the phase they happened in and a class
// (timeout, tls, dps-429, …). Kinds come from a fixed vocabulary, so the
// map stays small however many errors a run produces.
type Errors struct {
	mu    sync.Mutex
	kinds map[string]*ErrorKind
	total int64
}

// maxExample bounds the message kept per kind.
const maxExample = 300

// Add counts err under "phase: class".
func (e *Errors) Add(phase string, err error) {
	kind := phase + ": " + Classify(err)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.kinds == nil {
		e.kinds = map[string]*ErrorKind{}
	}
	k := e.kinds[kind]
	if k == nil {
		msg := err.Error()
		if len(msg) > maxExample {
			msg = msg[:maxExample] + "…"
		}
		k = &ErrorKind{Example: msg}
		e.kinds[kind] = k
	}
	k.Count++
	e.total++
}

// Total is the number of errors counted.
func (e *Errors) Total() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total
}

// Snapshot returns a copy of the counts by kind; nil when there were none,
// so that a clean run's JSON has no "errors" key.
func (e *Errors) Snapshot() map[string]ErrorKind {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.kinds) == 0 {
		return nil
	}
	out := make(map[string]ErrorKind, len(e.kinds))
	for k, v := range e.kinds {
		out[k] = *v
	}
	return out
}

// Classify names the class of an error for the error table: what a reader
// needs to tell the server's refusals from the load generator's own
// limits (file descriptors, ephemeral ports) and from timeouts.
func Classify(err error) string {
	var dpsErr *deviceclient.Error
	var netErr net.Error
	var alert tls.AlertError
	var recHdr tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case err == nil:
		return "none"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, errTimeout):
		return "timeout"
	case errors.As(err, &dpsErr):
		return fmt.Sprintf("dps-%d", dpsErr.Status)
	case errors.Is(err, deviceclient.ErrNotAssigned):
		return "not-assigned"
	case errors.Is(err, packets.ErrorRefusedNotAuthorised), errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
		return "connack-not-authorized"
	case errors.Is(err, packets.ErrorRefusedServerUnavailable):
		return "connack-server-unavailable"
	case errors.Is(err, packets.ErrorRefusedIDRejected), errors.Is(err, packets.ErrorRefusedBadProtocolVersion):
		return "connack-refused"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "fd-limit"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no-ephemeral-port"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection-refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection-reset"
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr),
		errors.As(err, &alert), errors.As(err, &recHdr):
		return "tls"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	}
	// paho reports some failures as bare strings.
	switch msg := err.Error(); {
	case strings.Contains(msg, "timed out"), strings.Contains(msg, "timeout"):
		return "timeout"
	case strings.Contains(msg, "connection lost"), strings.Contains(msg, "not currently connected"),
		strings.Contains(msg, "connection closed"):
		return "connection-lost"
	}
	return "other"
}

// errTimeout marks a wait the bench gave up on.
var errTimeout = errors.New("bench: timed out")
