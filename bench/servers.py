"""The three servers the benchmark compares, each started on 127.0.0.1 with its own
config written under ``bench/work/<name>/`` and pinned to one CPU with ``taskset``.

- :class:`Nextim`: ``twistd -n nextim`` (this project), token auth, SQLite; it serves
  the long poll and ``/ws`` (docs/design.md#d21-websocket) on the same port.
- :class:`Prosody`: Debian ``prosody`` with mod_bosh, mod_websocket (RFC 7395) and a MUC
  component, run as the ``prosody`` user (it refuses root), accounts in
  ``internal_plain`` files.
- :class:`Ejabberd`: Debian ``ejabberd`` with mod_bosh, ``ejabberd_http_ws`` on ``/ws``
  and mod_muc, its own Erlang node name, spool and logs; accounts registered through
  mod_http_api.

Each server is there twice in :data:`SERVERS`: under its own name the load generator
speaks the long-poll protocol (nextim's ``/packets``, BOSH), under ``<name>-ws`` it
speaks WebSocket (nextim's ``/ws`` contract, XMPP over WebSocket). Both variants of
one server share its work directory (so ejabberd's registered users are kept).

Every server exposes ``start()``, ``stop()``, ``pid`` (the process whose CPU and RSS
are measured), ``seed(n)`` (make sure users ``u0`` … ``u{n-1}`` exist with password
``pw<i>`` and, for nextim, the directory buddies and rooms) and the URLs the load
generator talks to. Nothing here is imported by the daemon.
"""
import base64
import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
HOST = "127.0.0.1"
DOMAIN = "localhost"
ROOM_SIZE = 10
TOKEN_SECRET = "bench-token-secret-0123456789abcdef"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"


def room_of(i):
    """Room index of user ``i`` (rooms of :data:`ROOM_SIZE` consecutive users)."""
    return i // ROOM_SIZE


def wait_port(port, timeout=60.0):
    """Block until something accepts on 127.0.0.1:``port``; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def port_free(port):
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return False
    except OSError:
        return True


def proc_cpu_seconds(pid):
    """utime + stime of ``pid`` in seconds (from /proc), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return None


