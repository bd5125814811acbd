// edgeshot dashboards: refresh the page's content in place (no library, no CDN).
// The session cookie is HttpOnly: this script never sees a token; it asks the same URL
// with fragment=1 and swaps the answer into <main>.
(function () {
  "use strict";
  var main = document.getElementById("content");
  if (!main || !main.dataset.refresh) { return; }
  var every = Math.max(2, parseInt(main.dataset.refresh, 10) || 30) * 1000;
  var busy = false;

  function fragmentUrl() {
    var u = new URL(window.location.href);
    u.searchParams.set("fragment", "1");
    return u.toString();
  }

  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(fragmentUrl(), { credentials: "same-origin", cache: "no-store",
                           headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/dash/login"); return null; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        main.innerHTML = html;
        main.classList.remove("stale");
        main.dataset.refreshed = String(Date.now());
      })
      .catch(function () { main.classList.add("stale"); })
      .then(function () { busy = false; });
  }

  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { refresh(); } });
}());
