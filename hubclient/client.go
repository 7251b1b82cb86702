// Package hubclient is a Go client of the IoT Hub service REST API
// (docs/spec/iothub-protocol.md#service-api): the device registry (create,
// read, update, list and delete device identities, the registry statistics),
// device twins, direct methods and cloud-to-device messages, authenticated
// with a shared access policy from a hub connection string. It speaks to
// berth and to Azure IoT Hub alike, except for the C2D send, which is a berth
// extension (Azure sends C2D over AMQP only); serviceclient is its DPS
// counterpart.
package hubclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/berth-iot/berth/internal/svcconn"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
)

// APIVersion is sent with every request: the version the Node and C#
// service SDKs use (docs/spec/iothub-protocol.md#service-api).
const APIVersion = "2021-04-12"

// TokenTTL is the lifetime of the service SAS token signed for each
// request. A fresh token per request (as the Node SDK re-signs before each
// call) means a long-lived Client never holds an expired one.
const TokenTTL = time.Hour

// UserAgent identifies this client in requests.
const UserAgent = "berth-hubclient/0.1"

// MaxTop is IoT Hub's page limit for GET /devices?top=N.
const MaxTop = 1000

// maxErrorBody bounds how much of an error answer is read and quoted.
const maxErrorBody = 64 << 10

// maxBody bounds a success answer: 1000 devices of about 1 KiB each.
const maxBody = 16 << 20

// Header names.
const (
	hdrErrorCode = "iothub-errorcode"
	hdrRequestID = "x-ms-request-id"
)

// Options configure a Client. The zero value trusts the system roots and
// dials the connection string's host on port 443.
type Options struct {
	// CAFile is a PEM file of the CA certificates to trust instead of the
	// system roots (berth's development CA).
	CAFile string
	// Address is the host:port to dial instead of the connection string's
	// host. TLS still verifies the certificate for the host name, so a name
	// that does not resolve (or a berth on a non-standard port) works.
	Address string
	// HTTPClient, when set, is used as is: CAFile and Address are then
	// ignored, since its transport already decides where and how to dial.
	// Only InvokeMethod calls with another Timeout (that of the method's
	// timeouts), through a copy.
	HTTPClient *http.Client
}

// Client calls the registry API of one IoT hub. It is safe for concurrent
// use.
type Client struct {
	host    string // HostName from the connection string, as given (may carry a port)
	keyName string
	key     string
	base    url.URL // https://host
	hc      *http.Client
	now     func() time.Time
}

// ConnectionString is a parsed hub (service) connection string.
type ConnectionString = svcconn.ConnectionString

// ParseConnectionString parses
// "HostName=…;SharedAccessKeyName=…;SharedAccessKey=…"
// (docs/spec/iothub-protocol.md#connection-strings; the Node SDK requires all
// three). A device connection string has no SharedAccessKeyName and is
// refused. Errors never quote the key.
func ParseConnectionString(s string) (ConnectionString, error) {
	cs, err := svcconn.Parse("hubclient", s)
	if errors.Is(err, svcconn.ErrNoKeyName) {
		return cs, fmt.Errorf("%w (a device connection string cannot manage the registry)", err)
	}
	return cs, err
}

