// The WebSocket channel (docs/design.md#d21-websocket): subscribe, envelopes
// through the same seq/ack path as the poll, throttled acks, resuming after a
// drop, close codes, and the fallback to the long poll.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { NextimClient, FakeTimers, FakeTransport, FakeWebSocket, batch } = require("./fakes");

const { SocketLoop, Client, TIMING, memoryStorage } = NextimClient;

const WS_URL = "ws://chat.example.com/ws";

/** A socket loop over FakeWebSockets; records batches, states and events. */
function setup(opts = {}) {
  const timers = new FakeTimers();
  const sockets = [];
  const seen = { batches: [], fresh: [], states: [], gone: 0, replaced: 0, fallbacks: [] };
  const loop = new SocketLoop({
    open: opts.open || ((url) => { const ws = new FakeWebSocket(url); sockets.push(ws); return ws; }),
    timers,
    random: () => 0,
    onBatch: (d, fresh) => { seen.batches.push(d); seen.fresh.push(fresh); },
    onState: (state, detail) => seen.states.push(detail ? state + ":" + detail : state),
    onGone: () => { seen.gone++; },
    onReplaced: () => { seen.replaced++; },
    onFallback: (reason, refused) => { seen.fallbacks.push({ reason, refused }); },
  });
  const current = () => sockets[sockets.length - 1];
  return { timers, sockets, current, loop, seen };
}

/** Open the current socket and answer its subscribe with an envelope. */
function subscribe(s, env) {
  s.current().accept();
  s.current().push(env || batch(0));
}

const bodies = (fresh) => fresh.messages.map((m) => m.body);

test("the socket opens connection.websocket and subscribes with the domain, the ticket and ack 0", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "example.com");
  assert.equal(s.sockets.length, 1);
  assert.equal(s.current().url, WS_URL);
  assert.deepEqual(s.current().sent, [], "nothing before the socket is open");
  s.current().accept();
  assert.deepEqual(s.current().sent, ["subscribe example.com T1 0"]);
});

test("each envelope frame goes through the same seq filter as a poll answer, and ack follows it", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "example.com");
  subscribe(s, batch(0));
  s.current().push(batch(2, { messages: [{ seq: 1, body: "a" }, { seq: 2, body: "b" }] }));
  assert.equal(s.loop.ack, 2);
  // The server sends seq 2 again together with 3: only 3 is new.
  s.current().push(batch(3, { messages: [{ seq: 2, body: "b" }, { seq: 3, body: "c" }] }));
  assert.deepEqual(s.seen.fresh.map(bodies), [[], ["a", "b"], ["c"]]);
  assert.equal(s.loop.ack, 3);
  // Not JSON, or not an envelope: ignored, the socket stays.
  s.current().push("not json");
  s.current().push({ reply: 1, result: "ok" });
  assert.equal(s.seen.batches.length, 3);
  assert.equal(s.current().closedBy, null);
});

test("acks go out at most once per WS_ACK_INTERVAL_MS, with the latest seq", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(0));
  const acks = () => s.current().sent.filter((f) => f.startsWith("ack "));
  assert.deepEqual(acks(), [], "nothing new to ack after the empty first envelope");
  s.current().push(batch(1, { messages: [{ seq: 1, body: "a" }] }));
  assert.deepEqual(acks(), ["ack 1"], "the first ack goes at once");
  for (let seq = 2; seq <= 6; seq++) {
    await s.timers.tick(100);
    s.current().push(batch(seq, { messages: [{ seq, body: "m" + seq }] }));
  }
  assert.deepEqual(acks(), ["ack 1"], "within the interval: held back");
  await s.timers.tick(TIMING.WS_ACK_INTERVAL_MS - 500);
  assert.deepEqual(acks(), ["ack 1", "ack 6"], "one ack for five envelopes, with the last seq");
  await s.timers.tick(5 * TIMING.WS_ACK_INTERVAL_MS);
  assert.deepEqual(acks(), ["ack 1", "ack 6"], "nothing new: no more acks");
});

