// sitegen prompt page: draws the token strip and the node table from the page's JSON (schema in
// sitegen/render/prompt_page.py); a token's numbers on hover, tap or focus; the table sorts,
// filters and shows 50 rows at a time; a node's note on hover. Strings are set as text only.
(function () {
  "use strict";
  var el = sitegenDom.el, svg = sitegenDom.svg, table = sitegenDom.table, signed = sitegenDom.signed, sign = sitegenDom.signClass;
  var r4 = sitegenDom.r4;
  var D = JSON.parse(document.getElementById("data").textContent);
  var T = D.tokens, STEP = 50, H = 15;
  var $ = function (id) { return document.getElementById(id); };
  var unlinked = {}, notes = {};
  D.unlinked.forEach(function (p) { unlinked[p[0] + ":" + p[1]] = 1; });
  D.notes.forEach(function (n) { notes[n[0] + ":" + n[1]] = n[2]; });

  // Token strip: per token a stacked bar of its layers' attention and MLP act x grad (positive
  // parts up from the middle, negative down), on one scale for the whole prompt.
  var L = D.attr.length ? D.attr[0].length : 0, top = 0;
  D.attr.forEach(function (per) {
    var up = 0, down = 0;
    per.forEach(function (l) { l.forEach(function (v) { if (v > 0) up += v; else down -= v; }); });
    top = Math.max(top, up, down);
  });
  var strip = $("strip"), spans = D.prompt.map(function (t, p) {
    var s = el("span", "pt" + (p === D.position ? " sel" : "")), up = H, down = H;
    var bars = svg("svg", {"class": "bars", viewBox: "0 0 10 " + 2 * H, preserveAspectRatio: "none", "aria-hidden": "true"}, s);
    svg("line", {x1: 0, x2: 10, y1: H, y2: H}, bars);
    D.attr[p].forEach(function (l, layer) {
      l.forEach(function (v, k) {
        var h = top > 0 ? Math.abs(v) / top * H : 0, y = v > 0 ? (up -= h) : down;
        if (v < 0) down += h;
        if (h > 0) svg("rect", {x: 0, y: y, width: 10, height: h, "class": k ? "m" : "a",
          "fill-opacity": (0.35 + 0.65 * (layer + 1) / L).toFixed(3)}, bars);
      });
    });
    s.appendChild(el("span", "t", T[t]));
    s.tabIndex = 0;
    s.setAttribute("data-p", p);
    s.setAttribute("aria-label", "position " + p + ": " + T[t]);
    return strip.appendChild(s);
  });

  var tip = $("tip"), cur = null;
  function tokenTip(p) {
    var a = 0, m = 0, rows = [["layer", "attention", "MLP"]];
    D.attr[p].forEach(function (l, layer) { a += l[0]; m += l[1]; rows.push([String(layer), signed(l[0]), signed(l[1])]); });
    rows.push(["sum", signed(r4(a)), signed(r4(m))]);
    tip.textContent = "";
    tip.appendChild(el("code", "", T[D.prompt[p]]));
    tip.appendChild(el("p", "small muted", "position " + p + (p === D.position ? " (the metric's position)" : "") +
      " · act × grad of all layers: " + signed(r4(a + m))));
    tip.appendChild(table(rows));
    var next = D.next[p];
    tip.appendChild(el("p", "", "top next-token predictions:"));
    tip.appendChild(table([["token", "probability"]].concat(next[0].map(function (t, i) {
      return [el("code", "", T[t]), String(next[1][i])];
    }))));
  }
  function noteTip(e) {
    tip.textContent = "";
    tip.appendChild(el("p", "", e.getAttribute("data-note")));
  }
  function show(target) {  // a token span, a node with a note, or null
    if (cur === target) return;
    if (cur && cur.classList.contains("pt")) cur.classList.remove("on");
    cur = target;
    if (!target) {
      tip.hidden = true;
      return;
    }
    if (target.classList.contains("pt")) {
      target.classList.add("on");
      tokenTip(+target.getAttribute("data-p"));
    } else {
      noteTip(target);
    }
    sitegenDom.place(tip, target);
  }
  function hovered(e) { return e.target.closest ? e.target.closest(".pt, [data-note]") : null; }
  function focused() { var a = document.activeElement; return a && a.classList && a.classList.contains("pt") ? a : null; }
  document.addEventListener("mouseover", function (e) { show(hovered(e) || focused()); });
  document.addEventListener("focusin", function (e) { show(hovered(e)); });
  document.addEventListener("focusout", function (e) { if (hovered(e) && !e.relatedTarget) show(null); });
  document.addEventListener("click", function (e) { var h = hovered(e); if (h && h.classList.contains("pt")) show(h); });
  document.addEventListener("keydown", function (e) {
    var t = e.target, step = e.key === "ArrowLeft" ? -1 : e.key === "ArrowRight" ? 1 : 0;
    if (t.classList && t.classList.contains("pt") && step && spans[+t.getAttribute("data-p") + step]) {
      spans[+t.getAttribute("data-p") + step].focus();
      e.preventDefault();
    } else if (e.key === "Escape") {
      show(null);
    }
  });

  // Node table: D.nodes filtered by the selects, sorted by a column, STEP rows at a time.
  var body = $("node-rows"), more = $("more"), fd = $("f-dict"), fl = $("f-layer"), fp = $("f-pos");
  var shown = [], limit = STEP, key = null, dir = 1;
  function label(n) {
    var kind = D.dicts[n[0]][1];
    if (kind === "attention_heads") return "L" + n[2] + ".H" + n[3] + " (query " + n[4] + " ← key " + n[5] + ")";
    return (kind === "neurons" ? "neuron " : "feature ") + n[1];
  }
  function nodeCell(n) {
    var id = n[0] + ":" + n[1], box = el("span", "nd"), a;
    if (unlinked[id]) {
      a = el("span", "", label(n));
      a.title = "no page in this site";
    } else {
      a = el("a", "", label(n));
      a.href = "../features/" + n[0] + "/" + n[1] + ".html";
    }
    if (notes[id]) box.setAttribute("data-note", notes[id]);
    box.appendChild(a);
    return box;
  }
  function row(i) {
    var n = D.nodes[i], tr = el("tr"), pos = el("td", "", n[4] + " ");
    tr.appendChild(el("td", "", String(i + 1)));
    tr.appendChild(el("td", "", D.dicts[n[0]][0]));
    tr.appendChild(el("td")).appendChild(nodeCell(n));
    tr.appendChild(el("td", "", n[2] >= 0 ? String(n[2]) : "–"));
    pos.appendChild(el("code", "", T[D.prompt[n[4]]]));
    tr.appendChild(pos);
    tr.appendChild(el("td", "", String(n[6])));
    [7, 8, 9].forEach(function (c) { tr.appendChild(el("td", c === 8 ? "" : sign(n[c]), c === 8 ? String(n[c]) : signed(n[c]))); });
    return tr;
  }
  function draw() {
    var frag = document.createDocumentFragment(), end = Math.min(limit, shown.length);
    for (var k = 0; k < end; k++) frag.appendChild(row(shown[k]));
    body.textContent = "";
    body.appendChild(frag);
    $("count").textContent = "showing " + end + " of " + shown.length + " nodes" +
      (shown.length < D.nodes.length ? " (" + D.nodes.length + " before filtering)" : "");
    more.hidden = end >= shown.length;
  }
  function sortRows() {
    if (key !== null) {
      shown.sort(function (a, b) {
        var x = D.nodes[a][key], y = D.nodes[b][key];
        return (x < y ? -1 : x > y ? 1 : 0) * dir || a - b;
      });
    } else {
      shown.sort(function (a, b) { return (a - b) * dir; });
    }
    draw();
  }
  function filter() {
    var d = fd.value, l = fl.value, p = fp.value;
    shown = [];
    D.nodes.forEach(function (n, i) {
      if ((d === "" || n[0] === +d) && (l === "" || n[2] === +l) && (p === "" || n[4] === +p)) shown.push(i);
    });
    limit = STEP;
    sortRows();
  }
  Array.prototype.forEach.call(document.querySelectorAll("#nodes th[data-sort]"), function (th) {
    th.tabIndex = 0;
    function go() {
      var k = th.getAttribute("data-sort"), col = k === "rank" ? null : +k, first = col === null ? 1 : -1;
      dir = th.hasAttribute("aria-sort") ? -dir : first;
      key = col;
      sitegenDom.sorted(th, dir);
      sortRows();
    }
    th.addEventListener("click", go);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); } });
  });
  [fd, fl, fp].forEach(function (s) { s.addEventListener("change", filter); });
  $("node-filters").addEventListener("submit", function (e) { e.preventDefault(); });
  more.addEventListener("click", function () { limit += STEP; draw(); });
  filter();
  performance.mark("sitegen-prompt-drawn");
})();
