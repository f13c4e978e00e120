"""One-line checks of single config values (the key is named in the error)."""

from __future__ import annotations

import math
import re

from realsynth.config.schema import ConfigError


def check_metric(value: str, key: str) -> None:
    if not re.fullmatch(r"(R|ngR|mR|zsR)@(20|50|100)", value):
        raise ConfigError(
            f"{key} must be one of R@K, ngR@K, mR@K, zsR@K with K in 20, 50, 100, got {value!r}",
            key,
        )


def check_ratio(value: float, key: str) -> None:
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"{key} must be in [0, 1], got {value}", key)


def check_weight(value: float, key: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0, got {value}", key)


def check_positive(value: int, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}", key)
