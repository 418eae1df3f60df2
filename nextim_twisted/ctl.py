"""``nextimctl``: manage the daemon's directory and database from the command line
(docs/design.md#d14-directory, docs/operations.md#nextimctl-reference).

It works directly on the database named by the daemon's config file (``--config``,
default ``$NEXTIM_CONFIG`` or ``etc/nextim.toml``) through
:class:`~nextim_twisted.store.sql.SQLStore`, so it runs with the daemon stopped or
running (SQLite: WAL and a busy timeout; PostgreSQL: ordinary transactions). Directory
writes go through the admin API's handlers (:mod:`nextim_twisted.handlers.admin`), so
the id rules and field limits are the same (ids via ``handlers.params.check_id``; a
room id may not equal a user id). Every directory change is also recorded in the
``directory_changes`` table, which running daemons read about once a second, so a
deleted user's sessions end, a removed buddy stops seeing presence and a removed
member leaves the live room at once, as with the admin HTTP API
(docs/design.md#d19-session-lifetime). With ``[cluster]``
the shared file may leave ``node_id`` out (each node gets ``--node-id``; nextimctl is no
node, docs/scaling.md).

Like the daemon, every command upgrades an older schema first; but only ``migrate``
creates one: any other command refuses a database without nextim's tables (or a
missing SQLite file), so a wrong ``--config`` or working directory is reported
rather than answered from a new, empty database.

Exit status: 0 done; 1 the operation was refused (unknown user, database error,
database newer than this code …); 2 usage or configuration error. Messages go to
stderr as one line ``nextimctl: ...``; a traceback only for a bug.

Run it as ``nextimctl ...`` (console script) or ``python -m nextim_twisted.ctl ...``.
"""
import argparse
import getpass
import json
import os
import sqlite3
import sys
import tomllib
import traceback
from datetime import datetime, timezone

from twisted.internet import defer, task, threads

from . import config as config_module
from .errors import BadRequest, ProtocolError
from .handlers import admin
from .handlers.params import check_id
from .store.base import SchemaError

#: Messages per page when exporting history.
EXPORT_PAGE = 1000

PROG = "nextimctl"


