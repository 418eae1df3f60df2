"""A real XMPP client for the bridge tests: slixmpp in a thread with its own asyncio
loop, recording what it receives. The Twisted side polls the records with
:func:`until` (it never blocks the reactor).
"""
import asyncio
import ssl
import threading
import time

import slixmpp
from twisted.internet import reactor, task


async def until(predicate, timeout=10.0, what="condition"):
    """Wait (without blocking the reactor) until ``predicate()`` is truthy; return it.

    :raises AssertionError: after ``timeout`` seconds, naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


class XmppUser:
    """``user@domain`` logged in to Prosody on 127.0.0.1:``port``.

    Records (lists of dicts, appended from the client thread): ``messages``
    (``from``, ``type``, ``body``, ``state``), ``presences`` (``from``, ``type``,
    ``show``, ``status``), ``groupchat`` (``nick``, ``body``), ``muc_presences``
    (``nick``, ``type``). Subscription requests are approved and answered by asking
    back (slixmpp's roster defaults: auto_authorize, auto_subscribe).
    """

    def __init__(self, jid, password, port):
        self.jid, self.password, self.port = jid, password, port
        self.messages, self.presences, self.groupchat, self.muc_presences = [], [], [], []
        self.history = []  # groupchat replayed on join (XEP-0203 delay), like groupchat
        self.session_started = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=f"xmpp-{jid}", daemon=True)
        self.client = None

    # -- thread ---------------------------------------------------------------
    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _build(self):
        c = slixmpp.ClientXMPP(self.jid, self.password)
        c.ssl_context = ssl.create_default_context()
        c.ssl_context.check_hostname = False
        c.ssl_context.verify_mode = ssl.CERT_NONE
        c.enable_direct_tls = False  # Prosody's c2s port speaks STARTTLS only
        for plugin in ("xep_0030", "xep_0045", "xep_0085", "xep_0199"):
            c.register_plugin(plugin)
        c.add_event_handler("session_start", self._session_start)
        c.add_event_handler("message", self._message)
        c.add_event_handler("message_error", self._message)
        c.add_event_handler("chatstate", lambda msg: None if msg["body"] else self._message(msg))
        c.add_event_handler("groupchat_message", self._groupchat)
        c.add_event_handler("presence", self._presence)
        c.add_event_handler("groupchat_presence", self._muc_presence)
        return c

    async def _session_start(self, _):
        self.client.send_presence()
        await self.client.get_roster()
        self.session_started.set()

    def _message(self, msg):
        state = None
        for name in ("active", "composing", "paused", "inactive", "gone"):
            if msg.xml.find("{http://jabber.org/protocol/chatstates}" + name) is not None:
                state = name
        if msg["type"] == "groupchat":
            return
        self.messages.append({"from": msg["from"].bare, "type": msg["type"], "body": msg["body"],
                              "state": state, "error": msg["error"]["condition"] if msg["type"] == "error" else None})

    def _groupchat(self, msg):
        if msg.xml.find("{urn:xmpp:delay}delay") is not None:
            self.history.append({"room": msg["from"].bare, "nick": msg["mucnick"], "body": msg["body"]})
            return
        self.groupchat.append({"room": msg["from"].bare, "nick": msg["mucnick"], "body": msg["body"]})

    def _presence(self, pres):
        if pres.xml.find("{http://jabber.org/protocol/muc#user}x") is not None:
            return  # recorded by _muc_presence
        self.presences.append({"from": pres["from"].bare, "resource": pres["from"].resource,
                               "type": pres["type"], "show": pres["show"], "status": pres["status"]})

    def _muc_presence(self, pres):
        self.muc_presences.append({"room": pres["from"].bare, "nick": pres["from"].resource, "type": pres["type"]})

    # -- control (from the test thread) ---------------------------------------------
    def _call(self, fn, *args, **kwargs):
        self.loop.call_soon_threadsafe(lambda: fn(*args, **kwargs))

    def start(self):
        """Start the thread and connect; :meth:`wait_started` to wait for the session."""
        self.thread.start()
        self.connect()

    def connect(self):
        """(Re)connect with a fresh client object."""
        self.session_started.clear()

        def go():
            self.client = self._build()
            self.client.connect("127.0.0.1", self.port)
        self._call(go)

    async def wait_started(self, timeout=15):
        await until(self.session_started.is_set, timeout, f"{self.jid} to log in")

    def send_message(self, to, body=None, mtype="chat", state=None):
        def go():
            msg = self.client.make_message(mto=to, mbody=body, mtype=mtype)
            if state:
                msg["chat_state"] = state
            msg.send()
        self._call(go)

    def send_presence(self, show=None, status=None, ptype=None, to=None):
        self._call(lambda: self.client.send_presence(pshow=show, pstatus=status, ptype=ptype, pto=to))

    def join(self, room, nick, history=0):
        """Join a MUC room asking for ``history`` messages of history (XEP-0045 §7.2.15)."""
        self._call(lambda: self.client.plugin["xep_0045"].join_muc(room, nick, maxhistory=str(history)))

    def remove_contact(self, jid):
        """Remove ``jid`` from the roster (RFC 3921 §8.6: the server cancels both subscriptions)."""
        self._call(lambda: self.client.del_roster_item(jid))

    def last_presence(self, frm):
        """The last non-MUC presence received from bare JID ``frm``, or None."""
        found = [p for p in self.presences if p["from"] == frm]
        return found[-1] if found else None

    def stop(self):
        """Disconnect and end the thread."""
        def go():
            if self.client is not None:
                self.client.disconnect(wait=0.2)
        self._call(go)
        time.sleep(0.3)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
