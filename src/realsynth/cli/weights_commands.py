"""``realsynth weights``: convert checkpoints for use as initial weights.

Heavy modules are imported inside each handler so that ``realsynth --help`` answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_NAMED = 3  # unused tensors named in the summary


def add_weights_commands(commands: Any) -> None:
    """Add ``weights`` and its sub-commands to ``commands`` (argparse sub-parsers)."""
    weights = commands.add_parser("weights", help="checkpoint tools")
    weights_cmds = weights.add_subparsers(dest="weights_command", required=True)
    _add_weights_convert(weights_cmds)


def _add_weights_convert(weights_cmds: Any) -> None:
    convert = weights_cmds.add_parser(
        "convert",
        help="write a DETR checkpoint (SpeaQ, IterativeSG, facebookresearch) as an HF DETR folder",
        description="Rename a facebookresearch/detr-style checkpoint (SpeaQ's and IterativeSG's "
        "detectron2-wrapped vg_objectdetector_pretrained.pth too) onto HF DetrModel names, read "
        "its architecture off the tensors' shapes, and write a local HF checkpoint directory for "
        "MODEL.ARCHITECTURE=hf_detr MODEL.HF_DETR.PATH=OUT. Needs pip install 'realsynth[hf]'.",
    )
    convert.add_argument("src", type=Path, help="checkpoint file or folder")
    convert.add_argument("out", type=Path, help="the HF checkpoint directory to write")
    convert.add_argument(
        "--heads",
        type=int,
        default=8,
        help="attention heads, which the tensors do not tell (default 8, DETR's)",
    )
    convert.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty OUT"
    )
    convert.set_defaults(handler=_weights_convert)


def _weights_convert(args: argparse.Namespace) -> int:
    from realsynth.data.paths import shown
    from realsynth.modeling.detr_checkpoint import check_out_dir, save_detr_checkpoint
    from realsynth.modeling.weights import read_state_dict
    from realsynth.modeling.weights_convert import convert_detr_state_dict

    try:
        import transformers  # noqa: F401  (save_detr_checkpoint's, checked before reading SRC)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"weights convert needs HF transformers ({exc}); pip install 'realsynth[hf]'"
        ) from None
    if args.heads < 1:
        raise ValueError(f"--heads {args.heads}: must be >= 1")
    try:
        check_out_dir(args.out, args.overwrite)  # before reading a large SRC
        state = convert_detr_state_dict(read_state_dict(args.src))
        summary = save_detr_checkpoint(state, args.out, heads=args.heads, overwrite=args.overwrite)
    except FileExistsError as exc:
        hint = "; --overwrite replaces it" if args.out.is_dir() else ""
        raise ValueError(f"{exc}{hint}") from None
    except ValueError as exc:
        name = shown(args.src)
        raise ValueError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
    config, unused = summary["config"], summary["unused"]
    ffn = config["ffn"]
    if config["decoder_ffn"] != ffn:
        ffn = f"{ffn} (encoder), {config['decoder_ffn']} (decoder)"
    print(f"Loaded {summary['loaded']} tensors into the DETR body")
    print(
        f"Architecture: d_model {config['d_model']}, {config['heads']} heads, "
        f"{config['encoder_layers']} encoder and {config['decoder_layers']} decoder layers, "
        f"ffn {ffn}, {config['num_queries']} queries; ResNet ({config['layer_type']} blocks) "
        f"depths {config['depths']}, widths {config['hidden_sizes']}"
    )
    if unused:
        more = ", ..." if len(unused) > _NAMED else ""
        print(f"Not used: {len(unused)} checkpoint tensors ({', '.join(unused[:_NAMED])}{more})")
    else:
        print("Not used: 0 checkpoint tensors")
    print(f"Use it with: MODEL.ARCHITECTURE=hf_detr MODEL.HF_DETR.PATH={shown(args.out)}")
    return 0
