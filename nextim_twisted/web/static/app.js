/*
 * NextIM browser client for nextim-twisted.
 *
 * Plain ES2019, no framework, no build step. The daemon serves this file at
 * /static/app.js; the page at / starts it automatically (same-origin mode,
 * login form). A site on another origin embeds it with
 *
 *     <script src="http://daemon:8000/static/app.js"></script>
 *     NextIM.start({server: "http://daemon:8000", jsonp: true, token: "<jwt>"})
 *
 * The file has two parts:
 *
 *  1. NextimClient: the protocol client. Transport (plain fetch or JSONP
 *     calls to webim/*), the comet channel (a WebSocket when the daemon
 *     offers one, else the long poll; seq/ack, backoff, a lost session),
 *     the model (buddies, rooms, presences, conversations, unread counts)
 *     and events. It never touches `document` or `window`: the browser's
 *     primitives (fetch, <script> insertion, timers, storage) are injected,
 *     so Node can load it (module.exports at the end) and test it with
 *     fakes. See docs/client.md#how-the-client-is-built.
 *  2. The view (NextIM.start): DOM rendering of the client's state, and the
 *     browser glue that builds the transport, timers and storage.
 *
 * Rules kept throughout:
 *  - everything that comes from the server is put into the page as text
 *    (textContent / createTextNode), never as HTML. The one exception is
 *    the admin-written notification text, which goes through sanitizeHtml();
 *  - the comet poll acknowledges what it has processed (`ack`,
 *    docs/design.md#d6-comet-envelope), so a lost answer is sent again
 *    instead of being lost;
 *  - errors never stop the client: polls retry with backoff and jitter, and a
 *    vanished ticket (404) leads to a fresh `online`.
 */

// =============================================================================
// Part 1: the protocol client (no DOM)
// =============================================================================

