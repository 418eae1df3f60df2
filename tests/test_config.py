"""Configuration: validated at start, every error names the key (one clear line for the operator)."""
import re
import subprocess
import sys
import tomllib

import pytest

from nextim_twisted import config

GOOD = {"auth": {"token_secret": "s" * 16}, "admin": {"api_key": "k" * 16}}


def test_defaults():
    c = config.from_dict(GOOD)
    assert c.server.listen == "tcp:8000:interface=127.0.0.1"
    assert (c.timers.poll_hold, c.timers.session_idle, c.timers.user_grace) == (25, 10, 10)
    assert c.storage.backend == "sqlite"
    assert c.auth.method == "token"
    assert c.public_url == "http://127.0.0.1:8000"


def test_public_url_follows_listen():
    c = config.from_dict(GOOD, overrides={"server.listen": "tcp:9123:interface=0.0.0.0"})
    assert c.public_url == "http://127.0.0.1:9123"


@pytest.mark.parametrize("data, key", [
    ({"server": {"lisen": "x"}}, "[server] lisen"),
    ({"bogus": {}}, "[bogus]"),
    ({"timers": {"poll_hold": "25"}}, "[timers] poll_hold"),
    ({"timers": {"poll_hold": True}}, "[timers] poll_hold"),
    ({"timers": {"user_grace": -1}}, "[timers] user_grace"),
    ({"storage": {"backend": "mysql"}}, "[storage] backend"),
    ({"storage": {"backend": "postgres"}}, "[storage] dsn"),
    ({"auth": {"token_secret": None}}, "[auth] token_secret"),
    ({"auth": {"method": "ldap"}}, "[auth] method"),
    ({"admin": {"api_key": "short"}}, "[admin] api_key"),
    ({"limits": {"history": 0}}, "[limits] history"),
])
def test_errors_name_the_key(data, key):
    merged = {k: dict(v) for k, v in GOOD.items()}
    for section, values in data.items():
        merged.setdefault(section, {}).update(values)
        merged[section] = {k: v for k, v in merged[section].items() if v is not None}
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(merged)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_example_config_documents_every_key():
    text = open("etc/nextim.toml", encoding="utf-8").read()
    # Its secrets are placeholders the daemon refuses (tests/test_regressions.py):
    # load it as an operator would after editing them.
    edited = text.replace('"change-me-to-', '"edited-')
    loaded = config.from_dict(tomllib.loads(edited))
    for section, keys in config.SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert re.search(rf"^#? ?{key} =", text, re.M), f"[{section}] {key} is not in etc/nextim.toml"
    assert loaded.storage.backend == "sqlite"


def test_demo_needs_no_config():
    c = config.load(None, demo=True)
    assert c.auth.method == "accounts" and c.admin.api_key is None


def test_twistd_refuses_bad_config_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[timers]\npoll_hold = "long"\n')
    proc = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                           "-n", "--pidfile=", "nextim", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parent.parent),
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert "[timers] poll_hold: expected" in proc.stderr


def test_typed_section_views_declare_exactly_the_schema():
    # The Protocol views type checkers read (config.ServerSection …) list the keys of
    # SCHEMA, one for one, and Config declares one view per section.
    import typing

    from nextim_twisted import config as config_module

    hints = typing.get_type_hints(config_module.Config)
    assert set(hints) - {"_sections"} == set(config_module.SCHEMA)
    for name, keys in config_module.SCHEMA.items():
        view = hints[name]
        assert set(typing.get_type_hints(view)) == set(keys), name