class CtlError(Exception):
    """A refusal reported as one line on stderr with exit status :attr:`status`."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.message = message
        self.status = status


# -- argument types (bad values → argparse usage error, exit 2) --------------------

def _ident(value):
    try:
        return check_id(value)
    except BadRequest as e:
        raise argparse.ArgumentTypeError(f"{value!r}: {e.message}") from None


def _days(value):
    try:
        days = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: must be a whole number of days") from None
    if not 1 <= days <= 100000:
        raise argparse.ArgumentTypeError(f"{value!r}: must be at least 1")
    return days


def _iso_date(value):
    """ISO 8601 date or date-time → epoch ms; a time without an offset is UTC."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: not an ISO date (e.g. 2024-05-01 or 2024-05-01T12:00:00+02:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def build_parser():
    """The argparse parser of ``nextimctl`` (``args.command`` and ``args.action`` name
    the subcommand)."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Manage nextim-twisted's users, rooms and history in its database.")
    p.add_argument("--config", "-c", metavar="FILE",
                   default=os.environ.get("NEXTIM_CONFIG", "etc/nextim.toml"),
                   help="daemon configuration file (default: $NEXTIM_CONFIG or etc/nextim.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def profile_options(sp, room=False):
        sp.add_argument("--nick", help="display name (default for a new entry: the id)")
        sp.add_argument("--pic-url", help="avatar URL ('' clears)")
        if not room:
            sp.add_argument("--default-pic-url", help="fallback avatar URL ('' clears)")
        sp.add_argument("--url", help="profile page URL ('' clears)")
        if not room:
            sp.add_argument("--password-stdin", action="store_true",
                            help="also set the password, read from stdin (one line)")

    user = sub.add_parser("user", help="users: add, set, delete, list, passwd").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    sp = user.add_parser("add", help="create a user (fails if the id exists)")
    sp.add_argument("id", type=_ident)
    profile_options(sp)
    sp = user.add_parser("set", help="change a user's profile; unnamed fields stay")
    sp.add_argument("id", type=_ident)
    profile_options(sp)
    sp = user.add_parser("delete", help="delete a user, their buddies, memberships, settings")
    sp.add_argument("id", type=_ident)
    sp.add_argument("--erase", action="store_true",
                    help="also erase their messages, notifications and XMPP pairings")
    sp = user.add_parser("export", help="everything stored about a user, as one JSON object")
    sp.add_argument("id", type=_ident)
    sp = user.add_parser("list", help="list users: id, nick, whether a password is set")
    sp = user.add_parser("passwd", help="set a user's password, read from stdin")
    sp.add_argument("id", type=_ident)

    buddy = sub.add_parser("buddy", help="buddies (symmetric): add, delete, list").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    sp = buddy.add_parser("add", help="make two users buddies of each other")
    sp.add_argument("user", type=_ident)
    sp.add_argument("buddy", type=_ident)
    sp.add_argument("--group", help="group name on USER's side")
    sp = buddy.add_parser("delete", help="remove the relation on both sides")
    sp.add_argument("user", type=_ident)
    sp.add_argument("buddy", type=_ident)
    sp = buddy.add_parser("list", help="a user's buddies and groups")
    sp.add_argument("user", type=_ident)

    room = sub.add_parser("room", help="rooms: add, delete, list").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    sp = room.add_parser("add", help="create or update a room")
    sp.add_argument("room", type=_ident)
    profile_options(sp, room=True)
    sp = room.add_parser("delete", help="delete a room and its memberships (history stays)")
    sp.add_argument("room", type=_ident)
    sp = room.add_parser("list", help="list rooms, or with ROOM its members")
    sp.add_argument("room", type=_ident, nargs="?")

    member = sub.add_parser("member", help="room members: add, delete").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "add USER to ROOM"), ("delete", "remove USER from ROOM")):
        sp = member.add_parser(action, help=text)
        sp.add_argument("room", type=_ident)
        sp.add_argument("user", type=_ident)

    sp = sub.add_parser("notify", help="add a notification for a user (docs/design.md#d12-notifications)")
    sp.add_argument("user", type=_ident)
    sp.add_argument("text")
    sp.add_argument("--link", help="URL the notification points to")

    sub.add_parser("stats", help="counts of users, rooms, messages, undelivered messages")

    history = sub.add_parser("history", help="history: export, purge").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    sp = history.add_parser("export", help="messages as JSON lines on stdout, oldest first")
    sp.add_argument("--user", type=_ident, help="only messages sent by or to this user")
    sp.add_argument("--since", type=_iso_date, metavar="ISO-DATE",
                    help="only messages at or after this date (UTC unless an offset is given)")
    sp = history.add_parser("purge", help="delete messages older than DAYS days")
    sp.add_argument("--older-than", type=_days, required=True, metavar="DAYS")

    ids_cmd = sub.add_parser("ids", help="user id rules: check").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    ids_cmd.add_parser("check", help="list user ids that break the id rules (docs/xmpp.md); exit 1 if any")

    xmpp = sub.add_parser("xmpp", help="XMPP bridge pairs: pair, unpair, list").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    sp = xmpp.add_parser("pair", help="make USER and the XMPP user JID buddies")
    sp.add_argument("user", type=_ident)
    sp.add_argument("jid")
    sp.add_argument("--nick", help="JID's display name (default: its localpart)")
    sp.add_argument("--group", help="group name on USER's side")
    sp = xmpp.add_parser("unpair", help="remove the pair USER and JID")
    sp.add_argument("user", type=_ident)
    sp.add_argument("jid")
    sp = xmpp.add_parser("list", help="pairs with their subscription state, or only USER's")
    sp.add_argument("user", type=_ident, nargs="?")

    sub.add_parser("migrate", help="create or upgrade the database schema")
    sub.add_parser("check-config", help="validate the configuration file")
    return p


# -- input -------------------------------------------------------------------------

def read_password(stdin=None):
    """The new password: prompted twice without echo when stdin is a terminal, else
    the first line of stdin (without its line ending). Never from argv.

    :raises CtlError: empty, or the two prompts differ.
    """
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("New password: ")
        if first != getpass.getpass("Repeat password: "):
            raise CtlError("the passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise CtlError("empty password")
    return password


# -- commands ----------------------------------------------------------------------

class Ctl:
    """The open database and the admin handlers' context for one command.

    :param config: the validated :class:`~nextim_twisted.config.Config`.
    :param reactor: the running reactor.
    :param out: text stream for results (stdout).
    """

    def __init__(self, config, reactor, out):
        from .compose import compose

        self.config = config
        self.reactor = reactor
        self.out = out
        # The daemon's parts without the web app and the XMPP bridge. The router stays
        # empty: the admin handlers' live-state updates become no-ops.
        parts = compose(config, reactor, xmpp=False, web=False,
                        blocking=lambda f, *a: threads.deferToThread(f, *a))
        self.store = parts.store
        self.ctx = parts.ctx
        self.ctx.node_id = PROG  # the origin of the directory changes it records

    def print(self, *parts):
        print(*parts, sep="\t", file=self.out)

    async def _fields(self, args, existing=None):
        """Admin-API body from the profile options; unnamed fields keep ``existing``'s."""
        body = {}
        keys = ("nick", "pic_url", "default_pic_url", "url")
        for key in keys:
            if not hasattr(args, key):
                continue
            value = getattr(args, key)
            if value is None:
                value = (existing or {}).get(key)
            elif value == "" and key != "nick":
                value = None
            if value is not None:
                body[key] = value
        if "nick" not in body:
            body["nick"] = args.id if hasattr(args, "id") else args.room
        if getattr(args, "password", None) is not None:
            body["password"] = args.password
        return body

    async def user_add(self, args):
        if await self.store.get_user(args.id) is not None:
            raise CtlError(f"user {args.id} already exists (use: user set)")
        await admin.put_user(self.ctx, args.id, await self._fields(args))
        self.print(f"user {args.id} added")

    async def user_set(self, args):
        existing = await self.store.get_user(args.id)
        if existing is None:
            raise CtlError(f"unknown user: {args.id}")
        await admin.put_user(self.ctx, args.id, await self._fields(args, existing))
        self.print(f"user {args.id} updated")

    async def user_delete(self, args):
        await admin.delete_user(self.ctx, args.id, erase=args.erase)
        self.print(f"user {args.id} {'erased' if args.erase else 'deleted'}")

    async def user_export(self, args):
        if self.out is sys.stdout and hasattr(self.out, "reconfigure"):
            self.out.reconfigure(encoding="utf-8")
        data = await admin.export_user(self.ctx, args.id)
        del data["success"]
        self.out.write(json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    async def user_list(self, args):
        offset = 0
        while True:
            users = await self.store.list_users(limit=1000, offset=offset)
            for u in users:
                self.print(u["id"], u["nick"] or "", "password" if u["password_hash"] else "-")
            if len(users) < 1000:
                return
            offset += len(users)

    async def user_passwd(self, args):
        if await self.store.get_user(args.id) is None:
            raise CtlError(f"unknown user: {args.id}")
        # the API's length limit; older login cookies and the user's sessions end (docs/design.md#d19-session-lifetime)
        await admin.set_password(self.ctx, args.id, args.password)
        self.print(f"password of {args.id} set")

    async def buddy_add(self, args):
        body = {"group": args.group} if args.group is not None else {}
        await admin.put_buddy(self.ctx, args.user, args.buddy, body)
        self.print(f"{args.user} and {args.buddy} are buddies")

    async def buddy_delete(self, args):
        await admin.delete_buddy(self.ctx, args.user, args.buddy)
        self.print(f"{args.user} and {args.buddy} are no longer buddies")

    async def buddy_list(self, args):
        if await self.store.get_user(args.user) is None:
            raise CtlError(f"unknown user: {args.user}")
        for buddy_id, group in await self.store.get_buddies(args.user):
            self.print(buddy_id, group or "")

    async def room_add(self, args):
        existing = await self.store.get_room(args.room)
        await admin.put_room(self.ctx, args.room, await self._fields(args, existing))
        self.print(f"room {args.room} {'updated' if existing else 'added'}")

    async def room_delete(self, args):
        await admin.delete_room(self.ctx, args.room)
        self.print(f"room {args.room} deleted")

    async def room_list(self, args):
        if args.room is None:
            for r in await self.store.list_rooms():
                self.print(r["id"], r["nick"] or "", r["all_count"])
            return
        if await self.store.get_room(args.room) is None:
            raise CtlError(f"unknown room: {args.room}")
        for user_id in await self.store.room_member_ids(args.room):
            self.print(user_id)

    async def member_add(self, args):
        await admin.put_member(self.ctx, args.room, args.user)
        self.print(f"{args.user} is a member of {args.room}")

    async def member_delete(self, args):
        await admin.delete_member(self.ctx, args.room, args.user)
        self.print(f"{args.user} is no longer a member of {args.room}")

    async def notify(self, args):
        body = {"text": args.text}
        if args.link is not None:
            body["link"] = args.link
        result = await admin.add_notification(self.ctx, args.user, body)
        self.print(f"notification {result['id']} added for {args.user}")

    async def stats(self, args):
        counts = await self.store.stats_counts()
        for key in ("users", "rooms", "messages", "undelivered"):
            print(f"{key} {counts[key]}", file=self.out)

    async def history_export(self, args):
        if self.out is sys.stdout and hasattr(self.out, "reconfigure"):
            self.out.reconfigure(encoding="utf-8")  # JSON lines are UTF-8 whatever the locale
        after = 0
        while True:
            page = await self.store.export_messages(user_id=args.user, since_ms=args.since,
                                                    after_id=after, limit=EXPORT_PAGE)
            for msg in page:
                self.out.write(json.dumps(msg, ensure_ascii=False) + "\n")
            if len(page) < EXPORT_PAGE:
                return
            after = page[-1]["id"]

    async def history_purge(self, args):
        cutoff = int(self.reactor.seconds() * 1000) - args.older_than * 24 * 3600 * 1000
        count = await self.store.purge_messages(cutoff)
        when = datetime.fromtimestamp(cutoff / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.print(f"deleted {count} messages older than {args.older_than} days (before {when})")

    async def ids_check(self, args):
        # The id rules of docs/design.md#d13-identity (nextim_twisted/ids.py), on old data.
        from .ids import broken_ids
        found = await broken_ids(self.store)
        for user_id, problem in found:
            self.print(user_id.encode("unicode_escape").decode("ascii"), problem)
        if found:
            raise CtlError(f"{len({u for u, _ in found})} user ids break the id rules (listed on stdout)")

    def _xmpp_store(self):
        from .xmpp.store import XmppStore
        return XmppStore(self.store)

    async def xmpp_pair(self, args):
        # Same checks as PUT /admin/users/{id}/buddies/{jid} (docs/xmpp.md); the running
        # daemon's bridge starts the subscription handshake at its next start.
        from .xmpp.mapping import normalize_contact
        try:
            jid = normalize_contact(args.jid, self.config.xmpp.component_domain)
        except ValueError as e:
            raise CtlError(f"xmpp pair {args.user} {args.jid}: {e}") from None
        if await self.store.get_user(args.user) is None:
            raise CtlError(f"unknown user: {args.user}")
        if await self.store.get_user(jid) is not None:
            raise CtlError(f"{jid} is a web user: use 'buddy add'")
        await self._xmpp_store().put_pair(args.user, jid, args.nick, args.group)
        self.print(f"{args.user} and {jid} are paired")

    async def xmpp_unpair(self, args):
        from .xmpp.mapping import normalize_contact
        try:
            jid = normalize_contact(args.jid, self.config.xmpp.component_domain)
        except ValueError:
            jid = args.jid
        if not await self._xmpp_store().delete_pair(args.user, jid):
            raise CtlError(f"{args.user} and {args.jid} are not paired")
        self.print(f"{args.user} and {jid} are no longer paired")

    async def xmpp_list(self, args):
        for row in await self._xmpp_store().pairs():
            if args.user is None or row["user_id"] == args.user:
                self.print(row["user_id"], row["jid"], row["nick"] or "", row["group"] or "",
                           row["subscription"].label)

    async def migrate(self, args):
        old, new = self.store.schema_versions
        note = " (up to date)" if old == new else ""
        self.print(f"schema version {old} -> {new}{note}")


def _db_error_types():
    types = [sqlite3.Error]
    try:
        import psycopg
        types.append(psycopg.Error)
    except ImportError:  # the postgres extra is optional
        pass
    return tuple(types)


async def _require_schema(store, db_errors):
    """Refuse to work on a database without nextim's tables (only ``migrate`` creates
    them), so a wrong ``--config`` or working directory shows instead of silently
    creating an empty database."""
    store.pool.start()
    await store.ping()  # an unreachable database fails here, with its own message
    try:
        version = await store.schema_version()
    except db_errors:
        version = 0  # no schema_version table
    if version == 0:
        raise CtlError("the database has no nextim tables (schema version 0); "
                       "run 'nextimctl migrate' to create them, or check --config")


def _describe(args):
    """``"member add lobby carol"``: the command with its ids, to prefix a refusal."""
    words = [args.command, getattr(args, "action", None)]
    words += [getattr(args, k, None) for k in ("id", "room", "user", "buddy", "jid")]
    return " ".join(w for w in words if w)


def _tool_node_id(path):
    """Overrides for loading the daemon's config as a tool: a shared cluster file
    usually has no ``node_id`` (each node gets ``--node-id``), and nextimctl is no node."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # config_module.load reports it
    section = data.get("cluster")
    if isinstance(section, dict) and "node_id" not in section:
        return {"cluster.node_id": "ctl"}
    return None


def _one_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


async def run(reactor, args, out=None):
    """Run the parsed command ``args`` on ``reactor``. Returns normally on success;
    raises ``SystemExit(1 or 2)`` after writing one line to stderr on failure."""
    out = out or sys.stdout
    try:
        config = config_module.load(args.config, overrides=_tool_node_id(args.config))
    except config_module.ConfigError as e:
        raise CtlError(f"configuration error: {e}", status=2) from None
    if args.command == "check-config":
        print("ok", file=out)
        return
    if config.storage.backend == "sqlite" and args.command != "migrate":
        path = os.path.abspath(config.storage.path)
        if not os.path.exists(path):
            raise CtlError(f"database {path} does not exist (run 'nextimctl migrate' to create it, "
                           "or run nextimctl in the daemon's working directory)")
    ctl = Ctl(config, reactor, out)
    db_errors = _db_error_types()
    try:
        try:
            if args.command != "migrate":
                await _require_schema(ctl.store, db_errors)
            await ctl.store.start()
        except SchemaError as e:
            raise CtlError(str(e)) from None
        except db_errors as e:
            raise CtlError(f"cannot open the database: {_one_line(e)}") from None
        name = args.command.replace("-", "_") + ("_" + args.action if getattr(args, "action", None) else "")
        try:
            await getattr(ctl, name)(args)
        except ProtocolError as e:
            raise CtlError(f"{_describe(args)}: {e.message}") from None
        except db_errors as e:
            raise CtlError(f"database error: {_one_line(e)}") from None
    finally:
        await ctl.store.close()


def _react_main(reactor, args):
    async def guarded():
        try:
            await run(reactor, args)
        except CtlError as e:
            sys.stderr.write(f"{PROG}: {e.message}\n")
            raise SystemExit(e.status)
        except SystemExit:
            raise
        except BrokenPipeError:
            # e.g. ``nextimctl history export | head``: the reader is gone; not an error.
            # Point stdout at /dev/null so the flush at exit does not complain again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0)
        except Exception:
            traceback.print_exc()
            raise SystemExit(1)
    return defer.ensureDeferred(guarded())


def main(argv=None):
    """Console-script entry point (``nextimctl``). ``argv`` defaults to ``sys.argv[1:]``.
    Exits with 0, 1 (refused) or 2 (usage/configuration error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")  # argv bytes that are not UTF-8 arrive as surrogates
            except UnicodeEncodeError:
                parser.error(f"{name}: not valid UTF-8")
    if args.command == "user" and (args.action == "passwd" or getattr(args, "password_stdin", False)):
        try:
            args.password = read_password()
        except CtlError as e:
            sys.stderr.write(f"{PROG}: {e.message}\n")
            raise SystemExit(e.status)
    task.react(_react_main, [args])


if __name__ == "__main__":
    main()
