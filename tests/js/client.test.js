// The client over a fake transport: going online, a lost session, packets
// into the model, unread counts, sends, typing, rooms, sign-out.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { NextimClient, FakeTimers, FakeTransport, batch } = require("./fakes");

const { Client, ApiError, TIMING, memoryStorage } = NextimClient;

function onlineAnswer(ticket, extra) {
  return Object.assign({
    success: true,
    server_time: Date.UTC(2026, 0, 15, 12, 0, 0) + 5000, // the server's clock is 5 s ahead
    user: { id: "alice", nick: "Alice", show: "available", status: "" },
    connection: { ticket, server: "/packets" },
    buddies: [
      { id: "bob", nick: "Bob", group: "Friends", presence: "online", show: "away" },
      { id: "carol", nick: "Carol", group: "Friends", presence: "offline" },
    ],
    rooms: [{ id: "lobby", nick: "Lobby", count: 2, all_count: 3 }],
    presences: {},
    new_messages: [],
    setting: {},
  }, extra || {});
}

/** A client with fakes; `online` answers tickets T1, T2, ... */
function setup(opts = {}) {
  const timers = new FakeTimers();
  const transport = new FakeTransport();
  const storage = opts.storage || memoryStorage();
  let n = 0;
  transport.answer("online", (p) => onlineAnswer("T" + (++n), opts.online ? opts.online(p, n) : {}));
  transport.answer("history", () => []);
  const client = new Client({ transport, timers, storage, random: opts.random || (() => 0), getToken: opts.getToken, tokenMode: opts.tokenMode });
  const events = { screens: [], beeps: 0, notices: [] };
  client.on("screen", (name, detail) => events.screens.push(detail ? name + ":" + detail : name));
  client.on("beep", () => events.beeps++);
  client.on("notice", (t) => events.notices.push(t));
  return { timers, transport, storage, client, model: client.model, events };
}

async function online(s) {
  s.client.begin();
  await s.timers.tick(0);
  return s.client;
}

/** Deliver one comet answer to the poll in flight. */
async function deliver(s, env) {
  s.transport.current.resolve(env);
  await s.timers.tick(TIMING.POLL_GAP_MS);
}

test("online: the answer fills the model, measures the clock skew and starts the comet", async () => {
  const s = setup();
  await online(s);
  const { model, client, transport } = s;
  assert.deepEqual(s.events.screens, ["loading", "main"]);
  assert.equal(client.conn, "online");
  assert.equal(client.ticket, "T1");
  assert.equal(model.user.nick, "Alice");
  assert.equal(model.buddies.get("bob").presence, "online");
  assert.equal(model.buddies.get("bob").show, "away");
  assert.equal(model.buddies.get("carol").presence, "offline");
  assert.equal(model.rooms.get("lobby").all_count, 3);
  assert.equal(client.skew, 5000);
  assert.deepEqual(transport.current.params, { ticket: "T1", ack: 0 });
  assert.deepEqual(transport.callsTo("online")[0], { show: "available", buddy_ids: "", room_ids: "" });
  assert.deepEqual(transport.callsTo("notifications"), [{ ticket: "T1" }]);
});

test("the open tabs of this browser tab are restored and asked for in `online`", async () => {
  const storage = memoryStorage();
  storage.set("tabs", { tabs: ["unicast:bob", "multicast:lobby"], active: "multicast:lobby" }, "session");
  const s = setup({
    storage,
    online: () => ({ buddies: [{ id: "bob", nick: "Bob", presence: "online", history: [{ type: "unicast", from: "bob", to: "alice", body: "old", timestamp: 1 }] }] }),
  });
  await online(s);
  assert.deepEqual(s.transport.callsTo("online")[0], { show: "available", buddy_ids: "bob", room_ids: "lobby" });
  assert.deepEqual(s.model.tabs, ["unicast:bob", "multicast:lobby"]);
  assert.equal(s.model.active, "multicast:lobby");
  // bob's history came embedded; the room's is fetched.
  assert.deepEqual(s.model.chats.get("unicast:bob").messages.map((m) => m.body), ["old"]);
  assert.deepEqual(s.transport.callsTo("history"), [{ ticket: "T1", id: "lobby", type: "multicast" }]);
});

