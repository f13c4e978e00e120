"""No change of behaviour: seeded tiny runs log the losses recorded before the package moved.

The fixture (``tests/golden_losses.py --record``) holds every train, eval and adaptive record of
four tiny runs (one-to-one matching, SpeaQ's recipe, adaptive mixing with adapted weights, share
and weight schedules). On the machine and torch build that recorded it the comparison is bit for
bit; elsewhere floating-point kernels may round differently, so it allows 1e-5 relative.
"""

from __future__ import annotations

import json
import math

import pytest
from golden_losses import FIXTURE, SCENARIOS, machine, run_scenario

GOLDEN = json.loads(FIXTURE.read_text())
EXACT = GOLDEN["machine"] == machine()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_logged_records_equal_the_recorded_ones(name, tmp_path, demo_root):
    ours, theirs = run_scenario(name, tmp_path, demo_root), GOLDEN["runs"][name]
    assert [(r["kind"], r["step"]) for r in ours] == [(r["kind"], r["step"]) for r in theirs]
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if EXACT or not isinstance(value, float):
                assert a[key] == value, (a["kind"], a["step"], key)
            else:
                assert math.isclose(a[key], value, rel_tol=1e-5, abs_tol=1e-7), (a["step"], key)
