// sitegen's page helpers, inlined before each page's own script (feature, head, prompt and imported-
// NeuronRecord pages, and the index): elements whose text is set with textContent only, SVG elements,
// tables, numbers, the 24-bit floats of sitegen/render/embed.py packed_floats, the tooltip's
// placement, sortable headers and the pager keys.
var sitegenDom = (function () {
  "use strict";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, parent) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    parent.appendChild(e);
    return e;
  }
  function table(rows) {  // the first row is the header; a cell is text or an element
    var t = el("table", "tbl");
    rows.forEach(function (r, i) {
      var tr = t.appendChild(el("tr"));
      r.forEach(function (x) {
        var cell = tr.appendChild(el(i ? "td" : "th"));
        if (x && x.nodeType) cell.appendChild(x); else cell.textContent = x;
      });
    });
    return t;
  }
  function r4(x) { return +x.toPrecision(4); }
  function signed(x) { return (x > 0 ? "+" : "") + x; }
  function signClass(x) { return x > 0 ? "pos" : x < 0 ? "neg" : ""; }
  function floats24(s) {  // base64 of big-endian 24-bit floats (float32 less its low byte)
    var b = atob(s), v = new DataView(new ArrayBuffer(4)), out = [];
    for (var i = 0; i + 2 < b.length; i += 3) {
      v.setUint32(0, (b.charCodeAt(i) << 24 | b.charCodeAt(i + 1) << 16 | b.charCodeAt(i + 2) << 8) >>> 0);
      out.push(v.getFloat32(0));
    }
    return out;
  }
  // Shows the tooltip below target, or above it where it would overflow the window's bottom, its
  // left edge at target's, both kept 4px inside the window.
  function place(tip, target) {
    tip.style.left = tip.style.top = "0";
    tip.hidden = false;
    var r = target.getBoundingClientRect(), below = r.bottom + 6;
    var top = below + tip.offsetHeight > innerHeight ? r.top - tip.offsetHeight - 6 : below;
    tip.style.left = Math.max(4, Math.min(r.left, innerWidth - tip.offsetWidth - 8)) + "px";
    tip.style.top = Math.max(4, top) + "px";
  }
  function sorted(th, dir) {  // marks th as its table's sort column (dir > 0: ascending)
    Array.prototype.forEach.call(th.parentNode.children, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
  }
  // The pager's keys (components/pager.html): ← and → open the previous and next built page
  // (nav: [id or null, id or null]), / the index's search; not in a form field, nor with a modifier,
  // nor where own(e), the page's own handling of the key, returns true.
  function pagerKeys(nav, own) {
    document.addEventListener("keydown", function (e) {
      if (e.altKey || e.ctrlKey || e.metaKey || /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
      if (own && own(e)) return;
      var to = e.key === "ArrowLeft" ? nav[0] : e.key === "ArrowRight" ? nav[1] : null;
      if (to != null) {
        location.href = to + ".html";
      } else if (e.key === "/") {
        e.preventDefault();
        location.href = "../../index.html#search";
      }
    });
  }
  return {el: el, svg: svg, table: table, r4: r4, signed: signed, signClass: signClass, floats24: floats24,
    place: place, sorted: sorted, pagerKeys: pagerKeys};
})();
