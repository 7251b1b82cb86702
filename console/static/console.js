// berth console: the CSRF header on htmx requests, and live telemetry over
// Server-Sent Events. No inline scripts: the page's CSP forbids them.
"use strict";
document.addEventListener("htmx:configRequest", function (ev) {
  var tok = document.body.getAttribute("data-csrf");
  if (tok) { ev.detail.headers["X-CSRF-Token"] = tok; }
});
document.addEventListener("DOMContentLoaded", function () {
  var list = document.getElementById("telemetry");
  if (!list || !window.EventSource) { return; }
  var state = document.getElementById("telemetry-state");
  var src = new EventSource(list.getAttribute("data-source"));
  src.onopen = function () { state.textContent = "Listening: messages appear as the device sends them."; };
  src.onerror = function () { state.textContent = "Disconnected; retrying…"; };
  src.addEventListener("telemetry", function (e) {
    var m = JSON.parse(e.data);
    var li = document.createElement("li");
    var t = document.createElement("time");
    t.textContent = m.enqueued;
    var body = document.createElement("code");
    body.textContent = m.body;
    li.appendChild(t);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(body);
    if (m.properties) {
      var p = document.createElement("span");
      p.className = "props";
      p.textContent = " " + JSON.stringify(m.properties);
      li.appendChild(p);
    }
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 200) { list.removeChild(list.lastChild); }
  });
});
