"""``twistd nextim``: command-line options and the service maker."""
import sys

from twisted.python import usage

from . import config as config_module


class Options(usage.Options):
    """``twistd nextim [--config FILE] [--listen ENDPOINT] [--demo]``."""

    optParameters = [
        ["config", "c", None, "TOML configuration file (see etc/nextim.toml)."],
        ["listen", "l", None, "strports endpoint to listen on, overriding [server] listen "
                              "(e.g. tcp:8000:interface=127.0.0.1)."],
        ["public-url", None, None, "Public base URL, overriding [server] public_url."],
        ["node-id", None, None, "This node's id in a cluster, overriding [cluster] node_id "
                                "(etc/nextim@.service passes its instance name)."],
    ]
    optFlags = [
        ["demo", None, "Demo mode: SQLite file in the working directory, accounts auth, "
                       "demo users alice, bob and carol (if the database is empty)."],
    ]


def load_config(options):
    """The validated config for these options. Exits with one clear line on error."""
    overrides = {}
    if options["listen"]:
        overrides["server.listen"] = options["listen"]
    if options["public-url"]:
        overrides["server.public_url"] = options["public-url"]
    if options["node-id"]:
        overrides["cluster.node_id"] = options["node-id"]
    try:
        return config_module.load(options["config"], demo=options["demo"], overrides=overrides)
    except config_module.ConfigError as e:
        sys.stderr.write(f"nextim: configuration error: {e}\n")
        raise SystemExit(2)


def makeService(options):
    """Build the daemon's service (the only place that uses the global reactor)."""
    from twisted.internet import reactor

    from .service import NextimService

    config = load_config(options)
    return NextimService(config, reactor, demo=options["demo"])
