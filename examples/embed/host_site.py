#!/usr/bin/env python3
"""A tiny host site that embeds the NextIM chat client from the daemon.

It plays the part of "your site": it has its own (toy) login, and for the
logged-in user it mints a short-lived JWT (HS256; claims ``sub``, ``nick``,
``exp``) signed with the secret it shares with the daemon (``[auth]
token_secret`` in nextim.toml). The page then loads ``/static/app.js`` from
the daemon — another origin — and starts the client in JSONP mode.

Run the daemon with the config next to this file, then this site::

    twistd -n nextim --config examples/embed/nextim.toml
    python examples/embed/host_site.py --seed

and open http://localhost:8080/ (two different browsers or a private
window for a second user). ``--seed`` creates the demo directory (users
alice, bob, carol as buddies, room "lobby") through the daemon's admin API.

Or let the site be the source of truth (docs/integration.md): the daemon asks
this site for its directory and sends it signed webhooks. One command starts
both, with ``nextim-site.toml``::

    python examples/embed/host_site.py --config examples/embed/nextim-site.toml --run-daemon

The site then answers ``/nextim/users/{id}``, ``/nextim/users/{id}/buddies`` ...
from its own tables, checks the signature of every request, prints the
webhooks it receives (``message.offline`` is where a real site would send an
email) and lists them at ``/events``.

Standard library + PyJWT only; no framework.
"""
import argparse
import hashlib
import hmac
import html
import http.cookies
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

HERE = os.path.dirname(os.path.abspath(__file__))

#: The site's own users (id -> nick). A real site has a database.
USERS = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}
ROOM = ("lobby", "Lobby")
COOKIE = "hostsite_user"

# Signs the site's own login cookie (not the daemon's secret).
SITE_KEY = secrets.token_bytes(32)


#: The site's own friendships (user -> {buddy: group}) and rooms (id -> (name, members)).
FRIENDS = {a: {b: "Friends" for b in USERS if b != a} for a in USERS}
ROOMS = {ROOM[0]: (ROOM[1], set(USERS))}
#: Webhook events received (newest last), and their ids to drop a repeated delivery.
EVENTS = []
SEEN_EVENTS = set()


def load_daemon_config(path):
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    return {
        "public_url": cfg["server"]["public_url"].rstrip("/"),
        "token_secret": cfg["auth"]["token_secret"],
        "api_key": cfg.get("admin", {}).get("api_key"),
        "directory_secret": cfg.get("directory", {}).get("secret"),
        "webhook_secret": cfg.get("webhooks", {}).get("secret"),
        "path": os.path.abspath(path),
    }


def signed_by_nextim(secret, method, target, body, headers):
    """The daemon's signature check (docs/integration.md#signed-requests)."""
    ts = headers.get("X-Nextim-Timestamp", "")
    text = b"\n".join([method.encode(), target.encode(), ts.encode(), body])
    good = "sha256=" + hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
    return (hmac.compare_digest(good, headers.get("X-Nextim-Signature", ""))
            and ts.isdigit() and abs(time.time() - int(ts)) <= 300)


def profile(uid):
    return {"id": uid, "nick": USERS[uid]}


def directory_answer(target):
    """``(status, JSON value)`` of a directory GET under /nextim (docs/site-api.openapi.json)."""
    parts = urllib.parse.urlsplit(target)
    seg = [urllib.parse.unquote(x) for x in parts.path.split("/")[2:]]
    if seg == ["users"]:
        ids = urllib.parse.parse_qs(parts.query).get("ids", [""])[0].split(",")
        return 200, {"users": [profile(u) for u in ids if u in USERS]}
    if len(seg) >= 2 and seg[0] == "users" and seg[1] in USERS:
        uid = seg[1]
        if len(seg) == 2:
            return 200, profile(uid)
        if seg[2:] == ["buddies"]:
            return 200, {"buddies": [dict(profile(b), group=g) for b, g in sorted(FRIENDS[uid].items())]}
        if seg[2:] == ["rooms"]:
            return 200, {"rooms": [{"id": r, "nick": n, "all_count": len(m)}
                                   for r, (n, m) in sorted(ROOMS.items()) if uid in m]}
    if len(seg) >= 2 and seg[0] == "rooms" and seg[1] in ROOMS:
        name, members = ROOMS[seg[1]]
        if len(seg) == 2:
            return 200, {"id": seg[1], "nick": name, "all_count": len(members)}
        if seg[2:] == ["members"]:
            return 200, {"members": sorted(members)}
    return 404, {"error": "not found"}


