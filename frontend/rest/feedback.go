package rest

import (
	"net/http"
	"strconv"

	"github.com/berth-iot/berth/hub"
)

// The service's HTTPS feedback endpoints (docs/hub-wire.md#c2d-feedback):
// the same hub.Feedback queue the AMQP feedback link serves.

// receiveFeedback is GET /messages/serviceBound/feedback: the next
// feedback message (up to 64 records), locked for
// iothub-messagelocktimeout seconds (default one minute), as 200 with the
// JSON array; 204 when there is none. The lock token is in ETag (quoted,
// as on a device's C2D receive) and iothub-locktoken.
func (h *handler) receiveFeedback(x *exchange, _ []string) {
	f := h.hub.Feedback
	if f == nil {
		x.fail(unavailable("Cloud-to-device feedback is"))
		return
	}
	lockFor, err := lockTimeout(x.r)
	if err != nil {
		x.fail(err)
		return
	}
	if _, given := queryValue(x.r.URL, "iothub-messagelocktimeout"); !given {
		lockFor = hub.FeedbackLockTimeout
	}
	m, err := f.Receive(x.r.Context(), x.hubName(), lockFor)
	if err != nil {
		x.fail(err)
		return
	}
	if m == nil {
		x.noContent()
		return
	}
	hdr := x.w.Header()
	hdr[hdrETag] = []string{`"` + m.LockToken + `"`}
	hdr["iothub-locktoken"] = []string{m.LockToken}
	hdr["iothub-messageid"] = []string{m.MessageID}
	hdr["iothub-userid"] = []string{m.UserID}
	hdr["iothub-enqueuedtime"] = []string{formatHubTime(m.Enqueued)}
	hdr["iothub-deliverycount"] = []string{strconv.Itoa(m.DeliveryCount)}
	hdr[hdrContentType] = []string{hub.FeedbackContentType}
	hdr[hdrRequestID] = []string{x.id}
	x.status = http.StatusOK
	x.w.WriteHeader(http.StatusOK)
	_, _ = x.w.Write(m.Body)
}

// completeFeedback is DELETE /messages/serviceBound/feedback/{lockToken}:
// 204, the records removed; 412 DeviceMessageLockLost for a token that
// holds nothing (any more).
func (h *handler) completeFeedback(x *exchange, args []string) {
	h.settleFeedback(x, args[0], false)
}

// abandonFeedback is POST /messages/serviceBound/feedback/{lockToken}/abandon:
// 204, the records delivered again later.
func (h *handler) abandonFeedback(x *exchange, args []string) {
	h.settleFeedback(x, args[0], true)
}

func (h *handler) settleFeedback(x *exchange, token string, abandon bool) {
	f := h.hub.Feedback
	if f == nil {
		x.fail(unavailable("Cloud-to-device feedback is"))
		return
	}
	settle := f.Complete
	if abandon {
		settle = f.Abandon
	}
	if err := settle(x.r.Context(), x.hubName(), token); err != nil {
		x.fail(err)
		return
	}
	x.noContent()
}
