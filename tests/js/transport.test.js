// HttpTransport with the browser's pieces faked: plain calls, JSONP, polls,
// the token rule; and the small pure helpers.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { NextimClient, FakeTimers } = require("./fakes");

const { HttpTransport, TIMING } = NextimClient;

/** A fake browser: fetch answers from `routes`, <script> insertion recorded. */
function fakeEnv(timers, routes = {}) {
  const env = {
    fetched: [],
    scripts: [],
    beacons: [],
    callbacks: {},
    callbackPrefix: "NextIM._cb.",
    origin: "http://chat.example",
    resolve: (url) => new URL(url, "http://chat.example/").href,
    timers,
    fetch(url, init) {
      env.fetched.push({ url, init });
      const path = url.split("?")[0];
      const route = routes[path];
      if (!route) return Promise.reject(new TypeError("Failed to fetch"));
      const [status, body] = route(url, init);
      return Promise.resolve({ ok: status >= 200 && status < 300, status, text: () => Promise.resolve(body) });
    },
    insertScript(src, onload, onerror) {
      const s = { src, onload, onerror, removed: false };
      env.scripts.push(s);
      return () => { s.removed = true; };
    },
    sendBeacon(url, body) { env.beacons.push({ url, body: body.toString() }); return true; },
  };
  return env;
}

/** Answer a JSONP script the way the daemon does: call the named callback. */
function answerScript(env, script, data) {
  const name = new URL(script.src).searchParams.get("callback").replace("NextIM._cb.", "");
  env.callbacks[name](data);
  script.onload();
}

test("a plain call POSTs a form to <server>/webim/<name> and parses the JSON answer", async () => {
  const timers = new FakeTimers();
  const env = fakeEnv(timers, { "http://d/webim/buddies": () => [200, '[{"id":"bob"}]'] });
  const t = new HttpTransport({ server: "http://d" }, env);
  const answer = await t.call("buddies", { ticket: "T", ids: "bob", skip: undefined });
  assert.deepEqual(answer, [{ id: "bob" }]);
  const { init } = env.fetched[0];
  assert.equal(init.method, "POST");
  assert.equal(init.body.toString(), "ticket=T&ids=bob");
  assert.equal(init.headers["X-Requested-With"], "XMLHttpRequest");
});

test('"ok" stays "ok"; the error envelope and HTTP errors reject with status and code', async () => {
  const timers = new FakeTimers();
  const env = fakeEnv(timers, {
    "webim/message": () => [200, "ok"],
    "webim/presence": () => [200, '{"success":false,"error":"bad_show","error_msg":"Unknown show"}'],
    "webim/history": () => [404, '{"success":false,"error":"ticket_not_found","error_msg":"No such ticket"}'],
    "webim/members": () => [502, "<html>Bad gateway</html>"],
  });
  const t = new HttpTransport({}, env);
  assert.equal(await t.call("message", { ticket: "T" }), "ok");
  await assert.rejects(t.call("presence", { ticket: "T" }), { name: "ApiError", status: 200, code: "bad_show", message: "Unknown show" });
  await assert.rejects(t.call("history", { ticket: "T" }), { status: 404, code: "ticket_not_found" });
  await assert.rejects(t.call("members", { ticket: "T" }), { status: 502, code: "http_502" });
  await assert.rejects(t.call("nowhere", {}), { status: 0, code: "network" });
});

test("the site token goes only on calls without a ticket", async () => {
  const timers = new FakeTimers();
  const env = fakeEnv(timers, { "webim/online": () => [200, "{}"], "webim/message": () => [200, "ok"] });
  const t = new HttpTransport({ token: "JWT" }, env);
  await t.call("online", { show: "available" });
  await t.call("message", { ticket: "T", body: "x" });
  t.setToken("JWT2");
  await t.call("online", {});
  assert.deepEqual(env.fetched.map((f) => f.init.body.toString()), ["show=available&token=JWT", "ticket=T&body=x", "token=JWT2"]);
});

