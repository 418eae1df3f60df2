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


# -- the postgres extra --------------------------------------------------------------

_WITHOUT_PSYCOPG = "import sys; sys.modules['psycopg'] = None; sys.argv = {argv!r}; {run}"


@pytest.mark.parametrize("program", ["twistd", "nextimctl", "tac"])
def test_postgres_without_psycopg_is_one_line_and_exit_2(tmp_path, program):
    """Without the optional driver, every way of starting names the extra to install:
    one line, exit status 2, no traceback."""
    import os
    import subprocess
    import sys
    cfg = tmp_path / "nextim.toml"
    cfg.write_text('[storage]\nbackend = "postgres"\ndsn = "host=127.0.0.1"\n'
                   f'[auth]\ntoken_secret = "{"s" * 20}"\n[admin]\napi_key = "{"k" * 20}"\n')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if program == "twistd":
        code = _WITHOUT_PSYCOPG.format(argv=["twistd", "-n", "--pidfile=", "nextim", "-c", str(cfg)],
                                       run="from twisted.scripts.twistd import run; run()")
    elif program == "tac":
        code = _WITHOUT_PSYCOPG.format(argv=["twistd", "-n", "--pidfile=", "-y", os.path.join(repo, "nextim.tac")],
                                       run="from twisted.scripts.twistd import run; run()")
    else:
        code = _WITHOUT_PSYCOPG.format(argv=["nextimctl", "--config", str(cfg), "stats"],
                                       run="from nextim_twisted.ctl import main; main()")
    env = dict(os.environ, PYTHONPATH=repo, NEXTIM_CONFIG=str(cfg))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nextim-twisted[postgres]'" in lines[0], r.stderr


# -- rate limits -------------------------------------------------------------------

@pytest.mark.config(limits={"messages_per_minute": 10})
@inline
async def test_rate_limits_are_per_user_not_per_address(daemon):
    """Behind a proxy every user comes from one address: one user's flood must not
    spend another's budget, and a forged X-Forwarded-For buys nothing."""
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    spoof = {"X-Forwarded-For": "203.0.113.%d"}
    alice = [(await daemon.call("message", ticket=a, type="unicast", to="dave", body=str(i),
                                headers={"X-Forwarded-For": spoof["X-Forwarded-For"] % i})).status
             for i in range(7)]
    bob = [(await daemon.call("message", ticket=b, type="unicast", to="dave", body=str(i))).status
           for i in range(5)]
    assert alice[:5] == [200] * 5 and alice[5:] == [429, 429]
    assert bob == [200] * 5
