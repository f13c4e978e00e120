"""A converted DETR state dict written as a local HF ``DetrModel`` checkpoint directory.

:func:`infer_detr_config` reads the architecture off the tensors' shapes (after
:func:`~realsynth.modeling.weights_convert.convert_detr_state_dict`): the width and the number
of queries, the encoder and decoder depths and FFN widths, and the ResNet backbone (stem width,
blocks per stage, stage widths, basic or bottleneck blocks). What shapes cannot tell keeps DETR's
values: 8 attention heads (``heads`` when not), post-norm layers, sine position embeddings, the
stride of a bottleneck in its 3x3 convolution (``downsample_in_bottleneck=False``: SpeaQ's
detectron2 ResNet has ``STRIDE_IN_1X1: False``, torchvision's ResNet strides there too).
:func:`save_detr_checkpoint` loads every body tensor (all must be there, with their shapes),
reports the checkpoint's other tensors (detection heads, a relation model's own modules) as
unused, and writes the directory atomically, ready for ``HfDetrRelationModel(path=...)``.

``transformers`` is imported lazily, so ``import realsynth`` works without it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

_QUERIES = "query_position_embeddings.weight"
_STEM = "backbone.model.embedder.embedder.convolution.weight"
_STAGE = "backbone.model.encoder.stages"
_BLOCK = re.compile(re.escape(_STAGE) + r"\.(\d+)\.layers\.(\d+)\.")
_CLASSIFIER = "class_labels_classifier.weight"
_SHOWN = 5  # names listed in a message


def _tensor(state: Mapping[str, Tensor], key: str) -> Tensor:
    """``state[key]``, or a one-line ValueError naming the key."""
    if key not in state:
        raise ValueError(f"not a DETR checkpoint after conversion: no {key}")
    return state[key]


def _layers(state: Mapping[str, Tensor], stack: str) -> int:
    """How many ``{stack}.layers.{i}`` the state has (its largest index + 1)."""
    pattern = re.compile(rf"{stack}\.layers\.(\d+)\.")
    found = [int(m[1]) for key in state if (m := pattern.match(key))]
    if not found:
        raise ValueError(f"not a DETR checkpoint after conversion: no {stack}.layers.0.*")
    return max(found) + 1


def _backbone(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """``ResNetConfig`` settings read off the backbone's tensors."""
    stem = _tensor(state, _STEM)
    blocks: dict[int, int] = {}
    for key in state:
        if found := _BLOCK.match(key):
            stage, block = int(found[1]), int(found[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if not blocks:
        raise ValueError(f"not a DETR checkpoint after conversion: no {_STAGE}.0.layers.0.*")
    missing = [s for s in range(max(blocks) + 1) if s not in blocks]
    if missing:
        raise ValueError(f"not a DETR checkpoint after conversion: no {_STAGE}.{missing[0]}.*")
    bottleneck = f"{_STAGE}.0.layers.0.layer.2.convolution.weight" in state
    last = 2 if bottleneck else 1
    widths = [
        _tensor(state, f"{_STAGE}.{s}.layers.0.layer.{last}.convolution.weight").shape[0]
        for s in sorted(blocks)
    ]
    return {
        "num_channels": stem.shape[1],
        "embedding_size": stem.shape[0],
        "depths": [blocks[s] for s in sorted(blocks)],
        "hidden_sizes": widths,
        "layer_type": "bottleneck" if bottleneck else "basic",
        "downsample_in_bottleneck": False,
        "out_features": [f"stage{len(blocks)}"],
    }


def infer_detr_config(state: Mapping[str, Tensor], *, heads: int = 8) -> Any:
    """The ``transformers.DetrConfig`` of a converted DETR state dict (HF ``DetrModel`` names,
    optionally with ``DetrForObjectDetection``'s heads), read off its tensors' shapes.

    Args:
        state: tensors by HF name, as ``convert_detr_state_dict`` gives them.
        heads: attention heads of the encoder and the decoder, which shapes do not tell (DETR: 8).

    Raises:
        ValueError: one line: a tensor the architecture is read from is missing (naming it), or
            ``heads`` does not divide the width.
        ModuleNotFoundError: transformers is not installed.
    """
    from transformers import DetrConfig, ResNetConfig

    num_queries, d_model = _tensor(state, _QUERIES).shape
    if heads < 1 or d_model % heads:
        raise ValueError(f"heads={heads} does not divide the checkpoint's d_model={d_model}")
    encoder_layers, decoder_layers = _layers(state, "encoder"), _layers(state, "decoder")
    extra = {}
    if _CLASSIFIER in state:  # DETR's classifier: the classes and "no object"
        extra["num_labels"] = state[_CLASSIFIER].shape[0] - 1
    return DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(**_backbone(state)),
        d_model=d_model,
        num_queries=num_queries,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=_tensor(state, "encoder.layers.0.mlp.fc1.weight").shape[0],
        decoder_ffn_dim=_tensor(state, "decoder.layers.0.mlp.fc1.weight").shape[0],
        **extra,
    )


def summarize_config(config: Any) -> dict[str, Any]:
    """The architecture of a ``DetrConfig`` as plain values (what ``infer_detr_config`` reads)."""
    backbone = config.backbone_config
    return {
        "d_model": config.d_model,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "heads": config.encoder_attention_heads,
        "ffn": config.encoder_ffn_dim,
        "decoder_ffn": config.decoder_ffn_dim,
        "num_queries": config.num_queries,
        "embedding_size": backbone.embedding_size,
        "depths": list(backbone.depths),
        "hidden_sizes": list(backbone.hidden_sizes),
        "layer_type": backbone.layer_type,
    }


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that is a file, or a non-empty folder unless ``overwrite``.

    Raises:
        FileExistsError: one line naming ``out_dir``.
    """
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: exists and is not empty")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder")


def save_detr_checkpoint(
    state: Mapping[str, Tensor],
    out_dir: str | Path,
    *,
    heads: int = 8,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a converted DETR state dict as an HF ``DetrModel`` checkpoint directory.

    The body (backbone, input projection, queries, encoder, decoder) is built from
    :func:`infer_detr_config`; every one of its tensors must be in ``state`` with its shape.
    ``state``'s other tensors are not written, only reported. The directory is written by
    ``save_pretrained`` into ``OUT.tmp-<pid>`` beside it, then renamed to ``out_dir``.

    Args:
        state: tensors by HF name, as ``convert_detr_state_dict`` gives them.
        out_dir: the directory to write (``config.json`` and the weights).
        heads: attention heads (see :func:`infer_detr_config`).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``{"loaded": n, "unused": [names], "config": summarize_config(...)}``.

    Raises:
        ValueError: one line: the architecture cannot be read, or body tensors are missing or
            have another shape (up to 5 named).
        FileExistsError: ``out_dir`` is a file, or a non-empty folder without ``overwrite``.
        ModuleNotFoundError: transformers is not installed.
    """
    from transformers import DetrModel

    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    config = infer_detr_config(state, heads=heads)
    model = DetrModel(config)
    body = model.state_dict()
    problems = [f"no {key}" for key in body if key not in state] + [
        f"{key} is {list(state[key].shape)}, the body needs {list(value.shape)}"
        for key, value in body.items()
        if key in state and state[key].shape != value.shape
    ]
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise ValueError(
            "the checkpoint does not fill the DETR body read off its shapes: "
            f"{'; '.join(problems[:_SHOWN])}{more}"
        )
    model.load_state_dict({key: state[key] for key in body}, strict=True)
    _write(model, out_dir, overwrite)
    return {
        "loaded": len(body),
        "unused": sorted(key for key in state if key not in body),
        "config": summarize_config(config),
    }


def _write(model: Any, out_dir: Path, overwrite: bool) -> None:
    """``model.save_pretrained`` into a temporary sibling, then renamed onto ``out_dir`` (an old
    ``out_dir`` is moved aside first, and back if the rename fails)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    moved = False
    try:
        model.save_pretrained(tmp)
        check_out_dir(out_dir, overwrite)  # nothing appeared meanwhile
        if out_dir.is_dir() and any(out_dir.iterdir()):
            os.replace(out_dir, old)  # a folder cannot be renamed onto a non-empty one
            moved = True
        os.replace(tmp, out_dir)
    except BaseException:
        if moved and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if moved:
        shutil.rmtree(old, ignore_errors=True)
