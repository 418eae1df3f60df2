"""Production footing (docs/deployment.md): the shipped systemd unit and nginx sample are checked by
the real tools, and a real nginx in front of a real ``twistd nextim`` delivers long
polls. Plain synchronous pytest (no reactor): nginx and the daemon are child processes.

Nothing is skipped: when ``systemd-analyze`` or ``nginx`` is missing the tests fail
and say to run ``.ci/run`` (which installs Debian's ``systemd`` and ``nginx``).
"""
import concurrent.futures
import os
import pwd
import re
import shutil
import signal
import subprocess
import time

import pytest

from nextim_twisted import config
from tests.daemon import Client, Daemon, SocketTab, free_port, twistd_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "etc", "nextim.service")
NGINX_SAMPLE = os.path.join(ROOT, "etc", "nginx-nextim.conf")


def need(tool):
    """The tool's path; fails (never skips) when it is not installed."""
    path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}")
                                       if os.access(p, os.X_OK)), None)
    if path is None:
        pytest.fail(f"{tool} is not installed; run .ci/run (it installs Debian's "
                    f"{'systemd' if tool == 'systemd-analyze' else tool})")
    return path


# -- systemd ---------------------------------------------------------------------------

def test_systemd_unit_verifies(tmp_path):
    analyze = need("systemd-analyze")
    text = open(UNIT, encoding="utf-8").read()
    # `systemd-analyze verify` refuses an ExecStart binary that does not exist. The unit
    # names the usual install path (/usr/local/bin/twistd); check a copy that points
    # at this machine's twistd instead, with every other line unchanged.
    exec_start = re.findall(r"^ExecStart=(\S+)", text, re.M)
    assert exec_start == ["/usr/local/bin/twistd"], exec_start
    copy = tmp_path / "nextim.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/twistd", "ExecStart=" + twistd_command()[0], 1))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values; it only prints them.
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "nextim.service" in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def test_systemd_unit_settings():
    """The settings docs/deployment.md#2-systemd explains, so an edit cannot drop one unnoticed."""
    text = open(UNIT, encoding="utf-8").read()
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    expected = {
        "User": "nextim", "Restart": "on-failure", "LimitNOFILE": "65536", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "StateDirectory": "nextim", "WorkingDirectory": "/var/lib/nextim",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert "@system-service" in settings["SystemCallFilter"]
    exec_start = settings["ExecStart"][0].split()
    assert exec_start[exec_start.index("nextim") + 1:] == ["--config", "/etc/nextim/nextim.toml"]
    assert "--nodaemon" in exec_start and "--pidfile=" in exec_start


# -- nginx -----------------------------------------------------------------------------

def test_nginx_body_limit_matches_config():
    sample = open(NGINX_SAMPLE, encoding="utf-8").read()
    sizes = re.findall(r"^\s*client_max_body_size\s+(\d+);", sample, re.M)
    assert sizes == [str(config.SCHEMA["server"]["max_body_bytes"][1])]
    hold = config.SCHEMA["timers"]["poll_hold"][1]
    read_timeouts = [int(s) for s in re.findall(r"proxy_read_timeout\s+(\d+)s;", sample)]
    assert read_timeouts and all(t > hold + 10 for t in read_timeouts)


def nginx_config(tmp, listen_port, upstream_port):
    """A complete nginx.conf in ``tmp`` that includes the sample with its listen and
    upstream ports replaced; runs in the foreground with every path under ``tmp``."""
    sample = open(NGINX_SAMPLE, encoding="utf-8").read()
    sample, n_up = re.subn(r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};", sample)
    sample, n_listen = re.subn(r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{listen_port};", sample, flags=re.M)
    assert (n_up, n_listen) == (1, 1), "the sample's upstream/listen lines changed; update this test"
    return nginx_main_conf(tmp, sample)


def nginx_main_conf(tmp, site_text):
    """A complete nginx.conf in ``tmp`` whose http block includes ``site_text``; runs in the
    foreground with every path under ``tmp``."""
    site = tmp / "nextim-site.conf"
    site.write_text(site_text)
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
{user}
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
""")
    return conf


def test_nginx_sample_passes_nginx_t(tmp_path):
    nginx = need("nginx")
    conf = nginx_config(tmp_path, free_port(), 8000)
    proc = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


class Nginx:
    """A foreground nginx child process on 127.0.0.1:``port``."""

    def __init__(self, tmp, upstream_port):
        self.binary = need("nginx")
        self.tmp = tmp
        self.port = free_port()
        self.conf = nginx_config(tmp, self.port, upstream_port)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-p", str(self.tmp), "-e", str(self.tmp / "error.log"),
                                      "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}: {self.proc.stderr.read()!r}")
            try:
                Client(self.url, timeout=2).get("/health")
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("nginx did not answer within 10 s: " + self.error_log())
                time.sleep(0.05)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def error_log(self):
        try:
            return (self.tmp / "error.log").read_text()[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


@pytest.fixture
def proxied(tmp_path):
    """``(daemon, nginx)``: a real twistd nextim (poll hold 3 s) behind a real nginx."""
    daemon = Daemon({"timers": {"poll_hold": 3, "session_idle": 10, "user_grace": 5}})
    nginx = None
    try:
        daemon.start()
        for uid in ("alice", "bob"):
            assert daemon.admin("PUT", f"/admin/users/{uid}", {"nick": uid.title()}).status == 200
        assert daemon.admin("PUT", "/admin/users/alice/buddies/bob", {}).status == 200
        nginx = Nginx(tmp_path, daemon.port).start()
        yield daemon, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        try:
            if daemon.running:
                daemon.stop()
        finally:
            daemon.cleanup()


def online(client, daemon, user):
    resp = client.post("/webim/online", {}, headers={"Authorization": "Bearer " + daemon.token(user, user.title())})
    assert resp.status == 200, resp
    return resp.json()["connection"]["ticket"]


def test_long_poll_through_nginx(proxied):
    daemon, nginx = proxied
    c = Client(nginx.url, timeout=20)
    alice = online(c, daemon, "alice")
    bob = online(c, daemon, "bob")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Alice's first poll may carry bob's "online" presence; poll until her
        # message arrives, each poll through nginx.
        def poll_for_message():
            ack = None
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                params = {"ticket": alice, "callback": "cb"}
                if ack is not None:
                    params["ack"] = ack
                resp = c.get("/packets", params)
                assert resp.status == 200, resp
                envelope = resp.jsonp("cb")
                ack = envelope["seq"]
                if envelope["messages"]:
                    return envelope
            raise AssertionError("no message reached alice's poll through nginx")

        pending = pool.submit(poll_for_message)
        time.sleep(0.3)  # let the poll park (the daemon queues it anyway if it has not)
        resp = c.post("/webim/message", {"ticket": bob, "type": "unicast", "to": "alice", "body": "via nginx"})
        assert resp.status == 200 and resp.body == b"ok", resp
        envelope = pending.result(timeout=20)
    assert [m["body"] for m in envelope["messages"]] == ["via nginx"]
    assert envelope["messages"][0]["from"] == "bob"


def test_held_poll_comes_back_empty_not_504(proxied):
    daemon, nginx = proxied
    c = Client(nginx.url, timeout=20)
    alice = online(c, daemon, "alice")
    first = c.get("/packets", {"ticket": alice})  # drains anything queued at online
    assert first.status == 200, first
    started = time.monotonic()
    resp = c.get("/packets", {"ticket": alice, "ack": first.json()["seq"]})
    held = time.monotonic() - started
    assert resp.status == 200, resp
    assert resp.json() == {"status": "ok", "messages": [], "presences": [], "statuses": [],
                           "seq": first.json()["seq"]}
    assert 2.5 <= held < 10, held  # the whole 3 s hold, answered by the daemon, not by nginx


def test_websocket_through_nginx(proxied):
    """The sample upgrades /ws (docs/protocol.md#websocket-transport): frames both ways."""
    daemon, nginx = proxied
    c = Client(nginx.url, timeout=20)
    on = c.post("/webim/online", {}, headers={"Authorization": "Bearer " + daemon.token("alice", "Alice")}).json()
    assert on["connection"]["websocket"] == daemon.public_url.replace("http://", "ws://") + "/ws"
    bob = online(c, daemon, "bob")
    tab = SocketTab(nginx.url, "/ws", on["connection"]["ticket"], "alice",
                    headers=[("Origin", daemon.public_url)])
    try:
        resp = c.post("/webim/message", {"ticket": bob, "type": "unicast", "to": "alice", "body": "via nginx"})
        assert resp.status == 200 and resp.body == b"ok", resp
        assert tab.wait_for("messages", body="via nginx")["from"] == "bob"
        assert tab.call("status", to="bob", show="typing")["result"] == "ok"
        assert not tab.errors
    finally:
        tab.close()
    assert tab.close_code == 1000


def test_nginx_refusals_are_d2_envelopes(proxied):
    daemon, nginx = proxied
    c = Client(nginx.url, timeout=20)
    big = c.post("/webim/message", {"body": "x" * 50000})
    assert big.status == 413, big
    assert big.json()["success"] is False and big.json()["error"] == "body_too_large"
    health = c.get("/health")
    assert health.status == 200 and health.json() == {"status": "ok", "storage": "ok"}
    daemon.stop()
    down = c.get("/webim/buddies")
    assert down.status == 503, down
    assert down.json()["error"] == "unavailable"