// New returns a client for the hub named by connStr.
func New(connStr string, opts Options) (*Client, error) {
	cs, err := ParseConnectionString(connStr)
	if err != nil {
		return nil, err
	}
	c := &Client{
		host:    cs.HostName,
		keyName: cs.SharedAccessKeyName,
		key:     cs.SharedAccessKey,
		base:    url.URL{Scheme: "https", Host: cs.HostName},
		hc:      opts.HTTPClient,
		now:     time.Now,
	}
	if c.hc == nil {
		c.hc, err = newHTTPClient(cs.HostName, opts)
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// HostName is the hub host name from the connection string.
func (c *Client) HostName() string { return c.host }

func newHTTPClient(host string, opts Options) (*http.Client, error) {
	return svcconn.HTTPClient("hubclient", host, opts.CAFile, opts.Address)
}

func hostOnly(host string) string { return svcconn.HostOnly(host) }

// Error is an error answer of the hub.
type Error struct {
	Status int // HTTP status
	// Name is the error code's name (DeviceNotFound, DeviceAlreadyExists,
	// PreconditionFailed…): the iothub-errorcode header, or the name in the
	// body's "ErrorCode:{Name};…" Message. "" when the answer had neither.
	Name       string
	Message    string // the hub's message
	TrackingID string // from ExceptionMessage ("Tracking ID:…"), or the x-ms-request-id header
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "iot hub: %d %s", e.Status, http.StatusText(e.Status))
	if e.Name != "" {
		fmt.Fprintf(&b, " (%s)", e.Name)
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

// IsNotFound reports whether err is a 404 answer of the hub.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// errorBody is IoT Hub's HTTP error body
// (docs/spec/iothub-protocol.md#http-error-body).
type errorBody struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// innerError is the newer form, where Message is itself a JSON document.
type innerError struct {
	ErrorCode  int    `json:"errorCode"`
	TrackingID string `json:"trackingId"`
	Message    string `json:"message"`
}

// decodeError turns a non-2xx answer into an *Error. It understands both body
// forms of docs/spec/iothub-protocol.md#http-error-body: the legacy
// "ErrorCode:{Name};{message}" (berth's and the one the Node SDK parses) and
// a Message holding a JSON document. A body in neither form (a proxy's HTML
// page) is quoted, shortened.
func decodeError(resp *http.Response) *Error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{
		Status:     resp.StatusCode,
		Name:       strings.TrimSpace(resp.Header.Get(hdrErrorCode)),
		TrackingID: resp.Header.Get(hdrRequestID),
	}
	var eb errorBody
	if err := json.Unmarshal(data, &eb); err != nil || (eb.Message == "" && eb.ExceptionMessage == "") {
		if s := strings.TrimSpace(string(data)); s != "" {
			if len(s) > 200 {
				s = s[:200] + "…"
			}
			e.Message = s
		}
		return e
	}
	if id := trackingID(eb.ExceptionMessage); id != "" {
		e.TrackingID = id
	}
	var inner innerError
	if strings.HasPrefix(strings.TrimSpace(eb.Message), "{") && json.Unmarshal([]byte(eb.Message), &inner) == nil {
		e.Message = inner.Message
		if inner.TrackingID != "" {
			e.TrackingID = inner.TrackingID
		}
		return e
	}
	name, msg := parseLegacyMessage(eb.Message)
	if e.Name == "" {
		e.Name = name
	}
	e.Message = msg
	return e
}

// parseLegacyMessage splits "ErrorCode:{Name};{message}" as the Node SDK
// does: the name after the first ':' of the first ';'-field, the rest as the
// message. A Message without that prefix is all message.
func parseLegacyMessage(m string) (name, msg string) {
	first, rest, _ := strings.Cut(m, ";")
	k, v, ok := strings.Cut(first, ":")
	if !ok || !strings.EqualFold(strings.TrimSpace(k), "ErrorCode") {
		return "", m
	}
	return strings.TrimSpace(v), rest
}

// trackingID extracts the ID from "Tracking ID:{id}-TimeStamp:{time}". Azure's
// IDs contain '-' themselves ("e4cb…-G:11"), so the cut is at the last
// "-TimeStamp:".
func trackingID(exceptionMessage string) string {
	_, rest, ok := strings.Cut(exceptionMessage, "Tracking ID:")
	if !ok {
		return ""
	}
	if i := strings.LastIndex(rest, "-TimeStamp:"); i >= 0 {
		rest = rest[:i]
	}
	return strings.TrimSpace(rest)
}

// contentTypeJSON is the Content-Type of every request body but the C2D
// send's (docs/spec/iothub-protocol.md#service-api).
const contentTypeJSON = "application/json; charset=utf-8"

// request is one call of the API.
type request struct {
	method  string
	path    []string // unescaped segments; each is escaped on its own
	query   url.Values
	body    any // JSON-encoded when not nil
	ifMatch string
	// contentType replaces contentTypeJSON when not "".
	contentType string
	// timeout replaces the HTTP client's overall timeout when not 0: a
	// direct method may legitimately wait longer than any registry call.
	timeout time.Duration
	// bulkResult takes a 400 whose body is a BulkRegistryOperationResult
	// as an answer, not an error: IoT Hub reports a bulk operation that
	// partly failed that way.
	bulkResult bool
	// header holds extra request headers (a query's paging headers).
	header http.Header
	// respHeader, when not nil, receives the answer's headers.
	respHeader *http.Header
}

// do sends r and returns the answer's body, or an *Error for a non-2xx
// status.
func (c *Client) do(ctx context.Context, r request) ([]byte, error) {
	u := c.base
	segs := make([]string, len(r.path))
	for i, s := range r.path {
		segs[i] = url.PathEscape(s)
	}
	u.RawPath = "/" + strings.Join(segs, "/")
	u.Path = "/" + strings.Join(r.path, "/")
	q := url.Values{}
	for k, v := range r.query {
		q[k] = v
	}
	q.Set("api-version", APIVersion)
	u.RawQuery = q.Encode()

	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("hubclient: encode %s body: %w", r.method, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("hubclient: %s %s: %w", r.method, u.Path, err)
	}
	// sr is the bare host name, as the Node service SDK signs it
	// (docs/spec/iothub-protocol.md#how-the-sdks-make-tokens); berth and IoT
	// Hub accept it for every registry path.
	token, err := sas.Sign(c.host, c.key, c.keyName, c.now().Add(TokenTTL))
	if err != nil {
		return nil, fmt.Errorf("hubclient: sign request: %w", err)
	}
	req.Header.Set("Authorization", token)
	ct := contentTypeJSON
	if r.contentType != "" {
		ct = r.contentType
	}
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	if r.ifMatch != "" {
		req.Header.Set("If-Match", QuoteETag(r.ifMatch))
	}
	for k, v := range r.header {
		req.Header[k] = v
	}

	hc := c.hc
	if r.timeout > 0 {
		// A copy shares the transport (and its connections); only this
		// call's limit differs.
		per := *c.hc
		per.Timeout = r.timeout
		hc = &per
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hubclient: %s %s: %w", r.method, u.Path, err)
	}
	defer resp.Body.Close()
	if r.bulkResult && resp.StatusCode == http.StatusBadRequest {
		if data, ok := bulkFailure(resp); ok {
			return data, nil
		}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, decodeError(resp)
	}
	if r.respHeader != nil {
		*r.respHeader = resp.Header
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("hubclient: %s %s: read answer: %w", r.method, u.Path, err)
	}
	return data, nil
}

// QuoteETag quotes an etag for If-Match as the Node SDK's ensureQuoted
// does: a value already in double quotes is sent as is, anything else
// (including the wildcard *) is wrapped in them. IoT Hub strips the quotes
// before comparing, and treats "*" as "any version".
func QuoteETag(etag string) string {
	if len(etag) >= 2 && etag[0] == '"' && etag[len(etag)-1] == '"' {
		return etag
	}
	return `"` + etag + `"`
}

// call sends r and decodes the answer into a new T.
func call[T any](ctx context.Context, c *Client, r request, what string) (*T, error) {
	data, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	v := new(T)
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("hubclient: decode %s: %w", what, err)
	}
	return v, nil
}

// deviceBody is what a PUT sends: the fields a client may set. The
// read-only ones hub.Device also carries (generationId, connectionState,
// the times, cloudToDeviceMessageCount) are left out rather than sent as
// zero values, which IoT Hub could take as invalid enum values or dates;
// the etag travels in If-Match, where every SDK puts it.
type deviceBody struct {
	DeviceID       string              `json:"deviceId"`
	Status         string              `json:"status,omitempty"`
	StatusReason   *string             `json:"statusReason,omitempty"`
	Authentication *hub.Authentication `json:"authentication,omitempty"`
	Capabilities   *hub.Capabilities   `json:"capabilities,omitempty"`
	// A nil scope and an empty list are left out: the hub keeps what the
	// device has. A pointer to "" removes a child's parent.
	DeviceScope  *string  `json:"deviceScope,omitempty"`
	ParentScopes []string `json:"parentScopes,omitempty"`
}

func putBody(d *hub.Device) deviceBody {
	return deviceBody{
		DeviceID:       d.DeviceID,
		Status:         d.Status,
		StatusReason:   d.StatusReason,
		Authentication: d.Authentication,
		Capabilities:   d.Capabilities,
		DeviceScope:    d.DeviceScope,
		ParentScopes:   d.ParentScopes,
	}
}

// CreateDevice adds a device identity: PUT /devices/{id} without If-Match.
// Empty symmetric keys are generated by the hub; a device that exists is
// refused with 409 DeviceAlreadyExists. The answer is the stored device,
// keys included.
func (c *Client) CreateDevice(ctx context.Context, d *hub.Device) (*hub.Device, error) {
	if d == nil || d.DeviceID == "" {
		return nil, errors.New("hubclient: CreateDevice: the device needs a deviceId")
	}
	return call[hub.Device](ctx, c, request{method: http.MethodPut, path: []string{"devices", d.DeviceID}, body: putBody(d)}, "device")
}

// UpdateDevice replaces the settable fields of an existing device: PUT
// /devices/{id} with If-Match. ifMatch is the etag the update is
// conditional on, or "*" for any version; it is quoted as QuoteETag does.
// An empty ifMatch is refused: without If-Match the PUT would be a create.
func (c *Client) UpdateDevice(ctx context.Context, d *hub.Device, ifMatch string) (*hub.Device, error) {
	if d == nil || d.DeviceID == "" {
		return nil, errors.New("hubclient: UpdateDevice: the device needs a deviceId")
	}
	if ifMatch == "" {
		return nil, errors.New(`hubclient: UpdateDevice: ifMatch is required (an etag, or "*" for any version)`)
	}
	return call[hub.Device](ctx, c, request{method: http.MethodPut, path: []string{"devices", d.DeviceID}, body: putBody(d), ifMatch: ifMatch}, "device")
}

// GetDevice reads a device identity, keys included.
func (c *Client) GetDevice(ctx context.Context, id string) (*hub.Device, error) {
	if id == "" {
		return nil, errors.New("hubclient: GetDevice: empty device ID")
	}
	return call[hub.Device](ctx, c, request{method: http.MethodGet, path: []string{"devices", id}}, "device")
}

// DeleteDevice removes a device identity. ifMatch is an etag, "*" for any
// version (what the Node SDK always sends), or "" to send no If-Match.
func (c *Client) DeleteDevice(ctx context.Context, id, ifMatch string) error {
	if id == "" {
		return errors.New("hubclient: DeleteDevice: empty device ID")
	}
	_, err := c.do(ctx, request{method: http.MethodDelete, path: []string{"devices", id}, ifMatch: ifMatch})
	return err
}

// ListDevices returns up to top devices (1..MaxTop; 0 lets the hub choose,
// which is MaxTop). IoT Hub has no continuation for this call: a larger
// registry needs the query API.
func (c *Client) ListDevices(ctx context.Context, top int) ([]*hub.Device, error) {
	if top < 0 || top > MaxTop {
		return nil, fmt.Errorf("hubclient: ListDevices: top %d out of 0..%d", top, MaxTop)
	}
	q := url.Values{}
	if top > 0 {
		q.Set("top", strconv.Itoa(top))
	}
	ds, err := call[[]*hub.Device](ctx, c, request{method: http.MethodGet, path: []string{"devices"}, query: q}, "devices")
	if err != nil {
		return nil, err
	}
	if *ds == nil {
		return []*hub.Device{}, nil
	}
	return *ds, nil
}

// Statistics is IoT Hub's RegistryStatistics.
type Statistics struct {
	TotalDeviceCount    int `json:"totalDeviceCount"`
	EnabledDeviceCount  int `json:"enabledDeviceCount"`
	DisabledDeviceCount int `json:"disabledDeviceCount"`
}

// DeviceStatistics reads GET /statistics/devices.
func (c *Client) DeviceStatistics(ctx context.Context) (*Statistics, error) {
	return call[Statistics](ctx, c, request{method: http.MethodGet, path: []string{"statistics", "devices"}}, "device statistics")
}
