/* Live updates for the portal pages.
 *
 * Opens the authenticated websocket /ws/live/ (the session cookie goes with it), reconnects with
 * exponential back-off (capped at about 10 s) and dispatches DOM events on `document`:
 *   "gatehouse:live"    event.detail = the server's message, e.g.
 *                       {"type": "gate.opened", "gate": "<uuid>", "run": "<uuid>"}
 *   "gatehouse:resync"  after every (re)connect, and whenever the server sends {"type": "resync"}:
 *                       the page re-fetches what it shows from the API.
 * It renders nothing itself. Messages carry ids and states only.
 * A socket closed with 4403 (no access) is not reopened; 4401 (not signed in) is retried slowly,
 * since the page's own requests may renew the session meanwhile.
 */
(function () {
  "use strict";
  if (window.gatehouseLive) { return; }
  var MIN_DELAY = 500, MAX_DELAY = 10000;
  var delay = MIN_DELAY, socket = null, timer = null, stopped = false;

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail: detail }));
  }

  function url() {
    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + "/ws/live/";
  }

  function schedule(wait) {
    if (stopped || timer !== null) { return; }
    // Jitter spreads the reconnects of many pages after a server restart.
    var jittered = wait / 2 + Math.random() * wait / 2;
    timer = window.setTimeout(function () { timer = null; connect(); }, jittered);
  }

  function connect() {
    if (stopped) { return; }
    try {
      socket = new WebSocket(url());
    } catch (err) {
      schedule(delay);
      delay = Math.min(delay * 2, MAX_DELAY);
      return;
    }
    socket.onopen = function () {
      delay = MIN_DELAY;
      emit("gatehouse:resync", { reason: "connect" });
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (err) { return; }
      if (!message || typeof message.type !== "string") { return; }
      if (message.type === "resync") {
        emit("gatehouse:resync", { reason: "server" });
        return;
      }
      emit("gatehouse:live", message);
    };
    socket.onclose = function (event) {
      socket = null;
      if (event.code === 4403) { stopped = true; return; }
      var wait = event.code === 4401 ? MAX_DELAY : delay;
      schedule(wait);
      delay = Math.min(delay * 2, MAX_DELAY);
    };
  }

  window.gatehouseLive = {
    stop: function () {
      stopped = true;
      if (timer !== null) { window.clearTimeout(timer); timer = null; }
      if (socket !== null) { socket.close(1000); }
    }
  };
  // A page restored from the back/forward cache has a closed socket: reconnect.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted && socket === null && !stopped) { delay = MIN_DELAY; connect(); }
  });
  connect();
})();
