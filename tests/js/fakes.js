// Fakes for the protocol client's injected seams: timers (with a clock the
// test moves), a transport whose answers the test scripts, and the protocol
// part of app.js loaded the way Node loads it.
"use strict";

const path = require("node:path");

const NextimClient = require(path.join(__dirname, "..", "..", "nextim_twisted", "web", "static", "app.js"));

/** Let promise chains and setImmediate callbacks run. */
async function flush() {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** setTimeout/setInterval on a fake clock. tick(ms) runs what falls due, in
 *  order, letting promises settle between two timers. */
class FakeTimers {
  constructor(start = Date.UTC(2026, 0, 15, 12, 0, 0)) {
    this.t = start;
    this.queue = [];
    this.nextId = 1;
  }

  now() { return this.t; }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.queue.push({ id, at: this.t + Math.max(0, Number(ms) || 0), fn, every: 0 });
    return id;
  }

  clearTimeout(id) { this.queue = this.queue.filter((x) => x.id !== id); }

  setInterval(fn, ms) {
    const id = this.setTimeout(fn, ms);
    this.queue.find((x) => x.id === id).every = Math.max(1, Number(ms) || 0);
    return id;
  }

  clearInterval(id) { this.clearTimeout(id); }

  /** Delays (ms from now) of the timers that are waiting. */
  pending() { return this.queue.map((x) => x.at - this.t).sort((a, b) => a - b); }

  async tick(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      const due = this.queue
        .filter((x) => x.at <= end)
        .sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.t = due.at;
      if (due.every) due.at += due.every;
      else this.queue.splice(this.queue.indexOf(due), 1);
      due.fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** A WebSocket the test plays the server of: accept() opens it, send()
 *  records the client's frames, push(obj) sends an envelope, drop(code)
 *  closes it from the server side, refuse() fails the handshake (what a
 *  browser shows for a 403: an error and close 1006, never open). */
class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedBy = null;  // the code the client closed with
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(String(text));
  }

  close(code) {
    if (this.readyState >= 2) return;
    this.closedBy = code === undefined ? 1005 : code;
    this.readyState = 2;
    const fire = this.onclose;
    setImmediate(() => {
      this.readyState = 3;
      if (fire) fire({ code: this.closedBy, reason: "", wasClean: true });
    });
  }

  accept() {
    this.readyState = 1;
    if (this.onopen) this.onopen({});
  }

  push(data) {
    if (this.onmessage) this.onmessage({ data: typeof data === "string" ? data : JSON.stringify(data) });
  }

  drop(code, reason) {
    this.readyState = 3;
    if (this.onclose) this.onclose({ code, reason: reason || "", wasClean: code !== 1006 });
  }

  refuse() {
    this.readyState = 3;
    if (this.onerror) this.onerror({});
    if (this.onclose) this.onclose({ code: 1006, reason: "", wasClean: false });
  }

  /** The frames the client sent, split into words. */
  frames() { return this.sent.map((f) => f.split(" ")); }
}

/** A transport whose answers the test sets: answer(name, fn(params)) where
 *  fn returns the answer, a promise, or throws an ApiError. Unanswered calls
 *  get "ok". Polls wait until the test resolves or rejects them. */
class FakeTransport {
  constructor() {
    this.base = "";
    this.token = null;
    this.calls = [];
    this.polls = [];
    this.beacons = [];
    this.answers = {};
    this.sockets = [];
  }

  /** Sockets are opened as FakeWebSockets, newest last (see socket). */
  openSocket(url) {
    const ws = new FakeWebSocket(url);
    this.sockets.push(ws);
    return ws;
  }

  /** The socket the client opened last. */
  get socket() { return this.sockets[this.sockets.length - 1] || null; }

  answer(name, fn) { this.answers[name] = fn; }

  call(name, params) {
    this.calls.push({ name, params: Object.assign({}, params) });
    const fn = this.answers[name];
    if (!fn) return Promise.resolve("ok");
    try { return Promise.resolve(fn(params)); } catch (e) { return Promise.reject(e); }
  }

  callsTo(name) { return this.calls.filter((c) => c.name === name).map((c) => c.params); }

  poll(server, params, signal) {
    return new Promise((resolve, reject) => {
      const p = { server, params: Object.assign({}, params), signal, resolve, reject, done: false };
      const settle = (f) => (v) => { if (!p.done) { p.done = true; f(v); } };
      p.resolve = settle(resolve);
      p.reject = settle(reject);
      signal.addEventListener("abort", () => p.reject(NextimClient.ApiError(0, "aborted", "aborted")));
      this.polls.push(p);
    });
  }

  /** The poll in flight (the last one, if not settled). */
  get current() {
    const p = this.polls[this.polls.length - 1];
    return p && !p.done ? p : null;
  }

  beacon(name, params) { this.beacons.push({ name, params: Object.assign({}, params) }); }

  setToken(token) { this.token = token; }
}

function batch(seq, parts) {
  return Object.assign({ status: "ok", messages: [], presences: [], statuses: [], seq }, parts || {});
}

module.exports = { NextimClient, FakeTimers, FakeTransport, FakeWebSocket, flush, batch };
