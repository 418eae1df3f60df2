"""WebSocket load generator: N simulated users, one WebSocket each, speaking either

- nextim's socket (docs/design.md#d21-websocket): ``webim/online`` over HTTP with a JWT
  for the ticket, then ``GET /ws`` (no ``Origin``: the ticket is the credential),
  ``subscribe <domain> <ticket> [<ack>]``, one comet envelope per text frame,
  ``ack <seq>`` at most once per ``ack_interval`` seconds per socket (only when the seq
  moved), and messages as JSON call frames ``{"id": N, "call": "message", "params":
  {...}}`` over the socket, each answered by ``{"reply": N, "result"|"error": ...}``; or
- XMPP over WebSocket (RFC 7395): subprotocol ``xmpp``, ``<open
  xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>`` framing, SASL PLAIN, stream restart,
  bind, session (when the server does not mark it optional), initial presence, MUC join
  (owner first, instant room), messages; one stanza per frame. Against Prosody's
  mod_websocket and ejabberd's ``ejabberd_http_ws``.

The scenario is bench/loadgen.py's (the long-poll generator): users ``u<i>`` in rooms of
ten; in a message phase, messages at a total rate R from random users, half to a buddy
(``u<i±1>``), half to the sender's room (9 recipients).

How it is measured. Every message body is ``MSG:<id>:<sender>:<send time>:`` with the
send time from ``time.monotonic_ns()`` taken just before the frame is written, so the
recipient computes the latency itself (CLOCK_MONOTONIC is one clock for the whole
machine, whichever process reads it). The sender records the expected recipients; the
recipient records its first arrival of each id (a second is a duplicate; the MUC echo to
the sender is ignored). After the send phase and a drain (until every expected delivery
arrived, at most ``drain`` s) the parent merges the two sides: *lost* = expected
deliveries that never arrived, *dup* = second arrivals, *strays* = arrivals nobody
expected. The generator's own CPU is the sum of its processes' CPU time over the phase.

Processes. :class:`WsFleet` starts ``procs`` worker processes (spawned; worker k pinned
to the k-th of the generator CPUs, round robin) and owns none of the users itself: each
worker owns a contiguous slice of whole rooms, logs its users in, keeps their sockets,
and sends its share (R / procs) from its own users; message ids are unique across
workers (``id ≡ k (mod procs)``). Several workers only help with more cores than one for
the generator (on the 2-core bench machine the server has one and the generator the
other); with one worker the parent is idle apart from a few control messages per phase.

The WebSocket framing is aiohttp's client (already the long-poll generator's HTTP
client): its frame reader and masking are compiled, where wsproto's are pure Python.
Pure measurement code: nothing here is imported by the daemon.
"""
import asyncio
import base64
import gc
import multiprocessing
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import jwt
import orjson

from servers import DOMAIN, ROOM_SIZE, TOKEN_SECRET, room_of

MSG_RE = re.compile(r"MSG:(\d+):(\d+):(\d+):")
MUC = f"conference.{DOMAIN}"
FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
XMPP_OPEN = f"<open xmlns='{FRAMING_NS}' to='{DOMAIN}' version='1.0'/>"
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Closed(Exception):
    """The socket closed (``code``: its close code, or None) before the step finished."""

    def __init__(self, code=None):
        super().__init__(code)
        self.code = code


