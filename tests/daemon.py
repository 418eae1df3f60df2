"""A real ``twistd -n nextim`` process for end-to-end tests, and a small blocking
HTTP client to drive it.

Nothing here uses the Twisted reactor: the tests that use it are plain synchronous
pytest functions; long polls run in threads.

Usage::

    d = Daemon()                     # or Daemon({"storage": {"backend": "postgres", "dsn": ...}})
    d.start()
    c = d.client()
    r = c.post("/webim/online", {}, headers={"Authorization": "Bearer " + d.token("alice", "Alice")})
    r.status, r.headers["content-type"], r.json()
    d.admin("PUT", "/admin/users/bob", {"nick": "Bob"})
    d.stop()                          # SIGTERM and wait; d.kill9(); d.restart()

``Daemon`` is also a context manager (``start`` on enter, ``stop`` + cleanup on exit).
"""
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import jwt
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, RejectData, Request, TextMessage

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DaemonError(AssertionError):
    """The daemon did not start or stop as expected; the message carries its log."""


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd_command():
    """argv prefix that runs twistd with this Python."""
    exe = shutil.which("twistd")
    if exe:
        return [exe]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


# -- TOML ------------------------------------------------------------------------

def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config):
    """``{section: {key: value}}`` as TOML text (flat sections only)."""
    lines = []
    for section, keys in config.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


# -- HTTP ------------------------------------------------------------------------

class Response:
    """A finished HTTP answer: ``status``, ``headers`` (lower-case names), ``body`` (bytes)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8")

    @property
    def content_type(self):
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self):
        """The body parsed as JSON (raises with the body shown if it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"not JSON (status {self.status}): {self.body[:500]!r}") from None

    def jsonp(self, callback):
        """The JSON inside a JSONP body ``/**/<callback>(<json>);`` (docs/design.md#d1-plain-and-jsonp)."""
        text = self.text
        prefix, suffix = f"/**/{callback}(", ");"
        if not (text.startswith(prefix) and text.endswith(suffix)):
            raise AssertionError(f"not a JSONP body for {callback}: {text[:500]!r}")
        return json.loads(text[len(prefix):-len(suffix)])

    def __repr__(self):
        return f"<Response {self.status} {self.content_type} {self.body[:300]!r}>"


class Client:
    """Blocking HTTP client (stdlib ``http.client``), one connection per request, so
    one instance may be shared by threads.

    :param base_url: ``http://127.0.0.1:PORT``.
    :param headers: headers sent with every request (e.g. ``Authorization``).
    """

    def __init__(self, base_url, headers=None, timeout=15):
        parts = urllib.parse.urlsplit(base_url)
        self.host = parts.hostname
        self.port = parts.port
        self.headers = dict(headers or {})
        self.timeout = timeout

    def request(self, method, path, params=None, data=None, body=None, headers=None, timeout=None):
        """Send one request.

        :param params: query parameters (dict).
        :param data: form fields (dict), sent url-encoded in the body.
        :param body: raw body (bytes or str); ``data`` wins if both are given.
        :returns: :class:`Response`.
        """
        if params:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(params)
        all_headers = dict(self.headers)
        if data is not None:
            body = urllib.parse.urlencode(data)
            all_headers["Content-Type"] = "application/x-www-form-urlencoded; charset=UTF-8"
        if isinstance(body, str):
            body = body.encode("utf-8")
        all_headers.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            payload = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
        finally:
            conn.close()

    def get(self, path, params=None, **kw):
        return self.request("GET", path, params=params, **kw)

    def post(self, path, data=None, **kw):
        return self.request("POST", path, data=data if data is not None else {}, **kw)


# -- the process -----------------------------------------------------------------

def default_config(port):
    return {
        "server": {"listen": f"tcp:{port}:interface=127.0.0.1",
                   "public_url": f"http://127.0.0.1:{port}",
                   "domain": "test.local"},
        "storage": {"backend": "sqlite", "path": "nextim.sqlite"},
        "auth": {"method": "token", "token_secret": secrets.token_hex(16)},
        "admin": {"api_key": secrets.token_hex(16)},
        "timers": {"poll_hold": 3, "session_idle": 3, "user_grace": 2},
    }


