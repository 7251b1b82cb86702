package rest

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-iot/berth/azerr"
	"github.com/berth-iot/berth/dps"
)

// Values of x-ms-item-type. The C# service SDK Enum.Parse-s the header and
// throws when it is missing, so every query answer carries it.
const (
	itemEnrollment   = "Enrollment"
	itemGroup        = "EnrollmentGroup"
	itemRegistration = "DeviceRegistration"
)

// serviceRoutes is the DPS service API
// (docs/spec/dps-protocol.md#service-api). Every route first checks the
// service SAS token for the right the operation needs.
//
// No ETag response header is written: the swagger defines none for these
// operations (only x-ms-error-code on errors and the paging headers on
// queries), and the SDKs read the etag from the body, where the domain
// puts it.
func (h *handler) serviceRoutes() routes {
	s := h.svc
	const (
		read     = dps.RightEnrollmentRead
		write    = dps.RightEnrollmentWrite
		regRead  = dps.RightRegistrationStatusRead
		regWrite = dps.RightRegistrationStatusWrite
	)
	return append(routes{
		newRoute(http.MethodPost, "enrollments/query", h.authorized(read, query(itemEnrollment,
			func(ctx context.Context, _ []string, c string, n int) (dps.Page[*dps.IndividualEnrollment], error) {
				return s.QueryEnrollments(ctx, c, n)
			}))),
		newRoute(http.MethodPost, "enrollments", h.authorized(write, bulk(func(ctx context.Context, b bulkBody) (*dps.BulkResult, error) {
			return s.BulkEnrollments(ctx, b.Mode, b.Enrollments)
		}))),
		newRoute(http.MethodPut, "enrollments/{id}", h.authorized(write, put(s.PutEnrollment))),
		newRoute(http.MethodGet, "enrollments/{id}", h.authorized(read, get(
			func(ctx context.Context, id string) (*dps.IndividualEnrollment, error) {
				return s.GetEnrollment(ctx, id, dps.ShowKeys(false))
			}))),
		newRoute(http.MethodDelete, "enrollments/{id}", h.authorized(write, del(s.DeleteEnrollment))),
		newRoute(http.MethodPost, "enrollments/{id}/attestationmechanism", h.authorized(read, get(s.EnrollmentAttestation))),

		newRoute(http.MethodPost, "enrollmentGroups/query", h.authorized(read, query(itemGroup,
			func(ctx context.Context, _ []string, c string, n int) (dps.Page[*dps.EnrollmentGroup], error) {
				return s.QueryGroups(ctx, c, n)
			}))),
		newRoute(http.MethodPost, "enrollmentGroups", h.authorized(write, bulk(func(ctx context.Context, b bulkBody) (*dps.BulkResult, error) {
			return s.BulkGroups(ctx, b.Mode, b.EnrollmentGroups)
		}))),
		newRoute(http.MethodPut, "enrollmentGroups/{id}", h.authorized(write, put(s.PutGroup))),
		newRoute(http.MethodGet, "enrollmentGroups/{id}", h.authorized(read, get(
			func(ctx context.Context, id string) (*dps.EnrollmentGroup, error) {
				return s.GetGroup(ctx, id, dps.ShowKeys(false))
			}))),
		newRoute(http.MethodDelete, "enrollmentGroups/{id}", h.authorized(write, del(s.DeleteGroup))),
		newRoute(http.MethodPost, "enrollmentGroups/{id}/attestationmechanism", h.authorized(read, get(s.GroupAttestation))),

		newRoute(http.MethodGet, "registrations/{id}", h.authorized(regRead, get(s.GetRegistration))),
		newRoute(http.MethodDelete, "registrations/{id}", h.authorized(regWrite, del(s.DeleteRegistration))),
		newRoute(http.MethodPost, "registrations/{groupId}/query", h.authorized(regRead, query(itemRegistration,
			func(ctx context.Context, args []string, c string, n int) (dps.Page[*dps.RegistrationState], error) {
				return s.QueryRegistrations(ctx, args[0], c, n)
			}))),
	}, slices.Concat(
		h.policyRoutes(),          // berth's policy management extension (policy.go),
		h.hubManagementRoutes(),   // its hub management (hubs.go)
		h.certificateRoutes())...) // and its CA certificates (certificates.go)
}

// authorized checks the service SAS token before next runs, and before any
// body is read. The check is the domain's (dps.Service.AuthorizeService):
// the token's sr must name one of the DPS's configured host names, never
// merely the Host this request was sent with. Failures are 401 (401000
// for a missing or unparseable token, 401002 for one that does not grant
// right).
func (h *handler) authorized(right string, next func(*exchange, []string)) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		if _, err := h.svc.AuthorizeService(x.r.Header.Get(reqAuthorization), x.segs, right); err != nil {
			x.fail(err)
			return
		}
		next(x, args)
	}
}

