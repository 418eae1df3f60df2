"""docs/operations.md stays in sync with the code it documents, so operators can trust it."""
import re

from nextim_twisted import config
from nextim_twisted.ctl import build_parser


def _doc():
    with open("docs/operations.md", encoding="utf-8") as f:
        return f.read()


def test_every_config_key_is_in_the_reference_table():
    text = _doc()
    for section, keys in config.SCHEMA.items():
        start = text.find(f"### `[{section}]`")
        assert start >= 0, f"[{section}] has no table in docs/operations.md"
        end = text.find("\n### ", start + 1)
        table = text[start:end if end > 0 else len(text)]
        for key, (_, default) in keys.items():
            row = re.search(rf"^\| `{key}` \| ([^|]+) \|", table, re.M)
            assert row, f"[{section}] {key} is not in docs/operations.md's configuration table"
            if default not in (None, []) and not isinstance(default, bool):
                assert str(default) in row.group(1), f"[{section}] {key}: default {default!r} not in the table"
            if isinstance(default, bool):
                assert str(default).lower() in row.group(1), f"[{section}] {key}: default {default!r}"


def test_every_nextimctl_command_is_in_the_reference():
    text = _doc()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command, parser in sub.choices.items():
        actions = [a for a in parser._actions if a.dest == "action"]
        names = [f"{command} {action}" for action in actions[0].choices] if actions else [command]
        for name in names:
            assert f"`{name}" in text or f"/ `{name}" in text, f"nextimctl {name} is not documented"
