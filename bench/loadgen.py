"""Load generator: N simulated web users on asyncio + aiohttp, speaking either the
NextIM protocol (``webim/online`` with a JWT, ``/packets`` long poll with ``ack``,
``webim/message``) or BOSH (XEP-0124/0206: session creation, SASL PLAIN, restart,
bind, session, presence, MUC join, messages; two requests at most, one held, as
Strophe.js does in a browser).

Scenario for each user ``u<i>`` of ``n``: log in, keep a poll parked, and (in the
message phase) send messages at a total rate R: a fraction to a buddy (``u<i±1>``)
and the rest to the user's room (``r<i//10>``, ten users). Every message body is
``MSG:<id>:``; the generator knows who must receive each id, so it measures the
delivery latency (send → arrival on the recipient's poll), losses, duplicates and
strays. Pure measurement code: nothing here is imported by the daemon.
"""
import asyncio
import base64
import gc
import random
import re
import time

import aiohttp
import jwt
import orjson

from servers import DOMAIN, ROOM_SIZE, TOKEN_SECRET, room_of

MSG_RE = re.compile(r"MSG:(\d+):")
MUC = f"conference.{DOMAIN}"


class Stats:
    """Expected deliveries and what actually arrived.

    ``expect(mid, sender, recipients)`` registers a message just before it is sent;
    ``got(mid, user)`` records an arrival. Latencies are in milliseconds.
    """

    def __init__(self):
        self.pending = {}     # mid -> set of recipients still waiting
        self.done = {}        # mid -> set of recipients that got it
        self.sender = {}
        self.sent_at = {}
        self.latencies = []
        self.delivered = 0
        self.duplicates = 0
        self.strays = 0
        self.sent = 0
        self.send_errors = 0
        self.recording = True
        self.next_mid = 1

    def new_mid(self):
        mid = self.next_mid
        self.next_mid += 1
        return mid

    def expect(self, mid, sender, recipients):
        self.sender[mid] = sender
        self.pending[mid] = set(recipients)
        self.done[mid] = set()
        self.sent_at[mid] = time.monotonic()
        self.sent += 1

    def failed(self, mid):
        """The send was refused: nothing is owed for it."""
        self.send_errors += 1
        self.sent -= 1
        self.pending.pop(mid, None)

    def got(self, mid, user):
        if self.sender.get(mid) == user:
            return  # MUC echo to the sender, or a bounce
        pending = self.pending.get(mid)
        if pending is not None and user in pending:
            pending.discard(user)
            self.done[mid].add(user)
            if not pending:
                del self.pending[mid]
            self.delivered += 1
            if self.recording:
                self.latencies.append((time.monotonic() - self.sent_at[mid]) * 1000.0)
        elif mid in self.done and user in self.done[mid]:
            self.duplicates += 1
        else:
            self.strays += 1

    def owed(self):
        return sum(len(p) for p in self.pending.values())


class PauseMeter:
    """This process's own stalls, so a latency tail can be told apart from the
    generator's: the event loop's lateness (a 10 ms ticker) and the cyclic GC's
    collections (``gc.callbacks``). All figures in milliseconds."""

    TICK_S = 0.010

    def __init__(self):
        self.max_lag = 0.0
        self.lags_over_50 = 0
        self.gc_max = 0.0
        self.gc_total = 0.0
        self._gc_t0 = None
        self._task = None

    def _on_gc(self, phase, info):
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0 is not None:
            ms = (time.perf_counter() - self._gc_t0) * 1000.0
            self.gc_total += ms
            self.gc_max = max(self.gc_max, ms)

    async def _tick(self):
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            lag = (time.monotonic() - t - self.TICK_S) * 1000.0
            self.max_lag = max(self.max_lag, lag)
            if lag > 50:
                self.lags_over_50 += 1

    def start(self):
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.ensure_future(self._tick())
        return self

    def stop(self):
        gc.callbacks.remove(self._on_gc)
        self._task.cancel()
        return {"generator_max_lag_ms": self.max_lag, "generator_lags_over_50ms": self.lags_over_50,
                "generator_gc_max_ms": self.gc_max, "generator_gc_total_ms": self.gc_total}


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


