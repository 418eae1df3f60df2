"""Side-by-side benchmark of nextim-twisted, Prosody and ejabberd over HTTP long polling
(nextim's ``/packets``, BOSH) and over WebSocket (nextim's ``/ws``, XMPP over WebSocket).

    python bench/compare.py --levels 100,1000,10000
    python bench/compare.py --servers nextim-ws,nextim,prosody-ws,ejabberd-ws --levels 10000

Server names: ``nextim``, ``prosody``, ``ejabberd`` (long polling, bench/loadgen.py) and
``nextim-ws``, ``prosody-ws``, ``ejabberd-ws`` (WebSocket, bench/wsload.py, which can
spread the users over ``--procs`` generator processes).

For each server and each level N it starts the server fresh (pinned to CPU 0 with
taskset; this process pins itself to CPU 1), logs N users in, lets them idle, sends
messages at ``--per-user-rate`` for ``--duration`` seconds, restarts the server and
times the recovery of all N users, then stops it. ``--sweep-rates`` adds, at the
``--sweep-users`` level, a ramp of total send rates to find the sustained throughput.
Results go to ``bench/results.json`` (merged with earlier runs, so servers can be
measured one at a time) and to ``docs/benchmarks.md`` + ``docs/benchmarks.png``
(``--report-only`` rewrites those from the saved results).
"""
import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import servers  # noqa: E402
from loadgen import Generator  # noqa: E402
from servers import proc_cpu_seconds, proc_rss_kb, raise_fd_limit  # noqa: E402
from wsload import WsFleet  # noqa: E402

RESULTS = os.path.join(servers.HERE, "results.json")  # committed: --report-only rebuilds docs/
DOCS = os.path.join(servers.ROOT, "docs")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class CpuMeter:
    """CPU % of one pid between ``start()`` and ``stop()`` (100 = one core)."""

    def __init__(self, pid):
        self.pid = pid

    def start(self):
        self.c0, self.t0 = proc_cpu_seconds(self.pid), time.monotonic()
        return self

    def stop(self):
        c1 = proc_cpu_seconds(self.pid)
        if c1 is None or self.c0 is None:
            return None
        return 100.0 * (c1 - self.c0) / (time.monotonic() - self.t0)


def server_stalls(server):
    """nextim only: cumulative counts from its ``/metrics`` (reactor lag over 100/250/500
    ms, GC collections by generation and their total seconds); None for the others."""
    if server.protocol not in ("nextim", "nextim-ws"):
        return None
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "nextim_reactor_lag_seconds_bucket":
                out[f"lag_le_{smp.labels['le']}"] = smp.value
            elif smp.name == "nextim_reactor_lag_seconds_count":
                out["lag_count"] = smp.value
            elif smp.name == "nextim_gc_pause_seconds_count":
                out[f"gc{smp.labels['generation']}_count"] = smp.value
            elif smp.name == "nextim_gc_pause_seconds_sum":
                out[f"gc{smp.labels['generation']}_s"] = smp.value
            elif smp.name == "nextim_gc_pause_seconds_bucket" and smp.labels["le"] == "0.1":
                out[f"gc{smp.labels['generation']}_le_0.1"] = smp.value
    return out


def stall_delta(before, after):
    """What :func:`server_stalls` counted between two scrapes, as phase figures."""
    if before is None or after is None:
        return {}
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    out = {f"server_lags_over_{ms}ms": d["lag_count"] - d[f"lag_le_{le}"]
           for ms, le in ((100, "0.1"), (250, "0.25"), (500, "0.5"))}
    for g in "012":
        out[f"server_gc{g}_collections"] = d.get(f"gc{g}_count", 0)
        out[f"server_gc{g}_over_100ms"] = d.get(f"gc{g}_count", 0) - d.get(f"gc{g}_le_0.1", 0)
        out[f"server_gc{g}_ms"] = 1000.0 * d.get(f"gc{g}_s", 0)
    return out


