"""WebSocket libraries on Twisted compared: Twisted's own ``twisted.web.websocket`` (on
wsproto; what nextim's ``/ws`` uses, docs/design.md#d21-websocket) against autobahn's
``autobahn.twisted.websocket``, serving the same echo/push server.

    python bench/ws_libraries.py --connections 10000

What is measured, per library, at N open connections:

- *idle KB per connection*: (server RSS with N connections open and idle for a few
  seconds − RSS before the first connection) / N;
- *handshake CPU µs*: server CPU time while the N connections were opened / N;
- *push CPU µs per frame*: a control frame ``push`` makes the server send one 100-byte
  text frame to every open connection; ``--pushes`` of them, and the server's CPU time
  for the whole phase divided by the frames it sent (N × pushes);
- *echo CPU µs per frame*: every connection sends a 100-byte text frame and waits for its
  echo, ``--echoes`` rounds; server CPU divided by the frames echoed (one received and
  one sent each).

The server is this file run as ``--serve twisted|autobahn`` on the epoll reactor, pinned
to ``--server-cpu`` with taskset, TCP_NODELAY on each connection in both (autobahn's
default; set by hand for Twisted), no compression, no automatic pings, autobahn's UTF-8
validation and masking with its compiled (NVX) helpers as installed. Server CPU and RSS
are read from /proc, so the client's speed does not enter the CPU figures (it only makes
a phase longer). The client is aiohttp on asyncio (uvloop when installed) pinned to
``--client-cpu``, counting every frame it receives; a phase ends when all have arrived.
Figures are printed and merged into bench/results.json under ``ws_libraries``.
Needs ``pip install autobahn`` (the bench only, not the daemon).
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from servers import HOST, port_free, proc_cpu_seconds, proc_rss_kb, wait_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results.json")
PAYLOAD = "x" * 100


# ---------------------------------------------------------------------------- servers
def serve_twisted(port):
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.websocket import WebSocketResource

    open_ = set()

    class EchoPush:
        """twisted.web.websocket's WebSocketProtocol: echo, or ``push`` to everyone."""

        def negotiationStarted(self, transport):
            self.transport = transport

        def negotiationFinished(self):
            self.transport.transport.setTcpNoDelay(True)
            open_.add(self)

        def textMessageReceived(self, text):
            if text == "push":
                for p in open_:
                    p.transport.sendTextMessage(PAYLOAD)
            else:
                self.transport.sendTextMessage(text)

        def bytesMessageReceived(self, data):
            self.transport.sendBytesMessage(data)

        def pongReceived(self, payload):
            pass

        def connectionLost(self, reason):
            open_.discard(self)

    class Factory:
        def buildProtocol(self, request):
            return EchoPush()

    root = Resource()
    root.putChild(b"ws", WebSocketResource(Factory()))
    reactor.listenTCP(port, Site(root), backlog=4096, interface=HOST)
    reactor.run()


def serve_autobahn(port):
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    open_ = set()
    payload = PAYLOAD.encode()

    class EchoPush(WebSocketServerProtocol):
        def onOpen(self):
            open_.add(self)

        def onMessage(self, data, is_binary):
            if data == b"push":
                for p in open_:
                    p.sendMessage(payload, False)
            else:
                self.sendMessage(data, is_binary)

        def onClose(self, was_clean, code, reason):
            open_.discard(self)

    factory = WebSocketServerFactory(f"ws://{HOST}:{port}")
    factory.protocol = EchoPush
    factory.setProtocolOptions(autoPingInterval=0, tcpNoDelay=True, perMessageCompressionAccept=lambda offers: None)
    reactor.listenTCP(port, factory, backlog=4096, interface=HOST)
    reactor.run()


SERVERS = {"twisted": serve_twisted, "autobahn": serve_autobahn}


# ---------------------------------------------------------------------------- client
class Counter:
    def __init__(self):
        self.frames = 0
        self.event = asyncio.Event()
        self.want = None

    def add(self):
        self.frames += 1
        if self.want is not None and self.frames >= self.want:
            self.event.set()

    async def until(self, total, timeout):
        self.want = total
        if self.frames < total:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), timeout)


async def reader(ws, counter):
    async for msg in ws:
        counter.add()


