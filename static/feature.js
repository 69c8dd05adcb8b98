// sitegen feature page: draws the examples and histograms from the page's JSON
// (schema in sitegen/render/feature_page.py), shows a token's numbers on hover,
// and navigates with the keyboard.
(function () {
  "use strict";
  var el = sitegenDom.el, svg = sitegenDom.svg, signed = sitegenDom.signed, signClass = sitegenDom.signClass;
  var floats24 = sitegenDom.floats24, r4 = sitegenDom.r4;
  var D = JSON.parse(document.getElementById("data").textContent);
  var T = D.tokens, maxAct = D.max_act, minAct = 0, maxLoss = 0;

  // Every example becomes ex[4] = activation per token, ex[5] = {offset: {loss, up: [token
  // indexes, changes], down: [...]}}, from either hover encoding (feature_page.py).
  // Direct hovers: the changes are affine in u, through (lowest u, r[2]) and (highest u, r[3]);
  // each is known to 2^-16 of the larger end, so shown to no more decimals than that.
  function changes(side, r) {
    var big = Math.max(Math.abs(r[2]), Math.abs(r[3])), places = big ? Math.floor(4.82 - Math.log10(big)) : 0;
    return [side[0], side[1].map(function (u) {
      return shownChange(r[2] + (u - uMin) / (uMax - uMin || 1) * (r[3] - r[2]), Math.min(Math.max(places, 0), 100));
    })];
  }
  // v to 4 significant digits but at most `places` (0..100) decimals, whichever is coarser, rounded
  // once from the double v: toPrecision and toFixed round its exact binary value, halves away from
  // 0 (ECMA-262). Rounding to `places` first, then to 4 digits, rounded twice (-1.15554 -> -1.155).
  function shownChange(v, places) {
    var e = v ? +v.toExponential().split("e")[1] : 0;  // v's decimal exponent
    return +(e + places >= 3 ? v.toPrecision(4) : v.toFixed(places));
  }
  function listed(a) {  // [offset, act, loss, list, changes..., list, changes...]
    var up = D.lists[a[3]], at = 4 + up.length, down = D.lists[a[at]];
    return {loss: a[2], up: [up, a.slice(4, at)], down: [down, a.slice(at + 1, at + 1 + down.length)]};
  }
  var R = D.h ? floats24(D.h) : null, at = 0, seen = {}, B = D.basis, half = B ? B[0].length / 2 : 0;
  var low = B && [B[0].slice(0, half), B[1].slice(0, half)], high = B && [B[0].slice(half), B[1].slice(half)];
  var uMin = B && B[1][0], uMax = B && B[1][half];
  D.groups.forEach(function (g) {
    g.forEach(function (ex) {
      var acts = ex[3].map(function () { return 0; }), hovers = {};
      (ex.length > 4 ? ex[4] : ex[3].map(function (t, k) { return k; })).forEach(function (a) {
        var k = R ? a : a[0], h = null;
        if (R) {  // one record per (sequence, position), in order of first appearance
          var key = ex[0] + ":" + (ex[2] + k), rec = seen[key];
          if (!rec) {
            var r = R.slice(at, at + 4), up = r[2] > r[3] ? low : high;  // r[2] > r[3]: coef > 0
            at += 4;
            rec = seen[key] = [r4(r[0]), r[1] === r[1] ? {loss: r4(r[1]), up: changes(up, r),
              down: changes(up === low ? high : low, r)} : null];
          }
          acts[k] = rec[0];
          h = rec[1];
        } else {
          acts[k] = a[1];
          if (a.length > 2) h = listed(a);
        }
        minAct = Math.min(minAct, acts[k]);
        if (h) {
          hovers[k] = h;
          maxLoss = Math.max(maxLoss, Math.abs(h.loss));
        }
      });
      ex[4] = acts;
      ex[5] = hovers;
    });
  });


  // Bars of a histogram [edges, counts] in an SVG of 300 x 96; returns value -> x.
  function histogram(box, h, unit, colour) {
    var edges = h[0], counts = h[1], n = counts.length, W = 300, H = 82;
    if (!box || !n) return null;
    var lo = edges[0], hi = edges[n], cmax = Math.max.apply(null, counts) || 1;
    var x = function (v) { return (v - lo) / (hi - lo || 1) * W; };
    for (var i = 0; i < n; i++) {
      var bh = counts[i] / cmax * (H - 6), w = x(edges[i + 1]) - x(edges[i]);
      var bar = svg("rect", {x: x(edges[i]), y: H - bh, width: Math.max(w - 0.6, 0.6), height: bh,
        fill: colour((edges[i] + edges[i + 1]) / 2)}, box);
      svg("title", {}, bar).textContent = unit + " (" + edges[i] + ", " + edges[i + 1] + "]: " + counts[i];
    }
    svg("text", {x: 0, y: 94}, box).textContent = lo;
    svg("text", {x: W, y: 94, "text-anchor": "end"}, box).textContent = hi;
    if (lo < 0 && hi > 0) svg("text", {x: x(0), y: 94, "text-anchor": "middle"}, box).textContent = 0;
    svg("text", {x: 2, y: 9}, box).textContent = "max count " + cmax;
    return x;
  }
  var actBox = document.getElementById("act-hist");
  var actX = histogram(actBox, D.act_hist, "activation", function () { return "#f59e0b"; });
  histogram(document.getElementById("logit-hist"), D.logit_hist, "logit effect",
    function (v) { return v < 0 ? "#e06666" : "#6d9eeb"; });
  var marker = actX && svg("line", {y1: 0, y2: 82, stroke: "#1f2328", "stroke-width": 1.5, visibility: "hidden"},
    actBox);

  function actColour(a) {
    if (a > 0 && maxAct > 0) return "rgba(255,140,0," + (0.85 * Math.min(a / maxAct, 1)).toFixed(3) + ")";
    if (a < 0) return "rgba(70,130,230," + (0.85 * a / minAct).toFixed(3) + ")";
    return "";
  }
  function lossColour(loss) {
    var s = maxLoss ? Math.abs(loss) / maxLoss : 0;
    if (s < 0.04) return "";
    return (loss > 0 ? "rgba(26,86,196," : "rgba(198,40,40,") + (0.25 + 0.75 * s).toFixed(3) + ")";
  }

  // One line of tokens per example; each span holds the index of its record [example, offset].
  var recs = [];
  Array.prototype.forEach.call(document.querySelectorAll(".ex-group"), function (box) {
    var top = box.getAttribute("data-group") === "0";
    D.groups[+box.getAttribute("data-group")].forEach(function (ex, n) {
      var line = el("div", "ex");
      if (top && D.splits && D.splits[n]) {
        line.appendChild(el("span", "split", D.splits[n])).title = "this sequence's split in the NeuronRecord export " +
          "(neuron-explainer: train for writing explanations, calibration / valid / test held out)";
      }
      ex[3].forEach(function (ti, k) {
        var s = el("span", ex[2] + k === ex[1] ? "t sel" : "t", T[ti]), h = ex[5][k];
        s.style.backgroundColor = actColour(ex[4][k]);
        if (h) s.style.borderBottomColor = lossColour(h.loss);
        s.setAttribute("data-r", recs.length);
        recs.push([ex, k]);
        line.appendChild(s);
      });
      box.appendChild(line);
    });
  });

  var tip = document.getElementById("tip");
  function changesTable(h) {
    var t = el("table", "tbl"), head = el("tr"), rows = Math.max(h.up[0].length, h.down[0].length);
    head.appendChild(el("th", "", "removing it raises log-prob of")).colSpan = 2;
    head.appendChild(el("th", "", "lowers log-prob of")).colSpan = 2;
    t.appendChild(head);
    for (var i = 0; i < rows; i++) {
      var tr = t.appendChild(el("tr"));
      [h.up, h.down].forEach(function (side) {
        var has = i < side[0].length, v = side[1][i];
        tr.appendChild(el("td")).appendChild(el("code", "", has ? T[side[0][i]] : ""));
        tr.appendChild(el("td", has ? signClass(v) : "", has ? signed(v) : ""));
      });
    }
    return t;
  }
  function line(label, value, cls, note) {
    var p = el("p");
    p.append(label + ": ", el("b", cls, value), " ", el("small", "", note));
    return p;
  }
  function showTip(span) {
    var r = recs[+span.getAttribute("data-r")], ex = r[0], k = r[1], h = ex[5][k], a = ex[4][k];
    tip.textContent = "";
    tip.appendChild(el("code", "", T[ex[3][k]]));
    tip.appendChild(line("activation", String(a), "",
      maxAct > 0 ? "(" + Math.round(a / maxAct * 100) + "% of the max, " + maxAct + ")" : ""));
    if (h) {
      tip.appendChild(line("loss effect", signed(h.loss), signClass(h.loss),
        "change in next-token loss when this feature is removed at this position" +
        (h.loss > 0 ? " (> 0: the feature helps here)" : h.loss < 0 ? " (< 0: the feature hurts here)" : "")));
      tip.appendChild(changesTable(h));
    } else {
      tip.appendChild(el("p", "small muted", a ? "no loss effect recorded at this position" :
        "no loss effect: the activation is 0 here"));
    }
    tip.appendChild(el("p", "small muted", "sequence " + ex[0] + ", position " + (ex[2] + k)));
    sitegenDom.place(tip, span);
    if (marker && a !== 0) {
      marker.setAttribute("x1", actX(a));
      marker.setAttribute("x2", actX(a));
      marker.setAttribute("visibility", "visible");
    }
  }
  function hideTip() {
    tip.hidden = true;
    if (marker) marker.setAttribute("visibility", "hidden");
  }
  document.addEventListener("mouseover", function (e) {
    var s = e.target.closest && e.target.closest(".t[data-r]");
    if (s) showTip(s); else hideTip();
  });

  sitegenDom.pagerKeys(D.nav);
})();
