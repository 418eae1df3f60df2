"""The twisted.web tuning of ``web/server.py`` still takes hold on the installed Twisted.

It relies on private names (``server.TWISTED_PRIVATE_NAMES``); when a Twisted release
renames one, these tests fail instead of the daemon silently losing the memory and CPU
savings in docs/benchmarks.md.
"""
import importlib
import subprocess
import sys

from twisted.internet import abstract, task
from twisted.internet.testing import StringTransport
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from nextim_twisted.web import server
from nextim_twisted.web.metrics import Metrics


class Ok(Resource):
    isLeaf = True

    def render(self, request):
        return b"ok"


def connected(channel_cls):
    """A channel of ``channel_cls`` built by a Site (on a Clock) and connected to a
    memory transport."""
    site = Site(Ok(), reactor=task.Clock())
    site.protocol = channel_cls
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    return channel


def resolve(owner):
    """The module or class named by a dotted path (``twisted.web.http.HTTPChannel``)."""
    parts = owner.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(owner)


def reading_channel(channel_cls=http.HTTPChannel):
    """A channel connected to a memory transport, in the middle of a request line."""
    channel = connected(channel_cls)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n")  # headers not finished: request under way
    return channel


def test_every_private_name_still_exists():
    live = reading_channel()
    missing = []
    for owner, name in server.TWISTED_PRIVATE_NAMES:
        if owner.endswith("()"):
            assert resolve(owner[:-2]) is http.HTTPChannel, owner  # the only instance owner so far
            found = name in vars(live)
        else:
            found = hasattr(resolve(owner), name)
        if not found:
            missing.append(f"{owner}.{name}")
    assert missing == [], "Twisted renamed or dropped names web/server.py relies on"


def test_every_private_name_the_tuning_uses_is_listed():
    listed = {name for _, name in server.TWISTED_PRIVATE_NAMES}
    used = server.CHANNEL_PRESETS + server.TRANSPORT_PRESETS + server.CHANNEL_SLOTS
    unlisted = [name for name in used if name.startswith("_") and name not in listed]
    assert unlisted == []
    assert {"producer", "streamingProducer", "dataBuffer", "offset"} <= listed  # undocumented, too


def test_importing_the_web_layer_installs_nothing():
    code = ("import nextim_twisted.web.app, nextim_twisted.service; from twisted.web import http; "
            "print(hasattr(http._parseContentType, 'cache_info'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_building_a_site_installs_the_content_type_cache_once(monkeypatch):
    plain = getattr(http._parseContentType, "__wrapped__", http._parseContentType)
    monkeypatch.setattr(http, "_parseContentType", plain)
    server.make_site(Ok(), Metrics(router=None), webim_names=(), max_body_bytes=1024, reactor=task.Clock())
    cached = http._parseContentType
    assert cached.cache_info().maxsize == 256
    assert server.install_tuning() is True and http._parseContentType is cached  # idempotent
    assert cached(b"application/x-www-form-urlencoded; charset=utf-8") == b"application/x-www-form-urlencoded"


def serve(channel, request):
    channel.dataReceived(request)


GET = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1"


def tuned_channel(first, then):
    channel = connected(server.channel_class(65536))
    serve(channel, first)
    serve(channel, then)
    return channel


def test_channels_share_one_key_order_whatever_their_first_request():
    """CPython shares one key table between instances whose dicts got their keys in the
    same order; a channel that saw a POST first and one that saw a GET first must agree,
    and no request deletes a key (a deletion makes the dict a full one)."""
    a, b = tuned_channel(GET, POST), tuned_channel(POST, GET)
    assert list(vars(a)) == list(vars(b))
    assert set(server.CHANNEL_PRESETS) <= set(vars(a))
    for name in server.CHANNEL_SLOTS:
        assert name not in vars(a)  # in slots, where deleting them costs nothing
    assert len(a.transport.value().split(b"HTTP/1.1 200")) == 3  # both requests answered


def test_slots_take_the_per_request_attributes():
    channel = reading_channel(server.channel_class(65536))
    assert (channel._command, channel._path) == (b"GET", b"/x")
    assert "_command" not in vars(channel)


def test_transport_presets_are_file_descriptor_attributes():
    for name in server.TRANSPORT_PRESETS:
        assert hasattr(abstract.FileDescriptor, name), name
