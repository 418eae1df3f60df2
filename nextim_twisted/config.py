"""TOML configuration → one typed, validated :class:`Config`.

Every key the daemon reads is declared once in :data:`SCHEMA` with its type and
default; an unknown key, a wrong type or a missing secret raises
:class:`ConfigError` whose message names the key (an operator gets one clear line).
"""
import importlib.util
import re
import tomllib
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit


class ConfigError(Exception):
    """Invalid configuration; ``str(err)`` is one line naming the offending key."""


# section -> key -> (type(s), default). ``None`` default means "optional, unset".
SCHEMA = {
    "server": {
        "listen": (str, "tcp:8000:interface=127.0.0.1"),
        "public_url": (str, None),          # default: derived from listen
        "domain": (str, "localhost"),
        "allowed_origins": (list, []),       # extra Origins for cookie-only writes (docs/design.md#d13-identity)
        "max_body_bytes": (int, 40000),      # docs/design.md#d15-limits
        "room_presences": (bool, False),     # docs/design.md#d9-rooms: v5-style join/leave presences
        "gc_tuning": (bool, True),           # gcschedule.py: frozen startup, young GC on a timer, full GC hourly
    },
    "storage": {
        "backend": (str, "sqlite"),
        "path": (str, "nextim.sqlite"),
        "dsn": (str, None),
        "synchronous": (str, "FULL"),
        "schema": (str, None),               # PostgreSQL schema (search_path); None: the DSN's default
        "retention_days": (int, 0),          # delete messages older than this; 0 = keep forever
    },
    "auth": {
        "method": (str, "token"),            # "token" | "accounts" (docs/design.md#d13-identity)
        "token_secret": (str, None),
        "token_cookie": (str, "nextim_token"),
        "session_cookie": (str, "nextim_session"),
        "session_ttl": (int, 7 * 24 * 3600),  # seconds a login cookie stays valid
        "cookie_secure": (bool, False),
    },
    "admin": {
        "api_key": (str, None),
        "broadcast_from": (str, "system"),
    },
    "timers": {
        "poll_hold": ((int, float), 25),     # seconds (docs/design.md#d5-timers)
        "session_idle": ((int, float), 10),
        "user_grace": ((int, float), 10),
        # seconds a session lives at most however often it is polled; its next poll
        # after that is 404 and the client goes online again with a fresh token
        # (docs/design.md#d19-session-lifetime)
        "session_max": ((int, float), 86400),
    },
    "limits": {
        "queue_packets": (int, 1000),        # docs/design.md#d6-comet-envelope
        "message_chars": (int, 10000),       # docs/design.md#d15-limits
        "setting_bytes": (int, 8192),        # docs/design.md#d11-settings
        "history": (int, 30),                # docs/design.md#d10-history
        "new_messages": (int, 50),           # docs/design.md#d10-history
        "messages_per_minute": (int, 120),   # docs/design.md#d15-limits, per user
        "presences_per_minute": (int, 60),   # docs/design.md#d15-limits, per user (presence + status)
        "onlines_per_minute": (int, 60),     # docs/design.md#d15-limits, per user: each online makes a session
        "status_chars": (int, 200),
        # hours a message's client_id is remembered: a retry within them stores nothing
        # (docs/design.md#d17-idempotent-sends)
        "client_id_hours": (int, 24),
    },
    # The WebSocket transport (docs/design.md#d21-websocket, docs/protocol.md#websocket-transport):
    # GET /ws next to the /packets long poll, which stays.
    "websocket": {
        "enabled": (bool, True),             # false: no /ws, and online omits connection.websocket
    },
    "log": {                                 # docs/deployment.md#4-logs
        "format": (str, "text"),             # "text" | "json" (JSON lines)
        "level": (str, "info"),              # "debug" | "info" | "warn" | "error"
    },
    "metrics": {                             # docs/deployment.md#5-metrics: GET /metrics
        "enabled": (bool, True),
        "token": (str, None),                # optional bearer token for scrapes
    },
    # The host site as source of truth (docs/integration.md): its directory over HTTP.
    "directory": {
        "provider": (str, "local"),         # "local" (the admin API's tables) | "http" (the site)
        "url": (str, None),                 # base URL of the site's directory API (provider = "http")
        "secret": (str, None),              # HMAC-SHA256 key signing the daemon's requests
        "cache_seconds": ((int, float), 60),  # how long an answer is used before asking again
        "timeout": ((int, float), 5),       # seconds per request to the site
    },
    # ... and signed webhooks to it, through the outbox (docs/integration.md#webhooks).
    "webhooks": {
        "url": (str, None),                 # where events are POSTed; unset: no webhooks
        "secret": (str, None),              # HMAC-SHA256 key signing each POST
        "events": (list, ["message", "message.offline", "presence", "room.join", "room.leave"]),
        "timeout": ((int, float), 5),       # seconds per POST
        "max_age": (int, 86400),            # seconds an undelivered event is retried, then dropped
    },
    # XMPP bridge (docs/xmpp.md): the daemon as a XEP-0114 external component.
    "xmpp": {
        "enabled": (bool, False),
        "host": (str, "127.0.0.1"),        # XMPP server's component listener
        "port": (int, 5347),
        "component_domain": (str, None),    # web users are <id>@<component_domain>
        "secret": (str, None),              # the component's shared secret
        "muc_domain": (str, None),          # default MUC service for a room's "muc"
        "min_backoff": ((int, float), 1),   # seconds before the first reconnect
        "max_backoff": ((int, float), 60),  # longest wait between reconnects, seconds
        "queue_stanzas": (int, 1000),       # stanzas kept while disconnected
    },
    # Several nodes over Redis and PostgreSQL (docs/scaling.md, docs/design.md#d20-cluster).
    # Absent: one node, no Redis, as always.
    "cluster": {
        "node_id": (str, None),             # 1-16 of [a-z0-9], unique in the cluster
        "redis_url": (str, "redis://127.0.0.1:6379/0"),
        "redis_prefix": (str, "nextim"),    # key/channel prefix: clusters can share one Redis
        "node_timeout": ((int, float), 15),  # seconds without a heartbeat before a node is dead
    },
}


