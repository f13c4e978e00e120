"""A user's own code, reached by an import path ``package.module:attribute`` (as Hydra's
``_target_`` or the Lightning CLI's ``class_path``): no registry."""

from __future__ import annotations

import importlib
from typing import Any


def load_object(path: str) -> Any:
    """The object named by ``path`` (``package.module:name``, or ``package.module:Class.name``).

    Raises:
        ValueError: ``path`` is not of that form, its module cannot be imported (the import
            error's first line is named), or the module has no such attribute.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r} is not an import path of the form package.module:name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{path!r}: cannot import {module_name!r} ({exc})") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise ValueError(
            f"{path!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"{path!r}: {module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    return found


def load_callable(path: str) -> Any:
    """Like :func:`load_object`, for a factory or class that must be callable."""
    found = load_object(path)
    if not callable(found):
        raise ValueError(f"{path!r} names a {type(found).__name__}, not a callable")
    return found
