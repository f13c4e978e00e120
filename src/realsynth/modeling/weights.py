"""Initializing a model from any checkpoint, and a report of what loaded.

:func:`read_state_dict` reads a realsynth run or checkpoint, a plain state dict (``.pt``,
``.pth``, ``.bin``), a ``.safetensors`` file or an HF ``save_pretrained`` folder;
:func:`match_state_dict` pairs its tensors with the model's by name, else where one name is a
dotted suffix of the other (detectron2's rule); :func:`load_weights` copies the pairs whose
shapes agree and leaves every other tensor at its fresh initialization;
:func:`format_weights_report` says what loaded and what did not.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from realsynth.utils.tables import markdown_table

#: Files a folder is read from, first found first: a realsynth run, then HF ``save_pretrained``.
FOLDER_FILES = (
    "checkpoints/last.pt",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_EXPECTED = (
    "a state dict (.pt, .pth, .bin), a .safetensors file, a run folder or a checkpoint folder"
)
_SHOWN = 10  # entries of a list shown in the report table
# A realsynth checkpoint's RNG state holds numpy arrays: plain data, safe to unpickle.
_multiarray = (getattr(np, "_core", None) or np.core).multiarray
_NUMPY_GLOBALS = [_multiarray._reconstruct, _multiarray.scalar, np.ndarray, np.dtype]
_NUMPY_GLOBALS += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.bool_)]


@dataclass
class WeightsMatch:
    """How a checkpoint's tensors pair with a model's.

    Attributes:
        loaded: model key -> source key, for the tensors copied into the model.
        missing: model keys without a source tensor (left at their fresh initialization).
        unexpected: source keys that no model tensor uses.
        mismatched: ``(model key, model shape, source shape)`` of the pairs not loaded because
            their shapes differ.
        mismatched_sources: model key -> source key of each shape-mismatched pair.
    """

    loaded: dict[str, str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    mismatched_sources: dict[str, str] = field(default_factory=dict)

    @property
    def by_suffix(self) -> dict[str, str]:
        """The loaded pairs whose names differ (matched by suffix)."""
        return {key: source for key, source in self.loaded.items() if key != source}

    @property
    def complete(self) -> bool:
        """Every model tensor loaded and every source tensor used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict[str, Any]:
        """The full lists, for a JSON file."""
        result = asdict(self)
        result["by_suffix"] = self.by_suffix
        result["mismatched"] = [
            {
                "tensor": key,
                "model_shape": list(here),
                "source_shape": list(there),
                "source": self.mismatched_sources.get(key, key),
            }
            for key, here, there in self.mismatched
        ]
        del result["mismatched_sources"]
        return result


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint, by name, on the CPU.

    Args:
        path: a realsynth checkpoint (a ``.pt`` dict with a ``"model"`` entry) or run folder
            (its ``checkpoints/last.pt``); a state dict saved with ``torch.save`` (also nested
            under ``"model"`` or ``"state_dict"``; a leading ``module.`` is stripped); a
            ``.safetensors`` file; or a folder as HF ``save_pretrained`` writes it.

    Raises:
        FileNotFoundError: nothing to read at ``path``.
        ValueError: the file is unreadable or holds no state dict (one line naming ``path``).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in FOLDER_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no {' or '.join(FOLDER_FILES)} in this folder")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder; expected {_EXPECTED}")
    if path.name.endswith(".index.json"):
        return _read_shards(path)
    state = _load_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path)
    return _state_dict_in(state, path)


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of ``path``, its failures as one line."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise ValueError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None
        raise ValueError(
            f"{path}: holds Python objects that torch.load(weights_only=True) refuses "
            f"({found.group(1)}); if you trust the file, save its state dict alone with "
            "torch.save(model.state_dict(), ...)"
        ) from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    """``safetensors.torch.load_file`` of ``path``, its failures as one line."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(
            f"{path}: reading .safetensors files needs the safetensors package: "
            "pip install safetensors"
        ) from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .safetensors file ({_first_line(exc)})") from None


def _read_shards(index: Path) -> dict[str, Tensor]:
    """The tensors of a sharded checkpoint (``*.index.json`` and the shards beside it)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{index}: not a shard index (a JSON object with a 'weight_map'): {_first_line(exc)}"
        ) from None
    state: dict[str, Tensor] = {}
    for name in shards:
        shard = index.parent / name
        if not shard.is_file():
            raise FileNotFoundError(f"{shard}: missing shard of {index}")
        loaded = _load_safetensors(shard) if shard.suffix == ".safetensors" else _torch_load(shard)
        state.update(_state_dict_in(loaded, shard))
    return state


