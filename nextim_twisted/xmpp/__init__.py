"""XMPP bridge: the daemon as a XEP-0114
external component, so web users are ``<id>@<component_domain>`` to XMPP users.

- :mod:`.mapping`: show/presence mapping and JID <-> user id (pure).
- :mod:`.subscriptions`: the RFC 3921 subscription state machine per pair (pure).
- :mod:`.store`: the bridge's tables (schema version 2).
- :mod:`.component`: the component connection: reconnect with backoff, bounded queue.
- :mod:`.bridge`: the glue between the component, the router and the handlers.

Operator documentation: ``docs/xmpp.md``.
"""