def raise_fd_limit():
    """Tens of thousands of users need more than the default 1024 descriptors on both sides; the
    servers inherit this limit from us. Root may raise the hard
    limit too (up to fs.nr_open); anyone else gets the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_rss_kb(pid):
    """Resident set size of ``pid`` in KB (VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Server:
    """Common plumbing: work dir, the pinned process, stop by pid."""

    name = "?"        #: key in results.json and the docs' tables
    protocol = "?"    #: what the load generator speaks: nextim, bosh, nextim-ws, xmpp-ws
    dirname = None    #: work directory under bench/work/ (default: ``name``)

    def __init__(self, cpu="0", port_base=0):
        self.cpu = cpu
        self.dir = os.path.join(WORK, self.dirname or self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.pid = None
        self.seeded = 0

    def _log(self, name):
        return open(os.path.join(self.dir, name), "ab")

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        self.pid = None

    def restart(self):
        """Stop, then start again (same data); returns seconds the server was down."""
        t0 = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - t0


class Nextim(Server):
    """This project's daemon, ``twistd -n nextim`` on SQLite (synchronous NORMAL, WAL)."""

    name = "nextim"
    protocol = "nextim"

    def __init__(self, cpu="0", port=18000, synchronous="NORMAL"):
        super().__init__(cpu)
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.db = os.path.join(self.dir, "nextim.sqlite")
        self.config = os.path.join(self.dir, "nextim.toml")
        with open(self.config, "w") as f:
            f.write(f"""# written by bench/servers.py
[server]
listen = "tcp:{port}:interface={HOST}:backlog=4096"
public_url = "{self.base}"
[storage]
backend = "sqlite"
path = "{self.db}"
synchronous = "{synchronous}"
[auth]
method = "token"
token_secret = "{TOKEN_SECRET}"
[admin]
api_key = "{ADMIN_KEY}"
[limits]
messages_per_minute = 100000
presences_per_minute = 100000
""")

    def start(self):
        assert port_free(self.port), f"port {self.port} is taken"
        cmd = ["taskset", "-c", self.cpu, sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=",
               "--logfile", os.path.join(self.dir, "twistd.log"), "nextim", "--config", self.config]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log("stdout.log"),
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if not wait_port(self.port):
            raise RuntimeError("nextim did not start; see " + self.dir)

    def seed(self, n):
        """Users u0…u{n-1}, a buddy ring (u_i ↔ u_i+1) and rooms r0… of 10, written
        straight into the SQLite file before the daemon starts (the admin API would do
        the same, 30 000 calls slower)."""
        from nextim_twisted.store import schema

        conn = sqlite3.connect(self.db, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        cur = conn.cursor()
        schema.migrate(cur.execute, cur.fetchone, "sqlite")
        have = conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        if have != n:
            for table in ("users", "buddies", "rooms", "room_members", "messages", "settings"):
                conn.execute(f"DELETE FROM {table}")
            now = int(time.time() * 1000)
            conn.executemany("INSERT INTO users (id, nick, created) VALUES (?, ?, ?)",
                             ((f"u{i}", f"User {i}", now) for i in range(n)))
            pairs = [(f"u{i}", f"u{(i + 1) % n}") for i in range(n)]
            conn.executemany("INSERT OR IGNORE INTO buddies (user_id, buddy_id, grp) VALUES (?, ?, 'friends')",
                             pairs + [(b, a) for a, b in pairs])
            rooms = (n + ROOM_SIZE - 1) // ROOM_SIZE
            conn.executemany("INSERT INTO rooms (id, nick) VALUES (?, ?)",
                             ((f"r{r}", f"Room {r}") for r in range(rooms)))
            conn.executemany("INSERT INTO room_members (room_id, user_id) VALUES (?, ?)",
                             ((f"r{room_of(i)}", f"u{i}") for i in range(n)))
        else:
            conn.execute("DELETE FROM messages")
        conn.execute("COMMIT")
        conn.close()
        self.seeded = n


class Prosody(Server):
    """Debian prosody 0.12: mod_bosh on ``/http-bind``, MUC on conference.localhost,
    ``internal_plain`` accounts, epoll backend; run as the ``prosody`` user."""

    name = "prosody"
    protocol = "bosh"

    def __init__(self, cpu="0", port=15280):
        super().__init__(cpu)
        self.port = port
        self.bosh_url = f"http://{HOST}:{port}/http-bind"
        self.ws_url = f"ws://{HOST}:{port}/xmpp-websocket"
        self.data = os.path.join(self.dir, "data")
        self.config = os.path.join(self.dir, "prosody.cfg.lua")
        os.makedirs(self.data, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(f"""-- written by bench/servers.py
daemonize = false
pidfile = "{self.dir}/prosody.pid"
data_path = "{self.data}"
log = {{ warn = "{self.dir}/prosody.log" }}
network_backend = "epoll"
tcp_backlog = 4096
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "bosh"; "websocket"; "posix" }}
modules_disabled = {{ "s2s"; "offline" }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
consider_bosh_secure = true
consider_websocket_secure = true
http_ports = {{ {port} }}
http_interfaces = {{ "{HOST}" }}
https_ports = {{ }}
s2s_ports = {{ }}
c2s_ports = {{ }}
component_ports = {{ }}
bosh_max_inactivity = 60
bosh_max_requests = 2
bosh_max_wait = 25
limits = {{ c2s = {{ rate = "100mb/s" }} }}
muc_room_locking = false
VirtualHost "{DOMAIN}"
Component "conference.{DOMAIN}" "muc"
    restrict_room_creation = false
    max_history_messages = 0
""")
        shutil.chown(self.dir, "prosody", "prosody")
        shutil.chown(self.data, "prosody", "prosody")

    def start(self):
        assert port_free(self.port), f"port {self.port} is taken"
        os.makedirs(os.path.join(self.dir, "certs"), exist_ok=True)
        shutil.chown(os.path.join(self.dir, "certs"), "prosody", "prosody")
        self.proc = subprocess.Popen(["taskset", "-c", self.cpu, "prosody", "--config", self.config, "-F"],
                                     cwd=self.dir, user="prosody", group="prosody",
                                     stdout=self._log("stdout.log"), stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if not wait_port(self.port):
            raise RuntimeError("prosody did not start; see " + self.dir)

    def seed(self, n):
        """Account files ``data/localhost/accounts/u<i>.dat`` (what ``prosodyctl
        register`` writes with internal_plain), written directly: 10 000 prosodyctl
        runs would take an hour."""
        # Rooms (and their occupants) that Prosody saved at the last shutdown must not
        # come back into a new run.
        for name in os.listdir(self.data):
            if name.startswith("conference"):
                shutil.rmtree(os.path.join(self.data, name))
        accounts = os.path.join(self.data, DOMAIN, "accounts")
        os.makedirs(accounts, exist_ok=True)
        for i in range(n):
            path = os.path.join(accounts, f"u{i}.dat")
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(f'return {{\n\t["password"] = "pw{i}";\n}};\n')
        for root, dirs, files in os.walk(self.data):
            for name in dirs + files:
                shutil.chown(os.path.join(root, name), "prosody", "prosody")
        shutil.chown(self.data, "prosody", "prosody")
        self.seeded = n


class Ejabberd(Server):
    """Debian ejabberd 23.01: ``ejabberd_http`` with mod_bosh on ``/bosh`` and
    mod_http_api on ``/api`` (loopback only, used to register users), mod_muc,
    plain-text passwords in Mnesia; node ``nextimbench@localhost``."""

    name = "ejabberd"
    protocol = "bosh"
    node = "nextimbench@localhost"

    def __init__(self, cpu="0", port=15380):
        super().__init__(cpu)
        self.port = port
        self.bosh_url = f"http://{HOST}:{port}/bosh"
        self.ws_url = f"ws://{HOST}:{port}/ws"
        self.spool = os.path.join(self.dir, "spool")
        self.logs = os.path.join(self.dir, "logs")
        for d in (self.spool, self.logs):
            os.makedirs(d, exist_ok=True)
        self.config = os.path.join(self.dir, "ejabberd.yml")
        with open(self.config, "w") as f:
            f.write(f"""# written by bench/servers.py
hosts:
  - {DOMAIN}
loglevel: warning
log_rotate_count: 0
certfiles: []
listen:
  -
    port: {port}
    ip: "{HOST}"
    module: ejabberd_http
    backlog: 4096
    request_handlers:
      /bosh: mod_bosh
      /ws: ejabberd_http_ws
      /api: mod_http_api
auth_method: internal
auth_password_format: plain
acl:
  local:
    user_regexp: ""
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  muc_create:
    allow: all
api_permissions:
  "loopback admin":
    from:
      - mod_http_api
    who:
      ip: 127.0.0.1/8
    what: "*"
modules:
  mod_bosh:
    max_inactivity: 60
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
  mod_http_api: {{}}
  mod_muc:
    host: "conference.{DOMAIN}"
    access: all
    access_create: muc_create
    access_persistent: muc_create
    history_size: 0
    max_users: 1000
    default_room_options:
      persistent: false
""")
        with open(os.path.join(self.dir, "ejabberdctl.cfg"), "w") as f:
            f.write("ERL_MAX_PORTS=65536\nERL_PROCESSES=1000000\n"
                    f"EJABBERD_PID_PATH={self.dir}/ejabberd.pid\n"
                    "ERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\n")
        shutil.copy("/etc/ejabberd/inetrc", os.path.join(self.dir, "inetrc"))
        for root, dirs, files in os.walk(self.dir):
            for name in dirs + files:
                shutil.chown(os.path.join(root, name), "ejabberd", "ejabberd")
        shutil.chown(self.dir, "ejabberd", "ejabberd")

    def ctl(self, *args, check=True):
        cmd = ["ejabberdctl", "--config-dir", self.dir, "--config", self.config, "--ctl-config",
               os.path.join(self.dir, "ejabberdctl.cfg"), "--spool", self.spool, "--logs", self.logs,
               "--node", self.node, *args]
        return subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, check=check, timeout=120,
                              **self._as_user())

    @staticmethod
    def _as_user():
        # Run ejabberdctl as its user: run as root it re-executes itself through `su`,
        # whose PAM session drops the descriptor limit back to 1024 ("too many open
        # files" at 1000 BOSH users) instead of inheriting ours.
        env = dict(os.environ, HOME="/var/lib/ejabberd")
        return {"user": "ejabberd", "group": "ejabberd", "env": env}

    def start(self):
        assert port_free(self.port), f"port {self.port} is taken"
        # `foreground` keeps the node attached to this Popen; taskset pins beam and
        # every thread it starts to the server's CPU.
        cmd = ["taskset", "-c", self.cpu, "ejabberdctl", "--config-dir", self.dir, "--config", self.config,
               "--ctl-config", os.path.join(self.dir, "ejabberdctl.cfg"), "--spool", self.spool,
               "--logs", self.logs, "--node", self.node, "foreground"]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self._log("stdout.log"), stderr=subprocess.STDOUT,
                                     **self._as_user())
        if not wait_port(self.port, timeout=120):
            raise RuntimeError("ejabberd did not start; see " + self.dir)
        self.pid = self._beam_pid()

    def _beam_pid(self):
        out = subprocess.run(["pgrep", "-f", f"beam.*{self.node}"], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        if not pids:
            raise RuntimeError("ejabberd beam process not found")
        return pids[0]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.ctl("stop", check=False)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pid = self._beam_pid()
                os.kill(pid, 9)
                self.proc.wait()
        # ejabberdctl returns before the node is gone; a start before that fails with
        # "node already running" (seen on restarts).
        if self.pid is not None:
            deadline = time.monotonic() + 60
            while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
                time.sleep(0.1)
        self.proc = None
        self.pid = None

    def api(self, command, args):
        req = urllib.request.Request(f"http://{HOST}:{self.port}/api/{command}",
                                     data=json.dumps(args).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def seed(self, n):
        """Register u0…u{n-1} through mod_http_api (server must be running)."""
        count = len(json.loads(self.api("registered_users", {"host": DOMAIN})))
        if count >= n:
            self.seeded = n
            return
        from concurrent.futures import ThreadPoolExecutor

        def reg(i):
            try:
                self.api("register", {"user": f"u{i}", "host": DOMAIN, "password": f"pw{i}"})
            except urllib.error.HTTPError:
                pass  # already registered
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(reg, range(n)))
        self.seeded = n


def basic(user, password):
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class NextimWs(Nextim):
    """The same daemon; the load generator uses ``/ws`` instead of ``/packets``."""

    name = "nextim-ws"
    protocol = "nextim-ws"
    dirname = "nextim"


class ProsodyWs(Prosody):
    """The same Prosody; the load generator speaks XMPP over WebSocket (mod_websocket)."""

    name = "prosody-ws"
    protocol = "xmpp-ws"
    dirname = "prosody"


class EjabberdWs(Ejabberd):
    """The same ejabberd; the load generator speaks XMPP over WebSocket (``/ws``)."""

    name = "ejabberd-ws"
    protocol = "xmpp-ws"
    dirname = "ejabberd"


SERVERS = {"nextim": Nextim, "prosody": Prosody, "ejabberd": Ejabberd,
           "nextim-ws": NextimWs, "prosody-ws": ProsodyWs, "ejabberd-ws": EjabberdWs}
