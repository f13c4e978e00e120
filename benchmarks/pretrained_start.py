"""Does starting from a pretrained detector help? The field's workflow, measured on the demo.

Every competitive DETR-style scene graph generator starts from a detector that was already
trained. This script reproduces that workflow at the demo's scale:

1. Pretrain an ``hf_detr`` body as an object detector on the demo's training images (real and
   synthetic, the default mix): DETR's class and box heads on the decoder's queries, trained with
   realsynth's criterion in entity mode (``pred_logits`` / ``pred_boxes``: the relation terms are
   absent). The detector's state dict is saved as ``runs/pretrained_start/detector.pt``.
2. ``realsynth compare --config-file configs/pretrained_start.yaml``: the relation model from
   scratch (``mix``) against the same model whose body starts from the detector
   (``MODEL.WEIGHTS``; the detector's own heads are listed as unexpected in ``weights.md``),
   same budget, 3 seeds, statistics on the real test split.

    python benchmarks/pretrained_start.py [--detector-steps 6000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realsynth.config import load_config
from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import target_to_device
from realsynth.modeling.heads import AUX_OUTPUTS, ENTITY_BOXES, ENTITY_LOGITS
from realsynth.modeling.hf_detr import HfDetrRelationModel
from realsynth.modeling.model import MLP
from realsynth.training.build import build_optimizer, build_scheduler, build_train_loader
from realsynth.training.build_model import build_model_and_criterion
from realsynth.training.data_setup import build_data
from realsynth.utils.atomic import atomic_write
from realsynth.utils.distributed import seed_all

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "pretrained_start.yaml"
DETECTOR = Path("runs/pretrained_start/detector.pt")  # the path configs/pretrained_start.yaml reads


class HfDetrDetector(nn.Module):
    """DETR's detection heads on an HF DETR body: ``pred_logits`` [B, Q, C+1] (no-object last)
    and ``pred_boxes`` [B, Q, 4] (cxcywh in [0, 1]) per decoder layer."""

    def __init__(self, relation_model: HfDetrRelationModel, num_classes: int) -> None:
        super().__init__()
        if relation_model.kind != "detr":
            raise ValueError("this detector is written for DETR bodies (MODEL.HF_DETR.KIND detr)")
        self.body = relation_model.body  # the same keys as the relation model's body
        self._hf_mask = relation_model._hf_mask
        # The relation model's hooks collect DETR's per-layer decoder states.
        self._decoder_states = relation_model._decoder_states
        d_model = self.body.config.d_model
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)

    def forward(self, images: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, Any]:
        self.body(pixel_values=images, pixel_mask=self._hf_mask(images, pixel_mask))
        hidden = self._decoder_states()  # [L, B, Q, d], each through the decoder's layernorm
        logits, boxes = self.class_embed(hidden), self.bbox_embed(hidden).sigmoid()
        result: dict[str, Any] = {ENTITY_LOGITS: logits[-1], ENTITY_BOXES: boxes[-1]}
        result[AUX_OUTPUTS] = [
            {ENTITY_LOGITS: logits[i], ENTITY_BOXES: boxes[i]} for i in range(len(hidden) - 1)
        ]
        return result


def pretrain_detector(steps: int, out: Path) -> float:
    """Train the detector for ``steps`` steps on the compare config's data and mix; save its
    state dict to ``out``. Returns the mean total loss of the last 100 steps."""
    cfg = load_config(CONFIG, [f"SOLVER.MAX_ITER={steps}"])
    seed_all(cfg.SEED)
    torch.set_num_threads(2)
    data = build_data(cfg)
    relation_model, criterion = build_model_and_criterion(cfg, data, torch.device("cpu"))
    detector = HfDetrDetector(relation_model, len(data.classes))
    optimizer = build_optimizer(cfg, detector)
    scheduler = build_scheduler(cfg, optimizer)
    loader = build_train_loader(cfg, data)
    recent: list[float] = []
    step, epoch = 0, 0
    while step < steps:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            targets = [target_to_device(t, torch.device("cpu")) for t in batch["targets"]]
            outputs = detector(batch_images(batch, "cpu"), batch["pixel_mask"])
            losses = criterion(
                outputs,
                targets,
                loss_weights=batch["loss_weights"],
                source_ids=batch["source_ids"],
            )
            total = criterion.total_loss(losses)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(detector.parameters(), cfg.SOLVER.CLIP_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            recent = (recent + [total.item()])[-100:]
            step += 1
            if step % 500 == 0:
                print(f"detector step {step}: loss {sum(recent) / len(recent):.3f}", flush=True)
            if step == steps:
                break
        epoch += 1
    state = detector.state_dict()
    atomic_write(out, lambda f: torch.save(state, f))
    return sum(recent) / len(recent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector-steps", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    loss = pretrain_detector(args.detector_steps, DETECTOR)
    print(
        f"detector: {args.detector_steps} steps, last-100 mean loss {loss:.3f}, "
        f"{time.perf_counter() - start:.0f} s -> {DETECTOR}",
        flush=True,
    )
    command = [
        sys.executable,
        "-m",
        "realsynth",
        "compare",
        "--config-file",
        str(CONFIG),
        f"COMPARE.SEEDS={args.seeds}",
    ]
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