test("WS_ACK_AFTER unacknowledged packets are acked at once, inside the interval", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(0));
  const acks = () => s.current().sent.filter((f) => f.startsWith("ack "));
  s.current().push(batch(1, { messages: [{ seq: 1, body: "a" }] }));
  assert.deepEqual(acks(), ["ack 1"]);
  await s.timers.tick(100);
  const many = [];
  for (let seq = 2; seq <= 1 + TIMING.WS_ACK_AFTER; seq++) many.push({ seq, body: "m" + seq });
  s.current().push(batch(1 + TIMING.WS_ACK_AFTER, { messages: many }));
  assert.deepEqual(acks(), ["ack 1", "ack " + (1 + TIMING.WS_ACK_AFTER)], "not held for the interval");
  await s.timers.tick(TIMING.WS_ACK_INTERVAL_MS);
  assert.equal(acks().length, 2, "and no second ack for the same seq");
});

test("stop() sends the ack that was held back before it closes the socket", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(0));
  s.current().push(batch(1, { messages: [{ seq: 1, body: "a" }] }));
  s.current().push(batch(2, { messages: [{ seq: 2, body: "b" }] }));
  const ws = s.current();
  s.loop.stop();
  assert.deepEqual(ws.sent.slice(1), ["ack 1", "ack 2"]);
  assert.equal(ws.closedBy, 1000);
  ws.push(batch(3, { messages: [{ seq: 3, body: "late" }] }));
  await s.timers.tick(60000);
  assert.equal(s.seen.batches.length, 3, "a late frame is not applied");
  assert.equal(s.sockets.length, 1, "no reconnect after stop");
  assert.deepEqual(s.timers.pending(), []);
});

test("after a drop the next socket resumes with the last seq: nothing lost, nothing twice", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(0));
  s.current().push(batch(2, { messages: [{ seq: 1, body: "a" }, { seq: 2, body: "b" }] }));
  s.current().drop(1006);
  assert.equal(s.seen.states[s.seen.states.length - 1], "reconnecting:Connection lost");
  await s.timers.tick(499);
  assert.equal(s.sockets.length, 1, "backoff before the next socket");
  await s.timers.tick(1);
  assert.equal(s.sockets.length, 2);
  s.current().accept();
  assert.deepEqual(s.current().sent, ["subscribe d T1 2"]);
  // What the server had not seen acked comes again, with what is new.
  s.current().push(batch(3, { messages: [{ seq: 2, body: "b" }, { seq: 3, body: "c" }] }));
  assert.deepEqual(s.seen.fresh.map(bodies).flat(), ["a", "b", "c"]);
  assert.equal(s.seen.states[s.seen.states.length - 1], "online");
  assert.equal(s.loop.failures, 0);
});

test("abort() drops the socket and the loop resumes like after a network failure", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(4));
  const first = s.current();
  s.loop.abort();
  assert.equal(first.closedBy, 1000);
  assert.equal(s.loop.state, "reconnecting");
  await s.timers.tick(1000);
  s.current().accept();
  assert.deepEqual(s.current().sent, ["subscribe d T1 4"]);
});

test("close 4404: the session is gone; no reconnect", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s);
  s.current().drop(4404, "unknown ticket");
  await s.timers.tick(60000);
  assert.equal(s.seen.gone, 1);
  assert.equal(s.sockets.length, 1);
  assert.equal(s.loop.running(), false);
  assert.deepEqual(s.seen.fallbacks, []);
});

test("close 4409: another connection took the ticket; this one stops without a fight", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s);
  s.current().drop(4409, "replaced");
  await s.timers.tick(60000);
  assert.equal(s.seen.replaced, 1);
  assert.equal(s.seen.gone, 0);
  assert.equal(s.sockets.length, 1);
  assert.deepEqual(s.timers.pending(), []);
});

for (const code of [4400, 1009, 1003]) {
  test(`close ${code}: the server refused what we sent; fall back at once`, async () => {
    const s = setup();
    s.loop.start("T1", WS_URL, "d");
    s.current().accept();
    s.current().drop(code);
    await s.timers.tick(60000);
    assert.equal(s.seen.fallbacks.length, 1);
    assert.match(s.seen.fallbacks[0].reason, new RegExp(String(code)));
    assert.equal(s.seen.fallbacks[0].refused, true, "no socket ever worked here");
    assert.equal(s.sockets.length, 1);
  });
}

