(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var SVGNS = "http://www.w3.org/2000/svg";
  function text(s) { return String(s === undefined || s === null ? "" : s); }
  function row(dl, name, value) {
    if (value === "" || value === undefined || value === null) return;
    var dt = document.createElement("dt"); dt.textContent = name; dl.appendChild(dt);
    var dd = document.createElement("dd"); dd.textContent = text(value); dl.appendChild(dd);
  }
  function fields(ev) {
    if (ev.type === "segment") {
      var f = ev.flags + " seq " + ev.rel_seq;
      if (ev.flags.indexOf(".") >= 0) f += " ack " + ev.rel_ack;
      f += " win " + ev.window + " len " + ev.length;
      return f + (ev.ecn ? " " + ev.ecn : "") + (ev.lost ? " (lost)" : "");
    }
    if (ev.type === "timer") return ev.timer + " " + ev.action;
    if (ev.type === "decision") return ev.what;
    return "";
  }
  function stateChange(ev) {
    if (ev.type === "segment")
      return ev.state_before === ev.state_after ? ev.state_after + " (no change)"
        : ev.state_before + " -> " + ev.state_after;
    if (ev.type === "state") return ev.old + " -> " + ev.new + " (" + ev.event + ": " + ev.why + ")";
    if (ev.type === "peer_state") return "Linux: " + ev.old + " -> " + ev.new;
    return "";
  }
  function highlightGraphs(t) {
    Object.keys(DATA.frames).forEach(function (kind) {
      var f = DATA.frames[kind];
      var svg = document.querySelector("#graph-" + kind + " svg");
      if (!svg) return;
      var old = svg.querySelector(".cursor");
      if (old) old.remove();
      if (t < f.t_min || t > f.t_max || f.t_max <= f.t_min) return;
      var x = f.left + (t - f.t_min) / (f.t_max - f.t_min) * (f.right - f.left);
      var line = document.createElementNS(SVGNS, "line");
      line.setAttribute("class", "cursor");
      line.setAttribute("x1", x); line.setAttribute("x2", x);
      line.setAttribute("y1", f.top); line.setAttribute("y2", f.bottom);
      line.setAttribute("stroke", "#ff7f0e"); line.setAttribute("stroke-width", "2");
      line.setAttribute("stroke-dasharray", "4 2");
      svg.appendChild(line);
    });
  }
  function select(index) {
    var ev = DATA.events[String(index)];
    if (!ev) return;
    var dl = document.getElementById("details-fields");
    dl.textContent = "";
    var hint = document.getElementById("details-hint");
    if (hint) hint.remove();
    document.getElementById("details-title").textContent =
      ev.type + " at " + (ev.t * 1000).toFixed(3) + " ms";
    row(dl, "fields", fields(ev));
    if (ev.type === "segment") {
      row(dl, "direction", ev.direction === "out" ? "ustack -> Linux" : "Linux -> ustack");
      row(dl, "options", ev.options && Object.keys(ev.options).length ? JSON.stringify(ev.options) : "");
      row(dl, "note", ev.note);
      row(dl, "TCB after it", ev.tcb ? Object.keys(ev.tcb).map(function (k) {
        return k + " " + ev.tcb[k]; }).join(", ") : "");
    }
    row(dl, "state change", stateChange(ev));
    row(dl, "RFC rule", ev.rule || ev.refs);
    row(dl, "explain", ev.sentence);
    document.querySelectorAll(".selected").forEach(function (el) { el.classList.remove("selected"); });
    var tr = document.querySelector('#events tr[data-ev="' + index + '"]');
    if (tr) tr.classList.add("selected");
    var g = document.querySelector('#ladder svg > g[data-ev="' + index + '"]');
    if (g) g.classList.add("selected");
    highlightGraphs(ev.t);
  }
  var arrows = document.querySelectorAll("#ladder svg > g");
  DATA.arrows.forEach(function (index, n) {
    if (n < arrows.length) arrows[n].setAttribute("data-ev", index);
  });
  document.getElementById("ladder").addEventListener("click", function (e) {
    var g = e.target.closest("g[data-ev]");
    if (g) select(g.getAttribute("data-ev"));
  });
  document.getElementById("events").addEventListener("click", function (e) {
    var tr = e.target.closest("tr[data-ev]");
    if (tr) select(tr.getAttribute("data-ev"));
  });
  // A link to one event: session.html#ev=123 opens with it chosen.
  var linked = /#ev=(\d+)/.exec(location.hash);
  if (linked) select(linked[1]);
  // A test hook, nothing more: ?selftest=1 clicks the first arrow and writes what the page
  // holds into #selftest, for a headless browser's --dump-dom (tests/unit/test_report_in_browser.py).
  if (/[?&]selftest=1/.test(location.search)) {
    var first = document.querySelector("#ladder svg > g[data-ev]");
    if (first) first.querySelector("line").dispatchEvent(new MouseEvent("click", {bubbles: true}));
    var result = {
      connections: document.querySelectorAll("#connections tbody tr").length,
      arrows: document.querySelectorAll("#ladder svg > g").length,
      linked_arrows: document.querySelectorAll("#ladder svg > g[data-ev]").length,
      graphs: document.querySelectorAll("figure.graph svg").length,
      rows: document.querySelectorAll("#events tr.ev").length,
      details: document.getElementById("details-fields").textContent,
      cursors: document.querySelectorAll("figure.graph svg .cursor").length,
      selected_rows: document.querySelectorAll("#events tr.selected").length
    };
    document.getElementById("selftest").textContent = JSON.stringify(result);
  }
})();