class LocalStats:
    """One worker's side of a phase: what its users sent, what its users received.

    ``sent``: message id -> tuple of recipient user indexes; ``got``: id -> set of
    recipients (of this worker) that received it; latencies in milliseconds.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.sent = {}
        self.got = {}
        self.latencies = []
        self.duplicates = 0
        self.send_errors = 0
        self.skipped = 0      # a send was due from a user whose socket was not up
        self.expected = 0     # deliveries owed for what was sent
        self.unique = 0       # first arrivals

    def expect(self, mid, recipients):
        self.sent[mid] = recipients
        self.expected += len(recipients)

    def failed(self, mid):
        """The server refused the send: nothing is owed for it."""
        rec = self.sent.pop(mid, None)
        if rec is not None:
            self.expected -= len(rec)
            self.send_errors += 1

    def arrived(self, mid, sender, user, sent_ns, now_ns):
        if sender == user:
            return   # MUC echo to the sender
        s = self.got.get(mid)
        if s is None:
            s = self.got[mid] = set()
        elif user in s:
            self.duplicates += 1
            return
        s.add(user)
        self.unique += 1
        self.latencies.append((now_ns - sent_ns) / 1e6)

    def scan(self, text, user):
        """Record every ``MSG:`` id in ``text`` (an envelope's body or a stanza)."""
        now = time.monotonic_ns()
        for mid, sender, t in MSG_RE.findall(text):
            self.arrived(int(mid), int(sender), user, int(t), now)


# ---------------------------------------------------------------------------- users
class NextimWsUser:
    """One browser tab of the NextIM web client on the socket."""

    def __init__(self, w, i):
        self.w = w
        self.i = i
        self.name = f"u{i}"
        self.token = jwt.encode({"sub": self.name, "nick": f"User {i}"}, TOKEN_SECRET, algorithm="HS256")
        self.ticket = None
        self.url = None
        self.seq = None
        self.acked = None
        self.ws = None
        self.ready = False
        self.logins = 0
        self.mark = -1
        self.task = None

    async def _online(self):
        async with self.w.http.post(self.w.base + "/webim/online",
                                    headers={"Authorization": "Bearer " + self.token},
                                    data={"show": "available"}) as r:
            body = await r.read()
            if r.status != 200:
                raise Closed(r.status)
        conn = orjson.loads(body)["connection"]
        self.ticket = conn["ticket"]
        self.url = conn.get("websocket") or self.w.base.replace("http", "ws", 1) + "/ws"
        self.seq = self.acked = None

    async def login(self):
        """``online`` (when there is no ticket) and ``subscribe`` until the first
        envelope arrives; retries as a browser would (0.5–1.5 s)."""
        while self.w.running:
            try:
                if self.ticket is None:
                    await self._online()
                ws = await self.w.http.ws_connect(self.url, autoping=True, max_msg_size=0)
                line = f"subscribe {DOMAIN} {self.ticket}"
                if self.seq is not None:
                    line += f" {self.seq}"
                await ws.send_str(line)
                msg = await ws.receive(timeout=60)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    await ws.close()
                    raise Closed(ws.close_code)
                self.ws = ws
                self._frame(msg.data)
                self.ready = True
                self.logins += 1
                return
            except Closed as e:
                if e.code in (4404, 404):
                    self.ticket = None   # the session is gone: a new online at once
                    continue
            except NETWORK_ERRORS:
                pass
            await asyncio.sleep(0.5 + random.random())

    async def run(self):
        """Read frames until the socket closes; then log in again (4404: new online)."""
        while self.w.running:
            ws = self.ws
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._frame(msg.data)
            self.ready = False
            if not self.w.running:
                return
            if ws.close_code == 4404:
                self.ticket = None
            else:
                await asyncio.sleep(0.5 + random.random())
            await self.login()

    def _frame(self, data):
        env = orjson.loads(data)
        if "reply" in env:
            if "error" in env:
                self.w.stats.failed(env["reply"])
            return
        msgs = env.get("messages")
        if msgs:
            stats = self.w.stats
            for m in msgs:
                body = m.get("body")
                if body and "MSG:" in body:
                    stats.scan(body, self.i)
        seq = env.get("seq")
        if seq is not None and seq != self.seq:
            self.seq = seq
            self.w.dirty.add(self)

    def ack(self):
        """Called by the worker's ticker at most once per ack interval."""
        if self.ready and self.seq != self.acked:
            self.acked = self.seq
            return self.ws.send_str(f"ack {self.seq}")
        return None

    def send_message(self, mid, kind, target, recipients):
        to = f"u{target}" if kind == "unicast" else f"r{target}"
        self.w.stats.expect(mid, recipients)
        frame = orjson.dumps({"id": mid, "call": "message",
                              "params": {"type": kind, "to": to,
                                         "body": f"MSG:{mid}:{self.i}:{time.monotonic_ns()}:"}}).decode()
        return self.ws.send_str(frame)

    async def close(self):
        if self.ws is not None:
            await self.ws.close()


class XmppWsUser:
    """One browser tab of an XMPP-over-WebSocket client (RFC 7395), e.g. Converse.js."""

    def __init__(self, w, i):
        self.w = w
        self.i = i
        self.name = f"u{i}"
        self.ws = None
        self.ready = False
        self.logins = 0
        self.mark = -1
        self.task = None
        self.waiters = []   # (compiled regex, future)

    def wait_for(self, needle):
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((re.compile(needle), fut))
        return fut

    async def _step(self, frame, needle, timeout=60):
        fut = self.wait_for(needle)
        await self.ws.send_str(frame)
        return await asyncio.wait_for(fut, timeout)

    async def login(self):
        while self.w.running:
            try:
                await self._login_once()
                return
            except (*NETWORK_ERRORS, Closed):
                if self.ws is not None:
                    await self.ws.close()
                self.ws = None
                self.waiters = []
            await asyncio.sleep(0.5 + random.random())

    async def _login_once(self):
        self.ws = await self.w.http.ws_connect(self.w.server.ws_url, protocols=("xmpp",), autoping=True,
                                               max_msg_size=0)
        if self.ws.protocol != "xmpp":
            raise Closed("no xmpp subprotocol")
        self.task = asyncio.ensure_future(self._read(self.ws))
        await self._step(XMPP_OPEN, "PLAIN")
        cred = base64.b64encode(f"\0{self.name}\0pw{self.i}".encode()).decode()
        await self._step(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>",
                         "<success")
        feats = await self._step(XMPP_OPEN, "urn:ietf:params:xml:ns:xmpp-bind")
        await self._step("<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:"
                         "xmpp-bind'><resource>web</resource></bind></iq>", "</jid>")
        if "urn:ietf:params:xml:ns:xmpp-session" in feats and "<optional" not in feats:
            await self._step("<iq xmlns='jabber:client' type='set' id='sess1'><session xmlns='urn:ietf:"
                             "params:xml:ns:xmpp-session'/></iq>", "sess1")
        await self.ws.send_str("<presence xmlns='jabber:client'/>")
        self.ready = True
        self.logins += 1

    async def _read(self, ws):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = msg.data
                if "MSG:" in data:
                    self.w.stats.scan(data, self.i)
                if self.waiters:
                    for w in list(self.waiters):
                        if w[0].search(data) and not w[1].done():
                            w[1].set_result(data)
                            self.waiters.remove(w)
        for _, fut in self.waiters:
            if not fut.done():
                fut.set_exception(Closed(ws.close_code))
        self.waiters = []
        if ws is not self.ws:
            return
        was_ready, self.ready = self.ready, False
        if was_ready and self.w.running:
            await asyncio.sleep(0.5 + random.random())
            await self.login()

    async def join_room(self):
        room = f"r{room_of(self.i)}@{MUC}"
        text = await self._step(f"<presence xmlns='jabber:client' to='{room}/{self.name}'>"
                                "<x xmlns='http://jabber.org/protocol/muc'/></presence>", "code=.110.")
        if re.search("code=.201.", text):
            try:
                await self._step(f"<iq xmlns='jabber:client' type='set' id='cfg1' to='{room}'><query "
                                 "xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' "
                                 "type='submit'/></query></iq>", "id=.cfg1.")
            except asyncio.TimeoutError:
                pass   # the room exists and we are in it

    def send_message(self, mid, kind, target, recipients):
        self.w.stats.expect(mid, recipients)
        body = f"MSG:{mid}:{self.i}:{time.monotonic_ns()}:"
        if kind == "unicast":
            stanza = (f"<message xmlns='jabber:client' type='chat' to='u{target}@{DOMAIN}'>"
                      f"<body>{body}</body></message>")
        else:
            stanza = (f"<message xmlns='jabber:client' type='groupchat' to='r{target}@{MUC}'>"
                      f"<body>{body}</body></message>")
        return self.ws.send_str(stanza)

    async def close(self):
        if self.ws is not None:
            ws, self.ws = self.ws, None
            await ws.close()


# ---------------------------------------------------------------------------- worker
class PauseMeter:
    """The worker's own event-loop lateness (a 10 ms ticker), in milliseconds."""

    TICK_S = 0.010

    def __init__(self):
        self.max_lag = 0.0
        self.lags_over_50 = 0
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self):
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            lag = (time.monotonic() - t - self.TICK_S) * 1000.0
            self.max_lag = max(self.max_lag, lag)
            if lag > 50:
                self.lags_over_50 += 1

    def stop(self):
        self._task.cancel()
        return {"generator_max_lag_ms": self.max_lag, "generator_lags_over_50ms": self.lags_over_50}