def describe(event):
    """One line about a webhook event for the console and /events."""
    d = event["data"]
    name = event["event"]
    if name == "message.offline":
        return f"{d['from']} wrote to {d['to']}, who is offline: {d['body']!r} (a real site would email {d['to']})"
    if name == "message":
        return f"{d['from']} -> {d['to']}: {d['body']!r}"
    if name == "presence":
        return f"{d['user']} is {d['type']} ({d['show']})"
    return f"{d['user']} {'joined' if name == 'room.join' else 'left'} {d['room']}"


def invalidate(cfg, users=(), rooms=()):
    """Tell the daemon the site changed these users/rooms (POST /admin/directory/invalidate)."""
    return admin(cfg["public_url"], cfg["api_key"], "POST", "/admin/directory/invalidate",
                 {"users": list(users), "rooms": list(rooms)})


def mint_token(secret, user_id, ttl):
    """The JWT the daemon checks (docs/design.md#d13-identity): HS256, sub = user id, nick, exp."""
    now = int(time.time())
    claims = {"sub": user_id, "nick": USERS[user_id], "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


def sign(value):
    mac = hmac.new(SITE_KEY, value.encode(), hashlib.sha256).hexdigest()
    return f"{value}.{mac}"


def unsign(signed):
    value, _, mac = (signed or "").rpartition(".")
    good = hmac.new(SITE_KEY, value.encode(), hashlib.sha256).hexdigest()
    return value if value and hmac.compare_digest(mac, good) else None


def admin(daemon_url, api_key, method, path, body):
    req = urllib.request.Request(
        daemon_url + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def seed(daemon_url, api_key):
    """Create the example directory on the daemon (idempotent PUTs)."""
    if not api_key:
        sys.exit("--seed needs [admin] api_key in the daemon config")
    for uid, nick in USERS.items():
        admin(daemon_url, api_key, "PUT", f"/admin/users/{uid}", {"nick": nick})
    ids = list(USERS)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            admin(daemon_url, api_key, "PUT", f"/admin/users/{a}/buddies/{b}", {"group": "Friends"})
    admin(daemon_url, api_key, "PUT", f"/admin/rooms/{ROOM[0]}", {"nick": ROOM[1]})
    for uid in ids:
        admin(daemon_url, api_key, "PUT", f"/admin/rooms/{ROOM[0]}/members/{uid}", {})
    print(f"seeded {', '.join(ids)} and room {ROOM[0]} on {daemon_url}")


def js_string(value):
    """A JS string literal that is safe inside an inline <script>."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


PAGE_STYLE = """
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #fafaf7; color: #222; }
  header { background: #3b3f5c; color: #fff; padding: 14px 28px; display: flex; justify-content: space-between; align-items: center; }
  header a { color: #cfd6ff; }
  main { max-width: 760px; margin: 32px auto; padding: 0 24px; }
  .card { background: #fff; border: 1px solid #e4e4dc; border-radius: 10px; padding: 18px 22px; margin-bottom: 18px; }
  code, pre { background: #f1f1ea; border-radius: 4px; padding: 1px 4px; }
  pre { padding: 10px; overflow-x: auto; }
  button { font: inherit; padding: 6px 14px; }
"""


def login_page():
    options = "".join(f'<option value="{html.escape(u)}">{html.escape(n)}</option>' for u, n in USERS.items())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Example host site</title><style>{PAGE_STYLE}</style></head><body>
<header><strong>Example host site</strong></header>
<main><div class="card"><h1>Sign in to the host site</h1>
<p>This stands for your site's own login. The chat daemon never sees a password:
the site vouches for the user with a signed token.</p>
<form method="post" action="/login"><label>User <select name="user">{options}</select></label>
<button type="submit">Sign in</button></form></div></main></body></html>"""


def chat_page(user_id, daemon_url, token):
    nick = USERS[user_id]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Example host site — {html.escape(nick)}</title><style>{PAGE_STYLE}</style></head><body>
<header><strong>Example host site</strong>
<span>Signed in as {html.escape(nick)} · <a href="/logout">sign out</a></span></header>
<main>
<div class="card"><h1>Hello, {html.escape(nick)}!</h1>
<p>The chat in the corner is served by the NextIM daemon at <code>{html.escape(daemon_url)}</code>,
another origin. It runs in JSONP mode: every call is a <code>&lt;script&gt;</code> GET carrying
a <code>callback</code>, and the token this site minted identifies you.</p></div>
<div class="card"><h2>The site is the source of truth</h2>
<p>With <code>nextim-site.toml</code> the daemon reads users, buddies and rooms from this site
(<code>/nextim/users/{html.escape(user_id)}</code> ...) and sends it webhooks: see <a href="/events">/events</a>.
Rename yourself here; the site tells the daemon at once (<code>POST /admin/directory/invalidate</code>):</p>
<form method="post" action="/nick"><input name="nick" value="{html.escape(nick)}" maxlength="100">
<button type="submit">Rename</button></form></div>
<div class="card"><h2>The embed snippet</h2>
<pre>&lt;script src="{html.escape(daemon_url)}/static/app.js"&gt;&lt;/script&gt;
&lt;script&gt;
  NextIM.start({{server: "{html.escape(daemon_url)}", jsonp: true, token: "&lt;jwt&gt;",
                getToken: () =&gt; fetch("/token").then(r =&gt; r.text())}});
&lt;/script&gt;</pre></div>
</main>
<script src="{html.escape(daemon_url)}/static/app.js"></script>
<script>
  NextIM.start({{
    server: {js_string(daemon_url)},
    jsonp: true,
    token: {js_string(token)},
    // When the token has expired (a long visit), ask this site for a new one.
    getToken: function () {{ return fetch("/token", {{credentials: "same-origin"}}).then(function (r) {{ return r.text(); }}); }}
  }});
</script>
</body></html>"""


class Handler(BaseHTTPRequestHandler):
    server_version = "ExampleHostSite/1.0"

    def user(self):
        jar = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
        morsel = jar.get(COOKIE)
        uid = unsign(morsel.value) if morsel else None
        return uid if uid in USERS else None

    def send(self, status, body, ctype="text/html; charset=utf-8", headers=()):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, where, cookie=None):
        self.send_response(303)
        self.send_header("Location", where)
        if cookie is not None:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def from_daemon(self, secret, body=b""):
        """True if the daemon signed this request; else answers 401."""
        if secret and signed_by_nextim(secret, self.command, self.path, body, self.headers):
            return True
        self.send(401, '{"error": "bad signature"}', "application/json")
        return False

    def do_GET(self):
        cfg = self.server.cfg
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/nextim/"):
            if self.from_daemon(cfg["directory_secret"]):
                status, value = directory_answer(self.path)
                self.send(status, json.dumps(value), "application/json")
            return None
        if path == "/events":
            lines = "".join(f"<li><code>{html.escape(e['event'])}</code> {html.escape(describe(e))}</li>"
                            for e in reversed(EVENTS[-100:]))
            return self.send(200, f"<!doctype html><meta charset=utf-8><title>Webhooks</title>"
                                  f"<style>{PAGE_STYLE}</style><main><h1>Webhooks received</h1>"
                                  f"<ul>{lines or '<li>none yet</li>'}</ul></main>")
        uid = self.user()
        if path == "/":
            if not uid:
                return self.send(200, login_page())
            token = mint_token(cfg["token_secret"], uid, self.server.ttl)
            return self.send(200, chat_page(uid, cfg["public_url"], token))
        if path == "/token":
            if not uid:
                return self.send(401, "not signed in", "text/plain; charset=utf-8")
            return self.send(200, mint_token(cfg["token_secret"], uid, self.server.ttl), "text/plain; charset=utf-8")
        if path == "/logout":
            return self.redirect("/", f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax")
        return self.send(404, "not found", "text/plain; charset=utf-8")

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        length = min(int(self.headers.get("Content-Length") or 0), 1024 * 1024)
        body = self.rfile.read(length)
        if path == "/nextim/events":
            return self.webhook(body)
        if path == "/nick":
            uid = self.user()
            nick = (urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("nick") or [""])[0].strip()
            if uid and nick:
                USERS[uid] = nick[:100]
                invalidate(self.server.cfg, users=[uid])  # live sessions see it at once
            return self.redirect("/")
        if path != "/login":
            return self.send(404, "not found", "text/plain; charset=utf-8")
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        uid = (form.get("user") or [""])[0]
        if uid not in USERS:
            return self.send(400, "unknown user", "text/plain; charset=utf-8")
        return self.redirect("/", f"{COOKIE}={sign(uid)}; Path=/; HttpOnly; SameSite=Lax")

    def webhook(self, body):
        """A webhook from the daemon: check, drop a repeat (same id), keep, say 204."""
        if not self.from_daemon(self.server.cfg["webhook_secret"], body):
            return
        event = json.loads(body)
        with self.server.lock:
            if event["id"] not in SEEN_EVENTS:
                SEEN_EVENTS.add(event["id"])
                EVENTS.append(event)
                print("webhook:", event["event"], describe(event), flush=True)
        self.send_response(204)
        self.end_headers()
        return

    def log_message(self, fmt, *args):  # quieter than the default
        sys.stderr.write("host_site: " + (fmt % args) + "\n")


def start_daemon(config_path):
    """``twistd -n nextim --config config_path`` as a child process, in the config's
    directory (its relative storage path lands there), once it answers /health."""
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "nextim", "--config", config_path]
    proc = subprocess.Popen(argv, cwd=os.path.dirname(config_path))
    with open(config_path, "rb") as f:
        listen = tomllib.load(f)["server"]["listen"].split(":")[1]
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{listen}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                sys.exit("the daemon did not start (its log is above)")
            time.sleep(0.2)
    print(f"daemon started (pid {proc.pid}) with {config_path}", flush=True)
    return proc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=os.path.join(HERE, "nextim.toml"),
                    help="the daemon's config (for public_url, token_secret, api_key)")
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--daemon", help="daemon URL as the browser sees it (default: [server] public_url)")
    ap.add_argument("--ttl", type=int, default=3600, help="token lifetime in seconds")
    ap.add_argument("--seed", action="store_true", help="create the demo users/buddies/room via the admin API")
    ap.add_argument("--run-daemon", action="store_true",
                    help="also start the daemon (twistd -n nextim --config CONFIG) and stop it on exit")
    args = ap.parse_args(argv)

    cfg = load_daemon_config(args.config)
    if args.daemon:
        cfg["public_url"] = args.daemon.rstrip("/")
    if args.seed:
        try:
            seed(cfg["public_url"], cfg["api_key"])
        except urllib.error.URLError as e:
            sys.exit(f"cannot seed the daemon at {cfg['public_url']}: {e}")
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.cfg = cfg
    httpd.ttl = args.ttl
    httpd.lock = threading.Lock()
    daemon = start_daemon(cfg["path"]) if args.run_daemon else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the daemon too (finally below)
    print(f"host site on http://{args.host}:{httpd.server_address[1]}/ embedding {cfg['public_url']}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        if daemon is not None:
            daemon.terminate()
            daemon.wait(15)


if __name__ == "__main__":
    main()
