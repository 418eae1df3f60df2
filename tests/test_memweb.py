"""The in-memory HTTP harness (tests/memweb.py) itself: it serves the daemon's real
site, and it fails a test that leaves a timer behind on the Clock."""
import pytest
import pytest_twisted

from tests import memweb
from tests.conftest import make_config
from tests.memweb import MemoryHarness
from tests.storefixtures import make_store

inline = pytest_twisted.ensureDeferred
daemon = memweb.daemon


@inline
async def test_requests_go_through_the_tuned_site(daemon):
    resp = await daemon.request("GET", "/webim/nope")
    assert resp.status == 404 and resp.json["error"] == "unknown_endpoint"
    await daemon.settle()
    assert daemon.pipes and all(p.closed for p in daemon.pipes)  # Connection: close, like treq's
    channel = daemon.pipes[0].server.protocol
    assert type(channel).__name__ == "Channel" and "_command" in type(channel).__slots__


@inline
async def test_a_timer_left_on_the_clock_fails_the_test(tmp_path):
    store, drop = await make_store("sqlite", tmp_path)
    h = MemoryHarness(store, make_config())
    await h.start()
    forgotten = h.clock.callLater(60, lambda: None)
    try:
        with pytest.raises(AssertionError, match="delayed calls left on the Clock"):
            await h.stop()
    finally:
        forgotten.cancel()
        await drop()
    await h.stop()  # nothing left now
