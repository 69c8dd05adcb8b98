// sitegen index: search, filter, sort and page through every built feature
// (window.SITEGEN_INDEX, loaded from assets/index-data.js). Only one page of
// rows is in the DOM at a time, so 100,000 features stay responsive. Attention
// heads have their own sortable table; "#dict-<i>" selects dictionary i. Each explained
// feature has its best explanation's text and score (X.expl), shown as text, searched, sorted.
// Inlined after dom.js (sitegenDom).
(function () {
  "use strict";
  var X = window.SITEGEN_INDEX, PAGE = 100, el = sitegenDom.el;
  var $ = function (id) { return document.getElementById(id); };
  var body = $("rows"), count = $("count"), search = $("search"), dict = $("dict"), dmin = $("dmin"),
    dmax = $("dmax"), prev = $("prev"), next = $("next"), unexpl = $("unexpl");
  if (!X) {
    count.textContent = "The index data (assets/index-data.js) did not load.";
    return;
  }
  var n = X.id.length, dead = new Uint8Array(n), notes = new Array(n), hay = null;
  var expl = new Array(n), escore = new Array(n);
  X.dead.forEach(function (r) { dead[r] = 1; });
  X.notes.forEach(function (p) { notes[p[0]] = p[1]; });
  (X.expl || []).forEach(function (p) { expl[p[0]] = p[1]; escore[p[0]] = p[2]; });
  var shown = [], page = 0, sortKey = null, sortDir = 1;

  function firstToken(i) { return X.top[i].length ? X.tokens[X.top[i][0]].toLowerCase() : "\uffff"; }
  var KEYS = {
    id: function (i) { return X.id[i]; },
    d: function (i) { return X.d[i]; },
    density: function (i) { return X.density[i]; },
    max: function (i) { return X.max[i]; },
    top: firstToken,
    note: function (i) { return (notes[i] || "\uffff").toLowerCase(); },
    expl: function (i) { return expl[i] === undefined ? null : expl[i].toLowerCase(); },
    escore: function (i) { return escore[i] == null ? null : escore[i]; }
  };
  // Lower-case token texts, note and explanation of each row, built on the first search.
  function haystack() {
    if (!hay) {
      hay = new Array(n);
      for (var i = 0; i < n; i++) {
        var words = X.top[i].map(function (t) { return X.tokens[t]; });
        hay[i] = (words.join("\u0001") + "\u0001" + (notes[i] || "") + "\u0001" + (expl[i] || "")).toLowerCase();
      }
    }
    return hay;
  }
  // A term matches a row by its id ("12" or "#12") or as part of its token texts, note or explanation.
  function matches(i, term, text) {
    var id = term.charAt(0) === "#" ? term.slice(1) : term;
    if (/^\d+$/.test(id) && X.id[i] === +id) return true;
    return term.charAt(0) !== "#" && text.indexOf(term) >= 0;
  }
  function filter() {
    var terms = search.value.toLowerCase().split(/\s+/).filter(Boolean), d = dict.value;
    var lo = parseFloat(dmin.value), hi = parseFloat(dmax.value), text = terms.length ? haystack() : null;
    var onlyUnexplained = unexpl && unexpl.checked;
    shown = [];
    for (var i = 0; i < n; i++) {
      if (d !== "" && X.d[i] !== +d) continue;
      if (onlyUnexplained && expl[i] !== undefined) continue;
      if (X.density[i] === null) {  // imported NeuronRecords: no density, so outside any density range
        if (!isNaN(lo) || !isNaN(hi)) continue;
      } else {
        var pct = X.density[i] * 100;
        if (pct < lo || pct > hi) continue;
      }
      var ok = true;
      for (var t = 0; ok && t < terms.length; t++) ok = matches(i, terms[t], text[i]);
      if (ok) shown.push(i);
    }
    sortRows();
    drawHeads();
  }
  function sortRows() {
    if (sortKey) {
      var key = KEYS[sortKey], keys = new Array(n);
      shown.forEach(function (i) { keys[i] = key(i); });
      shown.sort(function (a, b) {
        var ka = keys[a], kb = keys[b];
        if (ka === null || kb === null) return ka === kb ? a - b : ka === null ? 1 : -1;  // none: last
        return (ka < kb ? -1 : ka > kb ? 1 : a - b) * sortDir;
      });
    }
    page = 0;
    draw();
  }
  function percent(x) { return Number((x * 100).toPrecision(3)) + "%"; }
  function row(i) {
    var tr = el("tr"), link = el("a", "", String(X.id[i])), toks = el("td");
    link.href = "features/" + X.d[i] + "/" + X.id[i] + ".html";
    tr.appendChild(el("td")).appendChild(link);
    tr.appendChild(el("td", "", X.dicts[X.d[i]]));
    var none = X.density[i] === null;
    tr.appendChild(el("td", dead[i] || none ? "muted" : "", dead[i] ? "dead" : none ? "–" : percent(X.density[i])))
      .title = none ? "imported NeuronRecord: the file has no density" : "";
    var max = tr.appendChild(el("td", "", X.max[i] === null ? "–" : String(X.max[i])));
    if (none) max.title = "the largest value in any record of the file";
    X.top[i].forEach(function (t) { toks.appendChild(el("code", "", X.tokens[t])); });
    tr.appendChild(toks);
    tr.appendChild(el("td", "expl", expl[i] || ""));
    tr.appendChild(el("td", "sc", escore[i] == null ? "" : String(+escore[i].toPrecision(3))));
    tr.appendChild(el("td", "", notes[i] || ""));
    return tr;
  }
  function draw() {
    var start = page * PAGE, end = Math.min(start + PAGE, shown.length), frag = document.createDocumentFragment();
    for (var k = start; k < end; k++) frag.appendChild(row(shown[k]));
    body.textContent = "";
    body.appendChild(frag);
    count.textContent = shown.length.toLocaleString("en") + " of " + n.toLocaleString("en") + " features";
    $("page").textContent = shown.length ? "rows " + (start + 1) + "\u2013" + end : "no matches";
    prev.disabled = page === 0;
    next.disabled = end >= shown.length;
  }

  // Attention heads: every head of the chosen dictionary (all without one), sorted by a column.
  var H = X.heads, hbody = $("head-rows"), hKey = null, hDir = 1;
  function drawHeads() {
    if (!hbody || !H) return;
    var d = dict.value, rows = [], frag = document.createDocumentFragment();
    for (var i = 0; i < H.id.length; i++) if (d === "" || H.d[i] === +d) rows.push(i);
    if (hKey) {
      var col = H[hKey];
      rows.sort(function (a, b) { return (col[a] < col[b] ? -1 : col[a] > col[b] ? 1 : a - b) * hDir; });
    }
    rows.forEach(function (i) {
      var tr = el("tr"), link = el("a", "", String(H.head[i]));
      link.href = "features/" + H.d[i] + "/" + H.id[i] + ".html";
      tr.appendChild(el("td", "", X.dicts[H.d[i]]));
      tr.appendChild(el("td", "", String(H.layer[i])));
      tr.appendChild(el("td")).appendChild(link);
      tr.appendChild(el("td", "", String(H.entropy[i])));
      ["first", "previous", "self"].forEach(function (k) { tr.appendChild(el("td", "", percent(H[k][i]))); });
      tr.appendChild(el("td", "", String(H.write[i])));
      frag.appendChild(tr);
    });
    hbody.textContent = "";
    hbody.appendChild(frag);
    $("hcount").textContent = rows.length + " of " + H.id.length + " heads";
  }
  Array.prototype.forEach.call(document.querySelectorAll("th[data-hsort]"), function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-hsort");
      hDir = key === hKey ? -hDir : +(th.getAttribute("data-first") || 1);
      hKey = key;
      sitegenDom.sorted(th, hDir);
      drawHeads();
    });
  });

  search.addEventListener("input", filter);
  dict.addEventListener("change", filter);
  dmin.addEventListener("input", filter);
  dmax.addEventListener("input", filter);
  if (unexpl) unexpl.addEventListener("change", filter);
  search.form.addEventListener("submit", function (e) { e.preventDefault(); });
  prev.addEventListener("click", function () { page--; draw(); });
  next.addEventListener("click", function () { page++; draw(); });
  Array.prototype.forEach.call(document.querySelectorAll("th[data-sort]"), function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-sort");
      sortDir = key === sortKey ? -sortDir : +(th.getAttribute("data-first") || 1);
      sortKey = key;
      sitegenDom.sorted(th, sortDir);
      sortRows();
    });
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "/" && !/^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) {
      e.preventDefault();
      search.focus();
    }
  });
  function focusOnHash() {
    var m = /^#dict-(\d+)$/.exec(location.hash);
    if (location.hash === "#search") search.focus();
    if (m && +m[1] < X.dicts.length) {
      dict.value = m[1];
      filter();
    }
  }
  window.addEventListener("hashchange", focusOnHash);
  filter();
  focusOnHash();
  performance.mark("sitegen-index-drawn");
})();
