package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/hubclient"
)

func (c *Console) hubRoutes(m *http.ServeMux) {
	m.HandleFunc("GET /devices", c.auth(c.devices))
	m.HandleFunc("GET /devices/{id}", c.auth(c.device))
	m.HandleFunc("POST /devices/{id}/desired", c.auth(c.deviceDesired))
	m.HandleFunc("POST /devices/{id}/method", c.auth(c.deviceMethod))
	m.HandleFunc("POST /devices/{id}/c2d", c.auth(c.deviceC2D))
	m.HandleFunc("GET /devices/{id}/events", c.auth(c.deviceEvents))
}

// overview is the DPS and hub blades' first page.
func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	data := map[string]any{
		"Title": "Overview", "Active": "overview",
		"IDScope": c.cfg.IDScope, "GlobalEndpoint": c.cfg.GlobalEndpoint,
		"MQTT": c.cfg.MQTTAddress(), "HTTPS": c.cfg.HTTPSAddress(),
		"HasCA": c.cfg.CAFile != "", "Policy": s.Conn.SharedAccessKeyName, "Host": s.Conn.HostName,
	}
	if s.IsDPS {
		data["Hubs"], _ = s.dps.ListHubs(r.Context())
	}
	if s.IsHub {
		if st, err := s.hub.DeviceStatistics(r.Context()); err == nil {
			data["Stats"] = st
		}
	}
	c.render(w, r, http.StatusOK, "overview.html", s, data)
}

// revealConnectionString shows the signed-in connection string on
// request; it never travels in a URL or in the first page load.
func (c *Console) revealConnectionString(w http.ResponseWriter, _ *http.Request, s *session) {
	c.fragment(w, http.StatusOK, "overview.html", "connstr", s.connStr)
}

func (c *Console) caDownload(w http.ResponseWriter, _ *http.Request, _ *session) {
	if c.cfg.CAFile == "" {
		http.Error(w, "berth serves an operator-supplied certificate: there is no berth CA to download", http.StatusNotFound)
		return
	}
	pem, err := os.ReadFile(c.cfg.CAFile)
	if err != nil {
		http.Error(w, "cannot read the CA certificate", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Content-Disposition", `attachment; filename="berth-ca.pem"`)
	_, _ = w.Write(pem)
}

func (c *Console) devices(w http.ResponseWriter, r *http.Request, s *session) {
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	st := r.URL.Query().Get("status")
	cs := r.URL.Query().Get("connection")
	data := map[string]any{"Title": "Devices", "Active": "devices", "Query": q, "Status": st, "Connection": cs, "Hub": s.Conn.HostName}
	list, err := s.hub.ListDevices(r.Context(), hubclient.MaxTop)
	if err != nil {
		data["Error"] = describe(err)
	}
	list = slices.DeleteFunc(list, func(d *hub.Device) bool {
		return (q != "" && !strings.Contains(strings.ToLower(d.DeviceID), strings.ToLower(q))) ||
			(st != "" && !strings.EqualFold(d.Status, st)) ||
			(cs != "" && !strings.EqualFold(d.ConnectionState, cs))
	})
	data["List"] = list
	c.render(w, r, http.StatusOK, "devices.html", s, data)
}

func (c *Console) device(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	d, err := s.hub.GetDevice(r.Context(), id)
	if err != nil {
		c.render(w, r, status(err), "error.html", s, map[string]any{"Title": id, "Active": "devices", "Error": describe(err)})
		return
	}
	data := map[string]any{"Title": id, "Active": "devices", "D": d}
	tw, err := s.hub.GetTwin(r.Context(), id)
	if err != nil {
		data["TwinError"] = describe(err)
	} else {
		data["Twin"] = tw
		data["Desired"] = desiredOnly(tw.Properties.Desired)
	}
	c.render(w, r, http.StatusOK, "device.html", s, data)
}

// desiredOnly is the desired section without $metadata and $version: what
// an operator edits.
func desiredOnly(raw json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return "{}"
	}
	delete(m, "$metadata")
	delete(m, "$version")
	b, _ := json.MarshalIndent(m, "", "  ")
	return string(b)
}

// deviceDesired patches the desired properties through the twin API; the
// hub notifies the device.
func (c *Console) deviceDesired(w http.ResponseWriter, r *http.Request, s *session) {
	desired := strings.TrimSpace(r.PostFormValue("desired"))
	var obj map[string]any
	if err := json.Unmarshal([]byte(desired), &obj); err != nil {
		c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"Error": "The desired properties must be a JSON object: " + err.Error()})
		return
	}
	patch, _ := json.Marshal(map[string]any{"properties": map[string]any{"desired": obj}})
	tw, err := s.hub.UpdateTwin(r.Context(), r.PathValue("id"), patch, "*")
	if err != nil {
		c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"Error": describe(err)})
		return
	}
	c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"OK": fmt.Sprintf("Saved: desired $version is now %s.", desiredVersion(tw.Properties.Desired))})
}

