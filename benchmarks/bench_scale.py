"""Scale benchmark: synthetic sources of 10^5 to 10^8 images.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--quick] [--sizes 100000,1000000]``. Prints a
markdown section and writes it to ``benchmarks/results/scale.md``. Every timing and peak memory
is measured in a fresh process (``bench_scale.py --child WHAT ARGS``), which reports its own
elapsed seconds and peak RSS (``ru_maxrss``) as one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import torch
from common import machine, write_result
from scale_data import (
    GROWTH_BATCH,
    PER_SHARD,
    NameTouch,
    loader_dataset,
    vg_folder,
    write_count_index,
    write_synthetic_relcoco,
)

from realsynth.data.batch_slots import SlotCollate
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.formats.relcoco_cache import cache_path
from realsynth.data.shards.dataset import ShardedDataset
from realsynth.data.slot_loader import SlotDataLoader, SlotReceiver
from realsynth.mixing.sampler import MixedBatchSampler

WORKERS, BATCH, SHARD_SIZES = (0, 2, 4), 8, (10**5, 10**6, 10**7, 10**8)
VARIANTS = {
    "slots": "realsynth relcoco, uint8, kept slots (`train`)",
    "uint8": "realsynth relcoco, uint8 + packed targets, fresh shared memory",
    "float": "realsynth relcoco, float32 + per-image targets, fresh shared memory",
    "shards": "realsynth shards (wids), uint8, kept slots (`train`)",
    "webdataset": "webdataset.WebDataset (peer), uint8 + packed targets, fresh shared memory",
}
#: The variants whose batches cross through kept slots (SlotDataLoader), as `train`'s do.
SLOTTED = ("slots", "shards")


def child_imports() -> dict[str, Any]:
    """Nothing but the imports: the peak every other child starts from."""
    return {"seconds": 0.0}


def _choose_reader(path: str) -> None:
    """``judged``: the full rules entry by entry, as every file was read before the fast path;
    ``python``: the fast path's Python reader (the compiled one left out); ``fast``: as built."""
    from realsynth.data.formats import relcoco, relcoco_fast

    if path == "judged":
        relcoco.read_clean_relcoco = lambda *args, **kwargs: None
    elif path == "python":
        relcoco_fast.relcoco_columns = None
    elif path == "fast" and relcoco_fast.relcoco_columns is None:
        raise RuntimeError("the compiled relcoco reader is not built (pip install -e .)")


def child_relcoco(ann_file: str, cache: str, path: str = "fast") -> dict[str, Any]:
    """Builds a RelCocoDataset (``cache`` ``-``: no index cache; ``path``: see _choose_reader)."""
    _choose_reader(path)
    start = time.perf_counter()
    dataset = RelCocoDataset(
        ann_file, Path(ann_file).parent / "images", index_cache=None if cache == "-" else cache
    )
    return {"seconds": time.perf_counter() - start, "images": len(dataset)}


def _process_age() -> float:
    """Seconds since this process started (the kernel's clock ticks, 10 ms)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


class _FirstBatch:
    """The training loader, reporting the first batch it delivers and ending the process."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        batch = next(iter(self.loader))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        images = len(batch["targets"])
        print(json.dumps({"seconds": _process_age(), "images": images, "peak_gb": peak}))
        sys.stdout.flush()
        os._exit(0)


def child_train_start(ann_file: str, cache: str, path: str) -> dict[str, Any]:
    """`realsynth train` on one relcoco source, from the start of this process (interpreter
    and imports included) to its first training batch; cold (``cache`` ``-``) or with the
    index cache folder ``cache``."""
    from realsynth.cli import main as realsynth_main
    from realsynth.training import build

    os.environ["REALSYNTH_INDEX_CACHE"] = "off" if cache == "-" else cache
    _choose_reader(path)
    make_loader = build.build_train_loader
    build.build_train_loader = lambda *args, **kwargs: _FirstBatch(make_loader(*args, **kwargs))
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "OUTPUT_DIR": str(Path(tmp) / "run"),
                    "DATASETS": {"SOURCES": [{"NAME": "big", "TYPE": "real", "PATH": ann_file}]},
                    "MODEL": {"PRESET": "tiny", "DEVICE": "cpu"},
                    "SOLVER": {"IMS_PER_BATCH": 4, "MAX_ITER": 1},
                }
            )
        )
        realsynth_main(["train", "--config-file", str(config)])
    raise RuntimeError("training ended before its first batch")