test("a 404 on the poll: online again, a new ticket from ack=0, history of the open chats reloaded", async () => {
  const s = setup();
  await online(s);
  s.client.openTab("unicast:bob", true);
  await s.timers.tick(0);
  await deliver(s, batch(3));
  assert.equal(s.transport.current.params.ack, 3);
  const historyCalls = s.transport.callsTo("history").length;

  s.transport.current.reject(ApiError(404, "ticket_not_found", "gone"));
  await s.timers.tick(0);
  assert.equal(s.client.ticket, "T2");
  assert.deepEqual(s.transport.callsTo("online")[1], { show: "available", buddy_ids: "bob", room_ids: "" });
  assert.deepEqual(s.transport.current.params, { ticket: "T2", ack: 0 });
  assert.equal(s.transport.callsTo("history").length, historyCalls + 1);
  assert.equal(s.client.conn, "online");
  assert.deepEqual(s.events.screens, ["loading", "main", "main"]);
});

test("online that cannot reach the server retries with backoff, showing reconnecting", async () => {
  const s = setup();
  let fail = 2;
  s.transport.answer("online", () => {
    if (fail-- > 0) throw ApiError(0, "network", "Cannot reach the server");
    return onlineAnswer("T9");
  });
  s.client.begin();
  await s.timers.tick(0);
  assert.equal(s.client.conn, "reconnecting");
  assert.deepEqual(s.events.screens, ["loading", "loading:Cannot reach the server"]);
  await s.timers.tick(500);
  assert.equal(s.transport.callsTo("online").length, 2);
  await s.timers.tick(999);
  assert.equal(s.transport.callsTo("online").length, 2);
  await s.timers.tick(1);
  assert.equal(s.client.ticket, "T9");
  assert.equal(s.client.conn, "online");
});

test("not signed in: the login screen; a login then goes online", async () => {
  const s = setup();
  s.transport.answer("online", () => { throw ApiError(401, "not_authenticated", "Sign in first"); });
  await online(s);
  assert.deepEqual(s.events.screens, ["loading", "login"]);
  assert.equal(s.client.conn, "offline");

  s.transport.answer("login", () => "ok");
  s.transport.answer("online", () => onlineAnswer("T5"));
  await s.client.login("alice", "alice");
  await s.timers.tick(0);
  assert.deepEqual(s.transport.callsTo("login"), [{ username: "alice", password: "alice" }]);
  assert.equal(s.client.ticket, "T5");
});

test("token mode: a refused token is renewed once through getToken, then it says why", async () => {
  let asked = 0;
  const s = setup({ tokenMode: true, getToken: () => { asked++; return Promise.resolve("fresh-token"); } });
  s.transport.answer("online", () => { throw ApiError(200, "token_expired", "expired"); });
  await online(s);
  await s.timers.tick(0);
  assert.equal(asked, 1);
  assert.equal(s.transport.token, "fresh-token");
  assert.equal(s.transport.callsTo("online").length, 2);
  assert.deepEqual(s.events.screens.slice(-1), ["autherror"]);
});

test("an incoming message in a chat not on screen: unread, a tab opens, a beep", async () => {
  const s = setup();
  await online(s);
  s.model.setViewing(true);
  s.client.openTab("unicast:carol", true);
  await deliver(s, batch(2, { messages: [
    { seq: 1, type: "unicast", from: "bob", to: "alice", nick: "Bob", body: "hi", timestamp: 1000 },
    { seq: 2, type: "unicast", from: "bob", to: "alice", nick: "Bob", body: "there?", timestamp: 2000 },
  ] }));
  const chat = s.model.chats.get("unicast:bob");
  assert.equal(chat.unread, 2);
  assert.ok(s.model.tabs.includes("unicast:bob"));
  assert.equal(s.model.active, "unicast:carol", "a background tab does not take the focus");
  assert.equal(s.model.totalUnread(), 2);
  assert.equal(s.events.beeps, 2);

  // Looking at it reads it.
  s.client.openTab("unicast:bob", true);
  assert.equal(chat.unread, 0);
  assert.equal(s.model.totalUnread(), 0);
});