test("JSONP: every call is a <script> GET with callback=NextIM._cb.j<N>; errors come as the envelope", async () => {
  const timers = new FakeTimers();
  const env = fakeEnv(timers);
  const t = new HttpTransport({ server: "http://d/", jsonp: true, token: "JWT" }, env);
  const p = t.call("online", { show: "away" });
  const script = env.scripts[0];
  const url = new URL(script.src);
  assert.equal(url.origin + url.pathname, "http://d/webim/online");
  assert.equal(url.searchParams.get("show"), "away");
  assert.equal(url.searchParams.get("token"), "JWT");
  assert.match(url.searchParams.get("callback"), /^NextIM\._cb\.j\d+$/);
  answerScript(env, script, { ticket: "T" });
  assert.deepEqual(await p, { ticket: "T" });
  assert.equal(script.removed, true);

  const q = t.call("presence", { ticket: "T" });
  answerScript(env, env.scripts[1], { success: false, error: "not_authenticated", error_msg: "Who are you?" });
  await assert.rejects(q, { code: "not_authenticated", status: 200 });
  assert.equal(NextimClient.isAuthError(await q.catch((e) => e)), true);
});

test("JSONP: a script that fails to load, or never calls back, or times out, rejects", async () => {
  const timers = new FakeTimers();
  const env = fakeEnv(timers);
  const t = new HttpTransport({ server: "http://d", jsonp: true }, env);

  const failed = t.call("online", {});
  env.scripts[0].onerror();
  await assert.rejects(failed, { code: "jsonp_error", status: 0 });

  const silent = assert.rejects(t.call("online", {}), { code: "jsonp_error", message: "Bad answer from the server" });
  env.scripts[1].onload(); // loaded, but no callback ran
  await timers.tick(0);
  await silent;

  const slow = t.call("online", {});
  const rejected = assert.rejects(slow, { code: "timeout" });
  await timers.tick(TIMING.JSONP_TIMEOUT_MS);
  await rejected;
  assert.equal(env.scripts[2].removed, true);
  // A late answer finds a no-op, not an exception.
  const name = new URL(env.scripts[2].src).searchParams.get("callback").replace("NextIM._cb.", "");
  env.callbacks[name]({ too: "late" });
});

test("polls: same origin is a GET with ticket and ack; another origin is JSONP; abort rejects", async () => {
  const timers = new FakeTimers();
  const env = fakeEnv(timers, { "/packets": () => [200, '{"status":"ok","seq":3}'] });
  const t = new HttpTransport({}, env);
  const ctl = new AbortController();
  assert.deepEqual(await t.poll("/packets", { ticket: "T", ack: 2 }, ctl.signal), { status: "ok", seq: 3 });
  assert.equal(env.fetched[0].url, "/packets?ticket=T&ack=2");
  assert.equal(env.fetched[0].init.cache, "no-store");

  const other = t.poll("http://comet.example/packets", { ticket: "T", ack: 3 }, ctl.signal);
  assert.equal(env.scripts.length, 1);
  assert.equal(new URL(env.scripts[0].src).searchParams.get("ack"), "3");
  ctl.abort();
  await assert.rejects(other, { code: "aborted" });
});

test("beacon goes by sendBeacon, with the form body", () => {
  const timers = new FakeTimers();
  const env = fakeEnv(timers);
  const t = new HttpTransport({ server: "http://d" }, env);
  t.beacon("refresh", { ticket: "T" });
  assert.deepEqual(env.beacons, [{ url: "http://d/webim/refresh", body: "ticket=T" }]);
});

test("pure helpers: message identity, old type names, notification times and merging", () => {
  const { msgKey, normalizeType, notifTime, mergeNotifications, chatKey } = NextimClient;
  assert.equal(normalizeType("chat"), "unicast");
  assert.equal(normalizeType("grpchat"), "multicast");
  assert.equal(normalizeType(undefined), "unicast");
  assert.equal(chatKey("multicast", "lobby"), "multicast:lobby");
  const m = { type: "chat", from: "a", to: "b", timestamp: 1, body: "x" };
  assert.equal(msgKey(m), msgKey(Object.assign({}, m, { type: "unicast", seq: 9 })));
  assert.notEqual(msgKey(m), msgKey(Object.assign({}, m, { body: "y" })));

  assert.equal(notifTime(1700000000), 1700000000000, "seconds become ms");
  assert.equal(notifTime(1700000000000), 1700000000000);
  assert.equal(notifTime("2024-05-17T12:00:00Z"), Date.UTC(2024, 4, 17, 12));
  assert.equal(notifTime("junk"), 0);

  const fresh = [{ text: "b", time: 2 }, { text: "", time: 5 }, null];
  const kept = [{ text: "a", time: 1 }, { text: "b", time: 2 }];
  assert.deepEqual(mergeNotifications(fresh, kept).map((n) => n.text), ["b", "a"]);
  const many = Array.from({ length: 30 }, (_, i) => ({ text: "n" + i, time: i }));
  const merged = mergeNotifications(many, []);
  assert.equal(merged.length, 20);
  assert.equal(merged[0].text, "n29");
});