def child_pycocotools(ann_file: str) -> dict[str, Any]:
    """pycocotools' ``COCO(ann_file)``: json.load and its index (relationships ignored)."""
    from pycocotools.coco import COCO

    start = time.perf_counter()
    with redirect_stdout(io.StringIO()):  # COCO prints its progress
        coco = COCO(ann_file)
    return {"seconds": time.perf_counter() - start, "images": len(coco.imgs)}


def child_shards(folder: str, with_sampler: str) -> dict[str, Any]:
    """ShardedDataset over an ``index.json``; with ``1``, also the sampler and its first batch."""
    start = time.perf_counter()
    dataset = ShardedDataset(folder)
    if with_sampler == "1":
        sampler = MixedBatchSampler(
            [1000, len(dataset)],
            [0.7, 0.3],
            32,
            shard_sizes=[None, dataset.shard_sizes],
            shard_window=8,
        )
        next(iter(sampler))
    return {"seconds": time.perf_counter() - start, "images": len(dataset)}


def child_loader(variant: str, folder: str, workers: str) -> dict[str, Any]:
    """Images/s through a DataLoader (batch 8), second pass (the first starts the workers)."""
    dataset, collate = loader_dataset(variant, Path(folder))
    loader_class = SlotDataLoader if variant in SLOTTED else torch.utils.data.DataLoader
    loader = loader_class(
        dataset,
        batch_size=BATCH,
        shuffle=False,
        num_workers=int(workers),
        collate_fn=collate,
        persistent_workers=int(workers) > 0,
    )
    for _ in loader:  # warm-up pass: worker start-up, file cache
        pass
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += int(batch["images"].shape[0])
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "rate": count / elapsed, "images": count}


def child_transport(variant: str, folder: str, batches: str) -> dict[str, Any]:
    """Per image: decode + transforms in this process, and what a batch costs to cross from a
    worker: collate as a worker runs it (marked as one, so batch tensors go to shared memory
    where realsynth allocates them there, or into the worker's slot) + ForkingPickler dumps,
    minus the same collate in a single process, plus loads (and, for slots, the copies out of
    the slot). torch's cache of received blocks is cleared before each loads, so every block is
    mapped as a receiver would. Slots are measured over a second pass, their buffers grown to
    the largest batch in the first, as a loader's are after its first batches."""
    from multiprocessing.reduction import ForkingPickler

    from torch.multiprocessing import reductions  # torch.multiprocessing registers its reductions
    from torch.utils.data._utils import worker

    dataset, collate = loader_dataset(variant, Path(folder))
    count = int(batches) * BATCH
    start = time.perf_counter()
    items = [dataset[i % len(dataset)] for i in range(count)]
    decode = (time.perf_counter() - start) / count
    chunks = [items[k * BATCH : (k + 1) * BATCH] for k in range(int(batches))]
    send, receive = collate, pickle.loads
    if variant == "slots":
        send, receiver = SlotCollate(collate, num_slots=3), SlotReceiver()
        receive = lambda data: receiver.open(pickle.loads(data))  # noqa: E731
    info = worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=dataset)
    local, sent, loads, pixels = [], [], [], 0
    for chunk in chunks * 2 if variant == "slots" else [chunks[0], *chunks]:
        start = time.perf_counter()
        batch = collate(chunk)
        local.append(time.perf_counter() - start)
        pixels = batch["images"].nbytes // BATCH
        worker._worker_info = info
        start = time.perf_counter()
        data = ForkingPickler.dumps(send(chunk))  # a fresh batch, as a worker makes and sends
        sent.append(time.perf_counter() - start)
        worker._worker_info = None
        reductions.shared_cache.clear()
        start = time.perf_counter()
        receive(data)
        loads.append(time.perf_counter() - start)
    measured = -int(batches)  # the first pass (slots) or batch (warm-up: fd sharer) is not
    return {
        "seconds": decode * count,
        "decode": decode,
        "dumps": (statistics.median(sent[measured:]) - statistics.median(local[measured:])) / BATCH,
        "loads": statistics.median(loads[measured:]) / BATCH,
        "pixels": pixels,
    }