def _state_dict_in(state: Any, path: Path) -> dict[str, Tensor]:
    """The state dict in what ``path`` held: itself, or under ``"model"`` / ``"state_dict"``."""
    while isinstance(state, Mapping) and not _is_state_dict(state):
        inner = [key for key in ("model", "state_dict") if isinstance(state.get(key), Mapping)]
        if not inner:
            break
        state = state[inner[0]]
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        what = f"keys {list(state)[:6]}" if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"{path}: not a state dict (tensors by name, or one under 'model' or 'state_dict'); "
            f"it holds {what}"
        )
    if all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _is_state_dict(state: Mapping[Any, Any]) -> bool:
    """A non-empty mapping of names to tensors."""
    return bool(state) and all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    )


def _first_line(exc: BaseException) -> str:
    """What went wrong, in one sentence: the unpickler's own reason where torch wraps one, else
    the message's first sentence."""
    text = str(exc).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "it ends too early" if isinstance(exc, EOFError) else type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")


def match_state_dict(
    model_keys_shapes: Mapping[str, torch.Size], source: Mapping[str, Tensor]
) -> WeightsMatch:
    """Pair model tensors with source tensors, by name, else where one name ends the other.

    A model key takes the source key of the same name. The others are matched by dotted suffix,
    detectron2's rule, longest match first: a source key serves a model key that ends with it
    (``conv1.weight`` serves ``backbone.conv1.weight``) or that it ends with
    (``detr.backbone.conv1.weight`` serves ``backbone.conv1.weight``). Names that merely share a
    tail do not pair: a detector's ``bbox_embed.layers.0.weight`` never serves a relation head's
    ``subject_box.layers.0.weight``. Pairs whose shapes differ are listed as mismatched, not
    loaded.

    Raises:
        ValueError: an ambiguous match: two source keys share the longest suffix with one model
            key, or one source key would serve two model keys.
    """
    pairs = {key: key for key in model_keys_shapes if key in source}
    _match_by_suffix(
        [key for key in model_keys_shapes if key not in pairs],
        [key for key in source if key not in pairs],
        pairs,
    )
    loaded, mismatched, mismatched_sources = {}, [], {}
    for key, shape in model_keys_shapes.items():
        if key not in pairs:
            continue
        there = tuple(source[pairs[key]].shape)
        if tuple(shape) == there:
            loaded[key] = pairs[key]
        else:
            mismatched.append((key, tuple(shape), there))
            mismatched_sources[key] = pairs[key]
    used = set(pairs.values())
    return WeightsMatch(
        loaded=loaded,
        missing=[key for key in model_keys_shapes if key not in pairs],
        unexpected=[key for key in source if key not in used],
        mismatched=mismatched,
        mismatched_sources=mismatched_sources,
    )


def _match_by_suffix(models: list[str], sources: list[str], pairs: dict[str, str]) -> None:
    """Add to ``pairs`` each model key's unique source key, longest match first."""
    by_suffix: dict[str, list[str]] = {}
    for source in sources:
        parts = source.split(".")
        for n in range(1, len(parts) + 1):
            by_suffix.setdefault(".".join(parts[-n:]), []).append(source)
    free = set(sources)
    longest = max((key.count(".") + 1 for key in models), default=0)
    for n in range(longest, 0, -1):
        wanted: dict[str, str] = {}
        for key in (key for key in models if key not in pairs and key.count(".") + 1 >= n):
            suffix = ".".join(key.split(".")[-n:])
            found = _candidates(key, suffix, by_suffix, free)
            if len(found) > 1:
                raise ValueError(
                    f"ambiguous weights: model tensor {key} shares the suffix {suffix} with "
                    f"source tensors {' and '.join(found[:4])}; rename the keys so that one fits"
                )
            if found and found[0] in wanted:
                raise ValueError(
                    f"ambiguous weights: source tensor {found[0]} would serve model tensors "
                    f"{wanted[found[0]]} and {key} (suffix {suffix}); rename the keys so that "
                    "one fits"
                )
            if found:
                wanted[found[0]] = key
        pairs.update({key: source for source, key in wanted.items()})
        free -= wanted.keys()


