"""Demo data for ``twistd nextim --demo`` (README.md, "Try it"): three users who are buddies,
a room with all of them and a welcome notification — only into an empty database."""
from twisted.logger import Logger

from .auth import hash_password

log = Logger()

#: (id, nick); each demo password equals the user id.
DEMO_USERS = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")]
DEMO_ROOM = ("lobby", "Lobby")
WELCOME = ('Welcome to <strong>nextim-twisted</strong>! Open a second browser window, log in as '
           'another demo user and start chatting.')


async def seed(store, blocking, now_ms):
    """Seed the demo directory if there are no users yet.

    :param blocking: ``callable(f, *args) → Deferred`` (password hashing is slow).
    :returns: True if it seeded.
    """
    if await store.list_users(limit=1):
        return False
    for user_id, nick in DEMO_USERS:
        await store.put_user(user_id, nick)
        await store.set_password_hash(user_id, await blocking(hash_password, user_id))
    ids = [u for u, _ in DEMO_USERS]
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            await store.put_buddy(a, b, "Friends")
            await store.put_buddy(b, a, "Friends")
    await store.put_room(*DEMO_ROOM)
    for user_id in ids:
        await store.put_member(DEMO_ROOM[0], user_id)
        await store.add_notification(user_id, WELCOME, "", now_ms)
    return True
