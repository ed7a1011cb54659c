/* hsviz: the interactive sequence diagram.
 *
 * Draws each view's Layout (handshake_viz/layout.py, sent as data by html.py) as SVG,
 * the way handshake_viz/draw.py paints it with matplotlib, and answers the reader:
 * hover or click a segment or a call for its details, open and close a fold in place,
 * zoom and pan, jump to a frame, step with the arrow keys.
 *
 * Every string from the capture or the trace is written with textContent or as an
 * SVG text node: nothing from the data is ever parsed as HTML.
 */
(function () {
  "use strict";

  var SVGNS = "http://www.w3.org/2000/svg";
  var UX = 3.6 * 96;   // px per lifeline unit (draw.Style.unit_width, 96 px an inch)
  var UY = 0.58 * 96;  // px per row (draw.Style.row_height)
  var PT = 96 / 72;    // px per point
  var SIZE = {         // font sizes in points, as draw._SIZES
    header: 10.5, subtitle: 8, lane: 10, label: 10.5, detail: 7.5, marker: 7.5, time: 8,
    state: 7.5, call: 8.5, note: 7.5, fold: 9, footer: 9
  };
  var SANS = '"DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif';
  var MONO = '"DejaVu Sans Mono", Menlo, Consolas, "Liberation Mono", monospace';
  var BAR_HALF = 0.045;   // layout.BAR_HALF_WIDTH
  var FIT = 0.9;          // draw._FIT
  var PITCH = 0.30;       // layout.CALL_TEXT_PITCH: the lines of an unfolded group
  var VERDICTS = {        // the kernel layer (handshake_viz.layers)
    agree: "the kernel entered the same state (its own state log, sock:inet_sock_set_state)",
    linux: "Linux reports this step differently, always (a known difference from RFC 9293)",
    disagree: "the kernel was elsewhere: the inference and the kernel disagree"
  };
  var WAITS = {
    "syn-ack": "the SYN-ACK: one round trip",
    "rst": "the peer's RST",
    "connection": "a connection whose handshake completed (the listen queue)",
    "data": "the peer's data",
    "fin": "the peer's FIN: end of stream, read returns 0",
    "buffer-space": "room in the send buffer (its return says nothing about the peer having the bytes)",
    "ready": "the socket to be ready",
    "nothing": "nothing: it returns at once"
  };
  var SENDS = { send: 1, connect: 1, close: 1, shutdown: 1 };

  var D = null;          // the page's data
  var S = {              // what is shown
    view: 0, open: false, sel: null, hover: null, k: 1, tx: 0, ty: 0,
    W: 0, H: 0, HB: 0, L: null, rows: null, byFrame: null, barsById: null,
    unfolded: {}         // call ids of the grouped bars shown as their calls
  };
  var svg, world, heads, stage, details, story;

  // ------------------------------------------------------------------ small helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function text(parent, x, y, s, cls, attrs) {
    var t = el("text", attrs || {}, parent);
    t.setAttribute("x", x);
    t.setAttribute("y", y);
    if (cls) t.setAttribute("class", cls);
    t.textContent = s;
    return t;
  }

  function h(tag, cls, content, parent) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content !== undefined && content !== null) e.textContent = String(content);
    if (parent) parent.appendChild(e);
    return e;
  }

  function table(t) {   // {keys, rows} -> [{key: value}]
    return t.rows.map(function (r) {
      var o = {};
      for (var i = 0; i < t.keys.length; i++) o[t.keys[i]] = r[i];
      return o;
    });
  }

  var canvas = document.createElement("canvas").getContext("2d");
  var widths = {};
  function width(s, px, opts) {  // text width in px
    var font = (opts && opts.bold ? "bold " : "") + (opts && opts.italic ? "italic " : "") +
      px.toFixed(2) + "px " + (opts && opts.mono ? MONO : SANS);
    var key = font + "\u0000" + s;
    if (!(key in widths)) { canvas.font = font; widths[key] = canvas.measureText(s).width; }
    return widths[key];
  }

  function fmtMs(ms) {   // text.clock_text
    var a = Math.abs(ms);
    if (a < 10) return ms.toFixed(3) + " ms";
    if (a < 100) return ms.toFixed(2) + " ms";
    if (a < 100000) return ms.toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + " ms";
    return Math.round(ms).toLocaleString("en-US") + " ms";
  }

  function status(msg) { $("status").textContent = msg || ""; }

  // ------------------------------------------------------------------ loading

  function load() {
    var node = $("hsviz-data");
    var bin = atob(node.textContent.replace(/\s+/g, ""));
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(JSON.parse);
  }

  function prepare(data) {
    data.views.forEach(function (v) {
      v.layouts = v.layouts.map(function (L) {
        ["lifelines", "lanes", "rows", "states", "calls", "connectors", "notes", "idle", "footnotes",
          "queues", "markers", "story"].forEach(function (k) {
          L[k] = L[k] ? table(L[k]) : [];
        });
        if (L.windows) L.windows.rows = table(L.windows.rows);
        return L;
      });
    });
    return data;
  }

  // ------------------------------------------------------------------ drawing

  function X(x) { return (x - S.L.xlim[0]) * UX; }
  function Y(y) { return S.HB + (y - S.L.ylim[0]) * UY; }

  function color(r) {
    if (r.kind === "datagram") return D.colors.udp;
    return D.colors[r.phase] || "#222";
  }

  function defs() {
    var d = el("defs", null, svg);
    Object.keys(D.colors).forEach(function (k) {
      var m = el("marker", { id: "head-" + k, viewBox: "0 0 12 9.6", refX: 12, refY: 4.8,
        markerWidth: 12, markerHeight: 9.6, markerUnits: "userSpaceOnUse", orient: "auto" }, d);
      el("path", { d: "M0,0 L12,4.8 L0,9.6 z", fill: D.colors[k] }, m);
    });
  }

  function headerTexts(L) {  // one line each when neighbours fit side by side, else two
    var one = L.lifelines.map(function (l) { return [l.header]; });
    var px = SIZE.header * PT;
    for (var i = 1; i < L.lifelines.length; i++) {
      var need = (width(L.lifelines[i - 1].header, px, { bold: true }) + width(L.lifelines[i].header, px, { bold: true })) / 2 + 24;
      if (need > (L.lifelines[i].x - L.lifelines[i - 1].x) * UX) {
        return L.lifelines.map(function (l) { return [l.name, l.endpoint]; });
      }
    }
    return one;
  }

  function drawHeads(L) {
    heads.textContent = "";
    var texts = headerTexts(L), lines = texts[0].length;
    var px = SIZE.header * PT, boxH = lines * px * 1.25 + 8;
    var laneY = 14, boxTop = L.lanes.length ? 24 : 8, subY = boxTop + boxH + 13;
    S.HB = subY + 10;
    el("rect", { x: -1e5, y: -1e5, width: 2e5, height: 1e5 + S.HB, "class": "heads-bg" }, heads);
    el("line", { x1: -1e5, x2: 1e5, y1: S.HB - 0.5, y2: S.HB - 0.5, "class": "heads-rule" }, heads);
    L.lanes.forEach(function (ln) {
      text(heads, X(ln.x), laneY, ln.title, "lane-title", { "text-anchor": "middle", "font-size": SIZE.lane * PT, "dominant-baseline": "middle" });
    });
    L.lifelines.forEach(function (l, i) {
      var w = Math.max.apply(null, texts[i].map(function (s) { return width(s, px, { bold: true }); })) + 14;
      el("rect", { x: X(l.x) - w / 2, y: boxTop, width: w, height: boxH, rx: 5, "class": "head-box" }, heads);
      texts[i].forEach(function (s, j) {
        text(heads, X(l.x), boxTop + 4 + px * 1.25 * (j + 0.5), s, "head",
          { "text-anchor": "middle", "font-size": px, "dominant-baseline": "middle" });
      });
      text(heads, X(l.x), subY, l.subtitle, "subtitle", { "text-anchor": "middle", "font-size": SIZE.subtitle * PT, "dominant-baseline": "middle" });
    });
  }

  function drawFrame(L, g) {
    var top = Y(L.lifeline_top), bottom = Y(L.lifeline_bottom);
    var folds = L.rows.filter(function (r) { return r.kind === "fold"; });
    L.lanes.forEach(function (ln) {
      el("line", { x1: X(ln.x), x2: X(ln.x), y1: top, y2: bottom, "class": "lane" }, g);
    });
    L.lifelines.forEach(function (l) {
      var y = top;
      folds.forEach(function (r) {
        el("line", { x1: X(l.x), x2: X(l.x), y1: y, y2: Y(r.y - 0.2), "class": "lifeline" }, g);
        el("line", { x1: X(l.x), x2: X(l.x), y1: Y(r.y - 0.2), y2: Y(r.y_end + 0.2), "class": "lifeline dotted" }, g);
        y = Y(r.y_end + 0.2);
      });
      el("line", { x1: X(l.x), x2: X(l.x), y1: y, y2: bottom, "class": "lifeline" }, g);
    });
  }

  function wrap(s, px, room) {  // draw._wrap: break at ", ", commas kept at line ends
    var parts = s.split(", "), lines = [];
    parts.forEach(function (p) {
      var cand = lines.length ? lines[lines.length - 1] + ", " + p : p;
      if (lines.length && width(cand, px, { italic: true }) * 1.04 > room) {
        lines[lines.length - 1] += ",";
        lines.push(p);
      } else if (lines.length) lines[lines.length - 1] = cand;
      else lines.push(p);
    });
    return lines;
  }

  function drawFold(L, r, g) {
    var x0 = L.lifelines[0].x - 0.02, x1 = L.lifelines[L.lifelines.length - 1].x + 0.02;
    var f = el("g", { "class": "fold", "data-first": r.fold.first_frame, "data-last": r.fold.last_frame,
      role: "button", "aria-label": "open the fold: " + r.text }, g);
    el("rect", { x: X(x0), y: Y(r.y - 0.2), width: (x1 - x0) * UX, height: (r.y_end - r.y + 0.4) * UY, "class": "fold-box" }, f);
    var px = SIZE.fold * PT, room = 0.96 * r.text_room * UX, lines = wrap(r.text, px, room);
    if (lines.length >= 3) { px *= 0.85; lines = wrap(r.text, px, room); }
    var hpx = SIZE.note * PT * 0.9, mid = Y((r.y + r.y_end) / 2), lh = px * 1.2;
    var top = mid - (lines.length * lh + hpx * 1.2) / 2 + lh / 2;
    lines.forEach(function (s, i) {
      text(f, X(r.text_x), top + i * lh, s, "fold-text", { "text-anchor": "middle", "font-size": px, "dominant-baseline": "middle" });
    });
    text(f, X(r.text_x), top + (lines.length - 0.5) * lh + hpx * 0.7, "▸ click to open these rows here", "fold-hint",
      { "text-anchor": "middle", "font-size": hpx, "dominant-baseline": "middle" });
    drawTime(L, r, f);
    f.addEventListener("click", function (ev) { ev.stopPropagation(); openFold(r); });
  }

  function drawTime(L, r, g) {  // draw._paint_time: the time once, and a wait that stands out
    if (r.margin_text) text(g, X(L.time_x), Y(r.time_y), r.margin_text, "time mono",
      { "text-anchor": "end", "font-size": SIZE.time * PT, "dominant-baseline": "middle" });
    if (r.gap_text && r.gap_y !== null) text(g, X(L.time_x), Y(r.gap_y), r.gap_text, "gap mono",
      { "text-anchor": "end", "font-size": SIZE.time * PT, "dominant-baseline": "middle" });
  }

  function drawRow(L, r, g) {
    var c = color(r);
    var cls = r.kind === "segment" ? "row seg" : "row dgram";
    var grp = el("g", { "class": cls, "data-frame": r.frame, role: "button",
      "aria-label": "frame " + r.frame + ": " + r.text }, g);
    var xe = X(Math.max(r.x_from, r.x_to));
    // the band behind the row is what the pointer hovers and clicks
    el("rect", { x: X(L.time_x) - 70, y: Y(r.y - 0.3), width: xe - X(L.time_x) + 80, height: (r.y_end - r.y + 0.78 + (r.lines - 1) * 0.3) * UY, "class": "band" }, grp);
    var gap = 0.012, tipX = r.x_to > r.x_from ? r.x_to - gap : r.x_to + gap;
    el("line", { x1: X(r.x_from), y1: Y(r.y), x2: X(tipX), y2: Y(r.y_end), "class": "arrow" + (r.flagged ? " flagged" : ""),
      stroke: c, "marker-end": "url(#head-" + (r.kind === "datagram" ? "udp" : r.phase) + ")" }, grp);
    var crossing = L.lifelines.some(function (l) { return Math.min(r.x_from, r.x_to) < l.x && l.x < Math.max(r.x_from, r.x_to); });
    if (crossing) el("circle", { cx: X(r.x_from), cy: Y(r.y), r: 2.6, fill: c }, grp);
    if (r.dropped) {  // the kernel dropped it on arrival: a cross where it arrived
      var cx = X(tipX), cy = Y(r.y_end), d = 4.5;
      el("path", { d: "M" + (cx - d) + "," + (cy - d) + " L" + (cx + d) + "," + (cy + d) + " M" + (cx - d) + "," + (cy + d) +
        " L" + (cx + d) + "," + (cy - d), "class": "drop-cross" }, grp);
    }

    // the label line: role (bold, phase colour) and analysis tags, centred together above the arrow
    var midY = (r.y + r.y_end) / 2, slope = Math.abs((r.y_end - r.y) / (r.x_to - r.x_from));
    var lpx = SIZE.label * PT, mpx = SIZE.marker * PT;
    var lw = width(r.label, lpx, { bold: true }) / UX;
    var tag = (r.markers || []).join(", ");
    var tw = tag ? (width(tag, mpx, { bold: true }) + 8 * PT) / UX : 0, sep = tag ? 10 * PT / UX : 0;
    var kw = r.kernel_tag ? (width(r.kernel_tag, mpx, { bold: true }) + 8 * PT) / UX : 0, ksep = r.kernel_tag ? 10 * PT / UX : 0;
    var total = lw + sep + tw + ksep + kw, left = r.text_x - total / 2;
    var xNear = r.x_to > r.x_from ? left : left + total;
    var base = Math.min(midY - 0.10, r.y + Math.abs(xNear - r.x_from) * slope - 0.05);
    // (the phase colour through the CSSOM: the stylesheet's "svg text" fill outranks an attribute)
    text(grp, X(left + lw / 2), Y(base), r.label, "label", { "text-anchor": "middle", "font-size": lpx }).style.fill = c;
    if (tag) {
      var tx = X(left + lw + sep);
      el("rect", { x: tx, y: Y(base) - mpx * 1.05, width: tw * UX, height: mpx * 1.45, rx: 3, "class": "tag-box" }, grp);
      text(grp, tx + 4 * PT, Y(base) - mpx * 0.05, tag, "tag-text", { "font-size": mpx });
    }
    if (r.kernel_tag) {  // what the kernel did with it: dropped, and why
      var kx = X(left + lw + sep + tw + ksep);
      el("rect", { x: kx, y: Y(base) - mpx * 1.05, width: kw * UX, height: mpx * 1.45, rx: 3, "class": "kernel-box" }, grp);
      text(grp, kx + 4 * PT, Y(base) - mpx * 0.05, r.kernel_tag, "tag-text", { "font-size": mpx });
    }
    // seq/ack (and window, options) below the arrow, shrunk to fit between the lifelines
    var lines = r.lines === 2 ? [r.detail, r.extra] : [r.detail + (r.extra ? "  " + r.extra : "")];
    var dpx = SIZE.detail * PT;
    var widest = Math.max.apply(null, lines.map(function (s) { return width(s, dpx, { mono: true }); })) / UX;
    var fit = FIT * r.text_room;
    if (widest > fit) dpx = Math.max(6 * PT, dpx * fit / widest);
    var dw = width(lines[0], dpx, { mono: true }) / UX;
    var xFar = r.x_to > r.x_from ? r.text_x + dw / 2 : r.text_x - dw / 2;
    var top = Math.max(midY + 0.12, r.y + Math.abs(xFar - r.x_from) * slope + 0.06);
    lines.forEach(function (s, i) {
      if (s) text(grp, X(r.text_x), Y(top) + i * dpx * 1.3 + dpx * 0.8, s, "detail mono", { "text-anchor": "middle", "font-size": dpx });
    });
    drawTime(L, r, grp);
    grp.addEventListener("pointerenter", function () { hover({ kind: "frame", id: r.frame }); });
    grp.addEventListener("pointerleave", function () { hover(null); });
    grp.addEventListener("click", function (ev) { ev.stopPropagation(); select({ kind: "frame", id: r.frame }); });
  }

  function drawStates(L, g) {  // with the kernel's account: the verdict's colour and glyph
    var px = SIZE.state * PT;
    L.states.forEach(function (m, i) {
      var left = m.side === "client", w = width(m.shown, px, { italic: true });
      var x = X(m.x) + (left ? -0.03 * UX : 0.03 * UX), pad = px * 0.3;
      var grp = el("g", { "class": "state" + (m.verdict ? " " + m.verdict : ""), "data-state": i,
        role: m.verdict ? "button" : null, "aria-label": m.shown + (m.verdict ? ": kernel " + m.verdict : "") }, g);
      el("rect", { x: left ? x - w - pad : x - pad, y: Y(m.y) - px * 0.75, width: w + 2 * pad, height: px * 1.5, rx: 3, "class": "state-box" }, grp);
      text(grp, x, Y(m.y), m.shown, "state-text", { "text-anchor": left ? "end" : "start", "font-size": px, "dominant-baseline": "middle" });
      if (m.badge) {
        var bx = left ? x - w - pad - 4 : x + w + pad + 4;
        text(grp, bx, Y(m.y), m.badge, "badge", { "text-anchor": left ? "end" : "start", "font-size": px * 1.1, "dominant-baseline": "middle" });
      }
      if (!m.verdict) return;
      grp.addEventListener("pointerenter", function () { hover({ kind: "state", id: i }); });
      grp.addEventListener("pointerleave", function () { hover(null); });
      grp.addEventListener("click", function (ev) { ev.stopPropagation(); select({ kind: "state", id: i }); });
    });
  }

  function drawQueues(L, g) {  // accept queues: slots between a listener's lifeline and its lane
    L.queues.forEach(function (q) {
      var grp = el("g", { "class": "queue" }, g);
      var cell = function (slot, y0, y1, cls) {
        var a = q.x_inner + q.direction * slot * q.cell, b = a + q.direction * q.cell;
        el("rect", { x: X(Math.min(a, b)), y: Y(y0), width: q.cell * UX, height: Math.max(1, (y1 - y0) * UY), "class": cls }, grp);
      };
      for (var i = 0; i < q.slots; i++) cell(i, q.y0, q.y1, "slot");
      q.steps.forEach(function (st) {  // [y0, y1, depth, full]
        for (var j = 0; j < Math.min(st[2], q.slots); j++) cell(j, st[0], st[1], "slot filled" + (st[3] ? " full" : ""));
      });
      if (q.text) text(grp, X(q.text_x), Y(q.text_y), q.text, "queue-text",
        { "text-anchor": q.direction < 0 ? "end" : "start", "font-size": SIZE.note * PT, "dominant-baseline": "middle" });
    });
  }

  function drawWindows(L, g) {  // --windows: the receiving socket's tcp_probe variables
    var w = L.windows;
    if (!w) return;
    var px = SIZE.detail * PT;
    text(g, X(w.x0), Y(w.title_y), w.title, "strip-title", { "font-size": px, "dominant-baseline": "middle" });
    var at = function (i) { return i ? { x: X(w.col_right[i]), a: "end" } : { x: X(w.x0), a: "start" }; };
    w.columns.forEach(function (c, i) {
      text(g, at(i).x, Y(w.header_y), c, "strip-head mono", { "text-anchor": at(i).a, "font-size": px, "dominant-baseline": "middle" });
    });
    el("line", { x1: X(w.x0), x2: X(w.col_right[w.col_right.length - 1]), y1: Y(w.header_y + 0.22), y2: Y(w.header_y + 0.22), "class": "strip-rule" }, g);
    w.rows.forEach(function (r) {
      var grp = el("g", { "class": "strip-row", "data-frame": r.frame }, g);
      r.cells.forEach(function (c, i) {
        text(grp, at(i).x, Y(r.y), c, "strip-cell mono", { "text-anchor": at(i).a, "font-size": px, "dominant-baseline": "middle" });
      });
      grp.addEventListener("click", function (ev) { ev.stopPropagation(); jump(r.frame); });
    });
  }

  function drawMarkers(L, g) {  // the story's numbers (findings' letters) on the rows they cite
    var px = SIZE.marker * PT;
    L.markers.forEach(function (m) {
      var grp = el("g", { "class": "marker " + m.kind, "data-number": m.number, role: "button",
        "aria-label": (m.kind === "finding" ? "finding " : "story sentence ") + m.number }, g);
      var w = width(m.number, px, { bold: true }) + 7;
      el("rect", { x: X(m.x) - w / 2, y: Y(m.y) - px * 0.8, width: w, height: px * 1.6, rx: 3, "class": "marker-box" }, grp);
      text(grp, X(m.x), Y(m.y), m.number, "marker-text", { "text-anchor": "middle", "font-size": px, "dominant-baseline": "central" });
      grp.addEventListener("click", function (ev) { ev.stopPropagation(); showSentence(m.number); });
    });
  }

  function drawCalls(L, under, g) {
    L.connectors.forEach(function (c) {
      var bar = L.calls[c.call_index];
      el("line", { x1: X(c.x0), y1: Y(c.y0), x2: X(c.x1), y2: Y(c.y1), "data-call": bar ? bar.id : null,
        "class": "connector" + (c.kind === "queue" ? " queue" : "") + (c.inferred ? " inferred" : "") }, under);
    });
    var px = SIZE.call * PT, npx = SIZE.note * PT;
    L.calls.forEach(function (b) {
      if (b.leader) {  // a label moved away from its bar points at it
        el("line", { x1: X(b.leader[0]), y1: Y(b.leader[1]), x2: X(b.leader[2]), y2: Y(b.leader[3]), "class": "leader", "data-call": b.id }, under);
      }
    });
    var opened = [];
    L.calls.forEach(function (b) {
      var left = b.side === "client";
      if (b.count > 1 && S.unfolded[b.id]) { opened.push(b); return; }
      var grp = el("g", { "class": "call" + (b.count > 1 ? " group" : ""), "data-call": b.id, role: "button",
        "aria-label": "call " + b.label + (b.count > 1 ? " (click to show each call)" : "") }, g);
      el("rect", { x: X(b.x - BAR_HALF), y: Y(b.y0), width: 2 * BAR_HALF * UX, height: Math.max(1, (b.y1 - b.y0) * UY),
        "class": "bar" + (b.inferred ? " inferred" : "") }, grp);
      var t = text(grp, X(b.label_x), Y(b.label_y), b.label, "call-label mono" + (b.failed ? " failed" : ""),
        { "text-anchor": left ? "end" : "start", "font-size": px, "dominant-baseline": "middle" });
      void t;
      if (b.note) text(grp, X(b.label_x), Y(b.note_y), b.note, "call-note",
        { "text-anchor": left ? "end" : "start", "font-size": npx, "dominant-baseline": "middle" });
      grp.addEventListener("pointerenter", function () { hover({ kind: "call", id: b.id }); });
      grp.addEventListener("pointerleave", function () { hover(null); });
      grp.addEventListener("click", function (ev) {
        ev.stopPropagation();
        if (b.count > 1) { S.unfolded[b.id] = true; redrawCalls(); }
        select({ kind: "call", id: b.id });
      });
    });
    opened.forEach(function (b) { drawMembers(b, g); });  // last: on top of the lane's other texts
  }

  function drawMembers(b, g) {  // a grouped bar opened in place: each call, its own bar and label
    var left = b.side === "client", px = SIZE.call * PT, dir = left ? -1 : 1;
    var grp = el("g", { "class": "members", "data-call": b.id }, g);
    var lines = b.members.map(function (m, i) { return b.label_y + i * PITCH; });
    var widest = Math.max.apply(null, b.members.map(function (m) { return width(m[1], px, { mono: true }); }));
    var x0 = X(b.label_x), pad = 4;
    // a white card under the labels: they unfold over whatever the lane writes below
    el("rect", { x: left ? x0 - widest - pad : x0 - pad, y: Y(lines[0] - PITCH / 2), width: widest + 2 * pad,
      height: (lines.length * PITCH) * UY, rx: 3, "class": "members-card" }, grp);
    b.members.forEach(function (m, i) {  // [id, label, y0, y1]
      var id = m[0], one = el("g", { "class": "call member", "data-call": id, role: "button", "aria-label": "call " + m[1] }, grp);
      el("rect", { x: X(b.x - BAR_HALF), y: Y(m[2]), width: 2 * BAR_HALF * UX, height: Math.max(2, (m[3] - m[2]) * UY),
        "class": "bar" + (b.inferred ? " inferred" : "") }, one);
      var yb = (m[2] + m[3]) / 2;
      el("line", { x1: X(b.x + dir * BAR_HALF), y1: Y(yb), x2: x0 - dir * 2, y2: Y(lines[i]), "class": "leader" }, one);
      text(one, x0, Y(lines[i]), m[1], "call-label mono", { "text-anchor": left ? "end" : "start", "font-size": px, "dominant-baseline": "middle" });
      one.addEventListener("pointerenter", function () { hover({ kind: "call", id: id }); });
      one.addEventListener("pointerleave", function () { hover(null); });
      one.addEventListener("click", function (ev) { ev.stopPropagation(); select({ kind: "call", id: id }); });
    });
    var fold = el("g", { "class": "refold-group", role: "button", "aria-label": "group these calls again" }, grp);
    text(fold, x0, Y(lines[lines.length - 1] + PITCH), "▴ group these " + b.count + " calls again", "fold-hint",
      { "text-anchor": left ? "end" : "start", "font-size": SIZE.note * PT, "dominant-baseline": "middle" });
    fold.addEventListener("click", function (ev) { ev.stopPropagation(); delete S.unfolded[b.id]; redrawCalls(); });
  }

  function redrawCalls() {  // the calls alone: the rest of the picture stays as it is
    var under = world.querySelector("g.under"), calls = world.querySelector("g.calls");
    under.querySelectorAll(".connector, .leader").forEach(function (e) { e.remove(); });
    calls.textContent = "";
    drawCalls(S.L, under, calls);
    mark();
  }

  function drawFooter(L, g) {
    drawQueues(L, g);
    drawWindows(L, g);
    drawMarkers(L, g);
    var cx = (L.lifelines[0].x + L.lifelines[L.lifelines.length - 1].x) / 2;
    L.idle.forEach(function (n) {
      text(g, X(n.x), Y(n.y), n.text, "idle", { "text-anchor": "middle", "font-size": SIZE.fold * PT, "dominant-baseline": "middle" });
    });
    L.notes.forEach(function (n) {
      text(g, X(n.x === undefined ? cx : n.x), Y(n.y), n.text, "footer", { "text-anchor": "middle", "font-size": SIZE.footer * PT, "dominant-baseline": "middle" });
    });
  }

  function drawRefolds(g) {  // in an opened view: a bracket to fold each run back
    var folded = view().layouts[0];
    folded.rows.forEach(function (f) {
      if (f.kind !== "fold") return;
      var a = S.byFrame[f.fold.first_frame], b = S.byFrame[f.fold.last_frame];
      if (!a || !b) return;
      var x = X(S.L.time_x) - 78, y0 = Y(a.y - 0.25), y1 = Y(b.y_end + 0.25);
      var grp = el("g", { "class": "refold", role: "button", "aria-label": "fold these rows again" }, g);
      el("rect", { x: x - 14, y: y0, width: 26, height: y1 - y0, fill: "transparent" }, grp);
      el("path", { d: "M" + (x + 6) + "," + y0 + " h-6 V" + y1 + " h6", "class": "refold-line" }, grp);
      [y0 + 6, y1 - 6].forEach(function (y, i) {  // said at both ends: a long run is taller than the screen
        text(grp, x - 7, y, "▴ fold these " + (f.fold.segments + f.fold.datagrams).toLocaleString("en-US") + " rows again",
          "refold-text", { "text-anchor": i ? "start" : "end", "font-size": SIZE.note * PT, "dominant-baseline": "middle",
            transform: "rotate(-90 " + (x - 7) + " " + y + ")" });
      });
      grp.addEventListener("click", function (ev) { ev.stopPropagation(); closeFold(f, y0); });
    });
  }

  // Rows past the first screenfuls are drawn a batch at a time after the first paint, so
  // that a page of thousands of rows shows at once (positions come from the data, so
  // jumping or opening a fold never waits for them); data-drawn says all are there.
  var FIRST_ROWS = 120, BATCH = 300, pending = null;

  function drawRows(L, g) {
    var i = 0;
    var batch = function (n) {
      pending = null;
      for (var end = Math.min(L.rows.length, i + n); i < end; i++) {
        if (L.rows[i].kind === "fold") drawFold(L, L.rows[i], g); else drawRow(L, L.rows[i], g);
      }
      if (i < L.rows.length) pending = setTimeout(function () { batch(BATCH); if (!pending) drawn(); }, 0);
    };
    if (pending) clearTimeout(pending);
    batch(FIRST_ROWS);
  }

  function drawn() {
    mark();
    document.body.setAttribute("data-drawn", "true");
  }

  function render() {
    document.body.removeAttribute("data-drawn");
    var v = view(), L = v.layouts[S.open && v.layouts.length > 1 ? 1 : 0];
    S.L = L;
    S.rows = L.rows;
    S.byFrame = {};
    L.rows.forEach(function (r) { if (r.frame !== null) S.byFrame[r.frame] = r; });
    svg.textContent = "";
    defs();
    world = el("g", { id: "world" }, svg);
    heads = el("g", { id: "heads" }, svg);
    drawHeads(L);
    S.W = (L.xlim[1] - L.xlim[0]) * UX;
    S.H = (L.ylim[1] - L.ylim[0]) * UY;
    var under = el("g", { "class": "under" }, world);
    drawFrame(L, under);
    drawRows(L, el("g", { "class": "rows" }, world));
    drawStates(L, el("g", { "class": "states" }, world));
    drawCalls(L, under, el("g", { "class": "calls" }, world));
    drawFooter(L, el("g", { "class": "footer-notes" }, world));
    if (S.open) drawRefolds(el("g", { "class": "refolds" }, world));
    $("title").textContent = L.title;
    var ft = $("fold-toggle");
    var folds = v.layouts[0].rows.filter(function (r) { return r.kind === "fold"; });
    ft.hidden = v.layouts.length < 2;
    if (!ft.hidden) {
      var hidden = folds.reduce(function (n, r) { return n + r.fold.segments + r.fold.datagrams; }, 0);
      ft.textContent = S.open ? "fold again" : "open the fold (" + hidden.toLocaleString("en-US") + " rows)";
    }
    legend(L);
    if (story) showStory();
    mark();
    place();
    if (!pending) drawn();
  }

  function legend(L) {
    var box = $("legend");
    box.textContent = "";
    var names = { udp: "UDP datagram", flagged: "flagged segment (dashed)", fold: "folded run (click to open)",
      "call-traced": "socket call (traced)", "call-inferred": "socket call (inferred)",
      queue: "accept queue (connections waiting for accept())", dropped: "dropped by the kernel" };
    L.legend.forEach(function (key) {
      var item = h("span", null, null, box);
      var s = document.createElementNS(SVGNS, "svg");
      s.setAttribute("viewBox", "0 0 28 12");
      item.appendChild(s);
      if (key === "fold") el("rect", { x: 1, y: 1, width: 26, height: 10, "class": "fold-box" }, s);
      else if (key === "call-traced") el("rect", { x: 9, y: 0.5, width: 10, height: 11, "class": "bar" }, s);
      else if (key === "call-inferred") el("rect", { x: 9, y: 0.5, width: 10, height: 11, "class": "bar inferred" }, s);
      else if (key === "queue") el("rect", { x: 9, y: 0.5, width: 10, height: 11, "class": "slot filled" }, s);
      else if (key === "dropped") el("path", { d: "M9,1 L19,11 M9,11 L19,1", "class": "drop-cross" }, s);
      else el("line", { x1: 1, y1: 6, x2: 27, y2: 6, stroke: key === "flagged" ? "#222" : D.colors[key] || "#222",
        "stroke-width": 2, "stroke-dasharray": key === "flagged" ? "5 3" : null }, s);
      h("span", null, names[key] || key, item);
    });
  }

  // ------------------------------------------------------------------ zoom and pan

  function place() {
    clampPan();
    world.setAttribute("transform", "translate(" + S.tx + "," + S.ty + ") scale(" + S.k + ")");
    heads.setAttribute("transform", "translate(" + S.tx + ",0) scale(" + S.k + ")");
  }

  function clampPan() {
    var w = stage.clientWidth, hgt = stage.clientHeight, m = 60;
    var minX = Math.min(0, w - S.W * S.k) - m, maxX = Math.max(0, w - S.W * S.k) + m;
    var minY = Math.min(0, hgt - (S.HB + S.H) * S.k) - m, maxY = m;
    S.tx = Math.min(maxX, Math.max(minX, S.tx));
    S.ty = Math.min(maxY, Math.max(minY, S.ty));
  }

  function zoomAt(factor, px, py) {
    var k = Math.min(4, Math.max(0.15, S.k * factor));
    S.tx = px - (px - S.tx) * k / S.k;
    S.ty = py - (py - S.ty) * k / S.k;
    S.k = k;
    place();
  }

  function fit(all) {  // the whole width (all), else as much as stays readable, lifelines centred
    var w = stage.clientWidth;
    S.k = Math.min(1.3, Math.max(all ? 0.15 : 0.6, (w - 10) / S.W));
    if (S.W * S.k <= w) S.tx = (w - S.W * S.k) / 2;
    else {
      var ls = S.L.lifelines, mid = X((ls[0].x + ls[ls.length - 1].x) / 2);
      S.tx = w / 2 - mid * S.k;
    }
    S.ty = 0;
    place();
  }

  function reveal(y0, y1) {  // scroll so that diagram rows y0..y1 (layout units) are in view
    var hgt = stage.clientHeight, top = S.HB * S.k + 10;
    var a = Y(y0) * S.k + S.ty, b = Y(y1) * S.k + S.ty;
    if (a < top) S.ty += top - a + 40;
    else if (b > hgt - 20) S.ty -= b - hgt + 60;
    place();
  }

  function panning() {
    var start = null;
    stage.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0) return;
      start = { x: ev.clientX, y: ev.clientY, tx: S.tx, ty: S.ty, moved: false };
    });
    stage.addEventListener("pointermove", function (ev) {
      if (!start) return;
      var dx = ev.clientX - start.x, dy = ev.clientY - start.y;
      if (!start.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      if (!start.moved) stage.setPointerCapture(ev.pointerId);  // a drag, not a click
      start.moved = true;
      stage.classList.add("panning");
      S.tx = start.tx + dx;
      S.ty = start.ty + dy;
      place();
    });
    function end(ev) {
      if (!start) return;
      var moved = start.moved;
      start = null;
      stage.classList.remove("panning");
      if (stage.hasPointerCapture(ev.pointerId)) stage.releasePointerCapture(ev.pointerId);
      if (moved) { swallowClick = true; setTimeout(function () { swallowClick = false; }, 0); }
    }
    var swallowClick = false;
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);
    stage.addEventListener("click", function (ev) { if (swallowClick) { ev.stopPropagation(); ev.preventDefault(); } }, true);
    stage.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var r = stage.getBoundingClientRect();
      if (ev.ctrlKey || ev.metaKey) zoomAt(Math.exp(-ev.deltaY * 0.002), ev.clientX - r.left, ev.clientY - r.top);
      else {
        S.tx -= ev.shiftKey ? ev.deltaY : ev.deltaX;
        S.ty -= ev.shiftKey ? 0 : ev.deltaY;
        place();
      }
    }, { passive: false });
  }

  // ------------------------------------------------------------------ views, folds, frames

  function view() { return D.views[S.view]; }

  function setView(i) {
    S.view = i;
    S.open = false;
    S.unfolded = {};
    $("view").value = String(i);
    render();
    fit();
  }

  function openFold(r) {
    var v = view();
    if (v.layouts.length < 2) { status("this fold cannot open here: too many rows for one page"); return; }
    var screenY = Y(r.y - 0.2) * S.k + S.ty;
    S.open = true;
    render();
    var first = S.byFrame[r.fold.first_frame];
    if (first) { S.ty = screenY - Y(first.y - 0.25) * S.k; place(); }
  }

  function closeFold(f, bracketTop) {
    var screenY = bracketTop * S.k + S.ty;
    S.open = false;
    render();
    S.ty = screenY - Y(f.y - 0.2) * S.k;
    place();
  }

  function toggleFold() {
    var folds = view().layouts[0].rows.filter(function (r) { return r.kind === "fold"; });
    if (!folds.length) return;
    if (S.open) {
      var a = S.byFrame[folds[0].fold.first_frame];
      closeFold(folds[0], a ? Y(a.y - 0.25) : 0);
    } else openFold(folds[0]);
  }

  function showFrame(n) {  // make frame n visible (switching view or opening a fold); false if absent
    var where = -1;
    if (view().frames.indexOf(n) >= 0) where = S.view;
    else for (var i = 0; i < D.views.length; i++) if (D.views[i].frames.indexOf(n) >= 0) { where = i; break; }
    if (where < 0) return false;
    if (where !== S.view) setView(where);
    if (!S.byFrame[n] && !S.open && view().layouts.length > 1) {
      var fold = S.rows.filter(function (r) { return r.kind === "fold" && r.fold.first_frame <= n && n <= r.fold.last_frame; })[0];
      if (fold) openFold(fold); else { S.open = true; render(); }
    }
    var r = S.byFrame[n];
    if (r) reveal(r.y - 0.5, r.y_end + 1);
    return true;
  }

  function jump(n) {
    if (!D.frames[n]) {
      var all = Object.keys(D.frames).map(Number);
      status("frame " + n + ": not in this page (its segments are frames " + Math.min.apply(null, all) + "–" + Math.max.apply(null, all) + ")");
      return;
    }
    status("");
    if (showFrame(n)) select({ kind: "frame", id: n }, true);
    else status("frame " + n + " is in a run this page could not open");
  }

  function step(delta) {
    var frames = view().frames;
    var cur = S.sel && S.sel.kind === "frame" ? frames.indexOf(S.sel.id) : -1;
    var next = cur < 0 ? (delta > 0 ? 0 : frames.length - 1) : Math.min(frames.length - 1, Math.max(0, cur + delta));
    if (frames.length) jump(frames[next]);
  }

  // ------------------------------------------------------------------ selection

  function hover(item) { S.hover = item; showDetails(); mark(); }

  function select(item, keepView) {
    S.sel = item;
    S.hover = null;  // the panel follows the selection until the pointer moves onto something else
    if (!keepView && item && item.kind === "frame" && S.byFrame[item.id]) {
      var r = S.byFrame[item.id];
      reveal(r.y - 0.5, r.y_end + 1);
    }
    tab("details");
    showDetails();
    mark();
  }

  function mark() {  // highlight the selection and what is joined to it (only those touched)
    svg.querySelectorAll(".selected, .linked").forEach(function (e) { e.classList.remove("selected", "linked"); });
    var sel = S.sel, add = function (selector, cls) {
      svg.querySelectorAll(selector).forEach(function (e) { e.classList.add(cls); });
    };
    if (sel && sel.kind === "frame") {
      add('.row[data-frame="' + sel.id + '"]', "selected");
      ((D.frames[sel.id] || {}).calls || []).forEach(function (c) {
        add('.call[data-call="' + c + '"], .connector[data-call="' + c + '"]', "linked");
      });
    } else if (sel && sel.kind === "state") {
      add('.state[data-state="' + sel.id + '"]', "selected");
    } else if (sel && sel.kind === "call") {
      add('.call[data-call="' + sel.id + '"], .connector[data-call="' + sel.id + '"]', "selected");
      D.calls[sel.id].rec.frames.forEach(function (f) { add('.row[data-frame="' + f + '"]', "linked"); });
    }
  }

  // ------------------------------------------------------------------ the panel

  function ref(parent, label, item) {
    var a = h("a", "ref", label, parent);
    a.tabIndex = 0;
    a.addEventListener("click", function () {
      if (item.kind === "frame") jump(item.id); else select(item);
    });
    a.addEventListener("keydown", function (ev) { if (ev.key === "Enter") a.click(); });
    return a;
  }

  function kv(tbl, key, value) {
    var tr = h("tr", null, null, tbl);
    h("th", null, key, tr);
    var td = h("td", null, null, tr);
    if (value instanceof Node) td.appendChild(value); else td.textContent = value === null || value === undefined ? "—" : String(value);
    return td;
  }

  function frameRefs(frames) {
    var span = h("span");
    frames.forEach(function (f, i) {
      if (i) span.appendChild(document.createTextNode(" "));
      ref(span, "#" + f, { kind: "frame", id: f });
    });
    if (!frames.length) span.textContent = "—";
    return span;
  }

  function showDetails() {
    var item = S.hover || S.sel;
    details.textContent = "";
    if (!item) {
      h("p", "empty", "Hover over or click a segment or a socket call to see it here: the segment's " +
        "record, payload and header bytes, the call's strace line and what it waited for.", details);
      h("p", "empty", "Keys: ← → (or ↑ ↓) step from segment to segment; + − 0 zoom; Esc clears.", details);
      return;
    }
    if (item.kind === "frame") frameDetails(item.id);
    else if (item.kind === "state") stateDetails(item.id);
    else callDetails(item.id);
  }

  function stateDetails(i) {  // a state mark and the kernel's word on it
    var m = S.L.states[i];
    if (!m) return;
    var head = h("h2", null, m.text + " ", details);
    if (m.badge) h("span", "badge " + m.verdict, m.badge, head);
    h("p", "sub", m.side + " · after " + (m.frame === null ? "the start" : "#" + m.frame) +
      (m.conn === null ? "" : " · conn " + m.conn), details);
    var tbl = h("table", null, null, details);
    kv(tbl, "inferred", m.state + " (from the segments, RFC 9293)");
    kv(tbl, "kernel", m.kernel || "no such change reported");
    kv(tbl, "verdict", VERDICTS[m.verdict] || m.verdict);
    if (m.duration) kv(tbl, "in this state", m.duration);
    if (m.frame !== null) kv(tbl, "segment", frameRefs([m.frame]));
    var note = S.L.footnotes.filter(function (f) { return f.number === m.footnote; })[0];
    if (note) {
      h("h3", null, "why (note " + note.ref + ")", details);
      h("p", "lesson", note.text, details);
    }
  }

  function showSentence(number) {  // a marker's sentence, in the story tab
    tab("story");
    var li = story.querySelector('[data-number="' + number + '"]');
    story.querySelectorAll(".current").forEach(function (e) { e.classList.remove("current"); });
    if (li) { li.classList.add("current"); li.scrollIntoView({ block: "center" }); }
  }

  function frameDetails(n) {
    var f = D.frames[n], rec = f.rec, r = S.byFrame[n];
    var head = h("h2", null, "#" + n + " ", details);
    h("span", null, r ? r.text : (rec.label || "UDP"), head);
    (r && r.markers || []).forEach(function (m) { h("span", "tag", m, head); });
    var who = rec.dir === "c2s" ? "client → server" : "server → client";
    var where = rec.type === "segment" ? "conn " + rec.conn : "UDP flow " + rec.flow;
    h("p", "sub", who + " · " + where + " · " + (r ? r.time_text : fmtMs((rec.ts - S.L.t0) * 1000)) +
      " · " + rec.src + ":" + rec.sport + " → " + rec.dst + ":" + rec.dport, details);
    if (r && r.extra) h("p", "mono", r.extra, details);
    if (rec.state) {
      var st = h("p", "states", null, details);
      h("span", null, "after it:", st);
      ["client", "server"].forEach(function (side) {
        var s = h("span", null, side + " ", st);
        h("span", "state", rec.state[side], s);
      });
    }
    var calls = f.calls || [];
    h("h3", null, calls.length ? "socket call" + (calls.length > 1 ? "s" : "") : "socket calls", details);
    if (!calls.length) h("p", "empty", "no socket call is joined to this " + (rec.type === "segment" ? "segment" : "datagram") +
      (rec.len ? "" : ": the kernel sends ACKs, the SYN-ACK and retransmissions on its own"), details);
    calls.forEach(function (id) {
      var c = D.calls[id], p = h("p", null, null, details);
      var role = c.timing.released_by === n ? "returned when this arrived: " :
        (SENDS[c.kind] ? "sent it: " : "joined: ");
      p.appendChild(document.createTextNode(role));
      ref(p, c.rec.call + "(" + (c.rec.fd === null ? "" : c.rec.fd) + ")", { kind: "call", id: id });
      if (c.rec.inferred) p.appendChild(document.createTextNode(" (inferred, not traced)"));
      h("pre", "strace", c.strace, details);
    });
    var pl = f.payload;
    h("h3", null, "payload: " + pl.length + " byte" + (pl.length === 1 ? "" : "s") +
      (pl.captured < pl.length ? " (" + pl.captured + " captured)" : ""), details);
    if (pl.hex) {
      h("pre", null, hexdump(pl.hex), details);
      h("p", "mono", '"' + pl.text + '"' + (pl.captured > pl.hex.length / 2 ? " …" : ""), details);
    }
    h("h3", null, "JSONL record", details);
    var tbl = h("table", "mono", null, details);
    Object.keys(rec).forEach(function (k) {
      var v = rec[k];
      kv(tbl, k, v !== null && typeof v === "object" ? JSON.stringify(v) : v);
    });
    if (f.wire) wireTable(f.wire);
    else if (rec.type === "datagram") h("p", "empty", "the field-by-field view is for TCP segments", details);
  }

  function hexdump(hex) {
    var out = [];
    for (var i = 0; i < hex.length; i += 16) {
      var chunk = hex.slice(i, i + 16), bytes = chunk.match(/../g), asc = "";
      bytes.forEach(function (b) { var c = parseInt(b, 16); asc += c >= 32 && c < 127 ? String.fromCharCode(c) : "."; });
      out.push(("000" + (i / 2).toString(16)).slice(-4) + "  " + bytes.join(" ").padEnd(23) + "  " + asc);
    }
    return out.join("\n");
  }

  function wireTable(w) {
    h("h3", null, "bytes on the wire, field by field", details);
    if (w.error) { h("p", "empty", w.error, details); return; }
    var tbl = h("table", "wire", null, details), layer = null;
    ["off", "bytes", "name", "value"].forEach(function (c) { h("col", c, null, tbl); });
    w.fields.forEach(function (f) {
      var lay = f[0], name = f[1], off = f[2], size = f[3], value = f[4], host = f[5], note = f[6];
      if (lay !== layer) { layer = lay; h("td", null, lay, h("tr", "layer", null, tbl)).colSpan = 4; }
      var tr = h("tr", null, null, tbl);
      h("td", null, off, tr);
      h("td", null, (w.bytes.slice(2 * off, 2 * (off + size)).match(/../g) || []).join(" "), tr);
      h("td", null, name, tr);
      var td = h("td", null, value, tr);
      if (host) h("span", "host", "← " + host, td);
      if (note) { var nr = h("tr", "note", null, tbl); h("td", null, "", nr); h("td", null, note, nr).colSpan = 3; }
    });
    (w.lesson || []).forEach(function (s) { h("p", "lesson", s, details); });
  }

  function callDetails(id) {
    var c = D.calls[id], rec = c.rec, t = c.timing;
    var bar = S.L.calls.filter(function (b) { return b.id === id; })[0];
    h("h2", rec.errno ? "failed" : null, bar ? bar.label : rec.call + "(" + (rec.fd === null ? "" : rec.fd) + ")", details);
    h("p", "sub", "pid " + rec.pid + " · tid " + rec.tid + (rec.inferred ? " · inferred from the segments, never traced" : " · traced"), details);
    h("h3", null, rec.inferred ? "as strace would show it (reconstructed)" : "strace line", details);
    h("pre", "strace", c.strace, details);
    var tbl = h("table", null, null, details);
    kv(tbl, "arguments", rec.args || "—");
    kv(tbl, "returned", rec.errno ? "-1 " + rec.errno : rec.ret);
    kv(tbl, "started", fmtMs((rec.start - S.L.t0) * 1000) + " (" + rec.start.toFixed(6) + ")");
    kv(tbl, "took", t.blocked_ms === null ? "still blocked when tracing stopped" : fmtMs(t.blocked_ms));
    kv(tbl, "waited for", WAITS[t.waited_for] || t.waited_for);
    if (t.released_by !== null) kv(tbl, "released by", frameRefs([t.released_by]));
    if (t.queued_ms !== null) kv(tbl, "queued before the call", fmtMs(t.queued_ms));
    kv(tbl, "segments", frameRefs(rec.frames));
    if (rec.nbytes !== null) kv(tbl, "bytes", rec.nbytes);
    var ep = function (e) { return e ? e.ip + ":" + e.port : "?"; };
    if (rec.local || rec.remote) kv(tbl, "socket", ep(rec.local) + " → " + ep(rec.remote));
    kv(tbl, "connection", rec.conn === null ? "none" : rec.conn);
  }

  function showStory() {
    story.textContent = "";
    var L = S.L;
    if (L && (L.kernel_key || L.footnotes.length)) {  // the kernel layer's key and notes
      h("h3", null, "the kernel's account", story);
      if (L.kernel_key) h("p", "kernel-key", L.kernel_key, story);
      var notes = h("ul", "footnotes", null, story);
      L.footnotes.forEach(function (f) {
        var li = h("li", null, null, notes);
        h("b", "badge " + (f.kind === "linux" ? "linux" : "disagree"), f.ref + " ", li);
        linked(li, f.text, []);
      });
    }
    if (L && L.story.length) { layoutStory(L); return; }
    if (!D.stories.length) { h("p", "empty", "No TCP connection here to tell the story of.", story); return; }
    D.stories.forEach(function (s) {
      h("h3", null, "conn " + s.conn, story);
      var ol = h("ol", "story", null, story);
      s.story.forEach(function (x) { linked(h("li", null, null, ol), x.text, x.calls); });
      if (s.findings.length) {
        h("h3", null, "findings", story);
        var ul = h("ul", "findings", null, story);
        s.findings.forEach(function (f) {
          var li = h("li", null, null, ul);
          h("b", null, f.kind + ": ", li);
          linked(li, f.text, []);
          h("div", "why", f.why, li);
        });
      } else h("p", "empty", "Nothing unusual found.", story);
    });
  }

  function layoutStory(L) {  // --explain: numbered as the markers on the diagram are
    var list = null;
    L.story.forEach(function (x) {
      if (x.kind === "heading") { h("h3", null, x.text, story); list = h("ol", "story numbered", null, story); return; }
      var li = h("li", x.kind === "finding" ? "finding" : null, null, list);
      li.setAttribute("data-number", x.number);
      h("b", "num", x.number + (x.kind === "story" ? ". " : " "), li);
      linked(li, x.text, x.calls || []);
      if (x.why) h("div", "why", x.why, li);
    });
  }

  function linked(parent, s, calls) {  // a sentence whose "#N" frame citations are links
    s.split(/(#\d+)/).forEach(function (part) {
      if (/^#\d+$/.test(part)) ref(parent, part, { kind: "frame", id: Number(part.slice(1)) });
      else parent.appendChild(document.createTextNode(part));
    });
    calls.forEach(function (id) {
      parent.appendChild(document.createTextNode(" "));
      ref(parent, "[" + D.calls[id].rec.call + "()]", { kind: "call", id: id });
    });
  }

  function tab(name) {
    document.querySelectorAll("#tabs button").forEach(function (b) {
      var on = b.getAttribute("data-tab") === name;
      b.setAttribute("aria-selected", on ? "true" : "false");
      $(b.getAttribute("data-tab")).hidden = !on;
    });
  }

  // ------------------------------------------------------------------ start

  function keys() {
    document.addEventListener("keydown", function (ev) {
      var tag = (ev.target && ev.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "select" || tag === "textarea" || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      var r = stage.getBoundingClientRect();
      switch (ev.key) {
        case "ArrowRight": case "ArrowDown": step(1); break;
        case "ArrowLeft": case "ArrowUp": step(-1); break;
        case "Home": step(-1e9); break;
        case "End": step(1e9); break;
        case "+": case "=": zoomAt(1.25, r.width / 2, r.height / 2); break;
        case "-": case "_": zoomAt(0.8, r.width / 2, r.height / 2); break;
        case "0": fit(true); break;
        case "Escape": S.sel = null; showDetails(); mark(); break;
        default: return;
      }
      ev.preventDefault();
    });
  }

  function controls() {
    var sel = $("view");
    D.views.forEach(function (v, i) {
      var o = document.createElement("option");
      o.value = String(i);
      o.textContent = v.name === "all" && D.views.length > 1 ? "all " + (D.views.length - 1) + " together" : v.name;
      sel.appendChild(o);
    });
    $("view-box").hidden = D.views.length < 2;
    sel.addEventListener("change", function () { setView(Number(sel.value)); });
    $("jump").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var n = parseInt($("jump-to").value, 10);
      if (isNaN(n)) status("type a frame number"); else jump(n);
    });
    var mid = function () { var r = stage.getBoundingClientRect(); return [r.width / 2, r.height / 2]; };
    $("zoom-in").addEventListener("click", function () { var m = mid(); zoomAt(1.25, m[0], m[1]); });
    $("zoom-out").addEventListener("click", function () { var m = mid(); zoomAt(0.8, m[0], m[1]); });
    $("zoom-fit").addEventListener("click", function () { fit(true); });
    $("fold-toggle").addEventListener("click", toggleFold);
    document.querySelectorAll("#tabs button").forEach(function (b) {
      b.addEventListener("click", function () { tab(b.getAttribute("data-tab")); });
    });
    stage.addEventListener("click", function () { if (S.sel) { S.sel = null; showDetails(); mark(); } });
    window.addEventListener("resize", place);
  }

  function start(data) {
    D = prepare(data);
    svg = $("diagram");
    stage = $("stage");
    details = $("details");
    story = $("story");
    document.title = D.title;
    controls();
    keys();
    panning();
    render();
    fit();
    showDetails();
    showStory();
    $("loading").hidden = true;
    document.body.setAttribute("data-ready", Math.round(performance.now()));  // ms since the page began loading
  }

  load().then(start, function (err) {
    $("loading").textContent = "This page could not read its data: " + err;
  });
})();
