"""The fixed sets of values of config keys: a :class:`Choice` enum per key kind.

OmegaConf refuses any value outside a ``Choice`` enum while merging, and ``load_config`` names
the key and the values allowed. The schema (:mod:`realsynth.config.schema`) types its keys with
these enums.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A config value from a fixed set; OmegaConf refuses any other value at merge time.

    OmegaConf reads a string as the member of that NAME, so every member's name is the string a
    user writes and its value the same string. The ``str`` mixin makes a member equal (and hash
    equal) to its string; ``str()`` and f-strings give the plain value, and ``to_yaml`` writes the
    name, which loads again. Builders hand ``.value`` (a plain ``str``) to the lower layers.
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)

    @classmethod
    def allowed(cls) -> str:
        """The values a user may write, for error messages: ``"a, b, c"``."""
        return ", ".join(cls.__members__)


class AdaptiveMethod(Choice):
    gradient_alignment = "gradient_alignment"


class AdaptiveScore(Choice):
    cosine = "cosine"
    projection = "projection"


class CeScope(Choice):
    all = "all"
    matched = "matched"


class Normalization(Choice):
    count = "count"
    weight = "weight"


class OnInvalidWeight(Choice):
    error = "error"
    fallback = "fallback"


class PredicateClassWeights(Choice):
    none = "none"
    frequency = "frequency"


class One2ManyScheme(Choice):
    none = "none"
    static = "static"
    dynamic = "dynamic"


class One2ManyDynamicScheme(Choice):
    min = "min"
    max = "max"
    gm = "gm"
    am = "am"


class Preset(Choice):
    tiny = "tiny"
    base = "base"


class BackboneNorm(Choice):
    """``default`` = the preset's norm. ``""`` (what earlier versions wrote for it) still loads as
    ``default``: OmegaConf falls back to a lookup by value, which ``_missing_`` answers."""

    default = "default"
    batch = "batch"
    group = "group"

    @classmethod
    def _missing_(cls, value: object) -> BackboneNorm | None:
        return cls.default if value == "" else None

    @classmethod
    def allowed(cls) -> str:
        return f"{super().allowed()} ('' = default)"


class LrSchedule(Choice):
    cosine = "cosine"
    constant = "constant"
    step = "step"


class EvalProtocol(Choice):
    sgb = "sgb"
    continuous = "continuous"


class CompareSplit(Choice):
    val = "val"
    test = "test"


class Sampler(Choice):
    tpe = "tpe"
    random = "random"
    grid = "grid"


class Pruner(Choice):
    successive_halving = "successive_halving"
    median = "median"
    none = "none"
