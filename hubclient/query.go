package hubclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// QueryPage is one page of an IoT Hub query's results.
type QueryPage struct {
	// Items are the page's JSON values: twins, projections or aggregate
	// rows, as the query selects.
	Items []json.RawMessage
	// ItemType is x-ms-item-type: "twin" for whole twins, "raw" otherwise.
	ItemType string
	// Continuation is the next page's token (x-ms-continuation); "" on the
	// last page.
	Continuation string
}

// Query runs one page of an IoT Hub query (POST /devices/query), as the
// Node SDK's Registry.createQuery and Query.next do: pageSize is sent as
// x-ms-max-item-count when positive, continuation as x-ms-continuation
// when not "".
func (c *Client) Query(ctx context.Context, query string, pageSize int, continuation string) (*QueryPage, error) {
	if query == "" {
		return nil, fmt.Errorf("hubclient: query: the query is empty")
	}
	h := http.Header{}
	if pageSize > 0 {
		h.Set("x-ms-max-item-count", strconv.Itoa(pageSize))
	}
	if continuation != "" {
		h.Set("x-ms-continuation", continuation)
	}
	var resp http.Header
	data, err := c.do(ctx, request{
		method:     http.MethodPost,
		path:       []string{"devices", "query"},
		body:       map[string]string{"query": query},
		header:     h,
		respHeader: &resp,
	})
	if err != nil {
		return nil, err
	}
	page := &QueryPage{ItemType: resp.Get("x-ms-item-type"), Continuation: resp.Get("x-ms-continuation")}
	if err := json.Unmarshal(data, &page.Items); err != nil {
		return nil, fmt.Errorf("hubclient: decode query page: %w", err)
	}
	return page, nil
}
