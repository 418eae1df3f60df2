// The comet loop: seq/ack, backoff, a lost session (docs/design.md#d6-comet-envelope).
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { NextimClient, FakeTimers, FakeTransport, batch } = require("./fakes");

const { CometLoop, ApiError, TIMING } = NextimClient;

/** A loop over a fake transport; records batches, states and "gone". */
function setup(opts = {}) {
  const timers = new FakeTimers();
  const transport = new FakeTransport();
  const seen = { batches: [], fresh: [], states: [], gone: 0, ackDuringBatch: [] };
  const loop = new CometLoop({
    source: (server, params, signal) => transport.poll(server, params, signal),
    timers,
    random: opts.random || (() => 0),
    onBatch: (d, fresh) => { seen.batches.push(d); seen.fresh.push(fresh); seen.ackDuringBatch.push(loop.ack); },
    onState: (state, detail) => seen.states.push(detail ? state + ":" + detail : state),
    onGone: () => { seen.gone++; },
  });
  return { timers, transport, loop, seen };
}

test("the first poll carries the ticket and ack=0; the next one acks the last seq", async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  assert.equal(transport.polls.length, 1);
  assert.equal(transport.polls[0].server, "/packets");
  assert.deepEqual(transport.polls[0].params, { ticket: "T1", ack: 0 });

  transport.current.resolve(batch(2, { messages: [{ seq: 1, body: "a" }, { seq: 2, body: "b" }] }));
  await timers.tick(TIMING.POLL_GAP_MS);
  assert.equal(transport.polls.length, 2);
  assert.deepEqual(transport.polls[1].params, { ticket: "T1", ack: 2 });
  assert.deepEqual(seen.fresh[0].messages.map((m) => m.body), ["a", "b"]);
});

test("ack moves only after the batch was processed", async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.resolve(batch(5, { presences: [{ seq: 5, from: "bob", type: "online" }] }));
  await timers.tick(0);
  assert.deepEqual(seen.ackDuringBatch, [0]);
  assert.equal(loop.ack, 5);
});

test("a resent packet (seq not above the last ack) is not applied twice", async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.resolve(batch(2, { messages: [{ seq: 1, body: "a" }, { seq: 2, body: "b" }] }));
  await timers.tick(TIMING.POLL_GAP_MS);
  // The server resends what it thinks is unacked, plus something new.
  transport.current.resolve(batch(3, {
    messages: [{ seq: 2, body: "b" }, { seq: 3, body: "c" }],
    statuses: [{ seq: 1, from: "bob", show: "typing" }],
  }));
  await timers.tick(TIMING.POLL_GAP_MS);
  assert.deepEqual(seen.fresh[1].messages.map((m) => m.body), ["c"]);
  assert.deepEqual(seen.fresh[1].statuses, []);
  assert.equal(transport.current.params.ack, 3);
});

test("an answer lost on the way is asked for again with the same ack", async () => {
  const { timers, transport, loop } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.resolve(batch(4));
  await timers.tick(TIMING.POLL_GAP_MS);
  transport.current.reject(ApiError(0, "network", "Cannot reach the server"));
  await timers.tick(TIMING.BACKOFF_MAX_MS);
  assert.equal(transport.polls.length, 3);
  assert.equal(transport.polls[2].params.ack, 4);
});

test("errors back off exponentially with jitter, capped, and a success resets the backoff", async () => {
  // random() = 0: the shortest delay, half of the cap.
  const { timers, transport, loop, seen } = setup({ random: () => 0 });
  loop.start("T1", "/packets");
  await timers.tick(0);
  const expected = [500, 1000, 2000, 4000, 8000, 15000, 15000];
  for (const delay of expected) {
    const before = transport.polls.length;
    transport.current.reject(ApiError(0, "network", "Cannot reach the server"));
    await timers.tick(delay - 1);
    assert.equal(transport.polls.length, before, `no poll before ${delay} ms`);
    await timers.tick(1);
    assert.equal(transport.polls.length, before + 1, `a poll after ${delay} ms`);
  }
  assert.equal(loop.failures, expected.length);
  assert.ok(seen.states.includes("reconnecting:Cannot reach the server"));

  transport.current.resolve(batch(1));
  await timers.tick(TIMING.POLL_GAP_MS);
  assert.equal(loop.failures, 0);
  assert.equal(seen.states[seen.states.length - 1], "online");
  const before = transport.polls.length;
  transport.current.reject(ApiError(0, "network", "down"));
  await timers.tick(500);
  assert.equal(transport.polls.length, before + 1, "back to the first step after a success");
});

test("backoff delays are spread between half and all of the cap", () => {
  const { backoffDelay } = NextimClient;
  assert.equal(backoffDelay(1, () => 0), 500);
  assert.equal(backoffDelay(1, () => 0.999999), 1000);
  assert.equal(backoffDelay(3, () => 0.5), 3000);
  assert.equal(backoffDelay(50, () => 0.999999), 30000);
  assert.equal(backoffDelay(50, () => 0), 15000);
  for (let n = 1; n < 12; n++) {
    const cap = Math.min(30000, 1000 * 2 ** (n - 1));
    const d = backoffDelay(n);
    assert.ok(d >= cap / 2 && d <= cap, `${n}: ${d}`);
  }
});

