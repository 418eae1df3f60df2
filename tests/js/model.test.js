// The model alone: history merging, pending live messages, unread counts.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { NextimClient } = require("./fakes");

const { Model } = NextimClient;

function signedIn() {
  const parts = [];
  const m = new Model((...p) => parts.push(...p));
  m.applyOnline({
    user: { id: "alice", nick: "Alice" },
    connection: { ticket: "T" },
    buddies: [{ id: "bob", nick: "Bob", presence: "online" }],
    rooms: [{ id: "lobby", nick: "Lobby" }],
  }, 0);
  parts.length = 0;
  return { m, parts };
}

const msg = (from, to, body, timestamp, extra) => Object.assign({ type: "unicast", from, to, body, timestamp }, extra || {});

test("live messages that arrive before the history are kept, in time order, once", () => {
  const { m } = signedIn();
  m.applyMessage(msg("bob", "alice", "live", 300));
  m.applyMessage(msg("bob", "alice", "live", 300)); // the same one again
  const chat = m.chats.get("unicast:bob");
  assert.equal(chat.loaded, false);
  // The history was read before "live" was stored: it is not in it.
  m.setHistory(chat, [msg("bob", "alice", "old", 100), msg("alice", "bob", "reply", 200)], 1000);
  assert.deepEqual(chat.messages.map((x) => x.body), ["old", "reply", "live"]);
  assert.equal(chat.unread, 1, "counted once");
  // Read after it was stored: in the history and live, shown once.
  m.setHistory(chat, [msg("bob", "alice", "old", 100), msg("alice", "bob", "reply", 200), msg("bob", "alice", "live", 300)], 2000);
  assert.deepEqual(chat.messages.map((x) => x.body), ["old", "reply", "live"]);
  m.applyMessage(msg("bob", "alice", "live", 300));
  assert.equal(chat.messages.length, 3);
});

test("the history keeps my unconfirmed sends and those confirmed after it was asked for", () => {
  const { m } = signedIn();
  const chat = m.ensureChat("unicast", "bob");
  m.setHistory(chat, [], 0);
  chat.messages.push(
    msg("alice", "bob", "failed", 10, { local: true, state: "failed" }),
    msg("alice", "bob", "in the history", 20, { local: true, state: "sent", confirmedAt: 500 }),
    msg("alice", "bob", "confirmed later", 30, { local: true, state: "sent", confirmedAt: 1500 }),
  );
  m.setHistory(chat, [msg("alice", "bob", "in the history", 20)], 1000);
  assert.deepEqual(chat.messages.map((x) => x.body), ["failed", "in the history", "confirmed later"]);
});

test("a message from someone unknown makes a Strangers entry and says so", () => {
  const { m } = signedIn();
  const r = m.applyMessage(msg("dave", "alice", "hi", 1, { nick: "Dave" }));
  assert.equal(r.stranger, "dave");
  assert.equal(m.buddies.get("dave").group, "Strangers");
  assert.equal(m.buddies.get("dave").nick, "Dave");
  assert.equal(m.buddies.get("dave").presence, "online", "a live message means they are online");
  const offline = m.applyMessage(msg("erin", "alice", "while you were away", 1), { offline: true });
  assert.equal(m.buddies.get("erin").presence, "offline", "an offline message says nothing about presence now");
  assert.equal(offline.stranger, "erin");
});

test("online again: buddies missing from the answer are offline; unknown chats need their history", () => {
  const { m } = signedIn();
  const chat = m.ensureChat("unicast", "bob");
  m.setHistory(chat, [], 0);
  const stale = m.applyOnline({
    user: { id: "alice", nick: "Alice" },
    connection: { ticket: "T2" },
    buddies: [],
    presences: {},
  }, 0);
  assert.equal(m.buddies.get("bob").presence, "offline");
  assert.deepEqual(stale.map((c) => c.key), ["unicast:bob"]);
  assert.equal(chat.loaded, false);
});

test("someone else signing in on this tab starts from an empty model", () => {
  const { m } = signedIn();
  m.openTab("unicast:bob", true);
  m.applyOnline({ user: { id: "carol", nick: "Carol" }, connection: { ticket: "T3" }, buddies: [] }, 0);
  assert.deepEqual(m.tabs, []);
  assert.equal(m.buddies.has("bob"), false);
  assert.equal(m.user.id, "carol");
});

test("a background tab opened while nothing is active becomes active, read only if seen", () => {
  const { m } = signedIn();
  m.applyMessage(msg("bob", "alice", "1", 1));
  m.openTab("unicast:bob", false);
  assert.equal(m.active, "unicast:bob");
  assert.equal(m.chats.get("unicast:bob").unread, 1, "not on screen yet");
  m.setViewing(true);
  assert.equal(m.chats.get("unicast:bob").unread, 0);
});

test("members: the online count comes from the list", () => {
  const { m, parts } = signedIn();
  const room = m.rooms.get("lobby");
  m.applyMembers(room, [{ id: "a", presence: "online" }, { id: "b", presence: "offline" }, { id: "c", presence: "online" }]);
  assert.equal(room.count, 2);
  assert.ok(parts.includes("rooms"));
  m.applyMembers(room, { not: "a list" });
  assert.equal(room.count, 2);
});