async def wait_recovered(gen, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await gen.count_parked() >= gen.n:
            return time.monotonic() - t0
        await asyncio.sleep(0.05 if isinstance(gen, Generator) else 0.25)
    return None


def make_generator(server, n, args):
    """The long-poll generator (nextim, BOSH) or the WebSocket fleet (``*-ws``)."""
    if server.protocol in ("nextim-ws", "xmpp-ws"):
        cpus = [int(c) for c in args.generator_cpu.split(",")]
        return WsFleet(server, n, procs=args.procs, cpus=cpus, room_fraction=args.room_fraction,
                       concurrency=args.concurrency, ack_interval=args.ack_interval)
    return Generator(server, n, room_fraction=args.room_fraction, concurrency=args.concurrency,
                     reconnect_spread=args.reconnect_spread)


async def run_level(server, n, args, rates=None):
    """One server, one level: returns a dict of figures (and phases for a sweep)."""
    out = {"server": server.name, "users": n, "loadavg_start": loadavg()}
    registers_live = isinstance(server, servers.Ejabberd)   # ejabberd registers through its API
    if not registers_live:
        server.seed(n)
    server.start()
    if registers_live:
        server.seed(n)
    await asyncio.sleep(1.0)
    pid = server.pid
    out["rss_start_kb"] = proc_rss_kb(pid)
    gen = make_generator(server, n, args)
    await gen.open()
    try:
        cpu = CpuMeter(pid).start()
        gcpu0, t0 = await generator_cpu(gen), time.monotonic()
        out["logins_per_s"] = await gen.login_all()
        out["login_server_cpu_pct"] = cpu.stop()
        out["login_generator_cpu_pct"] = 100 * (await generator_cpu(gen) - gcpu0) / (time.monotonic() - t0)
        await gen.setup_rooms()
        ok = await wait_recovered(gen, 60)
        out["all_parked"] = ok is not None
        await asyncio.sleep(args.idle)
        cpu = CpuMeter(pid).start()
        await asyncio.sleep(3)
        out["idle_server_cpu_pct"] = cpu.stop()
        out["rss_idle_kb"] = proc_rss_kb(pid)
        out["rss_per_idle_user_kb"] = (out["rss_idle_kb"] - out["rss_start_kb"]) / n
        phases = []
        for rate in (rates or [args.per_user_rate * n]):
            cpu = CpuMeter(pid).start()
            stalls0 = server_stalls(server)
            prof = start_profile(server, rate, args) if args.profile else None
            ph = await gen.message_phase(rate, args.duration, drain=args.drain)
            ph["server_cpu_pct"] = cpu.stop()
            if prof is not None:
                ph["profile"] = finish_profile(*prof)
            ph.update(stall_delta(stalls0, server_stalls(server)))
            ph["rss_kb"] = proc_rss_kb(pid)
            ph["loadavg"] = loadavg()
            phases.append(ph)
            print(f"  {server.name} n={n} rate={rate:.0f}/s: delivered {ph['delivered_per_s']:.0f}/s "
                  f"p50 {fmt(ph['p50_ms'])} p99 {fmt(ph['p99_ms'])} ms lost {ph['lost']} dup {ph['duplicates']} "
                  f"server cpu {fmt(ph['server_cpu_pct'])}% gen cpu {ph['generator_cpu_pct']:.0f}%", flush=True)
            print("    stalls: " + ", ".join(f"{k} {fmt(v)}" for k, v in ph.items()
                                            if k.startswith(("server_lags", "server_gc", "generator_"))), flush=True)
            if rates and ((ph["lost"] and not args.sweep_past_losses) or (ph["p99_ms"] or 0) > args.sweep_p99_stop):
                break
            await asyncio.sleep(2)
        out["phases"] = phases
        if not args.no_restart:
            gen.stats.recording = False
            await gen.forget()
            t0 = time.monotonic()
            server.restart()
            t_up = time.monotonic()
            out["restart_down_s"] = t_up - t0
            cpu = CpuMeter(server.pid).start()  # the new process
            gcpu0, tr0 = await generator_cpu(gen), time.monotonic()
            rec = await wait_recovered(gen, args.recovery_timeout)
            out["recovery_server_cpu_pct"] = cpu.stop()
            out["recovery_generator_cpu_pct"] = 100 * (await generator_cpu(gen) - gcpu0) / (time.monotonic() - tr0)
            out["recovery_s"] = rec
            out["reconnect_spread_s"] = args.reconnect_spread
            out["recovered"] = await gen.count_parked()
            times = sorted(gen.online_times)
            if times:
                # how long one ``online`` took under the herd (nextim; the request alone,
                # not the client's retry waits)
                out["recovery_online_p50_ms"] = 1000 * times[len(times) // 2]
                out["recovery_online_p99_ms"] = 1000 * times[min(len(times) - 1, int(len(times) * 0.99))]
                out["recovery_online_max_ms"] = 1000 * times[-1]
                print(f"  {server.name} n={n} recovery {fmt(rec, 1)} s, online p50 "
                      f"{fmt(out['recovery_online_p50_ms'])} p99 {fmt(out['recovery_online_p99_ms'])} "
                      f"max {fmt(out['recovery_online_max_ms'])} ms; server cpu "
                      f"{fmt(out['recovery_server_cpu_pct'])}% gen cpu {fmt(out['recovery_generator_cpu_pct'])}%",
                      flush=True)
        out["loadavg_end"] = loadavg()
    finally:
        await gen.close()
        server.stop()
    return out


def start_profile(server, rate, args):
    """nextim only: py-spy samples the daemon (100 Hz, all threads, idle samples left
    out) over the send phase of one rate; returns what :func:`finish_profile` reads."""
    if server.protocol not in ("nextim", "nextim-ws"):
        return None
    path = os.path.join(server.dir, f"profile-{server.name}-{rate:.0f}.txt")
    proc = subprocess.Popen(["py-spy", "record", "-p", str(server.pid), "-d", str(int(args.duration)), "-r", "100",
                             "--format", "raw", "-o", path, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, path


#: leaf functions where a sampled thread waits rather than runs (epoll, the thread
#: pool's idle workers): left out of the percentages
PROFILE_WAITS = ("doPoll", "wait", "acquire", "select", "poll")


def finish_profile(proc, path, top=15):
    """Where the daemon's CPU went: the functions with most samples on the stack
    (inclusive) and at the top of it (self), in % of the samples where a thread ran
    (waiting in epoll or on the thread pool's queue left out); printed and returned."""
    import re

    proc.wait(60)
    frame_re = re.compile(r"^(.*) \((?:.*/)?([^/]*?)(?::\d+)?\)$")
    incl, own, total, idle = {}, {}, 0, 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = []
            for fr in stack.split(";"):
                m = frame_re.match(fr)
                frames.append(f"{m.group(1)} ({m.group(2)})" if m else fr)
            if frames[-1].split(" (")[0].split(".")[-1] in PROFILE_WAITS:
                idle += n
                continue
            total += n
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return None

    def best(d):
        return [(k, round(100.0 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    out = {"samples": total, "idle_samples": idle, "file": os.path.relpath(path, servers.ROOT),
           "self": best(own), "inclusive": best(incl)}
    print(f"    profile ({total} running samples, {idle} waiting; {out['file']}): self " +
          "; ".join(f"{k} {v}%" for k, v in out["self"][:12]), flush=True)
    return out


async def generator_cpu(gen):
    """CPU seconds of the generator so far: this process, plus the WebSocket workers."""
    own = time.process_time()
    if isinstance(gen, WsFleet):
        own += await gen.cpu_seconds()
    return own


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def load_results():
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {"levels": [], "sweeps": [], "runs": []}


def save_results(res):
    os.makedirs(servers.WORK, exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(res, f, indent=1)


def merge(rows, new, keys):
    rows = [r for r in rows if tuple(r.get(k) for k in keys) != tuple(new.get(k) for k in keys)]
    rows.append(new)
    return rows


def versions():
    def cmd(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            return "?"
    pro = cmd("dpkg-query", "-W", "-f=${Version}", "prosody")
    ej = cmd("dpkg-query", "-W", "-f=${Version}", "ejabberd")
    import twisted
    return {"prosody": pro, "ejabberd": ej, "twisted": twisted.__version__, "python": platform.python_version()}


def write_report(res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(DOCS, exist_ok=True)
    names = ["nextim-ws", "nextim", "prosody-ws", "prosody", "ejabberd-ws", "ejabberd"]
    colors = {"nextim": "tab:blue", "prosody": "tab:orange", "ejabberd": "tab:green",
              "nextim-ws": "tab:purple", "prosody-ws": "tab:red", "ejabberd-ws": "tab:olive"}
    levels = sorted(res["levels"], key=lambda r: (names.index(r["server"]), r["users"]))
    sweeps = sorted(res["sweeps"], key=lambda r: names.index(r["server"]))
    fig, axes = plt.subplots(1, 2 if sweeps else 1, figsize=(12 if sweeps else 6.5, 4.5), squeeze=False)
    ax = axes[0][0]
    for name in names:
        rows = [r for r in levels if r["server"] == name and r["phases"]]
        if rows:
            xs = [r["users"] for r in rows]
            ax.plot(xs, [r["phases"][0]["p99_ms"] for r in rows], "o-", color=colors[name], label=f"{name} p99")
            ax.plot(xs, [r["phases"][0]["p50_ms"] for r in rows], "x--", color=colors[name], alpha=0.6,
                    label=f"{name} p50")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("online users (each sending at the per-user rate)")
    ax.set_ylabel("delivery latency, ms")
    ax.set_title("Latency against users")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if sweeps:
        ax = axes[0][1]
        for s in sweeps:
            ph = s["phases"]
            ax.plot([p["delivered_per_s"] for p in ph], [p["p99_ms"] for p in ph], "o-",
                    color=colors[s["server"]], label=f"{s['server']} p99 ({s['users']} users)")
        ax.set_yscale("log")
        ax.set_xlabel("delivered messages / s")
        ax.set_ylabel("p99 delivery latency, ms")
        ax.set_title("Latency against delivered rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, "benchmarks.png"), dpi=110)

    v = res.get("versions", {})
    lines = [
        "# Benchmarks: nextim-twisted, Prosody and ejabberd over HTTP long polling and WebSocket",
        "",
        "Written by `python bench/compare.py` (see the command lines below) from the raw figures in",
        "`bench/results.json` (`--report-only` rebuilds this page from them). Every row comes from",
        "one run on a 2-core machine: the server is pinned to CPU 0 and the load generator to CPU 1",
        "(`taskset`); other processes ran meanwhile (the machine's services; during the WebSocket",
        "runs other work too), so the load average at measurement time is given with each row.",
        "",
        f"Versions: Python {v.get('python', '?')}, Twisted {v.get('twisted', '?')}, "
        f"Prosody {v.get('prosody', '?')} (mod_bosh, mod_websocket), ejabberd {v.get('ejabberd', '?')} "
        "(mod_bosh, ejabberd_http_ws).",
        "",
        "## Scenario",
        "",
        "Each simulated user is one browser tab. nextim: `webim/online` with a JWT (token auth),",
        "then `/packets` always parked with `ack=<last seq>`, messages by `webim/message`.",
        "Prosody/ejabberd: BOSH (XEP-0124/0206) session creation, SASL PLAIN, restart, bind,",
        "session, initial presence, MUC join (owner first, instant room), then at most two",
        "requests out with one held (hold=1, wait=25, like Strophe.js); messages ride on the next",
        "request. Over WebSocket (servers named `*-ws`, generator `bench/wsload.py`): nextim",
        "`webim/online` over HTTP for the ticket, then one socket per user (`subscribe`, one",
        "envelope per frame, `ack <seq>` at most once a second, messages as JSON call frames",
        "on the socket, [D21](design.md#d21-websocket)); Prosody/ejabberd: XMPP over WebSocket",
        "(RFC 7395: `<open/>` framing, SASL PLAIN, restart, bind, session, presence, MUC join),",
        "messages as stanzas on the socket. Users are in rooms of 10; half the messages go to a buddy (`u<i±1>`), half to",
        "the room (9 recipients). Latency is send → arrival on the recipient's poll or socket, measured in",
        "the generator. *Lost* = a recipient that had not received a message 15 s after the",
        "last send; *dup* = a second arrival of the same message at the same recipient.",
        "*delivered/s* counts arrivals over the send phase plus the drain (so an overloaded",
        "server shows its real throughput); *server CPU %* is over the same span (100 = one",
        "core); *gen CPU %* is the generator's own CPU (it has one core: near 100 it is the",
        "bottleneck). *KB per idle user* = (RSS with N users idle − RSS before the first",
        "login) / N. *Recovery* = seconds from the restarted server accepting connections",
        "until every user has logged in again and has a poll out (clients retry after",
        "0.5–1.5 s, like a browser). File descriptors: the script raises its own limit (and",
        "so the servers') to the hard limit (20 000 here); 10 000 users need ~10 000 on each",
        "side.",
        "",
        "Differences that favour the XMPP servers: nextim commits every message to SQLite",
        "(WAL, `synchronous = NORMAL`) before answering and routing it ([D7](design.md#d7-messages)), keeps",
        "presence for buddies (ring of buddies in the directory) and answers `online` with",
        "buddies, rooms and history; the XMPP servers store nothing (no MAM, no offline",
        "storage) and have empty rosters (users registered by the script, no subscriptions).",
        "",
        "## Load levels",
        "",
        "| server | users | logins/s | RSS idle (MB) | KB per idle user | msgs/s offered | delivered/s | p50 ms | p95 ms | p99 ms | lost | dup | server CPU % | gen CPU % | recovery s | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in levels:
        p = r["phases"][0] if r["phases"] else {}
        rec = r.get("recovery_s")
        lines.append(
            f"| {r['server']} | {r['users']} | {fmt(r.get('logins_per_s'))} | {fmt(r['rss_idle_kb'] / 1024, 1)} | "
            f"{fmt(r['rss_per_idle_user_kb'], 1)} | {fmt(p.get('rate_offered'))} | "
            f"{fmt(p.get('delivered_per_s'))} | {fmt(p.get('p50_ms'), 1)} | {fmt(p.get('p95_ms'), 1)} | "
            f"{fmt(p.get('p99_ms'), 1)} | {p.get('lost', '–')} | {p.get('duplicates', '–')} | "
            f"{fmt(p.get('server_cpu_pct'))} | {fmt(p.get('generator_cpu_pct'))} | "
            f"{fmt(rec, 1) if rec is not None else 'not all (' + str(r.get('recovered')) + ')'} | "
            f"{p.get('loadavg', r['loadavg_start'])} |")
    commands = list(dict.fromkeys(r.get("command") for r in levels if r.get("command")))
    lines += [""] + [f"Command: `{c}`" for c in commands]
    if sweeps:
        lines += ["", "## Throughput: ramp of send rates", "",
                  "| server | users | offered msgs/s | delivered/s | p50 ms | p99 ms | lost | dup | server CPU % | gen CPU % | load avg |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for s in sweeps:
            for p in s["phases"]:
                lines.append(
                    f"| {s['server']} | {s['users']} | {fmt(p['rate_offered'])} | {fmt(p['delivered_per_s'])} | "
                    f"{fmt(p['p50_ms'], 1)} | {fmt(p['p99_ms'], 1)} | {p['lost']} | {p['duplicates']} | "
                    f"{fmt(p['server_cpu_pct'])} | {fmt(p['generator_cpu_pct'])} | {p['loadavg']} |")
        for s in sweeps:
            if s.get("command"):
                lines.append(f"\n{s['server']}: `{s['command']}`")
    lines += ["", "![latency against load](benchmarks.png)", ""]
    # hand-written: the WebSocket run's reading and the library comparison, the long-poll
    # run's reading, the cluster rows
    for name in ("websocket.md", "notes.md", "cluster.md"):
        notes = os.path.join(servers.HERE, name)
        if os.path.exists(notes):
            with open(notes) as f:
                lines += [f.read()]
    with open(os.path.join(DOCS, "benchmarks.md"), "w") as f:
        f.write("\n".join(lines))


async def main(args):
    res = load_results()
    res["versions"] = versions()
    if args.report_only:
        write_report(res)
        return
    command = "python bench/compare.py " + " ".join(a if a else '""' for a in sys.argv[1:])
    res["runs"].append({"command": command, "started": time.strftime("%Y-%m-%d %H:%M"),
                        "fd_limit": raise_fd_limit(), "loadavg": loadavg()})
    names = args.servers.split(",")
    levels = [int(x) for x in args.levels.split(",") if x]
    for name in names:
        for n in levels:
            server = servers.SERVERS[name](cpu=args.server_cpu)
            print(f"{name}: {n} users (load avg {loadavg()})", flush=True)
            r = await run_level(server, n, args)
            r["command"] = command
            res["levels"] = merge(res["levels"], r, ("server", "users"))
            save_results(res)
            print(f"  logins/s {fmt(r['logins_per_s'])}, {fmt(r['rss_per_idle_user_kb'], 1)} KB/idle user, "
                  f"recovery {fmt(r.get('recovery_s'), 1)} s", flush=True)
        if args.sweep_rates:
            server = servers.SERVERS[name](cpu=args.server_cpu)
            rates = [float(x) for x in args.sweep_rates.split(",")]
            print(f"{name}: sweep at {args.sweep_users} users", flush=True)
            r = await run_level(server, args.sweep_users, args, rates=rates)
            r["command"] = command
            res["sweeps"] = merge(res["sweeps"], r, ("server",))
            save_results(res)
    if not args.no_report:
        write_report(res)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="100,1000,10000", help="comma-separated user counts")
    p.add_argument("--servers", default="nextim,prosody,ejabberd")
    p.add_argument("--per-user-rate", type=float, default=0.05, help="messages/s per user (0.05 = one every 20 s)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of sending per phase")
    p.add_argument("--drain", type=float, default=15.0)
    p.add_argument("--idle", type=float, default=3.0, help="seconds of idling before RSS is read")
    p.add_argument("--room-fraction", type=float, default=0.5)
    p.add_argument("--concurrency", type=int, default=100, help="logins in flight at once")
    p.add_argument("--sweep-rates", default="", help="e.g. 250,500,1000,2000: total msgs/s ramp")
    p.add_argument("--sweep-users", type=int, default=10000)
    p.add_argument("--sweep-p99-stop", type=float, default=2000.0, help="stop the ramp above this p99 (ms)")
    p.add_argument("--sweep-past-losses", action="store_true",
                   help="go on with the ramp after a phase that lost messages")
    p.add_argument("--no-restart", action="store_true")
    p.add_argument("--recovery-timeout", type=float, default=180.0)
    p.add_argument("--reconnect-spread", type=float, default=0.0,
                   help="seconds over which nextim users whose session is gone spread their new online "
                        "(the shipped client: 4); 0 = all at once")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--generator-cpu", default="1",
                   help="CPUs of the generator (comma-separated; WebSocket workers take them in turn)")
    p.add_argument("--procs", type=int, default=1, help="WebSocket generator worker processes")
    p.add_argument("--ack-interval", type=float, default=5.0,
                   help="nextim-ws: seconds between a socket's 'ack <seq>' frames (only when the seq moved); "
                        "5 as the shipped web client (WS_ACK_INTERVAL_MS)")
    p.add_argument("--profile", action="store_true",
                   help="nextim: py-spy the daemon during each send phase (files under bench/work/)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-report", action="store_true", help="save results.json but leave docs/ alone")
    return p.parse_args()


if __name__ == "__main__":
    args = parse()
    if not args.report_only:
        os.sched_setaffinity(0, {int(c) for c in args.generator_cpu.split(",")})
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
