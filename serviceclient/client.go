// Package serviceclient is a Go client of the DPS service REST API
// (docs/spec/dps-protocol.md#service-api): individual enrollments, enrollment
// groups and registration records, authenticated with a shared access policy
// from a connection string. It speaks to berth and to Azure alike, except for
// the shared access policy calls (policy.go) and the hub calls (hubs.go),
// berth extensions: Azure manages policies and hubs through Azure Resource
// Manager.
package serviceclient

import (
	"bytes"
	"context"
	"crypto/x509"
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

	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/sas"
)

// APIVersion is the service API version sent with every request: the
// stable version the Node service SDK uses.
const APIVersion = "2021-10-01"

// TokenTTL is the lifetime of the SAS token signed for each request. A fresh
// token per request (as the Node SDK does) means a long-lived Client never
// holds an expired one.
const TokenTTL = time.Hour

// UserAgent identifies this client in requests.
const UserAgent = "berth-serviceclient/0.1"

// maxErrorBody bounds how much of an error answer is read and quoted.
const maxErrorBody = 64 << 10

// maxBody bounds a success answer: a query page of 1000 enrollments with
// initial twins is a few megabytes at most.
const maxBody = 64 << 20

// Header names of the paging protocol.
const (
	hdrContinuation = "x-ms-continuation"
	hdrMaxItemCount = "x-ms-max-item-count"
	hdrErrorCode    = "x-ms-error-code"
	hdrRequestID    = "x-ms-request-id"
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
	HTTPClient *http.Client
}

// Client calls the service API of one DPS.
type Client struct {
	host    string // HostName from the connection string, as given (may carry a port)
	keyName string
	key     string
	base    url.URL // https://host
	hc      *http.Client
	now     func() time.Time
}

// ConnectionString is a parsed service connection string.
type ConnectionString = svcconn.ConnectionString

// ParseConnectionString parses "HostName=…;SharedAccessKeyName=…;SharedAccessKey=…".
// Keys are matched case-insensitively and may come in any order; values are
// split at the first '=' because base64 keys end in '='. Errors never quote
// the key.
func ParseConnectionString(s string) (ConnectionString, error) {
	return svcconn.Parse("serviceclient", s)
}

// New returns a client for the DPS named by connStr.
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

// HostName is the service host name from the connection string.
func (c *Client) HostName() string { return c.host }

func newHTTPClient(host string, opts Options) (*http.Client, error) {
	return svcconn.HTTPClient("serviceclient", host, opts.CAFile, opts.Address)
}

// LoadCertPool reads a PEM file of CA certificates into a new pool.
func LoadCertPool(file string) (*x509.CertPool, error) {
	return svcconn.LoadCertPool("serviceclient", file)
}

func hostOnly(host string) string { return svcconn.HostOnly(host) }

