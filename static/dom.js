// sitegen's page helpers, inlined before each page's own script (feature, head and prompt pages):
// elements whose text is set with textContent only, SVG elements, tables, numbers, and the 24-bit floats
// of sitegen/render/embed.py packed_floats.
var sitegenDom = (function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
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
  return {NS: NS, el: el, svg: svg, table: table, signed: signed, signClass: signClass, floats24: floats24};
})();