def _candidates(
    key: str, suffix: str, by_suffix: dict[str, list[str]], free: set[str]
) -> list[str]:
    """The free source keys that pair with model ``key`` over ``suffix`` (its last parts): those
    that end with the whole key, or the one that is exactly ``suffix``."""
    if suffix == key:
        return [source for source in by_suffix.get(key, []) if source in free]
    return [suffix] if suffix in free else []


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = False,
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> WeightsMatch:
    """Initialize ``model`` from the checkpoint at ``path``: every tensor that matches (by name or
    suffix, with the same shape) is copied in; every other one keeps its fresh initialization.

    Args:
        path: anything :func:`read_state_dict` reads.
        strict: raise unless every model tensor loads and every source tensor is used.
        convert: renames the tensors read before they are matched (e.g.
            :func:`realsynth.modeling.weights_convert.convert_detr_state_dict`).

    Returns:
        the match (for :func:`format_weights_report` and ``to_dict()``).

    Raises:
        ValueError: ``strict`` and the match is not complete (the model is left unchanged), an
            ambiguous match, or an unreadable file.
    """
    source = read_state_dict(path)
    source = convert(source) if convert is not None else source
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    try:
        match = match_state_dict(shapes, source)
    except ValueError as exc:  # an ambiguous match: name the file
        raise ValueError(f"{path}: {exc}") from None
    if strict and not match.complete:
        raise ValueError(f"{path}: strict=True needs a full match, but {_summary(match)}")
    renamed = {key: source[source_key] for key, source_key in match.loaded.items()}
    model.load_state_dict(renamed, strict=False)
    return match


def _summary(match: WeightsMatch) -> str:
    """``2 missing (a, b), 1 unexpected (c), ...``: counts and the first three names."""
    kinds = {
        "missing": match.missing,
        "unexpected": match.unexpected,
        "shape-mismatched": [key for key, _, _ in match.mismatched],
    }
    return ", ".join(
        f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for kind, keys in kinds.items()
        if keys
    )


def format_weights_report(match: WeightsMatch, path: str | Path) -> str:
    """What loaded from ``path``: a headline and a table of the suffix matches and the missing,
    unexpected and shape-mismatched tensors (lists cut after ten; ``match.to_dict()`` has all)."""
    total = len(match.loaded) + len(match.missing) + len(match.mismatched)
    suffix = len(match.by_suffix)
    head = (
        f"Weights from {path}: {len(match.loaded)} of {total} model tensors loaded "
        f"({len(match.loaded) - suffix} by name, {suffix} by suffix)"
    )
    rows = [
        ("shape mismatch", len(match.mismatched), [_mismatch(match, *e) for e in match.mismatched]),
        ("missing", len(match.missing), match.missing),
        ("unexpected", len(match.unexpected), match.unexpected),
        ("by suffix", suffix, _renamings(match.by_suffix)),
    ]
    cells = [[kind, str(count), _cut(items)] for kind, count, items in rows if count]
    return head if not cells else head + "\n" + markdown_table(["kind", "count", "tensors"], cells)


def _mismatch(match: WeightsMatch, key: str, here: tuple[int, ...], there: tuple[int, ...]) -> str:
    """``key [51, 256] here, [6, 256] there`` (``in <source key>`` where the names differ)."""
    source = match.mismatched_sources.get(key, key)
    return f"{key} {list(here)} here, {list(there)} " + (
        "there" if source == key else f"in {source}"
    )


def _renamings(by_suffix: dict[str, str]) -> list[str]:
    """The suffix matches as prefix renamings, most used first: ``body.* <- detr.* (170)``."""
    counts: dict[str, int] = {}
    for key, source in by_suffix.items():
        a, b = key.split("."), source.split(".")
        shared = next(n for n in range(1, len(a) + 1) if n == len(b) or a[-n - 1 :] != b[-n - 1 :])
        rule = f"{'.'.join(a[:-shared] + ['*'])} <- {'.'.join(b[:-shared] + ['*'])}"
        counts[rule] = counts.get(rule, 0) + 1
    return [f"{rule} ({n})" for rule, n in sorted(counts.items(), key=lambda item: -item[1])]


def _cut(items: list[str]) -> str:
    """The first ten items, ``; ``-joined, and ``... and N more``."""
    more = len(items) - _SHOWN
    return "; ".join(items[:_SHOWN]) + (f"; ... and {more} more" if more > 0 else "")