def child_growth(ann_file: str, as_list: str) -> dict[str, Any]:
    """The most a forked worker's private memory grows over one pass (2 workers)."""
    dataset = RelCocoDataset(ann_file, Path(ann_file).parent / "images")
    loader = torch.utils.data.DataLoader(
        NameTouch(dataset, as_list == "list"),
        batch_size=GROWTH_BATCH,
        num_workers=2,
        collate_fn=lambda values: (values[0], values[-1]),
    )
    start = time.perf_counter()
    batches = list(loader)
    growth = []
    for worker in (0, 1):  # workers take batches in turn
        mine = batches[worker::2]
        if mine:
            growth.append(mine[-1][1] - mine[0][0])
    return {"seconds": time.perf_counter() - start, "growth_mb": max(growth)}


def growth_section(n: int) -> list[str]:
    """Section 5: what a forked worker copies over one pass, names packed or as a list."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        ann = write_synthetic_relcoco(Path(tmp), n)
        packed = run_child("growth", str(ann), "packed")
        listed = run_child("growth", str(ann), "list")
    return [
        "### A loader worker's growth over one pass",
        "",
        f"{n:,} images, 2 workers reading every annotation and file name; the growth of a "
        "worker's private dirty memory (pages of the parent it copied by writing to them) from "
        "its first batch to its last:",
        "",
        "| file names | worker growth |",
        "| --- | ---: |",
        f"| packed in one buffer (realsynth now) | {packed['growth_mb']:.1f} MB |",
        f"| a Python list of strings (before) | {listed['growth_mb']:.1f} MB |",
        "",
    ]


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "imports": child_imports,
    "relcoco": child_relcoco,
    "train_start": child_train_start,
    "pycocotools": child_pycocotools,
    "shards": child_shards,
    "loader": child_loader,
    "transport": child_transport,
    "growth": child_growth,
}


def run_child(what: str, *args: str) -> dict[str, Any]:
    """Runs ``--child what args`` in a fresh interpreter; its JSON line plus ``peak_gb``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", what, *args]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {what} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(result: dict[str, Any] | None) -> str:
    """``seconds, peak GB`` of a child's result (None: the peer is not installed)."""
    if result is None:
        return "not installed"
    return f"{result['seconds']:.2f} s, {result['peak_gb']:.2f} GB"


