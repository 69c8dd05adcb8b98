// sitegen 404 page: a host may serve it at any missing URL, so point its links
// at the site root: the part of the path before "/features/", if any.
(function () {
  "use strict";
  var cut = location.pathname.indexOf("/features/");
  if (cut < 0) return;
  var root = location.pathname.slice(0, cut + 1);
  Array.prototype.forEach.call(document.querySelectorAll("a[href]"), function (a) {
    var href = a.getAttribute("href");
    if (!/^[a-z]+:|^[\/#]/i.test(href)) a.setAttribute("href", root + href);
  });
})();