async def measure(lib, args):
    import aiohttp

    port = args.port
    assert port_free(port), f"port {port} is taken"
    proc = subprocess.Popen(["taskset", "-c", args.server_cpu, sys.executable, os.path.abspath(__file__),
                             "--serve", lib, "--port", str(port)])
    try:
        if not wait_port(port):
            raise RuntimeError(f"{lib} server did not start")
        await asyncio.sleep(1.0)
        pid = proc.pid
        out = {"library": lib, "connections": args.connections, "loadavg_start": loadavg()}
        rss0 = proc_rss_kb(pid)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            counter = Counter()
            sem = asyncio.Semaphore(200)
            sockets = []

            async def connect():
                async with sem:
                    ws = await http.ws_connect(f"ws://{HOST}:{port}/ws", autoping=True, max_msg_size=0)
                sockets.append(ws)
            cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
            await asyncio.gather(*(connect() for _ in range(args.connections)))
            out["connect_s"] = time.monotonic() - t0
            out["handshake_cpu_us"] = 1e6 * (proc_cpu_seconds(pid) - cpu0) / args.connections
            tasks = [asyncio.ensure_future(reader(ws, counter)) for ws in sockets]
            await asyncio.sleep(args.idle)
            c0 = proc_cpu_seconds(pid)
            await asyncio.sleep(2.0)
            out["idle_cpu_pct"] = 100 * (proc_cpu_seconds(pid) - c0) / 2.0
            out["rss_start_kb"] = rss0
            out["rss_idle_kb"] = proc_rss_kb(pid)
            out["idle_kb_per_connection"] = (out["rss_idle_kb"] - rss0) / args.connections

            # push: one control frame, the server writes a frame to every connection
            n = len(sockets)
            cpu0, t0, base = proc_cpu_seconds(pid), time.monotonic(), counter.frames
            ccpu0 = time.process_time()
            for k in range(args.pushes):
                await sockets[0].send_str("push")
                await counter.until(base + n * (k + 1), 120)
            wall = time.monotonic() - t0
            out["push_frames"] = n * args.pushes
            out["push_cpu_us_per_frame"] = 1e6 * (proc_cpu_seconds(pid) - cpu0) / out["push_frames"]
            out["push_frames_per_s"] = out["push_frames"] / wall
            out["push_client_cpu_pct"] = 100 * (time.process_time() - ccpu0) / wall

            # echo: every connection sends one frame per round and gets it back
            cpu0, t0, base = proc_cpu_seconds(pid), time.monotonic(), counter.frames
            ccpu0 = time.process_time()
            for k in range(args.echoes):
                await asyncio.gather(*(ws.send_str(PAYLOAD) for ws in sockets))
                await counter.until(base + n * (k + 1), 120)
            wall = time.monotonic() - t0
            out["echo_frames"] = n * args.echoes
            out["echo_cpu_us_per_frame"] = 1e6 * (proc_cpu_seconds(pid) - cpu0) / out["echo_frames"]
            out["echo_frames_per_s"] = out["echo_frames"] / wall
            out["echo_client_cpu_pct"] = 100 * (time.process_time() - ccpu0) / wall
            out["rss_end_kb"] = proc_rss_kb(pid)
            out["loadavg_end"] = loadavg()
            for ws in sockets:
                await ws.close()
            for t in tasks:
                t.cancel()
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def versions():
    import autobahn
    import twisted
    import wsproto
    return {"twisted": twisted.__version__, "wsproto": wsproto.__version__, "autobahn": autobahn.__version__}


async def main(args):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for lib in args.libraries.split(","):
        print(f"{lib}: {args.connections} connections (load avg {loadavg()})", flush=True)
        r = await measure(lib, args)
        rows.append(r)
        print(f"  idle {r['idle_kb_per_connection']:.1f} KB/connection, handshake {r['handshake_cpu_us']:.0f} µs, "
              f"push {r['push_cpu_us_per_frame']:.1f} µs/frame ({r['push_frames_per_s']:.0f} frames/s, client "
              f"{r['push_client_cpu_pct']:.0f}% CPU), echo {r['echo_cpu_us_per_frame']:.1f} µs/frame "
              f"({r['echo_frames_per_s']:.0f}/s, client {r['echo_client_cpu_pct']:.0f}% CPU); load avg "
              f"{r['loadavg_end']}", flush=True)
    print()
    print("| library | connections | idle KB per connection | handshake CPU µs | push CPU µs per frame | "
          "echo CPU µs per frame | load avg |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['library']} | {r['connections']} | {r['idle_kb_per_connection']:.1f} | "
              f"{r['handshake_cpu_us']:.0f} | {r['push_cpu_us_per_frame']:.1f} | {r['echo_cpu_us_per_frame']:.1f} | "
              f"{r['loadavg_end']} |")
    res = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            res = json.load(f)
    res["ws_libraries"] = {"command": "python bench/ws_libraries.py " + " ".join(sys.argv[1:]),
                           "started": time.strftime("%Y-%m-%d %H:%M"), "versions": versions(), "rows": rows}
    with open(RESULTS, "w") as f:
        json.dump(res, f, indent=1)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", choices=sorted(SERVERS), help="(internal) run one server in this process")
    p.add_argument("--port", type=int, default=18300)
    p.add_argument("--libraries", default="twisted,autobahn")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--pushes", type=int, default=20, help="push rounds (each: one frame to every connection)")
    p.add_argument("--echoes", type=int, default=10, help="echo rounds (each: one frame from every connection)")
    p.add_argument("--idle", type=float, default=3.0, help="seconds idle before RSS is read")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    return p.parse_args()


if __name__ == "__main__":
    args = parse()
    if args.serve:
        SERVERS[args.serve](args.port)
        sys.exit(0)
    os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