def _index_rows(n: int) -> tuple[str, str]:
    """The rows of the index table and of the train table: every way to start on an
    ``n``-image source."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        ann = write_synthetic_relcoco(Path(tmp), n)
        cache = Path(tmp) / "cache"
        judged = run_child("relcoco", str(ann), "-", "judged")
        python = run_child("relcoco", str(ann), "-", "python")
        cold = run_child("relcoco", str(ann), "-")
        first = run_child("relcoco", str(ann), str(cache))
        cached = cache_path(cache, ann).is_file()
        second = run_child("relcoco", str(ann), str(cache))
        coco = None
        if importlib.util.find_spec("pycocotools") is not None:
            coco = run_child("pycocotools", str(ann))
        shards = run_child("shards", str(write_count_index(Path(tmp) / "shards", n)), "0")
        megabytes = ann.stat().st_size / 1e6
        train = [run_child("train_start", str(ann), "-", p) for p in ("fast", "python")]
        train.append(run_child("train_start", str(ann), str(cache), "fast"))
    found = [judged, python, cold, first, second, shards] + ([coco] if coco else [])
    if {r["images"] for r in found} != {n}:
        raise RuntimeError(f"expected {n} images in every dataset")
    vs_coco = f"{cold['seconds'] / coco['seconds']:.2f}" if coco else "n/a"
    cells = [
        f"{n:,}",
        f"{megabytes:,.0f}",
        _cell(judged),
        _cell(python),
        _cell(cold),
        _cell(first) + ("" if cached else " (no cache written)"),
        _cell(second),
        _cell(coco),
        _cell(shards),
        f"{judged['seconds'] / cold['seconds']:.1f}",
        f"{python['seconds'] / cold['seconds']:.1f}",
        f"{cold['seconds'] / second['seconds']:.1f}",
        vs_coco,
    ]
    train_cells = [f"{n:,}", *(_cell(r) for r in train)]
    train_cells.append(f"{train[1]['seconds'] / train[0]['seconds']:.1f}")
    return "| " + " | ".join(cells) + " |", "| " + " | ".join(train_cells) + " |"


def index_section(sizes: list[int]) -> list[str]:
    """Section 1: starting on a relcoco file of N images, cold, cached, pycocotools, shards."""
    lines = [
        "### Index build (seconds, peak RSS of the process)",
        "",
        "8 boxes and 12 relationships per image; the image files are hard links to one "
        "640x480 JPEG (their existence is checked, their content is not read). The fast path "
        "reads a clean file with the compiled reader (the Python reader column: the same "
        "path without it, as on a machine that could not build it). The index cache is "
        "written for files of 8 MB and more. pycocotools reads the same file (its "
        "relationships unused); the shards column reads an `index.json` of N images in "
        "shards of 1000.",
        "",
        "| images | JSON MB | relcoco, full rules (before) | relcoco cold, Python reader "
        "| relcoco cold (fast path) "
        "| relcoco first start, cache written | relcoco second start, cache read "
        "| pycocotools COCO() | shards index.json | full / fast | Python / compiled "
        "| cold / cached | cold / pycocotools |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    train = [
        "### First batch of `realsynth train`",
        "",
        "One relcoco source of N images (the file above), the tiny model, batch 4: seconds from "
        "the start of the process (interpreter and imports included) to the first training "
        "batch, and the peak RSS by then. Goal at 10^6 images: at most 15 s cold.",
        "",
        "| images | cold, compiled reader | cold, Python reader | index cache read "
        "| Python / compiled |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        index_row, train_row = _index_rows(n)
        lines.append(index_row)
        train.append(train_row)
        print(index_row, train_row, sep="\n", flush=True)
    return [*lines, "", *train, ""]


def shards_section() -> list[str]:
    """Section 2: ShardedDataset + MixedBatchSampler + first batch, from 10^5 to 10^8 images."""
    base = run_child("imports")
    lines = [
        "### Sharded source, index only (ShardedDataset + MixedBatchSampler + first batch)",
        "",
        "Shards of 1000 images; a 1000-image second source; shares 0.7 / 0.3, batch 32, "
        f"shard window 8. Peak RSS of a process that only imports: {base['peak_gb']:.2f} GB.",
        "",
        "| images | shards | index.json MB | seconds | peak GB |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in SHARD_SIZES:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            index = write_count_index(Path(tmp) / "shards", n)
            result = run_child("shards", str(index), "1")
            megabytes = index.stat().st_size / 1e6
        lines.append(
            f"| {n:,} | {-(-n // PER_SHARD):,} | {megabytes:.1f} | {result['seconds']:.3f} "
            f"| {result['peak_gb']:.2f} |"
        )
        print(lines[-1], flush=True)
    return [*lines, ""]


def _available(variant: str) -> bool:
    """Whether a loader variant can run (the webdataset peer is optional)."""
    return variant != "webdataset" or importlib.util.find_spec("webdataset") is not None


def loader_section(folder: Path, num_images: int) -> list[str]:
    """Section 3: DataLoader images/s at VG150 sizes for 0, 2 and 4 workers."""
    lines = [
        f"### Loader throughput, VG150-sized images ({num_images} JPEGs, 640x480)",
        "",
        "Train transforms (flip, shorter side 480-640, longer side <= 1000, normalized), batch "
        f"{BATCH}, images/s over the second pass. "
        f"{os.cpu_count()} cores: more workers than cores compete.",
        "",
        "| loader | " + " | ".join(f"{w} workers" for w in WORKERS) + " | 2 w / 0 w |",
        "| --- |" + " ---: |" * (len(WORKERS) + 1),
    ]
    rates: dict[str, list[float]] = {}
    for variant, name in VARIANTS.items():
        if not _available(variant):
            lines.append(f"| {name} |" + " not installed |" * (len(WORKERS) + 1))
            continue
        rates[variant] = [
            run_child("loader", variant, str(folder), str(w))["rate"] for w in WORKERS
        ]
        cells = [f"{r:,.1f}" for r in rates[variant]]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {rates[variant][1] / rates[variant][0]:.2f} |"
        )
        print(lines[-1], flush=True)
    best = {v: max(r) for v, r in rates.items()}
    notes = [
        f"kept slots / fresh shared memory (best of each): {best['slots'] / best['uint8']:.2f}",
        f"uint8 / float32 (fresh shared memory): {best['uint8'] / best['float']:.2f}",
    ]
    if "webdataset" in best:
        notes.append(f"realsynth shards / webdataset: {best['shards'] / best['webdataset']:.2f}")
        notes.append(f"realsynth relcoco / webdataset: {best['slots'] / best['webdataset']:.2f}")
    return [*lines, "", "; ".join(notes) + ".", ""]


def transport_section(folder: Path, batches: int) -> list[str]:
    """Section 4: pickle + unpickle per image against decode + transforms per image."""
    lines = [
        "### Worker-to-process cost per image",
        "",
        f"Median over {batches} batches of {BATCH}, per image: what a worker spends beyond a "
        "single process (collate as a worker runs it + `ForkingPickler.dumps`, which moves "
        "tensors into fresh shared memory or, with kept slots, into the worker's slot, minus "
        "the same collate in one process) + `pickle.loads` in the training process (every "
        "fresh block mapped again; with slots, the tensors copied out of the slot), against "
        "decoding and transforming one image. Slots over a second pass (their buffers grown in "
        "the first). Goal: under 10%.",
        "",
        "| path | pixel bytes per image | decode + transforms | worker's extra (collate + pickle) "
        "| unpickle (training process) | pickle + unpickle / decode |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in ("slots", "uint8", "float"):
        r = run_child("transport", variant, str(folder), str(batches))
        lines.append(
            f"| {VARIANTS[variant]} | {r['pixels'] / 1e6:.2f} MB | {r['decode'] * 1e3:.2f} ms "
            f"| {r['dumps'] * 1e3:.2f} ms | {r['loads'] * 1e3:.2f} ms "
            f"| {100 * (r['dumps'] + r['loads']) / r['decode']:.1f}% |"
        )
        print(lines[-1], flush=True)
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Runs every section (or, with ``--child``, one measurement) and writes the result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        result = CHILDREN[argv[1]](*argv[2:])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(json.dumps({**result, "peak_gb": peak}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10^4-image JSON, 40 JPEGs")
    parser.add_argument("--sizes", default="100000,1000000", help="JSON sizes, comma separated")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    num_images = 40 if args.quick else 200
    command = " ".join(["python benchmarks/bench_scale.py", *argv])
    parts = [
        "## Scale: synthetic sources of 10^5 to 10^8 images",
        "",
        f"Machine: {machine()}",
        f"Command: `{command}`",
        f"Load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.",
        "",
        "Every number comes from a fresh process; peak memory is its peak RSS, imports included.",
        "",
    ]
    for section in (lambda: index_section(sizes), shards_section):
        parts += section()
    parts += growth_section(sizes[0])
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        folder = vg_folder(Path(tmp) / "vg", num_images)
        parts += loader_section(folder, num_images)
        parts += transport_section(folder, 5)
    text = "\n".join(parts)
    print(text)
    write_result("scale", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
