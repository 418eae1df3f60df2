"""Soak test (docs/guarantees.md; not a CI test): N users chat for M minutes against a running
nextim-twisted daemon, then the script reports lost and duplicated messages (both must
be zero), and the daemon's RSS and open file descriptors over time.

    twistd -n nextim --config cfg.toml &          # token auth, admin API enabled
    python bench/soak.py --url http://127.0.0.1:8000 --admin-key KEY \\
        --token-secret SECRET --users 20 --minutes 2 [--pid PID]

Each user has one tab: ``webim/online``, then a long-poll loop with the ``ack``
protocol (docs/design.md#d6-comet-envelope) (checking that ``seq`` runs 1, 2, 3 … without gap or repeat), and a sender
that writes unicast messages to random other users and, now and then, to a shared room.
A tab whose session ends (404) goes online again and recovers from ``new_messages`` and
history, as a real client does. Every body is unique, so at the end each recipient's
expected set (messages that got ``ok``) is compared with what it received.

The daemon's pid is found from the listening port (``/proc/net/tcp*``) unless ``--pid``
is given; RSS is VmRSS from ``/proc/<pid>/status``, fds the entries of ``/proc/<pid>/fd``.
Only loopback URLs are accepted. Standard library only.
"""
import argparse
import base64
import collections
import hashlib
import hmac
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse

ROOM = "soakroom"


# -- HTTP ----------------------------------------------------------------------------

class Client:
    """One request per connection (like a browser's JSONP/XHR calls)."""

    def __init__(self, base, timeout=40):
        parts = urllib.parse.urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout

    def request(self, method, path, params=None, headers=None, body=None):
        headers = dict(headers or {})
        if params is not None:
            query = urllib.parse.urlencode(params)
            if method == "GET":
                path += "?" + query
            else:
                body = query.encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def make_token(secret, sub, ttl=24 * 3600):
    """An HS256 JWT (docs/design.md#d13-identity), stdlib only."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": sub, "nick": sub.title(), "exp": int(time.time()) + ttl}).encode())
    signing = f"{header}.{payload}".encode()
    return f"{header}.{payload}." + b64(hmac.new(secret.encode(), signing, hashlib.sha256).digest())


# -- the daemon process ------------------------------------------------------------------

def pid_listening_on(port):
    """pid of the process with a listening TCP socket on ``port`` (Linux /proc), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                        inodes.add(fields[9])
        except OSError:
            pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- one user ------------------------------------------------------------------------------

