"""Cluster benchmark (docs/scaling.md, docs/benchmarks.md#cluster): one node against
two nodes plus Redis, on one shared PostgreSQL schema, driven by bench/loadgen.py.

Two scenarios:

- ``--scenario deliver``: N users (half on each node in cluster mode: user ``u<i>`` logs
  in on node ``i % nodes`` and sends its messages there; its poll goes to the
  ``connection.server`` that ``online`` answered), messages at ``--rate`` msgs/s, half
  to a buddy (``u<i±1>``, always on the other node), half to the user's room of ten
  (members on both nodes). Reports server CPU-seconds per delivered message (every
  node plus Redis), p50/p99, lost and duplicated.
- ``--scenario parked``: N users logged in with a poll parked, nothing sent; reports
  RSS per idle user per node and the RSS of Redis.

Every server process (the nodes, Redis) is pinned to ``--server-cpu`` and the generator
to ``--generator-cpu``, so "2 nodes" here means two processes sharing one core: the
figure that matters is CPU per delivery, not throughput. PostgreSQL runs where it
runs (the machine's own service) and its CPU is not counted, for both modes alike.

    python bench/cluster.py --scenario deliver --nodes 1 --users 10000 --rate 200
    python bench/cluster.py --scenario deliver --nodes 2 --users 10000 --rate 200
    python bench/cluster.py --scenario parked --nodes 2 --users 20000

Each run appends a row to bench/work/cluster-results.json. Nothing here is imported
by the daemon.
"""
import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's nextim_twisted (schema), as the nodes run

import orjson  # noqa: E402

import loadgen  # noqa: E402
from servers import (ADMIN_KEY, HOST, ROOM_SIZE, ROOT, TOKEN_SECRET, WORK, proc_cpu_seconds,  # noqa: E402
                     proc_rss_kb, raise_fd_limit, room_of, wait_port)

