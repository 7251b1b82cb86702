// Package deviceclient provisions a device through DPS the way device
// firmware does with the Azure SDKs (docs/spec/dps-protocol.md: MQTT, HTTPS,
// SAS tokens, X.509): connect with a symmetric-key SAS token or an X.509
// client certificate, send a register request, wait the server's retry-after,
// poll the operation until it is assigned, failed or disabled. It works over
// MQTT (paho, port 8883) and HTTPS (443), against berth or Azure.
//
// Provision runs the whole flow. For tools that need the single steps (load
// generators), Dial returns a Session with Register and Poll, and Run
// drives a Session through the flow.
package deviceclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/berth-iot/berth/dps"
)

// Transports.
const (
	TransportMQTT  = "mqtt"
	TransportHTTPS = "https"
)

// Defaults of Options.
const (
	DefaultTokenTTL   = time.Hour
	DefaultMaxPoll    = 10 * time.Second
	DefaultPoll       = 2 * time.Second // wait when the server gave no retry-after, as Node and Python do
	DefaultMaxRetries = 5
)

// Options describe one device and how it reaches DPS.
type Options struct {
	// Transport is TransportMQTT (default) or TransportHTTPS.
	Transport string
	// GlobalEndpoint is the DPS host name: the TLS server name and the
	// host of HTTPS URLs (global.azure-devices-provisioning.net on Azure).
	GlobalEndpoint string
	// Address is the host:port to dial; default GlobalEndpoint on 8883
	// (MQTT) or 443 (HTTPS), the ports the Azure SDKs hard-code.
	Address string
	// IDScope and RegistrationID name the device.
	IDScope        string
	RegistrationID string
	// SymmetricKey is the device's own key (base64). For a member of a
	// symmetric-key enrollment group, derive it first with sas.DeriveKey.
	SymmetricKey string
	// ClientCertificate authenticates the device by X.509 instead of
	// SymmetricKey (give one of the two): it is presented as the TLS client
	// certificate (the leaf, whose subject CN is the registration ID, then
	// the chain up to the enrolled or verified CA), and no SAS token is sent,
	// neither as MQTT password nor as HTTP Authorization
	// (docs/spec/dps-protocol.md#x509-attestation). RegistrationID defaults
	// to the leaf's CN.
	ClientCertificate *tls.Certificate
	// Payload is optional custom data (a JSON object) sent with the
	// register request.
	Payload json.RawMessage
	// RootCAs are the CAs to trust; when nil, CAFile is read; when both are
	// empty, the system roots are used.
	RootCAs *x509.CertPool
	CAFile  string
	// TokenTTL is the lifetime of SAS tokens; default one hour.
	TokenTTL time.Duration
	// ClientVersion goes into the MQTT username and the HTTP User-Agent;
	// default DefaultClientVersion.
	ClientVersion string
	// MinPoll and MaxPoll bound the wait before each poll or retry. Within
	// them the server's retry-after is honoured; MaxPoll defaults to 10 s.
	MinPoll, MaxPoll time.Duration
	// MaxRetries is how many times in a row a throttled (429) or failed
	// (5xx) request is retried; default 5, negative for none.
	MaxRetries int
	// Logger receives a debug log of the flow; never keys or tokens.
	Logger *slog.Logger
	// SyncMQTT makes the MQTT session a synchronous one without paho
	// (mqttsync.go): the same packets, no goroutines of its own, as
	// firmware does. The load generator (berth bench) uses it.
	SyncMQTT bool
}

// Result is a successful answer (200 or 202) to a register or poll request.
type Result struct {
	Status int
	// RetryAfter is the server's hint; HasRetryAfter reports whether there
	// was one.
	RetryAfter    time.Duration
	HasRetryAfter bool
	Operation     *dps.OperationStatus
}