class User:
    """A tab (poll loop) and a sender for one user."""

    def __init__(self, soak, user_id):
        self.soak, self.id = soak, user_id
        self.client = Client(soak.url)
        self.auth = {"Authorization": "Bearer " + make_token(soak.token_secret, user_id)}
        self.lock = threading.Lock()
        self.received = collections.Counter()   # body -> times received on the comet
        self.recovered = set()                  # bodies found in new_messages/history after a 404
        self.seq_errors = []
        self.sessions = 0
        self.ticket = None
        self.last_seq = 0

    def go_online(self):
        status, body = self.client.request("POST", "/webim/online", {}, self.auth)
        if status != 200:
            raise RuntimeError(f"{self.id}: online answered {status} {body[:200]!r}")
        answer = json.loads(body)
        with self.lock:
            self.ticket, self.last_seq = answer["connection"]["ticket"], 0
            self.sessions += 1
            for m in answer["new_messages"]:
                self.recovered.add(m["body"])
        return answer

    def recover_history(self):
        """After a lost session: what a client reloads (history with every peer, the room)."""
        for other in self.soak.user_ids:
            if other != self.id:
                status, body = self.client.request("GET", "/webim/history", {"id": other}, self.auth)
                if status == 200:
                    self.recovered.update(m["body"] for m in json.loads(body))
        status, body = self.client.request("GET", "/webim/history", {"id": ROOM, "type": "multicast"}, self.auth)
        if status == 200:
            self.recovered.update(m["body"] for m in json.loads(body))

    def poll_loop(self):
        while not self.soak.poll_stop.is_set():
            try:
                status, body = self.client.request("GET", "/packets", {"ticket": self.ticket, "ack": self.last_seq})
            except OSError as e:
                self.soak.error(f"{self.id}: poll failed: {e!r}")
                time.sleep(0.5)
                continue
            if status == 404:
                self.soak.count("sessions_lost")
                self.go_online()
                self.recover_history()
                continue
            if status != 200:
                self.soak.error(f"{self.id}: poll answered {status}")
                time.sleep(0.5)
                continue
            env = json.loads(body)
            if env.get("status") == "stopped":
                continue
            packets = sorted((p["seq"], kind, p) for kind in ("messages", "presences", "statuses")
                             for p in env[kind])
            with self.lock:
                for seq, kind, packet in packets:
                    if seq <= self.last_seq:
                        continue  # re-sent after a retry (docs/design.md#d6-comet-envelope): already counted
                    if seq != self.last_seq + 1:
                        self.seq_errors.append((self.last_seq, seq))
                    self.last_seq = seq
                    if kind == "messages":
                        self.received[packet["body"]] += 1

    def send_loop(self, rate):
        n = 0
        while not self.soak.send_stop.is_set():
            time.sleep(random.expovariate(rate))
            if self.soak.send_stop.is_set():
                break
            to_room = random.random() < self.soak.room_share
            to = ROOM if to_room else random.choice([u for u in self.soak.user_ids if u != self.id])
            body = f"{self.soak.run_id}:{self.id}:{n}"  # unique across runs on one database
            n += 1
            try:
                status, answer = self.client.request("POST", "/webim/message", {
                    "ticket": self.ticket, "type": "multicast" if to_room else "unicast", "to": to, "body": body})
            except OSError as e:
                self.soak.error(f"{self.id}: send failed: {e!r}")
                continue
            if status == 200 and answer == b"ok":
                self.soak.acked(to, body)
            elif status == 429:
                self.soak.count("rate_limited")
            elif status == 404:
                self.soak.count("send_on_lost_session")
            else:
                self.soak.error(f"{self.id}: message answered {status} {answer[:100]!r}")


# -- the run -----------------------------------------------------------------------------

