"""Faults against a real ``twistd nextim`` process (docs/guarantees.md, docs/design.md#d6-comet-envelope): a crash in
the middle of a message burst, answers lost on the way to the client, and a client that
never polls.

Plain synchronous pytest: the daemon is a child process (:mod:`tests.daemon`), senders
run in threads, every wait is a poll for a condition with a deadline. SQLite with the
default ``synchronous = FULL``.
"""
import concurrent.futures
import socket
import threading
import urllib.parse

from tests.daemon import Daemon, wait_until

#: Limits for the fault daemons: no rate limit in the way, whole histories in one call.
FAULT_CONFIG = {
    "limits": {"messages_per_minute": 1_000_000, "history": 10_000, "new_messages": 500},
}


def bearer(d, user_id):
    return {"Authorization": "Bearer " + d.token(user_id, user_id.title())}


def online(d, user_id, **params):
    resp = d.client().post("/webim/online", params, headers=bearer(d, user_id))
    assert resp.status == 200, resp
    return resp.json()


def history(d, user_id, other_id):
    resp = d.client().get("/webim/history", {"id": other_id}, headers=bearer(d, user_id))
    assert resp.status == 200, resp
    return [m["body"] for m in resp.json()]


def rss_kib(pid):
    """Resident set size of ``pid`` in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def send_and_drop(d, path, params):
    """Send one GET on a raw socket and return the socket; the caller closes it
    without reading the answer (a response lost mid-flight)."""
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    query = urllib.parse.urlencode(params)
    sock.sendall(f"GET {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return sock


def make_users(d, *ids):
    for uid in ids:
        assert d.admin("PUT", f"/admin/users/{uid}", {"nick": uid.title()}).status == 200


# -- kill -9 in the middle of a burst ------------------------------------------------

def test_kill9_during_a_burst_loses_and_duplicates_nothing_that_got_ok():
    """Four senders write as fast as they can; the daemon is killed with SIGKILL while
    requests are in flight. After a restart every message that got ``ok`` is in the
    history exactly once (committed before ``ok``, docs/design.md#d7-messages); old tickets answer 404 and a new
    ``online`` works (docs/design.md#d4-tickets, docs/design.md#d16-shutdown)."""
    with Daemon(FAULT_CONFIG) as d:
        make_users(d, "alice", "bob")
        ticket = online(d, "alice")["connection"]["ticket"]
        acked, attempted, stop = [], [], threading.Event()
        lock = threading.Lock()

        def sender(n):
            c = d.client(timeout=5)
            i = 0
            while not stop.is_set():
                body = f"s{n}-{i}"
                with lock:
                    attempted.append(body)
                try:
                    resp = c.post("/webim/message", {"ticket": ticket, "type": "unicast", "to": "bob", "body": body})
                except OSError:
                    return  # the daemon is gone mid-request: no answer, no promise
                if resp.status == 200 and resp.body == b"ok":
                    with lock:
                        acked.append(body)
                i += 1

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(sender, n) for n in range(4)]
            wait_until(lambda: len(acked) >= 300, timeout=60, what="300 acknowledged messages")
            d.kill9()
            stop.set()
            for f in futures:
                f.result(timeout=10)
        assert len(acked) >= 300

        d.start()
        assert d.client().get("/packets", {"ticket": ticket}).status == 404  # old tickets are gone
        stored = history(d, "alice", "bob")
        missing = set(acked) - set(stored)
        duplicated = {b for b in stored if stored.count(b) > 1}
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
        assert not duplicated, f"duplicated after restart: {sorted(duplicated)[:5]}"
        assert set(stored) <= set(attempted)  # and nothing that was never sent
        print(f"kill -9: {len(acked)} acknowledged, {len(stored)} stored, {len(attempted)} attempted")
        # bob, offline during the burst, gets them as new messages, oldest first, once each
        got = []
        while True:
            batch = [m["body"] for m in online(d, "bob")["new_messages"]]
            if not batch:
                break
            got += batch
        assert sorted(got) == sorted(stored) and len(got) == len(set(got))


# -- lost answers and the ack retry (docs/design.md#d6-comet-envelope) ---------------

def test_an_answer_lost_on_a_parked_poll_is_sent_again_on_retry():
    """bob's poll is parked; alice's message wakes it and the answer is written to a
    client that has gone (it never reads it). The retry with the same ``ack`` gets the
    same packets with the same ``seq``; acknowledging them empties the queue."""
    with Daemon(FAULT_CONFIG) as d:
        make_users(d, "alice", "bob")
        a = online(d, "alice")["connection"]["ticket"]
        b = online(d, "bob")["connection"]["ticket"]
        c = d.client()
        sock = send_and_drop(d, "/packets", {"ticket": b, "ack": 0})
        wait_until(lambda: d.admin("GET", "/admin/stats").json()["parked_polls"] == 1, what="bob's poll to park")
        assert c.post("/webim/message", {"ticket": a, "type": "unicast", "to": "bob", "body": "m1"}).body == b"ok"
        wait_until(lambda: d.admin("GET", "/admin/stats").json()["parked_polls"] == 0, what="the poll answered")
        sock.close()  # the answer was written to the socket and is never read: lost

        retry = c.get("/packets", {"ticket": b, "ack": 0}).json()
        assert [(m["body"], m["seq"]) for m in retry["messages"]] == [("m1", 1)], retry
        again = c.get("/packets", {"ticket": b, "ack": 0}).json()
        assert again["messages"] == retry["messages"] and again["seq"] == retry["seq"]

        # the client got it now: ack=1 drops it, and the next message is seq 2
        assert c.post("/webim/message", {"ticket": a, "type": "unicast", "to": "bob", "body": "m2"}).body == b"ok"
        nxt = c.get("/packets", {"ticket": b, "ack": retry["seq"]}).json()
        assert [(m["body"], m["seq"]) for m in nxt["messages"]] == [("m2", 2)], nxt


def test_a_poll_dropped_right_after_sending_loses_nothing():
    """Packets are queued while no poll is parked; a poll is sent and the connection
    closed at once (the answer, written straight away, is lost). The retry with the same
    ``ack`` gets them all; nothing is skipped or doubled across the retries."""
    with Daemon(FAULT_CONFIG) as d:
        make_users(d, "alice", "bob")
        a = online(d, "alice")["connection"]["ticket"]
        b = online(d, "bob")["connection"]["ticket"]
        c = d.client()
        for i in range(5):
            assert c.post("/webim/message", {"ticket": a, "type": "unicast", "to": "bob", "body": f"q{i}"}).body == b"ok"
        for _ in range(3):
            send_and_drop(d, "/packets", {"ticket": b, "ack": 0}).close()
        env = wait_until(lambda: c.get("/packets", {"ticket": b, "ack": 0}).json(), what="the retry")
        assert [(m["body"], m["seq"]) for m in env["messages"]] == [(f"q{i}", i + 1) for i in range(5)], env
        assert env["seq"] == 5


# -- a client that never polls --------------------------------------------------------

def test_a_client_that_never_polls_is_bounded_and_memory_stays_flat():
    """bob opens a session and never polls while alice sends thousands of messages. His
    queue stops at ``queue_packets``: the overflow ends the session (its poll answers
    404, docs/design.md#d6-comet-envelope); the daemon's RSS stays flat; bob goes online again and finds every message
    in history, exactly once."""
    config = dict(FAULT_CONFIG, limits=dict(FAULT_CONFIG["limits"], queue_packets=200),
                  timers={"poll_hold": 3, "session_idle": 120, "user_grace": 120})
    total, warmup = 3000, 300
    with Daemon(config) as d:
        make_users(d, "alice", "bob")
        a = online(d, "alice")["connection"]["ticket"]
        b = online(d, "bob")["connection"]["ticket"]
        pid = d.proc.pid

        def send(range_):
            c = d.client()
            for i in range_:
                resp = c.post("/webim/message", {"ticket": a, "type": "unicast", "to": "bob", "body": f"n{i:05d}"})
                assert resp.status == 200, resp

        send(range(warmup))
        assert d.client().get("/packets", {"ticket": b}).status == 404  # overflowed at 201
        b = online(d, "bob")["connection"]["ticket"]  # a new session that never polls either
        before = rss_kib(pid)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            chunks = [range(warmup + k, total, 4) for k in range(4)]
            for f in [pool.submit(send, r) for r in chunks]:
                f.result(timeout=120)
        after = rss_kib(pid)
        stats = d.admin("GET", "/admin/stats").json()
        print(f"slow client: RSS {before} KiB -> {after} KiB over {total - warmup} messages; {stats}")
        assert stats["queue_overflows"] >= 2, stats
        assert d.client().get("/packets", {"ticket": b}).status == 404
        # Generous: the queues are bounded (2 x 200 packets); growth would be ~1 KB/message.
        assert after - before < 20 * 1024, f"RSS grew from {before} KiB to {after} KiB over {total - warmup} messages"

        got = []
        while True:
            batch = [m["body"] for m in online(d, "bob", buddy_ids="alice")["new_messages"]]
            if not batch:
                break
            got += batch
        stored = history(d, "bob", "alice")
        assert len(stored) == total and len(set(stored)) == total
        assert sorted(stored) == [f"n{i:05d}" for i in range(total)]
        assert len(got) == len(set(got))
