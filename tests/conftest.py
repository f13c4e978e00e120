"""Fixtures shared across the test packages (helpers to import live beside: ``tiny_runs``)."""

from __future__ import annotations

import pytest
from tiny_runs import tiny_config


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """A tiny demo set (the sizes of ``tiny_runs.TINY``), generated once per test module, so
    that runs in spawned processes only read it."""
    from realsynth.training.demo_cache import ensure_demo_data

    root = tmp_path_factory.mktemp("demo")
    ensure_demo_data(tiny_config(tmp_path_factory.mktemp("gen"), demo_root=root))
    return root
