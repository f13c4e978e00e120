"""GPU training speed of an hf_detr DETR-R50 at VG150's sizes, bf16, and the loader beside it.

A relcoco set of 640x480 JPEGs with VG150's label spaces (``vg_sized.py``) trains a DETR-R50
body (random weights of the real architecture, ``hf_models.py``) with realsynth's triplet heads,
300 relation queries, shorter side 600 (longer at most 1000), bf16 autocast. Reported: steps/s,
images/s, peak GPU memory, and the share of each step spent waiting for the loader's next
batch; then the loader alone (decode, resize, collate) in images/s with 0, 4, 8 and 12 workers.

    python benchmarks/bench_gpu.py [--quick] [--batch 8]

Without a CUDA device it writes a section saying that the figures are still to be measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, write_result
from hf_models import save_detr_r50
from vg_sized import write_vg_sized_relcoco

from realsynth.config import load_config
from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import target_to_device
from realsynth.training.build import build_optimizer, build_train_loader
from realsynth.training.build_model import build_model_and_criterion
from realsynth.training.data_setup import build_data
from realsynth.utils.distributed import seed_all

WORKERS = (0, 4, 8, 12)


def config(tmp: Path, batch: int, workers: int):
    source = tmp / "config.yaml"
    annotations = tmp / "data" / "annotations.json"
    source.write_text(
        "DATASETS:\n  SOURCES:\n"
        f"    - {{NAME: vg, TYPE: real, FORMAT: relcoco, PATH: {annotations}}}\n"
    )
    return load_config(
        source,
        [
            "MODEL.ARCHITECTURE=hf_detr",
            f"MODEL.HF_DETR.PATH={tmp / 'detr'}",
            "MODEL.NUM_QUERIES=300",
            "MODEL.DEVICE=cuda",
            "MODEL.BACKBONE.FREEZE_AT=2",
            f"SOLVER.IMS_PER_BATCH={batch}",
            "SOLVER.BASE_LR=0.0001",
            "SOLVER.BACKBONE_LR_MULTIPLIER=0.1",
            "SOLVER.AMP=true",
            "INPUT.MIN_SIZE_TRAIN=[600]",
            "INPUT.MAX_SIZE_TRAIN=1000",
            f"DATALOADER.NUM_WORKERS={workers}",
        ],
    )


def endless(loader):
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_speed(cfg, steps: int, warmup: int) -> dict[str, float]:
    """Steps/s, images/s, peak memory and data-wait share of ``steps`` bf16 training steps."""
    seed_all(0)
    device = torch.device("cuda")
    data = build_data(cfg)
    model, criterion = build_model_and_criterion(cfg, data, device)
    optimizer = build_optimizer(cfg, model)
    batches = endless(build_train_loader(cfg, data))
    waiting = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            waiting, start = 0.0, time.perf_counter()
        before = time.perf_counter()
        batch = next(batches)
        waiting += time.perf_counter() - before
        images = batch_images(batch, device)
        mask = batch["pixel_mask"].to(device, non_blocking=True)
        targets = [target_to_device(t, device) for t in batch["targets"]]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs = model(images, mask)
        outputs = {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}
        losses = criterion(
            outputs, targets, loss_weights=batch["loss_weights"], source_ids=batch["source_ids"]
        )
        optimizer.zero_grad(set_to_none=True)
        criterion.total_loss(losses).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.SOLVER.CLIP_GRAD_NORM)
        optimizer.step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "steps/s": steps / elapsed,
        "images/s": steps * cfg.SOLVER.IMS_PER_BATCH / elapsed,
        "peak GiB": torch.cuda.max_memory_allocated() / 2**30,
        "data wait": waiting / elapsed,
    }


def loader_speed(cfg, batches: int) -> float:
    """Images/s of the training loader alone (after its first batch)."""
    loader = build_train_loader(cfg, build_data(cfg))
    stream = endless(loader)
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * cfg.SOLVER.IMS_PER_BATCH / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    title = "## GPU training: hf_detr DETR-R50 at VG150 sizes (`benchmarks/bench_gpu.py`)"
    if not torch.cuda.is_available():
        text = f"{title}\n\nNo CUDA device on {machine()}: still to be measured.\n"
        print(text)
        write_result("gpu", text)
        return 0
    steps, warmup, images = (10, 3, 64) if args.quick else (60, 10, 480)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_vg_sized_relcoco(tmp / "data", images)
        save_detr_r50(tmp / "detr")
        result = train_speed(config(tmp, args.batch, 8), steps, warmup)
        loader = {w: loader_speed(config(tmp, args.batch, w), 2 * steps) for w in WORKERS}
    card = torch.cuda.get_device_name()
    lines = [
        title,
        "",
        f"Card: {card}. Host: {machine()}. Batch {args.batch}, 300 relation queries, shorter "
        f"side 600 (max 1000), bf16 autocast, 8 loader workers; {steps} timed steps after "
        f"{warmup} warm-up.",
        "",
        "| steps/s | images/s | peak GPU memory (GiB) | time waiting on data |",
        "|---:|---:|---:|---:|",
        f"| {result['steps/s']:.2f} | {result['images/s']:.1f} | {result['peak GiB']:.1f} | "
        f"{100 * result['data wait']:.0f}% |",
        "",
        "The training loader alone (decode, resize to 600, collate), images/s:",
        "",
        "| " + " | ".join(f"{w} workers" for w in WORKERS) + " |",
        "|" + "---:|" * len(WORKERS),
        "| " + " | ".join(f"{loader[w]:.1f}" for w in WORKERS) + " |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result("gpu", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