class Soak:
    def __init__(self, args):
        self.url, self.token_secret, self.admin_key = args.url.rstrip("/"), args.token_secret, args.admin_key
        self.user_ids = [f"soak{i:03d}" for i in range(args.users)]
        self.room_share = args.room_share
        self.run_id = f"{int(time.time()):x}"
        self.poll_stop, self.send_stop = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.expected = collections.defaultdict(set)  # recipient -> acked bodies
        self.acked_count = 0
        self.counters = collections.Counter()
        self.errors = []

    def acked(self, to, body):
        with self.lock:
            self.acked_count += 1
            if to == ROOM:
                for uid in self.user_ids:
                    if uid != body.split(":")[1]:
                        self.expected[uid].add(body)
            else:
                self.expected[to].add(body)

    def count(self, what):
        with self.lock:
            self.counters[what] += 1

    def error(self, text):
        with self.lock:
            self.errors.append(text)

    def admin(self, method, path, body=None):
        status, answer = Client(self.url).request(method, path, headers={
            "Authorization": "Bearer " + self.admin_key, "Content-Type": "application/json"},
            body=json.dumps(body).encode() if body is not None else None)
        if status != 200:
            raise RuntimeError(f"admin {method} {path}: {status} {answer[:200]!r}")
        return json.loads(answer)

    def setup(self):
        self.admin("PUT", f"/admin/rooms/{ROOM}", {"nick": "Soak room"})
        for i, uid in enumerate(self.user_ids):
            self.admin("PUT", f"/admin/users/{uid}", {"nick": uid.title()})
            self.admin("PUT", f"/admin/rooms/{ROOM}/members/{uid}")
        for i, uid in enumerate(self.user_ids):  # a ring of buddies: presence traffic too
            self.admin("PUT", f"/admin/users/{uid}/buddies/{self.user_ids[(i + 1) % len(self.user_ids)]}", {})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="daemon base URL (loopback only)")
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--token-secret", required=True, help="[auth] token_secret, to act as the users")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=0.5, help="messages per second per user (default 0.5)")
    parser.add_argument("--room-share", type=float, default=0.1, help="share of messages sent to the room")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between table rows")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds to wait for the last deliveries")
    parser.add_argument("--pid", type=int, help="daemon pid (default: found from the port)")
    args = parser.parse_args(argv)
    host = urllib.parse.urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        parser.error("--url must be a loopback address")

    soak = Soak(args)
    pid = args.pid or pid_listening_on(urllib.parse.urlsplit(args.url).port or 80)
    if pid is None:
        print("warning: daemon pid not found; RSS and fds not reported", file=sys.stderr)
    soak.setup()
    users = [User(soak, uid) for uid in soak.user_ids]
    for u in users:
        u.go_online()
    threads = [threading.Thread(target=u.poll_loop, daemon=True) for u in users]
    threads += [threading.Thread(target=u.send_loop, args=(args.rate,), daemon=True) for u in users]
    for t in threads:
        t.start()

    samples = []
    header = f"{'t (s)':>7} {'acked':>7} {'received':>9} {'RSS MiB':>8} {'fds':>5} {'sessions':>8} {'parked':>6} {'429':>5}"
    print(f"soak: {len(users)} users, {args.minutes} min, {args.rate} msg/s/user, pid {pid}")
    print(header)
    print("-" * len(header))
    started = time.monotonic()

    def sample():
        t = time.monotonic() - started
        rss = rss_kib(pid) if pid else 0
        fds = open_fds(pid) if pid else 0
        stats = soak.admin("GET", "/admin/stats")
        received = sum(sum(u.received.values()) for u in users)
        samples.append((t, rss, fds))
        print(f"{t:7.0f} {soak.acked_count:7d} {received:9d} {rss / 1024:8.1f} {fds:5d} {stats['sessions']:8d} "
              f"{stats['parked_polls']:6d} {soak.counters['rate_limited']:5d}", flush=True)

    sample()
    end = started + args.minutes * 60
    while time.monotonic() < end:
        time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
        sample()
    soak.send_stop.set()

    def missing_of(u):
        with u.lock:
            return soak.expected[u.id] - set(u.received) - u.recovered

    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline and any(missing_of(u) for u in users):
        time.sleep(0.2)
    soak.poll_stop.set()
    sample()

    lost = sum(len(missing_of(u)) for u in users)
    duplicated = sum(sum(n - 1 for n in u.received.values() if n > 1) for u in users)
    seq_errors = sum(len(u.seq_errors) for u in users)
    delivered = sum(len(soak.expected[u.id]) for u in users)
    for u in users:
        try:
            u.client.request("POST", "/webim/offline", {"ticket": u.ticket})
        except OSError:
            pass
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    print()
    print(f"messages acknowledged : {soak.acked_count} ({delivered} deliveries expected, room messages count once per member)")
    print(f"lost                  : {lost}")
    print(f"duplicated            : {duplicated}")
    print(f"seq gaps/repeats      : {seq_errors}")
    print(f"sessions lost (404)   : {soak.counters['sessions_lost']}   rate limited (429): {soak.counters['rate_limited']}")
    if pid:
        print(f"RSS MiB start/max/end : {rss[0] / 1024:.1f} / {max(rss) / 1024:.1f} / {rss[-1] / 1024:.1f}")
        print(f"open fds start/max/end: {fds[0]} / {max(fds)} / {fds[-1]}")
    print(f"errors                : {len(soak.errors)}" + (f" (first: {soak.errors[0]})" if soak.errors else ""))
    return 1 if lost or duplicated or seq_errors else 0


if __name__ == "__main__":
    sys.exit(main())
