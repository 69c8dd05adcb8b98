// sitegen imported-NeuronRecord page: draws the records from the page's JSON (schema in
// sitegen/render/record_page.py), shades each token by its value, and shows a token's numbers
// (for token-pair records, the keys it reads most) on hover, tap or focus.
(function () {
  "use strict";
  var el = sitegenDom.el;
  var D = JSON.parse(document.getElementById("data").textContent), T = D.tokens;
  var tip = document.getElementById("tip");
  function fmt(x) { return String(sitegenDom.r4(+x)); }
  function shade(v) { return D.scale > 0 && v > 0 ? "rgba(255,140,0," + (0.85 * Math.min(v / D.scale, 1)).toFixed(3) + ")" : ""; }
  function keys(rec, q) {  // the query q's scalars over keys 0..q, largest first (top 3)
    var start = q * (q + 1) / 2, out = [];
    for (var k = 0; k <= q; k++) out.push([k, rec[3][start + k]]);
    return out.sort(function (a, b) { return b[1] - a[1] || a[0] - b[0]; }).slice(0, 3);
  }
  function show(span) {
    var rec = span.rec, k = span.k;
    tip.textContent = "";
    tip.appendChild(el("p")).appendChild(el("b", "", T[rec[0][k]]));
    tip.appendChild(el("p", "", "position " + k + " · " + (D.pairs ? "largest pair scalar " : "activation ") + fmt(rec[1][k])));
    if (D.pairs && rec[3]) keys(rec, k).forEach(function (p) {
      tip.appendChild(el("p", "small", "reads key " + p[0] + " (" + T[rec[0][p[0]]] + "): " + fmt(p[1])));
    });
    sitegenDom.place(tip, span);
  }
  function hide() { tip.hidden = true; }
  Array.prototype.forEach.call(document.querySelectorAll(".recs"), function (box) {
    D.groups[+box.getAttribute("data-group")].forEach(function (rec) {
      var line = el("div", "ex"), best = 0;
      rec[1].forEach(function (v, k) { if (v > rec[1][best]) best = k; });
      if (rec[2]) line.appendChild(el("span", "split", rec[2])).title = "this record's split (neuron-explainer: " +
        "train for writing explanations, calibration / valid / test held out)";
      rec[0].forEach(function (t, k) {
        var s = el("span", k === best ? "t sel" : "t", T[t]);
        s.style.backgroundColor = shade(rec[1][k]);
        s.tabIndex = 0;
        s.rec = rec;
        s.k = k;
        ["mouseenter", "focus"].forEach(function (e) { s.addEventListener(e, function () { show(s); }); });
        ["mouseleave", "blur"].forEach(function (e) { s.addEventListener(e, hide); });
        s.addEventListener("click", function () { show(s); });
        line.appendChild(s);
      });
      box.appendChild(line);
    });
  });
  sitegenDom.pagerKeys(D.nav);
})();