var NextimClient = (function () {
  "use strict";

  // ---------------------------------------------------------------------------
  // Timing (ms). The server's own timers are in docs/design.md#d5-timers.

  var TIMING = {
    CALL_TIMEOUT_MS: 15000,     // plain fetch calls
    JSONP_TIMEOUT_MS: 10000,    // JSONP calls: a slow network must not fail them
    POLL_TIMEOUT_MS: 40000,     // the server holds a poll up to 25 s
    POLL_GAP_MS: 50,            // pause between two successful polls
    STOPPED_GAP_MS: 200,        // after "stopped" or an odd answer: never a tight loop
    POLL_HELD_MS: 1500,         // a poll held this long means the server is there
    TYPING_IDLE_MS: 6000,       // send "clear" after this long without keys
    TYPING_SHOW_MS: 10000,      // show "X is typing" at most this long
    BACKOFF_BASE_MS: 1000,
    BACKOFF_MAX_MS: 30000,
    RECONNECT_SPREAD_MS: 4000,  // a lost session goes online again after 0..this (a restart's herd spreads)
    SEND_ATTEMPTS: 5,           // a message is sent again after a network error, this many times in all
    ROOM_COUNTS_DELAY_MS: 800,  // coalesce presence changes into one members call
    ROOM_REFRESH_MS: 60000,     // room counts have no push; refresh now and then
    // A socket sends `ack <N>` at most this often (and before it closes), or at once when
    // WS_ACK_AFTER packets are unacknowledged. Acks are what the server parses most: at
    // 10 000 users one a second per socket cost 8-11 % of its core (docs/benchmarks.md#websocket);
    // what an ack that comes later costs is a longer resend after a drop, dropped here by seq.
    WS_ACK_INTERVAL_MS: 5000,
    WS_ACK_AFTER: 100,          // well under [limits] queue_packets (1000 by default)
    WS_CONNECT_MS: 10000,       // a socket that has not subscribed by then failed (a proxy that holds the upgrade)
    WS_FAILURES: 3,             // sockets in a row closed before subscribing: use the long poll instead
    WS_CALL_MAX_BYTES: 8000     // a call frame that may be larger goes over HTTP ([limits] max_body_bytes is unknown here)
  };

  /** The calls that go over a subscribed WebSocket (docs/design.md#d21-websocket);
   *  the others, and these when there is no socket, go over HTTP. */
  var SOCKET_CALLS = ["message", "status"];

  var DEFAULT_SETTING = {
    play_sound: true,
    buddy_sticky: true,
    minimize_layout: false,
    msg_auto_pop: true,
    blocked_rooms: []
  };

  function defaultSetting() {
    return Object.assign({}, DEFAULT_SETTING, { blocked_rooms: [] });
  }

  var NOTIFICATIONS_KEPT = 20;
  var PACKET_LOG_SIZE = 100;

  // ---------------------------------------------------------------------------
  // Pure helpers

  /** Exponential backoff with jitter (ms) for the n-th failure in a row
   *  (n >= 1): a random value between half and all of min(30 s, 1 s * 2^(n-1)).
   *  A fleet of clients that lost the server at the same moment must not come
   *  back at the same moment. random: () -> [0, 1), default Math.random. */
  function backoffDelay(failures, random) {
    var r = (random || Math.random)();
    var cap = Math.min(TIMING.BACKOFF_MAX_MS, TIMING.BACKOFF_BASE_MS * Math.pow(2, Math.max(0, failures - 1)));
    return Math.round(cap / 2 + r * cap / 2);
  }

  /** A fresh client_id for a message (docs/design.md#d17-idempotent-sends): the
   *  server stores one message per (sender, client_id), so resending after a lost
   *  answer cannot store it twice. Time and randomness in base 36, < 30 chars. */
  function newClientId(now, random) {
    var r = random || Math.random;
    return "c" + Math.floor(now).toString(36) + "-" + Math.floor(r() * 2176782336).toString(36) +
      Math.floor(r() * 2176782336).toString(36);
  }

  /** A network failure (no answer at all): the call may or may not have arrived,
   *  so a message is sent again with the same client_id. A refusal is final. */
  function isNetworkError(err) {
    return !!err && err.status === 0 && err.code !== "aborted" && err.code !== "bad_answer";
  }

  function csv(list) { return list.filter(Boolean).join(","); }

  function chatKey(type, id) { return type + ":" + id; }

  /** Later protocol versions call the two kinds of conversation chat and
   *  grpchat (docs/protocol.md#later-protocol-versions). */
  function normalizeType(t) {
    if (t === "chat") return "unicast";
    if (t === "grpchat") return "multicast";
    return t || "unicast";
  }

  /** What makes two messages the same one (history and live copies). */
  function msgKey(m) {
    // The storage id when the server gives one (docs/design.md#d17-idempotent-sends);
    // older servers: the content.
    if (m.id !== undefined && m.id !== null) return "id\u0001" + m.id;
    return [normalizeType(m.type), m.from, m.to, m.timestamp, m.body].join("\u0001");
  }

  /** A notification's time in ms: a number (s or ms), an ISO date, or a
   *  numeric string; 0 when unknown. */
  function notifTime(v) {
    if (typeof v === "number") return v < 1e12 ? v * 1000 : v;
    var p = Date.parse(v);
    if (isFinite(p)) return p;
    var f = parseFloat(v);
    return isFinite(f) ? (f < 1e12 ? f * 1000 : f) : 0;
  }

  /** Newest first, without duplicates (same time and text), at most 20.
   *  fresh: from webim/notifications; kept: the ones cached from before. */
  function mergeNotifications(fresh, kept) {
    var seen = {};
    var merged = [];
    (Array.isArray(fresh) ? fresh : []).filter(function (n) { return n && n.text; }).concat(kept || []).forEach(function (n) {
      var k = String(n.time) + "\u0001" + n.text;
      if (!seen[k]) { seen[k] = true; merged.push({ text: String(n.text), link: n.link || "", time: n.time }); }
    });
    merged.sort(function (a, b) { return notifTime(b.time) - notifTime(a.time); });
    return merged.slice(0, NOTIFICATIONS_KEPT);
  }

  // ---------------------------------------------------------------------------
  // Errors

  /** The error every transport rejects with. status: the HTTP status, 0 when
   *  unknown (network down, JSONP); code: the envelope's `error`
   *  (docs/design.md#d2-errors) or a local one: network, timeout, aborted,
   *  jsonp_error, bad_answer, http_<status>. */
  function ApiError(status, code, message) {
    var e = new Error(message || code || ("HTTP " + status));
    e.name = "ApiError";
    e.status = status;
    e.code = code || "";
    return e;
  }

  /** 401 in plain mode; under JSONP the status is 200 and only the code says it. */
  function isAuthError(err) {
    return err.status === 401 || /^(not_authenticated|invalid_token|token_expired|unauthorized)$/.test(err.code || "");
  }

  /** An answer that is the error envelope becomes an ApiError. */
  function checkEnvelope(data) {
    if (data && typeof data === "object" && !Array.isArray(data) && data.success === false) {
      throw ApiError(200, data.error || "error", data.error_msg || data.error || "Request failed");
    }
    return data;
  }

  function parseBody(text) {
    if (text === "ok") return "ok";
    try { return JSON.parse(text); } catch (e) { return text; }
  }

  // ---------------------------------------------------------------------------
  // Events

  /** A minimal event emitter: on(name, fn) -> off function; emit(name, ...). */
  function Emitter() { this._handlers = {}; }
  Emitter.prototype.on = function (name, fn) {
    var list = this._handlers[name] || (this._handlers[name] = []);
    list.push(fn);
    return function () { var i = list.indexOf(fn); if (i >= 0) list.splice(i, 1); };
  };
  Emitter.prototype.emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this._handlers[name] || []).slice().forEach(function (fn) { fn.apply(null, args); });
  };

  // ---------------------------------------------------------------------------
  // Injected environment: timers and storage

  /** The standard timer functions (present in browsers and Node). A test
   *  passes its own object with the same four functions and now(). */
  function systemTimers() {
    return {
      setTimeout: function (fn, ms) { return setTimeout(fn, ms); },
      clearTimeout: function (id) { clearTimeout(id); },
      setInterval: function (fn, ms) { return setInterval(fn, ms); },
      clearInterval: function (id) { clearInterval(id); },
      now: function () { return Date.now(); }
    };
  }

  /** Storage seam: get(key, fallback, kind) / set(key, value, kind), values
   *  JSON-able, value undefined removes; kind "session" is per tab, anything
   *  else per browser. This one keeps everything in memory. */
  function memoryStorage() {
    var data = { local: {}, session: {} };
    function area(kind) { return kind === "session" ? data.session : data.local; }
    return {
      data: data,
      get: function (key, fallback, kind) {
        var a = area(kind);
        return Object.prototype.hasOwnProperty.call(a, key) ? JSON.parse(a[key]) : fallback;
      },
      set: function (key, value, kind) {
        var a = area(kind);
        if (value === undefined) delete a[key]; else a[key] = JSON.stringify(value);
      }
    };
  }

  // ---------------------------------------------------------------------------
  // Transport: the seam between the client and the wire.
  //
  // Any transport is an object with
  //   call(name, params) -> Promise   webim/<name>; resolves with the parsed
  //                                   answer ("ok" or JSON), rejects ApiError
  //   poll(server, params, signal) -> Promise
  //                                   the comet source: one poll with
  //                                   {ticket, ack}; resolves with the comet
  //                                   envelope (docs/design.md#d6-comet-envelope)
  //   beacon(name, params)            fire and forget, survives page unload
  //   setToken(token)                 a fresh site token (token auth)
  //   base                            URL prefix of webim/ and packets
  //   openSocket(url) -> WebSocket    optional: a WebSocket-like object
  //                                   (send, close, readyState, onopen,
  //                                   onmessage, onclose); null or a throw
  //                                   when there is none. Without it the
  //                                   client always long-polls.
  //
  // HttpTransport speaks plain HTTP (fetch, POST form) or JSONP
  // (docs/design.md#d1-plain-and-jsonp). The browser's pieces come in `env`:
  //   fetch(url, init)                      window.fetch
  //   insertScript(src, onload, onerror)    add a <script>; returns remove()
  //   sendBeacon(url, URLSearchParams)      navigator.sendBeacon -> bool
  //   origin                                this page's origin (or null)
  //   resolve(url) -> absolute URL string   against the page's address
  //   callbacks, callbackPrefix             where JSONP answers call in
  //                                         (NextIM._cb, "NextIM._cb.")
  //   WebSocket                             the WebSocket constructor, or null
  //   timers                                as systemTimers()

  var jsonpSeq = Date.now() % 1000000;

  function HttpTransport(opts, env) {
    this.jsonp = !!opts.jsonp;
    this.token = opts.token || null;
    this.env = env;
    this.timers = env.timers || systemTimers();
    // Base for webim/<name>: the daemon's root. Relative in page mode so the
    // client also works behind a reverse proxy under a path prefix.
    var server = opts.server ? String(opts.server) : "";
    if (server && !/\/$/.test(server)) server += "/";
    this.base = server;
  }

  HttpTransport.prototype.url = function (name) { return this.base + "webim/" + name; };

  HttpTransport.prototype.setToken = function (token) { this.token = token; };

  /** The token proves who we are when there is no ticket yet (online,
   *  buddies before login...). Calls with a ticket do not send it: the ticket
   *  identifies the user (docs/design.md#d13-identity), and a site token that
   *  expired during a long visit must not break a live session. */
  HttpTransport.prototype.withToken = function (params) {
    var p = Object.assign({}, params);
    if (this.token && !p.ticket) p.token = this.token;
    Object.keys(p).forEach(function (k) { if (p[k] === undefined || p[k] === null) delete p[k]; });
    return p;
  };

  HttpTransport.prototype.call = function (name, params) {
    var p = this.withToken(params);
    if (this.jsonp) return this.jsonpRequest(this.url(name), p, TIMING.JSONP_TIMEOUT_MS).then(checkEnvelope);
    return this.fetchForm(this.url(name), p, TIMING.CALL_TIMEOUT_MS);
  };

  /** One comet poll. Same-origin servers get fetch (so a 404 is visible);
   *  another origin gets JSONP, like the 2010 client. */
  HttpTransport.prototype.poll = function (server, params, signal) {
    var sameOrigin = false;
    try { sameOrigin = !!this.env.origin && new URL(this.env.resolve(server)).origin === this.env.origin; } catch (e) { /* keep false */ }
    if (this.jsonp || !sameOrigin) {
      return this.jsonpRequest(server, params, TIMING.POLL_TIMEOUT_MS, signal);
    }
    var url = server + (server.indexOf("?") >= 0 ? "&" : "?") + new URLSearchParams(params).toString();
    return this.fetchJson(url, TIMING.POLL_TIMEOUT_MS, signal);
  };

  /** A WebSocket to `url` (connection.websocket of `online`), or null when
   *  the browser has none. Cookies and the site token are never used on it:
   *  the ticket in the subscribe frame is the credential
   *  (docs/design.md#d21-websocket). May throw (e.g. a ws:// URL from an
   *  https page), which the socket channel takes as "cannot connect". */
  HttpTransport.prototype.openSocket = function (url) {
    var Ctor = this.env.WebSocket;
    return Ctor ? new Ctor(url) : null;
  };

  HttpTransport.prototype.beacon = function (name, params) {
    var p = new URLSearchParams(this.withToken(params));
    var url = this.url(name);
    try {
      if (this.env.sendBeacon && this.env.sendBeacon(url, p)) return;
    } catch (e) { /* fall through to fetch */ }
    try {
      this.env.fetch(url, { method: "POST", body: p, keepalive: true, credentials: this.jsonp ? "omit" : "same-origin", mode: this.jsonp ? "no-cors" : "same-origin" });
    } catch (e) { /* page is going away; nothing more to do */ }
  };

  HttpTransport.prototype.withTimeout = function (ms, signal) {
    var timers = this.timers;
    var ctl = new AbortController();
    var timer = timers.setTimeout(function () { ctl.abort(); }, ms);
    if (signal) {
      if (signal.aborted) ctl.abort();
      else signal.addEventListener("abort", function () { ctl.abort(); });
    }
    return { signal: ctl.signal, done: function () { timers.clearTimeout(timer); } };
  };

  HttpTransport.prototype.fetchForm = function (url, params, timeoutMs) {
    var t = this.withTimeout(timeoutMs, null);
    return this.env.fetch(url, {
      method: "POST",
      body: new URLSearchParams(params),
      credentials: "same-origin",
      headers: { "X-Requested-With": "XMLHttpRequest" },
      signal: t.signal
    }).then(readResponse, networkError).finally(t.done);
  };

  HttpTransport.prototype.fetchJson = function (url, timeoutMs, signal) {
    var t = this.withTimeout(timeoutMs, signal);
    return this.env.fetch(url, { credentials: "same-origin", cache: "no-store", signal: t.signal })
      .then(readResponse, networkError).finally(t.done);
  };

  function readResponse(res) {
    return res.text().then(function (text) {
      var data = parseBody(text);
      if (!res.ok) {
        var env = data && typeof data === "object" ? data : {};
        throw ApiError(res.status, env.error || "http_" + res.status, env.error_msg || ("HTTP " + res.status));
      }
      return checkEnvelope(data);
    });
  }

  function networkError(err) {
    var e = ApiError(0, err && err.name === "AbortError" ? "timeout" : "network", "Cannot reach the server");
    e.cause = err;
    throw e;
  }

  /** JSONP: a <script> whose answer calls <callbackPrefix>j<N>(data). A
   *  script that fails to load (any HTTP error, network down) is an error
   *  whose status we cannot see; the comet loop treats it accordingly. */
  HttpTransport.prototype.jsonpRequest = function (url, params, timeoutMs, signal) {
    var env = this.env;
    var timers = this.timers;
    return new Promise(function (resolve, reject) {
      var name = "j" + (++jsonpSeq);
      var registry = env.callbacks;
      var q = new URLSearchParams(params);
      q.set("callback", env.callbackPrefix + name);
      var settled = false;
      var timer = null;
      var remove = null;

      function finish(err, data) {
        if (settled) return;
        settled = true;
        timers.clearTimeout(timer);
        // A late answer may still arrive: leave a no-op so it does not throw.
        registry[name] = function () { delete registry[name]; };
        timers.setTimeout(function () { delete registry[name]; }, TIMING.POLL_TIMEOUT_MS);
        if (remove) remove();
        if (err) reject(err); else resolve(data);
      }

      registry[name] = function (data) { finish(null, data); };
      timer = timers.setTimeout(function () { finish(ApiError(0, "timeout", "The server did not answer")); }, timeoutMs);
      if (signal) signal.addEventListener("abort", function () { finish(ApiError(0, "aborted", "aborted")); });
      remove = env.insertScript(url + (url.indexOf("?") >= 0 ? "&" : "?") + q.toString(),
        // Loaded but the callback never ran: not a valid answer.
        function () { timers.setTimeout(function () { finish(ApiError(0, "jsonp_error", "Bad answer from the server")); }, 0); },
        function () { finish(ApiError(0, "jsonp_error", "Cannot reach the server")); });
      if (settled && remove) remove();
    });
  };

  // ---------------------------------------------------------------------------
  // The comet loop: the one place that knows seq and ack
  // (docs/design.md#d6-comet-envelope, docs/protocol.md#seq-and-ack).
  //
  // Each answer carries `seq`, each packet its own `seq`. The next poll sends
  // ack=<seq> *after* the batch was processed, so an answer lost on the way
  // is sent again. A packet whose seq is not above the last ack was
  // processed already and is dropped, so nothing is applied twice.
  //
  // opts:
  //   source(server, {ticket, ack}, signal) -> Promise   transport.poll
  //   timers, random                                     injected
  //   onBatch(envelope, fresh)   fresh: {messages, presences, statuses} not seen before
  //   onState(state, detail)     "online" | "reconnecting"
  //   onGone(err)                the session is gone (404): go online again

  function CometLoop(opts) {
    this.source = opts.source;
    this.timers = opts.timers || systemTimers();
    this.random = opts.random || Math.random;
    this.onBatch = opts.onBatch || function () {};
    this.onState = opts.onState || function () {};
    this.onGone = opts.onGone || function () {};
    this.gen = 0;          // generation; bumped to stop a running loop
    this.ticket = null;
    this.server = null;
    this.ack = 0;
    this.failures = 0;     // failed polls in a row
    this.state = "stopped";
    this.ctl = null;
    this.wait = null;      // timer before the next poll
  }

  /** Start polling for a fresh ticket: ack starts at 0, or at `ack` when the
   *  poll takes over a session from the WebSocket (what the socket delivered
   *  is not delivered again). The caller has just had the answer of `online`,
   *  so the state starts "online". */
  CometLoop.prototype.start = function (ticket, server, ack) {
    this.stop();
    var gen = this.gen;
    this.ticket = ticket;
    this.server = server;
    this.ack = ack > 0 ? ack : 0;
    this.failures = 0;
    this.state = "online";
    this.next(gen, 0);
  };

  /** Stop for good (until the next start): no poll runs, none is scheduled. */
  CometLoop.prototype.stop = function () {
    this.gen++;
    this.state = "stopped";
    this.timers.clearTimeout(this.wait);
    this.wait = null;
    this.abort();
  };

  /** Abort the poll in flight; the loop counts it as a failure and retries. */
  CometLoop.prototype.abort = function () {
    if (this.ctl) { this.ctl.abort(); this.ctl = null; }
  };

  CometLoop.prototype.running = function () { return this.state !== "stopped"; };

  CometLoop.prototype.next = function (gen, ms) {
    var self = this;
    this.wait = this.timers.setTimeout(function () { self.wait = null; self.pollOnce(gen); }, ms);
  };

  CometLoop.prototype.setState = function (state, detail) {
    this.state = state;
    this.onState(state, detail);
  };

  CometLoop.prototype.pollOnce = function (gen) {
    if (gen !== this.gen) return;
    var self = this;
    var timers = this.timers;
    var ctl = new AbortController();
    this.ctl = ctl;
    // A poll the server is holding means we are connected, even though its
    // answer may take up to the hold time: after an error, report "online"
    // again once a poll has been held for a moment.
    var held = this.state === "online" ? null : timers.setTimeout(function () {
      if (gen === self.gen) self.setState("online");
    }, TIMING.POLL_HELD_MS);
    var p;
    try { p = Promise.resolve(this.source(this.server, { ticket: this.ticket, ack: this.ack }, ctl.signal)); }
    catch (e) { p = Promise.reject(e); }
    p.then(function (data) {
      timers.clearTimeout(held);
      if (self.ctl === ctl) self.ctl = null;
      if (gen !== self.gen) return;
      self.failures = 0;
      self.setState("online");
      if (data && data.status === "ok") {
        self.take(data);
        self.next(gen, TIMING.POLL_GAP_MS);
      } else {
        // "stopped" (a newer poll took over) or an odd answer: poll again.
        self.next(gen, TIMING.STOPPED_GAP_MS);
      }
    }, function (err) {
      timers.clearTimeout(held);
      if (self.ctl === ctl) self.ctl = null;
      if (gen !== self.gen) return;
      err = err || ApiError(0, "network", "Cannot reach the server");
      if (self.sessionGone(err)) {
        self.stop();
        self.onGone(err);
        return;
      }
      self.failures++;
      self.setState("reconnecting", err.message);
      self.next(gen, backoffDelay(self.failures, self.random));
    });
  };

  /** A 404 on the poll means the session is gone (docs/protocol.md#stopped-and-404).
   *  JSONP cannot see the status, so there a second failure in a row is
   *  taken as the same. */
  CometLoop.prototype.sessionGone = function (err) {
    if (err.status === 404) return true;
    if (err.code === "jsonp_error" && this.failures >= 1) return true;
    return false;
  };

  CometLoop.prototype.take = function (data) { takeEnvelope(this, data); };

  /** One comet envelope into a channel (the poll's or the socket's; both
   *  have `ack` and `onBatch`): drop the packets whose seq is not above the
   *  last ack (processed already: nothing is applied twice), hand the rest
   *  to onBatch, then move ack to the envelope's seq. Ack moves only after
   *  the batch was processed: if we crash halfway the server sends it again. */
  function takeEnvelope(channel, data) {
    var ack = channel.ack;
    var fresh = {};
    ["messages", "presences", "statuses"].forEach(function (kind) {
      fresh[kind] = (Array.isArray(data[kind]) ? data[kind] : []).filter(function (p) {
        return !(p && typeof p.seq === "number" && p.seq <= ack);
      });
    });
    try { channel.onBatch(data, fresh); } catch (e) { /* a bad batch must not stop the channel */ }
    if (typeof data.seq === "number" && isFinite(data.seq) && data.seq > channel.ack) channel.ack = data.seq;
  }

  // ---------------------------------------------------------------------------
  // The WebSocket channel (docs/design.md#d21-websocket): the same envelopes,
  // seq and ack as the comet loop, pushed over one socket per tab instead of
  // a poll every 25 s.
  //
  // After the socket opens, the first frame is `subscribe <domain> <ticket>
  // <ack>`; the server answers one envelope at once (that is "subscribed")
  // and one whenever packets arrive. Each envelope goes through
  // takeEnvelope, like a poll's answer. `ack <N>` frames tell the server
  // what was processed, at most once per WS_ACK_INTERVAL_MS (sooner when
  // WS_ACK_AFTER packets wait) and once more before the socket is closed. After a drop the next socket subscribes
  // with the last ack: the server sends everything after it again, and
  // takeEnvelope drops what was seen, so nothing is lost or shown twice.
  //
  // Close codes: 4404 the ticket is gone (like a poll's 404) -> onGone;
  // 4409 another socket or poll took the ticket -> onReplaced (no fight for
  // it); 4400 / 1009 / 1003 the server refused what we sent -> onFallback;
  // 1001 the server is going away (docs/design.md#d16-shutdown) -> connect
  // again after a spread-out delay; anything else -> connect again with
  // backoff. WS_FAILURES sockets in a row that close before subscribing
  // (refused handshake, a proxy without WebSocket, the daemon down) ->
  // onFallback. A browser does not show why a handshake failed (a 403 for a
  // foreign Origin looks like a network error), so the count is the rule.
  //
  // opts:
  //   open(url) -> WebSocket-like | null   transport.openSocket
  //   timers, random                       injected
  //   onBatch(envelope, fresh)             as CometLoop's
  //   onState(state, detail)               "online" | "reconnecting"; only once a
  //                                        socket has subscribed (before that,
  //                                        the fallback is the plan, not an outage)
  //   onGone()                             4404: go online again
  //   onReplaced()                         4409
  //   onFallback(reason, refused)          use the long poll for this session;
  //                                        refused: no socket of this loop ever
  //                                        subscribed (refused or blocked here)

  function SocketLoop(opts) {
    this.open = opts.open;
    this.timers = opts.timers || systemTimers();
    this.random = opts.random || Math.random;
    this.onBatch = opts.onBatch || function () {};
    this.onState = opts.onState || function () {};
    this.onGone = opts.onGone || function () {};
    this.onReplaced = opts.onReplaced || function () {};
    this.onFallback = opts.onFallback || function () {};
    this.gen = 0;            // generation; bumped to stop a running loop
    this.ticket = null;
    this.url = null;
    this.domain = "-";
    this.ack = 0;            // last seq processed
    this.acked = 0;          // last seq the server was told (subscribe or ack frame)
    this.ackedAt = null;     // ms of the last ack frame
    this.failures = 0;       // sockets in a row that closed before subscribing
    this.worked = false;     // some socket of this loop subscribed (ever)
    this.state = "stopped";
    this.ws = null;
    this.subscribed = false; // this.ws had its first envelope
    this.wait = null;        // timer before the next socket
    this.ackTimer = null;
    this.connectTimer = null;
    this.calls = {};         // call id -> {resolve, reject, timer}, waiting for a reply
    this.callSeq = 0;
  }

  SocketLoop.prototype.now = function () { return this.timers.now ? this.timers.now() : Date.now(); };

  /** Open a socket for a fresh ticket (ack 0). url: connection.websocket;
   *  domain: connection.domain (the subscribe frame needs one). */
  SocketLoop.prototype.start = function (ticket, url, domain) {
    this.stop();
    this.ticket = ticket;
    this.url = url;
    this.domain = domain ? String(domain).replace(/\s+/g, "") || "-" : "-";
    this.ack = 0;
    this.acked = 0;
    this.ackedAt = null;
    this.failures = 0;
    this.state = "online";
    this.connect(this.gen);
  };

  /** Stop for good (until the next start): tell the server the last ack if
   *  it does not know it yet, close the socket, schedule nothing. */
  SocketLoop.prototype.stop = function () {
    this.gen++;
    this.state = "stopped";
    this.clearTimers();
    this.timers.clearTimeout(this.wait);
    this.wait = null;
    var ws = this.ws;
    this.ws = null;
    if (ws && this.subscribed) this.sendAck(ws);
    this.subscribed = false;
    if (ws) closeQuietly(ws);
    this.failCalls();
  };

  /** Drop the socket as if the network had: the loop connects again and
   *  resumes from its ack (tests, NextIM's abortPoll). */
  SocketLoop.prototype.abort = function () {
    var ws = this.ws;
    if (!ws) return;
    this.closed(this.gen, ws, { code: 1006, reason: "aborted" });
    closeQuietly(ws);
  };

  SocketLoop.prototype.running = function () { return this.state !== "stopped"; };

  SocketLoop.prototype.clearTimers = function () {
    this.timers.clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.timers.clearTimeout(this.connectTimer);
    this.connectTimer = null;
  };

  SocketLoop.prototype.setState = function (state, detail) {
    this.state = state;
    this.onState(state, detail);
  };

  SocketLoop.prototype.connect = function (gen) {
    if (gen !== this.gen) return;
    var self = this;
    var ws = null;
    try { ws = this.open(this.url); } catch (e) { ws = null; }
    if (!ws) {
      // No WebSocket here at all (or a URL the browser will not open).
      this.stop();
      this.onFallback("no WebSocket", !this.worked);
      return;
    }
    this.ws = ws;
    this.subscribed = false;
    this.connectTimer = this.timers.setTimeout(function () {
      if (self.ws !== ws) return;
      self.closed(gen, ws, { code: 1006, reason: "no answer to subscribe" });
      closeQuietly(ws);
    }, TIMING.WS_CONNECT_MS);
    ws.onopen = function () {
      if (self.ws !== ws || gen !== self.gen) return;
      // Always with the ack, 0 included: the server then keeps what it sent
      // until we ack it (docs/design.md#d6-comet-envelope).
      self.acked = self.ack;
      try { ws.send("subscribe " + self.domain + " " + self.ticket + " " + self.ack); } catch (e) { /* onclose follows */ }
    };
    ws.onmessage = function (ev) { if (self.ws === ws && gen === self.gen) self.frame(ev && ev.data); };
    ws.onclose = function (ev) { self.closed(gen, ws, ev || {}); };
    ws.onerror = function () { /* a close event follows */ };
  };

  /** A call as a JSON frame `{"id", "call", "params"}` (the ticket is the
   *  socket's). Resolves with the reply's `result` (what the HTTP call
   *  answers); rejects ApiError: an error reply's code (status 200, as under
   *  JSONP), or status 0 `network` / `timeout` when the socket closes first or
   *  no reply comes within CALL_TIMEOUT_MS: the call may or may not have run,
   *  so a message is sent again with its client_id
   *  (docs/design.md#d17-idempotent-sends). Returns null when the socket
   *  cannot take it now (not subscribed, or a frame that may be too large):
   *  the caller uses HTTP. */
  SocketLoop.prototype.call = function (name, params) {
    var ws = this.ws;
    if (!ws || !this.subscribed || ws.readyState !== 1) return null;
    var p = {};
    Object.keys(params || {}).forEach(function (k) {
      if (k !== "ticket" && params[k] !== undefined && params[k] !== null) p[k] = params[k];
    });
    var id = ++this.callSeq;
    var text = JSON.stringify({ id: id, call: name, params: p });
    if (text.length * 3 > TIMING.WS_CALL_MAX_BYTES) return null;  // UTF-8 is at most 3 bytes per UTF-16 unit
    var self = this;
    return new Promise(function (resolve, reject) {
      var timer = self.timers.setTimeout(function () {
        self.settle(id, ApiError(0, "timeout", "The server did not answer"));
      }, TIMING.CALL_TIMEOUT_MS);
      self.calls[id] = { resolve: resolve, reject: reject, timer: timer };
      try { ws.send(text); } catch (e) { self.settle(id, ApiError(0, "network", "Cannot reach the server")); }
    });
  };

  SocketLoop.prototype.settle = function (id, err, result) {
    var c = this.calls[id];
    if (!c) return;
    delete this.calls[id];
    this.timers.clearTimeout(c.timer);
    if (err) c.reject(err); else c.resolve(result);
  };

  /** The socket is gone: every call still waiting fails as a network error. */
  SocketLoop.prototype.failCalls = function () {
    var self = this;
    Object.keys(this.calls).forEach(function (id) {
      self.settle(id, ApiError(0, "network", "Connection lost"));
    });
  };

  /** A text frame from the server: a comet envelope or a call's reply. */
  SocketLoop.prototype.frame = function (text) {
    var data;
    try { data = JSON.parse(text); } catch (e) { return; }
    if (!data || typeof data !== "object") return;
    if (Object.prototype.hasOwnProperty.call(data, "reply")) {
      var e = data.error;
      if (e && typeof e === "object") {
        this.settle(data.reply, ApiError(200, e.error || "error", e.error_msg || e.error || "Request failed"));
      } else {
        this.settle(data.reply, null, data.result);
      }
      return;
    }
    if (data.status !== "ok") return;
    if (!this.subscribed) {
      this.subscribed = true;
      this.worked = true;
      this.failures = 0;
      this.timers.clearTimeout(this.connectTimer);
      this.connectTimer = null;
      if (this.state !== "online") this.setState("online");
    }
    takeEnvelope(this, data);
    this.scheduleAck();
  };

  /** `ack <N>` now if the last one went out WS_ACK_INTERVAL_MS ago or
   *  WS_ACK_AFTER packets wait for one, else once that much time has passed
   *  (one timer, the latest ack then). */
  SocketLoop.prototype.scheduleAck = function () {
    if (this.ack <= this.acked) return;
    if (this.ack - this.acked >= TIMING.WS_ACK_AFTER) {
      if (this.ackTimer) { this.timers.clearTimeout(this.ackTimer); this.ackTimer = null; }
      this.sendAck(this.ws);
      return;
    }
    if (this.ackTimer) return;
    var wait = this.ackedAt === null ? 0 : this.ackedAt + TIMING.WS_ACK_INTERVAL_MS - this.now();
    if (wait <= 0) { this.sendAck(this.ws); return; }
    var self = this;
    var gen = this.gen;
    this.ackTimer = this.timers.setTimeout(function () {
      self.ackTimer = null;
      if (gen === self.gen) self.sendAck(self.ws);
    }, wait);
  };

  SocketLoop.prototype.sendAck = function (ws) {
    if (!ws || ws.readyState !== 1 || this.ack <= this.acked) return;
    try { ws.send("ack " + this.ack); } catch (e) { return; }
    this.acked = this.ack;
    this.ackedAt = this.now();
  };

  SocketLoop.prototype.closed = function (gen, ws, ev) {
    if (gen !== this.gen || ws !== this.ws) return;  // an old socket, or stopped
    this.ws = null;
    this.clearTimers();
    this.failCalls();
    var wasSubscribed = this.subscribed;
    this.subscribed = false;
    var code = ev.code;
    var why = "WebSocket closed (" + code + (ev.reason ? " " + ev.reason : "") + ")";
    if (code === 4404) { this.stop(); this.onGone(); return; }
    if (code === 4409) { this.stop(); this.onReplaced(); return; }
    if (code === 4400 || code === 1009 || code === 1003) {
      // The server refused a frame of ours: trying again sends the same.
      if (typeof console !== "undefined") console.warn("nextim: " + why + "; using the long poll");
      this.stop();
      this.onFallback(why, !this.worked);
      return;
    }
    if (!wasSubscribed) this.failures++;
    if (this.failures >= TIMING.WS_FAILURES) {
      this.stop();
      this.onFallback(why, !this.worked);
      return;
    }
    // A server going away is coming back, like every other client's: spread
    // the reconnects out (as after a 404). Anything else: backoff.
    var delay = code === 1001
      ? TIMING.BACKOFF_BASE_MS + Math.floor(this.random() * TIMING.RECONNECT_SPREAD_MS)
      : backoffDelay(Math.max(1, this.failures), this.random);
    if (this.worked) this.setState("reconnecting", code === 1001 ? "The server is restarting" : "Connection lost");
    var self = this;
    this.wait = this.timers.setTimeout(function () { self.wait = null; self.connect(gen); }, delay);
  };

  /** Close a socket we are done with; its late events are not ours any more. */
  function closeQuietly(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(1000); } catch (e) { /* already closed */ }
  }

  // ---------------------------------------------------------------------------
  // The model: what the user sees, as data. No I/O, no timers; each method
  // says what it changed through changed(part, ...) with the parts
  // "buddies", "rooms", "tabs", "chat", "header", "notifications", "title".
  //
  //   buddy: {id, nick, group, presence: "online"|"offline", show, status, pic_url...}
  //   room:  {id, nick, count, all_count, blocked, members: [member] | null}
  //   chat:  {key: "unicast:bob", type, id, messages: [msg] (oldest first),
  //           loaded, pending (live messages before the history came),
  //           unread, typingUntil (ms), typingNick, draft, rev (bumped when
  //           messages change other than by appending)}
  //   msg:   a logItem (docs/design.md#d7-messages); local sends add
  //          local: true, state: "sending" | "sent" | "failed", error

  function Model(changed) {
    this.changed = changed || function () {};
    this.user = null;
    this.show = "available";
    this.status = "";
    this.setting = defaultSetting();
    this.buddies = new Map();  // id -> buddy
    this.rooms = new Map();    // id -> room
    this.chats = new Map();    // "type:id" -> chat
    this.tabs = [];            // open chat keys, in tab order
    this.active = null;        // key of the chat shown
    this.viewing = false;      // the view shows the active chat to the user
    this.notifications = [];
  }

  Model.prototype.reset = function () {
    this.user = null;
    this.buddies.clear();
    this.rooms.clear();
    this.chats.clear();
    this.tabs = [];
    this.active = null;
    this.notifications = [];
    this.setting = defaultSetting();
    this.changed("all");
  };

  Model.prototype.setSetting = function (s) {
    if (s && typeof s === "object" && !Array.isArray(s)) this.setting = Object.assign(defaultSetting(), s);
    if (!Array.isArray(this.setting.blocked_rooms)) this.setting.blocked_rooms = [];
  };

  /** Add or update a buddy. authoritative: info comes from a full list, so
   *  a missing presence means offline. */
  Model.prototype.upsertBuddy = function (info, authoritative) {
    var b = this.buddies.get(String(info.id));
    if (!b) {
      b = { id: String(info.id), nick: info.id, group: "", presence: "offline", show: "unavailable", status: "" };
      this.buddies.set(b.id, b);
    }
    ["nick", "group", "pic_url", "default_pic_url", "url", "status", "history"].forEach(function (k) {
      if (info[k] !== undefined && info[k] !== null) b[k] = info[k];
    });
    if (info.presence !== undefined || authoritative) {
      b.presence = info.presence === "online" ? "online" : "offline";
      b.show = b.presence === "online" ? (info.show && info.show !== "unavailable" ? info.show : "available") : "unavailable";
    }
    this.changed("buddies");
    return b;
  };

  Model.prototype.upsertRoom = function (info) {
    var r = this.rooms.get(String(info.id));
    if (!r) {
      r = { id: String(info.id), nick: info.id, count: 0, all_count: 0, blocked: false, members: null };
      this.rooms.set(r.id, r);
    }
    ["nick", "pic_url", "url", "all_count", "count", "history"].forEach(function (k) {
      if (info[k] !== undefined && info[k] !== null) r[k] = info[k];
    });
    r.blocked = !!info.blocked || this.setting.blocked_rooms.indexOf(r.id) >= 0;
    this.changed("rooms");
    return r;
  };

  Model.prototype.ensureChat = function (type, id) {
    var key = chatKey(type, id);
    var chat = this.chats.get(key);
    if (!chat) {
      chat = {
        key: key, type: type, id: id,
        messages: [], keys: {}, rev: 0,
        loaded: false, loading: null, pending: [], error: null,
        unread: 0, typingUntil: 0, typingNick: "",
        draft: "", sentTyping: "clear", typingTimer: null
      };
      this.chats.set(key, chat);
    }
    return chat;
  };

  Model.prototype.chatByKey = function (key) {
    var i = key.indexOf(":");
    return i > 0 ? this.ensureChat(key.slice(0, i), key.slice(i + 1)) : null;
  };

  /** ids of the open tabs of one type, for `online`'s buddy_ids / room_ids. */
  Model.prototype.openIds = function (type) {
    var out = [];
    var self = this;
    this.tabs.forEach(function (k) { var c = self.chats.get(k); if (c && c.type === type) out.push(c.id); });
    return out;
  };

  /** Is a chat on screen right now (so a new message is read at once)? */
  Model.prototype.isSeen = function (chat) {
    return !!chat && chat.key === this.active && this.viewing;
  };

  Model.prototype.totalUnread = function () {
    var n = 0;
    this.chats.forEach(function (c) { n += c.unread; });
    return n;
  };

  /** The view tells whether the active chat is in front of the user
   *  (page visible, main screen, not minimized). Becoming seen reads it. */
  Model.prototype.setViewing = function (viewing) {
    this.viewing = !!viewing;
    this.markSeen();
  };

  Model.prototype.markSeen = function () {
    var chat = this.active && this.chats.get(this.active);
    if (chat && chat.unread && this.isSeen(chat)) {
      chat.unread = 0;
      this.changed("tabs", "buddies", "rooms", "title");
    }
  };

  /** Open a chat's tab. focus: the user picked it (it becomes active and
   *  read); else it opens in the background, active only if none was. */
  Model.prototype.openTab = function (key, focus) {
    var chat = this.chatByKey(key);
    if (!chat) return null;
    if (this.tabs.indexOf(key) < 0) this.tabs.push(key);
    if (focus) {
      this.active = key;
      chat.unread = 0;
    } else if (!this.active) {
      this.active = key;
      if (this.isSeen(chat)) chat.unread = 0;
    }
    this.changed("tabs", "chat", "buddies", "rooms", "title");
    return chat;
  };

  /** Close a tab; the neighbour becomes active. Returns the closed chat. */
  Model.prototype.closeTab = function (key) {
    var i = this.tabs.indexOf(key);
    if (i < 0) return null;
    this.tabs.splice(i, 1);
    var chat = this.chats.get(key);
    if (chat) chat.unread = 0;
    if (this.active === key) this.active = this.tabs[Math.min(i, this.tabs.length - 1)] || null;
    var next = this.active && this.chats.get(this.active);
    if (next) next.unread = 0;
    this.changed("tabs", "chat", "buddies", "rooms", "title");
    return chat;
  };

  /** Replace a chat's messages with the server's history (oldest first),
   *  keeping live packets that raced the request and local sends the
   *  server had not confirmed before the request (requestedAt, local ms). */
  Model.prototype.setHistory = function (chat, list, requestedAt) {
    var msgs = (Array.isArray(list) ? list : []).slice();
    var keys = {};
    var stored = {};  // client_ids the history holds: those local sends are in it
    msgs.forEach(function (m) { keys[msgKey(m)] = true; if (m.client_id) stored[m.client_id] = true; });
    chat.pending.forEach(function (m) { var k = msgKey(m); if (!keys[k]) { keys[k] = true; msgs.push(m); } });
    chat.messages.forEach(function (m) {
      if (m.local && !(m.client_id && stored[m.client_id]) &&
          (m.state !== "sent" || m.confirmedAt > requestedAt)) msgs.push(m);
    });
    msgs.sort(function (a, b) { return parseFloat(a.timestamp) - parseFloat(b.timestamp); });
    chat.messages = msgs;
    chat.keys = keys;
    chat.pending = [];
    chat.loaded = true;
    chat.error = null;
    chat.rev++;
    this.changed("chat");
  };

  /** Add one message unless it is there already; false for a duplicate. */
  Model.prototype.addMessage = function (chat, m) {
    var k = msgKey(m);
    if (!chat.loaded) {
      if (chat.pending.some(function (p) { return msgKey(p) === k; })) return false;
      chat.pending.push(m);
      return true;
    }
    if (chat.keys[k]) return false;
    chat.keys[k] = true;
    chat.messages.push(m);
    this.changed("chat");
    return true;
  };

  /** A logItem from the comet or new_messages. flags.offline: stored while
   *  we were away, which says nothing about the sender's presence now.
   *  Returns null when nothing changed, else {chat, incoming, seen,
   *  stranger: id of someone not in the buddy list, or null}. */
  Model.prototype.applyMessage = function (m, flags) {
    if (!m || !this.user) return null;
    flags = flags || {};
    var type = normalizeType(m.type);
    var me = this.user.id;
    var mine = m.from === me;
    var peer;
    var stranger = null;
    if (type === "multicast") {
      peer = m.to;
      var room = this.rooms.get(peer);
      if (room && room.blocked) return null; // blocked: we do not want it, even if it slips through
    } else {
      // unicast (and admin broadcast delivered unicast-shaped): my own
      // message from my other tab belongs to the conversation `to`
      // (docs/protocol.md#sessions-tabs-and-presence).
      type = "unicast";
      peer = mine ? m.to : m.from;
      var b = this.buddies.get(peer);
      if (!b) {
        // Someone not in the buddy list wrote to us.
        b = this.upsertBuddy({ id: peer, nick: (mine ? peer : m.nick) || peer, group: "Strangers" });
        stranger = peer;
      }
      if (!mine && m.nick) b.nick = m.nick;
      if (!mine && !flags.offline && b.presence !== "online") {
        b.presence = "online";
        if (b.show === "unavailable") b.show = "available";
      }
    }
    var chat = this.ensureChat(type, peer);
    if (!mine && type === "unicast") chat.typingUntil = 0;
    var stored = Object.assign({}, m, { type: type });
    if (!this.addMessage(chat, stored)) return stranger ? { chat: chat, incoming: false, seen: true, stranger: stranger } : null;
    var seen = true;
    if (!mine) {
      seen = this.isSeen(chat);
      if (!seen) chat.unread++;
    }
    this.changed("chat", "tabs", "buddies", "rooms", "title");
    return { chat: chat, incoming: !mine, seen: seen, stranger: stranger };
  };

  /** A presence packet (docs/design.md#d8-presence). Returns null, or
   *  {roomCounts: true} when room member counts may have changed, and
   *  {stranger: id} for a sender not in the buddy list. */
  Model.prototype.applyPresence = function (p) {
    if (!p || !p.from || !this.user) return null;
    var type = p.type;
    if (p.from === this.user.id) {
      // My own presence from my other tab: follow its show.
      if (type === "show" && p.show && p.show !== "unavailable") {
        this.show = p.show;
        this.status = p.status || "";
        this.changed("header");
      }
      return null;
    }
    if (type === "join" || type === "leave" || type === "grponline" || type === "grpoffline") {
      return { roomCounts: true, stranger: null };
    }
    var stranger = null;
    var b = this.buddies.get(p.from);
    if (!b) { b = this.upsertBuddy({ id: p.from, nick: p.nick || p.from, group: "Strangers" }); stranger = p.from; }
    if (p.nick) b.nick = p.nick;
    var gone = type === "offline" || p.show === "unavailable" || p.show === "invisible";
    b.presence = gone ? "offline" : "online";
    b.show = gone ? "unavailable" : (p.show || "available");
    if (p.status !== undefined && p.status !== null) b.status = p.status;
    if (gone) { var c = this.chats.get(chatKey("unicast", b.id)); if (c) c.typingUntil = 0; }
    this.changed("buddies", "chat", "tabs");
    return { roomCounts: true, stranger: stranger };
  };

  /** A status packet: "typing" shows the indicator until now + 10 s, any
   *  other show ("clear") hides it. Returns the chat, or null. */
  Model.prototype.applyStatus = function (s, now) {
    if (!s || !this.user || s.from === this.user.id) return null;
    if (s.to && s.to !== this.user.id) return null;
    var chat = this.ensureChat("unicast", s.from);
    if (s.show === "typing") {
      chat.typingUntil = now + TIMING.TYPING_SHOW_MS;
      chat.typingNick = s.nick || (this.buddies.get(s.from) || {}).nick || s.from;
    } else {
      chat.typingUntil = 0;
    }
    this.changed("chat");
    return chat;
  };

  /** Take in the answer of webim/online, except its new_messages (the
   *  client applies those as messages). now: local ms when it arrived. */
  Model.prototype.applyOnline = function (d, now) {
    var self = this;
    if (this.user && this.user.id !== d.user.id) this.reset(); // someone else signed in
    this.user = d.user;
    if (d.user.show && d.user.show !== "unavailable") this.show = d.user.show;
    if (this.show === "offline") this.show = "available";
    this.status = d.user.status || "";
    this.setSetting(d.setting);

    // Buddies: the answer is the truth now; anyone not in it is offline.
    var seen = {};
    (d.buddies || []).forEach(function (b) { seen[b.id] = true; self.upsertBuddy(b, true); });
    this.buddies.forEach(function (b) { if (!seen[b.id]) { b.presence = "offline"; b.show = "unavailable"; } });
    var presences = d.presences || {};
    Object.keys(presences).forEach(function (id) {
      var b = self.buddies.get(id);
      if (b) { b.presence = "online"; b.show = presences[id] || "available"; }
    });

    (d.rooms || []).forEach(function (r) { self.upsertRoom(r); });

    // Histories embedded for the chats we asked about; the others are stale.
    var stale = [];
    this.chats.forEach(function (chat) {
      var src = chat.type === "unicast" ? self.buddies.get(chat.id) : self.rooms.get(chat.id);
      if (src && Array.isArray(src.history)) self.setHistory(chat, src.history, now);
      else { chat.loaded = false; stale.push(chat); }
    });
    this.buddies.forEach(function (b) { delete b.history; });
    this.rooms.forEach(function (r) { delete r.history; });
    this.changed("all");
    return stale;
  };

  /** Everyone looks offline (this tab went offline). */
  Model.prototype.allOffline = function () {
    this.buddies.forEach(function (b) { b.presence = "offline"; b.show = "unavailable"; });
    this.changed("all");
  };

  /** The answer of webim/members for a room: online count from the list. */
  Model.prototype.applyMembers = function (room, list) {
    if (!Array.isArray(list)) return;
    room.members = list;
    room.count = list.filter(function (m) { return m.presence !== "offline"; }).length;
    this.changed("rooms", "chat");
  };

  /** Block or unblock a room in the setting (blocked_rooms). */
  Model.prototype.setRoomBlocked = function (room, blocked) {
    var list = this.setting.blocked_rooms.filter(function (id) { return id !== room.id; });
    if (blocked) list.push(room.id);
    this.setting.blocked_rooms = list;
    room.blocked = blocked;
    this.changed("rooms", "chat");
  };

  // ---------------------------------------------------------------------------
  // The client: one signed-in session over a transport.
  //
  //   new Client({transport, timers, storage, random, getToken, tokenMode})
  //
  // State: client.model (above), client.conn ("connecting" | "online" |
  // "reconnecting" | "offline"), client.ticket, client.skew (server clock -
  // local clock, ms), client.packetLog (the last 100 comet answers),
  // client.channel ("websocket" | "longpoll" | null: how the comet arrives).
  //
  // Events (client.on(name, fn)):
  //   "change"  (parts)           model parts changed (see Model)
  //   "conn"    (state, detail)   connection state
  //   "screen"  (name, detail)    what to show: "loading", "login",
  //                               "autherror" (detail: reason or ""),
  //                               "offline", "main"
  //   "beep"    ()                a message arrived in a chat not on screen
  //   "notice"  (text)            a call failed; tell the user
  //   "batch"   (envelope)        a comet answer arrived

  function Client(opts) {
    var self = this;
    Emitter.call(this);
    this.transport = opts.transport;
    this.timers = opts.timers || systemTimers();
    this.storage = opts.storage || memoryStorage();
    this.random = opts.random || Math.random;
    this.getToken = opts.getToken || null;
    this.tokenMode = !!opts.tokenMode;
    this.model = new Model(function () { self.emit("change", Array.prototype.slice.call(arguments)); });
    this.comet = new CometLoop({
      source: function (server, params, signal) { return self.transport.poll(server, params, signal); },
      timers: this.timers,
      random: this.random,
      onBatch: function (d, fresh) { self.handleBatch(d, fresh); },
      onState: function (state, detail) { if (self.ticket) self.setConn(state, detail); },
      // A lost session goes online again after a random 0..RECONNECT_SPREAD_MS:
      // after a daemon restart every client learns it at the same moment (404 on
      // its next poll), and coming back all at once makes every online slow.
      onGone: function () { self.reonlineSpread(); }
    });
    this.socket = new SocketLoop({
      open: function (url) { return self.transport.openSocket(url); },
      timers: this.timers,
      random: this.random,
      onBatch: function (d, fresh) { self.handleBatch(d, fresh); },
      onState: function (state, detail) { if (self.ticket) self.setConn(state, detail); },
      onGone: function () { self.reonlineSpread(); },
      onReplaced: function () { self.replaced(); },
      onFallback: function (reason, refused) { self.socketFallback(reason, refused); }
    });
    this.channel = null;       // "websocket" | "longpoll" while a session runs
    this.wsUrl = null;         // connection.websocket of the last online, or null
    this.domain = "";
    this.wsRefused = false;    // no socket ever subscribed on this page: long-poll from now on
    this.conn = "offline";
    this.connDetail = "";
    this.ticket = null;
    this.server = null;
    this.skew = 0;
    this.gen = 0;              // generation of online attempts; bump to cancel
    this.onlineFailures = 0;
    this.tokenRetried = false;
    this.packetLog = [];
    this.roomTimer = null;
    this.roomRefreshTimer = null;
    this.model.show = this.storage.get("show", "available");
  }
  Client.prototype = Object.create(Emitter.prototype);
  Client.prototype.constructor = Client;

  Client.prototype.now = function () { return this.timers.now ? this.timers.now() : Date.now(); };

  Client.prototype.setConn = function (state, detail) {
    if (this.conn === state && !detail) return;
    this.conn = state;
    this.connDetail = detail || "";
    this.emit("conn", state, this.connDetail);
    this.emit("change", ["header"]);
  };

  Client.prototype.screen = function (name, detail) { this.emit("screen", name, detail || ""); };

  // ---- lifecycle -------------------------------------------------------------

  /** Entry point: restore the tabs of this browser tab, then go online
   *  (cookie or token) unless the user chose offline last time. */
  Client.prototype.begin = function () {
    var m = this.model;
    var saved = this.storage.get("tabs", null, "session");
    if (saved && Array.isArray(saved.tabs)) {
      saved.tabs.forEach(function (k) { m.chatByKey(String(k)); });
      m.tabs = saved.tabs.filter(function (k) { return m.chats.has(k); });
      m.active = m.tabs.indexOf(saved.active) >= 0 ? saved.active : null;
    }
    if (this.storage.get("offline", false)) {
      this.screen("offline");
      this.setConn("offline");
      return Promise.resolve();
    }
    return this.goOnline(m.show === "offline" ? "available" : m.show, true);
  };

  /** Call webim/online and start the comet. firstLoad: a 401 shows login. */
  Client.prototype.goOnline = function (show, firstLoad) {
    var self = this;
    var m = this.model;
    var gen = ++this.gen;
    this.comet.stop();
    this.socket.stop();
    this.setConn(m.user ? "reconnecting" : "connecting");
    if (!m.user) this.screen("loading");
    var params = {
      show: show || "available",
      buddy_ids: csv(m.openIds("unicast")),
      room_ids: csv(m.openIds("multicast"))
    };
    var sentAt = this.now();
    return this.transport.call("online", params).then(function (d) {
      if (gen !== self.gen) return;
      if (!d || !d.connection || !d.user) throw ApiError(0, "bad_answer", "Unexpected answer from the server");
      self.onlineFailures = 0;
      self.storage.set("offline", undefined);
      self.applyOnline(d, sentAt);
      self.startChannel();
    }).catch(function (err) {
      if (gen !== self.gen) return;
      self.onOnlineError(err, show, firstLoad);
    });
  };

  Client.prototype.onOnlineError = function (err, show, firstLoad) {
    var self = this;
    if (isAuthError(err)) {
      if (this.getToken && !this.tokenRetried) {
        // Token mode: the host may hand us a fresh token once.
        this.tokenRetried = true;
        Promise.resolve().then(this.getToken).then(function (tok) {
          self.transport.setToken(tok);
          return self.goOnline(show, firstLoad);
        }).catch(function () { self.authFailed(); });
        return;
      }
      this.authFailed();
      return;
    }
    if (err.status === 403) {
      // Refused, not broken (e.g. this page's origin is not one the daemon
      // accepts cookies from): retrying would not help; say why.
      this.authFailed(err.message);
      return;
    }
    // Server unreachable or busy: keep trying, with backoff.
    this.onlineFailures++;
    var gen = this.gen;
    this.setConn("reconnecting", err.message);
    if (!this.model.user) this.screen("loading", err.message);
    this.timers.setTimeout(function () { if (gen === self.gen) self.goOnline(show, firstLoad); },
      backoffDelay(this.onlineFailures, this.random));
  };

  Client.prototype.authFailed = function (reason) {
    this.resetSession();
    this.setConn("offline");
    if (this.tokenMode || reason) this.screen("autherror", reason || "");
    else this.screen("login");
  };

  /** Take in the answer of webim/online. sentAt: local ms of the request. */
  Client.prototype.applyOnline = function (d, sentAt) {
    var self = this;
    var m = this.model;
    this.tokenRetried = false;
    // Skew = server clock - local clock, measured at the middle of the call.
    var now = this.now();
    if (isFinite(parseFloat(d.server_time))) this.skew = parseFloat(d.server_time) - (sentAt + now) / 2;
    if (m.user && m.user.id !== d.user.id) this.packetLog = [];
    this.ticket = d.connection.ticket;
    this.server = d.connection.server || ((this.transport.base || "") + "packets");
    this.wsUrl = typeof d.connection.websocket === "string" && d.connection.websocket ? d.connection.websocket : null;
    this.domain = d.connection.domain || "";
    var stale = m.applyOnline(d, now);
    this.storage.set("show", m.show);
    stale.forEach(function (chat) { if (m.tabs.indexOf(chat.key) >= 0) self.loadHistory(chat); });
    (d.new_messages || []).forEach(function (msg) { self.onMessage(msg, { offline: true }); });
    this.screen("main");
    this.setConn("online");
    this.loadNotifications();
    this.scheduleRoomRefresh();
  };

  /** The comet for the session `online` just opened: the WebSocket when the
   *  daemon offers one (connection.websocket) and this page can use it, else
   *  the long poll, exactly as without a socket (docs/client.md#transports). */
  Client.prototype.startChannel = function () {
    var url = this.wsUrl;
    var socket = !!url && typeof this.transport.openSocket === "function" && !this.wsRefused &&
      this.storage.get("ws_refused", null, "session") !== url;
    if (socket) {
      this.setChannel("websocket");
      this.socket.start(this.ticket, url, this.domain);
    } else {
      this.setChannel("longpoll");
      this.comet.start(this.ticket, this.server);
    }
  };

  Client.prototype.setChannel = function (name) {
    if (this.channel === name) return;
    this.channel = name;
    this.emit("change", ["header"]);
  };

  /** The socket cannot be used for this session: the long poll takes over
   *  from the socket's ack, so nothing it delivered is shown again. A page
   *  where no socket ever subscribed (refused handshake, e.g. an Origin the
   *  daemon does not accept, or a proxy without WebSocket) long-polls for
   *  good, and this browser tab remembers it for the next page loads. */
  Client.prototype.socketFallback = function (reason, refused) {
    if (!this.ticket) return;
    if (refused) {
      this.wsRefused = true;
      this.storage.set("ws_refused", this.wsUrl, "session");
    }
    if (typeof console !== "undefined") console.info("nextim: long poll instead of WebSocket (" + reason + ")");
    this.setChannel("longpoll");
    this.comet.start(this.ticket, this.server, this.socket.ack);
  };

  /** 4409: a newer socket or poll on this ticket took over (the same
   *  session open elsewhere). Taking it back would only make the two take
   *  turns, so this tab stops; picking a show goes online again. */
  Client.prototype.replaced = function () {
    this.resetSession();
    this.setConn("offline", "Another connection took over this session");
  };

  /** A webim call: `message` and `status` over the socket while it is
   *  subscribed (a reply frame instead of an HTTP request), everything else,
   *  and those when there is no socket, over the transport. Same answers
   *  and errors either way. */
  Client.prototype.call = function (name, params) {
    if (this.channel === "websocket" && SOCKET_CALLS.indexOf(name) >= 0) {
      var viaSocket = this.socket.call(name, params);
      if (viaSocket) return viaSocket;
    }
    return this.transport.call(name, params);
  };

  /** Drop the poll or socket in flight; it is retried (tests, NextIM.abortPoll). */
  Client.prototype.abortChannel = function () {
    if (this.channel === "websocket") this.socket.abort();
    else this.comet.abort();
  };

  /** Forget the ticket and stop polling (nothing is sent to the server but
   *  the socket's last ack before it closes). */
  Client.prototype.resetSession = function () {
    this.gen++;
    this.comet.stop();
    this.socket.stop();
    this.setChannel(null);
    this.ticket = null;
    this.timers.clearInterval(this.roomRefreshTimer);
    this.roomRefreshTimer = null;
  };

  /** Session lost: a fresh `online` gives a new ticket (ack starts at 0) and
   *  reloads the open chats' history, so nothing missed stays missing. */
  Client.prototype.reonline = function () {
    this.setConn("reconnecting");
    return this.goOnline(this.model.show, false);
  };

  /** reonline() after a random delay of 0..RECONNECT_SPREAD_MS (a cancelled
   *  session, e.g. after a logout, does not come back). */
  Client.prototype.reonlineSpread = function () {
    var self = this;
    var gen = this.gen;
    this.setConn("reconnecting");
    this.timers.setTimeout(function () { if (gen === self.gen) self.reonline(); },
      Math.floor(this.random() * TIMING.RECONNECT_SPREAD_MS));
  };

  /** The user chose "offline": end this tab's session; stay offline on reload. */
  Client.prototype.goOffline = function () {
    var ticket = this.ticket;
    this.resetSession();
    this.setConn("offline");
    this.storage.set("offline", true);
    this.model.allOffline();
    if (!ticket) return Promise.resolve();
    return this.transport.call("offline", { ticket: ticket }).catch(function () { /* session times out anyway */ });
  };

  /** Sign in with the daemon's accounts, then go online. Rejects ApiError
   *  (status 401: wrong user name or password). */
  Client.prototype.login = function (username, password) {
    var self = this;
    return this.transport.call("login", { username: username, password: password }).then(function () {
      self.storage.set("offline", undefined);
      var show = self.model.show;
      return self.goOnline(show === "offline" ? "available" : show, true);
    });
  };

  Client.prototype.logout = function () {
    var self = this;
    var m = this.model;
    // A shared computer: the next person must not find our notifications.
    if (m.user) this.storage.set("notifications:" + m.user.id, undefined);
    return this.goOffline().then(function () {
      self.storage.set("offline", undefined);
      self.storage.set("tabs", undefined, "session");
      return self.transport.call("logout", {}).catch(function () {});
    }).then(function () {
      self.packetLog = [];
      m.reset();
      self.screen("login");
    });
  };

  /** Stop without going through the UI (tests, host pages, page unload). */
  Client.prototype.stop = function () {
    var ticket = this.ticket;
    this.resetSession();
    this.setConn("offline");
    if (!ticket) return Promise.resolve();
    return this.transport.call("offline", { ticket: ticket }).catch(function () {});
  };

  /** The page goes away (reload, close): end the session by a beacon so its
   *  grace timer starts at once (docs/design.md#d5-timers) and a reload
   *  never flaps presence. True if a session was ended. */
  Client.prototype.pageHide = function () {
    if (!this.ticket || this.conn === "offline") return false;
    this.transport.beacon("refresh", { ticket: this.ticket });
    this.resetSession();
    return true;
  };

  // ---- comet packets ------------------------------------------------------------

  Client.prototype.handleBatch = function (d, fresh) {
    var self = this;
    this.packetLog.push(d);
    if (this.packetLog.length > PACKET_LOG_SIZE) this.packetLog.shift();
    this.emit("batch", d);
    // Each handler is isolated so one bad packet cannot stop the channel.
    fresh.messages.forEach(function (m) { self.safely(self.onMessage, m, {}); });
    fresh.presences.forEach(function (p) { self.safely(self.onPresence, p); });
    fresh.statuses.forEach(function (s) { self.safely(self.onStatus, s); });
  };

  Client.prototype.safely = function (fn) {
    try { fn.apply(this, Array.prototype.slice.call(arguments, 1)); } catch (e) {
      if (typeof console !== "undefined") console.error("nextim: packet handler failed", e);
    }
  };

  Client.prototype.onMessage = function (msg, flags) {
    var r = this.model.applyMessage(msg, flags);
    if (!r) return;
    if (r.stranger) this.lookUpBuddy(r.stranger);
    if (!r.incoming) return;
    var m = this.model;
    if (m.tabs.indexOf(r.chat.key) < 0 && m.setting.msg_auto_pop !== false) this.openTab(r.chat.key, false);
    if (!r.seen && m.setting.play_sound !== false) this.emit("beep");
  };

  Client.prototype.onPresence = function (p) {
    var r = this.model.applyPresence(p);
    if (!r) return;
    if (r.stranger) this.lookUpBuddy(r.stranger);
    if (r.roomCounts) this.scheduleRoomCounts();
  };

  Client.prototype.onStatus = function (s) {
    var chat = this.model.applyStatus(s, this.now());
    if (!chat || !chat.typingUntil) return;
    // Re-render when the indicator expires without a "clear".
    var self = this;
    this.timers.setTimeout(function () { self.emit("change", ["chat"]); }, TIMING.TYPING_SHOW_MS + 50);
  };

  /** Someone not in the buddy list: ask the server who it is. */
  Client.prototype.lookUpBuddy = function (id) {
    var m = this.model;
    if (!this.ticket) return;
    this.transport.call("buddies", { ticket: this.ticket, ids: id }).then(function (list) {
      (Array.isArray(list) ? list : []).forEach(function (info) { if (info && info.id === id) m.upsertBuddy(info); });
    }).catch(function () { /* keep the placeholder */ });
  };

  // ---- conversations -------------------------------------------------------------

  Client.prototype.openTab = function (key, focus) {
    var m = this.model;
    var chat = m.openTab(key, focus);
    if (!chat) return null;
    if (!chat.loaded && chat.key === m.active) this.loadHistory(chat);
    this.saveTabs();
    return chat;
  };

  Client.prototype.closeTab = function (key) {
    var m = this.model;
    var chat = m.chats.get(key);
    if (chat) this.stopTyping(chat, true);
    m.closeTab(key);
    var next = m.active && m.chats.get(m.active);
    if (next && !next.loaded) this.loadHistory(next);
    this.saveTabs();
  };

  Client.prototype.saveTabs = function () {
    this.storage.set("tabs", { tabs: this.model.tabs, active: this.model.active }, "session");
  };

  /** webim/history for a chat; one request at a time. Returns its promise. */
  Client.prototype.loadHistory = function (chat) {
    if (chat.loading || !this.ticket) return chat.loading;
    var self = this;
    var m = this.model;
    var requestedAt = this.now();
    chat.loading = this.transport.call("history", { ticket: this.ticket, id: chat.id, type: chat.type }).then(function (list) {
      chat.loading = null;
      m.setHistory(chat, list, requestedAt);
    }).catch(function (err) {
      chat.loading = null;
      chat.error = err.message;
      m.changed("chat");
    });
    m.changed("chat");
    return chat.loading;
  };

  /** Send a message. It is in the chat at once (state "sending"): the
   *  server does not echo it to this tab (docs/design.md#d7-messages).
   *  Every message carries a client_id; after a network error (no answer:
   *  stored or not, we cannot tell) it is sent again with the same client_id,
   *  with backoff, up to SEND_ATTEMPTS calls in all: the server stores it once
   *  (docs/design.md#d17-idempotent-sends). A refusal is final ("failed").
   *  clientId: reuse one (a manual retry). Returns the promise (never rejects). */
  Client.prototype.sendMessage = function (chat, body, clientId) {
    var m = this.model;
    if (!body || !this.ticket) return Promise.resolve();
    var msg = {
      type: chat.type, from: m.user.id, to: chat.id, nick: m.user.nick,
      body: body, style: "", timestamp: this.now() + this.skew,
      client_id: clientId || newClientId(this.now(), this.random),
      local: true, state: "sending"
    };
    chat.messages.push(msg);
    chat.rev++;
    this.stopTyping(chat, false);
    m.changed("chat");
    var self = this;
    var attempts = 0;
    function attempt() {
      attempts++;
      var params = { ticket: self.ticket, type: chat.type, to: chat.id, body: body, style: "",
                     client_id: msg.client_id };
      return self.call("message", params).then(function () {
        msg.state = "sent";
        msg.confirmedAt = self.now();
        chat.rev++;
        m.changed("chat");
      }).catch(function (err) {
        if (isNetworkError(err) && attempts < TIMING.SEND_ATTEMPTS && self.ticket) {
          return new Promise(function (resolve) {
            self.timers.setTimeout(resolve, backoffDelay(attempts, self.random));
          }).then(attempt);
        }
        msg.state = "failed";
        msg.error = err.message;
        chat.rev++;
        m.changed("chat");
      });
    }
    return attempt();
  };

  /** Send a failed message again, with its client_id: if an earlier call did
   *  store it after all, the server answers ok and stores nothing. */
  Client.prototype.retryMessage = function (chat, msg) {
    var i = chat.messages.indexOf(msg);
    if (i >= 0) chat.messages.splice(i, 1);
    return this.sendMessage(chat, msg.body, msg.client_id);
  };

  /** Typing notifications (docs/protocol.md#webimstatus): "typing" once per
   *  burst (deduplicated), "clear" after 6 s without keys; nothing to buddies
   *  that are offline. */
  Client.prototype.noteTyping = function (chat) {
    if (chat.type !== "unicast" || !this.ticket) return;
    var b = this.model.buddies.get(chat.id);
    if (!b || b.presence !== "online") return;
    var self = this;
    if (chat.sentTyping !== "typing") {
      chat.sentTyping = "typing";
      this.call("status", { ticket: this.ticket, to: chat.id, show: "typing" }).catch(function () {});
    }
    this.timers.clearTimeout(chat.typingTimer);
    chat.typingTimer = this.timers.setTimeout(function () { self.stopTyping(chat, true); }, TIMING.TYPING_IDLE_MS);
  };

  /** sendClear=false after sending a message: the message itself tells the
   *  other side that typing ended. */
  Client.prototype.stopTyping = function (chat, sendClear) {
    this.timers.clearTimeout(chat.typingTimer);
    chat.typingTimer = null;
    if (chat.sentTyping !== "typing") return;
    chat.sentTyping = "clear";
    if (sendClear && this.ticket) this.call("status", { ticket: this.ticket, to: chat.id, show: "clear" }).catch(function () {});
  };

  Client.prototype.clearHistory = function (chat) {
    var self = this;
    chat.messages = [];
    chat.keys = {};
    chat.rev++;
    this.model.changed("chat");
    return this.transport.call("clear_history", { ticket: this.ticket, id: chat.id, type: chat.type }).catch(function (err) {
      self.emit("notice", err.message);
    });
  };

  // ---- presence and settings ------------------------------------------------------

  Client.prototype.setShow = function (show) {
    var self = this;
    var m = this.model;
    if (show === "offline") return this.goOffline();
    m.show = show;
    this.storage.set("show", show);
    m.changed("header");
    if (!this.ticket) return this.goOnline(show, false);
    return this.transport.call("presence", { ticket: this.ticket, show: show, status: m.status }).catch(function (err) {
      self.emit("notice", err.message);
    });
  };

  Client.prototype.setStatusText = function (text) {
    var m = this.model;
    if (text === m.status) return Promise.resolve();
    m.status = text;
    if (!this.ticket) return Promise.resolve();
    var self = this;
    return this.transport.call("presence", { ticket: this.ticket, show: m.show, status: text }).catch(function (err) {
      self.emit("notice", err.message);
    });
  };

  /** Store the whole setting object (docs/design.md#d11-settings). */
  Client.prototype.saveSetting = function () {
    var self = this;
    if (!this.ticket) return Promise.resolve();
    return this.transport.call("setting", { ticket: this.ticket, data: JSON.stringify(this.model.setting) }).catch(function (err) {
      self.emit("notice", "Settings not saved: " + err.message);
    });
  };

  /** Block: leave the room and remember it in blocked_rooms. Unblock: join
   *  again and reload the history (what was sent meanwhile is there). */
  Client.prototype.setRoomBlocked = function (room, blocked) {
    var self = this;
    var m = this.model;
    m.setRoomBlocked(room, blocked);
    var call = this.transport.call(blocked ? "leave" : "join", { ticket: this.ticket, id: room.id, nick: m.user.nick });
    return Promise.all([this.saveSetting(), call.then(function (info) {
      if (!blocked && info && typeof info === "object") {
        if (info.count !== undefined) room.count = info.count;
        if (info.all_count !== undefined) room.all_count = info.all_count;
      }
      if (!blocked) {
        var chat = m.chats.get(chatKey("multicast", room.id));
        if (chat) { chat.loaded = false; self.loadHistory(chat); }
      }
      self.scheduleRoomCounts();
    }).catch(function (err) { self.emit("notice", err.message); })]);
  };

  /** The server hands each notification out once (then marks it read), so
   *  keep the recent ones in storage: a reload must not lose a notification
   *  the user has not looked at yet (docs/design.md#d12-notifications). */
  Client.prototype.loadNotifications = function () {
    var self = this;
    var m = this.model;
    if (!this.ticket || !m.user) return Promise.resolve();
    var cacheKey = "notifications:" + m.user.id;
    m.notifications = this.storage.get(cacheKey, []);
    m.changed("notifications");
    return this.transport.call("notifications", { ticket: this.ticket }).then(function (list) {
      m.notifications = mergeNotifications(list, m.notifications);
      self.storage.set(cacheKey, m.notifications);
      m.changed("notifications");
    }).catch(function () { /* notifications are optional */ });
  };

  /** Room counts: there is no push for them (join/leave presences are off
   *  by default, docs/design.md#d9-rooms), so refresh from webim/members
   *  after presence changes, coalesced. */
  Client.prototype.scheduleRoomCounts = function () {
    var self = this;
    if (this.roomTimer) return;
    this.roomTimer = this.timers.setTimeout(function () { self.roomTimer = null; self.refreshRoomCounts(); }, TIMING.ROOM_COUNTS_DELAY_MS);
  };

  Client.prototype.scheduleRoomRefresh = function () {
    var self = this;
    this.timers.clearInterval(this.roomRefreshTimer);
    this.roomRefreshTimer = this.timers.setInterval(function () { if (self.ticket) self.refreshRoomCounts(); }, TIMING.ROOM_REFRESH_MS);
  };

  Client.prototype.refreshRoomCounts = function () {
    var self = this;
    var m = this.model;
    if (!this.ticket) return Promise.resolve();
    var calls = [];
    m.rooms.forEach(function (room) {
      if (room.blocked) return;
      calls.push(self.transport.call("members", { ticket: self.ticket, id: room.id }).then(function (list) {
        m.applyMembers(room, list);
      }).catch(function () {}));
    });
    return Promise.all(calls);
  };

  return {
    version: "1.1.0",
    TIMING: TIMING,
    SOCKET_CALLS: SOCKET_CALLS,
    ApiError: ApiError,
    isAuthError: isAuthError,
    checkEnvelope: checkEnvelope,
    parseBody: parseBody,
    backoffDelay: backoffDelay,
    newClientId: newClientId,
    chatKey: chatKey,
    normalizeType: normalizeType,
    msgKey: msgKey,
    notifTime: notifTime,
    mergeNotifications: mergeNotifications,
    defaultSetting: defaultSetting,
    Emitter: Emitter,
    systemTimers: systemTimers,
    memoryStorage: memoryStorage,
    HttpTransport: HttpTransport,
    CometLoop: CometLoop,
    SocketLoop: SocketLoop,
    takeEnvelope: takeEnvelope,
    Model: Model,
    Client: Client
  };
})();