class _ServerInfo:
    """What a worker needs of the server object (it cannot be pickled whole)."""

    def __init__(self, server):
        self.protocol = server.protocol
        self.base = getattr(server, "base", None)
        self.ws_url = getattr(server, "ws_url", None)


class Worker:
    """Users ``lo``…``hi-1`` of ``n`` in one process; answers the parent's commands."""

    ACK_SLICES = 50

    def __init__(self, spec):
        self.server = spec["server"]
        self.base = self.server.base
        self.n, self.lo, self.hi = spec["n"], spec["lo"], spec["hi"]
        self.k, self.procs = spec["k"], spec["procs"]
        self.room_fraction = spec["room_fraction"]
        self.concurrency = spec["concurrency"]
        self.ack_interval = spec["ack_interval"]
        self.stats = LocalStats()
        self.running = True
        self.dirty = set()
        self.next_mid = self.k or self.procs   # ids ≡ k (mod procs), never 0
        cls = NextimWsUser if self.server.protocol == "nextim-ws" else XmppWsUser
        self.users = [cls(self, i) for i in range(self.lo, self.hi)]
        self.http = None

    async def open(self):
        conn = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=90, ttl_dns_cache=None)
        self.http = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120),
                                          skip_auto_headers=("User-Agent",))
        if self.server.protocol == "nextim-ws":
            asyncio.ensure_future(self._acker())

    async def _acker(self):
        """Every ``ack_interval`` s, ``ack <seq>`` on each socket whose seq moved. The
        acks are spread over the interval in ``ACK_SLICES`` slices: 5 000 of them in one
        go blocked this loop for ~100 ms once a second, and that showed up as delivery
        latency (the generator's, not the server's)."""
        slice_s = self.ack_interval / self.ACK_SLICES
        while self.running:
            dirty, self.dirty = list(self.dirty), set()
            step = len(dirty) // self.ACK_SLICES + 1
            for lo in range(0, self.ACK_SLICES * step, step):
                for u in dirty[lo:lo + step]:
                    try:
                        aw = u.ack()
                        if aw is not None:
                            await aw
                    except (*NETWORK_ERRORS, ConnectionResetError):
                        pass
                await asyncio.sleep(slice_s)

    async def cmd_login(self):
        sem = asyncio.Semaphore(self.concurrency)

        async def one(u):
            async with sem:
                await u.login()
                if self.server.protocol == "nextim-ws":
                    u.task = asyncio.ensure_future(u.run())
        await asyncio.gather(*(one(u) for u in self.users))
        return len(self.users)

    async def cmd_rooms(self):
        if self.server.protocol != "xmpp-ws":
            return 0
        sem = asyncio.Semaphore(self.concurrency)

        async def one(u):
            async with sem:
                await u.join_room()
        await asyncio.gather(*(one(u) for u in self.users if u.i % ROOM_SIZE == 0))
        await asyncio.gather(*(one(u) for u in self.users if u.i % ROOM_SIZE != 0))
        return 0

    async def cmd_parked(self):
        return sum(1 for u in self.users if u.ready and u.logins > u.mark)

    async def cmd_forget(self):
        for u in self.users:
            u.mark = u.logins
        return 0

    async def cmd_cpu(self):
        return time.process_time()

    def pick(self, i):
        """A message from user ``i``: ``(kind, target, recipients)`` (as bench/loadgen.py)."""
        room = room_of(i)
        lo = room * ROOM_SIZE
        members = range(lo, min(lo + ROOM_SIZE, self.n))
        if self.n > 1 and (random.random() >= self.room_fraction or len(members) < 2):
            j = (i + random.choice((1, -1))) % self.n
            return "unicast", j, (j,)
        return "multicast", room, tuple(m for m in members if m != i)

    async def cmd_phase(self, rate, duration):
        """Send ``rate`` msgs/s (this worker's share) for ``duration`` s; return when the
        sending ends. Sends that fell due while the loop was late go out at once, so
        the offered rate holds even when the generator lags (the lag is reported)."""
        st = self.stats
        st.reset()
        gc.collect()
        gc.disable()
        self.pauses = PauseMeter()
        self.cpu0 = time.process_time()
        t0 = time.monotonic()
        done = 0
        pending = []
        while True:
            now = time.monotonic()
            if now - t0 >= duration:
                break
            due = int(rate * (now - t0)) - done
            for _ in range(due):
                u = self.users[random.randrange(len(self.users))]
                done += 1
                if not u.ready:
                    st.skipped += 1
                    continue
                mid = self.next_mid
                self.next_mid += self.procs
                pending.append(u.send_message(mid, *self.pick(u.i)))
            if pending:
                batch, pending = pending, []
                res = await asyncio.gather(*batch, return_exceptions=True)
                for r in res:
                    if isinstance(r, BaseException):
                        st.send_errors += 1
            await asyncio.sleep(0.005)
        return {"sent": len(st.sent), "due": done}

    async def cmd_counts(self):
        return self.stats.expected, self.stats.unique

    async def cmd_collect(self):
        st = self.stats
        cpu = time.process_time() - self.cpu0
        out = {"sent": st.sent, "got": {m: tuple(s) for m, s in st.got.items()}, "latencies": st.latencies,
               "duplicates": st.duplicates, "send_errors": st.send_errors, "skipped": st.skipped,
               "cpu_s": cpu, **self.pauses.stop()}
        gc.enable()
        return out

    async def cmd_stop(self):
        self.running = False
        await asyncio.gather(*(u.close() for u in self.users), return_exceptions=True)
        for u in self.users:
            if u.task is not None:
                u.task.cancel()
        await self.http.close()
        return 0