// Error is an error answer of the service, decoded from Azure's
// ProvisioningServiceErrorDetails body.
type Error struct {
	Status     int    // HTTP status
	Code       int    // six-digit errorCode; 0 when the body had none
	Message    string // the service's message
	TrackingID string // trackingId, or the x-ms-request-id header
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dps service: %d %s", e.Status, http.StatusText(e.Status))
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

// IsNotFound reports whether err is a 404 answer of the service.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// errorBody is ProvisioningServiceErrorDetails.
type errorBody struct {
	ErrorCode  int    `json:"errorCode"`
	TrackingID string `json:"trackingId"`
	Message    string `json:"message"`
}

// request is one call of the API.
type request struct {
	method  string
	path    []string // unescaped segments; each is escaped on its own
	body    any      // JSON-encoded when not nil
	ifMatch string
	headers map[string]string
	query   url.Values // more query parameters, after api-version
}

// response is what do hands back on success.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends r and returns the answer, or an *Error for a non-2xx status.
func (c *Client) do(ctx context.Context, r request) (*response, error) {
	u := c.base
	segs := make([]string, len(r.path))
	for i, s := range r.path {
		segs[i] = url.PathEscape(s)
	}
	u.RawPath = "/" + strings.Join(segs, "/")
	u.Path = "/" + strings.Join(r.path, "/")
	u.RawQuery = "api-version=" + APIVersion
	if len(r.query) > 0 {
		u.RawQuery += "&" + r.query.Encode()
	}

	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("serviceclient: encode %s body: %w", r.method, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("serviceclient: %s %s: %w", r.method, u.Path, err)
	}
	token, err := sas.SignEncoded(c.host, c.key, c.keyName, c.now().Add(TokenTTL))
	if err != nil {
		return nil, fmt.Errorf("serviceclient: sign request: %w", err)
	}
	req.Header.Set("Authorization", token)
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	if r.ifMatch != "" {
		// Sent verbatim, as the Node SDK does: enrollment etags may carry
		// their own quotes, and the service strips them before comparing.
		req.Header.Set("If-Match", r.ifMatch)
	}
	for k, v := range r.headers {
		req.Header.Set(k, v)
	}

	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("serviceclient: %s %s: %w", r.method, u.Path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, decodeError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("serviceclient: %s %s: read answer: %w", r.method, u.Path, err)
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

// decodeError turns a non-2xx answer into an *Error. A body that is not the
// DPS error shape (a proxy's HTML page) is quoted, shortened, as the message.
func decodeError(resp *http.Response) *Error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Status: resp.StatusCode, TrackingID: resp.Header.Get(hdrRequestID)}
	var eb errorBody
	if err := json.Unmarshal(data, &eb); err == nil && (eb.ErrorCode != 0 || eb.Message != "") {
		e.Code, e.Message = eb.ErrorCode, eb.Message
		if eb.TrackingID != "" {
			e.TrackingID = eb.TrackingID
		}
	} else if s := strings.TrimSpace(string(data)); s != "" {
		if len(s) > 200 {
			s = s[:200] + "…"
		}
		e.Message = s
	}
	if e.Code == 0 {
		e.Code, _ = strconv.Atoi(resp.Header.Get(hdrErrorCode))
	}
	return e
}

// decodeInto decodes a JSON answer.
func decodeInto(r *response, what string, v any) error {
	if err := json.Unmarshal(r.body, v); err != nil {
		return fmt.Errorf("serviceclient: decode %s: %w", what, err)
	}
	return nil
}

// call sends r and decodes the answer into a new T.
func call[T any](ctx context.Context, c *Client, r request, what string) (*T, error) {
	resp, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	v := new(T)
	if err := decodeInto(resp, what, v); err != nil {
		return nil, err
	}
	return v, nil
}

// put sends a create-or-update r and decodes the answer into a new T;
// created reports a 201 (the berth extensions' create) rather than a 200.
func put[T any](ctx context.Context, c *Client, r request, what string) (out *T, created bool, err error) {
	resp, err := c.do(ctx, r)
	if err != nil {
		return nil, false, err
	}
	out = new(T)
	if err := decodeInto(resp, what, out); err != nil {
		return nil, false, err
	}
	return out, resp.status == http.StatusCreated, nil
}

// querySpec is Azure's QuerySpecification.
type querySpec struct {
	Query string `json:"query"`
}

// query sends one page request of a query and returns the items and the
// continuation token of the next page ("" on the last page).
func query[T any](ctx context.Context, c *Client, path []string, spec any, pageSize int, continuation, what string) ([]T, string, error) {
	h := map[string]string{}
	if pageSize > 0 {
		h[hdrMaxItemCount] = strconv.Itoa(pageSize)
	}
	if continuation != "" {
		h[hdrContinuation] = continuation
	}
	resp, err := c.do(ctx, request{method: http.MethodPost, path: path, body: spec, headers: h})
	if err != nil {
		return nil, "", err
	}
	var items []T
	if err := decodeInto(resp, what, &items); err != nil {
		return nil, "", err
	}
	return items, resp.header.Get(hdrContinuation), nil
}

// listAll pages through a query until the last page or until limit items
// (0: no limit) have been collected.
func listAll[T any](ctx context.Context, pageSize, limit int, page func(ctx context.Context, pageSize int, continuation string) ([]T, string, error)) ([]T, error) {
	if limit > 0 && (pageSize <= 0 || pageSize > limit) {
		pageSize = limit
	}
	var (
		all  []T
		cont string
		seen = map[string]bool{}
	)
	for {
		items, next, err := page(ctx, pageSize, cont)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if limit > 0 && len(all) >= limit {
			return all[:limit], nil
		}
		if next == "" {
			return all, nil
		}
		// A server that hands back a token it already gave would make this
		// loop forever.
		if seen[next] {
			return nil, fmt.Errorf("serviceclient: query: the service repeated continuation token %q", next)
		}
		seen[next] = true
		cont = next
	}
}

// PutEnrollment creates or replaces an individual enrollment (the path ID is
// e.RegistrationID). ifMatch, when not empty, makes the write conditional on
// the stored etag. The answer is the stored enrollment, keys included.
func (c *Client) PutEnrollment(ctx context.Context, e *dps.IndividualEnrollment, ifMatch string) (*dps.IndividualEnrollment, error) {
	if e == nil || e.RegistrationID == "" {
		return nil, errors.New("serviceclient: PutEnrollment: the enrollment needs a registrationId")
	}
	return call[dps.IndividualEnrollment](ctx, c, request{method: http.MethodPut, path: []string{"enrollments", e.RegistrationID}, body: e, ifMatch: ifMatch}, "enrollment")
}

// GetEnrollment reads an individual enrollment. The service hides its keys;
// EnrollmentAttestation reveals them.
func (c *Client) GetEnrollment(ctx context.Context, id string) (*dps.IndividualEnrollment, error) {
	return call[dps.IndividualEnrollment](ctx, c, request{method: http.MethodGet, path: []string{"enrollments", id}}, "enrollment")
}

// DeleteEnrollment deletes an individual enrollment, conditionally when
// ifMatch is not empty.
func (c *Client) DeleteEnrollment(ctx context.Context, id, ifMatch string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: []string{"enrollments", id}, ifMatch: ifMatch})
	return err
}

