"""The browser client's protocol part, tested in Node without a browser.

``tests/js/*.test.js`` load ``nextim_twisted/web/static/app.js`` with
``require()`` (the file exports its DOM-free part, ``NextimClient``, to Node)
and drive it with fake timers and a fake transport: the comet loop's
seq/ack and backoff, the model, sends, typing, rooms (docs/client.md). This
test runs them with Node's built-in runner so the one pytest command covers
them too.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).resolve().parent / "js"
REPO_ROOT = JS_TESTS.parent.parent


def test_client_js_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the client's JavaScript unit tests (tests/js/) need Node 20+")
    proc = subprocess.run(
        [node, "--test", "--test-reporter=spec", str(JS_TESTS) + "/"],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail("node --test tests/js/ failed:\n" + output, pytrace=False)
    # A runner that found no test files also exits 0: make sure some ran.
    passed = re.search(r"^\S* ?pass (\d+)$", output, re.MULTILINE)
    assert passed and int(passed.group(1)) > 0, "no JavaScript test ran:\n" + output