// hostOf strips the port (and IPv6 brackets) from a Host header value.
func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// put serves PUT /{collection}/{id}: the body is the document, If-Match is
// passed to the domain exactly as received (the domain strips quotes and
// handles * and "*"), and the answer is 200 with the stored document,
// keys included.
func put[T any](fn func(ctx context.Context, id string, in *T, ifMatch string) (*T, error)) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		var doc T
		if !x.decodeBody(&doc) {
			return
		}
		out, err := fn(x.r.Context(), args[0], &doc, x.r.Header.Get(reqIfMatch))
		if err != nil {
			x.fail(err)
			return
		}
		x.writeJSON(http.StatusOK, out)
	}
}

// bulkBody is BulkEnrollmentOperation and BulkEnrollmentGroupOperation.
type bulkBody struct {
	Mode             string                      `json:"mode"`
	Enrollments      []*dps.IndividualEnrollment `json:"enrollments"`
	EnrollmentGroups []*dps.EnrollmentGroup      `json:"enrollmentGroups"`
}

// bulk serves POST /enrollments and /enrollmentGroups: 200 with per-item
// errors (the operation succeeds even when items fail, as on Azure).
func bulk(fn func(context.Context, bulkBody) (*dps.BulkResult, error)) func(*exchange, []string) {
	return func(x *exchange, _ []string) {
		var b bulkBody
		if !x.decodeBody(&b) {
			return
		}
		out, err := fn(x.r.Context(), b)
		if err != nil {
			x.fail(err)
			return
		}
		x.writeJSON(http.StatusOK, out)
	}
}

// get serves reads of one document (GET, and the POST …/attestationmechanism
// that reveals keys): 200 with the document. A request body is ignored.
func get[T any](fn func(ctx context.Context, id string) (*T, error)) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		out, err := fn(x.r.Context(), args[0])
		if err != nil {
			x.fail(err)
			return
		}
		x.writeJSON(http.StatusOK, out)
	}
}

// del serves DELETE /{collection}/{id}: 204, If-Match passed as received.
func del(fn func(ctx context.Context, id, ifMatch string) error) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		if err := fn(x.r.Context(), args[0], x.r.Header.Get(reqIfMatch)); err != nil {
			x.fail(err)
			return
		}
		x.noContent()
	}
}

// query serves POST …/query: the body is a QuerySpecification, the paging
// headers come and go as the SDKs expect (x-ms-item-type always,
// x-ms-continuation only when another page exists, because Node and C# loop
// while it is present).
func query[T any](itemType string, fn func(ctx context.Context, args []string, continuation string, max int) (dps.Page[T], error)) func(*exchange, []string) {
	return func(x *exchange, args []string) {
		if !x.readQuery() {
			return
		}
		max, echo, err := maxItemCount(x.r.Header.Get(reqMaxItemCount))
		if err != nil {
			x.fail(err)
			return
		}
		page, err := fn(x.r.Context(), args, x.r.Header.Get(reqContinuation), max)
		if err != nil {
			x.fail(err)
			return
		}
		h := x.w.Header()
		h[hdrItemType] = []string{itemType}
		if page.Continuation != "" {
			h[hdrContinuation] = []string{page.Continuation}
		}
		if echo != "" {
			h[hdrMaxItemCount] = []string{echo}
		}
		items := page.Items
		if items == nil {
			items = []T{} // "[]", not "null": the SDKs iterate the array
		}
		x.writeJSON(http.StatusOK, items)
	}
}

// maxItemCount parses x-ms-max-item-count. An absent header means the
// domain's maximum page and nothing is echoed; a present one is echoed as
// the page size actually used (the domain caps it at dps.MaxPageSize).
func maxItemCount(v string) (max int, echo string, err error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, "", nil
	}
	n, perr := strconv.Atoi(v)
	if perr != nil || n < 0 {
		return 0, "", azerr.Newf(azerr.DPSBadRequest, "The x-ms-max-item-count header must be a non-negative integer.")
	}
	if n == 0 || n > dps.MaxPageSize {
		n = dps.MaxPageSize
	}
	return n, strconv.Itoa(n), nil
}

// querySpec is Azure's QuerySpecification.
type querySpec struct {
	Query string `json:"query"`
}

// whereClause finds a WHERE keyword in a query.
var whereClause = regexp.MustCompile(`(?i)\bwhere\b`)

// readQuery reads the optional QuerySpecification. berth answers every
// query as "SELECT * FROM <collection>", which is what the SDK samples and
// end-to-end tests send; an empty body is fine (the swagger's registration
// query has none). A WHERE clause is refused rather than ignored: silently
// returning unfiltered results could make a caller act on records it did
// not ask for.
func (x *exchange) readQuery() bool {
	b, ok := x.readBody()
	if !ok {
		return false
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return true
	}
	var q querySpec
	if err := decodeObject(b, &q); err != nil {
		x.fail(azerr.Wrap(azerr.DPSInvalidBody, err))
		return false
	}
	if whereClause.MatchString(q.Query) {
		x.fail(azerr.Newf(azerr.DPSBadRequest,
			"berth does not support WHERE clauses in queries; send \"SELECT * FROM <collection>\" and filter the results."))
		return false
	}
	return true
}
