"""The daemon's log output (docs/deployment.md#4-logs): human text or JSON lines, filtered by level.

Configured by the ``[log]`` section: ``format`` = ``"text"`` (default) or ``"json"``,
``level`` = ``"debug"``, ``"info"`` (default), ``"warn"`` or ``"error"``.

How it reaches twistd: twistd asks the application for an ``ILogObserver``
component before it falls back to its own ``--logfile`` observer
(``twisted.application.app.AppLogger.start``). :func:`install` sets that component,
so ``twistd -n nextim`` writes our format to standard output (under systemd:
journald). ``twistd --logger=fully.qualified.factory`` still wins over it.

Every module logs through its own ``twisted.logger.Logger`` with structured fields
(docs/architecture.md#rules-of-the-layers); :class:`JSONLinesObserver` writes those fields as JSON keys, so a log
pipeline can filter on ``status``, ``path``, ``user_id`` … without parsing text.
Nothing here may ever carry message bodies, tokens, tickets or passwords: the
events themselves are written not to contain them (see ``web/metrics.py``).
"""
import json
import sys
from datetime import datetime, timezone

from twisted.logger import (FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent, textFileLogObserver)
from twisted.python.components import Componentized
from zope.interface import implementer

#: ``[log] level`` names → ``LogLevel``.
LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

#: ``[log] format`` values.
FORMATS = ("text", "json")

# Keys of legacy ``twisted.python.log`` events that are plumbing, not data.
_SKIP = frozenset({"format", "isError", "message", "why", "failure", "time"})


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON object on one line (``\\n``-terminated).

    Keys: ``time`` (ISO 8601 UTC with milliseconds), ``level`` (``debug`` …
    ``critical``), ``namespace`` (the emitting module), ``msg`` (the formatted
    human text), ``traceback`` (only when the event carries a failure), then every
    other event field whose value is a string, number, boolean or null, under its
    own name. Fields starting with ``log_`` are Twisted's and are left out.

    :param stream: a text file object (flushed after every line).
    """

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, event):
        when = event.get("log_time")
        level = event.get("log_level")
        record = {
            "time": datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
            if when is not None else None,
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace"),
            "msg": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        for key, value in event.items():
            if key.startswith("log_") or key in _SKIP or key in record:
                continue
            if value is None or isinstance(value, (str, int, float, bool)):
                record[key] = value
        self.stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.stream.flush()


def make_observer(fmt="text", level="info", stream=None):
    """An ``ILogObserver`` writing ``fmt`` (``"text"`` or ``"json"``) to ``stream``
    (default: ``sys.stdout``), dropping events below ``level``.

    :raises ValueError: unknown format or level (config validation catches both first).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}: {fmt!r}")
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}: {level!r}")
    stream = stream if stream is not None else sys.stdout
    inner = JSONLinesObserver(stream) if fmt == "json" else textFileLogObserver(stream)
    return FilteringLogObserver(inner, [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])])


def install(application, log_config, stream=None):
    """Give a twistd ``application`` the observer ``log_config`` asks for (``[log]``
    section: ``format``, ``level``), unless it already has one. Anything that is not
    a ``Componentized`` application (a plain ``MultiService`` in tests) is left alone.

    :returns: the installed observer, or None.
    """
    if not isinstance(application, Componentized):
        return None
    if application.getComponent(ILogObserver, None) is not None:
        return None
    observer = make_observer(log_config.format, log_config.level, stream)
    application.setComponent(ILogObserver, observer)
    return observer