def _worker_main(conn, spec, cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(conn, spec))


async def _serve(conn, spec):
    w = Worker(spec)
    await w.open()
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    async def handle(name, args):
        try:
            result = await getattr(w, "cmd_" + name)(*args)
        except Exception as e:  # report it to the parent instead of hanging it
            result = RuntimeError(f"worker {w.k}: {name}: {e!r}")
        conn.send(result)
        if name == "stop":
            finished.set_result(None)

    def reader():
        # The pipe is read in a thread with blocking calls: an event loop's add_reader
        # makes the descriptor non-blocking, and a large pickled answer then fails.
        while True:
            try:
                name, args = conn.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))
                return
            loop.call_soon_threadsafe(asyncio.ensure_future, handle(name, args))
            if name == "stop":
                return

    threading.Thread(target=reader, daemon=True).start()
    conn.send("ready")
    await finished


# ---------------------------------------------------------------------------- parent
def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


class _Stats:
    recording = True   # what bench/compare.py toggles on the long-poll generator


class WsFleet:
    """The parent side: the same calls as bench/loadgen.py's ``Generator`` (``open``,
    ``login_all``, ``setup_rooms``, ``message_phase``, ``count_parked``, ``forget``,
    ``close``), carried out by ``procs`` worker processes."""

    def __init__(self, server, n, procs=1, cpus=None, room_fraction=0.5, concurrency=100, ack_interval=5.0):
        self.server = server
        self.n = n
        self.procs = procs
        self.cpus = cpus or [None]
        self.stats = _Stats()
        self.online_times = []
        rooms = (n + ROOM_SIZE - 1) // ROOM_SIZE
        cuts = [min(n, (rooms * k // procs) * ROOM_SIZE) for k in range(procs + 1)]
        info = _ServerInfo(server)
        self.specs = [{"server": info, "n": n, "lo": cuts[k], "hi": cuts[k + 1], "k": k, "procs": procs,
                       "room_fraction": room_fraction, "concurrency": max(1, concurrency // procs),
                       "ack_interval": ack_interval} for k in range(procs)]
        self.links = []
        self.processes = []
        self.pool = ThreadPoolExecutor(procs)

    async def open(self):
        ctx = multiprocessing.get_context("spawn")
        for k, spec in enumerate(self.specs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, spec, self.cpus[k % len(self.cpus)]), daemon=True)
            p.start()
            child.close()
            self.links.append(parent)
            self.processes.append(p)
        await asyncio.gather(*(self._recv(link) for link in self.links))

    async def _recv(self, link):
        # a blocking read in a thread (see _serve): answers can be megabytes
        result = await asyncio.get_running_loop().run_in_executor(self.pool, link.recv)
        if isinstance(result, Exception):
            raise result
        return result

    async def _all(self, name, *args, each=None):
        for k, link in enumerate(self.links):
            link.send((name, each[k] if each else args))
        return await asyncio.gather(*(self._recv(link) for link in self.links))

    async def login_all(self):
        """Log every user in (``concurrency`` at a time over all workers); logins/s."""
        t0 = time.monotonic()
        await self._all("login")
        return self.n / (time.monotonic() - t0)

    async def setup_rooms(self):
        await self._all("rooms")

    async def count_parked(self):
        """Users logged in (since :meth:`forget`) with their socket up."""
        return sum(await self._all("parked"))

    async def forget(self):
        await self._all("forget")

    async def cpu_seconds(self):
        """CPU seconds used so far by the workers (for a phase the parent times itself)."""
        return sum(await self._all("cpu"))

    async def message_phase(self, rate, duration, drain=15.0):
        """Send ``rate`` msgs/s in all for ``duration`` s, wait up to ``drain`` s for the
        owed deliveries, merge the workers' records. Figures as the long-poll
        generator's ``message_phase`` (milliseconds, per-second rates over send + drain)."""
        own0 = time.process_time()
        t0 = time.monotonic()
        share = rate / self.procs
        sends = await self._all("phase", share, duration)
        t_send_end = time.monotonic()
        while time.monotonic() - t_send_end < drain:
            counts = await self._all("counts")
            if sum(c[1] for c in counts) >= sum(c[0] for c in counts):
                break
            await asyncio.sleep(0.1)
        t_end = time.monotonic()
        parts = await self._all("collect")
        wall = t_end - t0
        expected = {}
        for p in parts:
            for mid, rec in p["sent"].items():
                expected[mid] = rec
        owed = sum(len(r) for r in expected.values())
        arrived = lost_found = strays = 0
        got = {}
        for p in parts:
            for mid, users in p["got"].items():
                got.setdefault(mid, set()).update(users)
        for mid, users in got.items():
            want = expected.get(mid)
            if want is None:
                strays += len(users)
                continue
            hit = len(users.intersection(want))
            lost_found += hit
            strays += len(users) - hit
            arrived += len(users)
        lat = sorted(x for p in parts for x in p["latencies"])
        gen_cpu = sum(p["cpu_s"] for p in parts) + (time.process_time() - own0)
        return {
            "rate_offered": rate,
            "sent": len(expected),
            "sends_due": sum(s["due"] for s in sends),
            "send_errors": sum(p["send_errors"] for p in parts),
            "sends_skipped": sum(p["skipped"] for p in parts),
            "delivered": lost_found,
            "delivered_per_s": lost_found / wall,
            "lost": owed - lost_found,
            "duplicates": sum(p["duplicates"] for p in parts),
            "strays": strays,
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else None,
            "seconds": wall,
            "drain_s": t_end - t_send_end,
            "send_seconds": t_send_end - t0,
            "generator_cpu_pct": 100.0 * gen_cpu / wall,
            "generator_workers": self.procs,
            "generator_worker_cpu_max_pct": max(100.0 * p["cpu_s"] / wall for p in parts),
            "generator_max_lag_ms": max(p["generator_max_lag_ms"] for p in parts),
            "generator_lags_over_50ms": sum(p["generator_lags_over_50ms"] for p in parts),
        }

    async def close(self):
        try:
            await asyncio.wait_for(self._all("stop"), 60)
        except (asyncio.TimeoutError, EOFError, RuntimeError):
            pass
        for p in self.processes:
            p.join(10)
            if p.is_alive():
                p.kill()
        self.pool.shutdown(wait=False)