test("close 1001 (server going away): connect again after a delay", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(3));
  s.current().drop(1001, "shutting down");
  assert.equal(s.seen.states[s.seen.states.length - 1], "reconnecting:The server is restarting");
  await s.timers.tick(TIMING.BACKOFF_BASE_MS - 1);
  assert.equal(s.sockets.length, 1, "not at once: the server needs a moment");
  await s.timers.tick(1);
  assert.equal(s.sockets.length, 2);
  s.current().accept();
  assert.deepEqual(s.current().sent, ["subscribe d T1 3"]);
});

test("three handshakes refused in a row: fall back (refused), and no fourth socket", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  for (let i = 0; i < TIMING.WS_FAILURES; i++) {
    s.current().refuse();
    await s.timers.tick(TIMING.BACKOFF_MAX_MS);
  }
  assert.equal(s.sockets.length, TIMING.WS_FAILURES);
  assert.deepEqual(s.seen.fallbacks.map((f) => f.refused), [true]);
  assert.deepEqual(s.seen.states, [], "no 'reconnecting' for a socket that never worked");
  await s.timers.tick(5 * 60000);
  assert.equal(s.sockets.length, TIMING.WS_FAILURES);
});

test("a socket that worked and then keeps failing falls back (not refused) after three failures", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(5));
  s.current().drop(1006);
  for (let i = 0; i < TIMING.WS_FAILURES; i++) {
    await s.timers.tick(TIMING.BACKOFF_MAX_MS);
    s.current().refuse();
  }
  assert.equal(s.sockets.length, 1 + TIMING.WS_FAILURES);
  assert.deepEqual(s.seen.fallbacks.map((f) => f.refused), [false]);
  assert.equal(s.loop.ack, 5, "the long poll can take over from here");
});

test("a socket that opens but never answers subscribe counts as a failure", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  s.current().accept();
  await s.timers.tick(TIMING.WS_CONNECT_MS - 1);
  assert.equal(s.sockets.length, 1);
  await s.timers.tick(1);
  assert.equal(s.sockets[0].closedBy, 1000);
  assert.equal(s.loop.failures, 1);
  await s.timers.tick(1000);
  assert.equal(s.sockets.length, 2);
});

test("no WebSocket at all (or one the browser will not open): fall back at once", async () => {
  for (const open of [() => null, () => { throw new Error("SecurityError"); }]) {
    const s = setup({ open });
    s.loop.start("T1", WS_URL, "d");
    assert.deepEqual(s.seen.fallbacks.map((f) => f.refused), [true]);
    assert.deepEqual(s.timers.pending(), []);
  }
});

test("a new ticket starts a new socket at ack 0 and forgets the old one", async () => {
  const s = setup();
  s.loop.start("T1", WS_URL, "d");
  subscribe(s, batch(7));
  const old = s.current();
  s.loop.start("T2", WS_URL, "d");
  assert.equal(old.closedBy, 1000);
  s.current().accept();
  assert.deepEqual(s.current().sent, ["subscribe d T2 0"]);
  old.push(batch(8, { messages: [{ seq: 8, body: "old" }] }));
  assert.equal(s.seen.batches.length, 1);
});

// ---------------------------------------------------------------------------
// The client: which channel, the model path, and what each outcome leads to.

function onlineAnswer(ticket, websocket) {
  const connection = { domain: "example.com", ticket, server: "/packets" };
  if (websocket) connection.websocket = websocket;
  return {
    success: true,
    server_time: Date.UTC(2026, 0, 15, 12, 0, 0),
    user: { id: "alice", nick: "Alice", show: "available", status: "" },
    connection,
    buddies: [{ id: "bob", nick: "Bob", group: "Friends", presence: "online", show: "available" }],
    rooms: [],
    presences: {},
    new_messages: [],
    setting: {},
  };
}

/** A client whose `online` answers tickets T1, T2, ... with connection.websocket
 *  (unless websocket: null). */
