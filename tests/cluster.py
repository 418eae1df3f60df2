"""Several real ``twistd nextim`` nodes on loopback, sharing one fresh PostgreSQL schema
and one private Redis, for the cluster tests (docs/scaling.md).

Nothing here uses the Twisted reactor: like :mod:`tests.daemon`, the tests that use it
are plain synchronous pytest functions, long polls run in threads.

Usage::

    with Cluster(2) as c:                      # n1, n2 (started one after the other)
        c.admin("PUT", "/admin/users/alice", {"nick": "Alice"})   # on any node
        a = c.tab(0, "alice")                  # webim/online on n1, polls its connection.server
        b = c.tab(1, "bob")                    # on n2
        a.send("bob", "hi", via=1)             # the call goes to n2 with n1's ticket
        b.wait_for("messages", body="hi")
        c.kill9(0); c.redis.restart(); c.nodes[1].stop()

The Redis is a ``redis-server`` child on a free port with nothing kept on disk, so a
test may restart it (an empty Redis, as after a crash) without disturbing anyone else's;
every run also gets its own ``redis_prefix``. ``Cluster(nginx=True)`` puts a real nginx
running ``etc/nginx-nextim-cluster.conf`` in front of the first two nodes; then
``public_url`` is nginx's and every call goes through it.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import urllib.parse

from tests.daemon import Client, Daemon, DaemonError, PacketLog, free_port, wait_until
from tests.storefixtures import POSTGRES_DSN, _drop_schema

POLL_TIMEOUT = 15  # client-side socket timeout of one poll (hold is 3 s)


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (no persistence): start, stop, restart."""

    def __init__(self):
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="nextim-redis-")
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        """Start on the same port as before and wait until it answers PING."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def ping(self):
        try:
            return self.cli("PING") == "PONG"
        except (OSError, subprocess.SubprocessError):
            return False

    def cli(self, *args):
        """One redis-cli command; its output without the trailing newline."""
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip()

    def stop(self):
        """SIGKILL (Redis crashed: everything in it is gone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """``n`` nodes ``n1`` … on one schema and one private Redis.

    :param n: number of nodes.
    :param timers: ``[timers]`` for every node (short by default).
    :param node_timeout: ``[cluster] node_timeout`` in seconds.
    :param nginx: put a real nginx (etc/nginx-nextim-cluster.conf) in front of n1 and n2.
    :param tmp_path: a directory for nginx's files (required with ``nginx``).
    """

    def __init__(self, n=2, timers=None, node_timeout=3, nginx=False, tmp_path=None, extra=None):
        self.schema = "nextim_cluster_" + secrets.token_hex(6)
        self.prefix = "nxt" + secrets.token_hex(4)
        self.secret = secrets.token_hex(16)
        self.api_key = secrets.token_hex(16)
        self.redis = RedisServer()
        self.timers = timers or {"poll_hold": 3, "session_idle": 3, "user_grace": 2}
        self.node_timeout = node_timeout
        self.nginx = None
        self._want_nginx = nginx
        self._tmp_path = tmp_path
        self.extra = extra or {}
        self.nodes = [self._node(f"n{i + 1}") for i in range(n)]
        self.tabs = []

    def _node(self, node_id):
        d = Daemon({
            "storage": {"backend": "postgres", "dsn": POSTGRES_DSN, "schema": self.schema, "path": None},
            "auth": {"method": "token", "token_secret": self.secret},
            "admin": {"api_key": self.api_key},
            "timers": dict(self.timers),
            "cluster": {"node_id": node_id, "redis_url": self.redis.url, "redis_prefix": self.prefix,
                        "node_timeout": self.node_timeout},
            **self.extra,
        })
        d.node_id = node_id
        return d

    # -- lifecycle --
    def start(self):
        self.redis.start()
        try:
            # one after the other: the first applies the schema migrations
            for node in self.nodes:
                node.start()
            if self._want_nginx:
                from tests.test_deploy_cluster import ClusterNginx
                self.nginx = ClusterNginx(self._tmp_path, [d.port for d in self.nodes[:2]])
                # every node tells clients nginx's address (restart with the new public_url)
                for node in self.nodes:
                    node.config["server"]["public_url"] = self.nginx.url
                    node.restart()
                self.nginx.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self):
        for tab in self.tabs:
            tab.closing = True
        for node in self.nodes:
            try:
                if node.running:
                    node.stop()
            except DaemonError:
                pass
            node.cleanup()
        if self.nginx is not None:
            self.nginx.stop()
        self.redis.cleanup()
        try:
            _drop_schema(self.schema)
        except Exception:  # noqa: BLE001 - the schema may not exist if startup failed
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def kill9(self, i):
        """Crash node ``i`` (no shutdown code runs)."""
        self.nodes[i].kill9()

    # -- calls --
    def base_url(self, i):
        """Where calls to node ``i`` go: the node itself, or nginx (``i`` is then ignored)."""
        return self.nginx.url if self.nginx is not None else self.nodes[i].base_url

    def client(self, i=0, headers=None, timeout=15):
        return Client(self.base_url(i), headers=headers, timeout=timeout)

    def token(self, user_id, nick=None):
        return self.nodes[0].token(user_id, nick)

    def admin(self, method, path, json_body=None, node=0):
        """The admin API of node ``node`` (always direct: nginx keeps /admin/ to loopback,
        which the test is, but the point is to pick the node)."""
        return self.nodes[node].admin(method, path, json_body)

    def users(self, *ids, buddies=(), rooms=()):
        """Create users (nick = id titled), buddy pairs and rooms ``(room, [members])``."""
        for uid in ids:
            assert self.admin("PUT", f"/admin/users/{uid}", {"nick": uid.title()}).status == 200
        for a, b in buddies:
            assert self.admin("PUT", f"/admin/users/{a}/buddies/{b}", {}).status == 200
        for room, members in rooms:
            assert self.admin("PUT", f"/admin/rooms/{room}", {"nick": room.title()}).status == 200
            for uid in members:
                assert self.admin("PUT", f"/admin/rooms/{room}/members/{uid}").status == 200

    def tab(self, i, user_id, **params):
        """``webim/online`` for ``user_id`` on node ``i``; the tab polls its connection.server."""
        tab = ClusterTab(self, i, user_id, params).start()
        self.tabs.append(tab)
        return tab


