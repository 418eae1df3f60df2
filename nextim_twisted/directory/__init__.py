"""Who exists, who is whose buddy, which rooms: the directory the handlers read
(docs/design.md#d14-directory, docs/design.md#d22-the-site-as-source-of-truth).

:mod:`.base` is the interface, :mod:`.local` the daemon's own tables (the admin API
writes them), :mod:`.http` the host site asked over HTTP. :func:`make_directory`
builds the one ``[directory] provider`` names.
"""


def make_directory(config, store, reactor, clock):
    """The configured :class:`~.base.IDirectory` (not started).

    :param config: the daemon :class:`~nextim_twisted.config.Config`.
    :param store: the started-or-not :class:`~nextim_twisted.store.base.Store`.
    :param reactor: what the HTTP client connects with.
    :param clock: ``IReactorTime`` for caching and timeouts.
    """
    cfg = config.directory
    if cfg.provider == "http":
        from .http import HTTPDirectory
        return HTTPDirectory.from_config(cfg, reactor, clock)
    from .local import LocalDirectory
    return LocalDirectory(store)
