"""One vocabulary of error codes (docs/design.md#d2-errors): ``errors.ERROR_CODES`` is
exactly what the package can answer, and exactly what ``web/openapi.json`` lists."""
import ast
import importlib
import json
import pathlib
import pkgutil

import nextim_twisted
from nextim_twisted.errors import ERROR_CODES, ProtocolError
from nextim_twisted.web.ops import OPENAPI_PATH

PACKAGE = pathlib.Path(nextim_twisted.__file__).parent


def error_classes():
    """``{class name: class}`` of every ProtocolError subclass in the package."""
    for info in pkgutil.walk_packages(nextim_twisted.__path__, "nextim_twisted."):
        importlib.import_module(info.name)
    found, todo = {}, [ProtocolError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def raised_codes():
    """``{code: [where]}``: every ``code="..."`` given to a call, and the class default
    of every error class constructed without one."""
    classes = error_classes()
    codes, dynamic = {}, []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            if code is None and name in classes:
                codes.setdefault(classes[name].code, []).append(where)
            elif isinstance(code, ast.Constant) and isinstance(code.value, str):
                codes.setdefault(code.value, []).append(where)
            elif code is not None:
                dynamic.append(where)
    assert dynamic == [], "error codes must be literals, so they can be checked here"
    return codes


def openapi_codes():
    with open(OPENAPI_PATH, encoding="utf-8") as f:
        doc = json.load(f)
    return set(doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"])


def test_every_code_raised_is_in_the_vocabulary():
    unknown = {code: where for code, where in raised_codes().items() if code not in ERROR_CODES}
    assert unknown == {}, "add these to nextim_twisted/errors.ERROR_CODES (and openapi.json)"


def test_every_code_in_the_vocabulary_can_be_answered():
    assert set(ERROR_CODES) - set(raised_codes()) == set(), "listed in ERROR_CODES but never raised"


def test_openapi_lists_exactly_the_vocabulary():
    listed = openapi_codes()
    assert set(ERROR_CODES) - listed == set(), "answered but not in openapi.json's Error.error enum"
    assert listed - set(ERROR_CODES) == set(), "in openapi.json but never answered"


def test_every_code_has_a_meaning():
    assert all(isinstance(text, str) and text for text in ERROR_CODES.values())
