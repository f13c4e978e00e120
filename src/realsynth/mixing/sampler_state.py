"""The checks a :class:`realsynth.mixing.sampler.MixedBatchSampler` makes before it resumes
from a saved ``state_dict``."""

from __future__ import annotations

from typing import Any

__all__ = ["OPTIONAL_KEYS", "resume_point"]

#: Keys a state holds only for some samplers (changing schedules, adaptive shares).
OPTIONAL_KEYS = frozenset({"ratio_schedules", "share_history", "weight_history", "share_horizon"})
#: Settings a resume must agree on.
_MATCHING_SETTINGS = ("seed", "batch_size", "world_size", "num_batches")


def resume_point(saved: dict[str, Any], current: dict[str, Any]) -> tuple[int, int]:
    """The ``(epoch, position)`` to resume at from ``saved``, checked against the sampler's
    ``current`` state.

    Raises:
        ValueError: a key is missing, or seed / batch size / world size / epoch length / ratio
            schedules differ from ``current``'s, or the epoch or position is out of range.
    """
    missing = sorted(set(current) - set(saved) - OPTIONAL_KEYS)
    if missing:
        raise ValueError(f"MixedBatchSampler state_dict is missing keys {missing}")
    for key in _MATCHING_SETTINGS:
        if int(saved[key]) != current[key]:
            raise ValueError(
                f"MixedBatchSampler state_dict has {key}={saved[key]}, but this "
                f"sampler has {key}={current[key]}"
            )
    if saved.get("ratio_schedules") != current.get("ratio_schedules"):
        raise ValueError(
            "MixedBatchSampler state_dict was saved with ratio schedules "
            f"{saved.get('ratio_schedules')}, but this sampler has "
            f"{current.get('ratio_schedules')}"
        )
    num_batches = current["num_batches"]
    position = int(saved["position"])
    if not 0 <= position <= num_batches or int(saved["epoch"]) < 0:
        raise ValueError(
            f"MixedBatchSampler state_dict has epoch={saved['epoch']}, "
            f"position={position}; expected epoch >= 0 and position in [0, {num_batches}]"
        )
    return int(saved["epoch"]), position
