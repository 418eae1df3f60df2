"""A real ejabberd (the Debian package) for the bridge tests (docs/xmpp.md), beside
:mod:`tests.prosody`: the same domains, secret and account names, so a test written for
one runs against the other.

:class:`Ejabberd` writes a config into a temporary directory (one host, the daemon's
XEP-0114 component ``ejabberd_service`` with a password, ``mod_muc``, c2s with STARTTLS
on a self-signed certificate, everything on free 127.0.0.1 ports, Mnesia in the
directory, its own Erlang node name) and runs ``ejabberdctl foreground`` as the
``ejabberd`` user: ejabberdctl run as root re-executes itself through ``su``.
:func:`unavailable` says why it cannot run here, so the tests skip with that reason.
"""
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time

from tests.prosody import COMPONENT, DOMAIN, MUC, SECRET, _self_signed, descendants, free_port, wait_listening

_CONFIG = """\
# written by tests/ejabberd.py
hosts:
  - {domain}
loglevel: info
log_rotate_count: 0
certfiles:
  - "{pem}"
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: true
  -
    port: {component}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      "{component_domain}":
        password: "{secret}"
auth_method: internal
auth_password_format: plain
s2s_access: none
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  muc_create:
    allow: all
modules:
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
  mod_offline: {{}}
  mod_muc:
    host: "{muc}"
    access: all
    access_create: muc_create
    history_size: 20
    default_room_options:
      persistent: false
"""


def unavailable():
    """Why ejabberd cannot run here (a sentence), or None when it can."""
    try:
        user = pwd.getpwnam("ejabberd")
    except KeyError:
        return "no ejabberd user (install the Debian ejabberd package)"
    if shutil.which("ejabberdctl") is None:
        return "no ejabberdctl (install the Debian ejabberd package)"
    if not os.path.exists(os.path.join(user.pw_dir, ".erlang.cookie")):
        return f"no Erlang cookie in {user.pw_dir} (the ejabberd package was not set up)"
    return None


class Ejabberd:
    """One ejabberd node in ``directory``; attributes as :class:`tests.prosody.Prosody`."""

    def __init__(self, directory, secret=SECRET):
        self.dir = str(directory)
        self.domain, self.component, self.muc, self.secret = DOMAIN, COMPONENT, MUC, secret
        self.c2s_port, self.component_port = free_port(), free_port()
        self.node = f"nextimtest{secrets.token_hex(4)}@localhost"
        self.spool, self.logs = os.path.join(self.dir, "spool"), os.path.join(self.dir, "logs")
        for d in (self.spool, self.logs):
            os.makedirs(d, exist_ok=True)
        key, crt = _self_signed(self.dir, DOMAIN)
        pem = os.path.join(self.dir, "server.pem")
        with open(pem, "w") as out:
            for path in (crt, key):
                with open(path) as f:
                    out.write(f.read())
        self.config = os.path.join(self.dir, "ejabberd.yml")
        with open(self.config, "w") as f:
            f.write(_CONFIG.format(domain=DOMAIN, pem=pem, c2s=self.c2s_port, component=self.component_port,
                                   component_domain=COMPONENT, secret=secret, muc=MUC))
        self.ctl_config = os.path.join(self.dir, "ejabberdctl.cfg")
        with open(self.ctl_config, "w") as f:
            f.write(f"EJABBERD_PID_PATH={self.dir}/ejabberd.pid\nINET_DIST_INTERFACE=127.0.0.1\n")
        if os.path.exists("/etc/ejabberd/inetrc"):
            shutil.copy("/etc/ejabberd/inetrc", os.path.join(self.dir, "inetrc"))
        for root, dirs, files in os.walk(self.dir):
            for name in [root] + [os.path.join(root, x) for x in dirs + files]:
                shutil.chown(name, "ejabberd", "ejabberd")
        parent = self.dir
        while parent not in ("/", ""):
            parent = os.path.dirname(parent)
            mode = os.stat(parent).st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        self.proc = None
        self.accounts = {}

    def _ctl_argv(self, *args):
        return ["ejabberdctl", "--config-dir", self.dir, "--config", self.config, "--ctl-config", self.ctl_config,
                "--spool", self.spool, "--logs", self.logs, "--node", self.node, *args]

    @staticmethod
    def _as_user():
        return {"user": "ejabberd", "group": "ejabberd", "env": dict(os.environ, HOME=pwd.getpwnam("ejabberd").pw_dir)}

    def ctl(self, *args, check=True, timeout=60):
        return subprocess.run(self._ctl_argv(*args), cwd=self.dir, capture_output=True, text=True, check=check,
                              timeout=timeout, **self._as_user())

    def register(self, user, password, check=True):
        """Create ``user@domain`` (the node must be running)."""
        self.accounts[user] = password
        self.ctl("register", user, self.domain, password, check=check)

    def start(self, timeout=60):
        """Start the node and wait until both ports accept connections."""
        self.proc = subprocess.Popen(self._ctl_argv("foreground"), cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(self.dir, "stdout.log"), "ab"),
                                     stderr=subprocess.STDOUT, **self._as_user())
        wait_listening(self, (self.c2s_port, self.component_port), timeout)
        deadline = time.monotonic() + timeout
        while self.ctl("status", check=False).returncode != 0:  # the node answers commands
            if time.monotonic() > deadline:
                raise RuntimeError(f"ejabberd did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        # After a kill -9, Mnesia has lost what it had not dumped yet, accounts included.
        for user, password in self.accounts.items():
            self.register(user, password, check=False)

    def kill(self):
        """``kill -9`` the node and everything below ejabberdctl, as a crash would."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for pid in descendants(proc.pid) + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)

    def stop(self, timeout=60):
        """Stop the node (``ejabberdctl stop``, then SIGKILL) and wait for it."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        ours = descendants(proc.pid)   # the beam node and its helpers, started by us
        if proc.poll() is None:
            self.ctl("stop", check=False)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for pid in ours:
            if os.path.exists(f"/proc/{pid}"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def log_tail(self, lines=40):
        text = ""
        for name in ("stdout.log", os.path.join("logs", "ejabberd.log"), os.path.join("logs", "error.log")):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f"--- {name}\n" + "".join(f.readlines()[-lines:])
            except OSError:
                pass
        return text