function clientSetup(opts = {}) {
  const timers = new FakeTimers();
  const transport = new FakeTransport();
  const storage = opts.storage || memoryStorage();
  let n = 0;
  const ws = opts.websocket === undefined ? WS_URL : opts.websocket;
  transport.answer("online", () => onlineAnswer("T" + (++n), ws));
  transport.answer("history", () => []);
  const client = new Client({ transport, timers, storage, random: () => 0 });
  return { timers, transport, storage, client, model: client.model };
}

async function begin(s) {
  s.client.begin();
  await s.timers.tick(0);
}

const msg = (seq, body) => ({ seq, type: "unicast", from: "bob", to: "alice", nick: "Bob", body, timestamp: 1000 + seq, id: seq });
const shown = (s) => (s.model.chats.get("unicast:bob") || { messages: [], pending: [] }).messages
  .concat(s.model.chats.get("unicast:bob") ? s.model.chats.get("unicast:bob").pending : [])
  .map((m) => m.body);

test("client: with connection.websocket it uses the socket, not the poll", async () => {
  const s = clientSetup();
  await begin(s);
  assert.equal(s.client.channel, "websocket");
  assert.equal(s.transport.polls.length, 0);
  assert.equal(s.transport.sockets.length, 1);
  s.transport.socket.accept();
  assert.deepEqual(s.transport.socket.sent, ["subscribe example.com T1 0"]);
  s.transport.socket.push(batch(1, { messages: [msg(1, "hello")] }));
  assert.deepEqual(shown(s), ["hello"]);
  assert.equal(s.client.packetLog.length, 1);
  assert.equal(s.client.conn, "online");
});

test("client: without connection.websocket it long-polls as before and opens no socket", async () => {
  const s = clientSetup({ websocket: null });
  await begin(s);
  assert.equal(s.client.channel, "longpoll");
  assert.equal(s.transport.sockets.length, 0);
  assert.deepEqual(s.transport.current.params, { ticket: "T1", ack: 0 });
});

test("client: a resumed socket shows nothing twice", async () => {
  const s = clientSetup();
  await begin(s);
  s.transport.socket.accept();
  s.transport.socket.push(batch(2, { messages: [msg(1, "one"), msg(2, "two")] }));
  s.transport.socket.drop(1006);
  await s.timers.tick(TIMING.BACKOFF_BASE_MS);
  assert.equal(s.client.conn, "reconnecting");
  s.transport.socket.accept();
  assert.deepEqual(s.transport.socket.sent, ["subscribe example.com T1 2"]);
  s.transport.socket.push(batch(3, { messages: [msg(2, "two"), msg(3, "three")] }));
  assert.deepEqual(shown(s), ["one", "two", "three"]);
  assert.equal(s.client.conn, "online");
});

test("client: refused sockets fall back to the long poll, and this tab keeps long-polling", async () => {
  const storage = memoryStorage();
  const s = clientSetup({ storage });
  await begin(s);
  for (let i = 0; i < TIMING.WS_FAILURES; i++) {
    s.transport.socket.refuse();
    await s.timers.tick(TIMING.BACKOFF_MAX_MS);
  }
  assert.equal(s.client.channel, "longpoll");
  assert.equal(s.client.conn, "online", "the fallback is not an outage");
  assert.deepEqual(s.transport.current.params, { ticket: "T1", ack: 0 });
  s.transport.current.resolve(batch(1, { messages: [msg(1, "over the poll")] }));
  await s.timers.tick(TIMING.POLL_GAP_MS);
  assert.deepEqual(shown(s), ["over the poll"]);

  // The session is lost: the next online of this page long-polls at once.
  s.transport.current.reject(NextimClient.ApiError(404, "invalid_ticket", "Not found"));
  await s.timers.tick(TIMING.RECONNECT_SPREAD_MS);
  assert.equal(s.client.ticket, "T2");
  assert.equal(s.client.channel, "longpoll");
  assert.equal(s.transport.sockets.length, TIMING.WS_FAILURES);

  // So does the next page load in this browser tab (same session storage).
  const again = clientSetup({ storage });
  await begin(again);
  assert.equal(again.client.channel, "longpoll");
  assert.equal(again.transport.sockets.length, 0);
});