test("a message in the chat on screen is read at once and does not beep; hidden, it counts", async () => {
  const s = setup();
  await online(s);
  s.client.openTab("unicast:bob", true);
  s.model.setViewing(true);
  await s.timers.tick(0);
  await deliver(s, batch(1, { messages: [{ seq: 1, type: "unicast", from: "bob", to: "alice", body: "seen", timestamp: 1000 }] }));
  assert.equal(s.model.chats.get("unicast:bob").unread, 0);
  assert.equal(s.events.beeps, 0);

  s.model.setViewing(false); // the page went to the background
  await deliver(s, batch(2, { messages: [{ seq: 2, type: "unicast", from: "bob", to: "alice", body: "unseen", timestamp: 2000 }] }));
  assert.equal(s.model.chats.get("unicast:bob").unread, 1);
  s.model.setViewing(true);
  assert.equal(s.model.chats.get("unicast:bob").unread, 0);
});

test("the play_sound and msg_auto_pop settings are obeyed", async () => {
  const s = setup({ online: () => ({ setting: { play_sound: false, msg_auto_pop: false } }) });
  await online(s);
  await deliver(s, batch(1, { messages: [{ seq: 1, type: "unicast", from: "bob", to: "alice", body: "x", timestamp: 1 }] }));
  assert.equal(s.events.beeps, 0);
  assert.deepEqual(s.model.tabs, []);
  assert.equal(s.model.chats.get("unicast:bob").unread, 1);
  assert.deepEqual(s.model.setting.blocked_rooms, []);
  assert.equal(s.model.setting.buddy_sticky, true, "defaults fill keys the server did not send");
});

test("my own message from another tab lands in the chat with `to`, unread 0", async () => {
  const s = setup();
  await online(s);
  await deliver(s, batch(1, { messages: [{ seq: 1, type: "unicast", from: "alice", to: "carol", body: "from my phone", timestamp: 1 }] }));
  const chat = s.model.chats.get("unicast:carol");
  assert.ok(chat);
  assert.equal(chat.unread, 0);
  assert.equal(s.events.beeps, 0);
  assert.equal(s.model.chats.has("unicast:alice"), false);
});

test("the same message twice (history and live) is kept once", async () => {
  const s = setup();
  await online(s);
  s.client.openTab("unicast:bob", true);
  await s.timers.tick(0);
  const m = { type: "unicast", from: "bob", to: "alice", body: "once", timestamp: 1000 };
  await deliver(s, batch(1, { messages: [Object.assign({ seq: 1 }, m)] }));
  await deliver(s, batch(2, { messages: [Object.assign({ seq: 2 }, m)] }));
  assert.deepEqual(s.model.chats.get("unicast:bob").messages.map((x) => x.body), ["once"]);
});

test("a message from a stranger adds them and asks the server who they are", async () => {
  const s = setup();
  s.transport.answer("buddies", () => [{ id: "dave", nick: "Dave", presence: "online", group: "stranger" }]);
  await online(s);
  await deliver(s, batch(1, { messages: [{ seq: 1, type: "unicast", from: "dave", to: "alice", nick: "dave?", body: "hello", timestamp: 1 }] }));
  assert.deepEqual(s.transport.callsTo("buddies"), [{ ticket: "T1", ids: "dave" }]);
  assert.equal(s.model.buddies.get("dave").nick, "Dave");
  assert.equal(s.model.buddies.get("dave").presence, "online");
});

test("a message for a blocked room is dropped", async () => {
  const s = setup({ online: () => ({ setting: { blocked_rooms: ["lobby"] } }) });
  await online(s);
  assert.equal(s.model.rooms.get("lobby").blocked, true);
  await deliver(s, batch(1, { messages: [{ seq: 1, type: "multicast", from: "bob", to: "lobby", body: "x", timestamp: 1 }] }));
  assert.equal(s.model.chats.has("multicast:lobby"), false);
  assert.equal(s.model.totalUnread(), 0);
});

test("presences: offline, invisible and back; my own show from another tab", async () => {
  const s = setup();
  await online(s);
  const bob = s.model.buddies.get("bob");
  await deliver(s, batch(1, { presences: [{ seq: 1, from: "bob", type: "offline", show: "unavailable" }] }));
  assert.equal(bob.presence, "offline");
  await deliver(s, batch(2, { presences: [{ seq: 2, from: "bob", type: "show", show: "dnd", status: "busy" }] }));
  assert.equal(bob.presence, "online");
  assert.equal(bob.show, "dnd");
  assert.equal(bob.status, "busy");
  await deliver(s, batch(3, { presences: [{ seq: 3, from: "bob", type: "show", show: "invisible" }] }));
  assert.equal(bob.presence, "offline");
  await deliver(s, batch(4, { presences: [{ seq: 4, from: "alice", type: "show", show: "away", status: "lunch" }] }));
  assert.equal(s.model.show, "away");
  assert.equal(s.model.status, "lunch");
});