class Generator:
    """Owns the HTTP client, the users and the stats of one run against one server."""

    def __init__(self, server, n, room_fraction=0.5, concurrency=200, reconnect_spread=0.0):
        self.server = server
        self.n = n
        self.room_fraction = room_fraction
        self.concurrency = concurrency
        #: seconds over which users whose session is gone (404) spread their new
        #: ``online``, as the shipped client does (app.js RECONNECT_SPREAD_MS); 0: at once
        self.reconnect_spread = reconnect_spread
        self.stats = Stats()
        self.http = None
        cls = NextimUser if server.protocol == "nextim" else BoshUser
        self.users = [cls(self, i) for i in range(n)]
        self.running = True
        #: seconds each successful ``online`` request took (nextim), since the last
        #: :meth:`forget_sessions`: the recovery phase's worst online latency
        self.online_times = []

    async def open(self):
        conn = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=90, ttl_dns_cache=None)
        self.http = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120),
                                          skip_auto_headers=("User-Agent",))

    async def close(self):
        self.running = False
        for u in self.users:
            u.stop()
        await asyncio.sleep(0.2)
        await self.http.close()

    def room_members(self, room):
        lo = room * ROOM_SIZE
        return range(lo, min(lo + ROOM_SIZE, self.n))

    async def login_all(self):
        """Log every user in (``concurrency`` at a time); returns logins per second."""
        sem = asyncio.Semaphore(self.concurrency)

        async def one(u):
            async with sem:
                await u.login()
        t0 = time.monotonic()
        await asyncio.gather(*(one(u) for u in self.users))
        return self.n / (time.monotonic() - t0)

    async def setup_rooms(self):
        """XMPP only: join every user to their MUC room (owner first); nextim users
        are joined to their directory rooms by ``online`` itself."""
        if self.server.protocol != "bosh":
            return
        sem = asyncio.Semaphore(self.concurrency)

        async def one(u):
            async with sem:
                await u.join_room()
        owners = [u for u in self.users if u.i % ROOM_SIZE == 0]
        others = [u for u in self.users if u.i % ROOM_SIZE != 0]
        await asyncio.gather(*(one(u) for u in owners))
        await asyncio.gather(*(one(u) for u in others))

    def pick(self, i):
        """A message from user ``i``: ``(kind, target, recipients)``."""
        room = room_of(i)
        members = self.room_members(room)
        if self.n > 1 and (random.random() >= self.room_fraction or len(members) < 2):
            j = (i + random.choice((1, -1))) % self.n
            return "unicast", j, (j,)
        return "multicast", room, tuple(m for m in members if m != i)

    async def message_phase(self, rate, duration, drain=15.0):
        """Send ``rate`` msgs/s for ``duration`` s, then wait up to ``drain`` s for
        every owed delivery. Returns a dict of figures for this phase."""
        st = self.stats
        st.latencies = []
        d0, sent0, err0 = st.delivered, st.sent, st.send_errors
        dup0, stray0 = st.duplicates, st.strays
        # The generator holds ~10 000 users' aiohttp objects: a full collection of its
        # own took up to 1 s and showed up as delivery latency. No cyclic GC while a
        # phase is measured; one collection after it, outside the measurement.
        gc.collect()
        gc.disable()
        pauses = PauseMeter().start()
        cpu0 = time.process_time()
        t0 = time.monotonic()
        tick = 0.01
        carry = 0.0
        next_t = t0
        while True:
            now = time.monotonic()
            if now - t0 >= duration:
                break
            carry += rate * tick
            k, carry = int(carry), carry - int(carry)
            for _ in range(k):
                u = self.users[random.randrange(self.n)]
                u.send_message(*self.pick(u.i))
            next_t += tick
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        t_send_end = time.monotonic()
        while st.owed() and time.monotonic() - t_send_end < drain:
            await asyncio.sleep(0.05)
        t_end = time.monotonic()
        own_pauses = pauses.stop()
        gc.enable()
        lat = sorted(st.latencies)
        cpu = time.process_time() - cpu0
        wall = t_end - t0
        return {
            "rate_offered": rate,
            "sent": st.sent - sent0,
            "send_errors": st.send_errors - err0,
            "delivered": st.delivered - d0,
            "delivered_per_s": (st.delivered - d0) / wall,
            "lost": st.owed(),
            "duplicates": st.duplicates - dup0,
            "strays": st.strays - stray0,
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else None,
            "seconds": wall,
            "drain_s": t_end - t_send_end,
            "generator_cpu_pct": 100.0 * cpu / wall,
            **own_pauses,
        }

    def all_parked(self):
        """Users logged in (since :meth:`forget_sessions`, if called) with a poll out."""
        return sum(1 for u in self.users if u.ready and u.inflight > 0 and u.logins > u.mark)

    def forget_sessions(self):
        """Before a restart: from now on only a new login counts as recovered."""
        for u in self.users:
            u.mark = u.logins
        self.online_times = []

    async def count_parked(self):
        """:meth:`all_parked` as bench/wsload.py's ``WsFleet`` answers it (awaitable)."""
        return self.all_parked()

    async def forget(self):
        """:meth:`forget_sessions`, awaitable like ``WsFleet.forget``."""
        self.forget_sessions()