test("client: a socket that worked and keeps failing hands over to the poll at its ack, and the next session tries the socket again", async () => {
  const s = clientSetup();
  await begin(s);
  s.transport.socket.accept();
  s.transport.socket.push(batch(2, { messages: [msg(1, "one"), msg(2, "two")] }));
  s.transport.socket.drop(1006);
  for (let i = 0; i < TIMING.WS_FAILURES; i++) {
    await s.timers.tick(TIMING.BACKOFF_MAX_MS);
    s.transport.socket.refuse();
  }
  await s.timers.tick(0);
  assert.equal(s.client.channel, "longpoll");
  assert.deepEqual(s.transport.current.params, { ticket: "T1", ack: 2 });
  s.transport.current.resolve(batch(3, { messages: [msg(2, "two"), msg(3, "three")] }));
  await s.timers.tick(TIMING.POLL_GAP_MS);
  assert.deepEqual(shown(s), ["one", "two", "three"]);

  s.transport.current.reject(NextimClient.ApiError(404, "invalid_ticket", "Not found"));
  await s.timers.tick(TIMING.RECONNECT_SPREAD_MS);
  assert.equal(s.client.ticket, "T2");
  assert.equal(s.client.channel, "websocket", "this page's socket did work: a new session tries it again");
});

test("client: close 4404 goes online again, as a poll's 404 does", async () => {
  const s = clientSetup();
  await begin(s);
  s.transport.socket.accept();
  s.transport.socket.push(batch(0));
  s.transport.socket.drop(4404, "unknown ticket");
  assert.equal(s.client.conn, "reconnecting");
  await s.timers.tick(TIMING.RECONNECT_SPREAD_MS);
  assert.equal(s.transport.callsTo("online").length, 2);
  assert.equal(s.client.ticket, "T2");
  s.transport.socket.accept();
  assert.deepEqual(s.transport.socket.sent, ["subscribe example.com T2 0"]);
});

test("client: close 4409 stops this tab (offline, nothing reconnects); picking a show goes online again", async () => {
  const s = clientSetup();
  await begin(s);
  s.transport.socket.accept();
  s.transport.socket.push(batch(0));
  s.transport.socket.drop(4409, "replaced");
  await s.timers.tick(5 * 60000);
  assert.equal(s.client.conn, "offline");
  assert.equal(s.client.ticket, null);
  assert.equal(s.transport.sockets.length, 1);
  assert.equal(s.transport.polls.length, 0);
  assert.equal(s.transport.callsTo("online").length, 1);

  await s.client.setShow("away");
  await s.timers.tick(0);
  assert.equal(s.client.ticket, "T2");
  assert.equal(s.transport.sockets.length, 2);
});

test("client: leaving the page ends the session by beacon and closes the socket after its last ack", async () => {
  const s = clientSetup();
  await begin(s);
  const ws = s.transport.socket;
  ws.accept();
  ws.push(batch(1, { messages: [msg(1, "one")] }));
  ws.push(batch(2, { messages: [msg(2, "two")] }));
  assert.equal(s.client.pageHide(), true);
  assert.deepEqual(s.transport.beacons, [{ name: "refresh", params: { ticket: "T1" } }]);
  assert.deepEqual(ws.sent, ["subscribe example.com T1 0", "ack 1", "ack 2"]);
  assert.equal(ws.closedBy, 1000);
  await s.timers.tick(60000);
  assert.equal(s.transport.sockets.length, 1);
});

// ---------------------------------------------------------------------------
// Calls over the socket: message and status as JSON frames with replies.

/** The JSON call frames a socket carried. */
const callFrames = (ws) => ws.sent.filter((f) => f.startsWith("{")).map((f) => JSON.parse(f));

async function subscribedClient(opts) {
  const s = clientSetup(opts);
  await begin(s);
  s.transport.socket.accept();
  s.transport.socket.push(batch(0));
  return s;
}