POSTGRES_DSN = os.environ.get("NEXTIM_BENCH_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
RESULTS = os.path.join(WORK, "cluster-results.json")


class Redis:
    """A private redis-server (no persistence) pinned like the nodes."""

    def __init__(self, cpu, port):
        self.cpu, self.port = cpu, port
        self.dir = os.path.join(WORK, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.cpu, shutil.which("redis-server") or "/usr/bin/redis-server",
             "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port, 10):
            raise RuntimeError("redis-server did not start")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Node:
    """One ``twistd -n nextim`` node on PostgreSQL (cluster mode when ``redis_url``)."""

    protocol = "nextim"
    name = "nextim"

    def __init__(self, node_id, port, cpu, schema, redis_url=None, prefix=None):
        self.node_id, self.port, self.cpu = node_id, port, cpu
        self.base = f"http://{HOST}:{port}"
        self.dir = os.path.join(WORK, "cluster-" + node_id)
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "nextim.toml")
        cluster = ""
        if redis_url:
            cluster = f'[cluster]\nnode_id = "{node_id}"\nredis_url = "{redis_url}"\nredis_prefix = "{prefix}"\n'
        with open(self.config, "w") as f:
            f.write(f"""# written by bench/cluster.py
[server]
listen = "tcp:{port}:interface={HOST}:backlog=4096"
public_url = "{self.base}"
[storage]
backend = "postgres"
dsn = "{POSTGRES_DSN}"
schema = "{schema}"
[auth]
method = "token"
token_secret = "{TOKEN_SECRET}"
[admin]
api_key = "{ADMIN_KEY}"
[limits]
messages_per_minute = 100000
presences_per_minute = 100000
{cluster}""")
        self.proc = None

    def start(self):
        cmd = ["taskset", "-c", self.cpu, sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", "--logfile", os.path.join(self.dir, "twistd.log"), "nextim",
               "--config", self.config]
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(os.path.join(self.dir, "stdout.log"), "ab"),
                                     stderr=subprocess.STDOUT)
        if not wait_port(self.port, 60):
            raise RuntimeError("nextim node did not start; see " + self.dir)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def seed(schema, n):
    """Users u0…u{n-1}, a buddy ring and rooms of ten, in a fresh schema."""
    import psycopg

    from nextim_twisted.store import schema as schema_module
    with psycopg.connect(POSTGRES_DSN, autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute(f'CREATE SCHEMA "{schema}"')
        cur.execute(f'SET search_path TO "{schema}"')
        schema_module.migrate(cur.execute, cur.fetchone, "postgres")
        now = int(time.time() * 1000)
        cur.executemany("INSERT INTO users (id, nick, created) VALUES (%s, %s, %s)",
                        [(f"u{i}", f"User {i}", now) for i in range(n)])
        pairs = [(f"u{i}", f"u{(i + 1) % n}") for i in range(n)]
        cur.executemany("INSERT INTO buddies (user_id, buddy_id, grp) VALUES (%s, %s, 'friends') "
                        "ON CONFLICT DO NOTHING", pairs + [(b, a) for a, b in pairs])
        rooms = (n + ROOM_SIZE - 1) // ROOM_SIZE
        cur.executemany("INSERT INTO rooms (id, nick) VALUES (%s, %s)", [(f"r{r}", f"Room {r}") for r in range(rooms)])
        cur.executemany("INSERT INTO room_members (room_id, user_id) VALUES (%s, %s)",
                        [(f"r{room_of(i)}", f"u{i}") for i in range(n)])
        conn.commit()


def drop(schema):
    import psycopg
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class ClusterUser(loadgen.NextimUser):
    """A NextimUser that logs in on node ``i % nodes`` and polls the URL ``online``
    answered (``/n/<node>/packets`` in cluster mode)."""

    def __init__(self, gen, i):
        super().__init__(gen, i)
        self.base = gen.bases[i % len(gen.bases)]
        self.poll_url = self.base + "/packets"

    async def login(self):
        while self.gen.running:
            try:
                async with self.gen.http.post(self.base + "/webim/online",
                                              headers={"Authorization": "Bearer " + self.token},
                                              data={"show": "available"}) as r:
                    body = await r.read()
                    if r.status == 200:
                        answer = orjson.loads(body)
                        self.ticket = answer["connection"]["ticket"]
                        self.poll_url = answer["connection"]["server"]
                        self.seq = None
                        self.ready = True
                        self.logins += 1
                        if self.task is None or self.task.done():
                            self.task = asyncio.ensure_future(self.poll_loop())
                        return
            except (loadgen.aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(0.5 + loadgen.random.random())

    async def poll_loop(self):
        http, stats = self.gen.http, self.gen.stats
        while self.gen.running:
            params = {"ticket": self.ticket}
            if self.seq is not None:
                params["ack"] = str(self.seq)
            self.inflight += 1
            try:
                async with http.get(self.poll_url, params=params) as r:
                    body, status = await r.read(), r.status
            except (loadgen.aiohttp.ClientError, asyncio.TimeoutError, OSError):
                status = None
            finally:
                self.inflight -= 1
            if not self.gen.running:
                return
            if status == 200:
                env = orjson.loads(body)
                if env.get("status") == "stopped":
                    return
                for m in env.get("messages", ()):
                    hit = loadgen.MSG_RE.match(m.get("body", ""))
                    if hit:
                        stats.got(int(hit.group(1)), self.i)
                self.seq = env.get("seq", self.seq)
            else:
                self.ready = False
                await asyncio.sleep(0.5 + loadgen.random.random())
                if status is not None:
                    await self.login_again()


class ClusterGenerator(loadgen.Generator):
    def __init__(self, bases, n, **kw):
        self.bases = bases
        saved = loadgen.NextimUser
        loadgen.NextimUser = ClusterUser  # Generator builds its users from this name
        try:
            super().__init__(type("S", (), {"protocol": "nextim", "base": bases[0]})(), n, **kw)
        finally:
            loadgen.NextimUser = saved


def cpu_of(pids):
    return sum(proc_cpu_seconds(p) or 0.0 for p in pids)


async def run(args):
    raise_fd_limit()
    schema = "nextim_bench_" + secrets.token_hex(4)
    prefix = "bench" + secrets.token_hex(3)
    redis = Redis(args.server_cpu, args.redis_port) if args.nodes > 1 else None
    nodes = [Node(f"n{k + 1}", args.port + k, args.server_cpu, schema,
                  redis_url=f"redis://{HOST}:{args.redis_port}/0" if redis else None, prefix=prefix)
             for k in range(args.nodes)]
    out = {"scenario": args.scenario, "nodes": args.nodes, "users": args.users, "rate": args.rate,
           "duration": args.duration, "started": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python bench/cluster.py " + " ".join(sys.argv[1:])}
    gen = None
    try:
        seed(schema, args.users)
        if redis:
            redis.start()
        for node in nodes:
            node.start()
        await asyncio.sleep(1.0)
        pids = [n.pid for n in nodes] + ([redis.pid] if redis else [])
        rss0 = {n.node_id: proc_rss_kb(n.pid) for n in nodes}
        redis_rss0 = proc_rss_kb(redis.pid) if redis else None
        gen = ClusterGenerator([n.base for n in nodes], args.users, room_fraction=0.5, concurrency=100)
        await gen.open()
        t0 = time.monotonic()
        out["logins_per_s"] = await gen.login_all()
        while gen.all_parked() < args.users and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.2)
        out["parked"] = gen.all_parked()
        await asyncio.sleep(3)
        if args.scenario == "parked":
            out["rss_idle_kb"] = {n.node_id: proc_rss_kb(n.pid) for n in nodes}
            per = [(out["rss_idle_kb"][k] - rss0[k]) / (args.users / args.nodes) for k in rss0]
            out["kb_per_idle_user"] = sum(per) / len(per)
            if redis:
                out["redis_rss_kb"] = proc_rss_kb(redis.pid)
                out["redis_rss_start_kb"] = redis_rss0
        else:
            c0 = cpu_of(pids)
            ph = await gen.message_phase(args.rate, args.duration, drain=args.drain)
            cpu = cpu_of(pids) - c0
            ph["server_cpu_s"] = cpu
            ph["cpu_ms_per_delivery"] = 1000.0 * cpu / ph["delivered"] if ph["delivered"] else None
            out.update(ph)
    finally:
        if gen is not None:
            await gen.close()
        for node in nodes:
            node.stop()
        if redis:
            redis.stop()
        drop(schema)
    print(json.dumps(out, indent=1, default=str))
    rows = []
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            rows = json.load(f)
    rows.append(out)
    with open(RESULTS, "w") as f:
        json.dump(rows, f, indent=1, default=str)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=("deliver", "parked"), default="deliver")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--rate", type=float, default=200.0, help="messages/s offered in total")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--drain", type=float, default=15.0)
    p.add_argument("--port", type=int, default=18100)
    p.add_argument("--redis-port", type=int, default=18199)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--generator-cpu", default="1")
    return p.parse_args()


if __name__ == "__main__":
    a = parse()
    os.sched_setaffinity(0, {int(c) for c in a.generator_cpu.split(",")})
    asyncio.run(run(a))
