"""The second round of promises of docs/guarantees.md, each with the input that broke
it before: typing to unknown or offline users, session lifetime, logout and password
changes, erasure and export, directory changes made outside the daemon."""
import pytest
import pytest_twisted

inline = pytest_twisted.ensureDeferred


async def hold_out(daemon, poll):
    """The answer of a parked ``poll`` once its hold has run out on the test clock."""
    await daemon.settle()
    daemon.clock.advance(daemon.config.timers.poll_hold + 0.2)  # the wheel is 100 ms coarse
    return await poll


# -- typing statuses ---------------------------------------------------------------

@inline
async def test_typing_to_an_unknown_user_is_404_like_a_message(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    typing = await daemon.call("status", ticket=a, to="ghost", show="typing")
    message = await daemon.call("message", ticket=a, type="unicast", to="ghost", body="hi")
    assert (typing.status, typing.json["error"]) == (404, "unknown_user")
    assert (message.status, message.json["error"]) == (404, "unknown_user")


@inline
async def test_typing_to_an_offline_user_is_never_stored(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    assert (await daemon.call("status", ticket=a, to="bob", show="typing")).text == "ok"
    assert (await daemon.call("message", ticket=a, type="unicast", to="bob", body="hi")).text == "ok"
    bob = await daemon.online("bob")
    assert [m["body"] for m in bob["new_messages"]] == ["hi"]
    first = await hold_out(daemon, daemon.poll(bob["connection"]["ticket"], ack=0))
    assert first.json["status"] == "ok" and first.json["statuses"] == []
