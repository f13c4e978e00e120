"""Mixed batch sampling, index only: MixedBatchSampler against its peers.

Scenario (issue 2): real 100,000 items, synthetic 1,000,000, batch 32, real ratio 0.7,
20,000 batches; plus MixedBatchSampler with a 10^9-item synthetic source, and (issue 12) with a
real share annealed linearly from 0.4 to 1.0 over the 20,000 steps, for two sources and for three
(the synthetic items split in two), against the same constant mixes. Each peer runs in its
own subprocess so that peak memory (RSS high-water mark above the post-import baseline) is its
own. Slow peers run fewer batches; indices/s is comparable regardless.

Run: ``.venv/bin/python benchmarks/bench_sampler.py [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from common import machine, write_result

REAL, SYNTH, BATCH, RATIO = 100_000, 1_000_000, 32, 0.7
RESULTS = Path(__file__).resolve().parent / "results" / "sampler.md"
# (peer, synthetic size, batches as a fraction of the full run)
PEERS = [
    ("MixedBatchSampler (ours)", SYNTH, 1.0),
    ("MixedBatchSampler (ours), replacement=True", SYNTH, 1.0),
    ("MixedBatchSampler (ours), 10^9 synthetic", 10**9, 1.0),
    ("MixedBatchSampler (ours), linear real share 0.4 -> 1.0", SYNTH, 1.0),
    ("MixedBatchSampler (ours), 3 sources, constant", SYNTH, 1.0),
    ("MixedBatchSampler (ours), 3 sources, linear real share 0.4 -> 1.0", SYNTH, 1.0),
    ("torch WeightedRandomSampler + BatchSampler", SYNTH, 1.0),
    ("torchdata nodes.MultiNodeWeightedSampler + Batcher", SYNTH, 0.25),
    ("HF datasets.interleave_datasets", SYNTH, 0.1),
    ("multi-dataset SpeaQ fork's per-item sampler (randint + deepcopy)", SYNTH, 0.02),
]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _ours(
    synth: int, replacement: bool, *, sources: int = 2, anneal_over: int = 0
) -> Iterator[list[int]]:
    """Ours; ``anneal_over`` > 0: the real share goes linearly 0.4 -> 1.0 over that many steps,
    the synthetic sources sharing the rest equally."""
    from realsynth.mixing.sampler import MixedBatchSampler
    from realsynth.mixing.step_schedule import StepSchedule

    parts = sources - 1
    sizes = [REAL] + [synth // parts] * parts
    ratios: list = [RATIO] + [(1 - RATIO) / parts] * parts
    if anneal_over:
        real = StepSchedule.linear(0.4, 1.0, 0, anneal_over)
        ratios = [real] + [real.affine(1 / parts, -1 / parts)] * parts
    sampler = MixedBatchSampler(
        sizes, ratios, BATCH, seed=0, replacement=replacement, num_batches=10**9,
    )  # fmt: skip
    return iter(sampler)


def _weighted_random(synth: int, batches: int) -> Iterator[list[int]]:
    import torch
    from torch.utils.data import BatchSampler, WeightedRandomSampler

    weights = torch.cat(
        [torch.full((REAL,), RATIO / REAL), torch.full((synth,), (1 - RATIO) / synth)]
    ).double()
    gen = torch.Generator().manual_seed(0)
    # num_samples = the run's length: WeightedRandomSampler draws all of them up front.
    sampler = WeightedRandomSampler(weights, batches * BATCH, generator=gen)
    return iter(BatchSampler(sampler, BATCH, drop_last=False))


class _Shuffled:
    """Re-iterable shuffled indices of one source, shifted to global indices."""

    def __init__(self, size: int, offset: int, seed: int) -> None:
        import torch

        self.size, self.offset = size, offset
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        from torch.utils.data import RandomSampler

        return map(self.offset.__add__, iter(RandomSampler(range(self.size), generator=self.gen)))


def _torchdata(synth: int, batches: int) -> Iterator[list[int]]:
    from torchdata import nodes

    sources = {
        "real": nodes.IterableWrapper(_Shuffled(REAL, 0, 0)),
        "synthetic": nodes.IterableWrapper(_Shuffled(synth, REAL, 1)),
    }
    mixed = nodes.MultiNodeWeightedSampler(sources, {"real": RATIO, "synthetic": 1 - RATIO})
    return iter(nodes.Loader(nodes.Batcher(mixed, batch_size=BATCH)))


def _hf(synth: int, batches: int) -> Iterator[list[int]]:
    import datasets

    datasets.disable_progress_bars()
    real = datasets.Dataset.from_dict({"idx": np.arange(REAL)})
    syn = datasets.Dataset.from_dict({"idx": np.arange(REAL, REAL + synth)})
    mixed = datasets.interleave_datasets(
        [real.shuffle(seed=0), syn.shuffle(seed=1)], probabilities=[RATIO, 1 - RATIO], seed=0
    )
    return (batch["idx"] for batch in mixed.iter(batch_size=BATCH))


def _fork_replica(synth: int, batches: int) -> Iterator[list[int]]:
    """A public multi-dataset SpeaQ fork's sampler: per item, pick the source from idx % batch,
    randint, deepcopy."""
    annotation = {
        "boxes": [[0.1, 0.2, 0.3, 0.4]] * 5,
        "labels": [1, 2, 3, 4, 5],
        "rel": [[0, 1, 2]],
    }
    real_per_batch = int(RATIO * BATCH)

    def batches() -> Iterator[list[int]]:
        while True:
            batch = []
            for idx in range(BATCH):
                if idx % BATCH < real_per_batch:
                    index = int(np.random.randint(0, REAL))
                else:
                    index = REAL + int(np.random.randint(0, synth))
                item = copy.deepcopy(annotation)
                item["index"] = index
                batch.append(item["index"])
            yield batch

    np.random.seed(0)
    return batches()


FACTORIES: dict[str, Callable[[int, int], Iterator[list[int]]]] = {
    PEERS[0][0]: lambda s, _: _ours(s, False),
    PEERS[1][0]: lambda s, _: _ours(s, True),
    PEERS[2][0]: lambda s, _: _ours(s, False),
    PEERS[3][0]: lambda s, b: _ours(s, False, anneal_over=b),
    PEERS[4][0]: lambda s, _: _ours(s, False, sources=3),
    PEERS[5][0]: lambda s, b: _ours(s, False, sources=3, anneal_over=b),
    PEERS[6][0]: _weighted_random,
    PEERS[7][0]: _torchdata,
    PEERS[8][0]: _hf,
    PEERS[9][0]: _fork_replica,
}


def _import_peer_modules() -> None:
    """Imports every library a peer uses, so that import time and memory are not measured."""
    import torch  # noqa: F401

    import realsynth.mixing.sampler  # noqa: F401

    for optional in ("datasets", "torchdata.nodes"):
        with contextlib.suppress(ImportError):
            __import__(optional)


def run_peer(name: str, synth: int, batches: int) -> dict:
    """Runs one peer in this process and returns its measurements."""
    _import_peer_modules()
    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    stream = FACTORIES[name](synth, batches)
    first = next(stream)
    first_s = time.perf_counter() - start
    real = np.empty(batches, dtype=np.int64)
    real[0] = sum(1 for i in first if i < REAL)
    elapsed = 0.0
    clock = time.perf_counter
    for b in range(1, batches):
        tick = clock()
        batch = next(stream)
        elapsed += clock() - tick
        real[b] = sum(1 for i in batch if i < REAL)  # outside the timed region
    return {
        "batches": batches,
        "indices_per_s": (batches - 1) * BATCH / elapsed,
        "end_to_end_per_s": batches * BATCH / (first_s + elapsed),
        "first_batch_s": first_s,
        "peak_mib": max(0, _rss_kib("VmHWM") - base) / 1024,
        "real_mean": float(real.mean()),
        "real_std": float(real.std()),
        "real_min": int(real.min()),
        "real_max": int(real.max()),
    }


def _child(name: str, synth: int, batches: int) -> dict:
    module = {"torchdata": "torchdata", "HF": "datasets"}
    for key, mod in module.items():
        if key in name:
            try:
                __import__(mod)
            except ImportError:
                return {"skipped": "not installed"}
    cmd = [
        sys.executable,
        __file__,
        "--peer",
        name,
        "--synth",
        str(synth),
        "--batches",
        str(batches),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(rows: list[tuple[str, int, dict]], quick: bool, argv: list[str]) -> str:
    ours = rows[0][2]
    lines = [
        "## Mixed batch sampling (index only)",
        "",
        f"Real {REAL:,} + synthetic items, batch {BATCH}, real ratio {RATIO} "
        f"(target {RATIO * BATCH:.1f} real per batch). Machine: {machine()}.",
        f"Command: `{' '.join(['python benchmarks/bench_sampler.py', *argv])}`.",
        "",
        "| sampler | synthetic items | batches | indices/s steady | vs ours | indices/s incl. "
        "setup | vs ours | peak RSS (MiB) | first batch (ms) | real/batch mean | std | min | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, synth, r in rows:
        if "skipped" in r:
            lines.append(f"| {name} | {synth:,} | - | {r['skipped']} |" + " |" * 9)
            continue
        lines.append(
            f"| {name} | {synth:,} | {r['batches']:,} | {r['indices_per_s'] / 1e6:.2f} M "
            f"| {r['indices_per_s'] / ours['indices_per_s']:.2f}x "
            f"| {r['end_to_end_per_s'] / 1e6:.2f} M "
            f"| {r['end_to_end_per_s'] / ours['end_to_end_per_s']:.2f}x | {r['peak_mib']:.1f} | "
            f"{r['first_batch_s'] * 1e3:.1f} | {r['real_mean']:.3f} | {r['real_std']:.3f} | "
            f"{r['real_min']} | {r['real_max']} |"
        )
    by_name = {name: r for name, _, r in rows}
    pairs = [(PEERS[3][0], PEERS[0][0], "two sources"), (PEERS[5][0], PEERS[4][0], "three sources")]
    lines.append("")
    for scheduled, constant, label in pairs:
        a, b = by_name[scheduled], by_name[constant]
        lines.append(
            f"- Linear schedule vs constant share, {label}, same run: "
            f"{a['indices_per_s'] / b['indices_per_s']:.2f}x steady, "
            f"{a['end_to_end_per_s'] / b['end_to_end_per_s']:.2f}x incl. setup "
            f"(first batch {a['first_batch_s'] * 1e3:.1f} ms vs {b['first_batch_s'] * 1e3:.1f} ms)."
        )
    lines += [
        "",
        "Planning a changing schedule of three or more sources (once, at construction):",
        "",
    ]
    lines += [
        "| sources | global batches until the last change | construction (s) | per batch (us) |"
    ]
    lines += ["|---:|---:|---:|---:|"]
    for k, batches, seconds in _planning_times(quick):
        lines.append(f"| {k} | {batches:,} | {seconds:.2f} | {seconds / batches * 1e6:.1f} |")
    lines += [
        "",
        "Steady: time inside `next()` after the first batch. Incl. setup: construction, first "
        "batch and all later ones (WeightedRandomSampler draws every sample up front). Peak RSS "
        "is the process high-water mark above its RSS after imports. Slow peers run a fraction "
        "of the batches. " + ("`--quick` run: fewer batches." if quick else ""),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _planning_times(quick: bool) -> list[tuple[int, int, float]]:
    """Construction time of a 3- and a 4-source linear schedule over 10^4 .. 10^6 batches."""
    from realsynth.mixing.scheduled_composition import ScheduledComposition
    from realsynth.mixing.step_schedule import StepSchedule

    out = []
    for k in (3, 4):
        for batches in (10**4, 10**5) if quick else (10**4, 10**5, 10**6):
            real = StepSchedule.linear(0.4, 1.0, 0, batches)
            rest = real.affine(1 / (k - 1), -1 / (k - 1))
            start = time.perf_counter()
            ScheduledComposition([real] + [rest] * (k - 1), BATCH)
            out.append((k, batches, time.perf_counter() - start))
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints and writes ``benchmarks/results/sampler.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (~20 s)")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--synth", type=int, default=SYNTH, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=20_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        print(json.dumps(run_peer(args.peer, args.synth, args.batches)))
        return 0
    total = 1_000 if args.quick else args.batches
    rows = []
    for name, synth, fraction in PEERS:
        batches = max(20, int(total * fraction))
        rows.append((name, synth, _child(name, synth, batches)))
        print(f"{name}: {rows[-1][2]}", file=sys.stderr)
    text = _report(rows, args.quick, argv)
    print(text)
    write_result("sampler", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