test("presence changes refresh room counts from webim/members, coalesced", async () => {
  const s = setup();
  s.transport.answer("members", () => [
    { id: "alice", presence: "online" }, { id: "bob", presence: "online" }, { id: "carol", presence: "online" },
  ]);
  await online(s);
  await deliver(s, batch(2, { presences: [
    { seq: 1, from: "carol", type: "online", show: "available" },
    { seq: 2, from: "lobby", type: "join" },
  ] }));
  assert.equal(s.transport.callsTo("members").length, 0);
  await s.timers.tick(TIMING.ROOM_COUNTS_DELAY_MS);
  assert.deepEqual(s.transport.callsTo("members"), [{ ticket: "T1", id: "lobby" }]);
  assert.equal(s.model.rooms.get("lobby").count, 3);
});

test("typing shows for at most 10 s; clear and a message hide it", async () => {
  const s = setup();
  await online(s);
  const changes = [];
  s.client.on("change", (parts) => changes.push(parts.join(",")));
  await deliver(s, batch(1, { statuses: [{ seq: 1, from: "bob", to: "alice", show: "typing" }] }));
  const chat = s.model.chats.get("unicast:bob");
  assert.equal(chat.typingUntil, s.timers.now() - TIMING.POLL_GAP_MS + TIMING.TYPING_SHOW_MS);
  assert.equal(chat.typingNick, "Bob");
  changes.length = 0;
  await s.timers.tick(TIMING.TYPING_SHOW_MS + 50);
  assert.ok(changes.includes("chat"), "the view is told to re-render when it expires");

  await deliver(s, batch(2, { statuses: [{ seq: 2, from: "bob", to: "alice", show: "typing" }] }));
  await deliver(s, batch(3, { statuses: [{ seq: 3, from: "bob", to: "alice", show: "clear" }] }));
  assert.equal(chat.typingUntil, 0);
  await deliver(s, batch(4, { statuses: [{ seq: 4, from: "bob", to: "alice", show: "typing" }] }));
  await deliver(s, batch(5, { messages: [{ seq: 5, type: "unicast", from: "bob", to: "alice", body: "done", timestamp: 5 }] }));
  assert.equal(chat.typingUntil, 0);
});

test("sending: shown at once as sending, then sent; a failure shows failed and can be retried", async () => {
  const s = setup();
  await online(s);
  const chat = s.client.openTab("unicast:bob", true);
  await s.timers.tick(0);
  let refuse = false;
  s.transport.answer("message", () => { if (refuse) throw ApiError(200, "rate_limited", "Slow down"); return "ok"; });

  const sent = s.client.sendMessage(chat, "hello");
  const m = chat.messages[chat.messages.length - 1];
  assert.equal(m.state, "sending");
  assert.equal(m.timestamp, s.timers.now() + s.client.skew, "stamped in server time");
  await sent;
  assert.equal(m.state, "sent");
  const cid = m.client_id;
  assert.ok(/^[\x20-\x7e]{1,64}$/.test(cid), "a client_id the server accepts: " + cid);
  assert.deepEqual(s.transport.callsTo("message"), [{ ticket: "T1", type: "unicast", to: "bob", body: "hello", style: "", client_id: cid }]);

  refuse = true;
  await s.client.sendMessage(chat, "again");
  const failed = chat.messages[chat.messages.length - 1];
  assert.equal(failed.state, "failed");
  assert.equal(failed.error, "Slow down");
  assert.equal(s.transport.callsTo("message").length, 2, "a refusal is not sent again by itself");
  refuse = false;
  await s.client.retryMessage(chat, failed);
  assert.deepEqual(chat.messages.map((x) => x.body + ":" + x.state), ["hello:sent", "again:sent"]);
  const calls = s.transport.callsTo("message");
  assert.equal(calls[2].client_id, calls[1].client_id, "a manual retry keeps the client_id");
});