@dataclass
class Section:
    """Attribute access to one section's validated values."""

    values: dict = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


# Typed views of the sections (for type checkers): at run time each is a :class:`Section`
# holding the validated values of :data:`SCHEMA`, so the two are kept in step by
# tests/test_config.py.

class ServerSection(Protocol):
    """``[server]``."""

    listen: str
    public_url: str  # derived from listen when unset
    domain: str
    allowed_origins: list[str]
    max_body_bytes: int
    room_presences: bool
    gc_tuning: bool


class StorageSection(Protocol):
    """``[storage]``."""

    backend: str
    path: str
    dsn: str | None
    synchronous: str
    schema: str | None
    retention_days: int


class AuthSection(Protocol):
    """``[auth]``."""

    method: str
    token_secret: str | None
    token_cookie: str
    session_cookie: str
    session_ttl: int
    cookie_secure: bool


class AdminSection(Protocol):
    """``[admin]``."""

    api_key: str | None
    broadcast_from: str


class TimersSection(Protocol):
    """``[timers]``."""

    poll_hold: float
    session_idle: float
    user_grace: float
    session_max: float


class LimitsSection(Protocol):
    """``[limits]``."""

    queue_packets: int
    message_chars: int
    setting_bytes: int
    history: int
    new_messages: int
    messages_per_minute: int
    presences_per_minute: int
    onlines_per_minute: int
    status_chars: int
    client_id_hours: int


class WebsocketSection(Protocol):
    """``[websocket]`` (docs/design.md#d21-websocket)."""

    enabled: bool


class LogSection(Protocol):
    """``[log]``."""

    format: str
    level: str


class MetricsSection(Protocol):
    """``[metrics]``."""

    enabled: bool
    token: str | None


class XmppSection(Protocol):
    """``[xmpp]``."""

    enabled: bool
    host: str
    port: int
    component_domain: str | None
    secret: str | None
    muc_domain: str | None
    min_backoff: float
    max_backoff: float
    queue_stanzas: int


class ClusterSection(Protocol):
    """``[cluster]`` (docs/scaling.md); ``enabled`` is derived: the section or
    ``--node-id`` is present."""

    node_id: str | None
    redis_url: str
    redis_prefix: str
    node_timeout: float

    @property
    def enabled(self) -> bool:
        """Derived at load, not a key: the section (or ``--node-id``) is present."""
        ...


class DirectorySection(Protocol):
    """``[directory]`` (docs/integration.md)."""

    provider: str
    url: str | None
    secret: str | None
    cache_seconds: float
    timeout: float