// =============================================================================
// Part 2: the view. Renders the client's model into the page and turns the
// user's clicks into client calls. Only this part touches the DOM.
// =============================================================================

(function (global) {
  "use strict";

  if (!global || !global.document) return; // loaded outside a browser (Node): protocol part only

  var document = global.document;
  var C = NextimClient;
  var chatKey = C.chatKey;
  var notifTime = C.notifTime;

  var SHOW_LABELS = {
    available: "Available",
    chat: "Free to chat",
    away: "Away",
    dnd: "Do not disturb",
    invisible: "Invisible",
    offline: "Offline",
    unavailable: "Offline"
  };
  // What the presence menu offers, in order. "offline" ends the session.
  var MENU_SHOWS = ["available", "away", "dnd", "invisible", "offline"];

  var STORE_PREFIX = "nextim:";

  // ---------------------------------------------------------------------------
  // Small helpers

  /** Create an element. attrs: class, testid, text, title, data (object),
   *  on (object of listeners), and any other DOM property or attribute. */
  function h(tag, attrs) {
    var el = document.createElement(tag);
    var a = attrs || {};
    Object.keys(a).forEach(function (k) {
      var v = a[k];
      if (v === undefined || v === null || v === false) return;
      if (k === "class") el.className = v;
      else if (k === "testid") el.setAttribute("data-testid", v);
      else if (k === "text") el.textContent = String(v);
      else if (k === "data") Object.keys(v).forEach(function (d) { el.dataset[d] = v[d]; });
      else if (k === "on") Object.keys(v).forEach(function (ev) { el.addEventListener(ev, v[ev]); });
      else if (k in el && typeof v !== "string") el[k] = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    });
    for (var i = 2; i < arguments.length; i++) appendChildren(el, arguments[i]);
    return el;
  }

  function appendChildren(el, c) {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { appendChildren(el, x); }); return; }
    el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }

  // Line icons drawn as inline SVG (no icon font, no emoji: both depend on
  // fonts the viewer may not have). 24x24, stroked with currentColor.
  var ICONS = {
    bell: ["M12 3.5a5.5 5.5 0 0 0-5.5 5.5v3.6L5 15.5v1h14v-1l-1.5-2.9V9A5.5 5.5 0 0 0 12 3.5z", "M10 19a2 2 0 0 0 4 0"],
    sliders: ["M4 6h9", "M17 6h3", "M4 12h3", "M11 12h9", "M4 18h11", "M19 18h1", "c15,6", "c9,12", "c17,18"],
    minus: ["M6 12h12"],
    chat: ["M5 5h14a1.5 1.5 0 0 1 1.5 1.5v9a1.5 1.5 0 0 1-1.5 1.5h-8l-4.5 3.5V17H5a1.5 1.5 0 0 1-1.5-1.5v-9A1.5 1.5 0 0 1 5 5z"]
  };
  var SVG_NS = "http://www.w3.org/2000/svg";
  function icon(name, size) {
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", String(size || 18));
    svg.setAttribute("height", String(size || 18));
    svg.setAttribute("fill", "none");
    svg.setAttribute("stroke", "currentColor");
    svg.setAttribute("stroke-width", "1.8");
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", "nx-icon");
    ICONS[name].forEach(function (d) {
      var el;
      if (d.charAt(0) === "c") {
        var xy = d.slice(1).split(",");
        el = document.createElementNS(SVG_NS, "circle");
        el.setAttribute("cx", xy[0]);
        el.setAttribute("cy", xy[1]);
        el.setAttribute("r", "2");
      } else {
        el = document.createElementNS(SVG_NS, "path");
        el.setAttribute("d", d);
      }
      svg.appendChild(el);
    });
    return svg;
  }


  function store(kind) {
    // localStorage may be unavailable (privacy modes, sandboxed iframes).
    try { return kind === "session" ? global.sessionStorage : global.localStorage; } catch (e) { return null; }
  }
  function loadPref(key, fallback, kind) {
    var s = store(kind);
    if (!s) return fallback;
    try { var v = s.getItem(STORE_PREFIX + key); return v === null ? fallback : JSON.parse(v); } catch (e) { return fallback; }
  }
  function savePref(key, value, kind) {
    var s = store(kind);
    if (!s) return;
    try {
      if (value === undefined) s.removeItem(STORE_PREFIX + key);
      else s.setItem(STORE_PREFIX + key, JSON.stringify(value));
    } catch (e) { /* quota or privacy mode: preferences are a nicety */ }
  }

  function initials(nick, id) {
    var s = String(nick || id || "?").trim();
    var parts = s.split(/\s+/);
    var first = Array.from(parts[0] || "?")[0] || "?";
    var second = parts.length > 1 ? (Array.from(parts[1])[0] || "") : "";
    return (first + second).toUpperCase();
  }

  /** A stable avatar colour per id, from a small palette that keeps white
   *  initials readable (FNV-1a hash of the id picks the colour). */
  var AVATAR_COLORS = ["#e5484d", "#e8590c", "#2f9e44", "#0d9488", "#2563eb", "#7c3aed", "#c2255c", "#0e7490"];
  function avatarColor(id) {
    var x = 2166136261;
    var s = String(id);
    for (var i = 0; i < s.length; i++) { x ^= s.charCodeAt(i); x = Math.imul(x, 16777619) >>> 0; }
    return AVATAR_COLORS[x % AVATAR_COLORS.length];
  }

  function isHttpUrl(value, base) {
    try {
      var u = new URL(String(value), base || global.location.href);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) { return null; }
  }


  // ---------------------------------------------------------------------------
  // Time: server timestamps shown in the viewer's local time, corrected by the
  // clock skew measured at `online` (server_time - local time).

  function pad2(n) { return (n < 10 ? "0" : "") + n; }

  /** Format a server timestamp (ms) for display. skew = server - local. */
  function formatTime(ts, skew, nowLocal) {
    var t = parseFloat(ts);
    if (!isFinite(t)) return "";
    var d = new Date(t - (skew || 0));
    var now = new Date(nowLocal === undefined ? Date.now() : nowLocal);
    var hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
    if (d.toDateString() === now.toDateString()) return hm;
    var date = d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate());
    return date + " " + hm;
  }

  function dayLabel(ts, skew) {
    var d = new Date(parseFloat(ts) - (skew || 0));
    var today = new Date();
    var yesterday = new Date(Date.now() - 86400000);
    if (d.toDateString() === today.toDateString()) return "Today";
    if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
    return d.toLocaleDateString();
  }

  // ---------------------------------------------------------------------------
  // Notification HTML sanitizer: DOMParser (inert document: no scripts run, no
  // images load) + a walk that rebuilds only allow-listed elements into the
  // live document. Anything not rebuilt never reaches the page.

  var ALLOWED_TAGS = { B: 1, STRONG: 1, I: 1, EM: 1, U: 1, A: 1, BR: 1, IMG: 1, P: 1, SPAN: 1 };
  // Dropped together with their content (the rest is unwrapped: text kept).
  var DROPPED_TAGS = {
    SCRIPT: 1, STYLE: 1, IFRAME: 1, FRAME: 1, FRAMESET: 1, OBJECT: 1, EMBED: 1, APPLET: 1,
    SVG: 1, MATH: 1, TEMPLATE: 1, NOSCRIPT: 1, FORM: 1, INPUT: 1, TEXTAREA: 1, SELECT: 1,
    BUTTON: 1, LINK: 1, META: 1, BASE: 1, TITLE: 1, HEAD: 1, AUDIO: 1, VIDEO: 1, SOURCE: 1,
    CANVAS: 1, PORTAL: 1, DIALOG: 1
  };

  function sanitizeHtml(html, targetDoc) {
    var out = (targetDoc || document).createDocumentFragment();
    if (html === null || html === undefined) return out;
    var parsed = new global.DOMParser().parseFromString(String(html), "text/html");
    copyAllowed(parsed.body, out, out.ownerDocument || targetDoc || document);
    return out;
  }

  function copyAllowed(src, dst, doc) {
    for (var n = src.firstChild; n; n = n.nextSibling) {
      if (n.nodeType === 3) { dst.appendChild(doc.createTextNode(n.nodeValue)); continue; }
      if (n.nodeType !== 1) continue; // comments, processing instructions
      var tag = n.tagName.toUpperCase();
      if (DROPPED_TAGS[tag]) continue;
      if (!ALLOWED_TAGS[tag]) { copyAllowed(n, dst, doc); continue; } // unwrap unknown
      var el = doc.createElement(tag.toLowerCase());
      if (tag === "A") {
        var href = isHttpUrl(n.getAttribute("href") || "");
        if (href) {
          el.setAttribute("href", href);
          el.setAttribute("target", "_blank");
          el.setAttribute("rel", "noopener noreferrer nofollow");
        }
      } else if (tag === "IMG") {
        var src2 = isHttpUrl(n.getAttribute("src") || "");
        if (!src2) continue; // an image without a safe source is nothing
        el.setAttribute("src", src2);
        el.setAttribute("alt", n.getAttribute("alt") || "");
        el.setAttribute("referrerpolicy", "no-referrer");
        el.setAttribute("loading", "lazy");
      }
      if (tag !== "BR" && tag !== "IMG") copyAllowed(n, el, doc);
      dst.appendChild(el);
    }
  }

  /** Message style (docs/design.md#d15-limits): the server already filters it; keep a second
   *  allow-list here so a bad server cannot style us into trouble. */
  var STYLE_PROPS = {
    "color": 1, "background-color": 1, "font-weight": 1, "font-style": 1,
    "font-size": 1, "font-family": 1, "text-decoration": 1
  };
  function applyMessageStyle(el, style) {
    if (!style || typeof style !== "string") return;
    style.split(";").forEach(function (decl) {
      var i = decl.indexOf(":");
      if (i < 0) return;
      var prop = decl.slice(0, i).trim().toLowerCase();
      var value = decl.slice(i + 1).trim();
      if (!STYLE_PROPS[prop]) return;
      if (!/^[#\w\s,.%'-]{1,64}$/.test(value) || /expression|url/i.test(value)) return;
      el.style.setProperty(prop, value);
    });
  }

  /** Render message text with clickable http(s) links, all as text nodes. */
  function linkify(el, text) {
    var re = /\bhttps?:\/\/[^\s<>"']+/g;
    var last = 0;
    var m;
    while ((m = re.exec(text)) !== null) {
      var url = m[0].replace(/[.,;:!?)\]]+$/, "");
      if (m.index > last) el.appendChild(document.createTextNode(text.slice(last, m.index)));
      var safe = isHttpUrl(url);
      if (safe) {
        el.appendChild(h("a", { href: safe, target: "_blank", rel: "noopener noreferrer nofollow", text: url }));
      } else {
        el.appendChild(document.createTextNode(url));
      }
      last = m.index + url.length;
      re.lastIndex = last;
    }
    if (last < text.length) el.appendChild(document.createTextNode(text.slice(last)));
  }

  // ---------------------------------------------------------------------------
  // Sound: a short WebAudio beep, created lazily (browsers only allow audio
  // after a user gesture; the context is resumed on the first click/key).

  function Beeper() { this.ctx = null; this.count = 0; }
  Beeper.prototype.unlock = function () {
    if (this.ctx) { if (this.ctx.state === "suspended") this.ctx.resume().catch(function () {}); return; }
    var AC = global.AudioContext || global.webkitAudioContext;
    if (!AC) return;
    try { this.ctx = new AC(); } catch (e) { this.ctx = null; }
  };
  Beeper.prototype.beep = function () {
    this.count++;
    if (!this.ctx) this.unlock();
    var ctx = this.ctx;
    if (!ctx) return;
    try {
      var t = ctx.currentTime;
      var osc = ctx.createOscillator();
      var gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.setValueAtTime(880, t);
      osc.frequency.setValueAtTime(1320, t + 0.07);
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.12, t + 0.01);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.18);
      osc.connect(gain);
      gain.connect(ctx.destination);
      osc.start(t);
      osc.stop(t + 0.2);
    } catch (e) { /* sound is optional */ }
  };


  // ---------------------------------------------------------------------------
  // Browser glue: the client's transport, storage and timers

  /** What HttpTransport needs from the browser. */
  function browserTransportEnv(timers) {
    var nav = global.navigator;
    return {
      fetch: function (url, init) { return global.fetch(url, init); },
      insertScript: function (src, onload, onerror) {
        var script = document.createElement("script");
        script.async = true;
        script.src = src;
        script.onload = onload;
        script.onerror = onerror;
        (document.head || document.documentElement).appendChild(script);
        return function () { if (script.parentNode) script.parentNode.removeChild(script); };
      },
      sendBeacon: nav && nav.sendBeacon ? function (url, body) { return nav.sendBeacon(url, body); } : null,
      origin: global.location.origin,
      resolve: function (url) { return new URL(url, global.location.href).href; },
      callbacks: global.NextIM._cb,
      callbackPrefix: "NextIM._cb.",
      WebSocket: typeof global.WebSocket === "function" ? global.WebSocket : null,
      timers: timers
    };
  }

  /** The client's storage seam over localStorage / sessionStorage. */
  var browserStorage = { get: loadPref, set: savePref };

  // ---------------------------------------------------------------------------
  // The application: one client and its view

  function App(opts) {
    var self = this;
    this.opts = opts;
    this.embedded = !!opts.embedded;
    this.tokenMode = !!(opts.token || opts.getToken);
    var timers = C.systemTimers();
    this.transport = new C.HttpTransport(opts, browserTransportEnv(timers));
    this.client = new C.Client({
      transport: this.transport,
      timers: timers,
      storage: browserStorage,
      getToken: opts.getToken,
      tokenMode: this.tokenMode
    });
    this.beeper = new Beeper();
    this.view = null;
    this.ui = {};
    this.dirty = {};
    this.renderTimer = null;
    this.minimized = this.embedded && loadPref("minimized", false);

    var client = this.client;
    client.on("change", function (parts) { self.invalidate.apply(self, parts); });
    client.on("screen", function (name, detail) { self.showScreen(name, detail); });
    client.on("beep", function () { self.beeper.beep(); });
    client.on("notice", function (text) { self.flash(text); });

    this.build();
    this.bindGlobalEvents();
  }

  // The model and the session, as the view (and tests, and host pages) read them.
  ["user", "show", "status", "setting", "buddies", "rooms", "chats", "tabs", "active", "notifications"].forEach(function (k) {
    Object.defineProperty(App.prototype, k, { get: function () { return this.client.model[k]; } });
  });
  ["ticket", "conn", "connDetail", "skew", "packetLog", "channel"].forEach(function (k) {
    Object.defineProperty(App.prototype, k, { get: function () { return this.client[k]; } });
  });

  // Calls straight through to the client.
  ["goOnline", "reonline", "setShow", "setStatusText", "saveSetting", "setRoomBlocked", "logout", "stop",
    "loadHistory", "scheduleRoomCounts", "refreshRoomCounts", "noteTyping", "stopTyping", "sendMessage",
    "retryMessage", "clearHistory", "closeTab"].forEach(function (k) {
    App.prototype[k] = function () { return this.client[k].apply(this.client, arguments); };
  });

  App.prototype.begin = function () { return this.client.begin(); };

  /** Abort the comet poll or drop the socket (it is retried, with backoff). */
  App.prototype.abortPoll = function () { this.client.abortChannel(); };

  /** focus: the user picked the chat (unfold the widget, focus the input). */
  App.prototype.openTab = function (key, focus) {
    if (focus && this.minimized) this.setMinimized(false);
    this.client.openTab(key, focus);
    if (focus) this.focusInput = true;
  };

  App.prototype.isSeen = function (chat) { return this.client.model.isSeen(chat); };
  App.prototype.totalUnread = function () { return this.client.model.totalUnread(); };

  /** The model needs to know whether the active chat is in front of the user. */
  App.prototype.updateViewing = function () {
    this.client.model.setViewing(this.view === "main" && !this.minimized && document.visibilityState !== "hidden");
  };

  /** The client says what to show. */
  App.prototype.showScreen = function (name, detail) {
    if (name === "autherror") {
      this.ui.authErrorText.textContent = "Chat is not available: " +
        (detail || "you are not signed in to the site, or your session expired.");
    }
    this.setView(name, detail);
  };

  // ---- DOM: build once -------------------------------------------------------------

  App.prototype.build = function () {
    var self = this;
    var ui = this.ui;
    var host = this.opts.container;
    if (typeof host === "string") host = document.getElementById(host);
    if (!host) { host = h("div"); document.body.appendChild(host); }
    ui.root = h("div", { class: "nx-root" + (this.embedded ? " nx-embedded" : " nx-page"), testid: "nextim-root" });
    host.appendChild(ui.root);

    ui.flash = h("div", { class: "nx-flash", role: "status", "aria-live": "polite", testid: "flash" });

    // Login view (accounts mode only).
    ui.loginUser = h("input", { name: "username", autocomplete: "username", required: true, testid: "login-username", id: "nx-login-username" });
    ui.loginPass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, testid: "login-password", id: "nx-login-password" });
    ui.loginError = h("div", { class: "nx-login-error", role: "alert", testid: "login-error" });
    ui.loginButton = h("button", { type: "submit", class: "nx-btn nx-btn-primary", testid: "login-submit", text: "Sign in" });
    ui.login = h("form", { class: "nx-login", testid: "login-view", on: { submit: function (e) { e.preventDefault(); self.submitLogin(); } } },
      h("div", { class: "nx-login-logo" }, icon("chat", 40)),
      h("h1", { text: "NextIM" }),
      h("p", { class: "nx-muted", text: "Sign in to chat" }),
      h("label", { for: "nx-login-username", text: "User name" }), ui.loginUser,
      h("label", { for: "nx-login-password", text: "Password" }), ui.loginPass,
      ui.loginError, ui.loginButton);

    ui.loading = h("div", { class: "nx-center", testid: "loading-view" },
      h("div", { class: "nx-spinner", "aria-hidden": "true" }),
      ui.loadingText = h("p", { class: "nx-muted", text: "Connecting…" }));

    ui.offlineView = h("div", { class: "nx-center", testid: "offline-view" },
      h("p", { text: "You are offline." }),
      h("button", { class: "nx-btn nx-btn-primary", testid: "go-online", text: "Go online", on: { click: function () { self.client.storage.set("offline", undefined); self.goOnline(self.show === "offline" ? "available" : self.show, true); } } }));

    ui.authErrorText = h("p", { testid: "auth-error-text" });
    ui.authError = h("div", { class: "nx-center", testid: "auth-error-view" },
      ui.authErrorText,
      h("button", { class: "nx-btn", text: "Try again", on: { click: function () { self.goOnline(self.show, true); } } }));

    ui.main = this.buildMain();
    ui.root.appendChild(ui.flash);
    [ui.login, ui.loading, ui.offlineView, ui.authError, ui.main].forEach(function (v) { v.hidden = true; ui.root.appendChild(v); });
    if (this.embedded) ui.root.appendChild(this.buildLauncher());
    this.setView("loading");
  };

  App.prototype.buildMain = function () {
    var self = this;
    var ui = this.ui;

    ui.myAvatar = h("span", { class: "nx-avatar nx-avatar-sm" });
    ui.myNick = h("span", { class: "nx-my-nick", testid: "my-nick" });
    ui.presenceDot = h("span", { class: "nx-dot" });
    ui.presenceLabel = h("span", { testid: "my-presence" });
    ui.presenceButton = h("button", {
      class: "nx-presence-btn", type: "button", testid: "presence-button", "aria-haspopup": "menu", "aria-expanded": "false",
      on: { click: function (e) { e.stopPropagation(); self.togglePresenceMenu(); } }
    }, ui.presenceDot, ui.presenceLabel, h("span", { class: "nx-caret", "aria-hidden": "true", text: "▾" }));
    ui.presenceMenu = h("div", { class: "nx-menu", role: "menu", testid: "presence-menu", hidden: true },
      MENU_SHOWS.map(function (s) {
        return h("button", {
          type: "button", role: "menuitemradio", class: "nx-menu-item", testid: "presence-option-" + s, data: { show: s },
          on: { click: function () { self.closeMenus(); self.setShow(s); } }
        }, h("span", { class: "nx-dot nx-show-" + s }), SHOW_LABELS[s]);
      }));
    ui.statusInput = h("input", {
      class: "nx-status-input", testid: "status-input", placeholder: "What's on your mind?", maxlength: "140", "aria-label": "Status message",
      on: {
        keydown: function (e) { if (e.key === "Enter") { e.preventDefault(); self.setStatusText(ui.statusInput.value.trim()); ui.statusInput.blur(); } },
        blur: function () { self.setStatusText(ui.statusInput.value.trim()); }
      }
    });
    ui.connState = h("span", { class: "nx-conn", testid: "conn-state", role: "status", "aria-live": "polite" });

    ui.notifCount = h("span", { class: "nx-badge", testid: "notifications-count", hidden: true });
    ui.notifButton = h("button", { type: "button", class: "nx-icon-btn", title: "Notifications", "aria-label": "Notifications", testid: "notifications-button",
      on: { click: function (e) { e.stopPropagation(); self.togglePanel("notifications"); } } }, icon("bell"), ui.notifCount);
    ui.settingsButton = h("button", { type: "button", class: "nx-icon-btn", title: "Settings", "aria-label": "Settings", testid: "settings-button",
      on: { click: function (e) { e.stopPropagation(); self.togglePanel("settings"); } } }, icon("sliders"));
    ui.logoutButton = h("button", { type: "button", class: "nx-btn nx-btn-small", testid: "logout-button", text: "Sign out",
      hidden: this.tokenMode, on: { click: function () { self.logout(); } } });
    ui.minButton = this.embedded ? h("button", { type: "button", class: "nx-icon-btn", title: "Minimize", "aria-label": "Minimize", testid: "minimize-button",
      on: { click: function () { self.setMinimized(true); } } }, icon("minus")) : null;

    ui.notifList = h("div", { class: "nx-notif-list", testid: "notification-list" });
    ui.notifPanel = h("div", { class: "nx-panel", testid: "notifications-panel", hidden: true, on: { click: function (e) { e.stopPropagation(); } } },
      h("h3", { text: "Notifications" }), ui.notifList);

    ui.settingInputs = {};
    var settingRows = [
      ["play_sound", "Play a sound for new messages"],
      ["msg_auto_pop", "Open a tab when a message arrives"]
    ].map(function (row) {
      var box = h("input", { type: "checkbox", testid: "setting-" + row[0], id: "nx-setting-" + row[0],
        on: { change: function () { self.setting[row[0]] = box.checked; if (row[0] === "play_sound" && box.checked) self.beeper.beep(); self.saveSetting(); } } });
      ui.settingInputs[row[0]] = box;
      return h("label", { class: "nx-check", for: "nx-setting-" + row[0] }, box, " ", row[1]);
    });
    ui.settingsPanel = h("div", { class: "nx-panel", testid: "settings-panel", hidden: true, on: { click: function (e) { e.stopPropagation(); } } },
      h("h3", { text: "Settings" }), settingRows);

    var header = h("div", { class: "nx-header" },
      h("div", { class: "nx-me" }, ui.myAvatar,
        h("div", { class: "nx-me-text" }, ui.myNick,
          h("div", { class: "nx-presence-wrap" }, ui.presenceButton, ui.presenceMenu))),
      ui.statusInput,
      h("div", { class: "nx-header-right" }, ui.connState, ui.notifButton, ui.settingsButton, ui.logoutButton, ui.minButton),
      ui.notifPanel, ui.settingsPanel);

    ui.buddyList = h("div", { class: "nx-buddy-list", testid: "buddy-list" });
    ui.roomList = h("div", { class: "nx-room-list", testid: "room-list" });
    ui.buddyFilter = h("input", { class: "nx-filter", type: "search", placeholder: "Search buddies", testid: "buddy-filter", "aria-label": "Search buddies",
      on: { input: function () { self.invalidate("buddies"); } } });
    var sidebar = h("div", { class: "nx-sidebar" },
      ui.buddyFilter,
      h("div", { class: "nx-section" }, h("h2", { text: "Buddies" }), ui.buddyList),
      h("div", { class: "nx-section" }, h("h2", { text: "Rooms" }), ui.roomList));

    ui.tabs = h("div", { class: "nx-tabs", testid: "chat-tabs", role: "tablist" });
    ui.chat = h("div", { class: "nx-chat", testid: "chat-pane" });
    var chats = h("div", { class: "nx-chats" }, ui.tabs, ui.chat);

    return h("div", { class: "nx-main", testid: "main-view" }, header, h("div", { class: "nx-body" }, sidebar, chats));
  };

  App.prototype.buildLauncher = function () {
    var self = this;
    this.ui.launcherBadge = h("span", { class: "nx-badge", hidden: true, testid: "launcher-unread" });
    this.ui.launcher = h("button", { type: "button", class: "nx-launcher", testid: "launcher", hidden: true,
      on: { click: function () { self.setMinimized(false); } } }, icon("chat", 20), h("span", { text: "Chat" }), this.ui.launcherBadge);
    return this.ui.launcher;
  };

  App.prototype.setMinimized = function (min) {
    this.minimized = min;
    savePref("minimized", min);
    this.updateViewing();
    this.invalidate("all");
  };

  App.prototype.bindGlobalEvents = function () {
    var self = this;
    var unlock = function () { self.beeper.unlock(); };
    document.addEventListener("pointerdown", unlock, { once: true, capture: true });
    document.addEventListener("keydown", unlock, { once: true, capture: true });
    document.addEventListener("click", function () { self.closeMenus(); });
    document.addEventListener("keydown", function (e) { if (e.key === "Escape") self.closeMenus(); });
    document.addEventListener("visibilitychange", function () {
      self.updateViewing();
    });
    // Reload/close: tell the server this tab's session ends now, so its
    // grace timer starts at once (docs/design.md#d5-timers) and a reload never flaps presence.
    global.addEventListener("pagehide", function () {
      if (self.client.pageHide()) self.pagehidden = true;
    });
    // Back from the back/forward cache: the old ticket is gone.
    global.addEventListener("pageshow", function (e) {
      if (e.persisted && self.pagehidden) { self.pagehidden = false; self.reonline(); }
    });
  };

  App.prototype.closeMenus = function () {
    var ui = this.ui;
    if (!ui.presenceMenu) return;
    ui.presenceMenu.hidden = true;
    ui.presenceButton.setAttribute("aria-expanded", "false");
    ui.notifPanel.hidden = true;
    ui.settingsPanel.hidden = true;
  };

  App.prototype.togglePresenceMenu = function () {
    var open = this.ui.presenceMenu.hidden;
    var current = this.conn === "offline" ? "offline" : this.show;
    Array.prototype.forEach.call(this.ui.presenceMenu.children, function (item) {
      item.setAttribute("aria-checked", String(item.dataset.show === current));
    });
    this.closeMenus();
    this.ui.presenceMenu.hidden = !open;
    this.ui.presenceButton.setAttribute("aria-expanded", open ? "true" : "false");
  };

  App.prototype.togglePanel = function (which) {
    var panel = which === "notifications" ? this.ui.notifPanel : this.ui.settingsPanel;
    var open = panel.hidden;
    this.closeMenus();
    panel.hidden = !open;
    if (open && which === "notifications") {
      savePref("notif_seen:" + (this.user ? this.user.id : ""), this.newestNotificationTime());
      this.invalidate("notifications");
    }
  };

  App.prototype.submitLogin = function () {
    var self = this;
    var ui = this.ui;
    ui.loginError.textContent = "";
    ui.loginButton.disabled = true;
    this.client.login(ui.loginUser.value.trim(), ui.loginPass.value).then(function () {
      ui.loginPass.value = "";
      ui.loginButton.disabled = false;
    }).catch(function (err) {
      ui.loginButton.disabled = false;
      ui.loginError.textContent = err.status === 401 ? "Wrong user name or password." : err.message;
      ui.loginPass.select();
    });
  };

  App.prototype.flash = function (text) {
    var el = this.ui.flash;
    el.textContent = text;
    el.classList.add("nx-flash-on");
    clearTimeout(this.flashTimer);
    this.flashTimer = setTimeout(function () { el.classList.remove("nx-flash-on"); }, 4000);
  };

  // ---- DOM: state -> view -------------------------------------------------------------

  App.prototype.setView = function (view, detail) {
    this.view = view;
    var ui = this.ui;
    ui.login.hidden = view !== "login";
    ui.loading.hidden = view !== "loading";
    ui.offlineView.hidden = view !== "offline";
    ui.authError.hidden = view !== "autherror";
    ui.main.hidden = view !== "main";
    ui.root.dataset.view = view;
    if (view === "loading") ui.loadingText.textContent = detail ? "Connecting… (" + detail + ")" : "Connecting…";
    if (view === "login") setTimeout(function () { ui.loginUser.focus(); }, 0);
    this.updateViewing();
    this.invalidate("title");
  };

  /** Coalesce re-renders: many packets in one batch → one paint. setTimeout
   *  rather than requestAnimationFrame so hidden tabs keep their title and
   *  counters current. */
  App.prototype.invalidate = function () {
    for (var i = 0; i < arguments.length; i++) this.dirty[arguments[i]] = true;
    if (this.renderTimer) return;
    var self = this;
    this.renderTimer = setTimeout(function () { self.renderTimer = null; self.render(); }, 0);
  };

  App.prototype.render = function () {
    var d = this.dirty;
    this.dirty = {};
    var all = d.all;
    if (all || d.header) this.renderHeader();
    if (all || d.buddies) this.renderBuddies();
    if (all || d.rooms) this.renderRooms();
    if (all || d.tabs) this.renderTabs();
    if (all || d.chat) this.renderChat();
    if (all || d.notifications) this.renderNotifications();
    if (all || d.title || d.tabs || d.chat) this.renderTitle();
  };

  var CONN_LABELS = { connecting: "Connecting…", online: "Online", reconnecting: "Reconnecting…", offline: "Offline" };

  App.prototype.renderHeader = function () {
    var ui = this.ui;
    var u = this.user || {};
    ui.myNick.textContent = u.nick || u.id || "";
    this.fillAvatar(ui.myAvatar, u);
    var show = this.conn === "offline" ? "offline" : this.show;
    ui.presenceDot.className = "nx-dot nx-show-" + show;
    ui.presenceLabel.textContent = SHOW_LABELS[show] || show;
    ui.presenceButton.dataset.show = show;
    if (document.activeElement !== ui.statusInput) ui.statusInput.value = this.status || "";
    ui.connState.textContent = this.conn;
    ui.connState.dataset.state = this.conn;
    ui.connState.dataset.transport = this.channel || "";
    ui.connState.title = (CONN_LABELS[this.conn] || this.conn) + (this.connDetail ? " — " + this.connDetail : "");
    ui.root.dataset.conn = this.conn;
    Object.keys(ui.settingInputs).forEach(function (k) { ui.settingInputs[k].checked = this.setting[k] !== false; }, this);
    if (this.embedded) {
      ui.root.classList.toggle("nx-min", !!this.minimized && this.view === "main");
      ui.launcher.hidden = !this.minimized || this.view !== "main";
    }
  };

  App.prototype.fillAvatar = function (el, who) {
    clear(el);
    el.style.setProperty("--nx-avatar", avatarColor(who.id || ""));
    var src = who.pic_url && isHttpUrl(who.pic_url);
    if (src) {
      var img = h("img", { src: src, alt: "", referrerpolicy: "no-referrer", loading: "lazy" });
      // A broken picture falls back to initials.
      img.addEventListener("error", function () { clear(el); el.textContent = initials(who.nick, who.id); });
      el.appendChild(img);
    } else {
      el.textContent = initials(who.nick, who.id);
    }
  };

  function showRank(b) {
    if (b.presence !== "online") return 9;
    return { chat: 0, available: 0, away: 1, dnd: 2 }[b.show] !== undefined ? { chat: 0, available: 0, away: 1, dnd: 2 }[b.show] : 3;
  }

  App.prototype.renderBuddies = function () {
    var self = this;
    var list = this.ui.buddyList;
    var filter = (this.ui.buddyFilter.value || "").trim().toLowerCase();
    var groups = new Map();
    this.buddies.forEach(function (b) {
      if (filter && String(b.nick).toLowerCase().indexOf(filter) < 0 && String(b.id).toLowerCase().indexOf(filter) < 0) return;
      // The server calls them "stranger"; show one tidy group either way.
      var g = /^strangers?$/i.test(b.group || "") ? "Strangers" : (b.group || "Buddies");
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(b);
    });
    var names = Array.from(groups.keys()).sort(function (a, b) {
      // Strangers go last, as in the 2010 webim client.
      var sa = /stranger/i.test(a) ? 1 : 0;
      var sb = /stranger/i.test(b) ? 1 : 0;
      return sa - sb || a.localeCompare(b);
    });
    clear(list);
    if (!names.length) list.appendChild(h("p", { class: "nx-empty", text: filter ? "No match." : "No buddies yet." }));
    names.forEach(function (name) {
      var members = groups.get(name).sort(function (a, b) {
        return showRank(a) - showRank(b) || String(a.nick).localeCompare(String(b.nick));
      });
      var online = members.filter(function (b) { return b.presence === "online"; }).length;
      list.appendChild(h("div", { class: "nx-group", testid: "buddy-group-" + name },
        h("h3", { class: "nx-group-title" }, h("span", { text: name }), h("span", { class: "nx-muted", text: online + "/" + members.length })),
        h("ul", { class: "nx-list" }, members.map(function (b) { return self.buddyItem(b); }))));
    });
  };

  App.prototype.buddyItem = function (b) {
    var self = this;
    var key = chatKey("unicast", b.id);
    var chat = this.chats.get(key);
    var unread = chat ? chat.unread : 0;
    var show = b.presence === "online" ? (b.show || "available") : "offline";
    var avatar = h("span", { class: "nx-avatar" });
    this.fillAvatar(avatar, b);
    return h("li", { class: "nx-item" + (b.presence === "online" ? " nx-online" : " nx-offline") + (key === this.active ? " nx-current" : "") },
      h("button", { type: "button", class: "nx-item-btn", testid: "buddy-" + b.id, data: { presence: b.presence },
        on: { click: function () { self.openTab(key, true); } } },
        h("span", { class: "nx-avatar-wrap" }, avatar, h("span", { class: "nx-dot nx-dot-badge nx-show-" + show })),
        h("span", { class: "nx-item-text" },
          h("span", { class: "nx-item-title", testid: "buddy-nick-" + b.id, text: b.nick || b.id }),
          h("span", { class: "nx-item-sub" },
            h("span", { class: "nx-presence-text", testid: "buddy-presence-" + b.id, data: { presence: b.presence, show: show }, text: SHOW_LABELS[show] || show }),
            b.status ? h("span", { class: "nx-status-text", testid: "buddy-status-" + b.id, text: " · " + b.status }) : null)),
        unread ? h("span", { class: "nx-badge", testid: "buddy-unread-" + b.id, text: String(unread) }) : null));
  };

  App.prototype.renderRooms = function () {
    var self = this;
    var list = this.ui.roomList;
    clear(list);
    var rooms = Array.from(this.rooms.values()).sort(function (a, b) { return String(a.nick).localeCompare(String(b.nick)); });
    if (!rooms.length) list.appendChild(h("p", { class: "nx-empty", text: "No rooms." }));
    list.appendChild(h("ul", { class: "nx-list" }, rooms.map(function (r) { return self.roomItem(r); })));
  };

  App.prototype.roomItem = function (r) {
    var self = this;
    var key = chatKey("multicast", r.id);
    var chat = this.chats.get(key);
    var unread = chat ? chat.unread : 0;
    var avatar = h("span", { class: "nx-avatar nx-avatar-room", text: "#" });
    return h("li", { class: "nx-item" + (r.blocked ? " nx-blocked" : "") + (key === this.active ? " nx-current" : "") },
      h("button", { type: "button", class: "nx-item-btn", testid: "room-" + r.id, data: { blocked: String(!!r.blocked) },
        on: { click: function () { self.openTab(key, true); } } },
        h("span", { class: "nx-avatar-wrap" }, avatar),
        h("span", { class: "nx-item-text" },
          h("span", { class: "nx-item-title", text: r.nick || r.id }),
          h("span", { class: "nx-item-sub" },
            r.blocked ? h("span", { text: "blocked" })
              : h("span", { testid: "room-count-" + r.id, data: { count: String(r.count || 0) }, text: (r.count || 0) + " online" + (r.all_count ? " of " + r.all_count : "") }))),
        unread ? h("span", { class: "nx-badge", testid: "room-unread-" + r.id, text: String(unread) }) : null),
      h("button", { type: "button", class: "nx-btn nx-btn-small nx-room-block", testid: "room-block-" + r.id,
        title: r.blocked ? "Join the room again" : "Stop receiving this room's messages",
        text: r.blocked ? "Unblock" : "Block",
        on: { click: function () { self.setRoomBlocked(r, !r.blocked); } } }));
  };

  App.prototype.chatTitle = function (chat) {
    if (chat.type === "unicast") { var b = this.buddies.get(chat.id); return b ? (b.nick || b.id) : chat.id; }
    var r = this.rooms.get(chat.id);
    return r ? (r.nick || r.id) : chat.id;
  };

  App.prototype.renderTabs = function () {
    var self = this;
    var nav = this.ui.tabs;
    clear(nav);
    this.tabs.forEach(function (key) {
      var chat = self.chats.get(key);
      if (!chat) return;
      var tid = chat.type + "-" + chat.id;
      var dot = null;
      if (chat.type === "unicast") {
        var b = self.buddies.get(chat.id);
        dot = h("span", { class: "nx-dot nx-show-" + (b && b.presence === "online" ? b.show : "offline") });
      } else {
        dot = h("span", { class: "nx-tab-hash", text: "#" });
      }
      nav.appendChild(h("div", { class: "nx-tab" + (key === self.active ? " nx-tab-active" : ""), role: "presentation" },
        h("button", { type: "button", role: "tab", class: "nx-tab-btn", testid: "tab-" + tid, "aria-selected": String(key === self.active),
          on: { click: function () { self.openTab(key, true); } } },
          dot, h("span", { class: "nx-tab-label", text: self.chatTitle(chat) }),
          chat.unread ? h("span", { class: "nx-badge", testid: "tab-unread-" + tid, text: String(chat.unread) }) : null),
        h("button", { type: "button", class: "nx-tab-close", testid: "tab-close-" + tid, "aria-label": "Close", text: "×",
          on: { click: function () { self.closeTab(key); } } })));
    });
  };

  App.prototype.renderChat = function () {
    var chat = this.active && this.chats.get(this.active);
    var pane = this.ui.chat;
    if (!chat) {
      this.paneKey = null;
      clear(pane);
      pane.dataset.chat = "";
      pane.appendChild(h("div", { class: "nx-center nx-muted", testid: "chat-empty" },
        h("div", { class: "nx-big-icon" }, icon("chat", 48)),
        h("p", { text: "Pick a buddy or a room to start chatting." })));
      return;
    }
    if (this.paneKey !== chat.key) this.buildChatPane(chat);
    this.updateChatPane(chat);
  };

  /** Build the static parts of the chat pane when the active chat changes. */
  App.prototype.buildChatPane = function (chat) {
    var self = this;
    var ui = this.ui;
    var pane = ui.chat;
    clear(pane);
    this.paneKey = chat.key;
    this.paneRev = -1;
    this.paneCount = 0;
    pane.dataset.chat = chat.key;
    ui.chatTitle = h("h2", { class: "nx-chat-title", testid: "chat-title" });
    ui.chatSub = h("div", { class: "nx-chat-sub", testid: "chat-subtitle" });
    ui.chatActions = h("div", { class: "nx-chat-actions" });
    ui.messages = h("div", { class: "nx-messages", testid: "messages", role: "log", "aria-live": "polite" });
    ui.typing = h("div", { class: "nx-typing", testid: "typing-indicator", hidden: true });
    ui.members = h("ul", { class: "nx-members", testid: "room-members" });
    ui.input = h("textarea", {
      class: "nx-input", testid: "chat-input", rows: "1", placeholder: "Write a message…", "aria-label": "Message",
      on: {
        keydown: function (e) {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); self.submitInput(chat); }
        },
        input: function () { chat.draft = ui.input.value; if (ui.input.value) self.noteTyping(chat); else self.stopTyping(chat, true); self.autoGrow(); }
      }
    });
    ui.input.value = chat.draft || "";
    ui.sendButton = h("button", { type: "button", class: "nx-btn nx-btn-primary", testid: "chat-send", text: "Send",
      on: { click: function () { self.submitInput(chat); } } });
    ui.composer = h("form", { class: "nx-composer", on: { submit: function (e) { e.preventDefault(); self.submitInput(chat); } } }, ui.input, ui.sendButton);
    ui.blockedNote = h("div", { class: "nx-blocked-note", testid: "room-blocked-note", hidden: true },
      "You blocked this room; its messages are not delivered to you. ",
      h("button", { type: "button", class: "nx-btn nx-btn-small", text: "Unblock", on: { click: function () { var r = self.rooms.get(chat.id); if (r) self.setRoomBlocked(r, false); } } }));
    var body = h("div", { class: "nx-chat-body" }, h("div", { class: "nx-chat-main" }, ui.messages, ui.typing, ui.blockedNote, ui.composer),
      chat.type === "multicast" ? h("div", { class: "nx-members-wrap" }, h("h3", { text: "Members" }), ui.members) : null);
    pane.appendChild(h("div", { class: "nx-chat-head" }, h("div", {}, ui.chatTitle, ui.chatSub), ui.chatActions));
    pane.appendChild(body);
    if (chat.type === "unicast") {
      ui.chatActions.appendChild(this.clearButton(chat));
    } else if (this.ticket) {
      this.scheduleRoomCounts();
    }
    if (!chat.loaded) this.loadHistory(chat);
  };

  App.prototype.clearButton = function (chat) {
    var self = this;
    var armed = false;
    var btn = h("button", { type: "button", class: "nx-btn nx-btn-small", testid: "chat-clear", text: "Clear history",
      on: {
        click: function () {
          // Two clicks instead of confirm(): no modal dialogs in an embed.
          if (!armed) { armed = true; btn.textContent = "Click again to clear"; setTimeout(function () { armed = false; btn.textContent = "Clear history"; }, 3000); return; }
          armed = false;
          btn.textContent = "Clear history";
          self.clearHistory(chat);
        }
      } });
    return btn;
  };

  App.prototype.submitInput = function (chat) {
    var ui = this.ui;
    var room = chat.type === "multicast" ? this.rooms.get(chat.id) : null;
    if (room && room.blocked) return;
    var body = ui.input.value.replace(/\s+$/, "");
    if (!body.trim()) return;
    ui.input.value = "";
    chat.draft = "";
    this.autoGrow();
    this.sendMessage(chat, body);
    ui.input.focus();
  };

  App.prototype.autoGrow = function () {
    var el = this.ui.input;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = Math.min(el.scrollHeight, 140) + "px";
  };

  App.prototype.updateChatPane = function (chat) {
    var ui = this.ui;
    ui.chatTitle.textContent = this.chatTitle(chat);
    clear(ui.chatSub);
    if (chat.type === "unicast") {
      var b = this.buddies.get(chat.id) || { presence: "offline" };
      var show = b.presence === "online" ? (b.show || "available") : "offline";
      ui.chatSub.appendChild(h("span", { class: "nx-dot nx-show-" + show }));
      ui.chatSub.appendChild(h("span", { text: " " + (SHOW_LABELS[show] || show) + (b.status ? " · " + b.status : "") }));
    } else {
      var r = this.rooms.get(chat.id) || {};
      ui.chatSub.textContent = r.blocked ? "Blocked" : (r.count || 0) + " online" + (r.all_count ? " of " + r.all_count + " members" : "");
      this.renderMembers(r);
      ui.blockedNote.hidden = !r.blocked;
      ui.composer.hidden = !!r.blocked;
    }
    this.renderMessages(chat);
    this.renderTyping(chat);
    this.client.model.markSeen();
    if (this.focusInput) { this.focusInput = false; ui.input.focus(); }
  };

  App.prototype.renderMembers = function (room) {
    var self = this;
    var ul = this.ui.members;
    clear(ul);
    var members = (room.members || []).slice().sort(function (a, b) {
      return (a.presence === "offline") - (b.presence === "offline") || String(a.nick).localeCompare(String(b.nick));
    });
    members.forEach(function (m) {
      var on = m.presence !== "offline";
      var show = on ? (m.show && m.show !== "unavailable" ? m.show : "available") : "offline";
      ul.appendChild(h("li", { class: on ? "nx-online" : "nx-offline", testid: "member-" + m.id, data: { presence: on ? "online" : "offline" } },
        h("span", { class: "nx-dot nx-show-" + show }), " ", m.nick || m.id, self.user && m.id === self.user.id ? " (you)" : ""));
    });
  };

  /** Append new messages; rebuild only when the list was replaced. Keep the
   *  view pinned to the bottom unless the user scrolled up to read. */
  App.prototype.renderMessages = function (chat) {
    var box = this.ui.messages;
    var atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    var msgs = chat.messages;
    var rebuild = this.paneRev !== chat.rev || this.paneCount > msgs.length;
    if (rebuild) {
      clear(box);
      this.paneCount = 0;
      this.paneRev = chat.rev;
      this.lastDay = null;
      this.lastMsg = null;
      atBottom = true;
      if (!chat.loaded && !msgs.length) {
        box.appendChild(h("p", { class: "nx-muted nx-center-text", testid: "history-loading", text: chat.error ? "Could not load history: " + chat.error : "Loading history…" }));
        if (!chat.pending.length) return;
      }
    }
    var list = chat.loaded ? msgs : msgs.concat(chat.pending);
    if (rebuild && !list.length && chat.loaded) box.appendChild(h("p", { class: "nx-muted nx-center-text", testid: "no-messages", text: "No messages yet. Say hello!" }));
    for (var i = this.paneCount; i < list.length; i++) {
      if (i === 0 && box.querySelector("[data-testid=no-messages]")) clear(box);
      this.appendMessage(box, list[i], chat);
    }
    this.paneCount = list.length;
    if (atBottom) box.scrollTop = box.scrollHeight;
  };

  App.prototype.appendMessage = function (box, m, chat) {
    var self = this;
    var mine = this.user && m.from === this.user.id;
    var day = dayLabel(m.timestamp, this.skew);
    if (day !== this.lastDay) {
      this.lastDay = day;
      this.lastMsg = null;
      box.appendChild(h("div", { class: "nx-day", text: day }));
    }
    var body = h("div", { class: "nx-msg-body", testid: "msg-body" });
    linkify(body, String(m.body === undefined || m.body === null ? "" : m.body));
    applyMessageStyle(body, m.style);
    var exact = new Date(parseFloat(m.timestamp) - this.skew);
    var meta = h("div", { class: "nx-msg-meta" },
      h("span", { class: "nx-msg-nick", testid: "msg-nick", text: mine ? "You" : (m.nick || m.from) }),
      h("time", { class: "nx-msg-time", testid: "msg-time", datetime: isFinite(exact.getTime()) ? exact.toISOString() : "", title: isFinite(exact.getTime()) ? exact.toLocaleString() : "",
        text: formatTime(m.timestamp, this.skew) }));
    // A run of messages from one sender within 5 minutes shows its name and
    // time once.
    var prev = this.lastMsg;
    var cont = prev && prev.from === m.from && parseFloat(m.timestamp) - parseFloat(prev.timestamp) < 300000;
    this.lastMsg = m;
    var row = h("div", { class: "nx-msg" + (mine ? " nx-mine" : "") + (cont ? " nx-cont" : ""), testid: "message", data: { from: String(m.from), state: m.state || "stored" } }, meta, body);
    if (m.local && m.state === "sending") row.appendChild(h("div", { class: "nx-msg-state", text: "sending…" }));
    if (m.local && m.state === "failed") {
      row.appendChild(h("div", { class: "nx-msg-state nx-failed", testid: "msg-failed" }, "Not sent (" + (m.error || "error") + ") ",
        h("button", { type: "button", class: "nx-link-btn", text: "Retry", on: { click: function () { self.retryMessage(chat, m); } } })));
    }
    box.appendChild(row);
  };

  App.prototype.renderTyping = function (chat) {
    var el = this.ui.typing;
    var on = chat.type === "unicast" && chat.typingUntil > this.client.now();
    el.hidden = !on;
    el.textContent = on ? chat.typingNick + " is typing…" : "";
  };

  App.prototype.newestNotificationTime = function () {
    var t = 0;
    this.notifications.forEach(function (n) { var x = notifTime(n.time); if (x > t) t = x; });
    return t || 1;
  };

  App.prototype.renderNotifications = function () {
    var self = this;
    var ui = this.ui;
    var seen = loadPref("notif_seen:" + (this.user ? this.user.id : ""), 0);
    var unseen = this.notifications.filter(function (n) { return notifTime(n.time) > seen || (!n.time && !seen); }).length;
    ui.notifCount.hidden = !unseen;
    ui.notifCount.textContent = String(unseen);
    clear(ui.notifList);
    if (!this.notifications.length) ui.notifList.appendChild(h("p", { class: "nx-empty", text: "Nothing new." }));
    this.notifications.forEach(function (n) {
      var text = h("div", { class: "nx-notif-text", testid: "notification-text" });
      text.appendChild(sanitizeHtml(n.text));
      var link = n.link && isHttpUrl(n.link);
      var t = notifTime(n.time);
      ui.notifList.appendChild(h("div", { class: "nx-notif", testid: "notification" }, text,
        h("div", { class: "nx-notif-meta" },
          t ? h("span", { class: "nx-muted", text: formatTime(t, self.skew) }) : null,
          link ? h("a", { href: link, target: "_blank", rel: "noopener noreferrer", text: "Open" }) : null)));
    });
  };

  App.prototype.renderTitle = function () {
    var n = this.totalUnread();
    if (this.embedded) {
      this.ui.launcherBadge.hidden = !n;
      this.ui.launcherBadge.textContent = String(n);
      return;
    }
    var base = this.opts.title || "NextIM";
    document.title = (n ? "(" + n + ") " : "") + base;
  };


  // ---------------------------------------------------------------------------
  // Public API

  var NextIM = global.NextIM || {};
  NextIM._cb = NextIM._cb || {};
  NextIM.apps = NextIM.apps || [];
  NextIM.version = C.version;
  NextIM.protocol = C;

  /**
   * Start a client.
   *   server:    daemon base URL ("" = this origin, page mode)
   *   jsonp:     true for cross-origin embedding (every call is a <script> GET)
   *   token:     JWT that identifies the user (token auth, docs/design.md#d13-identity)
   *   getToken:  optional function returning a (promise of a) fresh token
   *   container: element or id to render into (default: a floating widget)
   *   css:       false to skip loading <server>/static/style.css in embed mode
   */
  NextIM.start = function (options) {
    var opts = Object.assign({}, options || {});
    if (opts.embedded === undefined) opts.embedded = !opts.container;
    if (opts.server === undefined) opts.server = "";
    if (opts.jsonp && !opts.server) throw new Error("NextIM.start: jsonp mode needs the daemon's server URL");
    if (opts.server && opts.css !== false) ensureStylesheet(String(opts.server).replace(/\/$/, "") + "/static/style.css");
    var app = new App(opts);
    NextIM.apps.push(app);
    app.begin();
    return app;
  };

  function ensureStylesheet(href) {
    var links = document.querySelectorAll("link[rel=stylesheet]");
    for (var i = 0; i < links.length; i++) if (links[i].href === href) return;
    document.head.appendChild(h("link", { rel: "stylesheet", href: href }));
  }

  // Exposed for tests and for host pages that want the same helpers.
  NextIM._sanitize = sanitizeHtml;
  NextIM._formatTime = formatTime;
  NextIM._backoff = function (failures) { return C.backoffDelay(failures); };

  global.NextIM = NextIM;

  // Page mode: index.html marks its container; no inline script needed (so
  // the daemon can send a strict Content-Security-Policy).
  function autostart() {
    var el = document.querySelector("[data-nextim-autostart]");
    if (el && !el.dataset.nextimStarted) {
      el.dataset.nextimStarted = "1";
      NextIM.start({ container: el, embedded: false, server: el.getAttribute("data-server") || "" });
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", autostart);
  else autostart();
})(typeof window !== "undefined" ? window : null);

// Node (tests, tools): the protocol part. The view above did nothing there.
if (typeof module !== "undefined" && module.exports) module.exports = NextimClient;
