"""Fixtures for the browser tests: a real ``twistd nextim --demo`` process and
headless Debian Chromium driven by Playwright's *sync* API.

These are plain synchronous pytest functions. They never touch the Twisted
reactor (pytest-twisted is installed for the other tests, but the sync
Playwright API must not run inside a running reactor).

Set up once per machine::

    apt-get install -y chromium && pip install playwright   # never `playwright install`
"""
import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - reported as a skip below
    sync_playwright = None  # type: ignore[assignment]
    expect = None  # type: ignore[assignment]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
STATIC_DIR = REPO_ROOT / "nextim_twisted" / "web" / "static"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SHORT_TIMERS = ("[timers]\nuser_grace = 2\nsession_idle = 5\npoll_hold = 10\n"
                # every test logs the same demo users in again: no online rate limit here
                "[limits]\nonlines_per_minute = 100000\n")
USER_GRACE = 2  # seconds, as in SHORT_TIMERS
NICKS = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives headless Chromium with the sync Playwright API "
                   "(plain sync test, no Twisted reactor)")


def pytest_collection_modifyitems(session, config, items):
    """Run the browser tests after the rest of the suite: they are the slowest,
    and Playwright's sync API (greenlets, its own asyncio loop and driver
    process) then never shares the interpreter with the reactor-based tests."""
    here = pathlib.Path(__file__).resolve().parent
    mine = [i for i in items if here in pathlib.Path(str(i.fspath)).resolve().parents]
    if mine and len(mine) < len(items):
        others = [i for i in items if i not in mine]
        items[:] = others + mine