# ---------------------------------------------------------------------------- nextim
class NextimUser:
    """One browser tab of the NextIM web client."""

    def __init__(self, gen, i):
        self.gen = gen
        self.i = i
        self.name = f"u{i}"
        self.token = jwt.encode({"sub": self.name, "nick": f"User {i}"}, TOKEN_SECRET, algorithm="HS256")
        self.ticket = None
        self.seq = None
        self.ready = False
        self.inflight = 0
        self.task = None
        self.logins = 0
        self.mark = -1
        self.base = gen.server.base

    async def login(self):
        """``webim/online`` until it works (a browser retries with a delay)."""
        while self.gen.running:
            started = time.monotonic()
            try:
                async with self.gen.http.post(self.base + "/webim/online",
                                              headers={"Authorization": "Bearer " + self.token},
                                              data={"show": "available"}) as r:
                    body = await r.read()
                    if r.status == 200:
                        self.gen.online_times.append(time.monotonic() - started)
                        answer = orjson.loads(body)
                        self.ticket = answer["connection"]["ticket"]
                        self.seq = None
                        self.ready = True
                        self.logins += 1
                        if self.task is None or self.task.done():
                            self.task = asyncio.ensure_future(self.poll_loop())
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(0.5 + random.random())

    async def poll_loop(self):
        http, url = self.gen.http, self.base + "/packets"
        stats = self.gen.stats
        while self.gen.running:
            params = {"ticket": self.ticket}
            if self.seq is not None:
                params["ack"] = str(self.seq)
            self.inflight += 1
            try:
                async with http.get(url, params=params) as r:
                    body = await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                status = None
            finally:
                self.inflight -= 1
            if not self.gen.running:
                return
            if status == 200:
                env = orjson.loads(body)
                if env.get("status") == "stopped":
                    return
                for m in env.get("messages", ()):
                    hit = MSG_RE.match(m.get("body", ""))
                    if hit:
                        stats.got(int(hit.group(1)), self.i)
                self.seq = env.get("seq", self.seq)
            elif status == 404 or (status is not None and status >= 400):
                self.ready = False
                await self.login_again()
            else:
                self.ready = False
                await asyncio.sleep(0.5 + random.random())
                # the server may have lost the ticket (restart): the next poll says 404

    async def login_again(self):
        self.task = asyncio.current_task()
        if self.gen.reconnect_spread:
            await asyncio.sleep(random.random() * self.gen.reconnect_spread)
        await self.login()

    def send_message(self, kind, target, recipients):
        asyncio.ensure_future(self._send(kind, target, recipients))

    async def _send(self, kind, target, recipients):
        st = self.gen.stats
        mid = st.new_mid()
        to = f"u{target}" if kind == "unicast" else f"r{target}"
        st.expect(mid, self.i, recipients)
        try:
            async with self.gen.http.post(self.base + "/webim/message",
                                          data={"ticket": self.ticket, "type": kind, "to": to,
                                                "body": f"MSG:{mid}:"}) as r:
                await r.read()
                ok = r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        if not ok:
            st.failed(mid)

    def stop(self):
        if self.task is not None:
            self.task.cancel()


# ---------------------------------------------------------------------------- BOSH
BOSH_NS = "http://jabber.org/protocol/httpbind"


class BoshTerminated(Exception):
    pass


