"""The cluster's deployment files, checked by the real tools: the systemd template unit
by ``systemd-analyze verify``, and the nginx sample by a real nginx routing requests to
two stand-in nodes (tiny HTTP servers that say which node they are), so the routing
rules are tested apart from the daemon: a node's own paths go to that node, the rest is
spread, an unknown node is the 404 envelope, and a WebSocket upgrade passes through."""
import http.server
import json
import os
import re
import subprocess
import threading

import pytest

from wsproto import ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, TextMessage
from wsproto.handshake import H11Handshake

from tests.daemon import Client, SocketTab, free_port, twistd_command, wait_until
from tests.test_deploy import Nginx, need, nginx_main_conf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "etc", "nextim@.service")
CLUSTER_SAMPLE = os.path.join(ROOT, "etc", "nginx-nextim-cluster.conf")


def test_template_unit_verifies(tmp_path):
    analyze = need("systemd-analyze")
    text = open(TEMPLATE, encoding="utf-8").read()
    assert re.findall(r"^ExecStart=(\S+)", text, re.M) == ["/usr/local/bin/twistd"]
    # the node id is the instance name, passed to the daemon
    assert "--node-id %i" in text and "EnvironmentFile=/etc/nextim/node-%i.env" in text
    (tmp_path / "nextim@.service").write_text(
        text.replace("ExecStart=/usr/local/bin/twistd", "ExecStart=" + twistd_command()[0], 1))
    # verify needs an instance; systemd finds the template next to it
    instance = tmp_path / "nextim@n1.service"
    os.symlink(tmp_path / "nextim@.service", instance)
    proc = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "nextim@" in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


class StandInNode(http.server.ThreadingHTTPServer):
    """Answers every request with ``{"node": name, "path": ..., "upgrade": ..., "connection": ...}``;
    a real WebSocket handshake (with ``Sec-WebSocket-Key``) is accepted (wsproto) and
    answered with one text frame ``{"node", "path", "host"}``, then closed (1000)."""

    daemon_threads = True

    def __init__(self, name):
        self.name = name
        self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(handler):  # noqa: N805 - the handler, not the server
                self.paths.append(handler.path)
                if handler.headers.get("Sec-WebSocket-Key"):
                    return self.websocket(handler)
                body = json.dumps({"node": self.name, "path": handler.path,
                                   "upgrade": handler.headers.get("Upgrade"),
                                   "connection": handler.headers.get("Connection")}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def websocket(self, handler):
        shake = H11Handshake(ConnectionType.SERVER)
        shake.initiate_upgrade_connection([(k.encode(), v.encode()) for k, v in handler.headers.items()],
                                          handler.path)
        handler.wfile.write(shake.send(AcceptConnection()))
        frame = json.dumps({"node": self.name, "path": handler.path, "host": handler.headers.get("Host")})
        handler.wfile.write(shake.connection.send(TextMessage(frame)))
        handler.wfile.write(shake.connection.send(CloseConnection(1000)))
        handler.wfile.flush()
        handler.close_connection = True

    @property
    def port(self):
        return self.server_address[1]


class ClusterNginx(Nginx):
    """A real nginx running etc/nginx-nextim-cluster.conf, with its node ports replaced."""

    def __init__(self, tmp, node_ports):
        self.binary = need("nginx")
        self.tmp = tmp
        self.port = free_port()
        sample = open(CLUSTER_SAMPLE, encoding="utf-8").read()
        for default, port in zip((8001, 8002), node_ports, strict=True):
            sample, n = re.subn(rf"server 127\.0\.0\.1:{default};", f"server 127.0.0.1:{port};", sample)
            assert n == 2, "each node is named in its own upstream and in nextim_all"
        sample, n = re.subn(r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{self.port};", sample, flags=re.M)
        assert n == 1
        self.conf = nginx_main_conf(tmp, sample)
        self.proc = None


@pytest.fixture
def cluster_nginx(tmp_path):
    nodes = [StandInNode("n1"), StandInNode("n2")]
    nginx = ClusterNginx(tmp_path, [n.port for n in nodes])
    try:
        nginx.start()
        yield nginx, nodes
    finally:
        nginx.stop()
        for node in nodes:
            node.shutdown()
            node.server_close()


def test_cluster_sample_passes_nginx_t(tmp_path):
    nginx = ClusterNginx(tmp_path, [8001, 8002])
    proc = subprocess.run([nginx.binary, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                           "-c", str(nginx.conf)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_node_paths_reach_their_node(cluster_nginx):
    nginx, _ = cluster_nginx
    c = Client(nginx.url, timeout=10)
    for node in ("n1", "n2"):
        for _ in range(3):
            resp = c.get(f"/n/{node}/packets", {"ticket": f"{node}.x"})
            assert resp.status == 200 and resp.json()["node"] == node, resp
            assert resp.json()["path"].startswith(f"/n/{node}/packets?")


def test_unknown_node_is_the_404_envelope(cluster_nginx):
    nginx, nodes = cluster_nginx
    resp = Client(nginx.url, timeout=10).get("/n/n9/packets", {"ticket": "n9.x"})
    assert resp.status == 404
    assert resp.json()["success"] is False and resp.json()["error"] == "invalid_ticket"
    assert not any(p.startswith("/n/n9") for node in nodes for p in node.paths)


def test_a_node_that_is_down_is_the_404_envelope_on_its_path(cluster_nginx):
    nginx, nodes = cluster_nginx
    nodes[1].shutdown()
    nodes[1].server_close()  # n2 is gone (killed): its port refuses connections
    resp = Client(nginx.url, timeout=10).get("/n/n2/packets", {"ticket": "n2.x"})
    assert resp.status == 404, resp  # so the client goes online again (on n1)
    assert resp.json()["error"] == "invalid_ticket"
    assert Client(nginx.url, timeout=10).get("/n/n1/packets").json()["node"] == "n1"


def test_other_calls_are_spread_over_all_nodes(cluster_nginx):
    nginx, _ = cluster_nginx
    c = Client(nginx.url, timeout=10)
    seen = {c.get("/webim/buddies").json()["node"] for _ in range(10)}
    assert seen == {"n1", "n2"}


def test_websocket_upgrade_passes_to_the_node(cluster_nginx):
    nginx, _ = cluster_nginx
    resp = Client(nginx.url, timeout=10).get(
        "/n/n2/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert resp.json()["node"] == "n2"
    assert resp.json()["upgrade"] == "websocket" and resp.json()["connection"].lower() == "upgrade"
    # no upgrade asked: the keepalive-friendly empty Connection header
    plain = Client(nginx.url, timeout=10).get("/n/n2/packets")
    assert plain.json()["upgrade"] is None and not plain.json()["connection"]


def test_a_websocket_handshake_reaches_its_node_with_the_site_host(cluster_nginx):
    nginx, nodes = cluster_nginx
    for node in ("n1", "n2"):
        tab = SocketTab(nginx.url, f"/n/{node}/ws", None, "stand-in", subscribe=False)
        assert tab.wait_ended() == "closed 1000"
        (frame,) = tab.frames
        assert frame["node"] == node and frame["path"] == f"/n/{node}/ws"
        # the forwarding headers survive the location's own proxy_set_header lines
        assert frame["host"] == "127.0.0.1", frame
    wait_until(lambda: all(any(p == f"/n/{n.name}/ws" for p in n.paths) for n in nodes), what="both handshakes")
