// sitegen attention-head page: draws the records from the page's JSON (schema in
// sitegen/render/head_page.py), shades tokens by the chosen scalar, shows a token's numbers
// on hover, tap or focus, and opens one record at a time as a query x key heat map.
(function () {
  "use strict";
  var el = sitegenDom.el, svg = sitegenDom.svg, table = sitegenDom.table, floats24 = sitegenDom.floats24;
  var r4 = sitegenDom.r4;
  var D = JSON.parse(document.getElementById("data").textContent);
  var T = D.tokens, M = D.maxima, SUMS = ["total in", "max in", "total out", "max out"];
  var F = floats24(D.h), at = 0;
  function take(n) { at += n; return F.slice(at - n, at).map(r4); }
  function norm(x, max) { return max > 0 ? Math.max(x, 0) / max : 0; }
  function fmt(x) { return String(+x.toPrecision(3)); }

  // rec.cols: the strip's tokens (earlier keys, then the window) as {pos, tok, q: window index or -1};
  // rec.s[scalar][q] = {k: key positions, v: values, rest, sums: [total in, max in, total out, max out]}
  var R = D.groups.map(function (g) {
    return g.map(function (r) {
      var cols = r[6].map(function (p, n) { return {pos: p, tok: r[7][n], q: -1}; }), col = {};
      r[5].forEach(function (t, q) { cols.push({pos: r[1] + q, tok: t, q: q}); });
      cols.forEach(function (c, n) { col[c.pos] = n; });
      return {seq: r[0], start: r[1], query: r[2], key: r[3], score: r[4], cols: cols, col: col, sel: null,
        s: r[8].map(function (perQuery) {
          return perQuery.map(function (d, q) {
            var v = take(d.length), x = take(5);
            return {k: d.map(function (n) { return cols[n].pos; }), v: v, rest: x[0], sums: x.slice(1)};
          });
        })};
    });
  });
  function checked(name) { return document.querySelector("input[name=" + name + "]:checked").value; }
  var sc = +checked("scalar"), dir = checked("dir"), agg = +checked("agg"), cur = null, open = null;

  function shade(s, x) { if (x == null) s.style.removeProperty("--a"); else s.style.setProperty("--a", x); }

  // The pairs a selected column c shows, as [column, value]: "in", the kept keys it reads from
  // (a shown query); "out", the shown queries that keep it among their keys.
  function pairs(rec, c) {
    var out = [], pos = rec.cols[c].pos, q = rec.cols[c].q;
    if (dir === "in") {
      if (q >= 0) rec.s[sc][q].k.forEach(function (p, n) { out.push([rec.col[p], rec.s[sc][q].v[n]]); });
    } else {
      rec.s[sc].forEach(function (e, q2) {
        var n = e.k.indexOf(pos);
        if (n >= 0) out.push([rec.col[rec.start + q2], e.v[n]]);
      });
    }
    return out;
  }
  function summaryIndex() { return (dir === "out" ? 2 : 0) + agg; }
  function paint(rec) {
    rec.strip.classList.toggle("on", rec.sel != null);
    rec.spans.forEach(function (s) { s.classList.remove("k"); shade(s, null); });
    if (rec.sel == null) {
      var i = summaryIndex();
      rec.cols.forEach(function (c, n) { if (c.q >= 0) shade(rec.spans[n], norm(rec.s[sc][c.q].sums[i], M[sc][1 + i])); });
    } else {
      pairs(rec, rec.sel).forEach(function (p) { rec.spans[p[0]].classList.add("k"); shade(rec.spans[p[0]], norm(p[1], M[sc][0])); });
    }
  }

  Array.prototype.forEach.call(document.querySelectorAll(".recs"), function (box) {
    R[+box.getAttribute("data-group")].forEach(function (rec, n) {
      var div = el("div", "rec"), head = el("p", "rh small muted"), strip = el("div", "ex"), btn = el("button", "hm", "heat map");
      head.textContent = "sequence " + rec.seq + " · query at " + rec.query + " → key at " + rec.key + " · " +
        D.scalars[D.rank_by] + " " + rec.score + " ";
      btn.type = "button";
      btn.setAttribute("aria-expanded", "false");
      btn.addEventListener("click", function () { toggleHeat(rec); });
      head.appendChild(btn);
      rec.spans = rec.cols.map(function (c, k) {
        var prev = k ? rec.cols[k - 1].pos : -1;
        if (k && c.pos !== prev + 1) strip.appendChild(el("span", "gap", "…")).title = "positions " + (prev + 1) + "–" + (c.pos - 1) + " not shown";
        var s = el("span", "t " + (c.q < 0 ? "e" : "q") + (c.pos === rec.query ? " sel" : ""), T[c.tok]);
        s.tabIndex = 0;
        s.setAttribute("data-c", k);
        s.rec = rec;
        return strip.appendChild(s);
      });
      rec.div = div;
      rec.btn = btn;
      rec.strip = strip;
      div.id = "rec-" + box.getAttribute("data-group") + "-" + n;
      div.append(head, strip);
      box.appendChild(div);
      paint(rec);
    });
  });

  // A record as a heat map: rows = its shown queries, columns = its strip's tokens; cells = the
  // kept pairs, value / pair max (other cells empty).
  function heat(rec) {
    var C = 16, L = 120, TOP = 90, n = rec.cols.length, rows = rec.s[sc], m = M[sc][0], name = D.scalars[sc];
    var box = svg("svg", {"class": "heat", width: L + n * C + 4, height: TOP + rows.length * C + 4, role: "img",
      "aria-label": name + ": query × key heat map of sequence " + rec.seq}, rec.div);
    function label(c) { var t = T[c.tok]; return t.length > 14 ? t.slice(0, 13) + "…" : t; }
    rec.cols.forEach(function (c, k) {
      var t = svg("text", {transform: "translate(" + (L + k * C + 11) + "," + (TOP - 4) + ") rotate(-60)"}, box);
      t.textContent = label(c);
      svg("title", {}, t).textContent = T[c.tok] + " (position " + c.pos + ")";
    });
    rows.forEach(function (e, q) {
      var y = TOP + q * C, qc = rec.cols[rec.col[rec.start + q]];
      svg("text", {x: L - 4, y: y + 12, "text-anchor": "end"}, box).textContent = label(qc);
      e.k.forEach(function (p, i) {
        var x = norm(e.v[i], m), cell = svg("rect", {"class": "c", x: L + rec.col[p] * C, y: y, width: C - 1,
          height: C - 1, "fill-opacity": x, "data-q": q, "data-c": rec.col[p]}, box);
        svg("title", {}, cell).textContent = "query " + T[qc.tok] + " (position " + qc.pos + ") ← key " +
          T[rec.cols[rec.col[p]].tok] + " (position " + p + "): " + name + " " + e.v[i] + ", " + fmt(x) + " of the pair max " + m;
      });
    });
    return box;
  }
  function toggleHeat(rec) {
    var was = open;
    if (open) {
      open.div.removeChild(open.heat);
      open.btn.setAttribute("aria-expanded", "false");
      open = null;
    }
    if (was !== rec) {
      rec.heat = heat(rec);
      rec.btn.setAttribute("aria-expanded", "true");
      open = rec;
    }
  }

  var tip = document.getElementById("tip");
  function showTip(rec, c) {
    var col = rec.cols[c], name = D.scalars[sc], m = M[sc], ps = pairs(rec, c);
    tip.textContent = "";
    tip.appendChild(el("code", "", T[col.tok]));
    tip.appendChild(el("p", "small muted", "sequence " + rec.seq + ", position " + col.pos +
      (col.q < 0 ? ": an earlier token, kept as a key (not a shown query)" : "")));
    if (col.q >= 0) {
      var e = rec.s[sc][col.q], rows = [[name + " over the sequence", "raw", "normalised", "÷ max"]];
      SUMS.forEach(function (label, i) { rows.push([label, String(e.sums[i]), fmt(norm(e.sums[i], m[1 + i])), String(m[1 + i])]); });
      rows.push(["rest: over its other keys", String(e.rest), "", ""]);
      tip.appendChild(table(rows));
    }
    tip.appendChild(el("p", "", dir === "in" ? "reads from (its kept keys):" : "read by (shown queries keeping it as a key):"));
    if (ps.length) {
      tip.appendChild(table([[dir === "in" ? "key" : "query", "position", name, "÷ pair max " + m[0]]].concat(ps.map(function (p) {
        var o = rec.cols[p[0]];
        return [el("code", "", T[o.tok]), String(o.pos), String(p[1]), fmt(norm(p[1], m[0]))];
      }))));
    } else {
      tip.appendChild(el("p", "small muted", dir === "in" ? "none: its keys are not kept (not a shown query)" : "none among the shown queries"));
    }
    sitegenDom.place(tip, rec.spans[c]);
  }
  function select(span) {  // a token span, or null
    var rec = span && span.rec;
    if (cur && cur !== rec) {
      cur.sel = null;
      paint(cur);
    }
    cur = rec;
    if (!rec) {
      tip.hidden = true;
      return;
    }
    rec.sel = +span.getAttribute("data-c");
    paint(rec);
    showTip(rec, rec.sel);
  }
  function token(e) { return e.target.closest ? e.target.closest(".t[data-c]") : null; }
  function focused() { var a = document.activeElement; return a && a.rec ? a : null; }
  document.addEventListener("mouseover", function (e) { select(token(e) || focused()); });
  document.addEventListener("focusin", function (e) { if (token(e)) select(token(e)); });
  document.addEventListener("focusout", function (e) { if (token(e) && !e.relatedTarget) select(null); });
  document.addEventListener("change", function (e) {
    var n = e.target.name;
    if (n === "scalar") sc = +e.target.value; else if (n === "dir") dir = e.target.value; else if (n === "agg") agg = +e.target.value;
    else return;
    R.forEach(function (g) { g.forEach(paint); });
    if (cur) showTip(cur, cur.sel);
    if (open) {
      open.div.removeChild(open.heat);
      open.heat = heat(open);
    }
  });
  // A focused heat-map button keeps its keys; on a focused token, ← and → move along its strip
  // instead of paging.
  sitegenDom.pagerKeys(D.nav, function (e) {
    var step = e.key === "ArrowLeft" ? -1 : e.key === "ArrowRight" ? 1 : 0, t = token(e);
    if (e.target.tagName === "BUTTON") return true;
    if (!t || !step) return false;
    var next = t.rec.spans[+t.getAttribute("data-c") + step];
    if (next) next.focus();
    e.preventDefault();
    return true;
  });
})();
