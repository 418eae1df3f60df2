"""The composition root (nextim_twisted/compose.py): one wiring for the daemon, the
tests' harness and nextimctl; every part built before what needs it, nothing set on
the context afterwards."""
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock

from nextim_twisted.compose import compose
from nextim_twisted.hub.local import LocalHub
from nextim_twisted.store.sql import SQLStore
from tests.conftest import make_config


def test_parts_share_one_router_hub_store_and_clock(tmp_path):
    config = make_config(storage={"path": str(tmp_path / "n.sqlite")})
    clock = task.Clock()
    parts = compose(config, MemoryReactorClock(), clock=clock)
    assert isinstance(parts.store, SQLStore)  # the configured backend, not started
    assert isinstance(parts.hub, LocalHub) and parts.hub is parts.router.hub is parts.ctx.hub
    assert parts.ctx.store is parts.store and parts.ctx.router is parts.router and parts.ctx.auth is parts.auth
    assert parts.auth.router is parts.router and parts.ctx.clock is clock and parts.router.clock is clock
    assert parts.web is not None and parts.web.ctx is parts.ctx
    assert parts.xmpp is None and parts.ctx.xmpp is None  # [xmpp] enabled is false


def test_the_bridge_is_built_with_the_context_that_holds_it(tmp_path):
    config = make_config(storage={"path": str(tmp_path / "n.sqlite")},
                         xmpp={"enabled": True, "component_domain": "web.example.org", "secret": "s3cret"})
    parts = compose(config, MemoryReactorClock())
    assert parts.xmpp is not None and parts.ctx.xmpp is parts.xmpp and parts.xmpp.ctx is parts.ctx
    assert compose(config, MemoryReactorClock(), xmpp=False).ctx.xmpp is None


def test_nextimctl_gets_the_same_parts_without_serving(tmp_path):
    config = make_config(storage={"path": str(tmp_path / "n.sqlite")})
    parts = compose(config, MemoryReactorClock(), web=False, xmpp=False)
    assert parts.web is None and parts.xmpp is None
    assert parts.router.stats()["online_users"] == 0


def test_a_single_daemon_needs_no_redis_client_installed():
    """txredisapi is the ``cluster`` extra: ``pip install .`` does not bring it, and the
    README's ``twistd -n nextim --demo`` must start without it (docs/scaling.md)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['txredisapi'] = None\n"
            "import nextim_twisted.web.app, nextim_twisted.compose, nextim_twisted.service\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
