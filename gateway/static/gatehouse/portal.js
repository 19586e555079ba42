/* Gatehouse portal: live regions. Pages work without this script; with it, a region marked
 * data-live-region re-fetches its server-rendered partial (read through the scoped selectors
 * again) when the live socket (live.js) reports a change it cares about, and every region
 * re-fetches on resync. Nothing from a socket message is ever rendered: messages carry ids only. */
(function () {
  "use strict";

  function regions() { return Array.prototype.slice.call(document.querySelectorAll("[data-live-region]")); }

  function setBanner(text, cls) {
    /* Colours come from a class (portal.css): the Content-Security-Policy allows no inline style. */
    document.querySelectorAll("[data-banner]").forEach(function (b) {
      b.textContent = text;
      Array.prototype.slice.call(b.classList).forEach(function (c) {
        if (/^banner-[0-9a-f]{6}$/.test(c)) { b.classList.remove(c); }
      });
      if (/^banner-[0-9a-f]{6}$/.test(cls || "")) { b.classList.add(cls); }
    });
    document.title = document.title.replace(/ \[[^\]]*\]$/, "") + " [" + text + "]";
  }

  var busy = new Set(), again = new Set();

  function refresh(region) {
    if (busy.has(region)) { again.add(region); return; }
    busy.add(region);
    fetch(region.getAttribute("data-src"), {
      credentials: "same-origin", cache: "no-store", redirect: "manual",
      headers: { "X-Requested-With": "fetch", "Accept": "text/html" }
    }).then(function (r) {
      if (r.status === 401 || r.type === "opaqueredirect") { window.location.reload(); return null; }
      if (r.status === 404) { gone(region); return null; }
      if (!r.ok) { return null; }
      return r.text().then(function (html) { swap(region, html); });
    }).catch(function () { /* the next resync fetches again */ }).then(function () {
      busy.delete(region);
      if (again.delete(region) && document.body.contains(region)) { refresh(region); }
    });
  }

  function swap(region, html) {
    var active = document.activeElement;
    var focusId = active && region.contains(active) ? active.id : "";
    region.innerHTML = html; /* server-rendered, escaped by the template engine */
    var b = region.querySelector("[data-region-banner]");
    if (b) { setBanner(b.getAttribute("data-text"), b.getAttribute("data-class")); }
    if (focusId && document.getElementById(focusId)) { document.getElementById(focusId).focus(); }
    var gateState = region.querySelector("[data-gate-state]");
    if (gateState && gateState.getAttribute("data-gate-state") !== "OPEN") {
      document.querySelectorAll("[data-decision-form]").forEach(function (f) { f.remove(); });
    }
    region.dispatchEvent(new CustomEvent("gatehouse:region-updated", { bubbles: true }));
  }

  function gone(region) {
    /* The viewer may no longer see what this page shows (decided elsewhere and out of scope, a
     * clearance lowered): drop all of it, not only the region, and lower the banner. */
    var main = document.getElementById("main");
    var message = region.getAttribute("data-gone-message") || "This is no longer available to you.";
    var back = region.getAttribute("data-gone-link") || "/";
    main.textContent = "";
    document.title = "No longer available - Gatehouse";
    var p = document.createElement("p");
    p.className = "msg"; p.setAttribute("role", "status"); p.textContent = message;
    var a = document.createElement("a");
    a.href = back; a.textContent = "Back";
    main.appendChild(p); main.appendChild(a);
    setBanner(document.body.getAttribute("data-floor-text"), document.body.getAttribute("data-floor-class"));
  }

  function wants(region, msg) {
    var types = (region.getAttribute("data-live-on") || "").split(/\s+/);
    if (types.indexOf(msg.type) < 0) { return false; }
    var run = region.getAttribute("data-live-run"), gate = region.getAttribute("data-live-gate");
    if (run && msg.run && msg.run !== run) { return false; }
    if (gate && msg.gate && msg.gate !== gate) { return false; }
    return true;
  }

  document.addEventListener("gatehouse:live", function (event) {
    var msg = event.detail || {};
    regions().forEach(function (region) {
      if (msg.type === "resync" || wants(region, msg)) { refresh(region); }
    });
  });
  document.addEventListener("gatehouse:resync", function () { regions().forEach(refresh); });

  /* Polled regions (an export's progress; no live message carries it): re-fetch the partial every
   * data-poll-seconds while it holds [data-poll-continue], then stop. */
  function poll(region) {
    var seconds = parseFloat(region.getAttribute("data-poll-seconds")) || 1.5;
    window.setTimeout(function () {
      fetch(region.getAttribute("data-poll-src"), {
        credentials: "same-origin", cache: "no-store", redirect: "manual",
        headers: { "X-Requested-With": "fetch", "Accept": "text/html" }
      }).then(function (r) {
        if (r.status === 401 || r.type === "opaqueredirect") { window.location.reload(); return null; }
        if (r.status === 404) { gone(region); return null; }
        if (!r.ok) { poll(region); return null; }
        return r.text().then(function (html) {
          region.innerHTML = html; /* server-rendered, escaped by the template engine */
          if (region.querySelector("[data-poll-continue]")) { poll(region); }
        });
      }).catch(function () { poll(region); });
    }, seconds * 1000);
  }

  function startPolling() {
    document.querySelectorAll("[data-poll-src]").forEach(function (region) {
      if (region.querySelector("[data-poll-continue]")) { poll(region); }
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", startPolling); }
  else { startPolling(); }
})();
