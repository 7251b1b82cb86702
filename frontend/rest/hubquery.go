package rest

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/berth-iot/berth/azerr"
)

// maxQueryBody bounds a POST /devices/query body: the query text is at
// most hubquery.MaxQueryLength bytes, and the envelope and JSON escapes
// fit in the rest.
const maxQueryBody = 4 * 8192

// queryDevices is POST /devices/query (docs/hub-query.md): the body is a
// QuerySpecification, x-ms-max-item-count the page size and
// x-ms-continuation the page to resume. The answer is a JSON array, with
// x-ms-item-type ("twin" or "raw") and, only when another page exists,
// x-ms-continuation: Node's Query.next sets hasMoreResults from that
// header's presence.
func (h *handler) queryDevices(x *exchange, _ []string) {
	if h.hub.Twins == nil {
		x.fail(unavailable("Queries are"))
		return
	}
	body, ok := x.readHubBody(maxQueryBody)
	if !ok {
		return
	}
	var spec querySpec
	if err := decodeObject(body, &spec); err != nil {
		x.fail(azerr.Wrap(azerr.HubFormatError, err))
		return
	}
	if strings.TrimSpace(spec.Query) == "" {
		x.fail(azerr.Newf(azerr.HubArgumentNull, "The query is empty."))
		return
	}
	size := 0
	if v := strings.TrimSpace(x.r.Header.Get(reqMaxItemCount)); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			x.fail(azerr.Newf(azerr.HubArgumentInvalid, "The x-ms-max-item-count header must be a non-negative integer."))
			return
		}
		size = n
	}
	page, err := h.hub.Twins.Query(x.r.Context(), x.hubName(), spec.Query, size, x.r.Header.Get(reqContinuation))
	if err != nil {
		x.fail(err)
		return
	}
	hd := x.w.Header()
	hd[hdrItemType] = []string{page.ItemType}
	if page.Continuation != "" {
		hd[hdrContinuation] = []string{page.Continuation}
	}
	x.writeJSON(http.StatusOK, page.Items)
}