class BoshUser:
    """One browser tab of a BOSH client (Strophe.js behaviour: hold=1, at most two
    requests out, outgoing stanzas ride on the next request)."""

    def __init__(self, gen, i):
        self.gen = gen
        self.i = i
        self.name = f"u{i}"
        self.jid = f"u{i}@{DOMAIN}"
        self.url = gen.server.bosh_url
        self.sid = None
        self.rid = 0
        self.outq = []
        self.inflight = 0
        self.ready = False
        self.waiters = []   # (regex, future)
        self.logins = 0
        self.mark = -1
        self.task = None
        self.dead = False
        self.epoch = 0   # bumped at each login: answers to an older session are ignored

    def _body(self, payload, **attrs):
        extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
        self.rid += 1
        sid = f" sid='{self.sid}'" if self.sid else ""
        return f"<body rid='{self.rid}'{sid} xmlns='{BOSH_NS}'{extra}>{payload}</body>"

    async def _post(self, data):
        async with self.gen.http.post(self.url, data=data.encode(),
                                      headers={"Content-Type": "text/xml; charset=utf-8"}) as r:
            text = await r.text()
            if r.status != 200:
                raise BoshTerminated(f"HTTP {r.status}")
        if "type='terminate'" in text or 'type="terminate"' in text:
            raise BoshTerminated("terminate")
        return text

    async def _step(self, payload, want, **attrs):
        """Send ``payload``; poll with empty requests until ``want`` appears."""
        text = await self._post(self._body(payload, **attrs))
        acc = text
        for _ in range(20):
            if want in acc:
                return acc
            acc += await self._post(self._body(""))
        raise BoshTerminated(f"no {want!r} in login answers")

    async def login(self):
        while self.gen.running:
            try:
                await self._login_once()
                return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, BoshTerminated):
                self.sid = None
                await asyncio.sleep(0.5 + random.random())

    async def _login_once(self):
        self.sid = None
        self.epoch += 1
        self.rid = random.randint(1 << 20, 1 << 30)
        self.inflight = 0
        self.outq = []
        create = self._body("", to=DOMAIN, content="text/xml; charset=utf-8", hold="1", wait="25",
                            ver="1.6", **{"xml:lang": "en", "xmpp:version": "1.0",
                                          "xmlns:xmpp": "urn:xmpp:xbosh"})
        text = await self._post(create)
        m = re.search(r"sid=['\"]([^'\"]+)", text)
        if not m:
            raise BoshTerminated("no sid")
        self.sid = m.group(1)
        for _ in range(20):
            if "PLAIN" in text:
                break
            text += await self._post(self._body(""))
        cred = base64.b64encode(f"\0{self.name}\0pw{self.i}".encode()).decode()
        await self._step(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>",
                         "<success")
        feats = await self._step("", "urn:ietf:params:xml:ns:xmpp-bind", to=DOMAIN,
                                 **{"xml:lang": "en", "xmpp:restart": "true",
                                    "xmlns:xmpp": "urn:xmpp:xbosh"})
        await self._step("<iq type='set' id='bind1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:"
                         "xmpp-bind'><resource>web</resource></bind></iq>", "</jid>")
        if "urn:ietf:params:xml:ns:xmpp-session" in feats and "<optional" not in feats:
            await self._step("<iq type='set' id='sess1' xmlns='jabber:client'><session xmlns='urn:ietf:"
                             "params:xml:ns:xmpp-session'/></iq>", "sess1")
        self.logins += 1
        self.ready = True
        self.outq.append("<presence xmlns='jabber:client'/>")
        self._pump()

    def _pump(self):
        """Keep one request parked; send queued stanzas on a second one (hold=1)."""
        if self.sid is None or self.dead:
            return
        while self.inflight == 0 or (self.outq and self.inflight < 2):
            payload, self.outq = "".join(self.outq), []
            self.inflight += 1
            asyncio.ensure_future(self._request(self._body(payload), self.epoch))

    async def _request(self, data, epoch):
        try:
            text = await self._post(data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, BoshTerminated):
            if epoch != self.epoch:
                return
            self.inflight -= 1
            if self.ready and self.gen.running:
                self.ready = False
                self.sid = None
                await asyncio.sleep(0.5 + random.random())
                await self.login()
            return
        if epoch != self.epoch:
            self._handle(text)
            return
        self.inflight -= 1
        self._handle(text)
        if self.gen.running:
            self._pump()

    def _handle(self, text):
        if "MSG:" in text:
            for mid in MSG_RE.findall(text):
                self.gen.stats.got(int(mid), self.i)
        if self.waiters:
            for w in list(self.waiters):
                if w[0].search(text) and not w[1].done():
                    w[1].set_result(text)
                    self.waiters.remove(w)

    def wait_for(self, needle):
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((re.compile(needle), fut))
        return fut

    async def join_room(self):
        room = f"r{room_of(self.i)}@{MUC}"
        fut = self.wait_for("code=.110.")
        self.outq.append(f"<presence xmlns='jabber:client' to='{room}/{self.name}'>"
                         "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        self._pump()
        text = await asyncio.wait_for(fut, 60)
        if re.search("code=.201.", text):
            done = self.wait_for("id=.cfg1.")
            self.outq.append(f"<iq xmlns='jabber:client' type='set' id='cfg1' to='{room}'><query "
                             "xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' "
                             "type='submit'/></query></iq>")
            self._pump()
            try:
                await asyncio.wait_for(done, 60)
            except asyncio.TimeoutError:
                pass  # the room exists and we are in it; an unlocked room works anyway

    def send_message(self, kind, target, recipients):
        st = self.gen.stats
        mid = st.new_mid()
        if kind == "unicast":
            stanza = (f"<message xmlns='jabber:client' type='chat' to='u{target}@{DOMAIN}'>"
                      f"<body>MSG:{mid}:</body></message>")
        else:
            stanza = (f"<message xmlns='jabber:client' type='groupchat' to='r{target}@{MUC}'>"
                      f"<body>MSG:{mid}:</body></message>")
        st.expect(mid, self.i, recipients)
        self.outq.append(stanza)
        self._pump()

    def stop(self):
        self.dead = True
