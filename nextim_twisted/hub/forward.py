"""Calls carried to the node that owns a ticket, and their answers back, over the
nodes' pub/sub channels.

A ticket names its node (``<node_id>.<random>``, docs/design.md#d4-tickets), and only
that node holds the session. A ticket-bearing call (``message``, ``presence``,
``offline`` …) that a balancer sent to another node is forwarded to the owner, which
runs it exactly as if it had received the request, and the answer is relayed back; so
"never back to the sending session" and every other rule are the owner's, unchanged
(docs/design.md#d20-cluster).
"""
from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

if TYPE_CHECKING:  # (web/webim.py imports this module in a single daemon too, without txredisapi)
    from .cluster_state import ClusterState

log = Logger()

#: ``await run(call, params) -> answer``: what the owner does with a forwarded call. The
#: answer is a JSON-able dict, e.g. ``{"status": 200, "body": ...}``; it travels back as is.
RunCall = Callable[[str, dict], Awaitable[dict]]


class OwnerUnreachable(Exception):
    """The owning node did not answer within the timeout (it may have just died)."""


class CallForwarder:
    """Both ends of forwarded calls.

    :param state: this node's :class:`~.cluster_state.ClusterState` (for publishing).
    :param clock: ``IReactorTime`` for the answer timeout.
    :param run: executes a call forwarded to this node (see :data:`RunCall`).
    :param timeout: seconds to wait for an owner's answer.
    """

    def __init__(self, state: ClusterState, clock, run: RunCall, timeout: float = 5.0):
        self.state = state
        self.clock = clock
        self.run = run
        self.timeout = timeout
        self._pending: dict[str, defer.Deferred] = {}

    async def forward(self, node_id: str, call: str, params: dict[str, Any]) -> dict:
        """Run ``call`` on ``node_id`` and return its answer.

        :raises OwnerUnreachable: the node is not subscribed, or did not answer in time.
        """
        call_id = secrets.token_hex(8)
        waiter: defer.Deferred = defer.Deferred()
        self._pending[call_id] = waiter
        try:
            listeners = await self.state.publish_node(node_id, {
                "t": "call", "id": call_id, "from": self.state.node_id, "call": call, "params": params})
            if not listeners:
                raise OwnerUnreachable(f"node {node_id} is not connected")
            waiter.addTimeout(self.timeout, self.clock)
            try:
                return await waiter
            except defer.TimeoutError:
                raise OwnerUnreachable(f"node {node_id} did not answer within {self.timeout} s") from None
        finally:
            self._pending.pop(call_id, None)

    def received(self, payload: dict) -> bool:
        """Handle a ``call`` or ``reply`` payload from this node's channel.

        :returns: False when ``payload`` is neither (the caller handles it).
        """
        kind = payload.get("t")
        if kind == "reply":
            waiter = self._pending.pop(str(payload.get("id")), None)
            if waiter is not None and not waiter.called and isinstance(payload.get("answer"), dict):
                waiter.callback(payload["answer"])
            return True
        if kind == "call":
            defer.ensureDeferred(self._answer(payload))
            return True
        return False

    async def _answer(self, payload: dict) -> None:
        call, params, origin = payload.get("call"), payload.get("params"), payload.get("from")
        if not isinstance(call, str) or not isinstance(params, dict) or not isinstance(origin, str):
            log.warn("dropped a malformed forwarded call from {origin!r}", origin=origin)
            return
        try:
            answer = await self.run(call, params)
        except Exception:
            log.failure("forwarded call {call} failed", call=call)
            answer = {"status": 500, "body": {"success": False, "error": "internal_error",
                                              "error_msg": "the owning node failed to run the call"}}
        try:
            await self.state.publish_node(origin, {"t": "reply", "id": payload.get("id"), "answer": answer})
        except Exception:
            log.failure("could not send the answer of {call} back to {origin}", call=call, origin=origin)