func desiredVersion(raw json.RawMessage) string {
	var v struct {
		Version json.Number `json:"$version"`
	}
	_ = json.Unmarshal(raw, &v)
	return v.Version.String()
}

func (c *Console) deviceMethod(w http.ResponseWriter, r *http.Request, s *session) {
	payload := strings.TrimSpace(r.PostFormValue("payload"))
	if payload == "" {
		payload = "null"
	}
	if !json.Valid([]byte(payload)) {
		c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"Error": "The payload must be JSON."})
		return
	}
	req := &hub.MethodRequest{MethodName: strings.TrimSpace(r.PostFormValue("method")), Payload: json.RawMessage(payload)}
	if t, err := strconv.Atoi(r.PostFormValue("timeout")); err == nil && t > 0 {
		req.ResponseTimeoutInSeconds = &t
	}
	res, err := s.hub.InvokeMethod(r.Context(), r.PathValue("id"), req)
	if err != nil {
		c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"Error": describe(err)})
		return
	}
	c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"OK": fmt.Sprintf("The device answered status %d.", res.Status), "Body": funcs["rawjson"].(func(json.RawMessage) string)(res.Payload)})
}

func (c *Console) deviceC2D(w http.ResponseWriter, r *http.Request, s *session) {
	m := &hubclient.C2DMessage{Body: []byte(r.PostFormValue("body"))}
	res, err := s.hub.SendC2D(r.Context(), r.PathValue("id"), m)
	if err != nil {
		c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"Error": describe(err)})
		return
	}
	c.fragment(w, http.StatusOK, "device.html", "result", map[string]any{"OK": "Queued: message " + res.MessageID + "."})
}

// deviceEvents streams the device's telemetry as Server-Sent Events, from
// now on, after the service API's own check of the signed-in policy
// (ServiceConnect on the device's hub).
func (c *Console) deviceEvents(w http.ResponseWriter, r *http.Request, s *session) {
	if c.cfg.Telemetry == nil || c.cfg.AuthorizeTelemetry == nil {
		http.Error(w, "no telemetry stream", http.StatusNotFound)
		return
	}
	hubName, err := c.cfg.AuthorizeTelemetry(s.Conn)
	if err != nil {
		http.Error(w, "Refused: the signed-in policy may not read telemetry (ServiceConnect).", http.StatusForbidden)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ctx := r.Context()
	msgs, err := c.cfg.Telemetry(ctx, hubName, r.PathValue("id"))
	if err != nil {
		c.log.Error("console: telemetry subscription", "error", err.Error())
		http.Error(w, "cannot read the telemetry stream", http.StatusServiceUnavailable)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": subscribed\n\n")
	fl.Flush()
	keepAlive := time.NewTicker(20 * time.Second)
	defer keepAlive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-keepAlive.C:
			_, _ = fmt.Fprint(w, ": keep-alive\n\n")
			fl.Flush()
		case m, ok := <-msgs:
			if !ok {
				return
			}
			ev := map[string]any{"enqueued": m.Enqueued.UTC().Format(hub.EnqueuedTimeLayout), "body": string(m.Body)}
			props := map[string]string{}
			for _, p := range m.App {
				props[p.Name] = p.Value
			}
			if len(props) > 0 {
				ev["properties"] = props
			}
			b, _ := json.Marshal(ev)
			// json.Marshal escapes newlines: one data line per event.
			_, _ = fmt.Fprintf(w, "event: telemetry\ndata: %s\n\n", b)
			fl.Flush()
		}
	}
}
