"""The search space of ``realsynth sweep`` (``SWEEP.SPACE``): any config key, checked once.

A parameter is a config key with ``TYPE`` ``float``, ``log_float`` or ``int`` (between ``LOW``
and ``HIGH``, inclusive) or ``categorical`` (one of ``CHOICES``). Every error names the
parameter's position and key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from realsynth.config import ConfigError, load_config, to_yaml

TYPES = ("float", "log_float", "int", "categorical")
# Keys whose values are shares of a batch: a range outside [0, 1] makes no sense.
_RATIO_KEYS = ("REAL_SAMPLING_RATIO", "RATIO")


@dataclass(frozen=True)
class Parameter:
    """One dimension of the search."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.type != "categorical"

    def suggest(self, trial: Any) -> Any:
        """The value of this parameter for an Optuna trial."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.type == "log_float")

    def grid(self, points: int) -> list[Any]:
        """``points`` values evenly spread over the range (log-spaced for ``log_float``)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return sorted({int(round(v)) for v in np.linspace(self.low, self.high, points)})
        if self.type == "log_float":
            return [float(v) for v in np.geomspace(self.low, self.high, points)]
        return [float(v) for v in np.linspace(self.low, self.high, points)]


def parse_space(cfg: DictConfig) -> list[Parameter]:
    """``SWEEP.SPACE`` as parameters, every one checked against the schema.

    Raises:
        ConfigError: an empty space, an unknown or repeated key, a bad type, ``LOW > HIGH``, a
            log range that reaches 0, a ratio outside [0, 1], a categorical without choices, or
            a value the config itself refuses.
    """
    if not cfg.SWEEP.SPACE:
        raise ConfigError("SWEEP.SPACE is empty: name at least one key to search")
    space, seen = [], set()
    for i, node in enumerate(cfg.SWEEP.SPACE):
        where = f"SWEEP.SPACE[{i}] ({node.KEY})"
        if node.KEY in seen:
            raise ConfigError(f"{where}: the key is searched twice")
        seen.add(node.KEY)
        parameter = _parameter(node, where)
        for value in _corners(parameter):
            _check_value(cfg, parameter.key, value, where)
        space.append(parameter)
    return space


def _parameter(node: Any, where: str) -> Parameter:
    if node.TYPE not in TYPES:
        raise ConfigError(f"{where}: TYPE must be one of {TYPES}, got {node.TYPE!r}")
    if node.TYPE == "categorical":
        if not node.CHOICES:
            raise ConfigError(f"{where}: a categorical parameter needs CHOICES")
        return Parameter(node.KEY, node.TYPE, choices=tuple(OmegaConf.to_container(node.CHOICES)))
    if node.LOW is None or node.HIGH is None:
        raise ConfigError(f"{where}: a {node.TYPE} parameter needs LOW and HIGH")
    low, high = float(node.LOW), float(node.HIGH)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"{where}: needs finite LOW <= HIGH, got LOW={low}, HIGH={high}")
    if node.TYPE == "log_float" and low <= 0:
        raise ConfigError(f"{where}: a log_float range must stay above 0, got LOW={low}")
    if node.TYPE == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"{where}: an int parameter needs integer bounds, got {low}, {high}")
    if node.KEY.rsplit(".", 1)[-1] in _RATIO_KEYS and (low < 0 or high > 1):
        raise ConfigError(f"{where}: a sampling ratio must lie in [0, 1], got [{low}, {high}]")
    return Parameter(node.KEY, node.TYPE, low, high)


def _corners(parameter: Parameter) -> Sequence[Any]:
    if not parameter.numeric:
        return parameter.choices
    if parameter.type == "int":  # the values a trial would get: ints, not 200.0
        return (int(parameter.low), int(parameter.high))
    return (parameter.low, parameter.high)


def _check_value(cfg: DictConfig, key: str, value: Any, where: str) -> None:
    """The config must take ``key=value`` (the key exists, the type fits, the value is valid)."""
    try:
        load_config(None, [override(key, value)], base_yaml=to_yaml(cfg))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def override(key: str, value: Any) -> str:
    """``KEY=VALUE`` with the value written as YAML."""
    text = OmegaConf.to_yaml({"v": value}).split(":", 1)[1].strip()
    return f"{key}={text}"