test("sending after a network error: sent again with the same client_id, with backoff, until ok", async () => {
  const s = setup({ random: () => 0.5 });
  await online(s);
  const chat = s.client.openTab("unicast:bob", true);
  await s.timers.tick(0);
  let lose = 2;  // the first two calls get no answer (stored or not, the client cannot tell)
  s.transport.answer("message", () => { if (lose-- > 0) throw ApiError(0, "network", "Cannot reach the server"); return "ok"; });
  const sent = s.client.sendMessage(chat, "hello");
  const m = chat.messages[chat.messages.length - 1];
  await s.timers.tick(0);
  assert.equal(m.state, "sending");
  assert.equal(s.transport.callsTo("message").length, 1);
  await s.timers.tick(5000);
  await sent;
  assert.equal(m.state, "sent");
  const calls = s.transport.callsTo("message");
  assert.equal(calls.length, 3);
  assert.ok(calls.every((c) => c.client_id === m.client_id), "one client_id for every attempt");
});

test("sending gives up after SEND_ATTEMPTS network errors and shows failed", async () => {
  const s = setup();
  await online(s);
  const chat = s.client.openTab("unicast:bob", true);
  await s.timers.tick(0);
  s.transport.answer("message", () => { throw ApiError(0, "timeout", "The server did not answer"); });
  const sent = s.client.sendMessage(chat, "lost");
  await s.timers.tick(120000);
  await sent;
  assert.equal(chat.messages[chat.messages.length - 1].state, "failed");
  assert.equal(s.transport.callsTo("message").length, TIMING.SEND_ATTEMPTS);
});

test("client_ids do not repeat", () => {
  const ids = new Set();
  for (let i = 0; i < 1000; i++) ids.add(NextimClient.newClientId(Date.now(), Math.random));
  assert.equal(ids.size, 1000);
});

test("a lost session goes online again after a random spread, not at once (a restart's herd)", async () => {
  const s = setup({ random: () => 0.75 });
  await online(s);
  s.transport.current.reject(ApiError(404, "invalid_ticket", "gone"));
  await s.timers.tick(0);
  assert.equal(s.transport.callsTo("online").length, 1, "not at once");
  assert.equal(s.client.conn, "reconnecting");
  await s.timers.tick(0.75 * TIMING.RECONNECT_SPREAD_MS - 1);
  assert.equal(s.transport.callsTo("online").length, 1);
  await s.timers.tick(1);
  assert.equal(s.transport.callsTo("online").length, 2);
  assert.equal(s.client.ticket, "T2");
});

test('typing: "typing" once per burst, "clear" after 6 s without keys, nothing to offline buddies', async () => {
  const s = setup();
  await online(s);
  const bob = s.client.openTab("unicast:bob", true);
  const carol = s.client.openTab("unicast:carol", true);
  await s.timers.tick(0);
  const shows = () => s.transport.callsTo("status").map((p) => p.to + ":" + p.show);
  s.client.noteTyping(bob);
  await s.timers.tick(1000);
  s.client.noteTyping(bob);
  s.client.noteTyping(bob);
  assert.deepEqual(shows(), ["bob:typing"]);
  await s.timers.tick(TIMING.TYPING_IDLE_MS - 1);
  assert.deepEqual(shows(), ["bob:typing"]);
  await s.timers.tick(1);
  assert.deepEqual(shows(), ["bob:typing", "bob:clear"]);
  // A message ends typing without a "clear".
  s.client.noteTyping(bob);
  await s.client.sendMessage(bob, "x");
  await s.timers.tick(TIMING.TYPING_IDLE_MS);
  assert.deepEqual(shows(), ["bob:typing", "bob:clear", "bob:typing"]);
  s.client.noteTyping(carol); // offline
  assert.deepEqual(shows(), ["bob:typing", "bob:clear", "bob:typing"]);
});

test("blocking a room leaves it and stores blocked_rooms; unblocking joins and reloads history", async () => {
  const s = setup();
  await online(s);
  const room = s.model.rooms.get("lobby");
  s.client.openTab("multicast:lobby", true);
  await s.timers.tick(0);
  await s.client.setRoomBlocked(room, true);
  assert.deepEqual(s.transport.callsTo("leave"), [{ ticket: "T1", id: "lobby", nick: "Alice" }]);
  assert.deepEqual(JSON.parse(s.transport.callsTo("setting")[0].data).blocked_rooms, ["lobby"]);
  assert.equal(room.blocked, true);

  const before = s.transport.callsTo("history").length;
  s.transport.answer("join", () => ({ count: 3, all_count: 3 }));
  await s.client.setRoomBlocked(room, false);
  assert.equal(room.blocked, false);
  assert.equal(room.count, 3);
  assert.deepEqual(JSON.parse(s.transport.callsTo("setting")[1].data).blocked_rooms, []);
  assert.equal(s.transport.callsTo("history").length, before + 1);
});

