"""What a run tells its user: the images it leaves out, and the end-of-run results and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realsynth.training.run_log import read_metrics
from realsynth.training.run_state import RunState
from realsynth.utils.atomic import atomic_write_json
from realsynth.utils.tables import format_table

SKIPPED_FILE = "skipped_samples.json"
NAMES_SHOWN = 10


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def skipped_summary(data: Any) -> list[str]:
    """One line per source and split that leaves images out (``DATALOADER.SKIP_BAD_SAMPLES``)."""
    lines = []
    for where, skipped in data.skipped.items():
        names = [f"{s.file_name} ({getattr(s.reason, 'code', s.reason)})" for s in skipped]
        lines.append(
            f"realsynth: {where}: leaving out {len(skipped)} image(s) with problems "
            f"(DATALOADER.SKIP_BAD_SAMPLES): {_listing(names)}"
        )
    return lines


def write_skipped_samples(run_dir: Path, data: Any) -> None:
    """Print the images each source leaves out and list them all in ``skipped_samples.json``."""
    if not any(data.skipped.values()):
        return
    for line in skipped_summary(data):
        print(line)
    listing = {
        where: [
            {
                "file_name": s.file_name,
                "code": getattr(s.reason, "code", "unreadable"),
                "location": getattr(s.reason, "location", ""),
                "message": getattr(s.reason, "message", str(s.reason)),
            }
            for s in skipped
        ]
        for where, skipped in data.skipped.items()
    }
    atomic_write_json(Path(run_dir) / SKIPPED_FILE, listing)


def write_final_outputs(
    run_dir: Path, results: dict[str, dict[str, float]], state: RunState
) -> None:
    """``eval.json``, the PNG plots and the printed summary table at the end of a run."""
    # matplotlib takes most of a second to import: only the end of a run pays for it.
    from realsynth.utils.plots import plot_mix_schedule, plot_recall, plot_source_losses

    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "eval.json", results)
    records = read_metrics(run_dir)
    plots = [
        plot_source_losses(records, run_dir / "loss_per_source.png"),
        plot_recall(records, run_dir / "recall.png"),
        plot_mix_schedule(records, run_dir / "mix_schedule.png"),
    ]
    print(f"\nFinished {state.step} steps. Validation per source:")
    print(format_table(results))
    if state.num_skipped:
        print(
            f"Skipped {state.num_skipped} draw(s) of {len(state.skipped_files)} unreadable image "
            f"file(s) (DATALOADER.SKIP_BAD_SAMPLES): {_listing(state.skipped_files)}"
        )
    if state.empty_batches:
        print(f"{state.empty_batches} batch(es) had every image skipped and took no step.")
    if state.best_step is not None:
        print(
            f"Best checkpoint: step {state.best_step} ({state.best_value:.4f}), checkpoints/best.pt"
        )
    written = ", ".join(str(p.name) for p in plots if p is not None)
    print(f"Run folder: {run_dir} (eval.json, metrics.jsonl, checkpoints/, {written})")