class ClusterTab(PacketLog):
    """One browser tab of a cluster: online on one node, polling the URL that ``online``
    answered (``<public_url>/n/<node>/packets``), each call on the node of the test's
    choice (``via=``). Packets are kept in :attr:`packets` as ``(kind, packet)``; the
    loop checks that each session's ``seq`` goes 1, 2, 3 … with no gap or repeat."""

    def __init__(self, cluster, node, user_id, params=None):
        self.cluster = cluster
        self.node = node
        self.user_id = user_id
        headers = {"Authorization": "Bearer " + cluster.token(user_id, user_id.title())}
        # online straight to the chosen node (the test decides where the session lives);
        # the poll follows connection.server (nginx's /n/<id>/ path behind nginx)
        resp = cluster.nodes[node].client().post("/webim/online", dict(params or {}), headers=headers)
        assert resp.status == 200, resp
        self.online = resp.json()
        assert self.online.get("success") is True, self.online
        self.ticket = self.online["connection"]["ticket"]
        server = urllib.parse.urlsplit(self.online["connection"]["server"])
        self.poll_client = Client(f"{server.scheme}://{server.netloc}")
        self.poll_path = server.path
        self.packets = []
        self.errors = []
        self.last_seq = 0
        self.ended = None
        self.closing = False
        self.cond = threading.Condition()
        self.thread = None

    @property
    def node_id(self):
        """The node that holds this tab's session (the ticket's prefix)."""
        return self.ticket.split(".", 1)[0]

    def start(self):
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self):
        try:
            while not self.closing:
                resp = self.poll_client.get(self.poll_path, {"ticket": self.ticket, "ack": self.last_seq},
                                            timeout=POLL_TIMEOUT)
                if resp.status == 404:
                    return self._end("404")
                if resp.status != 200:
                    return self._end(f"error: {resp!r}")
                env = resp.json()
                if env.get("status") == "stopped":
                    return self._end("stopped")
                self._take(env)
        except Exception as e:  # noqa: BLE001 - reported by check()
            self._end(f"error: {e!r}")

    def _take(self, env):
        with self.cond:
            got = sorted(((p.get("seq"), kind, p) for kind in ("messages", "presences", "statuses")
                          for p in env.get(kind, [])), key=lambda t: t[0] or 0)
            for seq, kind, packet in got:
                if seq != self.last_seq + 1:
                    self.errors.append(f"seq {seq} after {self.last_seq}: {packet!r}")
                self.last_seq = seq if isinstance(seq, int) else self.last_seq
                self.packets.append((kind, packet))
            self.cond.notify_all()

    def _end(self, reason):
        with self.cond:
            self.ended = reason
            self.cond.notify_all()

    # -- calls with this tab's ticket --
    def call(self, name, via=None, **params):
        """POST ``webim/<name>`` with this tab's ticket to node ``via`` (default: its own)."""
        node = self.node if via is None else via
        headers = {"Authorization": "Bearer " + self.cluster.token(self.user_id)}
        return self.cluster.client(node).post("/webim/" + name, dict(params, ticket=self.ticket),
                                              headers=headers)

    def send(self, to, body, type_="unicast", via=None):
        resp = self.call("message", via=via, type=type_, to=to, body=body)
        assert resp.status == 200 and resp.body == b"ok", resp
        return resp

    def close(self, via=None):
        self.closing = True
        if self.ended is None:
            self.call("offline", via=via)