// Error is an error answer (status ≥ 400) of DPS, decoded from Azure's
// ProvisioningServiceErrorDetails body.
type Error struct {
	Status        int    // HTTP or MQTT response topic status
	Code          int    // six-digit errorCode; 0 when the body had none
	Message       string // the service's message
	TrackingID    string
	RetryAfter    time.Duration
	HasRetryAfter bool
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dps: %d %s", e.Status, http.StatusText(e.Status))
	if e.Code != 0 {
		fmt.Fprintf(&b, " (errorCode %d)", e.Code)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.TrackingID != "" {
		fmt.Fprintf(&b, " [trackingId %s]", e.TrackingID)
	}
	return b.String()
}

// Temporary reports whether the request may succeed if sent again: 429 and
// 5xx, which every Azure SDK retries (docs/spec/dps-protocol.md#errors).
func (e *Error) Temporary() bool { return e.Status == http.StatusTooManyRequests || e.Status >= 500 }

// ErrNotAssigned is wrapped by the error Provision and Run return, along
// with the final operation, when the operation ended failed or disabled.
var ErrNotAssigned = errors.New("deviceclient: device was not assigned")

// Session is one device's connection to DPS. Requests of one Session may be
// made from one goroutine at a time.
type Session interface {
	// Register sends the register request.
	Register(ctx context.Context) (*Result, error)
	// Poll asks for the status of an operation.
	Poll(ctx context.Context, operationID string) (*Result, error)
	// Close ends the session.
	Close() error
}

// Provision runs the whole provisioning flow and returns the final
// operation status. A failed or disabled registration returns that status
// and an error wrapping ErrNotAssigned.
func Provision(ctx context.Context, opts Options) (*dps.OperationStatus, error) {
	s, err := Dial(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return Run(ctx, s, opts)
}

// Dial opens a session: over MQTT it connects and subscribes; over HTTPS it
// only prepares the client (each request makes its own connection when
// needed).
func Dial(ctx context.Context, opts Options) (Session, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	tlsConf, err := opts.tlsConfig()
	if err != nil {
		return nil, err
	}
	switch opts.Transport {
	case TransportMQTT:
		if opts.SyncMQTT {
			return dialSync(ctx, opts, tlsConf)
		}
		return dialMQTT(ctx, opts, tlsConf)
	default:
		return newHTTPS(opts, tlsConf), nil
	}
}

func (o Options) withDefaults() Options {
	if o.Transport == "" {
		o.Transport = TransportMQTT
	}
	o.Transport = strings.ToLower(o.Transport)
	if o.Address == "" && o.GlobalEndpoint != "" {
		port := "8883"
		if o.Transport == TransportHTTPS {
			port = "443"
		}
		o.Address = net.JoinHostPort(o.GlobalEndpoint, port)
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = DefaultTokenTTL
	}
	if o.ClientVersion == "" {
		o.ClientVersion = DefaultClientVersion
	}
	if o.MaxPoll <= 0 {
		o.MaxPoll = DefaultMaxPoll
	}
	if o.MinPoll > o.MaxPoll {
		o.MinPoll = o.MaxPoll
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = DefaultMaxRetries
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RegistrationID == "" && o.ClientCertificate != nil {
		if leaf, err := certLeaf(o.ClientCertificate); err == nil {
			o.RegistrationID = leaf.Subject.CommonName
		}
	}
	return o
}

// certLeaf is the parsed leaf of c.
func certLeaf(c *tls.Certificate) (*x509.Certificate, error) {
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	if len(c.Certificate) == 0 {
		return nil, errors.New("deviceclient: the client certificate is empty")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("deviceclient: client certificate: %w", err)
	}
	return leaf, nil
}

func (o Options) validate() error {
	switch {
	case o.Transport != TransportMQTT && o.Transport != TransportHTTPS:
		return fmt.Errorf("deviceclient: transport %q: use mqtt or https", o.Transport)
	case o.GlobalEndpoint == "":
		return errors.New("deviceclient: no global endpoint (DPS host name)")
	case o.IDScope == "":
		return errors.New("deviceclient: no ID scope")
	case o.RegistrationID == "":
		return errors.New("deviceclient: no registration ID")
	case o.SymmetricKey == "" && o.ClientCertificate == nil:
		return errors.New("deviceclient: no symmetric key and no client certificate (TPM is not supported)")
	case o.SymmetricKey != "" && o.ClientCertificate != nil:
		// DPS authenticates a request by one mechanism; sending both would
		// leave which one counted to the server.
		return errors.New("deviceclient: give a symmetric key or a client certificate, not both")
	}
	if o.ClientCertificate != nil {
		if _, err := certLeaf(o.ClientCertificate); err != nil {
			return err
		}
		if o.ClientCertificate.PrivateKey == nil {
			return errors.New("deviceclient: the client certificate has no private key")
		}
	} else if _, err := Token(o.IDScope, o.RegistrationID, o.SymmetricKey, time.Now()); err != nil {
		// Fail before connecting rather than on the first token.
		return errors.New("deviceclient: the symmetric key is not valid base64")
	}
	if len(o.Payload) > 0 {
		if _, err := RegisterBody(o.RegistrationID, o.Payload); err != nil {
			return err
		}
	}
	return nil
}

// tlsConfig verifies the server for GlobalEndpoint, whatever Address is
// dialled.
func (o Options) tlsConfig() (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.GlobalEndpoint, RootCAs: o.RootCAs}
	if conf.RootCAs == nil && o.CAFile != "" {
		data, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("deviceclient: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("deviceclient: CA file %s holds no PEM certificate", o.CAFile)
		}
		conf.RootCAs = pool
	}
	if cert := o.ClientCertificate; cert != nil {
		// Always present the certificate, whatever CA names or signature
		// algorithms the server's request lists: DPS and IoT Hub request a
		// certificate without naming acceptable CAs, and a device whose
		// certificate the TLS stack silently held back would only see a
		// 401 with no hint why.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return conf, nil
}

// token signs a fresh device token; "" for an X.509 device, which sends
// none.
func (o Options) token() (string, error) {
	if o.ClientCertificate != nil {
		return "", nil
	}
	return Token(o.IDScope, o.RegistrationID, o.SymmetricKey, time.Now().Add(o.TokenTTL))
}

// Run drives s through the flow: register, then poll (waiting each
// answer's retry-after, bounded by opts.MinPoll and opts.MaxPoll) until the
// operation is terminal. Throttled and 5xx answers are retried up to
// opts.MaxRetries times in a row. Only the timing fields and Logger of opts
// are used.
func Run(ctx context.Context, s Session, opts Options) (*dps.OperationStatus, error) {
	opts = opts.withDefaults()
	log := opts.Logger
	res, err := retry(ctx, opts, "register", func() (*Result, error) { return s.Register(ctx) })
	if err != nil {
		return nil, err
	}
	for {
		op := res.Operation
		if op == nil {
			return nil, fmt.Errorf("deviceclient: %d answer without an operation status", res.Status)
		}
		log.Debug("deviceclient: operation", "status", res.Status, "operationStatus", op.Status, "operationId", op.OperationID)
		if op.Terminal() {
			return finish(op)
		}
		if op.OperationID == "" {
			return nil, fmt.Errorf("deviceclient: operation %q has no operationId to poll", op.Status)
		}
		if err := sleep(ctx, opts.delay(res.RetryAfter, res.HasRetryAfter)); err != nil {
			return nil, err
		}
		id := op.OperationID
		res, err = retry(ctx, opts, "poll", func() (*Result, error) { return s.Poll(ctx, id) })
		if err != nil {
			return nil, err
		}
	}
}

// finish turns a terminal operation into Run's answer.
func finish(op *dps.OperationStatus) (*dps.OperationStatus, error) {
	if op.Status == dps.StatusAssigned {
		return op, nil
	}
	msg := fmt.Sprintf("%s: status %s", ErrNotAssigned.Error(), op.Status)
	if st := op.RegistrationState; st != nil && (st.ErrorCode != 0 || st.ErrorMessage != "") {
		msg += fmt.Sprintf(", errorCode %d: %s", st.ErrorCode, st.ErrorMessage)
	}
	return op, &notAssigned{msg: msg}
}

type notAssigned struct{ msg string }

func (e *notAssigned) Error() string { return e.msg }
func (e *notAssigned) Unwrap() error { return ErrNotAssigned }

// retry sends a request until it succeeds, fails for good, or has been
// throttled more than MaxRetries times in a row.
func retry(ctx context.Context, opts Options, what string, send func() (*Result, error)) (*Result, error) {
	for attempt := 0; ; attempt++ {
		res, err := send()
		var e *Error
		if err == nil || !errors.As(err, &e) || !e.Temporary() || attempt >= opts.MaxRetries {
			if err != nil {
				return nil, fmt.Errorf("deviceclient: %s: %w", what, err)
			}
			return res, nil
		}
		d := opts.delay(e.RetryAfter, e.HasRetryAfter)
		opts.Logger.Debug("deviceclient: retrying", "request", what, "status", e.Status, "errorCode", e.Code, "wait", d)
		if err := sleep(ctx, d); err != nil {
			return nil, err
		}
	}
}

// delay is how long to wait given a server hint.
func (o Options) delay(hint time.Duration, has bool) time.Duration {
	d := DefaultPoll
	if has {
		d = hint
	}
	return min(max(d, o.MinPoll), o.MaxPoll)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("deviceclient: %w", ctx.Err())
	case <-t.C:
		return nil
	}
}

// errorBody is ProvisioningServiceErrorDetails.
type errorBody struct {
	ErrorCode  int    `json:"errorCode"`
	TrackingID string `json:"trackingId"`
	Message    string `json:"message"`
}

// decodeAnswer turns a status, retry hint and body (from an MQTT response
// topic or an HTTP response) into a Result or an *Error.
func decodeAnswer(status int, retryAfter time.Duration, hasRetry bool, body []byte, trackingID string) (*Result, error) {
	if status >= 400 {
		e := &Error{Status: status, TrackingID: trackingID, RetryAfter: retryAfter, HasRetryAfter: hasRetry}
		var eb errorBody
		if err := json.Unmarshal(body, &eb); err == nil {
			e.Code, e.Message = eb.ErrorCode, eb.Message
			if eb.TrackingID != "" {
				e.TrackingID = eb.TrackingID
			}
		} else if s := strings.TrimSpace(string(body)); s != "" {
			if len(s) > 200 {
				s = s[:200] + "…"
			}
			e.Message = s
		}
		return nil, e
	}
	if status != http.StatusOK && status != http.StatusAccepted {
		return nil, fmt.Errorf("unexpected status %d", status)
	}
	var op dps.OperationStatus
	if err := json.Unmarshal(body, &op); err != nil {
		return nil, fmt.Errorf("decode %d answer: %w", status, err)
	}
	if op.Status == "" {
		return nil, fmt.Errorf("%d answer has no status", status)
	}
	return &Result{Status: status, RetryAfter: retryAfter, HasRetryAfter: hasRetry, Operation: &op}, nil
}