test("notifications are kept across reloads, newest first, without duplicates", async () => {
  const storage = memoryStorage();
  const first = setup({ storage });
  first.transport.answer("notifications", () => [{ text: "<b>one</b>", time: 100 }]);
  await online(first);
  await first.timers.tick(0);
  assert.deepEqual(first.model.notifications.map((n) => n.text), ["<b>one</b>"]);

  // The server hands each notification out once; the next page still has it.
  const second = setup({ storage });
  second.transport.answer("notifications", () => [{ text: "two", time: 200 }]);
  await online(second);
  await second.timers.tick(0);
  assert.deepEqual(second.model.notifications.map((n) => n.text), ["two", "<b>one</b>"]);
});

test("going offline ends the session, everyone looks offline, and it is remembered", async () => {
  const s = setup();
  await online(s);
  await s.client.setShow("offline");
  assert.deepEqual(s.transport.callsTo("offline"), [{ ticket: "T1" }]);
  assert.equal(s.client.ticket, null);
  assert.equal(s.client.conn, "offline");
  assert.equal(s.model.buddies.get("bob").presence, "offline");
  assert.equal(s.storage.get("offline", false), true);
  await s.timers.tick(60000);
  assert.equal(s.transport.polls.length, 1, "no poll after going offline");

  // A reload stays offline until the user picks a show again.
  const again = setup({ storage: s.storage });
  await online(again);
  assert.deepEqual(again.events.screens, ["offline"]);
  assert.equal(again.transport.callsTo("online").length, 0);
  await again.client.setShow("dnd");
  await again.timers.tick(0);
  assert.equal(again.transport.callsTo("online")[0].show, "dnd");
  assert.equal(again.storage.get("offline", false), false);
});

test("page hide ends the session by a beacon to webim/refresh and stops polling", async () => {
  const s = setup();
  await online(s);
  const poll = s.transport.current;
  assert.equal(s.client.pageHide(), true);
  assert.deepEqual(s.transport.beacons, [{ name: "refresh", params: { ticket: "T1" } }]);
  assert.equal(poll.signal.aborted, true);
  await s.timers.tick(120000);
  assert.equal(s.transport.polls.length, 1);
  assert.equal(s.client.pageHide(), false, "nothing left to end");
});

test("sign-out: offline, logout, and nothing of the user is left", async () => {
  const s = setup();
  s.transport.answer("notifications", () => [{ text: "private", time: 1 }]);
  await online(s);
  s.client.openTab("unicast:bob", true);
  await s.timers.tick(0);
  await s.client.logout();
  assert.deepEqual(s.transport.calls.slice(-2).map((c) => c.name), ["offline", "logout"]);
  assert.equal(s.model.user, null);
  assert.equal(s.model.buddies.size, 0);
  assert.deepEqual(s.model.tabs, []);
  assert.equal(s.storage.get("notifications:alice", null), null);
  assert.equal(s.storage.get("tabs", null, "session"), null);
  assert.equal(s.storage.get("offline", false), false);
  assert.deepEqual(s.events.screens.slice(-1), ["login"]);
});

test("closing the active tab activates its neighbour and loads its history", async () => {
  const s = setup();
  await online(s);
  s.client.openTab("unicast:bob", true);
  s.client.openTab("unicast:carol", true);
  s.client.openTab("multicast:lobby", true);
  await s.timers.tick(0);
  s.client.openTab("unicast:carol", true);
  s.client.closeTab("unicast:carol");
  assert.deepEqual(s.model.tabs, ["unicast:bob", "multicast:lobby"]);
  assert.equal(s.model.active, "multicast:lobby");
  assert.deepEqual(s.storage.get("tabs", null, "session"), { tabs: ["unicast:bob", "multicast:lobby"], active: "multicast:lobby" });
});