class Daemon:
    """One ``twistd -n --pidfile= nextim`` child process in its own temp dir.

    :param overrides: ``{section: {key: value}}`` merged into the default config
        (a value of ``None`` removes the key), e.g. postgres storage.
    :param startup_timeout: seconds to wait for ``GET /webim/online`` to answer.
    """

    def __init__(self, overrides=None, startup_timeout=20, workdir=None):
        self.port = free_port()
        self.config = default_config(self.port)
        for section, keys in (overrides or {}).items():
            self.config.setdefault(section, {}).update(keys)
        self.startup_timeout = startup_timeout
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="nextim-e2e-")
        self.config_path = os.path.join(self.dir, "cfg.toml")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.proc = None
        self._log = None
        self.starts = 0

    # -- config and credentials --
    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_url(self):
        return self.config["server"]["public_url"].rstrip("/")

    @property
    def secret(self):
        return self.config["auth"]["token_secret"]

    @property
    def api_key(self):
        return self.config["admin"]["api_key"]

    def url(self, path="/"):
        """Absolute URL of ``path`` on this daemon."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def token(self, user_id, nick=None, ttl=3600, **claims):
        """An HS256 site token (docs/design.md#d13-identity) for ``user_id``; extra claims as keyword arguments."""
        payload = {"sub": user_id, "exp": int(time.time()) + ttl}
        if nick is not None:
            payload["nick"] = nick
        payload.update(claims)
        return jwt.encode(payload, self.secret, algorithm="HS256")

    def client(self, headers=None, timeout=15):
        """A :class:`Client` for this daemon."""
        return Client(self.base_url, headers=headers, timeout=timeout)

    def admin(self, method, path, json_body=None, key=None):
        """Call the admin API with the bearer API key. :returns: :class:`Response`."""
        body = json.dumps(json_body) if json_body is not None else None
        headers = {"Authorization": f"Bearer {key if key is not None else self.api_key}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self.client().request(method, path, body=body, headers=headers)

    def log_text(self):
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _fail(self, what):
        raise DaemonError(f"{what}\n--- daemon log ({self.log_path}) ---\n{self.log_text()[-8000:]}")

    # -- lifecycle --
    def command(self):
        return twistd_command() + ["-n", "--pidfile=", "nextim", "--config", self.config_path,
                                   "--listen", self.config["server"]["listen"]]

    def start(self):
        """Write the config, start the process and wait until it answers HTTP."""
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonError("already running")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(to_toml(self.config))
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")
        self._log.write(f"=== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.command(), cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + self.startup_timeout
        probe = self.client(timeout=2)
        while True:
            if self.proc.poll() is not None:
                self._fail(f"nextim exited with status {self.proc.returncode} during startup")
            try:
                probe.get("/webim/online")
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill9()
                self._fail(f"nextim did not answer on {self.base_url} within {self.startup_timeout} s")
            time.sleep(0.05)

    def stop(self, timeout=10):
        """SIGTERM and wait for the exit. :returns: the exit status (None if not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                self._fail(f"nextim did not exit within {timeout} s of SIGTERM")
        return self._reap()

    def kill9(self):
        """SIGKILL and wait (a crash: no shutdown code runs)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        return self._reap()

    def _reap(self):
        code = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def restart(self):
        """Stop (SIGTERM) if running, then start again on the same port and directory."""
        self.stop()
        return self.start()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self):
        """Kill if still running and remove the temp dir (only if this object made it)."""
        self.kill9()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            if self.running:
                self.stop()
        finally:
            self.cleanup()


def wait_until(predicate, timeout=10, what="condition", interval=0.05):
    """Call ``predicate`` until it returns something truthy (returned) or ``timeout``
    seconds pass (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class PacketLog:
    """What a test tab received, and waiting for it: a mixin for the tab classes of the
    real-daemon tests. The tab sets ``user_id``, ``cond`` (a ``threading.Condition``),
    ``packets`` (``[(kind, packet)]``, appended under ``cond``), ``ended`` (None while its
    poll loop runs) and ``errors``."""

    WAIT = 8  # seconds: default deadline for "this packet arrives"

    # -- looking at what arrived --
    def mark(self):
        with self.cond:
            return len(self.packets)

    def find(self, kind=None, since=0, **fields):
        with self.cond:
            return [p for k, p in self.packets[since:]
                    if (kind is None or k == kind) and all(p.get(f.rstrip("_")) == v for f, v in fields.items())]

    def wait_for(self, kind, since=0, timeout=None, **fields):
        """The first packet of ``kind`` after index ``since`` whose fields match
        (``from_=`` for ``from``); fails after ``timeout`` seconds."""
        timeout = self.WAIT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = self.find(kind, since, **fields)
                if found:
                    return found[0]
                if self.ended is not None:
                    raise AssertionError(f"{self.user_id}'s tab ended ({self.ended}) while waiting for "
                                         f"{kind} {fields}; got {self.packets[since:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.user_id}'s tab: no {kind} {fields} within {timeout} s; "
                                         f"got {self.packets[since:]}")
                self.cond.wait(left)

    def wait_ended(self, timeout=None):
        timeout = self.WAIT if timeout is None else timeout
        with self.cond:
            if not self.cond.wait_for(lambda: self.ended is not None, timeout):
                raise AssertionError(f"{self.user_id}'s poll loop did not end within {timeout} s")
            return self.ended

    def check(self):
        assert not self.errors, f"{self.user_id}'s tab: {self.errors}"


# -- a WebSocket tab ---------------------------------------------------------------

class SocketRejected(AssertionError):
    """The WebSocket handshake was answered with an HTTP ``status`` (``body`` bytes)."""

    def __init__(self, status, body):
        super().__init__(f"handshake refused: {status} {body[:300]!r}")
        self.status, self.body = status, body


class SocketTab(PacketLog):
    """One tab on the WebSocket transport (docs/protocol.md#websocket-transport), blocking,
    with a reader thread: wsproto over a plain socket.

    It subscribes with ``ticket``, keeps every packet in :attr:`packets` (checking that
    ``seq`` runs 1, 2, 3 … without a gap or repeat), answers pings, acks each envelope
    when ``ack`` is true, and :meth:`call` sends a call frame and waits for its reply.
    :attr:`ended` becomes ``"closed <code>"`` when the server closes.

    :param base_url: ``http://host:port`` to connect to (a daemon or nginx).
    :param path: the socket path (``/ws``, ``/n/<node_id>/ws``).
    :param subscribe: False to send no subscribe frame (a stand-in server's socket);
        every text frame is kept in :attr:`frames` either way.
    :raises SocketRejected: the handshake was refused.
    """

    def __init__(self, base_url, path, ticket, user_id, ack=True, headers=(), domain="test.local", subscribe=True):
        parts = urllib.parse.urlsplit(base_url)
        self.user_id, self.ticket, self.ack = user_id, ticket, ack
        self.cond = threading.Condition()
        self.packets, self.errors, self.replies, self.frames = [], [], {}, []
        self.ended = None
        self.close_code = None
        self.last_seq = 0
        self._ids = 0
        self._lock = threading.Lock()
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
        self._write(Request(host=parts.netloc, target=path, extra_headers=list(headers)))
        self._handshake()
        self.sock.settimeout(None)
        self.subscribed = subscribe
        if subscribe:
            self._write(TextMessage(f"subscribe {domain} {ticket}" + (" 0" if ack else "")))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _write(self, event):
        with self._lock:
            if self.ws.state in (ConnectionState.CONNECTING, ConnectionState.OPEN):
                self.sock.sendall(self.ws.send(event))

    def _handshake(self):
        status, body = None, b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise SocketRejected(status or 0, body)
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise SocketRejected(status, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise SocketRejected(status, body)

    def _read(self):
        text = ""
        try:
            with self._lock:
                events = list(self.ws.events())  # what came with the handshake's answer
            while True:
                for event in events:
                    if isinstance(event, TextMessage):
                        text += event.data
                        if event.message_finished:
                            self._frame(json.loads(text))
                            text = ""
                    elif isinstance(event, Ping):
                        self._write(event.response())
                    elif isinstance(event, CloseConnection):
                        self.close_code = event.code
                        with self._lock:
                            if self.ws.state is not ConnectionState.CLOSED:
                                self.sock.sendall(self.ws.send(event.response()))
                        return self._end(f"closed {event.code}")
                data = self.sock.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.ws.receive_data(data)
                    events = list(self.ws.events())
        except OSError as e:
            return self._end(f"error: {e!r}")
        self._end("dropped")

    def _frame(self, frame):
        with self.cond:
            self.frames.append(frame)
            if not self.subscribed:
                pass
            elif "reply" in frame:
                self.replies[frame["reply"]] = frame
            else:
                got = sorted(((p.get("seq"), kind, p) for kind in ("messages", "presences", "statuses")
                              for p in frame.get(kind, [])), key=lambda t: t[0] or 0)
                for seq, kind, packet in got:
                    if seq != self.last_seq + 1:
                        self.errors.append(f"seq {seq} after {self.last_seq}: {packet!r}")
                    self.last_seq = seq
                    self.packets.append((kind, packet))
                if frame.get("seq") != self.last_seq:
                    self.errors.append(f"envelope seq {frame.get('seq')} but last packet seq {self.last_seq}")
            self.cond.notify_all()
        if self.subscribed and self.ack and "reply" not in frame and frame.get("seq"):
            self._write(TextMessage(f"ack {frame['seq']}"))

    def _end(self, reason):
        with self.cond:
            if self.ended is None:
                self.ended = reason
            self.cond.notify_all()
        try:
            self.sock.close()
        except OSError:
            pass

    # -- the test's side --
    def call(self, name, timeout=None, **params):
        """Send a call frame and wait for its reply (the reply dict)."""
        with self.cond:
            self._ids += 1
            call_id = self._ids
        self._write(TextMessage(json.dumps({"id": call_id, "call": name, "params": params})))
        timeout = self.WAIT if timeout is None else timeout
        with self.cond:
            if not self.cond.wait_for(lambda: call_id in self.replies or self.ended is not None, timeout):
                raise AssertionError(f"{self.user_id}: no reply to {name} within {timeout} s")
            if call_id not in self.replies:
                raise AssertionError(f"{self.user_id}: socket ended ({self.ended}) before the reply to {name}")
            return self.replies.pop(call_id)

    def send(self, to, body, type_="unicast", **extra):
        """A ``message`` call that must succeed."""
        reply = self.call("message", type=type_, to=to, body=body, **extra)
        assert reply.get("result") == "ok", reply

    def close(self):
        """Close the socket (1000) and wait for the server's close."""
        if self.ended is None:
            self._write(CloseConnection(1000))
            self.wait_ended()
