"""A real Prosody XMPP server for the bridge tests (docs/xmpp.md), on loopback ports.

:class:`Prosody` writes a config into a temporary directory (one VirtualHost, the
daemon's XEP-0114 component with a secret, a XEP-0045 MUC component, a self-signed
certificate made with ``cryptography``, c2s and component ports on free 127.0.0.1
ports, data in the directory, no s2s, no HTTP) and runs ``prosody -F`` in the
foreground as the ``prosody`` user (Prosody refuses to run as root).

Needs the Debian package ``prosody`` (installed by ``.ci/run``); :func:`available`
says whether it is there so the tests can skip cleanly elsewhere.
"""
import datetime
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

DOMAIN = "localhost"
COMPONENT = "web.localhost"
MUC = "conference.localhost"
SECRET = "component-secret-for-tests"


def available():
    """True when the prosody binaries and the ``prosody`` user exist."""
    try:
        pwd.getpwnam("prosody")
    except KeyError:
        return False
    return shutil.which("prosody") is not None and shutil.which("prosodyctl") is not None


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(directory, host):
    """Write ``<host>.key``/``<host>.crt`` (RSA 2048, one day) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    key_path = os.path.join(directory, f"{host}.key")
    crt_path = os.path.join(directory, f"{host}.crt")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    with open(crt_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, crt_path


_CONFIG = """\
-- written by tests/prosody.py
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ {{ levels = {{ min = "{level}" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
admin_socket = "{dir}/admin.sock"
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "posix", "offline" }}
modules_disabled = {{ "s2s", "admin_shell" }}
authentication = "internal_plain"
storage = "internal"
allow_registration = false
c2s_require_encryption = true
limits = {{ c2s = {{ rate = "1mb/s" }} }}
ssl = {{ key = "{key}", certificate = "{crt}" }}

VirtualHost "{domain}"
    ssl = {{ key = "{key}", certificate = "{crt}" }}

Component "{component_domain}"
    component_secret = "{secret}"

Component "{muc}" "muc"
    restrict_room_creation = false
    muc_room_default_public = true
    muc_room_default_persistent = false
"""


def wait_listening(server, ports, timeout):
    """Wait until every port on 127.0.0.1 accepts connections while ``server.proc`` runs.

    :raises RuntimeError: the process exited, or ``timeout`` seconds passed (with the
        server's log tail)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {server.proc.returncode}:\n{server.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not listen on {port}:\n{server.log_tail()}") from None
                time.sleep(0.05)


def descendants(pid):
    """Process ids below ``pid`` (children, their children, …), read from ``/proc``."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _children(pid):
    """Process ids whose parent is ``pid`` (read from ``/proc``)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # the command name is in parentheses and may contain spaces: ppid follows it
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


class Prosody:
    """One Prosody server in ``directory`` (created, made readable by ``prosody``).

    Attributes: ``c2s_port`` (client port), ``component_port`` (XEP-0114 port),
    ``domain``, ``component``, ``muc``, ``secret``, ``config`` (path of the config).
    """

    def __init__(self, directory, secret=SECRET):
        self.dir = str(directory)
        self.domain, self.component, self.muc, self.secret = DOMAIN, COMPONENT, MUC, secret
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.proc = None
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        key, crt = _self_signed(self.dir, DOMAIN)
        self.config = os.path.join(self.dir, "prosody.cfg.lua")
        with open(self.config, "w") as f:
            f.write(_CONFIG.format(dir=self.dir, level=os.environ.get("NEXTIM_PROSODY_LOG", "info"),
                                   c2s=self.c2s_port, component=self.component_port, key=key, crt=crt,
                                   domain=DOMAIN, component_domain=COMPONENT, secret=secret, muc=MUC))
        user = pwd.getpwnam("prosody")
        for root, dirs, files in os.walk(self.dir):
            for name in [root] + [os.path.join(root, x) for x in dirs + files]:
                os.chown(name, user.pw_uid, user.pw_gid)
        # The prosody user must be able to reach the directory through its parents.
        parent = self.dir
        while parent not in ("/", ""):
            parent = os.path.dirname(parent)
            mode = os.stat(parent).st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)

    def _as_prosody(self, *argv):
        return ["runuser", "-u", "prosody", "--", *argv]

    def register(self, user, password):
        """Create the XMPP account ``user@domain`` (``prosodyctl register``)."""
        subprocess.run(self._as_prosody("prosodyctl", "--config", self.config, "register", user, self.domain,
                                        password), check=True, capture_output=True, timeout=30)

    def start(self, timeout=15):
        """Start ``prosody -F`` and wait until both ports accept connections."""
        with open(os.path.join(self.dir, "stdout.log"), "ab") as out:  # what it says before its log is open
            self.proc = subprocess.Popen(self._as_prosody("prosody", "--config", self.config, "-F"),
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self, (self.c2s_port, self.component_port), timeout)

    def stop(self, timeout=10):
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        ours = descendants(proc.pid)
        if proc.poll() is None:
            # runuser forwards SIGTERM to prosody.
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        # Prosody itself may outlive runuser for a moment; a start before it is gone fails.
        deadline = time.monotonic() + timeout
        while any(os.path.exists(f"/proc/{pid}") for pid in ours):
            if time.monotonic() > deadline:
                for pid in ours:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.05)

    def kill(self):
        """``kill -9`` the server process itself (not ``runuser`` above it), as a crash
        would: no stream is closed, no room saved. :meth:`start` starts it again."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for pid in _children(proc.pid) or [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)

    def log_tail(self, lines=40):
        """The last lines of prosody.log (for failure messages)."""
        text = ""
        for name in ("stdout.log", "prosody.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f"--- {name}\n" + "".join(f.readlines()[-lines:])
            except OSError:
                pass
        return text