def twistd_command():
    """argv prefix that runs twistd with this Python (``twist`` has no --nodaemon)."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """A running daemon: ``url``, ``workdir``, ``logs()``."""

    def __init__(self, argv, workdir, port):
        self.argv = argv
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None
        self._out = None
        self._err = None

    def start(self, timeout=20.0):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
        self._out = open(self.workdir / "daemon.stdout", "wb")
        self._err = open(self.workdir / "daemon.stderr", "wb")
        self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=env,
                                     stdout=self._out, stderr=self._err)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"daemon did not answer GET / within {timeout} s ({last})\n{self.logs()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self._out, self._err):
            if f and not f.closed:
                f.close()

    def logs(self, tail=12000):
        parts = []
        for name in ("daemon.stdout", "daemon.stderr"):
            p = self.workdir / name
            if p.exists():
                text = p.read_text(errors="replace")
                parts.append(f"----- {name} (last {tail} chars) -----\n{text[-tail:]}")
        return "\n".join(parts)


def start_daemon(workdir, config_text=SHORT_TIMERS, demo=True, set_public_url=False):
    """Start ``twistd nextim`` in ``workdir`` on a free loopback port."""
    port = free_port()
    (workdir / "short_timers.toml").write_text(config_text)
    argv = twistd_command() + ["--nodaemon", "--pidfile=", "nextim"]
    if demo:
        argv.append("--demo")
    argv += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--config", "short_timers.toml"]
    if set_public_url:
        argv += ["--public-url", f"http://127.0.0.1:{port}"]
    return DaemonProcess(argv, workdir, port).start()


_daemons: list = []  # running daemons, whose logs go into failure reports

EMBED_EXAMPLE = REPO_ROOT / "examples" / "embed"


@contextlib.contextmanager
def running(daemon):
    """Stop ``daemon`` at the end; until then its log goes into failure reports."""
    _daemons.append(daemon)
    try:
        yield daemon
    finally:
        daemon.stop()
        _daemons.remove(daemon)


def start_embed_daemon(workdir, allowed_origins=()):
    """The daemon with the embedding example's token config (plus short timers);
    ``allowed_origins`` go into ``[server] allowed_origins``."""
    config = (EMBED_EXAMPLE / "nextim.toml").read_text()
    if allowed_origins:
        listed = ", ".join(f'"{o}"' for o in allowed_origins)
        config = config.replace("[server]\n", f"[server]\nallowed_origins = [{listed}]\n", 1)
    return start_daemon(workdir, config_text=config + "\n" + SHORT_TIMERS, demo=False, set_public_url=True)


@contextlib.contextmanager
def running_host_site(daemon, port=None):
    """examples/embed/host_site.py --seed on another origin than ``daemon``
    (``localhost`` vs ``127.0.0.1``, another port); yields its URL."""
    port = port or free_port()
    log = open(daemon.workdir / "host_site.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(EMBED_EXAMPLE / "host_site.py"), "--config", str(daemon.workdir / "short_timers.toml"),
         "--daemon", daemon.url, "--host", "127.0.0.1", "--port", str(port), "--seed"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("host_site.py did not start:\n"
                                       + (daemon.workdir / "host_site.log").read_text())
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def site_login(pages, host_site, user, page=None):
    """Sign in on the host site as ``user``; the embedded client comes online.
    ``page``: a page opened already (e.g. with routes set), else a new one."""
    page = page or pages.new(None, label=user)
    page.goto(host_site + "/")
    page.select_option("select[name=user]", user)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
    return page


# Package scope: the daemon and the browser end with the last browser test,
# so nothing of Playwright's (its asyncio loop, driver process) is still
# around while the reactor-based tests of the rest of the suite run.
@pytest.fixture(scope="module")
def embed_daemon(tmp_path_factory):
    """The embedding example's daemon with its token config (plus short timers), one per
    test module; its allowed_origins does not list the host site."""
    with running(start_embed_daemon(tmp_path_factory.mktemp("nextim-embed"))) as d:
        yield d


@pytest.fixture(scope="module")
def host_site(embed_daemon):
    """host_site.py --seed on another origin (localhost vs 127.0.0.1, other port)."""
    with running_host_site(embed_daemon) as url:
        yield url


@pytest.fixture(scope="package")
def demo_daemon(tmp_path_factory):
    """One demo daemon for all the browser tests."""
    d = start_daemon(tmp_path_factory.mktemp("nextim-daemon"))
    _daemons.append(d)
    try:
        yield d
    finally:
        d.stop()
        _daemons.remove(d)


@pytest.fixture(scope="package")
def browser():
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        expect.set_options(timeout=6000)
        try:
            yield b
        finally:
            b.close()


class PageWatch:
    """What a page did that a test must not allow: dialogs and uncaught errors."""

    def __init__(self, page, label):
        self.label = label
        self.dialogs = []
        self.errors = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def pages(browser, request):
    """Factory: ``pages.new(url, label)`` opens a page in a fresh browser
    context (own cookies and storage = another person). At teardown every
    client goes offline cleanly, and any dialog or page error fails the test."""
    opened = []

    class Factory:
        def new(self, url, label="page", viewport=(1200, 760)):
            ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = ctx.new_page()
            watch = PageWatch(page, label)
            opened.append((label, ctx, page, watch))
            if url:
                page.goto(url)
            return page

        def watches(self):
            return [w for _, _, _, w in opened]

    request.node._nextim_pages = opened
    yield Factory()
    for _, ctx, page, _ in opened:
        try:
            if not page.is_closed():
                page.evaluate("() => Promise.all(((window.NextIM && NextIM.apps) || []).map(a => a.stop()))")
        except Exception:
            pass
        ctx.close()
    problems = [f"{w.label}: dialog {d}" for _, _, _, w in opened for d in w.dialogs]
    problems += [f"{w.label}: page error {e}" for _, _, _, w in opened for e in w.errors]
    assert not problems, "\n".join(problems)


@pytest.fixture
def login(pages, demo_daemon):
    """``login("alice")`` → a page signed in as alice, comet online."""

    def _login(user, password=None):
        page = pages.new(demo_daemon.url + "/", label=user)
        sign_in(page, user, password or user)
        expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
        expect(page.get_by_test_id("my-nick")).to_have_text(NICKS.get(user, user))
        return page

    return _login


def sign_in(page, user, password):
    page.get_by_test_id("login-username").fill(user)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure: a screenshot of every open page into test-artifacts/, and
    the daemon's log in the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when not in ("call", "setup", "teardown") or not rep.failed:
        return
    opened = getattr(item, "_nextim_pages", None) or []
    if opened:
        ARTIFACTS.mkdir(exist_ok=True)
    for i, (label, _ctx, page, _w) in enumerate(opened):
        try:
            if not page.is_closed():
                path = ARTIFACTS / f"{item.name}-{rep.when}-{i}-{label}.png"
                page.screenshot(path=str(path), full_page=True)
                rep.sections.append(("screenshot", str(path)))
        except Exception as e:  # a crashed page must not hide the real failure
            rep.sections.append(("screenshot failed", f"{label}: {e}"))
    for d in _daemons:
        rep.sections.append((f"daemon log ({d.url})", d.logs()))