class WebhooksSection(Protocol):
    """``[webhooks]`` (docs/integration.md#webhooks)."""

    url: str | None
    secret: str | None
    events: list[str]
    timeout: float
    max_age: int


class Config:
    """Validated configuration: ``config.server.listen``, ``config.timers.poll_hold`` …

    Build with :func:`load` (a TOML file) or :func:`from_dict`.
    """

    server: ServerSection
    storage: StorageSection
    auth: AuthSection
    admin: AdminSection
    timers: TimersSection
    limits: LimitsSection
    websocket: WebsocketSection
    log: LogSection
    metrics: MetricsSection
    directory: DirectorySection
    webhooks: WebhooksSection
    xmpp: XmppSection
    cluster: ClusterSection

    def __init__(self, sections):
        self._sections = sections
        for name, values in sections.items():
            setattr(self, name, Section(values))

    def as_dict(self):
        """The effective configuration as nested dicts (secrets included: do not log)."""
        return {k: dict(v) for k, v in self._sections.items()}

    @property
    def public_url(self):
        """The daemon's public base URL without a trailing slash."""
        return self.server.public_url.rstrip("/")

    @property
    def own_origin(self):
        """``scheme://host[:port]`` of :attr:`public_url` (docs/design.md#d13-identity origin check)."""
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"


def _type_name(t):
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {str: "string", int: "integer", bool: "boolean", list: "array", float: "number"}.get(t, t.__name__)


def _check(section, key, value, expected):
    types = expected if isinstance(expected, tuple) else (expected,)
    # bool is a subclass of int in Python; a TOML ``true`` is not a number.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ConfigError(f"[{section}] {key}: expected {_type_name(expected)}, got {type(value).__name__} {value!r}")


def _listen_url(listen):
    """Best guess of a public URL from a strports description like ``tcp:8000:interface=127.0.0.1``."""
    parts = listen.split(":")
    port = "8000"
    host = "127.0.0.1"
    positional = [p for p in parts[1:] if "=" not in p]
    for p in parts[1:]:
        if p.startswith("port="):
            port = p[5:]
        elif p.startswith("interface="):
            host = p[10:] or host
    if positional:
        port = positional[0]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if parts[0] in ("ssl", "tls") else "http"
    return f"{scheme}://{host}:{port}"


