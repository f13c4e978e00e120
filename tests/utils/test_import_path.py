"""Reaching a user's code by ``package.module:name``: found, or one line saying what is wrong."""

from __future__ import annotations

import sys

import pytest

from realsynth.utils.import_path import load_callable, load_object


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "VALUE = 3\n"
        "def build(**kw):\n    return kw\n"
        "class Factory:\n    @staticmethod\n    def make():\n        return 'made'\n"
    )
    (pkg / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mypkg"
    for name in [m for m in sys.modules if m.startswith("mypkg")]:
        del sys.modules[name]


def test_a_function_a_nested_attribute_and_a_value_are_found(user_package):
    assert load_callable("mypkg.models:build")(a=1) == {"a": 1}
    assert load_callable("mypkg.models:Factory.make")() == "made"
    assert load_object("mypkg.models:VALUE") == 3


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("mypkg.models.build", "not an import path of the form package.module:name"),
        ("mypkg.nothere:build", "cannot import 'mypkg.nothere'"),
        ("mypkg.models:missing", "'mypkg.models' has no attribute 'missing'"),
        ("mypkg.broken:x", "importing 'mypkg.broken' failed (RuntimeError: boom at import)"),
        ("mypkg.models:VALUE", "names a int, not a callable"),
    ],
)
def test_what_is_wrong_is_one_line(user_package, path, message):
    with pytest.raises(ValueError) as info:
        load_callable(path)
    assert message in str(info.value) and "\n" not in str(info.value)