test("client: a message goes over the subscribed socket and is sent when its reply comes", async () => {
  const s = await subscribedClient();
  const chat = s.client.openTab("unicast:bob", true);
  const done = s.client.sendMessage(chat, "over the socket");
  const [frame] = callFrames(s.transport.socket);
  assert.equal(frame.call, "message");
  assert.deepEqual(Object.keys(frame.params).sort(), ["body", "client_id", "style", "to", "type"]);
  assert.equal(frame.params.body, "over the socket");
  assert.equal(s.transport.callsTo("message").length, 0, "no HTTP request");
  assert.equal(chat.messages[chat.messages.length - 1].state, "sending");
  s.transport.socket.push({ reply: frame.id, result: "ok" });
  await done;
  assert.equal(chat.messages[chat.messages.length - 1].state, "sent");
});

test("client: an error reply is a refusal: the message is not sent again", async () => {
  const s = await subscribedClient();
  const chat = s.client.openTab("unicast:bob", true);
  const done = s.client.sendMessage(chat, "too fast");
  const [frame] = callFrames(s.transport.socket);
  s.transport.socket.push({ reply: frame.id, error: { success: false, error: "rate_limited", error_msg: "Slow down" } });
  await done;
  const m = chat.messages[chat.messages.length - 1];
  assert.equal(m.state, "failed");
  assert.equal(m.error, "Slow down");
  assert.equal(callFrames(s.transport.socket).length, 1);
  assert.equal(s.transport.callsTo("message").length, 0);
});

test("client: a message whose socket drops before the reply is sent again with the same client_id", async () => {
  const s = await subscribedClient();
  const chat = s.client.openTab("unicast:bob", true);
  const done = s.client.sendMessage(chat, "lost reply");
  const first = callFrames(s.transport.socket)[0];
  s.transport.socket.drop(1006);
  // The retry comes after its backoff; the new socket is not subscribed yet, so over HTTP.
  await s.timers.tick(TIMING.BACKOFF_BASE_MS);
  await done;
  const again = s.transport.callsTo("message");
  assert.equal(again.length, 1);
  assert.equal(again[0].client_id, first.params.client_id);
  assert.equal(again[0].ticket, "T1");
  assert.equal(chat.messages.filter((m) => m.body === "lost reply").length, 1);
  assert.equal(chat.messages[chat.messages.length - 1].state, "sent");
});

test("client: no reply within the call timeout counts as a network error and is retried", async () => {
  const s = await subscribedClient();
  const chat = s.client.openTab("unicast:bob", true);
  s.client.sendMessage(chat, "slow server");
  await s.timers.tick(TIMING.CALL_TIMEOUT_MS);
  assert.equal(callFrames(s.transport.socket).length, 1);
  await s.timers.tick(TIMING.BACKOFF_BASE_MS);
  const frames = callFrames(s.transport.socket);
  assert.equal(frames.length, 2);
  assert.equal(frames[1].params.client_id, frames[0].params.client_id);
});

test("client: typing goes over the socket; a socket not subscribed yet, or a huge message, uses HTTP", async () => {
  const s = await subscribedClient();
  const chat = s.client.openTab("unicast:bob", true);
  s.client.noteTyping(chat);
  assert.deepEqual(callFrames(s.transport.socket).map((f) => [f.call, f.params.show]), [["status", "typing"]]);
  assert.equal(s.transport.callsTo("status").length, 0);

  s.client.sendMessage(chat, "x".repeat(TIMING.WS_CALL_MAX_BYTES));
  assert.equal(s.transport.callsTo("message").length, 1, "a frame that may be over the server's limit goes over HTTP");

  s.transport.socket.drop(1006);
  s.client.sendMessage(chat, "between sockets");
  assert.equal(s.transport.callsTo("message").length, 2);
  assert.equal(s.transport.callsTo("message")[1].ticket, "T1");
});

test("client: without a socket every call goes over HTTP, as before", async () => {
  const s = clientSetup({ websocket: null });
  await begin(s);
  const chat = s.client.openTab("unicast:bob", true);
  await s.client.sendMessage(chat, "plain");
  assert.equal(s.transport.callsTo("message").length, 1);
  assert.equal(chat.messages[chat.messages.length - 1].state, "sent");
});