def from_dict(data, demo=False, overrides=None):
    """Validate a parsed TOML mapping and fill defaults.

    :param data: ``{section: {key: value}}`` as read from TOML.
    :param demo: demo mode (``twistd nextim --demo``): ``accounts`` auth and no admin key needed.
    :param overrides: ``{"section.key": value}`` applied after the file (e.g. ``--listen``).
    :raises ConfigError: unknown section/key, wrong type, bad value, missing secret.
    """
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a TOML table")
    sections = {}
    for name, keys in data.items():
        if name not in SCHEMA:
            raise ConfigError(f"[{name}]: unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(keys, dict):
            raise ConfigError(f"[{name}]: must be a table")
        for key, value in keys.items():
            if key not in SCHEMA[name]:
                raise ConfigError(f"[{name}] {key}: unknown key")
            _check(name, key, value, SCHEMA[name][key][0])
    for name, keys in SCHEMA.items():
        given = data.get(name, {})
        sections[name] = {key: given.get(key, default) for key, (_, default) in keys.items()}
    if demo:
        if "method" not in data.get("auth", {}):
            sections["auth"]["method"] = "accounts"
    for dotted, value in (overrides or {}).items():
        name, key = dotted.split(".", 1)
        _check(name, key, value, SCHEMA[name][key][0])
        sections[name][key] = value

    s = sections
    if s["server"]["public_url"] is None:
        s["server"]["public_url"] = _listen_url(s["server"]["listen"])
    if urlsplit(s["server"]["public_url"]).scheme not in ("http", "https"):
        raise ConfigError("[server] public_url: must start with http:// or https://")
    for origin in s["server"]["allowed_origins"]:
        if not isinstance(origin, str):
            raise ConfigError("[server] allowed_origins: every entry must be a string")
    if s["storage"]["backend"] not in ("sqlite", "postgres"):
        raise ConfigError(f"[storage] backend: must be \"sqlite\" or \"postgres\", got {s['storage']['backend']!r}")
    if s["storage"]["backend"] == "postgres" and not s["storage"]["dsn"]:
        raise ConfigError("[storage] dsn: required when backend = \"postgres\"")
    if s["storage"]["backend"] == "postgres" and importlib.util.find_spec("psycopg") is None:
        # The driver is an optional extra: say which, instead of an ImportError traceback
        # from the connection pool at startup.
        raise ConfigError("[storage] backend = \"postgres\" needs the PostgreSQL driver: "
                          "pip install 'nextim-twisted[postgres]'")
    if s["storage"]["synchronous"].upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError("[storage] synchronous: must be OFF, NORMAL, FULL or EXTRA")
    if s["storage"]["schema"] is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", s["storage"]["schema"]):
        raise ConfigError("[storage] schema: must be a plain SQL identifier (letters, digits, _)")
    if not 0 <= s["storage"]["retention_days"] <= 100000:
        raise ConfigError(f"[storage] retention_days: must be 0 (keep forever) or a number of days, "
                          f"got {s['storage']['retention_days']!r}")
    if s["auth"]["method"] not in ("token", "accounts"):
        raise ConfigError(f"[auth] method: must be \"token\" or \"accounts\", got {s['auth']['method']!r}")
    if s["auth"]["method"] == "token" and not s["auth"]["token_secret"]:
        raise ConfigError("[auth] token_secret: required when method = \"token\"")
    if s["auth"]["token_secret"] is not None and len(s["auth"]["token_secret"]) < 16:
        raise ConfigError("[auth] token_secret: must be at least 16 characters")
    if not demo and not s["admin"]["api_key"]:
        raise ConfigError("[admin] api_key: required (the admin API is disabled without it only in --demo)")
    if s["admin"]["api_key"] is not None and len(s["admin"]["api_key"]) < 16:
        raise ConfigError("[admin] api_key: must be at least 16 characters")
    for key, value in s["timers"].items():
        if key == "session_max":
            if not s["timers"]["poll_hold"] < value <= 365 * 86400:
                raise ConfigError(f"[timers] session_max: must be longer than poll_hold and at most "
                                  f"a year (31536000 seconds), got {value!r}")
        elif not 0 < value <= 3600:
            raise ConfigError(f"[timers] {key}: must be between 0 and 3600 seconds, got {value!r}")
    for key, value in s["limits"].items():
        if value < 1:
            raise ConfigError(f"[limits] {key}: must be a positive integer, got {value!r}")
    x = s["xmpp"]
    if x["enabled"]:
        for key in ("component_domain", "secret"):
            if not x[key]:
                raise ConfigError(f"[xmpp] {key}: required when enabled = true")
    if not 0 < x["port"] < 65536:
        raise ConfigError(f"[xmpp] port: must be 1 to 65535, got {x['port']!r}")
    if not 0 < x["min_backoff"] <= x["max_backoff"] <= 3600:
        raise ConfigError("[xmpp] min_backoff, max_backoff: need 0 < min_backoff <= max_backoff <= 3600 seconds")
    if x["queue_stanzas"] < 1:
        raise ConfigError(f"[xmpp] queue_stanzas: must be a positive integer, got {x['queue_stanzas']!r}")
    _check_cluster(s, clustered="cluster" in data or "cluster.node_id" in (overrides or {}))
    _check_site(s["directory"], s["webhooks"], s["auth"])
    if s["server"]["max_body_bytes"] < 1024:
        raise ConfigError("[server] max_body_bytes: must be at least 1024")
    if s["log"]["format"] not in ("text", "json"):
        raise ConfigError(f"[log] format: must be \"text\" or \"json\", got {s['log']['format']!r}")
    if s["log"]["level"] not in ("debug", "info", "warn", "error"):
        raise ConfigError(f"[log] level: must be debug, info, warn or error, got {s['log']['level']!r}")
    if s["metrics"]["token"] is not None and len(s["metrics"]["token"]) < 16:
        raise ConfigError("[metrics] token: must be at least 16 characters")
    for section, key in (("auth", "token_secret"), ("admin", "api_key"), ("metrics", "token"), ("xmpp", "secret"),
                         ("directory", "secret"), ("webhooks", "secret")):
        # The placeholders of etc/nextim.toml are public: with them anyone could mint
        # tokens or call the admin API of a daemon started from a copied example file.
        if (s[section][key] or "").lower().startswith("change-me"):
            raise ConfigError(f"[{section}] {key}: still the example value from etc/nextim.toml; set a "
                              "random one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return Config(sections)


NODE_ID = re.compile(r"^[a-z0-9]{1,16}$")
REDIS_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _check_cluster(s, clustered):
    """Validate ``[cluster]``; ``s["cluster"]["enabled"]`` says whether it is on (the
    section, or ``--node-id``, is present). :raises ConfigError: naming the key."""
    c = s["cluster"]
    c["enabled"] = clustered
    if not clustered:
        return
    if c["node_id"] is None or not NODE_ID.match(c["node_id"]):
        raise ConfigError(f"[cluster] node_id: 1 to 16 characters of a-z and 0-9 required, got {c['node_id']!r}")
    if s["storage"]["backend"] != "postgres":
        raise ConfigError("[cluster]: needs [storage] backend = \"postgres\" (every node must share the "
                          "durable state; a SQLite file belongs to one process)")
    if importlib.util.find_spec("txredisapi") is None:
        raise ConfigError("[cluster]: needs the Redis client: pip install 'nextim-twisted[cluster]' (txredisapi)")
    if not c["redis_url"].startswith("redis://"):
        raise ConfigError(f"[cluster] redis_url: must start with redis://, got {c['redis_url']!r}")
    if not REDIS_PREFIX.match(c["redis_prefix"]):
        raise ConfigError("[cluster] redis_prefix: 1 to 64 of letters, digits, _ . : -")
    if not 1 <= c["node_timeout"] <= 3600:
        raise ConfigError(f"[cluster] node_timeout: must be between 1 and 3600 seconds, got {c['node_timeout']!r}")


#: Events ``[webhooks] events`` may list (docs/integration.md#webhooks).
WEBHOOK_EVENTS = ("message", "message.offline", "presence", "room.join", "room.leave")


def _check_url(section, key, value):
    if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ConfigError(f"[{section}] {key}: must be an http:// or https:// URL, got {value!r}")


def _check_site(d, w, auth):
    """``[directory]`` and ``[webhooks]`` (docs/integration.md)."""
    if d["provider"] not in ("local", "http"):
        raise ConfigError(f"[directory] provider: must be \"local\" or \"http\", got {d['provider']!r}")
    if d["provider"] == "http":
        for key in ("url", "secret"):
            if not d[key]:
                raise ConfigError(f"[directory] {key}: required when provider = \"http\"")
        _check_url("directory", "url", d["url"])
        if auth["method"] != "token":
            # Passwords are the daemon's own accounts; the site's users sign in at the site.
            raise ConfigError("[directory] provider = \"http\" needs [auth] method = \"token\"")
    if d["secret"] is not None and len(d["secret"]) < 16:
        raise ConfigError("[directory] secret: must be at least 16 characters")
    if not 0 <= d["cache_seconds"] <= 86400:
        raise ConfigError(f"[directory] cache_seconds: must be 0 to 86400, got {d['cache_seconds']!r}")
    for section, values in (("directory", d), ("webhooks", w)):
        if not 0 < values["timeout"] <= 120:
            raise ConfigError(f"[{section}] timeout: must be more than 0 and at most 120 seconds, "
                              f"got {values['timeout']!r}")
    if w["url"] is not None:
        _check_url("webhooks", "url", w["url"])
        if not w["secret"]:
            raise ConfigError("[webhooks] secret: required when url is set")
    if w["secret"] is not None and len(w["secret"]) < 16:
        raise ConfigError("[webhooks] secret: must be at least 16 characters")
    for event in w["events"]:
        if event not in WEBHOOK_EVENTS:
            raise ConfigError(f"[webhooks] events: unknown event {event!r} (known: {', '.join(WEBHOOK_EVENTS)})")
    if not 60 <= w["max_age"] <= 30 * 86400:
        raise ConfigError(f"[webhooks] max_age: must be 60 to 2592000 seconds, got {w['max_age']!r}")


def load(path, demo=False, overrides=None):
    """Read and validate a TOML file. ``path=None`` means all defaults.

    :raises ConfigError: unreadable file, TOML syntax error, or any :func:`from_dict` error.
    """
    data = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: TOML syntax error: {e}") from None
    return from_dict(data, demo=demo, overrides=overrides)