// EnrollmentAttestation returns an individual enrollment's attestation
// mechanism with its keys.
func (c *Client) EnrollmentAttestation(ctx context.Context, id string) (*dps.AttestationMechanism, error) {
	return call[dps.AttestationMechanism](ctx, c, request{method: http.MethodPost, path: []string{"enrollments", id, "attestationmechanism"}}, "attestation mechanism")
}

// QueryEnrollments returns one page of individual enrollments (pageSize 0:
// the service's default) and the continuation token of the next page, ""
// after the last.
func (c *Client) QueryEnrollments(ctx context.Context, pageSize int, continuation string) ([]*dps.IndividualEnrollment, string, error) {
	return query[*dps.IndividualEnrollment](ctx, c, []string{"enrollments", "query"},
		querySpec{Query: "SELECT * FROM enrollments"}, pageSize, continuation, "enrollments")
}

// ListEnrollments pages through all individual enrollments, stopping after
// limit of them when limit > 0.
func (c *Client) ListEnrollments(ctx context.Context, pageSize, limit int) ([]*dps.IndividualEnrollment, error) {
	return listAll(ctx, pageSize, limit, c.QueryEnrollments)
}

// PutEnrollmentGroup creates or replaces an enrollment group (the path ID is
// g.EnrollmentGroupID), conditionally when ifMatch is not empty.
func (c *Client) PutEnrollmentGroup(ctx context.Context, g *dps.EnrollmentGroup, ifMatch string) (*dps.EnrollmentGroup, error) {
	if g == nil || g.EnrollmentGroupID == "" {
		return nil, errors.New("serviceclient: PutEnrollmentGroup: the group needs an enrollmentGroupId")
	}
	return call[dps.EnrollmentGroup](ctx, c, request{method: http.MethodPut, path: []string{"enrollmentGroups", g.EnrollmentGroupID}, body: g, ifMatch: ifMatch}, "enrollment group")
}

// GetEnrollmentGroup reads an enrollment group, keys hidden.
func (c *Client) GetEnrollmentGroup(ctx context.Context, id string) (*dps.EnrollmentGroup, error) {
	return call[dps.EnrollmentGroup](ctx, c, request{method: http.MethodGet, path: []string{"enrollmentGroups", id}}, "enrollment group")
}

// DeleteEnrollmentGroup deletes an enrollment group, conditionally when
// ifMatch is not empty.
func (c *Client) DeleteEnrollmentGroup(ctx context.Context, id, ifMatch string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: []string{"enrollmentGroups", id}, ifMatch: ifMatch})
	return err
}

// EnrollmentGroupAttestation returns a group's attestation mechanism with
// its keys.
func (c *Client) EnrollmentGroupAttestation(ctx context.Context, id string) (*dps.AttestationMechanism, error) {
	return call[dps.AttestationMechanism](ctx, c, request{method: http.MethodPost, path: []string{"enrollmentGroups", id, "attestationmechanism"}}, "attestation mechanism")
}

// QueryEnrollmentGroups returns one page of enrollment groups and the
// continuation token of the next page.
func (c *Client) QueryEnrollmentGroups(ctx context.Context, pageSize int, continuation string) ([]*dps.EnrollmentGroup, string, error) {
	return query[*dps.EnrollmentGroup](ctx, c, []string{"enrollmentGroups", "query"},
		querySpec{Query: "SELECT * FROM enrollmentGroups"}, pageSize, continuation, "enrollment groups")
}

// ListEnrollmentGroups pages through all enrollment groups, stopping after
// limit of them when limit > 0.
func (c *Client) ListEnrollmentGroups(ctx context.Context, pageSize, limit int) ([]*dps.EnrollmentGroup, error) {
	return listAll(ctx, pageSize, limit, c.QueryEnrollmentGroups)
}

// GetRegistration reads the registration record of a device.
func (c *Client) GetRegistration(ctx context.Context, id string) (*dps.RegistrationState, error) {
	return call[dps.RegistrationState](ctx, c, request{method: http.MethodGet, path: []string{"registrations", id}}, "registration")
}

// DeleteRegistration deletes a registration record, conditionally when
// ifMatch is not empty.
func (c *Client) DeleteRegistration(ctx context.Context, id, ifMatch string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: []string{"registrations", id}, ifMatch: ifMatch})
	return err
}

// QueryRegistrations returns one page of the registration records of the
// devices provisioned through enrollment group groupID. It sends no body, as
// the swagger defines the operation.
func (c *Client) QueryRegistrations(ctx context.Context, groupID string, pageSize int, continuation string) ([]*dps.RegistrationState, string, error) {
	return query[*dps.RegistrationState](ctx, c, []string{"registrations", groupID, "query"},
		nil, pageSize, continuation, "registrations")
}

// ListRegistrations pages through all registration records of group
// groupID, stopping after limit of them when limit > 0.
func (c *Client) ListRegistrations(ctx context.Context, groupID string, pageSize, limit int) ([]*dps.RegistrationState, error) {
	return listAll(ctx, pageSize, limit, func(ctx context.Context, n int, cont string) ([]*dps.RegistrationState, string, error) {
		return c.QueryRegistrations(ctx, groupID, n, cont)
	})
}