test("a 404 stops polling and reports the session gone, once", async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.reject(ApiError(404, "ticket_not_found", "Not found"));
  await timers.tick(0);
  assert.equal(seen.gone, 1);
  assert.equal(loop.running(), false);
  await timers.tick(5 * 60 * 1000);
  assert.equal(transport.polls.length, 1);
  assert.deepEqual(timers.pending(), []);
});

test("under JSONP the status is invisible: a second failed script in a row counts as 404", async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.reject(ApiError(0, "jsonp_error", "Cannot reach the server"));
  await timers.tick(TIMING.BACKOFF_MAX_MS);
  assert.equal(seen.gone, 0);
  assert.equal(transport.polls.length, 2);
  transport.current.reject(ApiError(0, "jsonp_error", "Cannot reach the server"));
  await timers.tick(TIMING.BACKOFF_MAX_MS);
  assert.equal(seen.gone, 1);
  assert.equal(transport.polls.length, 2);
});

test('"stopped" polls again soon, without a batch, a new ack or a failure', async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.resolve(batch(3));
  await timers.tick(TIMING.POLL_GAP_MS);
  transport.current.resolve({ status: "stopped" });
  await timers.tick(TIMING.STOPPED_GAP_MS - 1);
  assert.equal(transport.polls.length, 2, "no tight loop");
  await timers.tick(1);
  assert.equal(transport.polls.length, 3);
  assert.equal(transport.polls[2].params.ack, 3);
  assert.equal(seen.batches.length, 1);
  assert.equal(loop.failures, 0);
});

test("after an error, a poll the server holds for 1.5 s counts as online again", async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.reject(ApiError(0, "network", "down"));
  await timers.tick(500);
  assert.equal(loop.state, "reconnecting");
  await timers.tick(TIMING.POLL_HELD_MS - 1);
  assert.equal(loop.state, "reconnecting");
  await timers.tick(1);
  assert.equal(loop.state, "online");
  assert.equal(seen.states[seen.states.length - 1], "online");
  assert.ok(transport.current, "the poll is still held");
});

test("stop() aborts the poll in flight, ignores a late answer and schedules nothing", async () => {
  const { timers, transport, loop, seen } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  const p = transport.current;
  loop.stop();
  assert.equal(p.signal.aborted, true);
  p.resolve(batch(9, { messages: [{ seq: 9, body: "late" }] }));
  await timers.tick(60000);
  assert.equal(seen.batches.length, 0);
  assert.equal(transport.polls.length, 1);
  assert.deepEqual(timers.pending(), []);
});

test("abort() fails the poll in flight and the loop retries it", async () => {
  const { timers, transport, loop } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  loop.abort();
  await timers.tick(500);
  assert.equal(loop.state, "reconnecting");
  assert.equal(transport.polls.length, 2);
});

test("a new ticket starts at ack=0", async () => {
  const { timers, transport, loop } = setup();
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.resolve(batch(7));
  await timers.tick(TIMING.POLL_GAP_MS);
  loop.start("T2", "/packets");
  await timers.tick(0);
  assert.equal(transport.polls[1].signal.aborted, true);
  assert.deepEqual(transport.current.params, { ticket: "T2", ack: 0 });
});

test("a handler that throws does not stop the channel", async () => {
  const timers = new FakeTimers();
  const transport = new FakeTransport();
  const loop = new CometLoop({
    source: (s, p, sig) => transport.poll(s, p, sig),
    timers,
    onBatch: () => { throw new Error("bad packet"); },
  });
  loop.start("T1", "/packets");
  await timers.tick(0);
  transport.current.resolve(batch(1));
  await timers.tick(TIMING.POLL_GAP_MS);
  assert.equal(transport.polls.length, 2);
  assert.equal(transport.current.params.ack, 1);
});

test("there is never more than one poll in flight", async () => {
  const { timers, transport, loop } = setup();
  const inFlight = () => transport.polls.filter((p) => !p.done).length;
  loop.start("T1", "/packets");
  await timers.tick(0);
  const steps = [
    () => transport.current.resolve(batch(1)),
    () => transport.current.resolve({ status: "stopped" }),
    () => transport.current.reject(ApiError(0, "network", "down")),
    () => loop.abort(),
    () => loop.start("T2", "/packets"),
    () => loop.start("T3", "/packets"),
    () => transport.current && transport.current.resolve(batch(2)),
  ];
  for (const step of steps) {
    step();
    for (let i = 0; i < 5; i++) {
      await timers.tick(1000);
      assert.ok(inFlight() <= 1, `${inFlight()} polls in flight`);
    }
  }
  assert.equal(transport.current.params.ticket, "T3");
});
